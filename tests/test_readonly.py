"""Read-only mode: refused in Python before the database, and by the database itself.

The bypass attempts through raw SQL are in ``tests/reliability/test_readonly_bypass.py``.
"""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import pytest

import docstore
from docstore.compat.legacy_api import LegacyDatabase
from docstore.errors import ConfigurationError, ReadOnlyError, ValidationError
from docstore.readonly import (
    ReadOnlyConnection,
    file_capabilities,
    leading_keyword,
    statement_refusal,
)
from docstore.readonly.statements import _BEGIN_RE, _SET_LOCALS_RE
from docstore.schema.runner import LATEST_VERSION
from docstore.search.queries import ann_settings_sql
from tests.conftest import PgCluster, as_user, sample_documents, unit_vector, writer_role


async def test_read_only_env_blocks_ddl_and_nothing_is_created(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("READ_ONLY", "true")
    async with docstore.connect(database_url) as store:
        assert store.read_only
        with pytest.raises(ReadOnlyError):
            await store.execute("create table t(x int)")
        with pytest.raises(ReadOnlyError):
            await store.execute(
                "insert into documents (source_name, doc_path, content) values ('a','b','c')"
            )
        async with store.transaction() as conn:
            assert await conn.fetchval("show default_transaction_read_only") == "on"
    monkeypatch.delenv("READ_ONLY")
    async with docstore.connect(database_url) as writer:
        assert await writer.fetchval("select to_regclass('t')") is None
        assert await writer.fetchval("select count(*) from documents") == 0


async def test_read_only_argument_refuses_migrate_before_touching_the_database(
    database_url: str,
) -> None:
    async with docstore.connect(database_url, read_only=True) as store:
        with pytest.raises(ReadOnlyError):
            await store.migrate()
        with pytest.raises(ReadOnlyError):
            store.ensure_writable()


async def test_read_only_connect_never_applies_the_schema(empty_database_url: str) -> None:
    async with docstore.connect(empty_database_url, read_only=True, migrate=True) as store:
        status = await store.schema_status()
        assert status.current is None
        assert await store.fetchval("select to_regclass('documents')") is None


async def test_health_reports_read_only(database_url: str) -> None:
    async with docstore.connect(database_url, read_only=True) as store:
        health = await store.health()
    assert health.read_only and health.ok and health.schema_version == LATEST_VERSION


# -- a read-only store still does everything a reader needs ---------------------------------


@pytest.fixture
async def corpus_url(database_url: str) -> str:
    """``database_url`` with 40 documents of two sources, a source row and the HNSW and
    full-text indexes."""
    async with docstore.connect(database_url) as writer:
        await writer.documents.upsert_many(sample_documents(30) + sample_documents(10, "serde"))
        await writer.sources.upsert(docstore.Source(source_name="tokio", config={"version": "1.0"}))
        await writer.create_vector_index(concurrently=False)
        await writer.create_text_index(concurrently=False)
    return database_url


async def test_a_read_only_store_reads_everything_a_reader_needs(corpus_url: str) -> None:
    async with docstore.connect(corpus_url, read_only=True) as store:
        assert store.pool._connection_class is ReadOnlyConnection
        ann = await store.search(unit_vector(3), limit=3, exact=False)
        assert ann.mode == "ann" and {h.doc_path for h in ann[:2]} == {"tokio/3", "serde/3"}
        exact = await store.search(unit_vector(4), source_name="tokio", limit=2, exact=True)
        assert exact[0].doc_path == "tokio/4"
        assert await store.search_text("spawn task", limit=5)
        assert await store.hybrid_search("spawn", unit_vector(5), limit=5)
        doc = await store.documents.get_by_key("rust", "tokio", "tokio/7")
        assert doc is not None and doc.token_count == 7
        assert await store.documents.get(doc.id) == doc
        assert await store.documents.count() == 40
        assert await store.documents.count(source_name="serde") == 10
        assert len([d async for d in store.documents.iter(batch_size=7)]) == 40
        assert {s.source_name for s in await store.documents.stats()} == {"tokio", "serde"}
        source = await store.sources.get("rust", "tokio")
        assert source is not None and source.config["version"] == "1.0"
        assert len(await store.sources.list()) == 1
        assert len(await store.fetch("select id from documents")) == 40
        assert (await store.fetchrow("select count(*) as n from documents"))["n"] == 40
        assert await store.fetchval("select $1::int + 1", 1) == 2
        assert await store.execute("select 1") == "SELECT 1"
        assert len(await store.replica.fetch("select id from documents limit 5")) == 5
        assert await store.run(lambda conn: conn.fetchval("select 7")) == 7
        assert await store.run_in_transaction(lambda conn: conn.fetchval("select 8")) == 8
        legacy = LegacyDatabase(store)
        assert await legacy.count_crate_documents("tokio") == 30
        similar = await legacy.search_similar_docs("tokio", unit_vector(9))
        assert similar[0].doc_path == "tokio/9"

        async with store.transaction(isolation="repeatable_read") as conn:
            assert await conn.fetchval("show transaction_read_only") == "on"
            assert await conn.fetchval("show transaction_isolation") == "repeatable read"
            first = await conn.fetchval("select count(*) from documents")
            await conn.execute("SET LOCAL work_mem = '8MB'")
            assert await conn.fetchval("show work_mem") == "8MB"
            async with conn.transaction():  # a savepoint
                assert await conn.fetchval("select count(*) from documents") == first
            with pytest.raises(ReadOnlyError):
                async with conn.transaction():
                    await conn.execute("delete from documents")
            assert await conn.fetchval("select count(*) from documents") == first
            query = "select doc_path from documents order by doc_type, source_name, doc_path"
            rows = [r["doc_path"] async for r in conn.cursor(query)]
            assert len(rows) == 40
            cursor = await conn.cursor(query)
            assert len(await cursor.fetch(5)) == 5
            assert await cursor.forward(10) == 10
            assert (await cursor.fetchrow())["doc_path"] == rows[15]
            statement = await conn.prepare(
                "select doc_path from documents where source_name = 'tokio' and token_count = $1"
            )
            assert await statement.fetchval(3) == "tokio/3"
            assert len(await statement.fetch(4)) == 1
            assert [r["doc_path"] async for r in statement.cursor(5)] == ["tokio/5"]
            assert await statement.explain(6)

        async with store.acquire() as conn:
            statement = await conn.prepare("select count(*) from documents where token_count > $1")
            assert await statement.fetchval(9) == 20  # outside a transaction too
            assert await conn.fetchmany("select $1::int * 2", [(1,), (2,)]) == [(2,), (4,)]
            await conn.executemany("select $1::int", [(1,), (2,)])
            out = io.BytesIO()
            assert (
                await conn.copy_from_query(
                    "select doc_path from documents where token_count < $1", 2, output=out
                )
                == "COPY 4"
            )
            out = io.BytesIO()
            assert await conn.copy_from_table("document_sources", output=out) == "COPY 1"
            await conn.execute("BEGIN")  # a transaction opened by hand is read-only too
            assert await conn.fetchval("show transaction_read_only") == "on"
            await conn.execute("COMMIT")
            assert not conn.is_in_transaction()

        assert (await store.evaluate_recall(sample=3, limit=3, seed=0.1)).sample == 3
        assert (await store.metrics()).disk is not None
        health = await store.health()
        assert health.read_only  # its guarantee: test_health_names_the_guarantee_in_force


# -- every write API refuses before writing -------------------------------------------------

_STATE = """
select (select count(*) from documents) as documents,
       (select max(updated_at) from documents) as documents_updated,
       (select count(*) from document_sources) as sources,
       (select max(updated_at) from document_sources) as sources_updated,
       (select count(*) from source_population_jobs) as jobs,
       (select array_agg(version order by version) from docstore_schema_version) as versions,
       (select array_agg(indexrelid::regclass::text order by 1) from pg_index
         where indrelid = 'documents'::regclass) as indexes,
       (select count(*) from pg_class where relnamespace = 'public'::regnamespace) as relations,
       (select count(*) from pg_proc where pronamespace = 'public'::regnamespace) as functions,
       (select count(*) from pg_roles) as roles
"""


async def test_every_write_api_refuses_a_read_only_store_and_changes_nothing(
    corpus_url: str,
) -> None:
    async with docstore.connect(corpus_url) as writer:
        legacy_writer = LegacyDatabase(writer)
        config_id = await legacy_writer.create_crate_config("tokio")
        job_id = await legacy_writer.create_population_job(config_id)
        before = dict(await writer.fetchrow(_STATE))
    doc = sample_documents(1, start=100)[0]
    async with docstore.connect(corpus_url, read_only=True) as store:
        legacy = LegacyDatabase(store)
        writes = {
            "documents.upsert": store.documents.upsert(doc),
            "documents.upsert_many": store.documents.upsert_many([doc]),
            "documents.upsert_many atomic": store.documents.upsert_many([doc], atomic=True),
            "documents.delete": store.documents.delete(1),
            "documents.delete_source": store.documents.delete_source("rust", "tokio"),
            "sources.upsert": store.sources.upsert(docstore.Source(source_name="new")),
            "sources.set_enabled": store.sources.set_enabled("rust", "tokio", False),
            "sources.mark_checked": store.sources.mark_checked("rust", "tokio"),
            "sources.mark_populated": store.sources.mark_populated("rust", "tokio"),
            "sources.delete": store.sources.delete("rust", "tokio", with_documents=True),
            "sources.refresh_stats": store.sources.refresh_stats("rust", "tokio"),
            "create_vector_index": store.create_vector_index("l2", concurrently=False),
            "drop_vector_index": store.drop_vector_index(concurrently=False),
            "create_text_index": store.create_text_index(concurrently=False),
            "drop_text_index": store.drop_text_index(concurrently=False),
            "migrate": store.migrate(),
            "create_reader_role": store.create_reader_role("nobody_reads", "secret-pw-1"),
            "legacy.upsert_crate": legacy.upsert_crate("tokio", "2.0"),
            "legacy.insert_embedding": legacy.insert_embedding(
                None, "tokio", "tokio/new", "text", unit_vector(1), 3
            ),
            "legacy.insert_embeddings_batch": legacy.insert_embeddings_batch(
                None, "tokio", [("tokio/new", "text", unit_vector(1), 3)]
            ),
            "legacy.delete_crate_embeddings": legacy.delete_crate_embeddings("tokio"),
            "legacy.install_views": legacy.install_views(),
            "legacy.uninstall_views": legacy.uninstall_views(),
            "legacy.create_crate_config": legacy.create_crate_config("serde"),
            "legacy.update_crate_config": legacy.update_crate_config(config_id, enabled=False),
            "legacy.create_population_job": legacy.create_population_job(config_id),
            "legacy.update_population_job": legacy.update_population_job(job_id, "running"),
        }
        for name, write in writes.items():
            with pytest.raises(ReadOnlyError):
                await write
                pytest.fail(f"{name} wrote on a read-only store")
    async with docstore.connect(corpus_url) as writer:
        assert dict(await writer.fetchrow(_STATE)) == before


# -- which guarantee is in force: health() and the reader role ------------------------------


@contextlib.asynccontextmanager
async def _reader(pg: PgCluster, database_url: str, password: str) -> AsyncIterator[str]:
    """A reader role made by ``Store.create_reader_role`` (its password checked by the
    server on the embedded one); yields its URL, drops it afterwards."""
    name = f"reader_{uuid.uuid4().hex[:10]}"
    async with docstore.connect(database_url) as admin:
        await admin.create_reader_role(name, password)
    hba = pg.embedded.pgdata / "pg_hba.conf" if pg.embedded is not None else None
    line = f"local all {name} scram-sha-256\n"
    if hba is not None:
        hba.write_text(line + hba.read_text())
        await pg.execute("SELECT pg_reload_conf()")
    try:
        yield as_user(database_url, name, password)
    finally:
        if hba is not None:
            hba.write_text(hba.read_text().replace(line, ""))
            await pg.execute("SELECT pg_reload_conf()")
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f'DROP OWNED BY "{name}"; DROP ROLE "{name}"')
        finally:
            await conn.close()


