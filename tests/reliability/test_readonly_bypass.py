"""Raw SQL cannot write through a read-only store (issue 13): one test per way around.

Each attempt runs against ``connect(read_only=True)`` on a database where a writable
connection would succeed, and must fail; then a separate writable connection checks that
nothing changed (rows of ``documents``, ``document_sources`` and a probe table, relations,
large objects), and the store must still read. The guard is
:class:`docstore.readonly.ReadOnlyConnection`; the server-side guarantee (a reader role) and
``health()`` are in ``tests/test_readonly.py``, the standby at the end of this file.

The embedded server's role is a superuser, which PostgreSQL lets write the server's files and
run programs inside a read-only transaction: the attempts of ``FILE_ATTEMPTS`` try that
(``COPY … TO PROGRAM``, ``lo_export``, …) and must fail with nothing on the filesystem.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import docstore
from docstore.errors import DocstoreError, ReadOnlyError
from tests.conftest import PgCluster, sample_documents
from tests.replica import ReplicaPair, replica_pair_fixture, replica_primary_fixture  # noqa: F401

pytestmark = pytest.mark.timeout(120)

INSERT = "INSERT INTO bypass_probe VALUES (1)"
INSERT_DOC = "INSERT INTO documents (source_name, doc_path, content) VALUES ('evil', 'evil/1', 'x')"

_SETUP = [
    "CREATE TABLE bypass_probe (x int)",
    """CREATE PROCEDURE bypass_commit() LANGUAGE plpgsql AS $$
       BEGIN COMMIT; SET TRANSACTION READ WRITE; INSERT INTO bypass_probe VALUES (1); COMMIT;
       END $$""",
    """CREATE FUNCTION bypass_flip() RETURNS int LANGUAGE plpgsql AS $$
       BEGIN PERFORM set_config('transaction_read_only', 'off', true);
             INSERT INTO bypass_probe VALUES (2); RETURN 1; END $$""",
    """CREATE FUNCTION bypass_reset() RETURNS int LANGUAGE plpgsql AS $$
       BEGIN RESET transaction_read_only; INSERT INTO bypass_probe VALUES (4); RETURN 1; END $$""",
    "SELECT lo_from_bytea(4242, 'exported')",  # a large object for lo_export to write out
]

_STATE = """
select (select count(*) from documents) as documents,
       (select count(*) from document_sources) as sources,
       (select count(*) from bypass_probe) as probe,
       (select count(*) from pg_class where relnamespace = 'public'::regnamespace) as relations,
       (select count(*) from pg_largeobject_metadata) as large_objects,
       (select last_value from documents_id_seq) as sequence
