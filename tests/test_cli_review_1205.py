"""Regression tests of confirmed CLI defects (review of 2026-12-05): values from the user or
the database printed as rich markup — a ``[/x]`` in them was a MarkupError (exit 70, "a bug in
docstore") after the work had succeeded, a ``[red]`` vanished from the output."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import numpy as np
import pytest
from typer.testing import CliRunner

import docstore
from docstore import cli
from docstore.cli import EXIT_ERROR, app
from docstore.cli.metrics import print_metrics
from docstore.errors import ConfigurationError
from tests.conftest import PgCluster
from tests.legacy_db import legacy_database, legacy_execute

runner = CliRunner()
MARKUP = ("legacy[/]", "[red]x", "a[b]", "[bold]y[/bold]")


def _flat(output: str) -> str:
    return " ".join(output.split())


@pytest.mark.parametrize("schema", MARKUP)
def test_compat_views_commands_print_the_schema_as_given(
    database_url: str, monkeypatch: pytest.MonkeyPatch, schema: str
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("DATABASE_URL", database_url)
    done = runner.invoke(app, ["compat", "install-views", "--schema", schema])
    assert done.exit_code == 0, done.output
    assert f"installed in schema {schema!r}" in _flat(done.output)
    gone = runner.invoke(app, ["compat", "uninstall-views", "--schema", schema])
    assert gone.exit_code == 0, gone.output
    assert f"removed from schema {schema!r}" in _flat(gone.output)


DOCS = 20
ODD_PATH = "crate0/impl-Index-for-[T]/[/x]"


@pytest.fixture
def legacy_url(pg: PgCluster) -> Iterator[str]:
    yield from legacy_database(pg, crates=3, docs=DOCS)


def test_migrate_prints_warnings_quoting_legacy_paths_as_they_are(
    legacy_url: str, database_url: str
) -> None:
    """An old-model (1,536-dim) embedding is a warning naming its doc_path; a path with
    ``[/x]`` turned a successful migration into exit 70."""
    asyncio.run(
        legacy_execute(
            legacy_url,
            "DROP FUNCTION search_similar_docs(vector, varchar, integer);"
            " ALTER TABLE doc_embeddings ALTER COLUMN embedding TYPE vector",
        )
    )
    asyncio.run(
        legacy_execute(
            legacy_url,
            "INSERT INTO doc_embeddings (crate_id, crate_name, doc_path, content, embedding)"
            " VALUES (1, 'crate0', $1, 'old model', $2)",
            ODD_PATH,
            np.ones(1536, dtype=np.float32),
        )
    )
    env = {"COLUMNS": "300", "LEGACY_DATABASE_URL": legacy_url, "DATABASE_URL": database_url}
    result = runner.invoke(app, ["migrate"], env=env)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert any(ODD_PATH in line for line in warnings), result.output


def test_demo_prints_its_data_dir_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``docstore demo --data-dir 'x[/]y'`` failed with a MarkupError before starting."""
    directory = tmp_path / "demo[/]dir [red]x"

    async def refuse(path: Path) -> str:
        raise ConfigurationError("stopped here by the test")

    monkeypatch.setattr(cli, "embedded_url", refuse)
    monkeypatch.setenv("COLUMNS", "400")
    result = runner.invoke(app, ["demo", "--data-dir", str(directory)])
    assert result.exit_code == EXIT_ERROR, result.output
    assert f"starting embedded PostgreSQL in {directory} ..." in result.output
    assert "stopped here by the test" in result.output


def test_index_list_and_drop_print_names_from_the_database_as_they_are(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.setenv("DATABASE_URL", database_url)

    async def odd_index() -> None:
        async with docstore.connect(database_url) as store:
            await store.execute(
                'CREATE INDEX "idx[/]odd [red]x" ON documents'
                " USING hnsw ((embedding::halfvec(3072)) halfvec_l2_ops)"
            )

    asyncio.run(odd_index())
    listed = runner.invoke(app, ["index", "list"])
    assert listed.exit_code == 0, listed.output
    assert "idx[/]odd [red]x" in listed.output
    dropped = runner.invoke(app, ["index", "drop", "--metric", "cosine"])
    assert dropped.exit_code == 0 and "no cosine index to drop" in dropped.output


async def test_stats_prints_a_title_and_names_as_they_are(database_url: str) -> None:
    """``docstore stats --from URL`` titles its tables with the URL, and a snapshot read from
    an endpoint holds whatever names it sent."""
    async with docstore.connect(database_url) as store:
        await store.fetchval("SELECT 1")
        snapshot = await store.metrics()
    snapshot.retries["[/]retry"] = 1
    with cli.console.capture() as captured:
        print_metrics(snapshot, "http://exporter/[/]metrics [red]x")
    text = captured.get()
    assert "http://exporter/[/]metrics [red]x" in text
    assert "[/]retry 1" in text


async def test_an_interrupted_demo_build_is_started_over_not_taken_as_done(
    pg: PgCluster, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(Review of 2026-12-06.) Ctrl-C while ``docstore demo --data-dir D`` built its legacy
    database left ``rust_docs_vectors`` half-filled, and every later run migrated it as if
    complete (0 documents). The build now happens under another name, renamed when done."""
    from docstore.cli import demo_command

    real_build = demo_command.build_sample_legacy

    async def interrupted(url: str) -> dict[str, int]:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("create table crates (id int)")  # part of the work, then...
        finally:
            await conn.close()
        raise KeyboardInterrupt

    async def small(url: str) -> dict[str, int]:
        return await real_build(url, crates=3, docs=30)

    try:
        monkeypatch.setattr(demo_command, "build_sample_legacy", interrupted)
        with pytest.raises(KeyboardInterrupt):
            await demo_command._sample_legacy(database_url)
        monkeypatch.setattr(demo_command, "build_sample_legacy", small)
        legacy_url = await demo_command._sample_legacy(database_url)
        conn = await asyncpg.connect(legacy_url)
        try:
            assert await conn.fetchval("select count(*) from doc_embeddings") == 30
        finally:
            await conn.close()
        monkeypatch.setattr(demo_command, "build_sample_legacy", interrupted)
        assert await demo_command._sample_legacy(database_url) == legacy_url  # built once
    finally:
        await pg.execute(
            "DROP DATABASE IF EXISTS rust_docs_vectors",
            "DROP DATABASE IF EXISTS rust_docs_vectors_building",
        )


@pytest.mark.parametrize(
    "url",
    ["http://[::1/metrics", "http://127.0.0.1:abc/metrics", "http://exa mple.com/metrics"],
)
def test_stats_from_a_malformed_url_is_one_error_line(url: str) -> None:
    """(Review of 2026-12-06.) These ended in a traceback and exit 70 ("a bug in docstore")."""
    result = runner.invoke(app, ["stats", "--from", url])
    assert result.exit_code == EXIT_ERROR, result.output
    assert "--from is not a valid URL" in _flat(result.output)
    assert "Traceback" not in result.output
