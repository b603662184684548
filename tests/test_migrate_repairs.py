"""Regression tests of confirmed migration defects (review of 2026-12-02): resumed runs and
renamed chunks, a second legacy database in one doc_type, ids the ranges can't hold, errors
the COPY pipe hid, search-parity ties, stale crate versions after two kills."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

import docstore
from docstore.errors import MigrationError
from docstore.migrate import Migrator
from docstore.migrate.pipe import pipe
from docstore.migrate.report import ParityCheck
from tests.conftest import PgCluster
from tests.legacy_db import build_legacy, legacy_database, legacy_execute, legacy_fetch

DOCS = 120
CHUNK = 25  # 5 chunks: (0, 25], (25, 50], (50, 75], (75, 100], (100, 120]


@pytest.fixture
def legacy_url(pg: PgCluster) -> Iterator[str]:
    yield from legacy_database(pg, crates=6, docs=DOCS)


@pytest.fixture
def other_legacy_url(pg: PgCluster) -> Iterator[str]:
    """A second legacy database: 40 documents of other crates (ids 1-40, as in the first)."""
    name = pg.create_database(prefix="legacy")
    url = pg.url(name)
    asyncio.run(build_legacy(url, crates=6, docs=40))
    asyncio.run(
        legacy_execute(
            url,
            "UPDATE crates SET name = 'b-' || name;"
            " UPDATE crate_configs SET name = 'b-' || name;"
            " UPDATE doc_embeddings SET crate_name = 'b-' || crate_name,"
            " doc_path = 'b/' || doc_path",
        )
    )
    yield url
    pg.drop_database(name)


class Killed(Exception):
    pass


def kill_after_first_chunk(stage: str, done: int, total: int, nbytes: int) -> None:
    if stage == "documents":
        raise Killed


async def target_fetch(url: str, sql: str, *args: Any) -> list[Any]:
    async with docstore.connect(url) as store:
        return list(await store.fetch(sql, *args))


# -- 1: a committed chunk renamed before the resume; validation of doubled legacy ids ------


async def test_a_resumed_run_recopies_a_renamed_committed_chunk_without_keeping_old_keys(
    legacy_url: str, database_url: str
) -> None:
    m = Migrator(
        legacy_url, database_url, chunk_rows=CHUNK, copy_streams=1, progress=kill_after_first_chunk
    )
    with pytest.raises(Killed):
        await m.run()  # chunk (0, 25] committed with its checkpoint
    await m.close()
    # every key of that chunk changes (a path re-layout), the legacy ids stay
    await legacy_execute(
        legacy_url, "UPDATE doc_embeddings SET doc_path = doc_path || '.v2' WHERE id <= 25"
    )
    async with Migrator(
        legacy_url, database_url, chunk_rows=CHUNK, copy_streams=1, validate=False
    ) as m:
        report = await m.run()  # the copy alone, no repair after validation
        validation = await m.validate()
    assert report.skipped_chunks == 0 and validation.ok, validation.problems()
    rows = await target_fetch(
        database_url,
        "SELECT count(*) AS n, count(DISTINCT metadata->>'legacy_id') AS ids FROM documents",
    )
    assert (rows[0]["n"], rows[0]["ids"]) == (DOCS, DOCS)


async def test_a_legacy_id_held_twice_in_the_target_is_named_and_repaired(
    legacy_url: str, database_url: str
) -> None:
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        assert (await m.run()).ok
    # an old key left next to the renamed one: a second row with legacy id 7
    async with docstore.connect(database_url) as store:
        await store.execute(
            "INSERT INTO documents (doc_type, source_name, doc_path, content, metadata,"
            " embedding, token_count, created_at)"
            " SELECT doc_type, source_name, 'old/path.html', content, metadata, embedding,"
            " token_count, created_at FROM documents WHERE metadata->>'legacy_id' = '7'"
        )
        (original,) = await store.fetch(
            "SELECT source_name, doc_path FROM documents"
            " WHERE metadata->>'legacy_id' = '7' AND doc_path <> 'old/path.html'"
        )
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        found = await m.validate()
        assert [(x.legacy_id, x.doc_path, x.problem) for x in found.mismatches] == [
            (7, "old/path.html", "extra in target")
        ]
        report = await m.run()
    # the range holding it no longer matches its checkpoint (26 rows for 25): copied again
    # through staging, which drops the old key, so there is nothing left to repair
    assert report.ok and report.skipped_chunks == 4 and report.repaired_documents == 0
    rows = await target_fetch(
        database_url,
        "SELECT source_name, doc_path FROM documents WHERE metadata->>'legacy_id' = '7'",
    )
    assert [tuple(r) for r in rows] == [tuple(original)]


async def test_a_metadata_value_of_another_json_type_is_a_difference(
    legacy_url: str, database_url: str
) -> None:
    """From review 67: validation read ``metadata.legacy_id`` (and ``legacy_crate_id``) as
    text, so the string "7" passed for the number 7 that the migration stored. It compares
    jsonb's text of each value now; the run repairs them. (``crate_name`` is compared the
    same way; a type change that keeps its text needs a crate named like a JSON scalar.)"""
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        assert (await m.run()).ok
    async with docstore.connect(database_url) as store:
        for key, legacy_id, value in [
            ("legacy_id", 7, "to_jsonb('7'::text)"),
            ("legacy_crate_id", 8, "to_jsonb((metadata->>'legacy_crate_id'))"),
        ]:
            await store.execute(
                f"UPDATE documents SET metadata = jsonb_set(metadata, '{{{key}}}', {value})"
                f" WHERE metadata->>'legacy_id' = '{legacy_id}'"
            )
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        found = await m.validate()
        assert [(x.legacy_id, x.fields) for x in found.mismatches] == [
            (7, ["legacy_id"]),
            (8, ["metadata.legacy_crate_id"]),
        ]
        report = await m.run()
        assert report.ok and (await m.validate()).ok
    rows = await target_fetch(
        database_url,
        "SELECT jsonb_typeof(metadata->'legacy_id'), jsonb_typeof(metadata->'legacy_crate_id'),"
        " jsonb_typeof(metadata->'crate_name') FROM documents"
        " WHERE metadata->>'legacy_id' IN ('7', '8')",
    )
    assert {tuple(r) for r in rows} == {("number", "number", "string")}


# -- 2: a second legacy database into the same doc_type ------------------------------------


async def test_a_second_legacy_database_into_the_same_doc_type_is_refused(
    legacy_url: str, other_legacy_url: str, database_url: str
) -> None:
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        assert (await m.run()).ok
    first_database = urlsplit(legacy_url).path.lstrip("/")
    async with Migrator(other_legacy_url, database_url, chunk_rows=CHUNK) as m:
        pre = await m.preflight()
        (problem,) = pre.blocking
        assert "'rust'" in problem and f"{DOCS} documents" in problem
        assert first_database in problem and "--doc-type" in problem
        with pytest.raises(MigrationError, match="another legacy database"):
            await m.run()
    rows = await target_fetch(database_url, "SELECT count(*) FROM documents")
    assert rows[0][0] == DOCS  # the first database's documents are all there
    async with Migrator(other_legacy_url, database_url, doc_type="rust-b", chunk_rows=CHUNK) as m:
        assert (await m.run()).ok  # another doc_type takes it
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        again = await m.run()  # the first database's re-run is unaffected
    assert again.ok and again.skipped_chunks == 5


async def test_a_doc_type_never_takes_a_longer_doc_types_runs_for_its_own(
    legacy_url: str, other_legacy_url: str, database_url: str
) -> None:
    """Run ids begin with the doc_type and a ':'; a doc_type holding ':' is encoded, so the
    runs into 'rust:b' are not runs of another database into 'rust' (which refused the
    re-run of 'rust' and could have dropped 'rust:b''s checkpoints)."""
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        assert (await m.run()).ok
    async with Migrator(other_legacy_url, database_url, doc_type="rust:b", chunk_rows=CHUNK) as m:
        assert (await m.run()).ok
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        assert not (await m.preflight()).blocking
        again = await m.run()
    assert again.ok and again.skipped_chunks == 5
    async with Migrator(other_legacy_url, database_url, doc_type="rust:b", chunk_rows=CHUNK) as m:
        other = await m.run()
    assert other.ok and other.skipped_chunks == 2 and other.copied_documents == 0  # all kept


async def test_the_same_legacy_database_under_another_name_is_not_refused(
    legacy_url: str, database_url: str, pg: PgCluster
) -> None:
    """Another run id is not another database when that run's stamps still hold here (the
    same rows and row versions: the database reached through another address, or a physical
    copy of it): the run goes on, through staging, and doubles nothing."""
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        assert (await m.run()).ok
    original = urlsplit(legacy_url).path.lstrip("/")
    copy = f"{original}_copy"
    await pg.execute(f'CREATE DATABASE "{copy}" TEMPLATE "{original}" STRATEGY FILE_COPY')
    try:
        async with Migrator(pg.url(copy), database_url, chunk_rows=CHUNK) as m:
            assert not (await m.preflight()).blocking
            again = await m.run()
        assert again.ok and again.copied_documents == DOCS
        rows = await target_fetch(database_url, "SELECT count(*) FROM documents")
        assert rows[0][0] == DOCS
    finally:
        await pg.execute(f'DROP DATABASE "{copy}" WITH (FORCE)')


async def test_a_doc_type_emptied_of_another_databases_documents_takes_a_new_one(
    legacy_url: str, other_legacy_url: str, database_url: str
) -> None:
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        assert (await m.run()).ok
    async with docstore.connect(database_url) as store:
        await store.execute("DELETE FROM documents WHERE doc_type = 'rust'")
    m = Migrator(
        other_legacy_url,
        database_url,
        chunk_rows=CHUNK,
        copy_streams=1,
        progress=kill_after_first_chunk,
    )
    with pytest.raises(Killed):
        await m.run()  # the first database's checkpoints are forgotten as it starts
    await m.close()
    async with Migrator(other_legacy_url, database_url, chunk_rows=CHUNK) as m:
        resumed = await m.run()  # its own documents only: a resume, not refused
    assert resumed.ok and resumed.skipped_chunks == 1


async def test_a_migration_from_the_database_a_rollback_wrote_is_not_refused(
    legacy_url: str, database_url: str, empty_database_url: str
) -> None:
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        assert (await m.run()).ok
    async with Migrator(empty_database_url, database_url) as back:
        await back.rollback()  # the doc_type now pairs with this database
    async with Migrator(empty_database_url, database_url, chunk_rows=CHUNK) as m:
        assert not (await m.preflight()).blocking
        assert (await m.run()).ok


# -- 5: repairing a range at the top of int4 -----------------------------------------------


async def test_a_repair_at_the_largest_legacy_id_stays_within_int4(
    legacy_url: str, database_url: str
) -> None:
    await legacy_execute(
        legacy_url,
        "INSERT INTO doc_embeddings (id, crate_id, crate_name, doc_path, content)"
        " VALUES (2147483647, 4, 'crate3', 'crate3/huge.html', 'the largest int4 id')",
    )
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        assert (await m.run()).ok
    async with docstore.connect(database_url) as store:
        await store.execute(
            "UPDATE documents SET content = 'edited in the target'"
            " WHERE doc_path = 'crate3/huge.html'"
        )
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        report = await m.run()  # validation finds the edit; repair copies its range again
    assert report.ok and report.repaired_documents >= 1
    rows = await target_fetch(
        database_url, "SELECT content FROM documents WHERE doc_path = 'crate3/huge.html'"
    )
    assert rows[0][0] == "the largest int4 id"


# -- 6: legacy ids <= 0 --------------------------------------------------------------------


async def test_legacy_ids_of_zero_or_less_block_the_run_by_name(
    legacy_url: str, database_url: str
) -> None:
    await legacy_execute(
        legacy_url,
        "INSERT INTO doc_embeddings (id, crate_name, doc_path, content)"
        " VALUES (0, 'crate1', 'crate1/zero.html', 'id zero'),"
        " (-3, 'crate1', 'crate1/minus.html', 'id -3')",
    )
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        pre = await m.preflight()
        assert any("id <= 0 (ids -3, 0)" in b for b in pre.blocking), pre.blocking
        with pytest.raises(MigrationError, match=r"id <= 0 \(ids -3, 0\)"):
            await m.run()
    assert (await target_fetch(database_url, "SELECT count(*) FROM documents"))[0][0] == 0


# -- 7: the COPY pipe names the source's error ---------------------------------------------


async def test_the_pipe_raises_the_source_error_not_the_copy_format_error(
    database_url: str,
) -> None:
    src = await asyncpg.connect(database_url)
    tgt = await asyncpg.connect(database_url)
    try:
        await tgt.execute("CREATE TEMP TABLE t (x int)")
        with pytest.raises(asyncpg.DivisionByZeroError) as raised:
            async with tgt.transaction():
                await pipe(src, "SELECT 1/0", (), tgt, "t", ["x"])
        assert isinstance(raised.value.__cause__, asyncpg.PostgresError)  # the target's
        with pytest.raises(asyncpg.DataError, match="int32"):  # an argument out of range
            async with tgt.transaction():
                too_big = (2**31 + 1,)
                await pipe(src, "SELECT generate_series(1, $1)", too_big, tgt, "t", ["x"])
        async with tgt.transaction():  # both connections still work
            assert await pipe(src, "SELECT 1", (), tgt, "t", ["x"]) == 1
    finally:
        await src.close()
        await tgt.close()


# -- 8: search parity with tied distances ---------------------------------------------------


async def test_search_parity_accepts_tied_distances_in_either_order(
    legacy_url: str, database_url: str
) -> None:
    # two pages of crate0 embed identically (ids 1 and 6): a tie at distance 0
    await legacy_execute(
        legacy_url,
        "UPDATE doc_embeddings SET embedding = (SELECT embedding FROM doc_embeddings"
        " WHERE id = 1) WHERE id = 6",
    )
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        assert (await m.run()).ok
    # a rename re-inserts page 1 in the target: docstore's id order of the tie flips
    await legacy_execute(
        legacy_url, "UPDATE doc_embeddings SET doc_path = 'crate0/moved.html' WHERE id = 1"
    )
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        report = await m.run()
        validation = await m.validate()
    assert report.ok and validation.ok, validation.problems()
    (crate0,) = [p for p in validation.parity if p.source_name == "crate0"]
    assert crate0.legacy_distances[:2] == pytest.approx([0.0, 0.0], abs=1e-6)
    assert crate0.legacy_top[:2] != crate0.docstore_top[:2]  # the tie really came out swapped


async def test_search_parity_accepts_another_of_the_documents_tied_at_the_last_place(
    legacy_url: str, database_url: str
) -> None:
    # every page of crate0 embeds identically: its top 5 is 5 of ~20 documents at distance 0
    await legacy_execute(
        legacy_url,
        "UPDATE doc_embeddings SET embedding = (SELECT embedding FROM doc_embeddings"
        " WHERE id = 1) WHERE crate_name = 'crate0' AND embedding IS NOT NULL",
    )
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        assert (await m.run()).ok
    # page 1 is re-inserted in the target under a new id: docstore's 5 now include pages
    # beyond the legacy 5 (how many depends on the ids the copy's chunks were given)
    await legacy_execute(
        legacy_url, "UPDATE doc_embeddings SET doc_path = 'crate0/moved.html' WHERE id = 1"
    )
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        assert (await m.run()).ok
        validation = await m.validate()
    assert validation.ok, validation.problems()
    (crate0,) = [p for p in validation.parity if p.source_name == "crate0"]
    beyond = set(crate0.docstore_top) - set(crate0.legacy_top)
    assert crate0.docstore_distances == pytest.approx([0.0] * 5, abs=1e-6)
    assert beyond and crate0.legacy_ties == sorted(beyond)


def test_parity_check_treats_ties_as_sets_and_anything_else_as_a_difference() -> None:
    def check(legacy: str, ours: str, ld: list[float], od: list[float], **kw: Any) -> bool:
        return ParityCheck(
            source_name="s",
            legacy_top=list(legacy),
            docstore_top=list(ours),
            legacy_ms=1,
            docstore_ms=1,
            legacy_distances=ld,
            docstore_distances=od,
            **kw,
        ).same

    d = [0.1, 0.2, 0.2, 0.3, 0.4]
    assert check("abcde", "abcde", d, d)
    assert check("abcde", "acbde", d, [0.1, 0.2, 0.2 + 1e-7, 0.3, 0.4])  # a tie: either order
    assert not check("abcde", "bacde", d, d)  # not a tie
    assert not check("abcde", "abcdf", d, d)  # another document
    assert not check("abcde", "abcde", d, [0.1, 0.2, 0.2, 0.3, 0.41])  # another distance
    assert not check("abcd", "abcde", d[:4], d)
    tied_last = [0.1, 0.2, 0.3, 0.4, 0.4]  # the 5th place is a tie with a 6th legacy row
    assert not check("abcde", "abcdf", tied_last, tied_last)
    assert check("abcde", "abcdf", tied_last, tied_last, legacy_ties=["f"])
    assert not check("abcde", "abcfe", d, d, legacy_ties=["f"])  # ties only at the last place
    # no distances (a report written before they were recorded): the paths in order
    assert ParityCheck(
        source_name="s", legacy_top=["a"], docstore_top=["a"], legacy_ms=1, docstore_ms=1
    ).same


# -- 9: two kills in a row and a crate version changed between them ------------------------


async def test_a_crate_version_changed_between_two_killed_runs_reaches_every_document(
    legacy_url: str, database_url: str
) -> None:
    def killed() -> Migrator:
        return Migrator(
            legacy_url,
            database_url,
            chunk_rows=CHUNK,
            copy_streams=1,
            validate=False,
            progress=kill_after_first_chunk,
        )

    m = killed()
    with pytest.raises(Killed):
        await m.run()  # chunk (0, 25] committed with crate0's version 0.0.0
    await m.close()
    await legacy_execute(legacy_url, "UPDATE crates SET version = '9.9.9' WHERE name = 'crate0'")
    m = killed()
    with pytest.raises(Killed):
        await m.run()  # its source sync wrote 9.9.9 into crate0's config, then it died
    await m.close()
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK, validate=False) as m:
        report = await m.run()
        validation = await m.validate()
    assert report.refreshed_documents == 5  # crate0's documents of the skipped chunk
    assert validation.ok, validation.problems()
    rows = await target_fetch(
        database_url,
        "SELECT DISTINCT metadata->>'crate_version' FROM documents WHERE source_name = 'crate0'",
    )
    assert [r[0] for r in rows] == ["9.9.9"]


