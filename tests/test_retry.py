"""Retry against a real server that goes away and comes back; no retry on fatal errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

import docstore
from docstore.embedded import EmbeddedServer
from docstore.errors import DatabaseUnavailableError
from tests.conftest import add_scram_role


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A private embedded server this test may stop and restart."""
    server = EmbeddedServer(tmp_path / "restartable", cleanup="delete").start()
    yield server
    server.close()


def _retries(caplog: pytest.LogCaptureFixture) -> int:
    return sum("transient failure" in r.getMessage() for r in caplog.records)


async def test_connect_retries_until_the_server_is_back(
    own_server: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = own_server.url("postgres")
    await asyncio.to_thread(own_server.stop)
    with caplog.at_level(logging.WARNING, logger="docstore"):
        connecting = asyncio.create_task(
            docstore.connect(
                url, retry_attempts=40, retry_initial_delay=0.05, retry_max_delay=0.25
            ).__aenter__()
        )
        while _retries(caplog) < 2:  # it is really retrying against a stopped server
            await asyncio.sleep(0.05)
        await asyncio.to_thread(own_server.restart_server)
        store = await asyncio.wait_for(connecting, 60)
    try:
        assert await store.fetchval("select 1") == 1
    finally:
        await store.close()


async def test_query_retries_across_a_server_restart(
    own_server: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = own_server.url("postgres")
    async with docstore.connect(
        url, retry_attempts=40, retry_initial_delay=0.05, retry_max_delay=0.25
    ) as store:
        await store.execute("create table t (x int)")
        await asyncio.to_thread(own_server.stop)
        with caplog.at_level(logging.WARNING, logger="docstore"):
            query = asyncio.create_task(store.fetchval("select count(*) from t"))
            while _retries(caplog) < 2:
                await asyncio.sleep(0.05)
            await asyncio.to_thread(own_server.restart_server)
            assert await asyncio.wait_for(query, 60) == 0
        # the pool recovered: later calls just work
        assert await store.fetchval("select 2") == 2
        # and the retries were counted for the operation that made them (metrics)
        snapshot = await store.metrics(disk=False)
        assert snapshot.retries["fetchval"] == _retries(caplog)


async def test_wrong_password_fails_at_once_without_retries(
    own_server: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    await add_scram_role(own_server.url("postgres"), own_server.pgdata, "pwuser", "right-one")
    good = own_server.url("postgres").replace("//postgres:@", "//pwuser:right-one@", 1)
    bad = good.replace("right-one", "hunter2")
    async with docstore.connect(good, migrate=False) as store:
        assert await store.fetchval("select current_user") == "pwuser"
    with caplog.at_level(logging.DEBUG), pytest.raises(DatabaseUnavailableError) as info:
        await docstore.connect(bad, retry_attempts=10, migrate=False)
    assert info.value.sqlstate == "28P01"
    assert "authentication failed" in str(info.value)
    assert _retries(caplog) == 0
    assert "hunter2" not in str(info.value) and "hunter2" not in caplog.text


async def test_a_write_whose_connection_broke_under_it_is_not_run_twice(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server ran the INSERT, then the connection broke before its reply: retrying would
    insert the row twice. ``execute`` says the statement may have been applied instead; a
    connection found dead before anything was sent is still retried."""
    import asyncpg

    async with docstore.connect(database_url, retry_attempts=5, retry_initial_delay=0.01) as store:
        await store.execute("CREATE TABLE audit (n int)")
        real = asyncpg.Connection.execute
        broken = {"left": 1}

        async def ran_then_broke(self: asyncpg.Connection, query: str, *args: object, **kw: object):  # type: ignore[no-untyped-def]
            status = await real(self, query, *args, **kw)
            if query.startswith("INSERT") and broken["left"]:
                broken["left"] -= 1
                self.terminate()
                raise asyncpg.ConnectionDoesNotExistError(
                    "connection was closed in the middle of operation"
                )
            return status

        monkeypatch.setattr(asyncpg.Connection, "execute", ran_then_broke)
        with pytest.raises(DatabaseUnavailableError, match="may or may not have been applied"):
            await store.execute("INSERT INTO audit VALUES (1)")
        assert await store.fetchval("SELECT count(*) FROM audit") == 1

        refused = {"left": 1}

        async def dead_before_sending(
            self: asyncpg.Connection, query: str, *args: object, **kw: object
        ):  # type: ignore[no-untyped-def]
            if query.startswith("INSERT") and refused["left"]:
                refused["left"] -= 1  # asyncpg's answer on a connection it knows is dead
                raise asyncpg.InterfaceError("connection is closed")
            return await real(self, query, *args, **kw)

        monkeypatch.setattr(asyncpg.Connection, "execute", dead_before_sending)
        assert await store.execute("INSERT INTO audit VALUES (2)") == "INSERT 0 1"
        assert await store.fetchval("SELECT count(*) FROM audit") == 2
