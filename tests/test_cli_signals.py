"""Ctrl-C and SIGTERM as operators send them to ``docstore migrate``: once, twice in quick
succession, and with SIGINT ignored (a ``nohup … &`` job).

* Interrupted while the legacy server runs one of its statements (a preflight query waiting
  for a lock), the legacy session ends with the process: the cancel request reaches the server
  before the connection is closed. It used to run on (a lock wait for as long as the lock
  was held) after the CLI had exited 130.
* However many signals follow the first while the command stops, it stops as after one: exit
  130, one ``error: interrupted`` line, no asyncio noise, no 30 s wait for the pool. A second
  Ctrl-C raised ``KeyboardInterrupt`` wherever the clean-up was, and a SIGTERM after the
  handler was restored killed the process (status -15).
* SIGTERM with SIGINT ignored cancels the command as Ctrl-C does (it raised
  ``KeyboardInterrupt`` inside the event loop, and asyncpg's COPY then printed pages of
  tracebacks).
* A store closed by the cancelled command waits seconds, not 30, for a connection some task
  never gave back.

Every CLI runs in its own session (signals as a terminal sends them, to its process group);
the points to signal at are found by polling the servers, and the signals after the first
keep coming until the process exits, so a loaded machine only moves when they land.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import docstore
from docstore.cli.base import EXIT_INTERRUPTED
from docstore.core.pools import POOL_CLOSE_TIMEOUT
from docstore.migrate.context import open_legacy
from tests.conftest import PgCluster, migrate_process, slow_inserts
from tests.legacy_db import legacy_database

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]
DOCS = 3000
CHUNK = 300
PROMPT = 10.0  # seconds an interrupted command may take to exit (expected: well under one)
GONE = 3.0  # seconds its legacy session may outlive it
COPY_IN = "COPY %FROM STDIN%"
NOISE = ("Traceback", "never awaited", "never retrieved", "RuntimeWarning", "closing the")


@pytest.fixture(scope="module")
def legacy_url(pg: PgCluster) -> Iterator[str]:
    yield from legacy_database(pg, crates=6, docs=DOCS)


@pytest.fixture
def slow_target(database_url: str) -> str:
    """A target storing ~1 ms a document (as tests/test_migrate_interrupt.py's): the copy
    runs for seconds, a chunk's COPY mid-stream most of that time."""

    return slow_inserts(database_url)


@contextlib.contextmanager
def _reaped(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """``process``, its group SIGKILLed if the test leaves it running."""
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _migrate(
    legacy_url: str, target_url: str, out: Path, *extra: str, sigint: Any = signal.SIG_DFL
) -> subprocess.Popen[bytes]:
    return migrate_process(legacy_url, target_url, out, *extra, chunk_rows=CHUNK, sigint=sigint)


async def _poll(url: str, query: str, process: subprocess.Popen[bytes], out: Path) -> None:
    """Until ``query`` is true on ``url``; fails if the process ended first."""
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + 120
        while not await conn.fetchval(query):
            assert process.poll() is None, (
                f"exit {process.returncode} first: {(out / 'stderr').read_text()[-2000:]}"
            )
            assert time.monotonic() < deadline, f"not within 120 s: {query}"
            await asyncio.sleep(0.01)
    finally:
        await conn.close()


def _copying(target_url: str, process: subprocess.Popen[bytes], out: Path) -> None:
    """Until a chunk's COPY has streamed into the target for 100 ms."""
    query = (
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database()"
        f" AND state = 'active' AND query ILIKE '{COPY_IN}'"
        " AND clock_timestamp() - query_start > interval '100 ms'"
    )
    asyncio.run(_poll(target_url, query, process, out))


def _signal_until_exit(
    process: subprocess.Popen[bytes], first: int, then: int | None, gap: float
) -> float:
    """``first`` to the process group, then ``then`` every ``gap`` s until it exits; the
    seconds it took to exit (fails after PROMPT)."""
    started = time.monotonic()
    os.killpg(process.pid, first)
    while process.poll() is None:
        if time.monotonic() - started > PROMPT:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            pytest.fail(f"still running {PROMPT} s after the first signal")
        if then is not None:
            try:
                os.killpg(process.pid, then)
            except ProcessLookupError:
                break
        time.sleep(gap)
    process.wait()
    return time.monotonic() - started


def _one_interrupted_line(process: subprocess.Popen[bytes], out: Path) -> None:
    err = (out / "stderr").read_text()
    assert process.returncode == EXIT_INTERRUPTED, f"exit {process.returncode}: {err[-3000:]}"
    assert not any(noise in err for noise in NOISE), err[-3000:]
    assert err.strip() == "error: interrupted", err[-3000:]


# -- 1. the legacy session ends with the process --------------------------------------------
async def _docstore_sessions(legacy: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await legacy.fetch(
        "SELECT pid, state, wait_event_type, left(query, 80) AS query FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name LIKE 'docstore%'"
    )
    return [dict(r) for r in rows]


_TARGET_IDLE = (
    "SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = current_database()"
    " AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND state <> 'idle'"
)


def test_ctrl_c_while_the_legacy_server_runs_a_statement_ends_its_session(
    legacy_url: str, database_url: str, tmp_path: Path
) -> None:
    """A dry run's preflight waits for a lock the legacy application holds; Ctrl-C: exit 130,
    and the legacy session is gone at once — not once the lock is released."""

    async def scenario() -> None:
        holder = await asyncpg.connect(legacy_url)
        legacy = await asyncpg.connect(legacy_url)
        process: subprocess.Popen[bytes] | None = None
        try:
            await holder.execute("BEGIN; LOCK TABLE doc_embeddings IN ACCESS EXCLUSIVE MODE")
            process = _migrate(legacy_url, database_url, tmp_path, "--dry-run")
            waiting = (
                "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name LIKE 'docstore%' AND wait_event_type = 'Lock'"
            )
            await _poll(legacy_url, waiting, process, tmp_path)
            # and the target's part of the preflight done: only the legacy statement is left
            # to cancel (the interruption then reaches the legacy connection at once)
            await _poll(database_url, _TARGET_IDLE, process, tmp_path)
            await asyncio.sleep(0.2)
            os.killpg(process.pid, signal.SIGINT)
            await asyncio.to_thread(process.wait, PROMPT)
            _one_interrupted_line(process, tmp_path)
            deadline = time.monotonic() + GONE
            while left := await _docstore_sessions(legacy):  # the lock is still held
                assert time.monotonic() < deadline, f"after the exit: legacy sessions {left}"
                await asyncio.sleep(0.05)
        finally:
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            await holder.close()
            await legacy.close()

    asyncio.run(scenario())


def test_a_legacy_session_asks_the_server_to_watch_for_its_client(legacy_url: str) -> None:
    """The server checks every second that a legacy session's client is still there while
    a statement runs (PostgreSQL 14+): a migrator that vanished without a word (SIGKILL, a
    cancel request lost) does not leave its statement running."""

    async def check() -> None:
        async with open_legacy(legacy_url) as conn:
            if conn.get_server_version().major >= 14:
                assert await conn.fetchval("SHOW client_connection_check_interval") == "1s"

    asyncio.run(check())


# -- 2. more signals while stopping ----------------------------------------------------------
@pytest.mark.parametrize(
    ("first", "then", "gap"),
    [
        (signal.SIGINT, signal.SIGINT, 0.001),
        (signal.SIGTERM, signal.SIGTERM, 0.001),
        (signal.SIGTERM, signal.SIGTERM, 0.05),
        (signal.SIGINT, signal.SIGTERM, 0.01),
    ],
    ids=["ctrl-c-ctrl-c", "sigterm-sigterm", "sigterm-50ms-sigterm", "ctrl-c-then-sigterm"],
)
def test_signals_after_the_first_while_a_migration_stops_change_nothing(
    legacy_url: str, slow_target: str, tmp_path: Path, first: int, then: int, gap: float
) -> None:
    with _reaped(_migrate(legacy_url, slow_target, tmp_path)) as process:
        _copying(slow_target, process, tmp_path)
        took = _signal_until_exit(process, first, then, gap)
    _one_interrupted_line(process, tmp_path)
    assert took < PROMPT


# -- 3. SIGTERM with SIGINT ignored ----------------------------------------------------------
@pytest.mark.parametrize("repeat", [False, True], ids=["once", "until-it-exits"])
def test_sigterm_with_sigint_ignored_stops_a_copy_as_ctrl_c_does(
    legacy_url: str, slow_target: str, tmp_path: Path, repeat: bool
) -> None:
    with _reaped(_migrate(legacy_url, slow_target, tmp_path, sigint=signal.SIG_IGN)) as process:
        _copying(slow_target, process, tmp_path)
        _signal_until_exit(process, signal.SIGTERM, signal.SIGTERM if repeat else None, 0.005)
    _one_interrupted_line(process, tmp_path)


def test_ctrl_c_is_still_ignored_when_it_was_ignored_at_start(
    legacy_url: str, slow_target: str, tmp_path: Path
) -> None:
    """A background job (``nohup … &``) started with SIGINT ignored keeps ignoring it: the
    terminal's Ctrl-C is not meant for it. SIGTERM still stops it."""
    with _reaped(_migrate(legacy_url, slow_target, tmp_path, sigint=signal.SIG_IGN)) as process:
        _copying(slow_target, process, tmp_path)
        os.killpg(process.pid, signal.SIGINT)
        time.sleep(0.5)
        assert process.poll() is None, (tmp_path / "stderr").read_text()[-2000:]
        _signal_until_exit(process, signal.SIGTERM, None, 0.01)
    _one_interrupted_line(process, tmp_path)


def test_a_store_closed_by_a_cancelled_task_waits_briefly_for_checked_out_connections(
    database_url: str,
) -> None:
    """An interrupted command's store closes within seconds even when some connection is not
    given back (a task its clean-up never reached), not after POOL_CLOSE_TIMEOUT (30 s)."""

    async def scenario() -> float:
        held = asyncio.Event()

        async def hold(store: docstore.Store) -> None:
            async with store.acquire():
                held.set()
                await asyncio.Event().wait()

        async def command() -> None:
            async with docstore.connect(database_url) as store:
                holder = asyncio.create_task(hold(store))
                try:
                    await held.wait()
                    await asyncio.Event().wait()  # Ctrl-C here: the store closes on the way out
                finally:
                    closing[:] = [time.monotonic()]
                    holders.append(holder)

        closing: list[float] = []
        holders: list[asyncio.Task[None]] = []
        task = asyncio.create_task(command())
        await held.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        took = time.monotonic() - closing[0]
        holders[0].cancel()
        await asyncio.gather(*holders, return_exceptions=True)
        return took

    took = asyncio.run(scenario())
    assert took < POOL_CLOSE_TIMEOUT / 2, f"closed after {took:.1f} s"
