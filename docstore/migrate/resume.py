"""A run that lost a connection resumes in the same call, as a re-run would.

Every stage of :meth:`~docstore.migrate.Migrator.run` is resumable: a chunk commits with its
checkpoint row in one transaction, so a chunk is either stored and checkpointed or neither,
and a run resumes after the last committed chunk (``tests/reliability/test_migrate_kill.py``
SIGKILLs the migrator mid-copy and mid-validation to prove it). A lost connection — a server
restart or failover, a connection reset, ``pg_terminate_backend`` — is the same situation as a
killed migrator, seen from the databases, so :meth:`~docstore.migrate.Migrator.run` starts
over from its checkpoints up to ``reconnect_attempts`` times, waiting 0.5, 1, 2, 4, 8, 16 …
seconds (plus jitter) between attempts, before it gives up with the
:class:`~docstore.MigrationError` that says a re-run resumes. Its report is the whole call's:
what earlier attempts copied is counted, not taken for an earlier run's work. Target sessions
an earlier attempt lost but the server kept (a connection cut on the client's side only) are
ended before the next attempt takes the lock (:class:`~docstore.migrate.lock.Orphans`).

Only connection losses are resumed: a failure the server answered (a value the target
refuses, a permission missing, another migrator holding the lock, a blocking preflight
finding), a statement that ran out of its time (it would again) and a pool with no free
connection are raised at once, and so is any interruption (Ctrl-C), whatever it was chained
to. A network cut that drops packets leaves a connection silent rather than closed: it is
lost, and resumed after, once ``DOCSTORE_TCP_TIMEOUT`` passes (:mod:`docstore.core.tcp`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import tenacity

from docstore.errors import DatabaseUnavailableError, PoolTimeoutError
from docstore.failures import describe
from docstore.migrate.report import MigrationReport
from docstore.transient import is_transient

logger = logging.getLogger("docstore")

DEFAULT_RECONNECT_ATTEMPTS = 6
FIRST_WAIT = 0.5
MAX_WAIT = 16.0
"""Waits between attempts: 0.5, 1, 2, 4, 8, 16 s (each plus up to 0.5 s of jitter), about
30 s in all for the default attempts: a restart with crash recovery or a failover."""

# What the attempts of one call add up to (a later attempt skips what an earlier one copied)
_COUNTS = (
    "copied_documents",
    "copied_chunks",
    "refreshed_documents",
    "delta_documents",
    "repaired_documents",
    "delta_sources",
    "delta_population_jobs",
)


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from: validation's and the store's errors wrap
    asyncpg's) means a connection to either database went away or could not be made. Never
    for an interruption (``CancelledError``, ``KeyboardInterrupt``, ``SystemExit``) anywhere
    in the chain: Ctrl-C during a failure ends the run."""
    seen: set[int] = set()
    current: BaseException | None = exc
    lost = False
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if not isinstance(current, Exception):
            return False
        if isinstance(current, PoolTimeoutError) or (
            isinstance(current, TimeoutError) and current.errno is None
        ):
            return False  # the same statement or pool would time out again
        # (an OSError ETIMEDOUT is a TimeoutError too: the peer stopped answering — TCP
        # keepalive or retransmissions gave up, DOCSTORE_TCP_TIMEOUT — a lost connection)
        if not isinstance(current, DatabaseUnavailableError) and is_transient(current):
            lost = True
        suppressed = current.__suppress_context__  # raise ... from None
        current = current.__cause__ or (None if suppressed else current.__context__)
    return lost


async def resumed_run(
    run: Callable[[list[MigrationReport]], Awaitable[MigrationReport]],
    attempts: int,
    secrets: tuple[str, ...],
) -> MigrationReport:
    """``run(reports)``'s report, ``run`` called again after each lost connection (up to
    ``attempts`` times; never once this task is being cancelled). Each attempt adds its
    report to ``reports`` as it starts; the last one's comes back with the others' counts and
    warnings merged in, the resumes counted and warned of first."""
    task = asyncio.current_task()
    interrupted = task.cancelling() if task is not None else 0

    def worth_resuming(exc: BaseException) -> bool:
        return connection_lost(exc) and (task is None or task.cancelling() <= interrupted)

    resumed: list[str] = []
    reports: list[MigrationReport] = []
    async for attempt in _resuming(attempts, secrets, resumed, worth_resuming):
        with attempt:
            report = await run(reports)
    if resumed:
        _merge(report, [r for r in reports if r is not report])
        report.resumed = len(resumed)
        report.warnings.insert(0, resumed_warning(resumed))
    return report


def _merge(final: MigrationReport, earlier: list[MigrationReport]) -> None:
    """``final`` as the report of the whole call: what ``earlier`` attempts copied is not
    "committed by an earlier run", and their counts, stage timings and warnings stand (the
    ``total`` timing already spans the call)."""
    final.skipped_chunks = max(0, final.skipped_chunks - sum(r.copied_chunks for r in earlier))
    for r in earlier:
        for name in _COUNTS:
            setattr(final, name, getattr(final, name) + getattr(r, name))
        for stage, seconds in r.timings.items():
            if stage != "total":
                final.timings[stage] = final.timings.get(stage, 0.0) + seconds
        final.warnings.extend(w for w in r.warnings if w not in final.warnings)


def _resuming(
    attempts: int,
    secrets: tuple[str, ...],
    resumed: list[str],
    retry_on: Callable[[BaseException], bool],
) -> tenacity.AsyncRetrying:
    """The policy the attempts run under; each resume's cause (described without
    ``secrets``) is appended to ``resumed`` and logged."""

    def note(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        cause = describe(exc, secrets) if exc is not None else "?"
        resumed.append(cause)
        wait = state.next_action.sleep if state.next_action else 0.0
        logger.warning(
            "migration: a connection was lost (%s); resuming after the committed chunks in "
            "%.1f s (%d of %d)",
            cause,
            wait,
            len(resumed),
            attempts,
        )

    return tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(retry_on),
        stop=tenacity.stop_after_attempt(attempts + 1),
        wait=tenacity.wait_exponential(multiplier=FIRST_WAIT, max=MAX_WAIT)
        + tenacity.wait_random(0, FIRST_WAIT),
        before_sleep=note,
        reraise=True,
    )


def resumed_warning(resumed: list[str]) -> str:
    """The report's warning for a run that resumed after ``resumed`` lost connections."""
    times = "once" if len(resumed) == 1 else f"{len(resumed)} times"
    return (
        f"a connection was lost and the run resumed after its committed chunks {times} "
        f"(last: {resumed[-1]}); nothing committed before was copied twice"
    )
