"""Ctrl-C during a migration (what operators do on cut-over day).

A cancelled ``Migrator.run()`` — what Ctrl-C does to the CLI's main task — must raise
``CancelledError`` promptly wherever it was: inside a binary COPY on either side, while the
streaming verifier reads chunks back, in the delta pass or validation. It must never hang, never
turn the cancellation into another error, never finish and report success. It leaves no pooled
connection checked out, no server session inside a transaction, the migration lock free, and a
re-run finishes with exact validation: nothing lost, nothing doubled. ``docstore migrate``
interrupted by SIGINT (as a terminal sends it, to the process group) exits 130 with one
``error: interrupted`` line and no traceback.

The cancellation points are found by polling the target (checkpoints committed, the COPY
statements in ``pg_stat_activity``), not by fixed sleeps, so a loaded machine only moves them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

import docstore
from docstore.cli.base import EXIT_INTERRUPTED
from docstore.migrate import Migrator
from docstore.migrate.migrator import MIGRATION_LOCK_KEY
from tests.conftest import PgCluster, migrate_process, slow_inserts
from tests.legacy_db import ROWS_LEGACY, ROWS_TARGET, legacy_database

pytestmark = pytest.mark.timeout(420)

DOCS = 3000
CHUNK = 300  # ~3.7 MB a chunk: more than the pipe's queue holds, so it fills while it streams
CHUNKS = DOCS // CHUNK
PROMPT = 10.0  # seconds a cancelled run may take to unwind (expected: well under one)
ROOT = Path(__file__).resolve().parents[1]

COPY_IN = "COPY %FROM STDIN%"  # a chunk streaming into the target (direct or staging)


@pytest.fixture(scope="module")
def legacy_url(pg: PgCluster) -> Iterator[str]:
    yield from legacy_database(pg, crates=6, docs=DOCS)


@pytest.fixture
def target_url(database_url: str) -> str:
    """A target that stores rows slower than the legacy side sends them (~1 ms a document,
    as a remote or busier target does): a chunk's COPY is mid-stream with the pipe's queue
    full for most of its time, where a cancellation used to hang or break the connection."""

    return slow_inserts(database_url)


# -- watching the target ---------------------------------------------------------------------
async def checkpoints(admin: asyncpg.Connection) -> int:
    return int(await admin.fetchval("SELECT count(*) FROM docstore_migration_checkpoints"))


async def running(admin: asyncpg.Connection, pattern: str, for_ms: int = 100) -> bool:
    """Whether a session of this database has run a statement like ``pattern`` for at least
    ``for_ms`` (a COPY that far in is mid-stream, the pipe's queue full)."""
    return bool(
        await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND state = 'active' AND query ILIKE $1"
            " AND clock_timestamp() - query_start > make_interval(secs => $2 / 1000.0)",
            pattern,
            for_ms,
        )
    )


async def until(
    what: str, check: Callable[[], Awaitable[bool]], ended: Callable[[], str], limit: float = 120
) -> None:
    """Poll ``check`` (every few ms) until true; fails if ``ended()`` says how the migration
    ended first."""
    deadline = time.monotonic() + limit
    while not await check():
        assert not (how := ended()), f"the migration ended before {what}: {how}"
        assert time.monotonic() < deadline, f"no {what} within {limit} s"
        await asyncio.sleep(0.005)


async def settled(admin: asyncpg.Connection, legacy: asyncpg.Connection, limit: float = 10) -> None:
    """Within ``limit`` s: no target session in a transaction or running a statement, no
    migrator session left on the legacy database, the migration lock free."""
    deadline = time.monotonic() + limit
    while True:
        busy = await admin.fetch(
            "SELECT pid, state, left(query, 60) AS query FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend' AND state <> 'idle'"
        )
        left = await legacy.fetch(
            "SELECT pid, state, left(query, 60) AS query FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'docstore-migrate'"
        )
        locked = not await admin.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_KEY)
        if not locked:
            await admin.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        if not busy and not left and not locked:
            return
        assert time.monotonic() < deadline, (
            f"after the cancel: target sessions {[dict(r) for r in busy]}, legacy sessions"
            f" {[dict(r) for r in left]}, migration lock held: {locked}"
        )
        await asyncio.sleep(0.05)


async def settle(legacy_url: str, database_url: str) -> None:
    """:func:`settled`, on connections of its own."""
    admin = await asyncpg.connect(database_url)
    legacy = await asyncpg.connect(legacy_url)
    try:
        await settled(admin, legacy)
    finally:
        await admin.close()
        await legacy.close()


async def assert_exact(legacy_url: str, database_url: str) -> None:
    """Every legacy row in the target, field by field, once."""
    legacy = await asyncpg.connect(legacy_url)
    target = await asyncpg.connect(database_url)
    try:
        legacy_rows = [tuple(r) for r in await legacy.fetch(ROWS_LEGACY)]
        target_rows = [tuple(r) for r in await target.fetch(ROWS_TARGET)]
    finally:
        await legacy.close()
        await target.close()
    assert len(target_rows) == len(legacy_rows) == DOCS  # nothing lost, nothing doubled
    assert target_rows == legacy_rows


# -- in process ------------------------------------------------------------------------------
def outcome(task: asyncio.Task[object]) -> str:
    """How ``task`` ended ("" while it runs)."""
    if not task.done():
        return ""
    if task.cancelled():
        return "cancelled"
    return repr(task.exception()) if task.exception() else f"finished: {task.result()!r:.300}"


async def ends_cancelled(task: asyncio.Task[object], what: str) -> None:
    """``task``, cancelled at ``what``, ends cancelled (no other outcome) within PROMPT s."""
    started = time.monotonic()
    done, _ = await asyncio.wait([task], timeout=PROMPT)
    assert done, f"cancelled at {what}: still running {PROMPT} s later"
    assert task.cancelled(), f"cancelled at {what}: ended {outcome(task)}"
    assert time.monotonic() - started < PROMPT


