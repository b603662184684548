"""Fresh databases a deploy step prepares (an exploration of 2026-12-07).

A database that is not UTF8 is refused at connect, before anything is applied (a LATIN1
database got migrations 1-3 and then a raw UntranslatableCharacterError on every connect; a
SQL_ASCII one was accepted and then valid documents failed inside PostgreSQL: varchar limits
counted bytes, jsonb refused the escapes of non-ASCII metadata). A store opened before the
schema existed works once another process applies it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import pytest

import docstore
from docstore.core.pools import VECTOR_SCHEMA, CodecInit
from tests.conftest import PgCluster, sample_documents


@pytest.fixture(params=["LATIN1", "SQL_ASCII"])
def other_encoding_url(pg: PgCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"enc_{uuid.uuid4().hex[:12]}"
    pg.run(
        f"CREATE DATABASE {name} TEMPLATE template0 ENCODING '{request.param}'"
        " LC_COLLATE 'C' LC_CTYPE 'C'"
    )
    yield pg.url(name)
    pg.drop_database(name)


async def test_connect_refuses_a_database_that_is_not_utf8(other_encoding_url: str) -> None:
    with pytest.raises(docstore.SchemaError, match="needs UTF8") as refused:
        await docstore.connect(other_encoding_url)
    assert "TEMPLATE template0 ENCODING 'UTF8'" in str(refused.value)
    conn = await asyncpg.connect(other_encoding_url)
    try:  # nothing was applied: no version table, no tables, no extension
        assert await conn.fetchval("SELECT to_regclass('documents')") is None
        assert (
            await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'vector'") == 0
        )
    finally:
        await conn.close()


async def test_a_store_opened_before_the_schema_works_once_another_process_applies_it(
    empty_database_url: str,
) -> None:
    """Was: a store opened with migrate=False (DOCSTORE_AUTO_MIGRATE=false) on a database a
    deploy step had not yet initialized kept connections without pgvector's codecs after the
    deploy step ran ``docstore init``: every upsert failed with "no binary format encoder for
    type vector", every search with "invalid input for query argument $1", while health()
    said ok. Now a connection asks for pgvector again until it is found, and the pool's older
    connections are replaced."""
    early = await docstore.connect(empty_database_url, migrate=False, pool_min_size=3)
    try:
        async with early.acquire() as a, early.acquire() as b:  # three idle connections
            assert await a.fetchval("SELECT 1") == await b.fetchval("SELECT 1") == 1
        async with docstore.connect(empty_database_url):  # the deploy step: docstore init
            pass
        for round_ in range(3):  # whichever pooled connection each call gets
            docs = sample_documents(5, start=10 * round_)
            assert (await early.documents.upsert_many(docs)).inserted == 5
            hits = await early.search(docs[0].embedding, limit=1)
            assert hits[0].doc_path == docs[0].doc_path
    finally:
        await early.close()


async def test_pgvector_in_a_schema_off_the_search_path_is_a_schema_error(
    empty_database_url: str,
) -> None:
    """Was: QueryError 42704 'type "vector" does not exist' in the middle of the first
    migration; the README promises a SchemaError for pgvector problems."""
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute("CREATE SCHEMA extensions; CREATE EXTENSION vector SCHEMA extensions")
        with pytest.raises(docstore.SchemaError, match="schema extensions, which is not on"):
            await docstore.connect(empty_database_url)
        assert await conn.fetchval("SELECT to_regclass('documents')") is None
    finally:
        await conn.close()


async def test_a_role_that_may_not_create_in_the_schema_is_told_to_run_init_as_the_owner(
    empty_database_url: str,
) -> None:
    """Was: QueryError 42501 "permission denied for schema public" (PostgreSQL 15's default
    for roles that do not own the database) with no hint of what to do."""
    role = f"app_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute("CREATE EXTENSION vector; REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw-{role}'")
        url = empty_database_url.replace(
            "postgresql://postgres:@", f"postgresql://{role}:pw-{role}@"
        )
        assert url != empty_database_url
        with pytest.raises(docstore.SchemaError, match="run `docstore init` once as the"):
            await docstore.connect(url)
        assert await conn.fetchval("SELECT to_regclass('docstore_schema_version')") is None
    finally:
        await conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
        await conn.close()


async def test_a_connection_held_across_the_init_gets_the_codecs_too(
    empty_database_url: str,
) -> None:
    """Review 94: a request held connection A across the deploy step's init while another
    opened connection B, whose set-up found pgvector; the pool stopped looking, A went back
    without codecs and failed every vector call after."""
    early = await docstore.connect(
        empty_database_url, migrate=False, pool_min_size=1, pool_max_size=2
    )
    try:
        async with early.acquire() as held:  # a request in flight across the deploy
            async with docstore.connect(empty_database_url):  # docstore init elsewhere
                pass
            async with early.acquire() as other:  # another request: a new connection
                assert other.get_server_pid() != held.get_server_pid()
        for round_ in range(6):  # whichever pooled connection each call gets
            docs = sample_documents(2, start=10 * round_)
            assert (await early.documents.upsert_many(docs)).inserted == 2
            assert (await early.search(docs[0].embedding, limit=1))[0].doc_path == docs[0].doc_path
    finally:
        await early.close()


async def test_an_upgrade_by_a_role_that_does_not_own_the_tables_says_so(
    database_url: str,
) -> None:
    """Review 94: every 42501 of any migration was reported as "docstore's schema is not
    applied … GRANT CREATE ON SCHEMA", also for an app role (DML grants, CREATE on the schema)
    upgrading tables it does not own, whose server error was "must be owner of table"."""
    role = f"app_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw-{role}'")
        await conn.execute(
            f"GRANT CREATE, USAGE ON SCHEMA public TO {role};"
            f" GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
        )
        await conn.execute("DELETE FROM docstore_schema_version WHERE version >= 7")
        latest = 7  # ALTER TABLE documents ADD CONSTRAINT: only its owner may
        url = database_url.replace("postgresql://postgres:@", f"postgresql://{role}:pw-{role}@")
        assert url != database_url
        with pytest.raises(docstore.SchemaError) as refused:
            await docstore.connect(url)
        message = str(refused.value)
        assert f"schema migration {latest}" in message and "owner" in message
        assert "GRANT CREATE" not in message and "is not applied" not in message
    finally:
        await conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
        await conn.close()


async def test_a_deadlock_that_outlasts_the_retries_is_not_called_an_outage(
    store: docstore.Store,
) -> None:
    """Fresh-database exploration: a deadlock (40P01) left after the retries read "database
    at … unavailable", as if the server were down."""

    async def deadlocked(conn: asyncpg.Connection) -> None:
        await conn.execute("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40P01'; END $$")

    with pytest.raises(docstore.DatabaseUnavailableError) as failed:
        await store.run(deadlocked, retry_in_doubt=True)
    assert "conflict with another transaction" in str(failed.value)
    assert "unavailable" not in str(failed.value)
    assert failed.value.sqlstate == "40P01"