# -- review 67: two servers on one host, each with the same legacy database name -----------


async def _same_named_legacy(server: Any, name: str, docs: int, *, history: int = 0) -> str:
    """``name`` on ``server`` with ``docs`` legacy documents, after ``history`` other
    transactions (two fresh clusters loaded alike give their rows the same xmin, so the same
    checkpoint stamps: what only a physical copy of one database has)."""
    admin = await asyncpg.connect(server.url("postgres"))
    try:
        for _ in range(history):
            await admin.execute("SELECT pg_current_xact_id()")
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = server.url(name)
    extension = await asyncpg.connect(url)
    try:
        await extension.execute("CREATE EXTENSION IF NOT EXISTS vector")
    finally:
        await extension.close()
    await build_legacy(url, crates=6, docs=docs)
    return url


async def test_same_named_legacy_databases_of_two_servers_over_sockets_are_told_apart(
    tmp_path: Any, database_url: str
) -> None:
    """Over a Unix socket the run id was ``legacy@socket:`` for every server: a second server's
    ``legacy`` passed preflight as the first one's and the run deleted the first one's
    documents (1,515 of them, in the review). The id now holds the port and the cluster's
    system identifier."""
    from docstore.embedded import EmbeddedServer
    from docstore.migrate.context import run_id

    first = EmbeddedServer(tmp_path / "first", cleanup="delete").start()
    second = EmbeddedServer(tmp_path / "second", cleanup="delete").start()
    try:
        first_url = await _same_named_legacy(first, "legacy_same", DOCS)
        second_url = await _same_named_legacy(second, "legacy_same", 40, history=50)
        ids = []
        for url in (first_url, second_url):
            conn = await asyncpg.connect(url)
            try:
                ids.append(await run_id(conn, "rust"))
            finally:
                await conn.close()
        assert ids[0] != ids[1] and all("@socket:" in i for i in ids)
        async with Migrator(first_url, database_url, chunk_rows=CHUNK) as m:
            assert (await m.run()).ok
        async with Migrator(second_url, database_url, chunk_rows=CHUNK) as m:
            with pytest.raises(MigrationError, match="another legacy database"):
                await m.run()
        rows = await target_fetch(database_url, "SELECT count(*) FROM documents")
        assert rows[0][0] == DOCS  # nothing of the first server's deleted
        async with Migrator(first_url, database_url, chunk_rows=CHUNK) as m:
            again = await m.run()  # the first server's re-run still resumes
        assert again.ok and again.skipped_chunks == 5
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(
    "source",
    [
        "postgresql://op:s3cr3t@pw@/legacy",  # an unencoded '@' in the password
        "postgresql://op:s3cr3t%zz@/legacy",  # a bad escape
        "postgresql://op:s3cr3t@127.0.0.1:99999/legacy",  # asyncpg connected to port 34463
    ],
)
def test_the_python_api_refuses_a_malformed_legacy_url_as_the_cli_does(source: str) -> None:
    """Review 67: ``Migrator(source)`` handed it to asyncpg as given, which misread it."""
    from docstore.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"Migrator\(source=\.\.\.\)") as info:
        Migrator(source, "postgresql://u@127.0.0.1:1/target")
    assert "s3cr3t" not in str(info.value) and "s3cr3t" not in repr(info.value)