"""


@pytest.fixture
async def read_only(database_url: str) -> AsyncIterator[docstore.Store]:
    """A read-only store on a database with documents and bypass helpers; on exit, a
    separate writable connection checks that nothing changed."""
    async with docstore.connect(database_url) as writer:
        await writer.documents.upsert_many(sample_documents(3))
        for statement in _SETUP:
            await writer.execute(statement)
    check = await asyncpg.connect(database_url)
    try:
        before = dict(await check.fetchrow(_STATE))
        async with docstore.connect(database_url, read_only=True) as store:
            yield store
            assert await store.fetchval("select count(*) from documents") == 3  # still reads
            assert await store.fetchval("show default_transaction_read_only") == "on"
            assert store.pool.get_size() >= 1
        assert dict(await check.fetchrow(_STATE)) == before
    finally:
        await check.close()


Attempt = Callable[[docstore.Store], Awaitable[Any]]
ATTEMPTS: dict[str, Attempt] = {}


def attempt(name: str) -> Callable[[Attempt], Attempt]:
    def register(fn: Attempt) -> Attempt:
        ATTEMPTS[name] = fn
        return fn

    return register


async def _then(conn: Any, first: str, then: str = INSERT) -> None:
    """``first`` (refused or not), then ``then`` on the same connection: must fail."""
    with contextlib.suppress(DocstoreError, asyncpg.PostgresError):
        await conn.execute(first)
    await conn.execute(then)


# -- the three of the issue and their variants ------------------------------------------------


@attempt("a: SET TRANSACTION READ WRITE in store.transaction()")
async def _a(store: docstore.Store) -> None:
    async with store.transaction() as conn:
        await conn.execute("SET TRANSACTION READ WRITE")
        await conn.execute(INSERT)


@attempt("b: BEGIN READ WRITE; INSERT; COMMIT in one execute()")
async def _b(store: docstore.Store) -> None:
    await store.execute(f"BEGIN READ WRITE; {INSERT}; COMMIT")


@attempt("c: SET default_transaction_read_only = off, then INSERT")
async def _c(store: docstore.Store) -> None:
    async with store.acquire() as conn:
        await conn.execute("SET default_transaction_read_only = off")
        await conn.execute(INSERT)


@attempt("c, refusal ignored: the INSERT still fails")
async def _c2(store: docstore.Store) -> None:
    async with store.acquire() as conn:
        await _then(conn, "SET default_transaction_read_only = off")


@attempt("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE, then INSERT")
async def _characteristics(store: docstore.Store) -> None:
    async with store.acquire() as conn:
        await _then(conn, "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")


@attempt("set_config('default_transaction_read_only', 'off', false), then INSERT")
async def _set_config_session(store: docstore.Store) -> None:
    async with store.acquire() as conn:
        with contextlib.suppress(ReadOnlyError):
            await conn.fetchval("select set_config('default_transaction_read_only','off',false)")
        await conn.execute(INSERT)


@attempt("set_config('transaction_read_only', 'off', true) in a transaction")
async def _set_config_local(store: docstore.Store) -> None:
    async with store.transaction() as conn:
        await conn.fetchval("select set_config('transaction_read_only', 'off', true)")
        await conn.execute(INSERT)


@attempt("SET LOCAL transaction_read_only = off in a transaction")
async def _set_local(store: docstore.Store) -> None:
    async with store.transaction() as conn:
        await conn.execute("SET LOCAL transaction_read_only = off")
        await conn.execute(INSERT)


@attempt("SET default_transaction_read_only = off inside a transaction, then INSERT")
async def _default_in_transaction(store: docstore.Store) -> None:
    async with store.acquire() as conn:
        with contextlib.suppress(ReadOnlyError):
            async with conn.transaction():
                await conn.execute("SET default_transaction_read_only = off")
        await conn.execute(INSERT)


@attempt("SET LOCAL smuggling a second statement")
async def _set_local_smuggle(store: docstore.Store) -> None:
    async with store.transaction() as conn:
        await conn.execute(f"SET LOCAL work_mem = 64; COMMIT; BEGIN READ WRITE; {INSERT}")


@attempt("COMMIT; BEGIN READ WRITE; INSERT in one execute()")
async def _commit_begin(store: docstore.Store) -> None:
    async with store.transaction() as conn:
        await conn.execute(f"COMMIT; BEGIN READ WRITE; {INSERT}")


@attempt("COMMIT, BEGIN READ WRITE, INSERT as three calls in a transaction")
async def _commit_begin_apart(store: docstore.Store) -> None:
    async with store.acquire() as conn:
        await conn.execute("BEGIN")
        await conn.execute("COMMIT")
        await _then(conn, "BEGIN READ WRITE")


@attempt("COMMIT AND CHAIN, then SET TRANSACTION READ WRITE")
async def _chain(store: docstore.Store) -> None:
    async with store.transaction() as conn:
        await conn.execute("COMMIT AND CHAIN")
        await conn.execute("SET TRANSACTION READ WRITE")
        await conn.execute(INSERT)


@attempt("ROLLBACK AND CHAIN, then SET TRANSACTION READ WRITE")
async def _rollback_chain(store: docstore.Store) -> None:
    async with store.transaction() as conn:
        await conn.execute("ROLLBACK AND CHAIN")
        await conn.execute("SET TRANSACTION READ WRITE")
        await conn.execute(INSERT)


@attempt("ROLLBACK inside store.transaction(), then INSERT")
async def _rollback_then(store: docstore.Store) -> None:
    async with store.transaction() as conn:
        await conn.execute("ROLLBACK")
        await conn.execute(INSERT)


@attempt("BEGIN READ WRITE on an acquired connection, then INSERT")
async def _begin_rw(store: docstore.Store) -> None:
    async with store.acquire() as conn:
        await _then(conn, "BEGIN READ WRITE")


@attempt("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE")
async def _start_rw(store: docstore.Store) -> None:
    async with store.acquire() as conn:
        await _then(conn, "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE")


@attempt("BEGIN, then SET TRANSACTION READ WRITE before any query")
async def _begin_then_set(store: docstore.Store) -> None:
    async with store.acquire() as conn:
        await conn.execute("BEGIN")
        await _then(conn, "SET TRANSACTION READ WRITE")


@attempt("SAVEPOINT, then SET TRANSACTION READ WRITE")
async def _savepoint(store: docstore.Store) -> None:
    async with store.transaction() as conn:
        await conn.execute("SAVEPOINT s")
        await conn.execute("SET TRANSACTION READ WRITE")


@attempt("RESET transaction_read_only in a transaction")
async def _reset(store: docstore.Store) -> None:
    async with store.transaction() as conn:
        await conn.execute("RESET transaction_read_only")
        await conn.execute(INSERT)


@attempt("DISCARD ALL, then INSERT")
async def _discard(store: docstore.Store) -> None:
    async with store.acquire() as conn:
        await _then(conn, "DISCARD ALL")


@attempt("conn.transaction(readonly=False)")
async def _readonly_false(store: docstore.Store) -> None:
    async with store.acquire() as conn, conn.transaction(readonly=False):
        await conn.execute(INSERT)


@attempt("store.transaction(isolation='serializable'), SET TRANSACTION READ WRITE")
async def _serializable(store: docstore.Store) -> None:
    async with store.transaction(isolation="serializable") as conn:
        await conn.execute("SET TRANSACTION READ WRITE")


# -- every way of sending a statement -------------------------------------------------------


@attempt("execute() with arguments")
async def _with_args(store: docstore.Store) -> None:
    await store.execute("INSERT INTO bypass_probe VALUES ($1)", 1)


@attempt("store.executemany")
async def _store_executemany(store: docstore.Store) -> None:
    await store.executemany("INSERT INTO bypass_probe VALUES ($1)", [(1,), (2,)])


@attempt("executemany COMMIT AND CHAIN, then SET TRANSACTION READ WRITE")
async def _executemany_chain(store: docstore.Store) -> None:
    async with store.transaction() as conn:
        await conn.executemany("COMMIT AND CHAIN", [(), ()])
        await conn.execute("SET TRANSACTION READ WRITE")
        await conn.execute(INSERT)


@attempt("fetchmany INSERT … RETURNING")
async def _fetchmany(store: docstore.Store) -> None:
    async with store.acquire() as conn:
        await conn.fetchmany("INSERT INTO bypass_probe VALUES ($1) RETURNING x", [(1,)])


@attempt("fetch WITH x AS (INSERT … RETURNING 1) SELECT")
async def _cte(store: docstore.Store) -> None:
    await store.fetch("WITH x AS (INSERT INTO bypass_probe VALUES (1) RETURNING 1) SELECT * FROM x")


@attempt("fetchrow INSERT … RETURNING")
async def _fetchrow(store: docstore.Store) -> None:
    await store.fetchrow(f"{INSERT_DOC} RETURNING id")


@attempt("prepared INSERT outside a transaction")
async def _prepared(store: docstore.Store) -> None:
    async with store.acquire() as conn:
        statement = await conn.prepare("INSERT INTO bypass_probe VALUES ($1)")
        await statement.fetch(1)


@attempt("prepared INSERT after the session default was flipped")
async def _prepared_flipped(store: docstore.Store) -> None:
    async with store.acquire() as conn:
        statement = await conn.prepare("INSERT INTO bypass_probe VALUES ($1)")
        with contextlib.suppress(ReadOnlyError):
            await conn.execute("SET default_transaction_read_only = off")
        await statement.fetchval(1)


@attempt("prepared executemany")
async def _prepared_executemany(store: docstore.Store) -> None:
    async with store.acquire() as conn:
        statement = await conn.prepare("INSERT INTO bypass_probe VALUES ($1)")
        await statement.executemany([(1,), (2,)])


@attempt("prepared COMMIT AND CHAIN and SET TRANSACTION READ WRITE")
async def _prepared_chain(store: docstore.Store) -> None:
    async with store.transaction() as conn:
        chain = await conn.prepare("COMMIT AND CHAIN")
        read_write = await conn.prepare("SET TRANSACTION READ WRITE")
        insert = await conn.prepare(INSERT)
        await chain.fetch()
        await read_write.fetch()
        await insert.fetch()


@attempt("prepared DO block that commits")
async def _prepared_do(store: docstore.Store) -> None:
    async with store.acquire() as conn:
        statement = await conn.prepare(
            f"DO $$ BEGIN COMMIT; SET TRANSACTION READ WRITE; {INSERT}; END $$"
        )
        await statement.fetch()


@attempt("EXPLAIN ANALYZE INSERT (prepared statement's explain)")
async def _explain(store: docstore.Store) -> None:
    async with store.acquire() as conn:
        statement = await conn.prepare(INSERT)
        await statement.explain(analyze=True)


@attempt("DO block that commits, then writes")
async def _do(store: docstore.Store) -> None:
    await store.execute(f"DO $$ BEGIN COMMIT; SET TRANSACTION READ WRITE; {INSERT}; END $$")


@attempt("DO block that writes")
async def _do_write(store: docstore.Store) -> None:
    await store.execute(f"DO $$ BEGIN {INSERT}; END $$")


@attempt("CALL a procedure that commits")
async def _call(store: docstore.Store) -> None:
    await store.execute("CALL bypass_commit()")


@attempt("CALL hidden behind nested comments")
async def _call_comment(store: docstore.Store) -> None:
    await store.fetch("/* /* */ SELECT */ CALL bypass_commit()")


@attempt("INSERT behind a comment that says SELECT")
async def _comment(store: docstore.Store) -> None:
    await store.execute(f"-- SELECT\n{INSERT}")


@attempt("a function that turns transaction_read_only off and writes")
async def _function_flip(store: docstore.Store) -> None:
    await store.fetchval("SELECT bypass_flip()")


@attempt("a function that RESETs transaction_read_only")
async def _function_reset(store: docstore.Store) -> None:
    await store.fetchval("SELECT bypass_reset()")


@attempt("SQL PREPARE, then EXECUTE")
async def _sql_prepare(store: docstore.Store) -> None:
    async with store.acquire() as conn:
        await conn.execute(f"PREPARE smuggled AS {INSERT}")
        await conn.execute("EXECUTE smuggled")


@attempt("copy_records_to_table")
async def _copy_records(store: docstore.Store) -> None:
    async with store.acquire() as conn:
        await conn.copy_records_to_table("bypass_probe", records=[(1,)])


@attempt("copy_to_table")
async def _copy_to(store: docstore.Store) -> None:
    async with store.acquire() as conn:
        await conn.copy_to_table("bypass_probe", source=io.BytesIO(b"1\n"))


@attempt("copy_from_query smuggling statements")
async def _copy_query(store: docstore.Store) -> None:
    async with store.acquire() as conn:
        await conn.copy_from_query(
            f"SELECT 1) TO STDOUT; COMMIT; BEGIN READ WRITE; {INSERT}; COMMIT; COPY (SELECT 1",
            output=io.BytesIO(),
        )


@attempt("copy_from_table smuggling statements in an option (standard_conforming_strings off)")
async def _copy_table(store: docstore.Store) -> None:
    async with store.acquire() as conn:
        await conn.execute("SET standard_conforming_strings = off")
        await conn.copy_from_table(
            "documents",
            output=io.BytesIO(),
            delimiter=f"\\'); COMMIT; BEGIN READ WRITE; {INSERT}; COMMIT; --",
        )


@attempt("cursor on COMMIT AND CHAIN")
async def _cursor_chain(store: docstore.Store) -> None:
    async with store.transaction() as conn:
        await conn.cursor("COMMIT AND CHAIN")


@attempt("cursor iterating INSERT … RETURNING")
async def _cursor_insert(store: docstore.Store) -> None:
    async with store.transaction() as conn:
        async for _ in conn.cursor(f"{INSERT} RETURNING x"):
            pass


@attempt("prepared statement's cursor on INSERT … RETURNING")
async def _prepared_cursor(store: docstore.Store) -> None:
    async with store.transaction() as conn:
        statement = await conn.prepare(f"{INSERT} RETURNING x")
        await statement.cursor()


@attempt("store.run(fn)")
async def _run(store: docstore.Store) -> None:
    await store.run(lambda conn: conn.execute(INSERT))


@attempt("store.run_in_transaction(fn) with SET TRANSACTION READ WRITE")
async def _run_in_transaction(store: docstore.Store) -> None:
    async def work(conn: Any) -> None:
        await conn.execute("SET TRANSACTION READ WRITE")
        await conn.execute(INSERT)

    await store.run_in_transaction(work)


@attempt("store.replica.fetch of a writing CTE")
async def _replica(store: docstore.Store) -> None:
    await store.replica.fetch(f"WITH x AS ({INSERT_DOC} RETURNING 1) SELECT * FROM x")


@attempt("asyncpg's pool API (store.pool.execute)")
async def _pool(store: docstore.Store) -> None:
    await store.pool.execute(f"BEGIN READ WRITE; {INSERT}; COMMIT")


@attempt("TRUNCATE documents")
async def _truncate(store: docstore.Store) -> None:
    await store.execute("TRUNCATE documents")


@attempt("nextval of documents' sequence")
async def _nextval(store: docstore.Store) -> None:
    await store.fetchval("SELECT nextval('documents_id_seq')")


@attempt("lo_create (a large object)")
async def _large_object(store: docstore.Store) -> None:
    await store.fetchval("SELECT lo_create(0)")


@attempt("CREATE TEMP TABLE")
async def _temp(store: docstore.Store) -> None:
    await store.execute("CREATE TEMP TABLE scratch (x int)")


@attempt("ALTER SYSTEM")
async def _alter_system(store: docstore.Store) -> None:
    await store.execute("ALTER SYSTEM SET default_transaction_read_only = off")


# Refused by PostgreSQL for a reason other than read-only (the statement cannot run inside
# the read-only transaction block, or the parameter cannot be reset): still no write.
OTHER_REFUSAL: dict[str, Any] = {
    # the first statement was refused inside a transaction: the INSERT finds it aborted
    "BEGIN, then SET TRANSACTION READ WRITE before any query": asyncpg.InFailedSQLTransactionError,
    "a function that RESETs transaction_read_only": DocstoreError,
    "RESET transaction_read_only in a transaction": DocstoreError,
    "ALTER SYSTEM": DocstoreError,
}


@pytest.mark.parametrize("name", list(ATTEMPTS))
async def test_raw_sql_cannot_write_through_a_read_only_store(
    read_only: docstore.Store, name: str
) -> None:
    with pytest.raises(OTHER_REFUSAL.get(name, ReadOnlyError)):
        await ATTEMPTS[name](read_only)


# -- the server's filesystem: what a read-only transaction lets a superuser do ------------------


def _written(directory: Path) -> list[str]:
    """The files in ``directory``."""
    return sorted(p.name for p in directory.iterdir())


def _take(path: Path) -> str:
    """``path``'s text; the file is removed."""
    text = path.read_text()
    path.unlink()
    return text