async def test_a_read_replicas_pool_gets_the_codecs_too(empty_database_url: str) -> None:
    """Review 95: the replica's pool (which looks pgvector up on its own server for every
    new connection) kept the connections it had opened before the init, without codecs:
    every search (read from the replica) failed with "invalid input for query argument $1"."""
    url = empty_database_url
    early = await docstore.connect(
        url, migrate=False, database_read_url=url, pool_min_size=1, pool_max_size=2
    )
    try:
        assert await early.replica.fetchval("SELECT 1") == 1  # a replica connection, no codecs
        async with docstore.connect(url):  # docstore init elsewhere
            pass
        docs = sample_documents(4)
        await early.documents.upsert_many(docs)
        for doc in docs:  # reads go to the replica's pool
            assert (await early.search(doc.embedding, limit=1))[0].doc_path == doc.doc_path
    finally:
        await early.close()


class _ReloadDuringLookup(asyncpg.Connection):
    """A real connection on which a reload re-points the pool's ``CodecInit`` while its
    lookup of pgvector's schema is in flight (after the server answered, before the answer
    is used)."""

    during_lookup: Callable[[], None] = staticmethod(lambda: None)

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        answer = await super().fetchval(query, *args, **kwargs)
        if query == VECTOR_SCHEMA:
            self.during_lookup()
        return answer


@pytest.mark.parametrize("reloaded", ["schema_of_the_new_database", None])
@pytest.mark.parametrize("path", ["checkout", "new connection"])
async def test_a_lookup_of_the_old_database_does_not_overwrite_a_reload(
    empty_database_url: str, path: str, reloaded: str | None
) -> None:
    """Review 102: ``CodecInit`` looked pgvector up on a connection to the database the store
    had before a reload, and wrote that database's schema over the one the reload had just
    set (or over the reload's None: the new database has no pgvector yet), so every new
    connection to the new database registered the codecs in the wrong schema."""
    conn = await asyncpg.connect(empty_database_url, connection_class=_ReloadDuringLookup)
    pool = await asyncpg.create_pool(empty_database_url, min_size=0, max_size=1)
    try:
        await conn.execute("CREATE EXTENSION vector")
        init = CodecInit(None)
        conn.during_lookup = lambda: init.repoint(reloaded)
        if path == "checkout":
            await init.found_late(conn, pool)
        else:
            await init(conn)
        assert init.schema == reloaded
        assert init.looking == (reloaded is None)  # the reload's state, untouched
        if reloaded is None:  # no reload this time: what the lookup found is kept
            conn.during_lookup = lambda: None
            await (init.found_late(conn, pool) if path == "checkout" else init(conn))
            assert init.schema == "public"
    finally:
        await pool.close()
        await conn.close()
