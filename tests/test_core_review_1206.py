"""Review of the core (2026-12-06): writes the server stopped after part of them committed,
a replica that never answers, errors naming the pool that failed, short passwords, typed
argument errors. Real PostgreSQL throughout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

import docstore
from docstore.errors import (
    DatabaseUnavailableError,
    PoolTimeoutError,
    QueryError,
    SchemaError,
    ValidationError,
)
from tests.conftest import PgCluster, error_texts, scram_reader, with_database

RETRIES = {"retry_attempts": 5, "retry_initial_delay": 0.01, "retry_max_delay": 0.05}
IN_DOUBT = "may or may not have been applied"


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.02)


async def _terminate_once_committed(url: str, pid: int) -> None:
    """End backend ``pid``'s session (57P01, as a fast shutdown or failover does) once the
    ledger shows its first write committed and it sleeps."""
    admin = await asyncpg.connect(url)
    try:

        async def committed_and_sleeping() -> bool:
            rows = await admin.fetchval("SELECT count(*) FROM ledger")
            state = await admin.fetchval(
                "SELECT wait_event FROM pg_stat_activity WHERE pid = $1", pid
            )
            return bool(rows == 1 and state == "PgSleep")

        await _until(committed_and_sleeping)
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


@pytest.fixture
async def ledger_store(database_url: str) -> AsyncIterator[docstore.Store]:
    """A store with one pooled connection and an empty ``ledger`` table."""
    async with docstore.connect(database_url, pool_min_size=1, pool_max_size=1, **RETRIES) as s:
        await s.execute("CREATE TABLE ledger (id serial, note text)")
        yield s


# -- 1: a write is never applied twice, also when the server ended the session ------------


async def test_a_call_that_committed_before_its_session_was_ended_is_not_run_again(
    ledger_store: docstore.Store, database_url: str
) -> None:
    """A procedure that COMMITs and is then terminated (57P01): the server's FATAL answer
    was taken to mean "rolled back", and CALL ran again, inserting the payment twice."""
    store = ledger_store
    await store.execute(
        """CREATE PROCEDURE settle() LANGUAGE plpgsql AS $$
        BEGIN
          INSERT INTO ledger (note) VALUES ('payment');
          COMMIT;
          PERFORM pg_sleep(30);
        END $$"""
    )
    pid = await store.fetchval("SELECT pg_backend_pid()")
    killer = asyncio.create_task(_terminate_once_committed(database_url, pid))
    with pytest.raises(DatabaseUnavailableError, match=IN_DOUBT):
        await store.execute("CALL settle()")
    await killer
    assert await store.fetchval("SELECT count(*) FROM ledger") == 1


async def test_run_work_whose_first_statement_committed_is_not_run_again(
    ledger_store: docstore.Store, database_url: str
) -> None:
    """``run(fn)``: an autocommitted INSERT, then a statement the server terminates. The
    INSERT had committed; running ``fn`` again as is applied it twice."""
    store = ledger_store
    pid = await store.fetchval("SELECT pg_backend_pid()")

    async def pay(conn: asyncpg.Connection) -> Any:
        await conn.execute("INSERT INTO ledger (note) VALUES ('payment')")
        return await conn.fetchval("SELECT pg_sleep(30)")

    killer = asyncio.create_task(_terminate_once_committed(database_url, pid))
    with pytest.raises(DatabaseUnavailableError, match=IN_DOUBT):
        await store.run(pay)
    await killer
    assert await store.fetchval("SELECT count(*) FROM ledger") == 1


async def test_a_serialization_failure_after_a_committed_statement_is_not_run_again(
    ledger_store: docstore.Store,
) -> None:
    """40001 after an earlier statement of the same work committed: retried as is, the
    earlier write was applied again on every attempt."""

    async def pay_then_conflict(conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO ledger (note) VALUES ('payment')")
        await conn.execute("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")

    with pytest.raises(DatabaseUnavailableError, match=IN_DOUBT) as info:
        await ledger_store.run(pay_then_conflict)
    assert "stopped the work" in str(info.value)
    assert await ledger_store.fetchval("SELECT count(*) FROM ledger") == 1


async def test_read_work_the_server_ended_midway_is_still_answered(
    ledger_store: docstore.Store, database_url: str
) -> None:
    """The in-doubt path keeps reads working: run again read-only, they answer."""
    store = ledger_store
    await store.execute("INSERT INTO ledger (note) VALUES ('payment')")
    pid = await store.fetchval("SELECT pg_backend_pid()")
    calls = []

    async def read(conn: asyncpg.Connection) -> Any:
        calls.append(1)
        count = await conn.fetchval("SELECT count(*) FROM ledger")
        if len(calls) == 1:
            await conn.fetchval("SELECT pg_sleep(30)")
        return count

    killer = asyncio.create_task(_terminate_once_committed(database_url, pid))
    assert await store.run(read) == 1
    await killer
    assert len(calls) == 2


async def test_a_write_on_a_connection_the_server_ended_while_idle_is_still_retried(
    database_url: str,
) -> None:
    """The guard above must not cost availability: after a restart or failover every idle
    pooled connection is dead, and a single write on one runs again (nothing was applied)."""
    async with docstore.connect(database_url, pool_min_size=1, pool_max_size=1, **RETRIES) as s:
        await s.execute("CREATE TABLE ledger (id serial, note text)")
        admin = await asyncpg.connect(database_url)
        try:
            for i in range(6):
                pid = await s.fetchval("SELECT pg_backend_pid()")
                await admin.execute("SELECT pg_terminate_backend($1)", pid)
                await asyncio.sleep(0.0005 * i)
                await s.execute("INSERT INTO ledger (note) VALUES ($1)", str(i))
        finally:
            await admin.close()
        assert await s.fetchval("SELECT count(*) FROM ledger") == 6


# -- 2: a replica that accepts connections and never answers -------------------------------


@pytest.fixture
async def silent_server_url() -> AsyncIterator[str]:
    """A URL whose server accepts TCP connections and never says a word (a hung host)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"postgresql://reader:secretpw@127.0.0.1:{port}/x"
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_reads_fall_back_to_the_primary_when_the_replica_never_answers(
    database_url: str, silent_server_url: str
) -> None:
    """Each read waited for the acquire timeout, then raised PoolTimeoutError blaming the
    pool size, and the replica was never skipped."""
    async with docstore.connect(
        database_url, database_read_url=silent_server_url, pool_acquire_timeout=2
    ) as store:
        started = time.monotonic()
        assert await store.replica.fetchval("SELECT 1") == 1  # after the connect timeout
        assert time.monotonic() - started < 2
        started = time.monotonic()
        assert await store.replica.fetchval("SELECT 2") == 2  # the replica is skipped now
        assert time.monotonic() - started < 0.5
        assert (await store.metrics(disk=False)).replica_fallbacks == 2


