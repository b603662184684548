"""Dead-peer detection on TCP connections (``DOCSTORE_TCP_TIMEOUT``).

A network cut that drops packets — a VPN going down, a host gone, a NAT or firewall forgetting
the connection — leaves a TCP connection silent rather than closed. Without help a client
waiting for a reply waits out its command timeout (a migration's COPY: a day), and the server
keeps the session, with its locks and uncommitted rows, until the OS's keepalive gives up
(about two hours by default). With ``DOCSTORE_TCP_TIMEOUT`` = *T* seconds both ends give up
after about *T*, and the failure is a lost connection, which docstore retries and a migration
resumes after (:mod:`docstore.migrate.resume`):

* a silent connection is probed after *T*/2 seconds, every *T*/6 seconds, and ended after
  :data:`PROBES` unanswered probes (``TCP_KEEPIDLE``/``TCP_KEEPINTVL``/``TCP_KEEPCNT``);
* data sent and not acknowledged for *T* seconds ends it (``TCP_USER_TIMEOUT``).

docstore's sockets get them all: the store's pools (:class:`~docstore.core.pools.CodecInit`)
and the migrator's legacy connections. The server's side (``tcp_keepalives_idle``/
``_interval``/``_count``, ``tcp_user_timeout``: :func:`server_settings`) is set on the
migrator's sessions that hold the migration lock or a chunk's uncommitted rows
(:class:`~docstore.migrate.lock.Orphans`), so the server ends such a session whose client
vanished after *T* instead of two hours; it is not sent when connecting, where a pooler that
refuses unknown startup parameters (PgBouncer) would refuse the connection.

A busy but healthy peer's kernel answers the probes and acknowledges the data, so a slow
statement is never cut. Unix-domain sockets are left alone (the server ignores the settings
there). ``0`` leaves the operating system's defaults.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

logger = logging.getLogger("docstore")

PROBES = 3
MAX_TCP_TIMEOUT = 32767.0
"""The largest ``DOCSTORE_TCP_TIMEOUT`` (seconds)."""


def _parts(seconds: float) -> tuple[int, int, int]:
    """(probe after, probe every, unacknowledged data for) — seconds, seconds, milliseconds."""
    return max(1, round(seconds / 2)), max(1, round(seconds / 6)), max(1, round(seconds * 1000))


def server_settings(seconds: float) -> dict[str, str]:
    """The server's side of ``seconds``, as session settings (none for 0)."""
    if not seconds:
        return {}
    idle, interval, unacknowledged = _parts(seconds)
    return {
        "tcp_keepalives_idle": str(idle),
        "tcp_keepalives_interval": str(interval),
        "tcp_keepalives_count": str(PROBES),
        "tcp_user_timeout": str(unacknowledged),
    }


def connection_socket(conn: Any) -> Any | None:
    """The socket under an asyncpg connection (asyncpg keeps no public handle on it)."""
    transport = getattr(conn, "_transport", None)
    return transport.get_extra_info("socket") if transport is not None else None


def apply(conn: Any, seconds: float) -> bool:
    """Set ``seconds``' dead-peer detection on ``conn``'s socket; False where there is
    nothing to set (0, a Unix-domain socket, a platform without the options)."""
    sock = connection_socket(conn) if seconds else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    idle, interval, unacknowledged = _parts(seconds)
    options = (
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPALIVE", idle),  # macOS's name for it
        ("TCP_KEEPINTVL", interval),
        ("TCP_KEEPCNT", PROBES),
        ("TCP_USER_TIMEOUT", unacknowledged),
    )
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in options:
            if (option := getattr(socket, name, None)) is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError as exc:
        logger.debug("TCP keepalive options not set: %s", exc)
        return False
    return True