def test_migration_commands_name_both_databases_and_rollback_refuses_the_embedded_fallback(
    legacy_url: str, database_url: str
) -> None:
    """Review 67: with DATABASE_URL unset, `docstore migrate` copied into the embedded server
    and `docstore rollback` then overwrote the legacy database from it, neither naming where."""
    from typer.testing import CliRunner

    from docstore.cli import app

    runner = CliRunner()
    checked = runner.invoke(app, ["validate", "--source", legacy_url, "--target", database_url])
    lines = checked.stdout.splitlines()
    assert lines[0].startswith("source: ") and urlsplit(legacy_url).path in lines[0]
    assert lines[1].startswith("target: ") and lines[1].endswith("(argument)")
    before = asyncio.run(legacy_fetch(legacy_url, "SELECT count(*) FROM doc_embeddings"))
    refused = runner.invoke(app, ["rollback", "--source", legacy_url])  # no target anywhere
    assert refused.exit_code == 1
    assert "embedded PostgreSQL" in refused.stderr and "pass --target" in refused.stderr
    # refused before the embedded server is created or started (it was, just to refuse)
    assert not (Path(os.environ["DOCSTORE_EMBEDDED_DIR"]) / "pgdata").exists()
    after = asyncio.run(legacy_fetch(legacy_url, "SELECT count(*) FROM doc_embeddings"))
    assert after == before  # nothing written into the legacy database


