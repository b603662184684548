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