@pytest.fixture
async def server_dir(pg: PgCluster, tmp_path: Path, database_url: str) -> Path:
    """A directory the server process may write to (it runs as another user when the tests
    run as root); on the embedded server, a writable connection shows it can write there, so
    an empty directory after an attempt means the attempt was refused."""
    await asyncio.to_thread(tmp_path.chmod, 0o777)
    if pg.embedded is not None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f"COPY (SELECT 1) TO '{tmp_path / 'control'}'")
        finally:
            await conn.close()
        assert _take(tmp_path / "control") == "1\n"
    return tmp_path


FileAttempt = Callable[[docstore.Store, Path], Awaitable[Any]]
FILE_ATTEMPTS: dict[str, FileAttempt] = {}


def file_attempt(name: str) -> Callable[[FileAttempt], FileAttempt]:
    def register(fn: FileAttempt) -> FileAttempt:
        FILE_ATTEMPTS[name] = fn
        return fn

    return register


@file_attempt("COPY (query) TO a server file")
async def _copy_to_file(store: docstore.Store, d: Path) -> None:
    await store.execute(f"COPY (SELECT 1) TO '{d}/copy_to_file'")


@file_attempt("COPY table TO PROGRAM")
async def _copy_program(store: docstore.Store, d: Path) -> None:
    await store.execute(f"COPY documents TO PROGRAM 'touch {d}/program'")