async def test_search_parity_compares_first_answers_and_times_warm_ones() -> None:
    """Review 67: the parity row timed one cold docstore search (6-11 ms against the legacy
    function's 1-3 ms, 0.5-3.6 ms warm), which read as a regression at the plan's T+10."""
    from docstore.migrate.validate import _twice

    calls: list[int] = []

    async def search() -> int:
        calls.append(len(calls))
        return len(calls)

    answer, ms = await _twice(search)
    assert answer == 1 and calls == [0, 1] and ms >= 0


async def test_a_failed_validation_exits_1_with_one_error_line_on_stderr(
    legacy_url: str, database_url: str
) -> None:
    """Review 67: `docstore validate` exited 1 with an empty stderr, where `docstore --help`
    promises one 'error:' line."""
    from typer.testing import CliRunner

    from docstore.cli import app

    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        assert (await m.run()).ok
    await target_fetch(database_url, "UPDATE documents SET content = content || '!' WHERE id = 7")
    args = ["validate", "--source", legacy_url, "--target", database_url]
    result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: validation found differences")
    assert "FAILED" in result.stdout


async def test_a_dry_run_lists_legacy_rows_docstore_would_refuse(
    legacy_url: str, database_url: str
) -> None:
    """Review 67: rows docstore's own writes refuse (empty content or path, a negative
    token_count, an over-long path, a zero or underflowing vector) were copied with no word;
    the app could not then re-write them, and ANN searches missed the vectors."""
    tiny = "[" + ",".join(["1e-9"] * 3072) + "]"
    zero = "[" + ",".join(["0"] * 3072) + "]"
    await legacy_execute(
        legacy_url,
        "UPDATE doc_embeddings SET content = '' WHERE id = 3;"
        " UPDATE doc_embeddings SET doc_path = '' WHERE id = 4;"
        " UPDATE doc_embeddings SET token_count = -1 WHERE id = 5;"
        " UPDATE doc_embeddings SET doc_path = repeat('p', 3000) WHERE id = 6;"
        f" UPDATE doc_embeddings SET embedding = '{zero}' WHERE id = 7;"
        f" UPDATE doc_embeddings SET embedding = '{tiny}' WHERE id IN (8, 9);",
    )
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        result = await m.run(dry_run=True)
    warnings = "\n".join(result.preflight.warnings)
    for what, ids in [
        ("an empty content", "3"),
        ("an empty doc_path", "4"),
        ("a negative token_count", "5"),
        ("a doc_path over 2,048 bytes", "6"),
        ("an all-zero embedding", "7"),
        ("an embedding half precision loses", "8, 9"),
    ]:
        assert f"with {what}" in warnings and f"ids {ids})" in warnings, (what, warnings)
    assert result.preflight.ok  # warnings: the run may go on


