"""``Migrator.run()`` resumes by itself after a lost connection (``docstore.migrate.resume``).

A connection to either database goes away while the run copies or validates — the target
server crashes and comes back, or a backend is terminated (a failover, an operator's
``pg_terminate_backend``, an idle-session timeout). The run starts over from its checkpoints
in the same call, as a re-run would: it ends with exact validation, every row counted and
compared with the legacy database (nothing lost, nothing doubled), and the report says it
resumed. Failures that are not lost connections are raised at once, without waiting.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import asyncpg
import pytest

import docstore
from docstore import DatabaseUnavailableError, MigrationError, PoolTimeoutError
from docstore.embedded import EmbeddedServer, ensure_database
from docstore.migrate import Migrator
from docstore.migrate.resume import connection_lost
from tests.legacy_db import ROWS_LEGACY, ROWS_TARGET, build_legacy, legacy_fetch
from tests.reliability.conftest import Figures, kill_server

pytestmark = pytest.mark.timeout(300)

DOCS = 300
CHUNK = 20  # 15 chunks


@pytest.fixture
def urls(own_server: EmbeddedServer) -> Iterator[tuple[str, str]]:
    """(legacy, target) databases on the test's own server."""

    async def make() -> tuple[str, str]:
        admin = own_server.url("postgres")
        for name in ("legacy", "target"):
            await ensure_database(admin, name)
        await build_legacy(own_server.url("legacy"), crates=5, docs=DOCS)
        return own_server.url("legacy"), own_server.url("target")

    yield asyncio.run(make())


async def _same_rows(legacy_url: str, target_url: str) -> None:
    legacy = await legacy_fetch(legacy_url, ROWS_LEGACY)
    target = await legacy_fetch(target_url, ROWS_TARGET)
    assert len(target) == len(set(target)) == DOCS  # nothing doubled
    assert target == legacy  # nothing lost or changed


async def _terminate(url: str) -> int:
    """pg_terminate_backend of every other client session on ``url``'s database."""
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend'"
            )
        )
    finally:
        await conn.close()


def _crash_and_recover(server: EmbeddedServer, down: float) -> threading.Thread:
    """SIGKILL every process of ``server`` now; start it again (crash recovery) after
    ``down`` seconds, in a thread."""
    kill_server(server)

    def restart() -> None:
        time.sleep(down)
        server.restart_server()

    thread = threading.Thread(target=restart)
    thread.start()
    return thread


@pytest.mark.parametrize("after_chunks", [3, 12])
async def test_the_target_server_crashes_during_the_copy_and_the_run_resumes_by_itself(
    own_server: EmbeddedServer, urls: tuple[str, str], after_chunks: int, figures: Figures
) -> None:
    legacy_url, target_url = urls
    restarts: list[threading.Thread] = []

    def progress(stage: str, done: int, total: int, nbytes: int) -> None:
        if stage == "documents" and done >= after_chunks * CHUNK and not restarts:
            restarts.append(_crash_and_recover(own_server, down=1.0))

    t0 = time.perf_counter()
    async with Migrator(legacy_url, target_url, chunk_rows=CHUNK, progress=progress) as m:
        report = await asyncio.wait_for(m.run(), 120)
    seconds = time.perf_counter() - t0
    restarts[0].join()
    assert report.ok, report.validation
    assert report.resumed >= 1
    assert report.warnings[0].startswith("a connection was lost and the run resumed")
    assert report.skipped_chunks >= after_chunks - 1  # what committed before the crash stayed
    v = report.validation
    assert v is not None and v.target_documents == DOCS and v.mismatched_chunks == 0
    await _same_rows(legacy_url, target_url)
    figures.add(
        f"server SIGKILLed after {after_chunks} chunks and down 1 s: the run resumed "
        f"{report.resumed}× by itself, kept {report.skipped_chunks} chunks, copied "
        f"{report.copied_documents} rows after, validation ok, {seconds:.1f} s in all"
    )


@pytest.mark.parametrize("side", ["legacy", "target"])
@pytest.mark.parametrize("stage", ["documents", "verified"])
async def test_terminated_sessions_during_the_copy_or_its_verification_are_resumed(
    urls: tuple[str, str], side: str, stage: str, figures: Figures
) -> None:
    """A failover or an operator's pg_terminate_backend on either side, while chunks copy
    (``documents``) or while committed ones are read back and verified (``verified``)."""
    legacy_url, target_url = urls
    killing: list[asyncio.Task[int]] = []

    def progress(stage_: str, done: int, total: int, nbytes: int) -> None:
        if stage_ == stage and done >= 5 * CHUNK and not killing:
            url = legacy_url if side == "legacy" else target_url
            killing.append(asyncio.get_running_loop().create_task(_terminate(url)))

    async with Migrator(legacy_url, target_url, chunk_rows=CHUNK, progress=progress) as m:
        report = await asyncio.wait_for(m.run(), 120)
    terminated = await killing[0]
    assert terminated >= 1
    assert report.ok, report.validation
    await _same_rows(legacy_url, target_url)
    figures.add(
        f"{terminated} {side} sessions terminated at {stage}: resumed {report.resumed}×, "
        f"validation ok"
    )