@file_attempt("COPY TO PROGRAM: comments, case, line breaks, a dollar-quoted command")
async def _copy_spelled(store: docstore.Store, d: Path) -> None:
    await store.execute(
        f"/* SELECT */ cOpY (select 1) -- TO STDOUT\n\tTo\n pRoGrAm $x$touch {d}/spelled$x$"
    )


@file_attempt("COPY TO PROGRAM behind an E'' string continued over a line break")
async def _copy_continued(store: docstore.Store, d: Path) -> None:
    # PostgreSQL continues E'x' with the next line's string, in E'' mode: \' escapes the quote
    await store.execute(f"COPY (SELECT E'x'\n'\\') TO STDOUT --') TO PROGRAM 'touch {d}/cont'")


@file_attempt("COPY TO PROGRAM behind a backslash, standard_conforming_strings off")
async def _copy_backslash(store: docstore.Store, d: Path) -> None:
    async with store.acquire() as conn:
        await conn.execute("SET standard_conforming_strings = off")
        await conn.execute(f"COPY (SELECT '\\') TO STDOUT --') TO PROGRAM 'touch {d}/scs'")


@file_attempt("COPY TO PROGRAM in a transaction")
async def _copy_in_transaction(store: docstore.Store, d: Path) -> None:
    async with store.transaction() as conn:
        await conn.execute(f"COPY (SELECT 1) TO PROGRAM 'touch {d}/transaction'")


