"""docstore.sync: what the wrapped connection returns (cursors, prepared statements,
transactions, the pool) blocks too — no call hands a coroutine back to sync code."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import subprocess
import sys
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from asyncpg.connresource import ConnectionResource
from asyncpg.pool import PoolConnectionProxy

import docstore
import docstore.sync
from docstore.errors import ReadOnlyError

ASYNC_KINDS = (ConnectionResource, asyncpg.Connection, PoolConnectionProxy, asyncpg.Pool)


def plain(value: Any) -> Any:
    """``value``, checked to be usable from sync code: no coroutine, nothing to await or to
    iterate asynchronously, no raw asyncpg object whose methods are coroutines."""
    assert not inspect.isawaitable(value), value
    assert not isinstance(value, AsyncIterable | AsyncIterator), value
    assert not isinstance(value, contextlib.AbstractAsyncContextManager), value
    assert not isinstance(value, ASYNC_KINDS), value
    return value


def call_all(obj: Any, calls: dict[str, Callable[[Any], Any]], skipped: set[str]) -> dict:
    """Call every public method of ``obj`` (each as ``calls`` says, in its order) and check
    what each returns; a public name neither called nor skipped fails the test."""
    public = {name for name in dir(obj) if not name.startswith("_")}
    missing = public - set(calls) - skipped
    assert not missing, f"{type(obj).__name__}: no call written for {sorted(missing)}"
    assert not set(calls) - public, f"{type(obj).__name__}: {sorted(set(calls) - public)}"
    return {name: plain(call(getattr(obj, name))) for name, call in calls.items()}


def test_cursors_and_prepared_statements_of_a_sync_connection_block(database_url: str) -> None:
    with docstore.sync.connect(database_url) as store:
        store.execute("CREATE TABLE t (x int); CREATE TABLE u (x int)")
        store.execute("INSERT INTO t SELECT generate_series(1, 120)")
        with store.transaction() as conn:
            statement = conn.prepare("SELECT $1::int + 1")
            assert statement.fetchval(1) == 2
            assert [r[0] for r in statement.fetchmany([(1,), (5,)])] == [2, 6]

            cursor = conn.cursor("SELECT x FROM t ORDER BY x")
            assert [r["x"] for r in cursor.fetch(2)] == [1, 2]
            assert cursor.forward(3) == 3
            assert cursor.fetchrow()["x"] == 6
            assert [r["x"] for r in cursor] == list(range(7, 121))  # the rows that remain

            assert [r["x"] for r in conn.cursor("SELECT x FROM t ORDER BY x")] == list(
                range(1, 121)
            )
            few = conn.cursor("SELECT x FROM t WHERE x <= $1 ORDER BY x", 7, prefetch=2)
            assert [r["x"] for r in few] == list(range(1, 8))
            assert [r["x"] for r in few] == list(range(1, 8))  # run again, as `async for`
            ranged = conn.prepare("SELECT x FROM t WHERE x > $1 ORDER BY x")
            assert [r["x"] for r in ranged.cursor(117)] == [118, 119, 120]
            assert ranged.cursor(118).fetch(5)[0]["x"] == 119

            with pytest.raises(ZeroDivisionError):  # a break-out leaves the block usable
                for row in conn.cursor("SELECT x FROM t ORDER BY x"):
                    _ = row["x"] / 0
            assert conn.fetchval("SELECT count(*) FROM t") == 120

            savepoint = conn.transaction()
            savepoint.start()
            conn.execute("INSERT INTO u VALUES (1)")
            savepoint.rollback()
            assert conn.fetchval("SELECT count(*) FROM u") == 0

        # outside a transaction: asyncpg's own error, raised where the cursor is used
        with store.acquire() as conn, pytest.raises(asyncpg.NoActiveSQLTransactionError):
            conn.cursor("SELECT 1").fetch(1)
        assert store.pool_stats()[0].in_use == 0

        # Ctrl-C in a loop over a cursor: the transaction rolls back, the store goes on
        with pytest.raises(KeyboardInterrupt), store.transaction() as conn:
            conn.execute("INSERT INTO u VALUES (2)")
            for _ in conn.cursor("SELECT x FROM t"):
                raise KeyboardInterrupt
        assert store.fetchval("SELECT count(*) FROM u") == 0

        # the pool, "for code that needs asyncpg directly", blocks as well
        assert store.pool.fetchval("SELECT 3") == 3
        with store.pool.acquire() as conn:
            assert conn.prepare("SELECT 4").fetchval() == 4
        assert store.pool_stats()[0].in_use == 0


def test_every_method_of_a_sync_connection_and_of_what_it_returns_blocks(
    database_url: str,
) -> None:
    noted: list[object] = []

    def note(*args: object) -> None:
        noted.append(args)

    with docstore.sync.connect(database_url) as store, store.acquire() as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("CREATE TYPE mood AS ENUM ('ok')")
        with conn.transaction():
            done = call_all(
                conn,
                {
                    "execute": lambda m: m("INSERT INTO t VALUES (1)"),
                    "executemany": lambda m: m("INSERT INTO t VALUES ($1)", [(2,), (3,)]),
                    "fetch": lambda m: m("SELECT x FROM t ORDER BY x"),
                    "fetchrow": lambda m: m("SELECT x FROM t ORDER BY x"),
                    "fetchval": lambda m: m("SELECT count(*) FROM t"),
                    "fetchmany": lambda m: m("SELECT $1::int", [(1,), (2,)]),
                    "prepare": lambda m: m("SELECT x FROM t WHERE x >= $1 ORDER BY x"),
                    "cursor": lambda m: m("SELECT x FROM t ORDER BY x"),
                    "transaction": lambda m: m(),
                    "copy_from_query": lambda m: m("SELECT x FROM t", output=io.BytesIO()),
                    "copy_from_table": lambda m: m("t", output=io.BytesIO()),
                    "copy_to_table": lambda m: m("t", source=io.BytesIO(b"4\n")),
                    "copy_records_to_table": lambda m: m("t", records=[(5,)]),
                    "get_reset_query": lambda m: m(),
                    "get_server_pid": lambda m: m(),
                    "get_server_version": lambda m: m(),
                    "get_settings": lambda m: m(),
                    "is_closed": lambda m: m(),
                    "is_in_transaction": lambda m: m(),
                    "reload_schema_state": lambda m: m(),
                    "set_type_codec": lambda m: m(
                        "json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
                    ),
                    "reset_type_codec": lambda m: m("json", schema="pg_catalog"),
                    "set_builtin_type_codec": lambda m: m("mood", codec_name="text"),
                    "add_listener": lambda m: m("chan", note),
                    "remove_listener": lambda m: m("chan", note),
                    "add_log_listener": lambda m: m(note),
                    "remove_log_listener": lambda m: m(note),
                    "add_termination_listener": lambda m: m(note),
                    "remove_termination_listener": lambda m: m(note),
                    "add_query_logger": lambda m: m(note),
                    "remove_query_logger": lambda m: m(note),
                    "query_logger": lambda m: m(note),
                },
                # reset and close below, after the rest; terminate is close without waiting
                skipped={"reset", "close", "terminate"},
            )
            assert done["fetchval"] == 3 and done["copy_from_table"] == "COPY 3"
            assert done["is_in_transaction"] is True

            statement = done["prepare"]
            results = call_all(
                statement,
                {
                    "get_name": lambda m: m(),
                    "get_query": lambda m: m(),
                    "get_statusmsg": lambda m: m(),
                    "get_parameters": lambda m: m(),
                    "get_attributes": lambda m: m(),
                    "fetch": lambda m: m(2),
                    "fetchrow": lambda m: m(2),
                    "fetchval": lambda m: m(2),
                    "fetchmany": lambda m: m([(2,), (3,)]),
                    "executemany": lambda m: m([(2,), (3,)]),
                    "explain": lambda m: m(2),
                    "cursor": lambda m: m(4),
                },
                skipped=set(),
            )
            assert results["fetchval"] == 2 and [r["x"] for r in results["cursor"]] == [4, 5]

            for cursor in (done["cursor"], results["cursor"]):
                moved = call_all(
                    cursor,
                    {
                        "fetch": lambda m: m(1),
                        "forward": lambda m: m(1),
                        "fetchrow": lambda m: m(),
                    },
                    skipped=set(),
                )
                assert moved["forward"] == 1
                assert all(plain(row) is not None for row in cursor)

            calls = {"start": lambda m: m(), "commit": lambda m: m()}
            call_all(done["transaction"], calls, skipped={"rollback"})
            calls = {"start": lambda m: m(), "rollback": lambda m: m()}
            call_all(conn.transaction(), calls, skipped={"commit"})
        conn.reset()
        assert conn.fetchval("SELECT count(*) FROM t") == 5
        assert plain(conn.close()) is None  # of a pool's connection: released to the pool


def test_a_read_only_sync_store_s_cursors_and_statements_block(database_url: str) -> None:
    with docstore.sync.connect(database_url) as writer:
        writer.execute("CREATE TABLE t (x int)")
        writer.execute("INSERT INTO t SELECT generate_series(1, 60)")
    with docstore.sync.connect(database_url, read_only=True) as store:
        with store.transaction() as conn:
            assert [r["x"] for r in conn.cursor("SELECT x FROM t ORDER BY x")] == list(range(1, 61))
            cursor = conn.cursor("SELECT x FROM t ORDER BY x")
            assert cursor.forward(10) == 10 and cursor.fetchrow()["x"] == 11
            assert conn.prepare("SELECT max(x) FROM t WHERE x < $1").fetchval(30) == 29
            with pytest.raises(ReadOnlyError):
                list(conn.cursor("DELETE FROM t RETURNING x"))
        with store.transaction() as conn, pytest.raises(ReadOnlyError):
            conn.cursor("SELECT nextval('documents_id_seq')").fetch(1)
        assert store.fetchval("SELECT count(*) FROM t") == 60


def test_what_a_sync_connection_returned_is_refused_once_the_store_is_closed(
    database_url: str,
) -> None:
    store = docstore.sync.connect(database_url)
    with store.transaction() as conn:
        statement = conn.prepare("SELECT 1")
        cursor = conn.cursor("SELECT generate_series(1, 3)")
    pool = store.pool
    store.close()
    for use in (
        lambda: statement.fetchval(),
        lambda: cursor.fetch(1),
        lambda: list(cursor),
        lambda: conn.fetchval("SELECT 1"),
        lambda: pool.fetchval("SELECT 1"),
    ):
        with pytest.raises(docstore.DatabaseUnavailableError, match="closed"):
            use()


# Ctrl-C while a cursor or a prepared statement runs: in a child process (a SIGINT must never
# hit pytest). Another session holds an advisory lock the query takes as it runs (not as it is
# opened or prepared); a watcher sends SIGINT once the server shows the query waiting for it.
CTRL_C_CHILD = """
import asyncio, signal, sys, threading
import asyncpg
import docstore.sync

