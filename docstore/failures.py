"""Failures: which are transient (retried), how they are described and translated.

Transient failures (refused/reset connections, connect timeouts, SQLSTATE 08xxx, 57P01-03,
53300, 40001, 40P01) are retried with exponential backoff and jitter (:func:`retrying`);
everything else (authentication, missing database, TLS set-up problems, syntax, constraint and
data errors) raises at once. :func:`translate` maps what asyncpg and the OS raise onto
docstore's hierarchy, with messages that never contain a password or a vector.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import ssl
from collections.abc import Callable

import asyncpg
import tenacity

from docstore.config import Settings, redact_url
from docstore.errors import (
    DatabaseUnavailableError,
    DocstoreError,
    QueryError,
    ReadOnlyError,
    SchemaError,
)

logger = logging.getLogger("docstore")

TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "40001", "40P01"})
_FATAL_CONNECT_SQLSTATES = frozenset({"28P01", "28000", "3D000", "42501"})
_MAX_MESSAGE = 300


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: the same call may well succeed a moment later.

    TLS failures that are configuration problems (an unverifiable server certificate, a
    server refusing TLS, an unreadable ``sslrootcert``) are not: see :func:`connect_problem`.
    """
    if connect_problem(exc) is not None:
        return False
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str):
        if sqlstate in _FATAL_CONNECT_SQLSTATES:
            return False
        return sqlstate in TRANSIENT_SQLSTATES or sqlstate.startswith("08")
    if isinstance(exc, asyncpg.PostgresError):
        return False
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError):
        # "connection was closed in the middle of operation", "connection is closed"; and
        # "another operation is in progress": asyncpg read the FATAL ErrorResponse of a server
        # that terminated the session (restart, failover, pg_terminate_backend) before it saw
        # the socket close. docstore never shares a connection between operations, so that
        # state only means "this connection is dead" (tests/reliability/test_pool.py).
        message = str(exc)
        if _POOL_CLOSED in message:  # the store was closed: nothing to wait for
            return False
        return "closed" in message or "another operation" in message
    return isinstance(exc, OSError | TimeoutError | asyncio.TimeoutError)


# asyncpg's words for a pool that close() ran on ("pool is closed", "pool is closing").
_POOL_CLOSED = "pool is clos"


# TLS errors that only mean the connection went away (server restart, network cut): retried.
_TLS_DROPPED = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)
# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH, _EMAIL_MISMATCH, _IP_ADDRESS_MISMATCH
_HOST_MISMATCH = frozenset({62, 63, 64})
# X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED
_CERT_DATES = frozenset({9, 10})
_FIX_ROOT_CERT = (
    "set sslrootcert in the URL to the CA certificate (PEM file) that issued the server's "
    "certificate"
)
_FIX_HOST = (
    "connect with a host name the certificate lists (its subjectAltName) or reissue the "
    "certificate for this host; sslmode=verify-ca checks the CA without the host name"
)


def connect_problem(exc: BaseException, secrets: tuple[str, ...] = ()) -> str | None:
    """What is wrong when connecting failed for a reason retrying cannot fix, else None.

    Covers TLS: a server certificate that fails verification (unknown CA, host name not in
    the certificate, expired), any other TLS error (a protocol or cipher mismatch, a client
    certificate the server rejects), a server that refuses TLS under ``sslmode=require`` or
    stricter, and settings asyncpg rejects while reading the URL (invalid ``sslmode``, an
    ``sslrootcert``/``sslcert``/``sslkey`` file that can't be read). A TLS connection that is
    merely cut (EOF) is not a setup problem: it stays transient. ``secrets`` are scrubbed
    from the text.
    """
    if isinstance(exc, OSError) and _raised_reading_settings(exc):
        return (
            "could not load a TLS file named in the URL or a PGSSL* variable (sslrootcert, "
            f"sslcert, sslkey or sslcrl): {describe(exc, secrets)}; check the path and that "
            "it is a readable PEM file"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        # verify_code/verify_message are set by the ssl module, not on a hand-made instance.
        code = getattr(exc, "verify_code", None)
        reason = _scrub(str(getattr(exc, "verify_message", None) or exc), secrets)
        if code in _HOST_MISMATCH:
            fix = _FIX_HOST
        elif code in _CERT_DATES:
            fix = "the server's certificate is not valid now: renew it on the server"
        else:
            fix = _FIX_ROOT_CERT
        return f"the server certificate could not be verified ({reason}): {fix}"
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, _TLS_DROPPED):
        return (
            f"TLS failed ({describe(exc, secrets)}): check sslmode, sslcert/sslkey and the "
            "server's ssl settings"
        )
    if isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc):
        # asyncpg's words when the server answers the SSLRequest with "N" (ssl = off).
        return (
            "the server does not accept TLS connections (it refused the SSL request): "
            "enable ssl on the server, or lower sslmode if an unencrypted connection is "
            "acceptable"
        )
    if isinstance(exc, asyncpg.ClientConfigurationError):
        return f"invalid connection settings: {describe(exc, secrets)}"
    return None