def loops() -> list[str]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return ["asyncio"]
    return ["asyncio", "uvloop"]


@pytest.mark.parametrize("loop", loops())
def test_a_cancelled_run_raises_promptly_leaves_nothing_behind_and_resumes_exactly(
    legacy_url: str, target_url: str, loop: str
) -> None:
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_cancel_at_several_points(legacy_url, target_url))


async def _cancel_at_several_points(legacy_url: str, database_url: str) -> None:
    admin = await asyncpg.connect(database_url)
    legacy = await asyncpg.connect(legacy_url)
    try:
        async with docstore.connect(database_url) as store:
            running_task: list[asyncio.Task[object]] = []
            handed: list[bool] = []

            def progress(stage: str, done: int, total: int, nbytes: int) -> None:
                # the 3rd point: cancelled from inside the run, right after a committed chunk
                # went to the verifier (its read-back starts while the next chunk streams)
                if stage == "documents" and handed == [False]:
                    handed[0] = True
                    running_task[0].cancel()

            async def copying(base: int) -> bool:
                return await running(admin, COPY_IN)

            async def more_chunks_copying(base: int) -> bool:
                return await checkpoints(admin) >= base + 2 and await running(admin, COPY_IN)

            async def handed_to_verifier(base: int) -> bool:
                return handed == [True]

            async def copied_all(base: int) -> bool:
                return await checkpoints(admin) >= CHUNKS

            points: list[tuple[str, Callable[[int], Awaitable[bool]]]] = [
                ("a chunk streaming into the target", copying),
                ("two more chunks committed, the next streaming", more_chunks_copying),
                ("a chunk handed to the verifier, the next streaming", handed_to_verifier),
                ("every chunk committed (delta pass, validation)", copied_all),
            ]
            for what, point in points:
                base = await checkpoints(admin)
                handed[:] = [False] if point is handed_to_verifier else []
                m = Migrator(legacy_url, store, chunk_rows=CHUNK, progress=progress)
                task = asyncio.create_task(m.run())
                running_task[:] = [task]
                await until(what, lambda p=point, b=base: p(b), lambda t=task: outcome(t))  # type: ignore[misc]
                if not handed:
                    task.cancel()
                await ends_cancelled(task, what)
                deadline = time.monotonic() + 5
                while any(p.in_use for p in store.pool_stats()):
                    assert time.monotonic() < deadline, f"{what}: {store.pool_stats()}"
                    await asyncio.sleep(0.02)
                await settled(admin, legacy)
            assert 0 < await checkpoints(admin) <= CHUNKS
            # the same store (its pool) resumes: exact validation, every row once
            report = await asyncio.wait_for(
                Migrator(legacy_url, store, chunk_rows=CHUNK).run(), timeout=240
            )
            assert report.ok, report.validation
            v = report.validation
            assert v is not None and v.target_documents == DOCS and v.mismatched_chunks == 0
            assert report.skipped_chunks > 0
    finally:
        await admin.close()
        await legacy.close()
    await assert_exact(legacy_url, database_url)


# -- the CLI ---------------------------------------------------------------------------------
def _migrate(legacy_url: str, database_url: str, out: Path) -> subprocess.Popen[bytes]:
    return migrate_process(legacy_url, database_url, out, chunk_rows=CHUNK)


def _exited(process: subprocess.Popen[bytes], out: Path) -> str:
    if process.poll() is None:
        return ""
    return f"exit {process.returncode}: {(out / 'stderr').read_text()[-2000:]}"


def test_ctrl_c_during_docstore_migrate_exits_130_at_once_and_a_rerun_is_exact(
    legacy_url: str, target_url: str, tmp_path: Path
) -> None:
    database_url = target_url

    async def wait_for(what: str, check: Callable[[asyncpg.Connection], Awaitable[bool]]) -> None:
        admin = await asyncpg.connect(database_url)
        try:
            await until(what, lambda: check(admin), lambda: _exited(process, out))
        finally:
            await admin.close()

    async def copying_from(base: int) -> None:
        async def check(admin: asyncpg.Connection) -> bool:
            return await checkpoints(admin) >= base and await running(admin, COPY_IN)

        await wait_for(f"a COPY after {base} chunks", check)

    async def all_copied() -> None:
        async def check(admin: asyncpg.Connection) -> bool:
            return await checkpoints(admin) >= CHUNKS

        await wait_for("every chunk committed", check)

    for n, point in enumerate(
        (lambda: copying_from(0), lambda: copying_from(2), lambda: copying_from(4), all_copied)
    ):
        out = tmp_path / f"run{n}"
        out.mkdir()
        process = _migrate(legacy_url, database_url, out)
        try:
            asyncio.run(point())
            os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
            started = time.monotonic()
            try:
                process.wait(timeout=PROMPT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"interrupt {n}: still running {PROMPT} s after SIGINT")
            took = time.monotonic() - started
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        err = (out / "stderr").read_text()
        assert process.returncode == EXIT_INTERRUPTED, f"interrupt {n}: {err[-3000:]}"
        assert "Traceback" not in err and "internal error" not in err, err[-3000:]
        assert err.strip().splitlines()[-1].startswith("error: interrupted"), err[-3000:]
        assert took < PROMPT
        asyncio.run(settle(legacy_url, database_url))

    out = tmp_path / "final"
    out.mkdir()
    process = _migrate(legacy_url, database_url, out)
    assert process.wait(timeout=300) == 0, (out / "stderr").read_text()[-3000:]
    asyncio.run(assert_exact(legacy_url, database_url))
