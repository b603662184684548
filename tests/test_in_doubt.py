"""Work whose connection broke under it (docstore.core.doubt): a write is never applied twice,
a read still gets its answer, a transaction is run again only when the server says it did
not commit."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

import docstore
from docstore.errors import DatabaseUnavailableError
from tests.conftest import sample_documents


def _break(
    monkeypatch: pytest.MonkeyPatch, method: str, starts: str, *, send: bool = True
) -> dict[str, int]:
    """The next ``method`` call whose query starts with ``starts`` loses its connection: after
    the server ran it (``send``), or before anything reached the server."""
    real = getattr(asyncpg.Connection, method)
    left = {"n": 1}

    async def broken(self: asyncpg.Connection, query: str, *args: Any, **kw: Any) -> Any:
        if query.lstrip().upper().startswith(starts) and left["n"]:
            left["n"] -= 1
            if send:
                await real(self, query, *args, **kw)
            self.terminate()
            raise asyncpg.ConnectionDoesNotExistError(
                "connection was closed in the middle of operation"
            )
        return await real(self, query, *args, **kw)

    monkeypatch.setattr(asyncpg.Connection, method, broken)
    return left


def _connect(url: str) -> docstore.Store:
    return docstore.connect(
        url, retry_attempts=5, retry_initial_delay=0.01, pool_min_size=1, pool_max_size=1
    )


async def test_an_insert_returning_through_fetchval_is_not_run_twice(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _connect(database_url) as store:
        await store.execute("CREATE TABLE audit (n serial, v int)")
        _break(monkeypatch, "fetchval", "INSERT")
        with pytest.raises(DatabaseUnavailableError, match="may or may not have been applied"):
            await store.fetchval("INSERT INTO audit (v) VALUES (1) RETURNING n")
        monkeypatch.undo()
        assert await store.fetchval("SELECT count(*) FROM audit") == 1


async def test_a_read_whose_connection_broke_is_answered_and_leaves_no_read_only_session(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _connect(database_url) as store:
        await store.execute("CREATE TABLE audit (v int)")
        await store.execute("INSERT INTO audit VALUES (1), (2)")
        left = _break(monkeypatch, "fetchval", "SELECT COUNT")
        assert await store.fetchval("SELECT count(*) FROM audit") == 2
        assert left["n"] == 0  # it did break, and was answered by a read-only replay
        # the one pooled connection that replayed it writes again
        assert await store.fetchval("SHOW default_transaction_read_only") == "off"
        assert await store.execute("INSERT INTO audit VALUES (3)") == "INSERT 0 1"


async def test_a_transaction_whose_commit_reply_was_lost_says_it_committed(
    store: docstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Helper review: ``delete_source`` answered 0 after a lost COMMIT reply (the retry found
    nothing left to delete); now the caller learns the delete committed."""
    await store.documents.upsert_many(sample_documents(3, source="tokio"))
    _break(monkeypatch, "execute", "COMMIT")
    with pytest.raises(DatabaseUnavailableError, match="the server committed it"):
        await store.documents.delete_source("rust", "tokio")
    monkeypatch.undo()
    assert await store.documents.count(source_name="tokio") == 0