async def test_validation_counts_documents_written_in_docstore(
    legacy_url: str, database_url: str
) -> None:
    """Review 67: a document the app wrote into the doc_type (no legacy id) was counted
    nowhere, so a stray write before the switch passed the no-go check unseen."""
    from rich.console import Console

    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        assert (await m.run()).ok
    async with docstore.connect(database_url) as store:
        doc = docstore.Document(source_name="tokio", doc_path="tokio/new.html", content="new")
        await store.documents.upsert_many([doc])
        async with Migrator(legacy_url, store) as m:
            validation = await m.validate()
    assert validation.ok and validation.target_own_documents == 1
    shown = Console(width=200, record=True)
    shown.print(validation)
    assert "documents written in docstore (not compared)" in shown.export_text()


async def test_a_dry_run_into_a_legacy_database_is_blocked_as_the_run_is(legacy_url: str) -> None:
    """Review 67: `migrate --dry-run --target <the legacy database>` passed ("the run creates
    it"), and only the real run refused."""
    async with Migrator(legacy_url, legacy_url) as m:
        result = await m.run(dry_run=True)
    assert not result.preflight.ok
    (problem,) = result.preflight.blocking
    assert "is a legacy rust_docs_vectors database" in problem
    with pytest.raises(docstore.SchemaError, match="legacy rust_docs_vectors database"):
        async with Migrator(legacy_url, legacy_url) as m:
            await m.run()
