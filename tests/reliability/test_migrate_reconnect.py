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
import errno
import logging
import threading
import time

import asyncpg
import pytest

import docstore
from docstore import DatabaseUnavailableError, MigrationError, PoolTimeoutError
from docstore.embedded import EmbeddedServer
from docstore.migrate import Migrator
from docstore.migrate import migrator as migrator_module
from docstore.migrate.lock import MARK_KEY, migration_lock
from docstore.migrate.report import MigrationReport, Preflight
from docstore.migrate.resume import connection_lost, resumed_run
from tests.reliability.conftest import (
    MIGRATION_DOCS,
    Figures,
    assert_same_rows,
    kill_server,
)
from tests.reliability.tcp_proxy import Proxy

pytestmark = pytest.mark.timeout(300)

DOCS = MIGRATION_DOCS
CHUNK = 20  # 15 chunks


async def _terminate(url: str) -> int:
    """pg_terminate_backend of every other client session on ``url``'s database."""
    conn = await asyncpg.connect(url, server_settings={"application_name": "terminator"})
    try:
        return int(
            await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name <> 'terminator'"
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
    own_server: EmbeddedServer, migration_urls: tuple[str, str], after_chunks: int, figures: Figures
) -> None:
    legacy_url, target_url = migration_urls
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
    # nothing was there before this call; what committed before the crash was not copied
    # again (a chunk whose commit the crash left in doubt may count for no attempt)
    assert report.skipped_chunks == 0
    assert DOCS - 2 * CHUNK <= report.copied_documents <= DOCS
    v = report.validation
    assert v is not None and v.target_documents == DOCS and v.mismatched_chunks == 0
    await assert_same_rows(legacy_url, target_url)
    figures.add(
        f"server SIGKILLed after {after_chunks} chunks and down 1 s: the run resumed "
        f"{report.resumed}× by itself, copied {report.copied_documents} rows in "
        f"{report.copied_chunks} chunks in all, validation ok, {seconds:.1f} s in all"
    )


@pytest.mark.parametrize("side", ["legacy", "target"])
@pytest.mark.parametrize("stage", ["documents", "verified"])
async def test_terminated_sessions_during_the_copy_or_its_verification_are_resumed(
    migration_urls: tuple[str, str], side: str, stage: str, figures: Figures
) -> None:
    """A failover or an operator's pg_terminate_backend on either side, while chunks copy
    (``documents``) or while committed ones are read back and verified (``verified``)."""
    legacy_url, target_url = migration_urls
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
    await assert_same_rows(legacy_url, target_url)
    figures.add(
        f"{terminated} {side} sessions terminated at {stage}: resumed {report.resumed}×, "
        f"validation ok"
    )


async def test_without_reconnect_attempts_a_lost_connection_fails_and_a_rerun_resumes(
    migration_urls: tuple[str, str],
) -> None:
    legacy_url, target_url = migration_urls
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
    await assert_same_rows(legacy_url, target_url)