signal.signal(signal.SIGINT, signal.default_int_handler)
url, scenario = sys.argv[1:3]
ready, done = threading.Event(), threading.Event()


async def hold():
    conn = await asyncpg.connect(url)
    await conn.execute("SELECT pg_advisory_lock(4242)")
    ready.set()
    while not done.is_set():
        await asyncio.sleep(0.02)
    await conn.close()


async def wait_for_lock_wait():
    conn = await asyncpg.connect(url)
    while not await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ):
        await asyncio.sleep(0.02)
    await conn.close()


def watch():
    asyncio.run(wait_for_lock_wait())
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


store = docstore.sync.connect(url, pool_max_size=2)
store.execute("CREATE TABLE t (x int); CREATE TABLE u (x int)")
store.execute("INSERT INTO t SELECT generate_series(1, 10)")
query = "FROM t, LATERAL (SELECT pg_advisory_xact_lock_shared(4242)) AS waits"
holder = threading.Thread(target=asyncio.run, args=(hold(),))
holder.start()
assert ready.wait(60)
threading.Thread(target=watch, daemon=True).start()
try:
    with store.transaction() as conn:
        conn.execute("INSERT INTO u VALUES (1)")
        if scenario == "iterate":
            print("rows", len(list(conn.cursor("SELECT x " + query))))
        elif scenario == "fetch":
            print("rows", len(conn.cursor("SELECT x " + query).fetch(5)))
        else:
            print("value", conn.prepare("SELECT count(*) " + query).fetchval())
except BaseException as exc:
    print("raised", type(exc).__name__)
    print(repr(exc), file=sys.stderr)
done.set()
holder.join()
print("in_use", store.pool_stats()[0].in_use)
print("u", store.fetchval("SELECT count(*) FROM u"))
print("t", len(list(store.fetch("SELECT x FROM t"))))
store.close()
"""


@pytest.mark.parametrize("scenario", ["iterate", "fetch", "prepare"])
def test_ctrl_c_in_a_cursor_or_statement_rolls_back_and_frees_the_connection(
    database_url: str, scenario: str
) -> None:
    child = subprocess.run(
        [sys.executable, "-c", CTRL_C_CHILD, database_url, scenario],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    expected = ["raised KeyboardInterrupt", "in_use 0", "u 0", "t 10"]
    assert child.stdout.splitlines() == expected, child.stderr
    noise = ("Traceback", "Task was destroyed", "never awaited", "Event loop is closed")
    assert not [line for line in noise if line in child.stderr], child.stderr