async def test_health_names_the_guarantee_in_force(database_url: str) -> None:
    async with docstore.connect(database_url) as writable:
        health = await writable.health()
        assert not health.read_only and health.read_only_guarantee == "none"
    async with (
        writer_role(database_url) as url,
        docstore.connect(url, read_only=True, migrate=False) as store,
    ):
        health = await store.health()
        assert health.read_only and health.read_only_guarantee == "client"


async def test_health_claims_no_client_guarantee_for_a_role_that_can_write_server_files(
    database_url: str,
) -> None:
    # the embedded server's role is a superuser: COPY … TO PROGRAM through a function's
    # dynamic SQL, pg_switch_wal() … are beyond any client check
    async with docstore.connect(database_url, read_only=True) as store:
        health = await store.health()
    assert health.read_only and health.read_only_guarantee == "none"


async def test_a_reader_role_reads_and_the_server_refuses_its_writes(
    pg: PgCluster, corpus_url: str
) -> None:
    async with _reader(pg, corpus_url, "Rd-" + uuid.uuid4().hex) as url:
        if pg.embedded is not None:  # the password is checked
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(as_user(url, urlsplit(url).username or "", "wrong"))
        # not even read-only in docstore: the guarantee is the server's
        async with docstore.connect(url, read_only=False, migrate=False) as store:
            health = await store.health()
            assert health.read_only and health.read_only_guarantee == "role"
            assert await store.documents.count() == 40
            assert await store.search(unit_vector(2), source_name="tokio", limit=1)
            async with store.acquire() as conn:
                await conn.execute("SET default_transaction_read_only = off")  # no matter
                for sql in (
                    "DELETE FROM documents",
                    "UPDATE documents SET content = 'x'",
                    "CREATE TABLE planted (x int)",
                    "SELECT nextval(pg_get_serial_sequence('documents', 'id'))",
                    "TRUNCATE document_sources",
                ):
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn.execute(sql)
        async with docstore.connect(url, read_only=True) as store:
            assert (await store.health()).read_only_guarantee == "role"
    async with docstore.connect(corpus_url) as writer:
        assert await writer.documents.count() == 40
        assert await writer.fetchval("select to_regclass('planted')") is None
        assert await writer.fetchval("select count(*) from documents where content = 'x'") == 0


