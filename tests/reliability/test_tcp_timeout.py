"""``DOCSTORE_TCP_TIMEOUT``: a network cut that drops packets is a lost connection after about
that many seconds, on docstore's side and on the server's (``docstore.core.tcp``).

Before, docstore set no TCP keepalive: a connection across a cut that drops packets (a VPN
going down, a NAT forgetting the connection) stayed silent rather than closed, so a migration
reading the legacy database's COPY waited out its command timeout (a day), and the server kept
the session for two hours. The cut is made with ``tc`` on the loopback device
(``tests/reliability/tcp_proxy.blackhole``); where that is not allowed those tests skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import pytest

import docstore
from docstore import ConfigurationError
from docstore.config import Settings
from docstore.core import tcp
from docstore.migrate import Migrator
from docstore.migrate.context import open_legacy
from docstore.migrate.lock import Orphans
from docstore.migrate.resume import connection_lost
from docstore.transient import is_transient
from tests.reliability.conftest import MIGRATION_DOCS, assert_same_rows
from tests.reliability.tcp_proxy import Proxy, blackhole, blackhole_available

pytestmark = pytest.mark.timeout(180)

CHUNK = 20
_SERVER_SIDE = """
SELECT name, source FROM pg_settings
 WHERE name IN ('tcp_keepalives_idle', 'tcp_keepalives_interval', 'tcp_keepalives_count')
"""


def _options(conn: object) -> tuple[int, ...]:
    sock = tcp.connection_socket(conn)
    assert sock is not None and sock.family == socket.AF_INET
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
    )


async def _sources(conn: object) -> set[str]:
    return {r["source"] for r in await conn.fetch(_SERVER_SIDE)}  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", ["-1", "inf", "nan", "40000", "soon"])
def test_a_bad_tcp_timeout_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("DOCSTORE_TCP_TIMEOUT", value)
    with pytest.raises(ConfigurationError, match="DOCSTORE_TCP_TIMEOUT"):
        Settings()


async def test_connections_over_tcp_get_the_timeout(
    migration_urls: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    legacy_url, target_url = migration_urls
    target, legacy = Proxy(target_url), Proxy(legacy_url)
    await target.up()
    await legacy.up()
    assert Settings().tcp_timeout == 60.0
    monkeypatch.setenv("DOCSTORE_TCP_TIMEOUT", "12")
    monkeypatch.setenv("DOCSTORE_POOL_MAX_SIZE", "1")  # the same session every time
    async with docstore.connect(target.url) as store:
        async with store.acquire() as conn:
            assert _options(conn) == (1, 6, 2, 3, 12000)
            assert tcp.server_side(conn) == (
                ["tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count"],
                ["6", "2", "3"],
            )
            # nothing sent when connecting (a pooler may refuse unknown startup parameters);
            # the migrator's lock and chunk sessions set it (the server shows 0 here: the proxy
            # reaches it over a Unix socket, so the setting's source says it)
            assert await _sources(conn) == {"default"}
            await Orphans().mark(conn)
            assert await _sources(conn) == {"session"}
            pid = conn.get_server_pid()
        async with store.acquire() as conn:  # the pool's reset put them back
            assert conn.get_server_pid() == pid and await _sources(conn) == {"default"}
        async with open_legacy(legacy.url, target=store) as src:
            assert _options(src) == (1, 6, 2, 3, 12000) and await _sources(src) == {"session"}
    async with open_legacy(legacy.url) as src:  # no store to take it from: the default
        assert _options(src) == (1, 30, 10, 3, 60000)
    monkeypatch.setenv("DOCSTORE_TCP_TIMEOUT", "0")  # nothing set
    async with docstore.connect(target.url) as store, store.acquire() as conn:
        assert _options(conn)[0] == 0 and tcp.server_side(conn) == ([], [])
        await Orphans().mark(conn)
        assert await _sources(conn) == {"default"}
    async with docstore.connect(target_url) as store, store.acquire() as conn:
        assert tcp.connection_socket(conn) is None  # a Unix-domain socket: nothing to set


needs_blackhole = pytest.mark.skipif(
    (why := blackhole_available()) is not None, reason=f"no packet-dropping cut here: {why}"
)


@needs_blackhole
async def test_a_query_across_a_cut_that_drops_packets_fails_after_the_timeout(
    migration_urls: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the query waited out its command timeout (120 s here) on a silent connection."""
    _, target_url = migration_urls
    proxy = Proxy(target_url)
    await proxy.up()
    monkeypatch.setenv("DOCSTORE_TCP_TIMEOUT", "3")
    async with docstore.connect(proxy.url) as store, store.acquire() as conn:
        waiting = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(60)", timeout=120))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        with blackhole(proxy.port):
            with pytest.raises(Exception) as info:
                await waiting
            seconds = time.monotonic() - started
    # a lost connection, as docstore's retries and a migration's resume take it
    assert is_transient(info.value) and connection_lost(info.value), repr(info.value)
    assert seconds < 10, seconds  # 2 s silent, then 3 probes 1 s apart (before: 120 s)


@needs_blackhole
async def test_a_migration_whose_legacy_connections_go_dead_resumes(
    migration_urls: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The legacy connections open mid-copy stop getting packets for good (a NAT or firewall
    forgot them; new connections work). Before, the COPY waited for data that never came,
    for its command timeout (a day); now the connections are lost after about
    DOCSTORE_TCP_TIMEOUT and the run resumes on new ones."""
    legacy_url, target_url = migration_urls
    proxy = Proxy(legacy_url)
    await proxy.up()
    monkeypatch.setenv("DOCSTORE_TCP_TIMEOUT", "2")
    cut: list[int] = []
    with contextlib.ExitStack() as cuts:

        def progress(stage: str, done: int, total: int, nbytes: int) -> None:
            if stage == "documents" and done >= 5 * CHUNK and not cut:
                cut.extend(proxy.client_ports())
                cuts.enter_context(blackhole(proxy.port, clients=cut))

        async with Migrator(proxy.url, target_url, chunk_rows=CHUNK, progress=progress) as m:
            report = await asyncio.wait_for(m.run(), 120)
        assert cut, "the open connections were cut"
    assert report.ok and report.resumed >= 1
    assert report.validation is not None and report.validation.legacy_documents == MIGRATION_DOCS
    await assert_same_rows(legacy_url, target_url)