async def test_a_connection_lost_on_every_attempt_gives_up_after_the_attempts(
    migration_urls: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    legacy_url, target_url = migration_urls
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
    await assert_same_rows(legacy_url, target_url)


async def test_failures_that_are_not_lost_connections_are_raised_at_once(
    migration_urls: tuple[str, str],
) -> None:
    """A value the target refuses fails the run on its first attempt, with no wait."""
    legacy_url, target_url = migration_urls
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
    # the socket's ETIMEDOUT: TCP keepalive or retransmissions gave up on a silent peer
    assert connection_lost(TimeoutError(errno.ETIMEDOUT, "Connection timed out"))
    assert connection_lost(raised_from(MigrationError("x"), TimeoutError(errno.ETIMEDOUT, "")))
    # not lost connections: a timeout would time out again; a busy pool; credentials; data
    assert not connection_lost(TimeoutError())
    assert not connection_lost(raised_from(DatabaseUnavailableError("x"), TimeoutError()))
    assert not connection_lost(PoolTimeoutError("no free connection"))
    assert not connection_lost(DatabaseUnavailableError("password authentication failed"))
    assert not connection_lost(asyncpg.InvalidPasswordError("no"))
    assert not connection_lost(asyncpg.UniqueViolationError("dup"))
    assert not connection_lost(MigrationError("another migrator holds the lock"))


async def test_a_restart_run_that_resumes_keeps_what_it_copied_itself(
    migration_urls: tuple[str, str],
) -> None:
    """``restart=True`` forgets the checkpoints of earlier runs once: the attempt that resumes
    after a lost connection keeps the chunks the run itself committed before it."""
    legacy_url, target_url = migration_urls
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
    # the earlier run's checkpoints forgotten; this call's own not a second time: no chunk
    # it committed was copied again
    assert report.skipped_chunks == 0 and report.copied_documents <= DOCS
    await assert_same_rows(legacy_url, target_url)


async def test_the_legacy_server_away_for_seconds_is_waited_for(
    migration_urls: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Before: reconnecting to a legacy server still down raised "cannot reach the legacy
    database" with its cause hidden, so the run ended on its first resume."""
    legacy_url, target_url = migration_urls
    proxy = Proxy(legacy_url)
    await proxy.up()
    cut: list[asyncio.Task[None]] = []

    def progress(stage: str, done: int, total: int, nbytes: int) -> None:
        if stage == "documents" and done >= 5 * CHUNK and not cut:
            cut.append(asyncio.get_running_loop().create_task(proxy.down(3.0)))

    caplog.set_level(logging.WARNING, "docstore")
    async with Migrator(proxy.url, target_url, chunk_rows=CHUNK, progress=progress) as m:
        report = await asyncio.wait_for(m.run(), 120)
    await cut[0]
    assert report.ok and report.resumed >= 2  # refused while down, then back
    await assert_same_rows(legacy_url, target_url)


async def _sessions_of(url: str, pids: list[int]) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", pids)
        )
    finally:
        await conn.close()


async def test_sessions_a_cut_left_holding_the_lock_and_a_chunk_are_ended_on_resume(
    migration_urls: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Before: connections reset on the client's side only left their server sessions alive,
    holding the migration lock (and a chunk's uncommitted rows), so the resumed attempt met
    "another docstore migrator is running" and the call failed; those sessions lived on until
    TCP keepalive ended them, hours later. Now the resumed attempt ends them first."""
    legacy_url, target_url = migration_urls
    proxy = Proxy(target_url)
    await proxy.up()
    cut: list[list[int]] = []

    def progress(stage: str, done: int, total: int, nbytes: int) -> None:
        if stage == "documents" and done >= 5 * CHUNK and not cut:
            proxy.cut()
            cut.append([])

    caplog.set_level(logging.WARNING, "docstore")
    try:
        async with Migrator(legacy_url, proxy.url, chunk_rows=CHUNK, progress=progress) as m:
            report = await asyncio.wait_for(m.run(), 120)
    finally:
        proxy.close_upstreams()
    assert cut and report.ok and report.resumed == 1
    ended = [
        int(r.getMessage().split("server process ")[1].split(")")[0])
        for r in caplog.records
        if "the session of a lost connection" in r.getMessage()
    ]
    assert ended, "the lock holder's session was ended"
    assert all(
        "was ended" in r.getMessage()
        for r in caplog.records
        if "lost connection (" in r.getMessage()
    )
    assert await _sessions_of(target_url, ended) == 0
    await assert_same_rows(legacy_url, target_url)


_MARKS = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2"
    " AND classid = $1::int::oid AND database ="
    " (SELECT oid FROM pg_database WHERE datname = current_database())"
)


async def test_sessions_that_end_normally_are_never_taken_for_lost_ones(
    migration_urls: tuple[str, str],
) -> None:
    """The lock's and the copy streams' sessions are marked while they copy; the pool's reset
    drops the mark when they go back to the pool, so a pooled connection that goes on to the
    app's work is never ended by a later attempt (and a reused pid holds no mark)."""
    legacy_url, target_url = migration_urls
    probe = await asyncpg.connect(target_url)  # its own connection: the run's pool is busy
    seen: list[int] = []

    async def watch_marks() -> None:
        while True:
            seen.append(int(await probe.fetchval(_MARKS, MARK_KEY)))
            await asyncio.sleep(0.002)

    try:
        async with docstore.connect(target_url) as store:
            watching = asyncio.create_task(watch_marks())
            async with Migrator(legacy_url, store, chunk_rows=CHUNK) as m:
                assert (await m.run()).ok
                orphans = m._orphans
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
            assert max(seen) >= 2  # the lock's and a further copy stream's, while they copied
            assert await probe.fetchval(_MARKS, MARK_KEY) == 0
            async with store.acquire() as conn:
                assert await orphans.end(conn) == []  # nothing to end: the pool's live on
            assert await store.fetchval("SELECT 1") == 1
    finally:
        await probe.close()


async def test_the_report_of_a_resumed_call_counts_every_attempts_work(
    migration_urls: tuple[str, str],
) -> None:
    """Before: the report was the last attempt's: on a fresh target it said "copied 160
    documents (7 chunks already done)" for a call that copied all 300."""
    legacy_url, target_url = migration_urls
    killing: list[asyncio.Task[int]] = []

    def progress(stage: str, done: int, total: int, nbytes: int) -> None:
        if stage == "documents" and done >= 6 * CHUNK and not killing:
            killing.append(asyncio.get_running_loop().create_task(_terminate(legacy_url)))

    async with Migrator(legacy_url, target_url, chunk_rows=CHUNK, progress=progress) as m:
        report = await asyncio.wait_for(m.run(), 120)
    assert report.ok and report.resumed == 1
    assert report.skipped_chunks == 0  # nothing was there before this call
    assert DOCS - 2 * CHUNK <= report.copied_documents <= DOCS  # a chunk in doubt: no attempt's
    assert report.copied_chunks * CHUNK == report.copied_documents


async def test_restart_forgets_once_even_when_the_first_attempt_fails_before_it(
    migration_urls: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    legacy_url, target_url = migration_urls
    async with Migrator(legacy_url, target_url, chunk_rows=CHUNK) as m:
        assert (await m.run()).ok
    real = migrator_module.preflight_stage.preflight
    calls: list[int] = []

    async def flaky(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:  # the first attempt loses its connection before the claim
            raise ConnectionResetError("connection reset by peer")
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(migrator_module.preflight_stage, "preflight", flaky)
    async with Migrator(legacy_url, target_url, chunk_rows=CHUNK, restart=True) as m:
        report = await m.run()
    assert report.resumed == 1 and report.skipped_chunks == 0  # restarted, as asked
    await assert_same_rows(legacy_url, target_url)


async def test_a_resumed_calls_report_sums_the_attempts_stage_timings() -> None:
    """Before: a resumed report's stage timings were the last attempt's alone."""
    preflight = Preflight(tables=[])

    async def attempt(reports: list[MigrationReport]) -> MigrationReport:
        report = MigrationReport(run_id="rust:x", doc_type="rust", preflight=preflight)
        report.timings.update(preflight=0.25, sources=0.5)
        reports.append(report)
        if len(reports) == 1:
            raise ConnectionResetError("connection reset by peer")
        report.timings.update(documents=2.0, total=9.0)
        return report

    report = await resumed_run(attempt, 1, ())
    assert report.resumed == 1
    assert report.timings == {"preflight": 0.5, "sources": 1.0, "documents": 2.0, "total": 9.0}


async def test_an_interruption_during_a_lost_connection_is_not_resumed() -> None:
    """Ctrl-C while the lock's unlock hangs after a lost connection: the lock swallows the
    cancellation to end its session, and the connection error went on — it was resumed and
    the whole migration ran again before the interruption came out."""

    class HangingUnlock:  # a lock connection whose peer vanished: unlocking waits
        def is_closed(self) -> bool:
            return False

        async def fetchval(self, sql: str, *args: object) -> bool:
            return True

        async def execute(self, sql: str, *args: object) -> None:
            await asyncio.sleep(30)

        def terminate(self) -> None:
            pass

    attempts: list[float] = []

    async def attempt(reports: list[MigrationReport]) -> MigrationReport:
        attempts.append(time.perf_counter())
        if len(attempts) == 1:
            async with migration_lock(HangingUnlock()):  # type: ignore[arg-type]
                raise ConnectionResetError("legacy connection reset")
        await asyncio.sleep(3)  # "the whole migration again"
        preflight = Preflight.model_construct()
        return MigrationReport(run_id="x", doc_type="rust", preflight=preflight)

    task = asyncio.ensure_future(resumed_run(attempt, 5, ()))
    await asyncio.sleep(0.5)
    t0 = time.perf_counter()
    task.cancel()  # Ctrl-C
    with pytest.raises((asyncio.CancelledError, ConnectionResetError)):
        await task
    assert len(attempts) == 1 and time.perf_counter() - t0 < 2
