"""Second review of 2026-12-06: a replica that keeps pgvector in another schema than the
primary, and what the later reviews found. Real PostgreSQL throughout."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from urllib.parse import urlsplit

import asyncpg
import numpy as np
import pytest
from typer.testing import CliRunner

import docstore
from docstore.cli import EXIT_USAGE, app
from docstore.config import redact_url
from docstore.errors import ReadOnlyError
from docstore.readonly.statements import several_statements
from tests.conftest import PgCluster


def _database(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


@pytest.fixture
def ext_schema_url(pg: PgCluster) -> Iterator[str]:
    """A docstore database whose pgvector lives in schema ``ext`` (a logical replica or
    another database need not keep it where the primary does)."""
    name = pg.create_database()
    pg.run(f'alter database "{name}" set search_path = public, ext')
    url = pg.url(name)

    async def setup() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("create schema ext")
            await conn.execute("create extension vector schema ext")
        finally:
            await conn.close()
        async with docstore.connect(url):  # applies docstore's schema there
            pass

    asyncio.run(setup())
    yield url
    pg.drop_database(name)


async def test_a_replica_with_pgvector_in_another_schema_decodes_vectors(
    database_url: str, ext_schema_url: str
) -> None:
    replica_db = _database(ext_schema_url)
    async with docstore.connect(database_url, database_read_url=ext_schema_url) as store:
        row = await store.replica.fetchrow("select current_database() db, '[1,2,3]'::vector v")
        assert row is not None
        assert row["db"] == replica_db  # read on the replica, not a fallback to the primary
        assert isinstance(row["v"], np.ndarray)
        assert row["v"].tolist() == [1.0, 2.0, 3.0]
        # and the primary still decodes with its own schema
        assert isinstance(await store.fetchval("select '[1,2]'::vector"), np.ndarray)


async def test_reload_to_a_replica_with_pgvector_elsewhere_looks_it_up_again(
    database_url: str, pg: PgCluster, ext_schema_url: str
) -> None:
    other = f"other_{_database(ext_schema_url)}"
    await pg.execute(f'create database "{other}" template "{pg.template}"')
    try:
        async with docstore.connect(database_url, database_read_url=pg.url(other)) as store:
            assert isinstance(await store.replica.fetchval("select '[1]'::vector"), np.ndarray)
            await store.reload(database_url, database_read_url=ext_schema_url)
            row = await store.replica.fetchrow("select current_database() db, '[4]'::vector v")
            assert row is not None and row["db"] == _database(ext_schema_url)
            assert row["v"].tolist() == [4.0]
    finally:
        await pg.execute(f'drop database "{other}" with (force)')


# -- several_statements: what one execute() string holds (pure) ----------------------------
@pytest.mark.parametrize(
    "sql",
    [
        "select 1",
        "select 1;",
        "select 1; ; -- done",
        "select 1; /* a; b */",
        "select ';'",
        "select 'a'';b'",
        'select "a;b"',
        "select $$ ; $$",
        "select $t$ ; $x$ ; $t$",
        "select a$b;",
        "select E'a\\';b'",
        "select $1",
    ],
)
def test_one_statement(sql: str) -> None:
    assert not several_statements(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "select 1; select 2",
        "insert into t values ('x'); commit",
        "begin; select 1; end",
        "select 'a\\'; commit",  # standard_conforming_strings: the backslash is a character
        "select $1; commit",
        "select 'unclosed",
        "select /* unclosed",
        "select $$ unclosed",
    ],
)
def test_several_statements_or_unreadable(sql: str) -> None:
    assert several_statements(sql)


# -- index options out of pgvector's (or the API's) range are usage errors (exit 2) --------
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["index", "create", "--m", "1"], "--m"),
        (["index", "create", "--m", "101"], "--m"),
        (["index", "create", "--ef-construction", "3"], "--ef-construction"),
        (["index", "create", "--m", "16", "--ef-construction", "20"], "--ef-construction"),
        (["index", "calibrate", "--target", "0"], "--target"),
        (["index", "calibrate", "--target", "1.5"], "--target"),
        (["index", "calibrate", "--target", "nan"], "--target"),
        (["index", "calibrate", "--sample", "0"], "--sample"),
        (["index", "recall", "--limit", "1001"], "--limit"),
        (["index", "recall", "--ef-search", "0"], "--ef-search"),
        (["index", "recall", "--oversample", "101"], "--oversample"),
        (["index", "recall", "--sample", "0"], "--sample"),
    ],
)
def test_out_of_range_index_options_are_usage_errors(args: list[str], named: str) -> None:
    """They reached the library and came back as ValidationError, exit 1 ("a docstore
    error"), though the CLI documents exit 2 for an out-of-range value; nothing connects."""
    url = "postgresql://app:hunter2secret@127.0.0.1:1/docs"
    result = CliRunner().invoke(app, [*args, "--url", url])
    assert result.exit_code == EXIT_USAGE, result.output
    assert named in result.output
    assert "hunter2secret" not in result.output


# -- read-only store: whole function names only; cursors' refusals typed -------------------
async def test_a_read_only_store_reads_names_that_merely_contain_a_file_function(
    database_url: str,
) -> None:
    """``hello_export`` or ``'Buffalo_Exports'`` contain ``lo_export`` as a substring and were
    refused as if they called it."""
    async with docstore.connect(database_url, read_only=True) as store:
        assert await store.fetchval("select 1 as hello_export") == 1
        assert await store.fetchval("select 'Buffalo_Exports'") == "Buffalo_Exports"
        with pytest.raises(ReadOnlyError, match="lo_export"):
            await store.fetchval("select pg_catalog.lo_export(0, '/tmp/x')")
        with pytest.raises(ReadOnlyError, match="lo_export"):
            await store.fetchval("select \"lo_export\"(0, '/tmp/x')")


@pytest.mark.parametrize("how", ["iterate", "await-fetch", "await-fetchrow", "await-forward"])
@pytest.mark.parametrize(
    "query",
    [
        "with x as (insert into canary values ('c') returning v) select * from x",
        "select nextval('canary_seq') from generate_series(1, 3)",
    ],
)
async def test_a_write_inside_a_read_only_cursor_is_a_read_only_error(
    database_url: str, how: str, query: str
) -> None:
    """The server refused it, and the refusal escaped as a raw asyncpg error (fetch() on the
    same connection gave ReadOnlyError)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("create table canary (v text); create sequence canary_seq")
    finally:
        await conn.close()
    async with docstore.connect(database_url, read_only=True) as store, store.acquire() as c:
        with pytest.raises(ReadOnlyError, match="read-only"):
            async with c.transaction():
                if how == "iterate":
                    [row async for row in c.cursor(query)]
                else:
                    cursor = await c.cursor(query)
                    await getattr(cursor, how.split("-")[1])(
                        *([1] if "fetchrow" not in how else [])
                    )
        assert await c.fetchval("select count(*) from canary") == 0


def test_a_value_less_query_item_of_a_metrics_url_is_hidden() -> None:
    """``?s3cr3tt0ken`` (a token without ``=``) was printed whole as ``?s3cr3tt0ken=***``."""
    assert redact_url("http://host/metrics?s3cr3tt0ken") == "http://host/metrics?***"
    assert redact_url("http://host/m?a=1&tok&b=") == "http://host/m?a=***&***&b=***"
