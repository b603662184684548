"""docstore.sync: the blocking facade, in a plain script and under a running event loop."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
import warnings

import asyncpg
import numpy as np
import pytest

import docstore
import docstore.sync
from docstore import Document, ValidationError


def docs(n: int) -> list[Document]:
    rng = np.random.default_rng(0)
    return [
        Document(
            source_name="s",
            doc_path=f"p{i}",
            content=f"async runtime {i}",
            embedding=rng.normal(size=3072),
        )
        for i in range(n)
    ]


def test_sync_store_without_await(database_url: str) -> None:
    with docstore.sync.connect(database_url) as store:
        written = docs(30)
        result = store.documents.upsert_many(written)
        assert result.inserted == 30
        assert store.documents.count() == 30
        by_id = [r["doc_path"] for r in store.fetch("select doc_path from documents order by id")]
        assert [d.doc_path for d in store.documents.iter(batch_size=7)] == by_id
        hits = store.search(written[3].embedding, limit=3)
        assert isinstance(hits, docstore.SearchResults) and hits[0].doc_path == "p3"
        assert store.search_text("runtime", limit=5).mode == "text"
        assert store.hybrid_search("runtime 3", written[3].embedding, limit=2)[0].doc_path == "p3"
        assert store.create_vector_index().usable
        assert store.evaluate_recall(sample=5, limit=3).recall == pytest.approx(1.0)
        assert store.fetchval("select count(*) from documents") == 30
        assert store.health().ok
        with pytest.raises(ValidationError, match="1536 dimensions"):
            store.search(np.ones(1536))
        assert repr(store).startswith("<SyncStore <Store url=")
    assert not any(t.name == "docstore-sync" and t.is_alive() for t in threading.enumerate())


async def test_sync_store_works_inside_a_running_loop_like_jupyter(database_url: str) -> None:
    store = docstore.sync.connect(database_url)
    try:
        store.documents.upsert_many(docs(3))
        assert store.documents.count() == 3
    finally:
        store.close()
    store.close()  # idempotent


def test_connection_errors_surface_and_leave_no_thread(empty_database_url: str) -> None:
    before = threading.active_count()
    with pytest.raises(docstore.DatabaseUnavailableError):
        docstore.sync.connect(empty_database_url + "_missing", retry_attempts=1)
    assert threading.active_count() == before


# -- Ctrl-C, garbage collection, use after close, transactions -------------------------------

# Run in a child process (a SIGINT must never hit pytest itself): another session locks
# ``table``, the call under test blocks on that lock, and a watcher sends SIGINT to the main
# thread only once the server shows the call waiting for it.
CTRL_C_CHILD = """
import asyncio, gc, signal, sys, threading, time, warnings
import asyncpg
import docstore.sync

signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
warnings.simplefilter("always")
url, scenario, SESSIONS = sys.argv[1:4]


def run(coro):
    return asyncio.run(coro)


def hold_lock(table):
    ready, done = threading.Event(), threading.Event()

    async def hold():
        conn = await asyncpg.connect(url)
        async with conn.transaction():
            await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            ready.set()
            while not done.is_set():
                await asyncio.sleep(0.02)
        await conn.close()

    thread = threading.Thread(target=run, args=(hold(),))
    thread.start()
    assert ready.wait(60)

    def release():
        done.set()
        thread.join()

    return release


def interrupt_once_blocked():
    async def wait_for_lock_wait():
        conn = await asyncpg.connect(url)
        try:
            while not await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ):
                await asyncio.sleep(0.02)
        finally:
            await conn.close()

    def watch():
        run(wait_for_lock_wait())
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=watch, daemon=True).start()


async def sessions():
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(SESSIONS)
    finally:
        await conn.close()


def interrupted(call):
    try:
        call()
    except BaseException as exc:
        print("raised", type(exc).__name__)
        print(repr(exc), file=sys.stderr)  # shown if the test fails
        return
    print("returned")


if scenario == "iterate":
    store = docstore.sync.connect(url, pool_max_size=2)
    store.execute("INSERT INTO documents (source_name, doc_path, content)"
                  " SELECT 's', 'p' || i, 'c' FROM generate_series(1, 10) AS i")
    rows = store.documents.iter(batch_size=3)
    for _ in range(3):
        next(rows)
    release = hold_lock("documents")
    interrupt_once_blocked()
    interrupted(lambda: next(rows))  # fetches the second batch: waits for the lock
    release()
    print("in_use", store.pool_stats()[0].in_use)
    print("count", store.documents.count())
    store.close()
elif scenario == "connect":
    release = hold_lock("docstore_schema_version")
    interrupt_once_blocked()
    interrupted(lambda: docstore.sync.connect(url))
    release()