@file_attempt("COPY TO PROGRAM as a prepared statement")
async def _copy_prepared(store: docstore.Store, d: Path) -> None:
    async with store.acquire() as conn:
        statement = await conn.prepare(f"COPY (SELECT 1) TO PROGRAM 'touch {d}/prepared'")
        await statement.fetch()


@file_attempt("COPY TO a file through store.fetch and store.run")
async def _copy_fetch(store: docstore.Store, d: Path) -> None:
    with contextlib.suppress(ReadOnlyError):
        await store.fetch(f"COPY (SELECT 1) TO '{d}/fetch'")
    await store.run(lambda conn: conn.execute(f"COPY (SELECT 1) TO '{d}/run'"))


@file_attempt("copy_from_query smuggling TO PROGRAM")
async def _copy_from_query_program(store: docstore.Store, d: Path) -> None:
    async with store.acquire() as conn:
        await conn.copy_from_query(
            f"SELECT 1) TO PROGRAM 'touch {d}/copy_from_query' --", output=io.BytesIO()
        )


@file_attempt("COPY FROM PROGRAM")
async def _copy_from_program(store: docstore.Store, d: Path) -> None:
    await store.execute(f"COPY bypass_probe FROM PROGRAM 'touch {d}/from_program; echo 1'")


@file_attempt("DO block running COPY TO PROGRAM as dynamic SQL")
async def _do_copy(store: docstore.Store, d: Path) -> None:
    await store.execute(
        f"DO $$ BEGIN EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch {d}/do'''; END $$"
    )