async def test_a_pool_with_every_connection_busy_still_raises_pool_timeout(
    database_url: str,
) -> None:
    async with (
        docstore.connect(database_url, pool_min_size=1, pool_max_size=1) as store,
        store.acquire(),
    ):
        with pytest.raises(PoolTimeoutError, match=r"became free within 0\.2s"):
            async with store.acquire(timeout=0.2):
                pass


# -- 8: an error on the replica names the replica ------------------------------------------


async def test_an_error_on_the_replica_names_the_replica_url(database_url: str) -> None:
    """It named the primary's URL, sending the operator to fix DATABASE_URL."""
    replica = with_database(database_url, "no_such_replica_db")
    async with docstore.connect(database_url, database_read_url=replica) as store:
        with pytest.raises(DatabaseUnavailableError, match="no_such_replica_db") as info:
            await store.replica.fetchval("SELECT 1")
    primary_db = urlsplit(database_url).path.lstrip("/")
    assert primary_db not in str(info.value)


# -- 10: a short password is not scrubbed letter by letter ---------------------------------


async def test_a_short_password_leaves_messages_readable(pg: PgCluster, database_url: str) -> None:
    """Password "e": every "e" of every message became "***" (and spelled the password)."""
    _role, url = await scram_reader(pg, database_url, "short_", "e")
    async with docstore.connect(url, migrate=False) as store:
        with pytest.raises(SchemaError) as missing:
            await store.fetch("SELECT * FROM no_such_table_here")
        with pytest.raises(QueryError) as zero:
            await store.fetchval("SELECT 1/0")
    assert 'relation "no_such_table_here" does not exist' in str(missing.value)
    assert "division by zero" in str(zero.value)
    assert "***" not in error_texts(missing.value) + error_texts(zero.value)


# -- 11: argument mistakes are typed errors ------------------------------------------------


async def test_a_bogus_isolation_level_is_a_validation_error(store: docstore.Store) -> None:
    with pytest.raises(ValidationError, match="isolation") as info:
        async with store.transaction(isolation="bogus"):  # type: ignore[arg-type]
            pass
    assert info.value.field == "isolation"


async def test_a_non_numeric_acquire_timeout_is_a_validation_error(
    store: docstore.Store,
) -> None:
    with pytest.raises(ValidationError, match="timeout"):
        async with store.acquire(timeout="x"):  # type: ignore[arg-type]
            pass


async def test_a_negative_statement_timeout_is_a_validation_error_not_an_outage(
    store: docstore.Store,
) -> None:
    """It read "database at ... unavailable: TimeoutError"."""
    with pytest.raises(ValidationError, match="timeout") as info:
        await store.execute("SELECT 1", timeout=-1)
    assert info.value.field == "timeout"
    # a statement that really runs out of time is reported as the server's statement_timeout
    # is (57014), not as an outage
    with pytest.raises(QueryError, match="ran longer than its timeout") as slow:
        await store.execute("SELECT pg_sleep(2)", timeout=0.1)
    assert slow.value.sqlstate == "57014"


# -- a string of statements that COMMITs part of itself, then the server ends the session ---
@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO ledger (note) VALUES ('payment'); COMMIT; SELECT pg_sleep(30)",
        "BEGIN; INSERT INTO ledger (note) VALUES ('a;b'); END; SELECT pg_sleep(30)",
        "INSERT INTO ledger (note) VALUES ($q$;$q$); COMMIT /* ; */; SELECT pg_sleep(30)",
    ],
)
async def test_an_execute_string_that_committed_part_of_itself_is_not_run_again(
    ledger_store: docstore.Store, database_url: str, sql: str
) -> None:
    """``execute()`` of several statements in one string (one round trip, so asyncpg's
    counter says one statement): the server ended the session after the string's COMMIT,
    and the whole string ran again, applying the INSERT twice."""
    store = ledger_store
    pid = await store.fetchval("SELECT pg_backend_pid()")
    killer = asyncio.create_task(_terminate_once_committed(database_url, pid))
    with pytest.raises(DatabaseUnavailableError, match=IN_DOUBT):
        await store.execute(sql)
    await killer
    assert await store.fetchval("SELECT count(*) FROM ledger") == 1