gc.collect()
print("threads", sum(t.name == "docstore-sync" for t in threading.enumerate()))
for _ in range(100):  # a terminated backend leaves pg_stat_activity shortly after
    if run(sessions()) == 0:
        break
    time.sleep(0.05)
print("sessions", run(sessions()))
"""

SESSIONS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
)

# what an interrupted call must not leave on stderr
NOISE = (
    "Traceback",
    "Exception ignored",
    "Task was destroyed",
    "Event loop is closed",
    "ResourceWarning",
    "never awaited",
)


def ctrl_c(database_url: str, scenario: str, expected: list[str]) -> None:
    child = subprocess.run(
        [sys.executable, "-c", CTRL_C_CHILD, database_url, scenario, SESSIONS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.splitlines() == expected, child.stderr
    assert not [line for line in NOISE if line in child.stderr], child.stderr


def test_ctrl_c_while_iterating_raises_keyboard_interrupt_and_frees_the_connection(
    database_url: str,
) -> None:
    expected = ["raised KeyboardInterrupt", "in_use 0", "count 10", "threads 0", "sessions 0"]
    ctrl_c(database_url, "iterate", expected)


def test_ctrl_c_during_connect_leaves_no_task_socket_thread_or_session(
    database_url: str,
) -> None:
    ctrl_c(database_url, "connect", ["raised KeyboardInterrupt", "threads 0", "sessions 0"])


async def _sessions(database_url: str) -> int:
    """Client sessions on the database besides this one, once closed ones have gone."""
    conn = await asyncpg.connect(database_url)
    try:
        for _ in range(100):  # a closed connection's backend leaves pg_stat_activity shortly after
            if not (count := await conn.fetchval(SESSIONS)):
                break
            await asyncio.sleep(0.05)
        return int(count)
    finally:
        await conn.close()


def _loop_threads() -> int:
    return sum(t.name == "docstore-sync" and t.is_alive() for t in threading.enumerate())


def test_a_sync_store_dropped_without_close_is_closed_with_a_resource_warning(
    database_url: str,
) -> None:
    before = _loop_threads()
    with pytest.warns(ResourceWarning, match="SyncStore was not closed"):
        for _ in range(3):  # a notebook cell `store = docstore.sync.connect()` run 3 times
            store = docstore.sync.connect(database_url)
            assert store.documents.count() == 0
        del store
        gc.collect()
    assert _loop_threads() == before
    assert asyncio.run(_sessions(database_url)) == 0

    # a part of the store (or an iterator over it) keeps the store open
    documents = docstore.sync.connect(database_url).documents
    gc.collect()
    assert documents.count() == 0
    assert _loop_threads() == before + 1
    with pytest.warns(ResourceWarning, match="SyncStore was not closed"):
        del documents
        gc.collect()
    assert _loop_threads() == before

    # closed explicitly: no warning when it goes
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        docstore.sync.connect(database_url).close()
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_a_closed_sync_store_raises_a_docstore_error(database_url: str) -> None:
    store = docstore.sync.connect(database_url)
    store.documents.upsert_many(docs(5))
    rows = store.documents.iter(batch_size=2)
    next(rows)
    store.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for use in (
            lambda: store.documents.count(),
            lambda: store.search(np.ones(3072)),
            lambda: store.fetchval("SELECT 1"),
            lambda: next(rows),
            lambda: list(store.documents.iter()),
        ):
            with pytest.raises(docstore.DatabaseUnavailableError, match="closed"):
                use()
        with pytest.raises(docstore.DatabaseUnavailableError, match="closed"), store.transaction():
            pass
        gc.collect()
    assert [str(w.message) for w in caught] == []
    store.close()  # still idempotent


def test_transactions_and_connections_from_sync_code(database_url: str) -> None:
    with docstore.sync.connect(database_url) as store:
        store.execute("CREATE TABLE t (x int)")
        with store.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (1)")
            assert conn.fetchval("SELECT count(*) FROM t") == 1
            with conn.transaction():  # a savepoint
                conn.execute("INSERT INTO t VALUES (2)")
            assert [r["x"] for r in conn.fetch("SELECT x FROM t ORDER BY x")] == [1, 2]
        with pytest.raises(ZeroDivisionError), store.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (3)")
            _ = 1 / 0
        # Ctrl-C in the body: rolled back, and the store's loop keeps running
        with pytest.raises(KeyboardInterrupt), store.transaction(isolation="serializable") as conn:
            conn.execute("INSERT INTO t VALUES (4)")
            raise KeyboardInterrupt
        assert store.fetchval("SELECT array_agg(x ORDER BY x) FROM t") == [1, 2]
        with store.acquire() as conn:
            assert conn.fetchrow("SELECT 7 AS x")["x"] == 7
            assert not conn.is_closed()
        with store.try_lock(42) as locked:
            assert locked is True
        assert store.pool_stats()[0].in_use == 0