async def test_a_reader_role_with_a_non_ascii_password_logs_in(
    pg: PgCluster, database_url: str
) -> None:
    async with (
        _reader(pg, database_url, "pässwörd-" + uuid.uuid4().hex) as url,
        docstore.connect(url, migrate=False) as store,
    ):
        assert (await store.health()).read_only_guarantee == "role"


async def test_create_reader_role_refuses_a_role_that_can_write(database_url: str) -> None:
    async with docstore.connect(database_url) as admin:
        me = await admin.fetchval("select current_user")
        with pytest.raises(ConfigurationError, match="exists and can write"):
            await admin.create_reader_role(me, "not-applied-1")
        assert await admin.fetchval("select rolsuper from pg_roles where rolname = $1", me)
        name = f"reader_{uuid.uuid4().hex[:10]}"
        await admin.execute("GRANT INSERT ON documents TO PUBLIC")
        with pytest.raises(ConfigurationError, match="may write to documents"):
            await admin.create_reader_role(name, "not-applied-2")
        assert await admin.fetchval("select count(*) from pg_roles where rolname = $1", name) == 0
        with pytest.raises(ValidationError):
            await admin.create_reader_role("", "x")


# -- the server's filesystem (the attempts are in tests/reliability/test_readonly_bypass.py) --


