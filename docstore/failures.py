"""Failures: the retry policy for transient ones and their translation into docstore's errors.

Which failures are transient, and their safe descriptions, are :mod:`docstore.transient`'s
rules (re-exported here): transient failures are retried with exponential backoff and jitter
(:func:`retrying`); everything else raises at once. :func:`translate` maps what asyncpg and
the OS raise onto docstore's hierarchy, with messages that never contain a password or a
vector.
"""

from __future__ import annotations

import asyncio
import logging
import random
import traceback
from collections.abc import Callable
from pathlib import Path
from types import CodeType

import asyncpg
import tenacity

from docstore.config import Settings, redact_url
from docstore.errors import (
    DatabaseUnavailableError,
    DocstoreError,
    QueryError,
    ReadOnlyError,
    SchemaError,
    ValidationError,
)
from docstore.transient import (
    POOL_CLOSED,
    TRANSIENT_SQLSTATES,
    connect_problem,
    describe,
    is_closed,
    is_transient,
    is_transient_query_failure,
    is_unique_violation,
    may_have_run,
    must_close,
    scrub,
)

__all__ = [
    "POOL_CLOSED",
    "TRANSIENT_SQLSTATES",
    "connect_problem",
    "describe",
    "first_retry_wait",
    "is_closed",
    "is_transient",
    "is_transient_query_failure",
    "is_unique_violation",
    "may_have_run",
    "must_close",
    "retrying",
    "translate",
]

logger = logging.getLogger("docstore")

STATEMENT_TIMED_OUT = "57014"  # query_canceled: what the server's statement_timeout raises


def _describe_failure(exc: BaseException | None) -> str:
    sqlstate = getattr(exc, "sqlstate", None)
    return type(exc).__name__ + (f" [{sqlstate}]" if sqlstate else "")


def _log_retry(
    what: str, attempt: int, attempts: int, wait: float, exc: BaseException | None
) -> None:
    logger.warning(
        "transient failure on %s (attempt %d/%d, retrying in %.2fs): %s",
        what,
        attempt,
        attempts,
        wait,
        _describe_failure(exc),
    )


async def first_retry_wait(
    settings: Settings,
    what: str,
    exc: BaseException,
    on_retry: Callable[[], None] | None = None,
) -> None:
    """Log a first attempt's transient failure and wait as tenacity would have."""
    wait = random.uniform(0, min(settings.retry_initial_delay, settings.retry_max_delay))
    _log_retry(what, 1, settings.retry_attempts, wait, exc)
    if on_retry is not None:
        on_retry()
    await asyncio.sleep(wait)


def retrying(
    settings: Settings,
    what: str,
    *,
    after_first_failure: bool = False,
    retry_on: Callable[[BaseException], bool] = is_transient,
    on_retry: Callable[[], None] | None = None,
) -> tenacity.AsyncRetrying:
    """Tenacity policy for transient failures; ``after_first_failure`` continues a call whose
    first attempt already failed (attempt numbers and backoff carry on from 2). ``on_retry``
    is called before each retry (metrics)."""
    offset = 1 if after_first_failure else 0

    def log_retry(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        _log_retry(what, state.attempt_number + offset, settings.retry_attempts, wait, exc)
        if on_retry is not None:
            on_retry()

    return tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(retry_on),
        stop=tenacity.stop_after_attempt(settings.retry_attempts - offset),
        wait=tenacity.wait_random_exponential(
            multiplier=settings.retry_initial_delay * 2**offset, max=settings.retry_max_delay
        ),
        before_sleep=log_retry,
        reraise=True,
    )