@file_attempt("DO block assembling COPY from pieces")
async def _do_assembled(store: docstore.Store, d: Path) -> None:
    await store.execute(
        f"DO $$ BEGIN EXECUTE 'CO' || 'PY (SELECT 1) TO ' || quote_literal('{d}/pieces'); END $$"
    )


@file_attempt("DO block as a prepared statement")
async def _do_prepared(store: docstore.Store, d: Path) -> None:
    async with store.acquire() as conn:
        statement = await conn.prepare(
            f"DO $$ BEGIN EXECUTE 'COPY (SELECT 1) TO ''{d}/do_prepared'''; END $$"
        )
        await statement.fetch()


@file_attempt("lo_export")
async def _lo_export(store: docstore.Store, d: Path) -> None:
    await store.fetchval(f"SELECT lo_export(4242, '{d}/lo_export')")


@file_attempt('pg_catalog."lo_export"')
async def _lo_export_quoted(store: docstore.Store, d: Path) -> None:
    await store.fetchval(f"SELECT pg_catalog.\"lo_export\"(4242, '{d}/quoted')")


@file_attempt("LO_EXPORT behind comments, with arguments")
async def _lo_export_args(store: docstore.Store, d: Path) -> None:
    await store.fetchval("SELECT /* x */ LO_EXPORT /* y */ ($1, $2)", 4242, f"{d}/args")