async def test_a_transaction_broken_before_its_commit_runs_again_once(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _connect(database_url) as store:
        await store.execute("CREATE TABLE audit (v int)")

        async def insert(conn: asyncpg.Connection) -> str:
            return str(await conn.execute("INSERT INTO audit VALUES (1)"))

        left = _break(monkeypatch, "execute", "INSERT")
        assert await store.run_in_transaction(insert) == "INSERT 0 1"
        assert left["n"] == 0
        monkeypatch.undo()
        assert await store.fetchval("SELECT count(*) FROM audit") == 1


async def test_a_commit_that_never_reached_the_server_runs_again_once(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server is asked (txid_status): the transaction aborted, so running it again is
    safe and the caller gets its result."""
    async with _connect(database_url) as store:
        await store.execute("CREATE TABLE audit (v int)")

        async def insert(conn: asyncpg.Connection) -> int:
            return int(await conn.fetchval("INSERT INTO audit VALUES (7) RETURNING v"))

        left = _break(monkeypatch, "execute", "COMMIT", send=False)
        assert await store.run_in_transaction(insert) == 7
        assert left["n"] == 0
        monkeypatch.undo()
        assert await store.fetchval("SELECT count(*) FROM audit") == 1


async def test_a_read_only_transaction_whose_commit_reply_was_lost_runs_again(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It wrote nothing (no transaction id was assigned): nothing can be applied twice."""
    async with _connect(database_url) as store:

        async def read(conn: asyncpg.Connection) -> int:
            return int(await conn.fetchval("SELECT 41 + 1"))

        left = _break(monkeypatch, "execute", "COMMIT")
        assert await store.run_in_transaction(read) == 42
        assert left["n"] == 0


async def test_retry_in_doubt_false_raises_without_a_replay(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _connect(database_url) as store:
        left = _break(monkeypatch, "fetchval", "SELECT 1")
        with pytest.raises(DatabaseUnavailableError, match="may or may not have been applied"):
            await store.run(lambda conn: conn.fetchval("SELECT 1"), retry_in_doubt=False)
        assert left["n"] == 0


async def test_retry_in_doubt_true_runs_work_promised_idempotent_again_as_is(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _connect(database_url) as store:
        await store.execute("CREATE TABLE flags (k text PRIMARY KEY)")
        left = _break(monkeypatch, "execute", "INSERT")

        async def set_flag(conn: asyncpg.Connection) -> str:
            return str(await conn.execute("INSERT INTO flags VALUES ('x') ON CONFLICT DO NOTHING"))

        assert await store.run(set_flag, retry_in_doubt=True) == "INSERT 0 0"  # ran twice
        assert left["n"] == 0
        monkeypatch.undo()
        assert await store.fetchval("SELECT count(*) FROM flags") == 1


def test_asyncpgs_connection_lost_mid_statement_is_in_doubt_but_a_server_answer_is_not() -> None:
    """asyncpg reports a connection lost while a statement ran as ConnectionDoesNotExistError
    — a PostgresError subclass (SQLSTATE 08003) it raises itself, not the server's answer.
    Taken for an answer, a lost write was retried as is (and its pooled connection's detached
    proxy had hidden that behind an InterfaceError)."""
    from docstore.failures import may_have_run

    lost = asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
    lost.__cause__ = ConnectionResetError("reset by peer")
    assert may_have_run(lost)
    fatal = asyncpg.ConnectionDoesNotExistError(
        "connection was closed in the middle of operation: terminating connection"
    )
    fatal.__cause__ = asyncpg.AdminShutdownError("terminating connection")
    assert not may_have_run(fatal)  # the server ended it with an error: rolled back
    assert not may_have_run(
        asyncpg.ConnectionDoesNotExistError("connection was closed during pool initialization")
    )
    assert not may_have_run(asyncpg.SerializationError("could not serialize"))


# -- review of the in-doubt handling (2026-12-05) ------------------------------------------


async def _reset_query(store: docstore.Store) -> str:
    query: str = await store.run(lambda conn: _get_reset_query(conn))
    return " ".join(query.split()[:2]).upper()


async def _get_reset_query(conn: asyncpg.Connection) -> str:
    return conn.get_reset_query()


async def test_work_done_before_its_connection_broke_on_the_way_back_stands(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool's reset query lost the connection after the work returned: the result is
    the caller's, not an error (nor a second run)."""
    async with _connect(database_url) as store:
        await store.execute("CREATE TABLE audit (n serial, v int)")
        reset = await _reset_query(store)
        _break(monkeypatch, "execute", reset)
        assert await store.fetchval("INSERT INTO audit (v) VALUES (1) RETURNING n") == 1
        _break(monkeypatch, "execute", reset)

        async def insert(conn: asyncpg.Connection) -> int:
            return int(await conn.fetchval("INSERT INTO audit (v) VALUES (7) RETURNING v"))

        assert await store.run_in_transaction(insert) == 7
        monkeypatch.undo()
        assert await store.fetchval("SELECT count(*) FROM audit") == 2


async def test_a_cancelled_read_only_replay_leaves_no_read_only_connection_behind(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stateless work skips the pool's reset; its replay must not, or a cancellation between
    its SET and RESET leaves the writable store's one connection refusing writes."""
    async with _connect(database_url) as store:
        await store.execute("CREATE TABLE audit (v int)")
        _break(monkeypatch, "fetch", "SELECT PG_SLEEP", send=False)
        task = asyncio.ensure_future(
            store.run(lambda conn: conn.fetch("SELECT pg_sleep(5)"), stateless=True, read=True)
        )
        await asyncio.sleep(0.5)  # replaying
        while not task.done():  # anyio-style: every await of the cancelled scope cancelled
            task.cancel()
            await asyncio.sleep(0)
        monkeypatch.undo()
        mode = await store.run(
            lambda conn: conn.fetchval("SHOW default_transaction_read_only"), stateless=True
        )
        assert mode == "off"
        assert await store.execute("INSERT INTO audit VALUES (1)") == "INSERT 0 1"


async def test_a_lost_commit_is_settled_through_a_moment_the_server_refuses_connections(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lost COMMIT usually comes with a restart: the next connection is refused for a
    moment too. The status query retries like any query, learns the transaction aborted, and
    runs it again."""
    async with _connect(database_url) as store:
        await store.execute("CREATE TABLE audit (v int)")
        _break(monkeypatch, "execute", "COMMIT", send=False)
        real_acquire = asyncpg.pool.Pool.acquire
        refused = {"n": 0}

        def acquire(self: Any, *args: Any, **kwargs: Any) -> Any:
            if refused["n"] < 2:  # the retry after the break, and the status query's first
                refused["n"] += 1

                async def refuse() -> Any:
                    raise ConnectionRefusedError(111, "Connection refused")

                return refuse()
            return real_acquire(self, *args, **kwargs)

        async def insert(conn: asyncpg.Connection) -> int:
            if refused["n"] == 0:
                monkeypatch.setattr(asyncpg.pool.Pool, "acquire", acquire)
            return int(await conn.fetchval("INSERT INTO audit VALUES (7) RETURNING v"))

        assert await store.run_in_transaction(insert) == 7
        monkeypatch.undo()
        assert await store.fetchval("SELECT count(*) FROM audit") == 1


async def test_with_no_retry_left_the_error_still_says_what_may_have_run(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with docstore.connect(database_url, retry_attempts=1) as store:
        await store.execute("CREATE TABLE audit (v int)")
        _break(monkeypatch, "execute", "INSERT")
        with pytest.raises(DatabaseUnavailableError, match="may or may not have been applied"):
            await store.execute("INSERT INTO audit VALUES (1)")
        _break(monkeypatch, "execute", "COMMIT")
        with pytest.raises(DatabaseUnavailableError, match="the server committed it"):
            await store.run_in_transaction(
                lambda conn: conn.execute("INSERT INTO audit VALUES (2)")
            )
        monkeypatch.undo()
        assert await store.fetchval("SELECT count(*) FROM audit") == 2


async def test_a_commit_that_ran_out_of_command_timeout_is_settled_with_the_server(
    database_url: str,
) -> None:
    """Waiting for a synchronous standby that never answers: the COMMIT is written locally
    and times out on the client. It is asked about like a lost one (the server says "in
    progress" while it waits for the standby) and reported in doubt, not as a plain timeout
    the caller might retry."""
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute("CREATE TABLE audit (v int)")
        async with docstore.connect(database_url, command_timeout=1) as store:
            await store.fetchval("SELECT 1")
            await admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'nosuch'")
            await admin.execute("SELECT pg_reload_conf()")
            await asyncio.sleep(0.3)
            try:
                with pytest.raises(DatabaseUnavailableError, match="may or may not have been"):
                    await store.run_in_transaction(
                        lambda conn: conn.execute("INSERT INTO audit VALUES (1)")
                    )
            finally:
                await admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
                await admin.execute("SELECT pg_reload_conf()")
        # the waiting backend ends its transaction (becomes visible) only once the reload
        # reaches it and releases the wait: poll, don't race it
        deadline = asyncio.get_running_loop().time() + 10
        while await admin.fetchval("SELECT count(*) FROM audit") == 0:
            assert asyncio.get_running_loop().time() < deadline, "the commit never appeared"
            await asyncio.sleep(0.05)
        assert await admin.fetchval("SELECT count(*) FROM audit") == 1
    finally:
        await admin.close()


async def test_single_upserts_redo_a_lost_commit_and_return_the_row(
    store: docstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same values written twice leave the same row: a lost COMMIT is redone, and the
    caller gets the row rather than an error."""
    (doc,) = sample_documents(1, source="tokio")
    _break(monkeypatch, "execute", "COMMIT")
    stored = await store.documents.upsert(doc)
    _break(monkeypatch, "execute", "COMMIT")
    source = await store.sources.upsert({"source_name": "tokio"})
    monkeypatch.undo()
    assert stored.id is not None and source.source_name == "tokio"
    assert await store.documents.count() == 1 and len(await store.sources.list()) == 1


async def test_retry_in_doubt_takes_only_its_three_values(store: docstore.Store) -> None:
    with pytest.raises(docstore.ValidationError, match="retry_in_doubt"):
        await store.run(lambda conn: conn.fetchval("SELECT 1"), retry_in_doubt=1)  # type: ignore[arg-type]