async def test_without_reconnect_attempts_a_lost_connection_fails_and_a_rerun_resumes(
    urls: tuple[str, str],
) -> None:
    legacy_url, target_url = urls
    killing: list[asyncio.Task[int]] = []

    def progress(stage: str, done: int, total: int, nbytes: int) -> None:
        if stage == "documents" and done >= 3 * CHUNK and not killing:
            killing.append(asyncio.get_running_loop().create_task(_terminate(legacy_url)))

    with pytest.raises(MigrationError, match="a re-run resumes after them"):
        async with Migrator(
            legacy_url, target_url, chunk_rows=CHUNK, progress=progress, reconnect_attempts=0
        ) as m:
            await m.run()
    async with Migrator(legacy_url, target_url, chunk_rows=CHUNK) as m:
        report = await m.run()
    assert report.ok and report.resumed == 0 and report.skipped_chunks >= 3
    await _same_rows(legacy_url, target_url)


async def test_a_connection_lost_on_every_attempt_gives_up_after_the_attempts(
    urls: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    legacy_url, target_url = urls
    attempts: list[asyncio.Task[int]] = []
    seen = 0

    def progress(stage: str, done: int, total: int, nbytes: int) -> None:
        nonlocal seen
        if stage == "documents":
            seen += 1
            if seen % 2 == 0:  # the second chunk each attempt commits
                attempts.append(asyncio.get_running_loop().create_task(_terminate(legacy_url)))

    with pytest.raises(MigrationError, match="a re-run resumes after them"):
        async with Migrator(
            legacy_url, target_url, chunk_rows=CHUNK, progress=progress, reconnect_attempts=2
        ) as m:
            await asyncio.wait_for(m.run(), 120)
    await asyncio.gather(*attempts)
    resumes = [r for r in caplog.records if "resuming after the committed chunks" in r.message]
    assert [r.message.rsplit("(", 1)[1] for r in resumes] == ["1 of 2)", "2 of 2)"]
    async with Migrator(legacy_url, target_url, chunk_rows=CHUNK) as m:
        assert (await m.run()).ok  # and what the three attempts committed is resumed from
    await _same_rows(legacy_url, target_url)


async def test_failures_that_are_not_lost_connections_are_raised_at_once(
    urls: tuple[str, str],
) -> None:
    """A value the target refuses fails the run on its first attempt, with no wait."""
    legacy_url, target_url = urls
    async with docstore.connect(target_url):
        pass  # docstore's schema
    conn = await asyncpg.connect(target_url)
    try:  # a trigger that refuses the 50th document, as a permission or constraint would
        await conn.execute(
            """
            CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.metadata->>'legacy_id' = '50' THEN RAISE EXCEPTION 'refused by policy'; END IF;
              RETURN NEW;
            END $$;
            """
        )
        await conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON documents"
            " FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    finally:
        await conn.close()
    t0 = time.perf_counter()
    with pytest.raises(MigrationError, match="refused by policy") as caught:
        async with Migrator(legacy_url, target_url, chunk_rows=CHUNK) as m:
            await m.run()
    assert time.perf_counter() - t0 < 20
    assert "resum" not in str(caught.value).split(";")[0]


def test_which_failures_count_as_a_lost_connection() -> None:
    def raised_from(outer: BaseException, inner: BaseException) -> BaseException:
        try:
            try:
                raise inner
            except BaseException as exc:
                raise outer from exc
        except BaseException as exc:
            return exc

    lost = asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
    assert connection_lost(lost)
    assert connection_lost(ConnectionResetError())
    assert connection_lost(asyncpg.AdminShutdownError("terminating connection"))
    assert connection_lost(raised_from(MigrationError("validation failed"), lost))
    assert connection_lost(raised_from(DatabaseUnavailableError("gone"), ConnectionRefusedError()))
    # not lost connections: a timeout would time out again; a busy pool; credentials; data
    assert not connection_lost(TimeoutError())
    assert not connection_lost(raised_from(DatabaseUnavailableError("x"), TimeoutError()))
    assert not connection_lost(PoolTimeoutError("no free connection"))
    assert not connection_lost(DatabaseUnavailableError("password authentication failed"))
    assert not connection_lost(asyncpg.InvalidPasswordError("no"))
    assert not connection_lost(asyncpg.UniqueViolationError("dup"))
    assert not connection_lost(MigrationError("another migrator holds the lock"))


async def test_a_restart_run_that_resumes_keeps_what_it_copied_itself(
    urls: tuple[str, str],
) -> None:
    """``restart=True`` forgets the checkpoints of earlier runs once: the attempt that resumes
    after a lost connection keeps the chunks the run itself committed before it."""
    legacy_url, target_url = urls
    async with Migrator(legacy_url, target_url, chunk_rows=CHUNK) as m:
        assert (await m.run()).ok  # an earlier run: all its chunks checkpointed
    killing: list[asyncio.Task[int]] = []

    def progress(stage: str, done: int, total: int, nbytes: int) -> None:
        if stage == "documents" and done >= 6 * CHUNK and not killing:
            killing.append(asyncio.get_running_loop().create_task(_terminate(legacy_url)))

    async with Migrator(
        legacy_url, target_url, chunk_rows=CHUNK, progress=progress, restart=True
    ) as m:
        report = await asyncio.wait_for(m.run(), 120)
    assert report.ok and report.resumed == 1
    assert report.skipped_chunks >= 5  # this run's own, not forgotten a second time
    assert report.copied_documents <= DOCS - 5 * CHUNK
    await _same_rows(legacy_url, target_url)
