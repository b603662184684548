"""The target *server* crashes (SIGKILL of every PostgreSQL process, then crash recovery)
while ``Migrator.run()`` copies, and right after it returned.

Each chunk commits with its checkpoint in one transaction, so whatever recovery keeps is
whole chunks *with* their checkpoints: a re-run skips exactly those and copies the rest —
nothing lost, nothing doubled. A crash right after ``run()`` returned loses nothing: a re-run
finds every checkpoint and copies nothing.
"""

from __future__ import annotations

import asyncio

import pytest

from docstore import MigrationError
from docstore.embedded import EmbeddedServer
from docstore.migrate import Migrator
from tests.legacy_db import legacy_fetch
from tests.reliability.conftest import (
    MIGRATION_DOCS,
    Figures,
    assert_same_rows,
    kill_server,
)

pytestmark = pytest.mark.timeout(300)

DOCS = MIGRATION_DOCS
CHUNK = 20  # 15 chunks


async def _checkpoints(url: str) -> int:
    ((n,),) = await legacy_fetch(url, "SELECT count(*) FROM docstore_migration_checkpoints")
    return int(n)


async def test_a_server_crash_right_after_run_returned_loses_nothing(
    own_server: EmbeddedServer, migration_urls: tuple[str, str], figures: Figures
) -> None:
    legacy_url, target_url = migration_urls
    async with Migrator(legacy_url, target_url, chunk_rows=CHUNK) as m:
        report = await m.run()
    assert report.ok
    killed = await asyncio.to_thread(kill_server, own_server)  # no checkpoint, no flush
    await asyncio.to_thread(own_server.restart_server)  # crash recovery from the WAL
    await assert_same_rows(legacy_url, target_url)
    assert await _checkpoints(target_url) == DOCS // CHUNK
    async with Migrator(legacy_url, target_url, chunk_rows=CHUNK) as m:
        again = await m.run()
    assert again.ok and again.copied_documents == 0 and again.skipped_chunks == DOCS // CHUNK
    figures.add(
        f"SIGKILL of {killed} server processes right after run() returned: all {DOCS} rows "
        f"and {DOCS // CHUNK} checkpoints recovered; a re-run copied nothing"
    )


@pytest.mark.parametrize("after_chunks", [3, 9])
async def test_a_server_crash_during_the_copy_then_a_rerun_is_exact(
    own_server: EmbeddedServer, migration_urls: tuple[str, str], after_chunks: int, figures: Figures
) -> None:
    legacy_url, target_url = migration_urls
    killed: list[int] = []

    def progress(stage: str, done: int, total: int, nbytes: int) -> None:
        # called on the event loop after each committed chunk: the kill lands between a
        # chunk's commit and the next one's, with the other stream's chunk in flight
        if stage == "documents" and done >= after_chunks * CHUNK and not killed:
            killed.append(kill_server(own_server))

    with pytest.raises(MigrationError, match="a re-run resumes"):
        # reconnect_attempts=0: the server stays down, and the re-run is what is tested here
        # (test_migrate_reconnect.py has the run that resumes by itself)
        async with Migrator(
            legacy_url, target_url, chunk_rows=CHUNK, progress=progress, reconnect_attempts=0
        ) as m:
            await m.run()
    assert killed
    await asyncio.to_thread(own_server.restart_server)
    kept = await _checkpoints(target_url)
    assert kept >= after_chunks  # committed chunks are durable
    async with Migrator(legacy_url, target_url, chunk_rows=CHUNK) as m:
        report = await m.run()
    assert report.ok, report.validation
    assert report.skipped_chunks == kept  # every recovered checkpoint's rows were there
    await assert_same_rows(legacy_url, target_url)
    figures.add(
        f"server killed after {after_chunks} chunks reported: {kept} checkpoints survived "
        f"recovery; the re-run skipped {report.skipped_chunks}, copied "
        f"{report.copied_documents} rows, validation ok"
    )
