"""Issue 15, acceptance 3: the migrator SIGKILLed while it verifies chunks as they stream.

A real ``python`` process runs ``Migrator.run()`` (validation on, so every committed chunk is
read back and compared while later chunks copy). Its progress callback prints each event and
pauses briefly after each chunk it verified; the test kills it with SIGKILL right after the
n-th ``verified`` event while more chunks are still to verify — inside the streaming
validation, deterministically. Three kills at different points, then a run in this process
must finish with exact validation (``ok``), and every row is counted and checksummed against
the legacy database: nothing lost, nothing doubled.
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
from docstore.migrate import Migrator
from docstore.migrate.migrator import MIGRATION_LOCK_KEY
from tests.conftest import PgCluster
from tests.legacy_db import ROWS_LEGACY, ROWS_TARGET, legacy_database
from tests.reliability.conftest import Figures

pytestmark = pytest.mark.timeout(300)

DOCS = 400
CHUNK = 20  # 20 chunks
ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import asyncio, sys, time
from docstore.migrate import Migrator

def progress(stage, done, total, nbytes):
    print(stage, done, total, flush=True)
    if stage == "verified":
        time.sleep(0.2)  # the parent's SIGKILL lands here: verification in progress
    else:
        time.sleep(0.02)

async def main():
    async with Migrator(sys.argv[1], sys.argv[2], chunk_rows=int(sys.argv[3]),
                        progress=progress) as m:
        report = await m.run()
    print("finished", report.ok, flush=True)

asyncio.run(main())
"""


@pytest.fixture
def legacy_url(pg: PgCluster) -> Iterator[str]:
    yield from legacy_database(pg, crates=6, docs=DOCS)


async def wait_until_unlocked(url: str, timeout: float = 30.0) -> None:
    """Until the killed migrator's backend is gone (it held the migration lock)."""
    conn = await asyncpg.connect(url)
    try:
        async with asyncio.timeout(timeout):
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_KEY):
                await asyncio.sleep(0.05)
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close()


def kill_while_verifying(legacy_url: str, database_url: str, nth: int) -> tuple[int, int]:
    """Run the migrator in a child and SIGKILL it after its ``nth`` verified chunk (while
    chunks remain to verify); returns (rows copied, rows verified) it had reported."""
    asyncio.run(wait_until_unlocked(database_url))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, legacy_url, database_url, str(CHUNK)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout is not None
    copied = verified = seen = 0
    line = ""
    try:
        for line in child.stdout:
            stage, *numbers = line.split()
            if stage == "documents":
                copied = int(numbers[0])
            elif stage == "verified":
                verified, total = int(numbers[0]), int(numbers[1])
                seen += 1
                if seen >= nth and verified < total:
                    child.send_signal(signal.SIGKILL)
                    break
            elif stage == "finished":
                break
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL, f"not killed mid-verification ({line!r})"
    return copied, verified


async def rows(url: str, sql: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


def test_sigkill_during_streaming_validation_then_a_rerun_is_exact(
    legacy_url: str, database_url: str, figures: Figures
) -> None:
    points = []
    for nth in (1, 2, 3):
        copied, verified = kill_while_verifying(legacy_url, database_url, nth)
        points.append(f"killed after {copied} rows copied, {verified} verified")
    figures.add("; ".join(points))

    async def finish() -> None:
        await wait_until_unlocked(database_url)
        async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
            report = await asyncio.wait_for(m.run(), timeout=120)
        assert report.ok, report.validation
        v = report.validation
        assert v is not None and v.target_documents == DOCS and v.mismatched_chunks == 0
        # what the killed runs committed is skipped and re-read; the rest verified streaming
        assert report.skipped_chunks > 0 and v.reread_chunks == report.skipped_chunks
        assert v.streamed_chunks == DOCS // CHUNK - report.skipped_chunks
        figures.add(
            f"re-run: {report.skipped_chunks} chunks kept from the killed runs (re-read), "
            f"{v.streamed_chunks} copied and verified while streaming, ok={report.ok}"
        )
        legacy_rows = await rows(legacy_url, ROWS_LEGACY)
        target_rows = await rows(database_url, ROWS_TARGET)
        assert len(target_rows) == len(legacy_rows) == DOCS  # nothing lost, nothing doubled
        assert target_rows == legacy_rows  # every row, field by field
        async with docstore.connect(database_url) as store:
            assert await store.documents.count() == DOCS

    asyncio.run(finish())