async def test_file_capabilities_name_every_way_a_role_could_write_server_files(
    database_url: str,
) -> None:
    name, member = f"files_{uuid.uuid4().hex[:10]}", f"member_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(database_url)
    await conn.execute(f"CREATE ROLE {name}; CREATE ROLE {member} IN ROLE {name}")
    try:
        me = await conn.fetchval("select session_user")
        assert await file_capabilities(conn) == [f"role {me} is a superuser"]
        assert await file_capabilities(conn, name) == []
        await conn.execute(f"GRANT pg_write_server_files, pg_execute_server_program TO {name}")
        await conn.execute(f"GRANT EXECUTE ON FUNCTION lo_export(oid, text) TO {name}")
        await conn.execute(f"ALTER ROLE {name} REPLICATION")
        assert await file_capabilities(conn, name) == [
            f"role {name} has the privileges of pg_execute_server_program",
            f"role {name} has the privileges of pg_write_server_files",
            f"role {name} may create replication slots",
            f"role {name} may run lo_export(oid,text)",
        ]
        assert f"role {name} may create replication slots" in await file_capabilities(
            conn, member
        )  # SET ROLE could reach it
        # the login role counts, not the one SET SESSION AUTHORIZATION switched to
        await conn.execute(f"SET SESSION AUTHORIZATION {member}")
        assert await file_capabilities(conn) == [f"role {me} is a superuser"]
        await conn.execute("RESET SESSION AUTHORIZATION")
    finally:
        await conn.execute(f"DROP OWNED BY {member}, {name}; DROP ROLE {member}, {name}")
        await conn.close()