@file_attempt('U&"lo\\005fexport" (a Unicode escape)')
async def _lo_export_unicode(store: docstore.Store, d: Path) -> None:
    await store.fetchval(f"SELECT U&\"lo\\005fexport\"(4242, '{d}/unicode')")


@file_attempt("U&\"lo!005fexport\" UESCAPE '!'")
async def _lo_export_uescape(store: docstore.Store, d: Path) -> None:
    await store.fetchval(f"SELECT U&\"lo!005fexport\" UESCAPE '!'(4242, '{d}/uescape')")


@file_attempt("lo_export in a cursor")
async def _lo_export_cursor(store: docstore.Store, d: Path) -> None:
    async with store.transaction() as conn:
        await conn.cursor(f"SELECT lo_export(4242, '{d}/cursor')")


@file_attempt("SQL PREPARE of lo_export, then EXECUTE")
async def _lo_export_sql_prepare(store: docstore.Store, d: Path) -> None:
    async with store.acquire() as conn:
        await conn.execute("PREPARE exported(oid, text) AS SELECT lo_export($1, $2)")
        await conn.execute(f"EXECUTE exported(4242, '{d}/sql_prepare')")


@file_attempt("lo_export inside a query given as text (query_to_xml)")
async def _lo_export_as_text(store: docstore.Store, d: Path) -> None:
    await store.fetchval(
        f"SELECT query_to_xml('SELECT lo_export(4242, ''{d}/as_text'')', true, false, '')"
    )


@file_attempt("a replication slot (files under pg_replslot)")
async def _replication_slot(store: docstore.Store, d: Path) -> None:
    await store.fetchval("SELECT pg_create_physical_replication_slot('ro_bypass_slot')")


