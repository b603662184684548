"""Ctrl-C during a rollback (the plan's Phase 7, run when the cutover goes wrong).

``Migrator.rollback()`` mirrors the target into the legacy database in one legacy transaction.
Cancelled anywhere — while the target's documents stream into the legacy side's staging table
(a binary COPY), or while ``doc_embeddings`` is rewritten from it — it must raise
``CancelledError`` promptly, leave the legacy database exactly as it was (the transaction rolls
back), leave no session behind on either side, and a re-run must finish the rollback so that
``validate()`` passes. ``docstore rollback`` interrupted by SIGINT exits 130 with one
``error: interrupted`` line and no traceback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

import docstore
from docstore.cli.base import EXIT_INTERRUPTED
from docstore.migrate import Migrator
from tests.conftest import PgCluster
from tests.legacy_db import ROWS_LEGACY, legacy_database
from tests.test_migrate_interrupt import (
    PROMPT,
    ends_cancelled,
    outcome,
    running,
    settle,
    until,
)

pytestmark = pytest.mark.timeout(420)

DOCS = 3000
ROOT = Path(__file__).resolve().parents[1]
STAGE_COPY = "COPY %FROM STDIN%"  # the target's documents streaming into the legacy stage
REWRITE = "INSERT INTO doc_embeddings%"  # doc_embeddings rewritten from the stage


@pytest.fixture
def legacy_url(pg: PgCluster) -> Iterator[str]:
    yield from legacy_database(pg, crates=6, docs=DOCS)


@pytest.fixture
def migrated(legacy_url: str, database_url: str) -> tuple[str, str]:
    """The legacy database migrated, then changed on the target after the cutover (one
    document deleted, one edited), and its ``doc_embeddings`` writes slowed to ~1 ms a row
    (as a busier server's are), so the rollback's rewrite runs long enough to be cut."""

    async def prepare() -> None:
        async with Migrator(legacy_url, database_url) as m:
            assert (await m.run()).ok
        target = await asyncpg.connect(database_url)
        legacy = await asyncpg.connect(legacy_url)
        try:
            await target.execute(
                "DELETE FROM documents WHERE id = (SELECT min(id) FROM documents);"
                " UPDATE documents SET content = 'edited after the cutover'"
                " WHERE id = (SELECT max(id) FROM documents)"
            )
            await legacy.execute(
                "CREATE FUNCTION test_slow_write() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN PERFORM pg_sleep(0.001); RETURN NEW; END $$;"
                " CREATE TRIGGER test_slow_write BEFORE INSERT OR UPDATE ON doc_embeddings"
                " FOR EACH ROW EXECUTE FUNCTION test_slow_write()"
            )
        finally:
            await target.close()
            await legacy.close()

    asyncio.run(prepare())
    return legacy_url, database_url


async def legacy_rows(legacy_url: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(legacy_url)
    try:
        return [tuple(r) for r in await conn.fetch(ROWS_LEGACY)]
    finally:
        await conn.close()


async def assert_rolled_back(legacy_url: str, database_url: str, before: object) -> None:
    """The last rollback finished: the legacy database changed and now pairs with the target."""
    assert await legacy_rows(legacy_url) != before
    async with Migrator(legacy_url, database_url) as m:
        validation = await m.validate()
    assert validation.ok, validation.problems()
    assert validation.target_documents == DOCS - 1


def test_a_cancelled_rollback_raises_promptly_changes_nothing_and_reruns(
    migrated: tuple[str, str],
) -> None:
    legacy_url, database_url = migrated
    asyncio.run(_cancel_rollback(legacy_url, database_url))


async def _cancel_rollback(legacy_url: str, database_url: str) -> None:
    before = await legacy_rows(legacy_url)
    watcher = await asyncpg.connect(legacy_url)
    try:
        async with docstore.connect(database_url) as store:
            for what, pattern, for_ms in (
                ("the target's documents streaming into the stage", STAGE_COPY, 0),
                ("doc_embeddings being rewritten", REWRITE, 200),
            ):
                task = asyncio.create_task(Migrator(legacy_url, store).rollback())
                await until(
                    what,
                    lambda p=pattern, ms=for_ms: running(watcher, p, ms),  # type: ignore[misc]
                    lambda t=task: outcome(t),  # type: ignore[misc]
                )
                task.cancel()
                await ends_cancelled(task, what)
                assert not any(p.in_use for p in store.pool_stats()), store.pool_stats()
                await settle(legacy_url, database_url)
                assert await legacy_rows(legacy_url) == before, f"cancelled at {what}"
            result = await Migrator(legacy_url, store).rollback()
            assert result.documents == DOCS - 1 and result.deleted_documents == 1
    finally:
        await watcher.close()
    await assert_rolled_back(legacy_url, database_url, before)


def test_ctrl_c_during_docstore_rollback_exits_130_and_changes_nothing(
    migrated: tuple[str, str], tmp_path: Path
) -> None:
    legacy_url, database_url = migrated
    before = asyncio.run(legacy_rows(legacy_url))
    command = [
        *(sys.executable, "-m", "docstore", "rollback"),
        *("--source", legacy_url, "--target", database_url),
    ]

    def start(out: Path) -> subprocess.Popen[bytes]:
        out.mkdir()
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"},
            stdout=(out / "stdout").open("wb"),
            stderr=(out / "stderr").open("wb"),
            start_new_session=True,  # as in test_migrate_interrupt: SIGINT as a terminal sends it
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

    async def rewriting(process: subprocess.Popen[bytes], out: Path) -> None:
        watcher = await asyncpg.connect(legacy_url)
        try:
            await until(
                "doc_embeddings being rewritten",
                lambda: running(watcher, REWRITE, 200),
                lambda: "" if process.poll() is None else (out / "stderr").read_text()[-2000:],
            )
        finally:
            await watcher.close()

    out = tmp_path / "interrupted"
    process = start(out)
    try:
        asyncio.run(rewriting(process, out))
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=PROMPT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {PROMPT} s after SIGINT")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    err = (out / "stderr").read_text()
    assert process.returncode == EXIT_INTERRUPTED, err[-3000:]
    assert "Traceback" not in err and "internal error" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("error: interrupted"), err[-3000:]
    asyncio.run(settle(legacy_url, database_url))
    assert asyncio.run(legacy_rows(legacy_url)) == before

    process = start(tmp_path / "rerun")
    assert process.wait(timeout=300) == 0, (tmp_path / "rerun" / "stderr").read_text()[-3000:]
    asyncio.run(assert_rolled_back(legacy_url, database_url, before))