async def test_a_role_without_file_privileges_keeps_do_blocks_and_copy_to_stdout(
    database_url: str,
) -> None:
    async with (
        writer_role(database_url) as url,
        docstore.connect(url, read_only=True, migrate=False) as store,
        store.acquire() as conn,
    ):
        assert await conn._file_capabilities() == []
        assert await conn.execute("DO $$ BEGIN PERFORM count(*) FROM documents; END $$") == "DO"
        with pytest.raises(ReadOnlyError, match="cannot commit"):  # the server refuses
            await conn.execute(
                "DO $$ BEGIN COMMIT; INSERT INTO document_sources DEFAULT VALUES; END $$"
            )
        with pytest.raises(ReadOnlyError, match="COPY to or from a file"):
            await conn.execute("COPY (SELECT 1) TO '/tmp/never'")
        out = io.BytesIO()
        assert await conn.copy_from_query("SELECT 1 UNION ALL SELECT 2", output=out) == "COPY 2"
        assert out.getvalue() == b"1\n2\n"
        assert await conn.fetchval("select count(*) from documents") == 0


REFUSED_COPY = [
    "COPY t TO '/tmp/x'",
    "COPY t TO PROGRAM 'true'",
    "copy t(a, b) to program 'true'",
    "COPY (SELECT 1) TO $$/tmp/x$$",
    "COPY (SELECT ')') TO PROGRAM 'true'",
    "COPY (SELECT $q$) TO STDOUT$q$) TO PROGRAM 'true'",
    "COPY (SELECT 1 AS \") TO STDOUT\") TO PROGRAM 'true'",
    "COPY (SELECT 1 /* ) TO STDOUT */) TO PROGRAM 'true'",
    "COPY (SELECT 1 -- ) TO STDOUT\n) TO PROGRAM 'true'",
    "COPY (SELECT E'\\') TO STDOUT --') TO PROGRAM 'true'",
    "COPY (SELECT '\\') TO STDOUT --') TO PROGRAM 'true'",  # standard_conforming_strings off
    "COPY (SELECT E'x'\n'\\') TO STDOUT --') TO PROGRAM 'true'",  # continued string
    "COPY (SELECT 'x' -- c\n'y') TO STDOUT",  # continued: refused rather than guessed
    "COPY (SELECT 1) TO STDOUT\x00; COPY t TO PROGRAM 'true'",
    "COPY (SELECT 1 /* unclosed ) TO STDOUT",
    "COPY t FROM STDIN",
    "COPY t FROM PROGRAM 'true'",
    "COPY t TO stdin",
    'COPY t TO "stdout"',
    "COPY BINARY t TO '/tmp/x'",
    "/* x */ (COPY t TO '/tmp/x')",
]
ALLOWED_COPY = [
    "COPY t TO STDOUT",
    "COPY \"to\"(\"from\") TO STDOUT (FORMAT csv, NULL '\\N', DELIMITER '|')",
    "copy (select 'TO PROGRAM ''x''', $$) TO '/x'$$, E'\\'' ) to stdout",
    "COPY (SELECT 1 -- ) TO '/x'\n) TO STDOUT",
    "/* TO PROGRAM */ COPY public.t TO STDOUT WITH (FORMAT binary)",
]


@pytest.mark.parametrize("sql", REFUSED_COPY)
def test_a_copy_is_refused_unless_it_surely_reads_to_stdout(sql: str) -> None:
    assert statement_refusal(sql, leading_keyword(sql)) is not None