def _raised_reading_settings(exc: BaseException) -> bool:
    """True if ``exc`` came out of asyncpg parsing the connection settings, where it loads the
    TLS files (a missing ``sslrootcert`` raises a bare FileNotFoundError, indistinguishable
    by type from a missing Unix socket, which is transient)."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "_parse_connect_dsn_and_args":
            return True
        tb = tb.tb_next
    return False


def is_transient_query_failure(exc: BaseException) -> bool:
    """:func:`is_transient`, except a statement that ran out of ``command_timeout``: it may
    have done its work (a write may have committed), so it is not run again."""
    return is_transient(exc) and not isinstance(exc, TimeoutError)


def may_have_run(exc: BaseException) -> bool:
    """Whether a statement that failed with ``exc`` after it was handed to its connection
    may still have done its work: the connection broke while the server could have been
    running it (a reset, "closed in the middle of operation"). Not when the server answered
    with an error (its transaction rolled back) or asyncpg refused a connection it knew dead
    before sending anything ("connection is closed", "another operation is in progress")."""
    if isinstance(exc, asyncpg.PostgresError):
        return False
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError):
        message = str(exc)
        return "middle of operation" in message or not (
            "connection is closed" in message or "another operation" in message
        )
    return True


def is_unique_violation(exc: BaseException) -> bool:
    """A unique violation, also as Citus reports one a worker raised during a COPY into a
    distributed table: SQLSTATE XX000 with the worker's message."""
    if isinstance(exc, asyncpg.UniqueViolationError):
        return True
    return (
        isinstance(exc, asyncpg.PostgresError)
        and exc.sqlstate == "XX000"
        and str(exc).startswith("duplicate key value violates unique constraint")
    )


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    if len(text) > _MAX_MESSAGE:
        text = text[:_MAX_MESSAGE] + "…"
    return text


_ARG_ERROR = re.compile(r"^(invalid input for query argument \$\d+)")


def describe(exc: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """A short, safe description of ``exc``: class, SQLSTATE, scrubbed and truncated message.

    Client-side argument errors echo the offending value (possibly a whole vector), so only
    their first clause is kept.
    """
    message = str(exc)
    match = _ARG_ERROR.match(message)
    if match:
        message = match[1]
    sqlstate = getattr(exc, "sqlstate", None)
    code = f" [{sqlstate}]" if sqlstate else ""
    return f"{type(exc).__name__}{code}: {_scrub(message, secrets)}"


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


def translate(exc: BaseException, url: str, secrets: tuple[str, ...]) -> DocstoreError:
    """``exc`` as a docstore error (itself if it already is one); ``url`` is named redacted
    and ``secrets`` are scrubbed from the message."""
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
            f"{_scrub(str(exc), secrets)}; check the user name and the server's pg_hba.conf "
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
    if isinstance(exc, asyncpg.InterfaceError) and _POOL_CLOSED in str(exc):
        return DatabaseUnavailableError(
            f"this store ({where}) is closed: open another with docstore.connect()"
        )
    if is_transient(exc):
        return DatabaseUnavailableError(
            f"database at {where} unavailable: {describe(exc, secrets)}", sqlstate=sqlstate
        )
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedFunctionError) and not (
        # 42P01 too, but a statement's own mistake (a name its FROM lacks), not the schema's
        str(exc).startswith("missing FROM-clause entry")
    ):
        hint = " (is the schema applied? run `docstore init`)"
        return SchemaError(describe(exc, secrets) + hint)
    return QueryError(describe(exc, secrets), sqlstate=sqlstate)