@file_attempt("LOAD a library")
async def _load(store: docstore.Store, d: Path) -> None:
    await store.execute("LOAD 'plpgsql'")


@pytest.mark.parametrize("name", list(FILE_ATTEMPTS))
async def test_a_read_only_store_writes_nothing_to_the_server_filesystem(
    read_only: docstore.Store, server_dir: Path, name: str
) -> None:
    with pytest.raises(ReadOnlyError):
        await FILE_ATTEMPTS[name](read_only, server_dir)
    assert _written(server_dir) == []
    slots = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ro_bypass_slot'"
    assert await read_only.fetchval(slots) == 0


async def test_copy_to_stdout_still_works_next_to_the_refusals(
    read_only: docstore.Store, server_dir: Path
) -> None:
    async with read_only.acquire() as conn:
        with pytest.raises(ReadOnlyError):
            await conn.execute(f"COPY (SELECT 1) TO '{server_dir}/x'")
        out = io.BytesIO()
        status = await conn.copy_from_query(
            "SELECT doc_path, 'a\\b' AS b, $1::text AS c FROM documents ORDER BY doc_path",
            "it's",
            output=out,
            format="csv",
            null="\\N",
        )
        assert status == "COPY 3"
        assert out.getvalue().decode().splitlines()[0] == "tokio/0,a\\b,it's"
        out = io.BytesIO()
        status = await conn.copy_from_table("documents", columns=["doc_path"], output=out)
        assert status == "COPY 3"
        path = server_dir / f"client-{uuid.uuid4().hex}.txt"  # a file of the client's: fine
        assert await conn.copy_from_table("bypass_probe", output=path) == "COPY 0"
        assert _take(path) == ""
    assert _written(server_dir) == []


async def test_a_refused_attempt_leaves_the_connection_read_only_and_usable(
    read_only: docstore.Store,
) -> None:
    async with read_only.acquire() as conn:
        for statement in (
            "SET default_transaction_read_only = off",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        ):
            with pytest.raises(ReadOnlyError):
                await conn.execute(statement)
            assert await conn.fetchval("show default_transaction_read_only") == "on"
            assert not conn.is_in_transaction()
        with pytest.raises(ReadOnlyError):
            async with conn.transaction():
                await conn.execute("COMMIT AND CHAIN")
                await conn.execute("SET TRANSACTION READ WRITE")
        assert not conn.is_in_transaction()
        assert await conn.fetchval("select count(*) from documents") == 3


async def test_a_read_write_transaction_opened_behind_the_guard_is_rolled_back(
    read_only: docstore.Store,
) -> None:
    # asyncpg's private protocol is outside the guard; the next guarded statement finds the
    # read-write transaction, rolls it back and refuses.
    async with read_only.acquire() as conn:
        await conn._protocol.query("BEGIN READ WRITE", None)
        with pytest.raises(ReadOnlyError, match="rolled back"):
            await conn.execute(INSERT)
        assert not conn.is_in_transaction()


async def test_a_standby_is_the_guarantee_reported(
    replica_pair: ReplicaPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with docstore.connect(replica_pair.primary_url) as primary:
        await primary.documents.upsert_many(sample_documents(2))
    await replica_pair.sync()
    async with docstore.connect(replica_pair.replica_url, migrate=False) as standby:
        health = await standby.health()
        assert health.in_recovery and health.read_only_guarantee == "standby"
        assert await standby.documents.count() == 2
    monkeypatch.setenv("DATABASE_READ_URL", replica_pair.replica_url)
    async with docstore.connect(replica_pair.primary_url, read_only=True) as store:
        health = await store.health()  # the primary's guarantee, not the standby's
        assert health.read_only and health.read_only_guarantee != "standby"
        assert await store.documents.count() == 2  # through the replica's guarded pool
        with pytest.raises(ReadOnlyError):
            await store.replica.fetch("WITH x AS (DELETE FROM documents RETURNING 1) TABLE x")