@pytest.mark.parametrize("sql", ALLOWED_COPY)
def test_a_copy_to_stdout_is_not_refused(sql: str) -> None:
    assert leading_keyword(sql) == "copy"
    assert statement_refusal(sql, "copy") is None


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT lo_export(1, '/tmp/x')",
        "SELECT pg_catalog.\"lo_export\"(1, '/tmp/x')",
        "SELECT LO_EXPORT(1, '/tmp/x')",
        "SELECT U&\"lo\\005Fexport\"(1, '/tmp/x')",
        "SELECT u&\"lo\\+00005fexport\"(1, '/tmp/x')",
        "SELECT U&\"lo#005fexport\" UESCAPE '#'(1, '/tmp/x')",
        "SELECT query_to_xml('select lo_export(1, ''/tmp/x'')', true, false, '')",
        "SELECT pg_file_write('x', 'y', false)",
        "SELECT pg_create_physical_replication_slot('s')",
        "PREPARE p AS SELECT lo_export($1, $2)",
    ],
)
def test_a_function_writing_server_files_is_refused_however_spelled(sql: str) -> None:
    assert statement_refusal(sql, leading_keyword(sql)) is not None


def test_docstore_s_own_reads_are_not_refused() -> None:
    for sql in (
        "select 1",
        "select * from pg_replication_slots",
        "select doc_path, content from documents where content ilike '%copy%'",
        "WITH x AS (SELECT 1) TABLE x",
        'SELECT U&"d\\0061ta" FROM t',
    ):
        assert statement_refusal(sql, leading_keyword(sql)) is None


# -- the guard's pure parts -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "keyword"),
    [
        ("select 1", "select"),
        ("  (\n(SELECT 1))", "select"),
        ("-- CALL p()\nWITH x AS (SELECT 1) TABLE x", "with"),
        ("-- SELECT\rCALL p()", "call"),  # a -- comment ends at \r too
        ("/* a */ /* b /* nested */ still */ values (1)", "values"),
        ("/* /* */ SELECT */ CALL p()", "call"),
        ("/* unclosed SELECT", None),
        ("select_1", None),  # an identifier
        ("selectä", None),
        ('"select" 1', None),
        ("DO $$ BEGIN COMMIT; END $$", "do"),
        ("", None),
        ("\v\f explain analyze select 1", "explain"),
    ],
)
def test_leading_keyword_reads_past_comments_as_postgresql_does(
    sql: str, keyword: str | None
) -> None:
    assert leading_keyword(sql) == keyword


def test_docstore_search_settings_run_as_one_passthrough_and_nothing_else_does() -> None:
    for force in (True, False):
        assert _SET_LOCALS_RE.fullmatch(ann_settings_sql(40, force_index=force))
    for smuggled in (
        "SET LOCAL work_mem = 64; COMMIT",
        "SET LOCAL work_mem = '64'; SELECT 1",
        "SET LOCAL work_mem = 64 --\n; INSERT INTO t VALUES (1)",
        "SET work_mem = 64",  # a session setting would outlive the transaction
        "SET LOCAL a = 1/**/; BEGIN",
    ):
        assert not _SET_LOCALS_RE.fullmatch(smuggled)


@pytest.mark.parametrize(
    ("sql", "modes"),
    [
        ("BEGIN;", ""),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE;", "SERIALIZABLE"),
        ("start transaction isolation level repeatable read, read only", "REPEATABLE"),
        ("BEGIN WORK READ WRITE", "WRITE"),
    ],
)
def test_begin_statements_are_recognised_with_their_modes(sql: str, modes: str) -> None:
    match = _BEGIN_RE.fullmatch(sql)
    assert match is not None and modes in match["modes"].upper()
    assert _BEGIN_RE.fullmatch("BEGIN; INSERT INTO t VALUES (1)") is None


def test_the_asyncpg_internals_the_guard_relies_on_are_there() -> None:
    """ReadOnlyConnection overrides or calls these private parts of asyncpg (declared minimum
    0.30): a rename in a new asyncpg must fail here, not open a way around the guard."""
    for name in ("_execute", "_get_statement", "_copy_out", "_copy_in", "_check_open", "_reset"):
        assert callable(getattr(asyncpg.Connection, name)), name
    for cls, attribute in (
        (asyncpg.prepared_stmt.PreparedStatement, "_state"),
        (asyncpg.cursor.CursorFactory, "_query"),
        (asyncpg.connresource.ConnectionResource, "_connection"),
    ):
        assert attribute in cls.__slots__, (cls, attribute)
