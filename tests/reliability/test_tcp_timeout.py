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
from docstore.transient import is_transient
from tests.reliability.conftest import MIGRATION_DOCS, assert_same_rows
from tests.reliability.tcp_proxy import Proxy, blackhole, blackhole_available

pytestmark = pytest.mark.timeout(180)

CHUNK = 20
_SERVER_SIDE = """
SELECT name, source FROM pg_settings
 WHERE name IN ('tcp_keepalives_idle', 'tcp_keepalives_interval', 'tcp_keepalives_count',
                'tcp_user_timeout')
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


def test_the_server_side_follows_the_timeout() -> None:
    assert tcp.server_settings(12) == {
        "tcp_keepalives_idle": "6",
        "tcp_keepalives_interval": "2",
        "tcp_keepalives_count": "3",
        "tcp_user_timeout": "12000",
    }
    assert tcp.server_settings(1)["tcp_keepalives_interval"] == "1"  # never 0: the OS's default
    assert tcp.server_settings(0) == {}
    assert Settings().tcp_timeout == 60.0


@pytest.mark.parametrize("value", ["-1", "inf", "nan", "40000", "soon"])
def test_a_bad_tcp_timeout_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("DOCSTORE_TCP_TIMEOUT", value)
    with pytest.raises(ConfigurationError, match="DOCSTORE_TCP_TIMEOUT"):
        Settings()


async def test_store_and_legacy_connections_over_tcp_get_the_timeout(
    migration_urls: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    legacy_url, target_url = migration_urls
    target, legacy = Proxy(target_url), Proxy(legacy_url)
    await target.up()
    await legacy.up()
    monkeypatch.setenv("DOCSTORE_TCP_TIMEOUT", "12")
    async with docstore.connect(target.url) as store, store.acquire() as conn:
        assert _options(conn) == (1, 6, 2, 3, 12000)
        # nothing sent when connecting (a pooler may refuse unknown startup parameters) ...
        assert {r["source"] for r in await conn.fetch(_SERVER_SIDE)} == {"default"}
        # ... the migrator's lock and chunk sessions set it (the server shows 0 here: the
        # proxy reaches it over a Unix socket)
        async with Orphans().watch(conn):
            assert {r["source"] for r in await conn.fetch(_SERVER_SIDE)} == {"session"}
    async with open_legacy(legacy.url) as src:
        assert _options(src) == (1, 6, 2, 3, 12000)
    monkeypatch.setenv("DOCSTORE_TCP_TIMEOUT", "0")  # the OS's defaults
    async with docstore.connect(target.url) as store, store.acquire() as conn:
        assert _options(conn)[0] == 0
        async with Orphans().watch(conn):
            assert {r["source"] for r in await conn.fetch(_SERVER_SIDE)} == {"default"}


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
        with blackhole(sport=proxy.port):
            with pytest.raises(Exception) as info:
                await waiting
            seconds = time.monotonic() - started
    # a lost connection, as docstore's retries and a migration's resume take it
    assert is_transient(info.value), repr(info.value)
    assert seconds < 10, seconds  # 2 s silent, then 3 probes 1 s apart


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
                cuts.enter_context(blackhole(dports=cut))

        async with Migrator(proxy.url, target_url, chunk_rows=CHUNK, progress=progress) as m:
            report = await asyncio.wait_for(m.run(), 120)
        assert cut, "the open connections were cut"
    assert report.ok and report.resumed >= 1
    assert report.validation is not None and report.validation.legacy_documents == MIGRATION_DOCS
    await assert_same_rows(legacy_url, target_url)
