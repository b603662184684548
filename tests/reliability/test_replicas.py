"""Read replicas (issue 8, acceptance 2) on a real streaming replica of the embedded server.

Writes go to the primary, searches and reads to the replica; when the replica is down reads
fall back to the primary (logged once) and return to the replica when it is back. Also:
multi-host URLs, ``read_from_primary()``, health, and ``reload()`` with a rotated password.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

import docstore
import docstore.sync
from docstore import DatabaseUnavailableError
from docstore.config import with_database
from docstore.embedded import EmbeddedServer
from tests.conftest import add_scram_role, sample_documents, unit_vector
from tests.replica import (  # noqa: F401 - fixtures
    ReplicaPair,
    replica_pair_fixture,
    replica_primary_fixture,
)

IN_RECOVERY = "select pg_is_in_recovery()"


def _without(url: str, key: str) -> str:
    parts = urlsplit(url)
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != key], safe="/,")
    return urlunsplit(parts._replace(query=query))


@pytest.fixture
def read_url_env(replica_pair: ReplicaPair, monkeypatch: pytest.MonkeyPatch) -> ReplicaPair:
    monkeypatch.setenv("DATABASE_URL", replica_pair.primary_url)
    monkeypatch.setenv("DATABASE_READ_URL", replica_pair.replica_url)
    monkeypatch.setenv("DOCSTORE_REPLICA_RETRY_SECONDS", "0.5")
    return replica_pair


async def test_writes_go_to_the_primary_and_reads_to_the_replica(
    read_url_env: ReplicaPair,
) -> None:
    """Acceptance 2: write on the primary, read the row on the replica."""
    pair = read_url_env
    async with docstore.connect() as store:
        assert store.read_url is not None and "read_url=" in repr(store)
        await store.documents.upsert_many(sample_documents(20))  # a replica would refuse this
        await store.create_vector_index()
        await pair.sync()
        assert await store.replica.fetchval(IN_RECOVERY) is True
        assert await store.fetchval(IN_RECOVERY) is False
        hits = await store.search(unit_vector(3), source_name="tokio", limit=3)
        assert hits.ids and hits[0].doc_path == "tokio/3"
        assert (await store.documents.get_by_key("rust", "tokio", "tokio/7")) is not None
        assert await store.documents.count(source_name="tokio") == 20
        # the replica served those reads: its own statistics count the scans (flushed
        # asynchronously, about once a second)
        replica = await asyncpg.connect(pair.replica_url)
        try:
            deadline = asyncio.get_running_loop().time() + 15
            while not await replica.fetchval(
                "select coalesce(sum(idx_scan), 0) from pg_stat_user_indexes"
                " where relname = 'documents'"
            ):
                assert asyncio.get_running_loop().time() < deadline, "no scan on the replica"
                await asyncio.sleep(0.2)
        finally:
            await replica.close()
        pools = {p.role: p for p in store.pool_stats()}
        assert pools["replica"].acquire.count >= 3 and pools["primary"].acquire.count >= 1
        with store.read_from_primary():
            assert await store.replica.fetchval(IN_RECOVERY) is False
        health = await store.health()
        assert health.read_replica is not None and health.read_replica.ok
        assert health.read_replica.in_recovery is True and health.in_recovery is False


async def test_a_callers_session_setting_on_the_replica_is_reset(
    read_url_env: ReplicaPair,
) -> None:
    """The replica's pooled connection goes back through the pool's reset (RESET ALL …, which
    a hot standby accepts) after a caller's query, so a setting it changed never reaches the
    next read on that connection."""
    async with docstore.connect(pool_max_size=1, pool_min_size=1) as store:
        assert await store.replica.fetchval(IN_RECOVERY) is True
        before = await store.replica.fetchval("show work_mem")
        assert await store.replica.fetchval("select set_config('work_mem', '77MB', false)")
        assert await store.replica.fetchval(IN_RECOVERY) is True
        assert await store.replica.fetchval("show work_mem") == before
        assert {p.role: p for p in store.pool_stats()}["replica"].acquire.count >= 4


async def test_reads_fall_back_to_the_primary_while_the_replica_is_down(
    read_url_env: ReplicaPair, caplog: pytest.LogCaptureFixture
) -> None:
    pair = read_url_env
    async with docstore.connect() as store:
        await store.documents.upsert_many(sample_documents(10))
        await pair.sync()
        assert await store.replica.fetchval(IN_RECOVERY) is True
        await asyncio.to_thread(pair.replica.stop)
        with caplog.at_level(logging.WARNING, logger="docstore"):
            for i in range(5):  # every read is answered, by the primary
                hits = await asyncio.wait_for(store.search(unit_vector(i), limit=2), 30)
                assert hits[0].doc_path == f"tokio/{i}"
                assert await store.replica.fetchval(IN_RECOVERY) is False
        warnings = [r for r in caplog.records if "read replica" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once per outage
        assert "reads go to the primary" in warnings[0].getMessage()
        snapshot = await store.metrics(disk=False)
        assert snapshot.replica_fallbacks >= 10
        health = await store.health()
        assert health.ok and health.read_replica is not None and not health.read_replica.ok
        # the replica comes back: after DOCSTORE_REPLICA_RETRY_SECONDS reads return to it
        await asyncio.to_thread(pair.replica.start)
        await pair.sync()
        deadline = asyncio.get_running_loop().time() + 30
        with caplog.at_level(logging.WARNING, logger="docstore"):
            caplog.clear()
            while not await store.replica.fetchval(IN_RECOVERY):
                assert asyncio.get_running_loop().time() < deadline, "reads never returned"
                await asyncio.sleep(0.2)
            assert any("is back" in r.getMessage() for r in caplog.records)
            # a second outage is logged again: "once per outage", not once per store
            await asyncio.to_thread(pair.replica.stop)
            caplog.clear()
            assert (await store.search(unit_vector(1), limit=1))[0].doc_path == "tokio/1"
            assert sum("unavailable" in r.getMessage() for r in caplog.records) == 1
        await asyncio.to_thread(pair.replica.start)


async def test_a_killed_replica_costs_reads_nothing_but_a_fallback(
    read_url_env: ReplicaPair,
) -> None:
    pair = read_url_env
    async with docstore.connect() as store:
        await store.documents.upsert_many(sample_documents(10))
        await pair.sync()
        assert await store.replica.fetchval(IN_RECOVERY) is True  # a pooled replica connection
        await asyncio.to_thread(pair.replica.kill)
        results = await asyncio.wait_for(
            asyncio.gather(*(store.search(unit_vector(i), limit=1) for i in range(10))), 30
        )
        assert [r[0].doc_path for r in results] == [f"tokio/{i}" for i in range(10)]


async def test_a_multi_host_url_splits_reads_and_writes(
    replica_pair: ReplicaPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _without(replica_pair.multi_host_url(), "target_session_attrs")
    monkeypatch.setenv("DATABASE_URL", url)
    async with docstore.connect() as store:
        assert store.read_url is not None and "prefer-standby" in store.read_url
        await store.documents.upsert_many(sample_documents(5))
        await replica_pair.sync()
        assert await store.fetchval(IN_RECOVERY) is False
        assert await store.replica.fetchval(IN_RECOVERY) is True
        assert await store.documents.count() == 5


async def test_a_replica_down_at_startup_does_not_stop_the_store(
    read_url_env: ReplicaPair,
) -> None:
    await asyncio.to_thread(read_url_env.replica.stop)
    async with docstore.connect() as store:
        await store.documents.upsert_many(sample_documents(3))
        assert (await store.search(unit_vector(1), limit=1))[0].doc_path == "tokio/1"
        assert (await store.health()).read_replica is not None
    await asyncio.to_thread(read_url_env.replica.start)


def test_the_sync_facade_routes_reads_and_honours_read_from_primary(
    read_url_env: ReplicaPair,
) -> None:
    with docstore.sync.connect() as store:
        store.documents.upsert_many(sample_documents(3))
        asyncio.run(read_url_env.sync())
        assert store.replica.fetchval(IN_RECOVERY) is True
        with store.read_from_primary():  # set in this thread, applied on the store's loop
            assert store.replica.fetchval(IN_RECOVERY) is False
            assert store.documents.count() == 3
        assert store.replica.fetchval(IN_RECOVERY) is True
        assert store.metrics(disk=False).operations["fetchval"].count == 3


# -- reload: rotated credentials ---------------------------------------------------------------


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(tmp_path / "rotation", cleanup="delete").start()
    yield server
    server.close()


async def test_reload_picks_up_a_rotated_password_without_dropping_queries(
    own_server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin_url = own_server.url("postgres")
    await add_scram_role(
        admin_url, own_server.pgdata, "rotator", "first-secret", options="SUPERUSER"
    )
    base = own_server.url("postgres").replace("//postgres:@", "//rotator:{}@", 1)
    monkeypatch.setenv("DATABASE_URL", base.format("first-secret"))
    async with docstore.connect(pool_min_size=2) as store:
        slow = asyncio.create_task(store.fetchval("select pg_sleep(1.5)::text || 'done'"))
        await asyncio.sleep(0.3)  # the query is running on a connection made with the old one
        await store.execute("alter role rotator password 'second-secret'")
        monkeypatch.setenv("DATABASE_URL", base.format("wrong-secret"))
        with pytest.raises(DatabaseUnavailableError) as bad:
            await store.reload()  # a wrong new URL is refused; the store keeps the old one
        assert "wrong-secret" not in str(bad.value)
        monkeypatch.setenv("DATABASE_URL", base.format("second-secret"))
        await store.reload()
        assert await slow == "done"  # in flight across the reload
        # every connection now is a new one, authenticated with the new password
        results = await asyncio.gather(*(store.fetchval("select 1") for _ in range(8)))
        assert results == [1] * 8
        assert "second-secret" not in repr(store) and "***" in store.url
        # nor in the private parts a debugger or a traceback's locals would show
        parts = repr((store._db._pool_set, store._pools()))
        assert "second-secret" not in parts and "first-secret" not in parts and "***" in parts


async def test_reload_with_an_explicit_url_takes_no_replica_from_the_environment(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review of 2026-12-05: reload(url=...) paired the URL with DATABASE_READ_URL, which
    connect(url) does not (it names the environment's database's replica, maybe another
    database's); database_read_url= pairs it explicitly, as with connect."""
    monkeypatch.setenv("DATABASE_READ_URL", with_database(database_url, "no_such_database"))
    async with docstore.connect(database_url) as store:
        assert store.read_url is None
        await store.reload(url=database_url)
        assert store.read_url is None and await store.fetchval("select 1") == 1
        await store.reload(url=database_url, database_read_url=database_url)
        assert store.read_url is not None
        assert await store.documents.count() == 0  # a read, on the "replica"


async def test_reload_without_a_url_to_move_to_keeps_the_store_where_it_is(
    database_url: str,
) -> None:
    """Opened with an explicit URL and nothing in the environment: reload() must not quietly
    move the store to the embedded database."""
    async with docstore.connect(database_url) as store:
        with pytest.raises(docstore.ConfigurationError, match="no DATABASE_URL"):
            await store.reload()
        await store.reload(url=database_url)  # an explicit URL works
        assert await store.fetchval("select 1") == 1 and store.url_source.value == "argument"