def translate(
    exc: BaseException, url: str, secrets: tuple[str, ...], *, ran: bool = False
) -> DocstoreError:
    """``exc`` as a docstore error (itself if it already is one); ``url`` is named redacted
    and ``secrets`` are scrubbed from the message. ``ran``: ``exc`` was raised while a
    statement ran on an open connection, so a ``TimeoutError`` is that statement running out
    of its time (not a connection that could not be made)."""
    if isinstance(exc, DocstoreError):
        return exc
    where = redact_url(url)
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
        return ReadOnlyError(
            "the database refused a write: this store is read-only "
            "(default_transaction_read_only is on)"
        )
    if sqlstate == "28000":
        # pg_hba.conf refused the connection; the server's message says which rule applies
        # and whether the connection was encrypted, the key to most TLS set-up mistakes.
        return DatabaseUnavailableError(
            f"the server refused the connection to {where} [{sqlstate}]: "
            f"{scrub(str(exc), secrets)}; check the user name and the server's pg_hba.conf "
            "(a hostssl rule needs sslmode=require or stricter, a clientcert or cert rule "
            "needs sslcert and sslkey)",
            sqlstate=sqlstate,
        )
    if sqlstate == "28P01":
        return DatabaseUnavailableError(
            f"authentication failed connecting to {where} [{sqlstate}]: check the user name "
            "and password in the URL",
            sqlstate=sqlstate,
        )
    if sqlstate == "3D000":
        return DatabaseUnavailableError(
            f"the database in {where} does not exist [{sqlstate}]: create it or fix the URL",
            sqlstate=sqlstate,
        )
    problem = connect_problem(exc, secrets)
    if problem is not None:
        return DatabaseUnavailableError(f"cannot connect to {where}: {problem}")
    if isinstance(exc, asyncpg.InterfaceError) and POOL_CLOSED in str(exc):
        return DatabaseUnavailableError(
            f"this store ({where}) is closed: open another with docstore.connect()"
        )
    frames = _frames(exc) if isinstance(exc, TimeoutError) else []
    if _refused_timeout(frames):
        return ValidationError(
            "timeout must be a positive number of seconds, or None", field="timeout"
        )
    if ran and isinstance(exc, TimeoutError) and _raised_by_asyncpg(frames):
        # as the server's statement_timeout reports it (57014), not as an outage
        return QueryError(
            "the statement ran longer than its timeout (the call's timeout= or "
            "DOCSTORE_COMMAND_TIMEOUT) and was cancelled (TimeoutError); a write it made "
            "outside a transaction may or may not have been applied",
            sqlstate=STATEMENT_TIMED_OUT,
        )
    if ran and isinstance(exc, TimeoutError) and not _passed_through_asyncpg(frames):
        # the caller's own timeout inside its work (asyncio.timeout around a sleep or an
        # await of its own): neither an outage nor a statement's timeout
        return QueryError(
            "the work raised a TimeoutError of its own (a timeout in the caller's code, "
            "not a database or statement timeout; it is this error's __cause__); a write it "
            "had sent outside a transaction may or may not have been applied"
        )
    if is_transient(exc):
        # a deadlock or serialization failure is transient too, but no outage: say which
        what = "conflict with another transaction" if sqlstate in _CONFLICTS else "unavailable"
        return DatabaseUnavailableError(
            f"database at {where} {what}: {describe(exc, secrets)}", sqlstate=sqlstate
        )
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedFunctionError) and not (
        # 42P01 too, but a statement's own mistake (a name its FROM lacks), not the schema's
        str(exc).startswith("missing FROM-clause entry")
    ):
        hint = " (is the schema applied? run `docstore init`)"
        return SchemaError(describe(exc, secrets) + hint)
    return QueryError(describe(exc, secrets), sqlstate=sqlstate)


_CONFLICTS = frozenset({"40001", "40P01"})  # serialization failure, deadlock


def _frames(exc: BaseException) -> list[CodeType]:
    """The code of every frame ``exc`` was raised through, outermost first."""
    return [frame.f_code for frame, _ in traceback.walk_tb(exc.__traceback__)]


def _raised_by_asyncpg(frames: list[CodeType]) -> bool:
    """Whether asyncpg raised the exception itself (its innermost frame is asyncpg's: a
    statement's ``timeout``/``command_timeout``), not the caller's code around a statement (an
    ``asyncio.timeout`` of its own, which stays the caller's error)."""
    return bool(frames) and _asyncpg_file(frames[-1].co_filename)


def _passed_through_asyncpg(frames: list[CodeType]) -> bool:
    """Whether any frame the exception was raised through is asyncpg's (a statement, a
    connection reset or close that timed out, even through an ``asyncio.wait_for`` inside
    asyncpg)."""
    return any(_asyncpg_file(code.co_filename) for code in frames)


_ASYNCPG_DIR = Path(asyncpg.__file__).parent


def _asyncpg_file(filename: str) -> bool:
    """Whether code of ``filename`` is asyncpg's: a module of the installed package, or one of
    its Cython sources (named relative: ``asyncpg/protocol/protocol.pyx``)."""
    path = Path(filename)
    if path.is_absolute():
        return path.is_relative_to(_ASYNCPG_DIR)
    return path.parts[:1] == ("asyncpg",)


def _refused_timeout(frames: list[CodeType]) -> bool:
    """asyncpg refused a statement's ``timeout`` argument (zero or negative) before sending
    anything: a ``TimeoutError`` raised by its protocol's ``_get_timeout`` check, not a
    statement that ran out of time."""
    names = [code.co_name for code in frames[-2:]]
    return (
        len(names) == 2
        and names[0].endswith("_get_timeout")
        and names[1].endswith("_get_timeout_impl")
    )
