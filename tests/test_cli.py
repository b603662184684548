"""The docstore CLI, run in-process against real databases."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from docstore.cli import app
from docstore.schema.runner import LATEST_VERSION

runner = CliRunner()


def test_init_then_init_again_is_a_no_op(empty_database_url: str) -> None:
    first = runner.invoke(app, ["init", "--url", empty_database_url])
    assert first.exit_code == 0, first.output
    assert f"now at version {LATEST_VERSION}" in first.output
    second = runner.invoke(app, ["init", "--url", empty_database_url])
    assert second.exit_code == 0 and "nothing to do" in second.output


def test_health_json_reports_versions_and_source(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    result = runner.invoke(app, ["health", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] and report["schema_version"] == LATEST_VERSION
    assert report["url_source"] == "DATABASE_URL"
    assert report["pgvector_version"] >= "0.8"


def test_health_failure_is_one_clean_line_without_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCSTORE_RETRY_ATTEMPTS", "1")
    result = runner.invoke(app, ["health", "--url", "postgresql://u:hunter2@127.0.0.1:1/x"])
    assert result.exit_code == 1
    assert "DatabaseUnavailableError" in result.output
    assert "hunter2" not in result.output
    assert "Traceback" not in result.output


def test_demo_runs_a_similarity_query_on_an_embedded_database(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)  # the demo must not touch it
    monkeypatch.setenv("COLUMNS", "160")  # rich tables: no doc_path folded across lines
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert "tokio/runtime/index.html" in result.output
    assert "pgvector 0.8" in result.output
    assert "7 inserted" in result.output
    assert "hybrid search for 'async task'" in result.output


def test_quickstart_example_runs(database_url: str) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).parent.parent / "examples" / "quickstart.py"
    env = {**os.environ, "DATABASE_URL": database_url}
    out = subprocess.run(
        [sys.executable, str(example)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "documents: 0" in out.stdout and "pgvector 0.8" in out.stdout


def test_index_commands_build_list_measure_and_drop(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    import numpy as np

    import docstore

    async def load() -> None:
        rng = np.random.default_rng(0)
        async with docstore.connect(database_url) as store:
            await store.documents.upsert_many(
                docstore.Document(
                    source_name="s", doc_path=f"p{i}", content="c", embedding=rng.normal(size=3072)
                )
                for i in range(40)
            )

    asyncio.run(load())
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("COLUMNS", "200")
    created = runner.invoke(app, ["index", "create"])
    assert created.exit_code == 0, created.output
    assert "documents_embedding_hnsw_cosine" in created.output
    listed = runner.invoke(app, ["index", "list"])
    assert "halfvec_cosine_ops" in listed.output and "True" in listed.output
    recall = runner.invoke(app, ["index", "recall", "--sample", "5", "--limit", "3"])
    assert recall.exit_code == 0, recall.output
    assert "recall@3 = 1.000 over 5 queries" in recall.output
    assert "ann" in recall.output and "exact" in recall.output
    bad = runner.invoke(app, ["index", "create", "--metric", "hamming"])
    assert bad.exit_code == 1 and "ValidationError" in bad.output
    dropped = runner.invoke(app, ["index", "drop"])
    assert dropped.exit_code == 0 and "dropped the cosine index" in dropped.output
    text = runner.invoke(app, ["index", "create", "--text"])
    assert text.exit_code == 0 and "full-text index" in text.output
    gone = runner.invoke(app, ["index", "drop", "--text"])
    assert gone.exit_code == 0 and "dropped the full-text index" in gone.output
