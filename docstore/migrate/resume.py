"""A run that lost a connection resumes in the same call, as a re-run would.

Every stage of :meth:`~docstore.migrate.Migrator.run` is resumable: a chunk commits with its
checkpoint row in one transaction, so a chunk is either stored and checkpointed or neither,
and a run resumes after the last committed chunk (``tests/reliability/test_migrate_kill.py``
SIGKILLs the migrator mid-copy and mid-validation to prove it). A lost connection — a server
restart or failover, a network cut, ``pg_terminate_backend`` — is the same situation as a
killed migrator, seen from the databases, so :meth:`~docstore.migrate.Migrator.run` starts
over from its checkpoints up to ``reconnect_attempts`` times, waiting 0.5, 1, 2, 4, 8, 8 …
seconds (jittered) between attempts, before it gives up with the
:class:`~docstore.MigrationError` that says a re-run resumes.

Only connection losses are resumed: a failure the server answered (a value the target
refuses, a permission missing, another migrator holding the lock, a blocking preflight
finding), a statement that ran out of its time (it would again) and a pool with no free
connection are raised at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import tenacity

from docstore.errors import DatabaseUnavailableError, PoolTimeoutError
from docstore.failures import describe
from docstore.migrate.report import MigrationReport
from docstore.transient import is_transient

logger = logging.getLogger("docstore")

DEFAULT_RECONNECT_ATTEMPTS = 5
FIRST_WAIT = 0.5
MAX_WAIT = 8.0


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from: validation's and the store's errors wrap
    asyncpg's) means a connection to either database went away or could not be made."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TimeoutError | PoolTimeoutError):
            return False  # the same statement or pool would time out again
        if not isinstance(current, DatabaseUnavailableError) and is_transient(current):
            return True
        suppressed = current.__suppress_context__  # raise ... from None
        current = current.__cause__ or (None if suppressed else current.__context__)
    return False


async def resumed_run(
    run: Callable[[bool], Awaitable[MigrationReport]], attempts: int, secrets: tuple[str, ...]
) -> MigrationReport:
    """``run(False)``'s report, ``run(True)`` called after each lost connection (up to
    ``attempts`` times); the report counts the resumes and warns of them first."""
    resumed: list[str] = []
    async for attempt in resuming(attempts, secrets, resumed):
        with attempt:
            report = await run(bool(resumed))
    if resumed:
        report.resumed = len(resumed)
        report.warnings.insert(0, resumed_warning(resumed))
    return report


def resuming(attempts: int, secrets: tuple[str, ...], resumed: list[str]) -> tenacity.AsyncRetrying:
    """The policy :meth:`Migrator.run` runs its attempts under: up to ``attempts`` resumes
    after a lost connection; each one's cause (described without ``secrets``) is appended to
    ``resumed`` and logged."""

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
        retry=tenacity.retry_if_exception(connection_lost),
        stop=tenacity.stop_after_attempt(attempts + 1),
        wait=tenacity.wait_random_exponential(multiplier=FIRST_WAIT, max=MAX_WAIT),
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
