"""Dead-peer detection on TCP connections (``DOCSTORE_TCP_TIMEOUT``).

A network cut that drops packets — a VPN going down, a host gone, a NAT or firewall forgetting
the connection — leaves a TCP connection silent rather than closed. Without help a client
waiting for a reply waits out its command timeout (a migration's COPY: a day), and the server
keeps the session, with its locks and uncommitted rows, until the OS's keepalive gives up
(about two hours by default). With ``DOCSTORE_TCP_TIMEOUT`` = *T* seconds, about *T* after
the cut the failure is a lost connection, which docstore retries and a migration resumes after
(:mod:`docstore.migrate.resume`):

* a silent connection is probed after *T*/2 seconds, every *T*/6 seconds, and ended after
  :data:`PROBES` unanswered probes (``SO_KEEPALIVE``, ``TCP_KEEPIDLE``, ``TCP_KEEPINTVL``,
  ``TCP_KEEPCNT``);
* data sent and not acknowledged for *T* seconds ends it (``TCP_USER_TIMEOUT``): probes wait
  while data is in flight, and the OS's retransmissions would give up only after about 15
  minutes (``tcp_retries2``). A COPY into the target is such a stream.

docstore's sockets get it: the store's pools (:class:`~docstore.core.pools.CodecInit`) and
the migrator's legacy connections. The server's side (``tcp_keepalives_idle``/``_interval``/
``_count``: :func:`mirror_on_server`, from the socket's own options) is set on the migrator's
sessions — the target's that hold the migration lock or a chunk's uncommitted rows
(:class:`~docstore.migrate.lock.Orphans`), and the legacy ones that hold a snapshot — so the
server ends such a session after *T* once its client vanished; it is not sent when
connecting, where a pooler that refuses unknown startup parameters (PgBouncer) would refuse
the connection.

A busy but healthy server's kernel answers the probes and acknowledges what it receives, so a
slow statement is not cut — unless the server reads nothing of what docstore sends for *T*
seconds (a COPY stalled on a lock that long: its window stays shut, which Linux's
``TCP_USER_TIMEOUT`` also ends); raise *T* where that can happen. The server's side has no
user timeout: the migrator itself stops reading the legacy COPY while the target catches up.
Unix-domain sockets are left alone. ``0`` sets nothing: no keepalive on docstore's side
(asyncpg enables none), the server's defaults on its side.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

logger = logging.getLogger("docstore")

PROBES = 3
_SET_SERVER_SIDE = """
SELECT count(set_config(name, value, false)) FROM unnest($1::text[], $2::text[]) AS s(name, value)
"""

_OPTIONS = (
    ("tcp_keepalives_idle", "TCP_KEEPIDLE"),
    ("tcp_keepalives_interval", "TCP_KEEPINTVL"),
    ("tcp_keepalives_count", "TCP_KEEPCNT"),
)


def connection_socket(conn: Any) -> Any | None:
    """The TCP socket under an asyncpg connection, or None (a Unix-domain socket; asyncpg
    keeps no public handle on it)."""
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6) else None


def apply(conn: Any, seconds: float) -> bool:
    """Turn on ``seconds``' keepalive on ``conn``'s socket; False where nothing was set (0, a
    Unix-domain socket, the socket refused). An option the platform lacks is skipped."""
    sock = connection_socket(conn) if seconds else None
    if sock is None:
        return False
    idle = max(1, round(seconds / 2))
    values = {
        "TCP_KEEPIDLE": idle,
        "TCP_KEEPALIVE": idle,  # macOS's name for it
        "TCP_KEEPINTVL": max(1, round(seconds / 6)),
        "TCP_KEEPCNT": PROBES,
        "TCP_USER_TIMEOUT": max(1, round(seconds * 1000)),  # milliseconds
    }
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in values.items():
            if (option := getattr(socket, name, None)) is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError as exc:
        logger.debug("TCP keepalive not set: %s", exc)
        return False
    return True


def server_side(conn: Any) -> tuple[list[str], list[str]]:
    """The server settings that mirror ``conn``'s socket keepalive: (names, values), none
    without one."""
    sock = connection_socket(conn)
    if sock is None or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE):
        return [], []
    names, values = [], []
    for setting, name in _OPTIONS:
        if (option := getattr(socket, name, None)) is not None:
            names.append(setting)
            values.append(str(sock.getsockopt(socket.IPPROTO_TCP, option)))
    return names, values


async def mirror_on_server(conn: Any) -> None:
    """Set :func:`server_side` for ``conn``'s session (nothing to send without a keepalive: a
    Unix-domain socket, ``0``); the pools' ``RESET ALL`` puts it back on release."""
    names, values = server_side(conn)
    if names:
        await conn.fetchval(_SET_SERVER_SIDE, names, values)
