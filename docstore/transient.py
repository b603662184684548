"""Which failures are transient, and how a failure is described without secrets.

Transient failures (refused/reset connections, connect timeouts, SQLSTATE 08xxx, 57P01-03,
53300, 40001, 40P01) are worth retrying; everything else (authentication, missing database,
TLS set-up problems, syntax, constraint and data errors) is not. Descriptions never contain a
password or a vector. Only asyncpg, the standard library and :mod:`docstore.masking` below
this module: the embedded server's start (``docstore.embedded``) retries by the same rules as
the pools (``docstore.failures``, which builds the retry policy and the translation on these).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from typing import Any

import asyncpg

from docstore.masking import scrub_secrets

TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "40001", "40P01"})
_FATAL_CONNECT_SQLSTATES = frozenset({"28P01", "28000", "3D000", "42501"})
MAX_MESSAGE = 300


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
    if isinstance(exc, asyncpg.ConnectionDoesNotExistError):
        # asyncpg's own (SQLSTATE 08003), not the server's answer: the connection was lost
        # while the statement ran — unless the server's FATAL error for it came first (then
        # the cause, and its transaction rolled back)
        return "middle of operation" in str(exc) and not isinstance(
            exc.__cause__, asyncpg.PostgresError
        )
    if isinstance(exc, asyncpg.PostgresError):
        return False
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError):
        # "connection was closed in the middle of operation", "connection is closed"; and
        # "another operation is in progress": asyncpg read the FATAL ErrorResponse of a server
        # that terminated the session (restart, failover, pg_terminate_backend) before it saw
        # the socket close. docstore never shares a connection between operations, so that
        # state only means "this connection is dead" (tests/reliability/test_pool.py).
        message = str(exc)
        if POOL_CLOSED in message:  # the store was closed: nothing to wait for
            return False
        return "closed" in message or "another operation" in message
    return isinstance(exc, OSError | TimeoutError | asyncio.TimeoutError)


# asyncpg's words for a pool that close() ran on ("pool is closed", "pool is closing").
POOL_CLOSED = "pool is clos"


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
        reason = scrub(str(getattr(exc, "verify_message", None) or exc), secrets)
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
    if isinstance(exc, asyncpg.ConnectionDoesNotExistError):
        # asyncpg's own (SQLSTATE 08003), not the server's answer: the connection was lost
        # while the statement ran — unless the server's FATAL error for it came first (then
        # the cause, and its transaction rolled back)
        return "middle of operation" in str(exc) and not isinstance(
            exc.__cause__, asyncpg.PostgresError
        )
    if isinstance(exc, asyncpg.PostgresError):
        return False
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError):
        message = str(exc)
        return "middle of operation" in message or not (
            "connection is closed" in message or "another operation" in message
        )
    return True


def must_close(conn: Any, exc: BaseException) -> bool:
    """Whether ``conn``, on which ``exc`` was raised, must be closed rather than pooled
    again: dead or mid-protocol after a transient failure. Not after asyncpg's command
    timeout (``TimeoutError``): asyncpg has asked the server to cancel the statement, and the
    pool's release waits for that, as after a task's cancellation. Closing the connection
    instead dropped the cancel request, and the server ran the statement on to its end."""
    return is_transient(exc) and not isinstance(exc, TimeoutError) and not is_closed(conn)


def is_closed(conn: Any) -> bool:
    """Whether ``conn`` is closed — also for a pooled connection that died: asyncpg released
    it to its pool then, and its proxy answers every call, ``is_closed()`` included, with
    ``InterfaceError`` ("released back to the pool"), which would mask the failure at hand."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
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


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` without ``secrets`` (those of :data:`~docstore.masking.MIN_SCRUBBED_SECRET`
    characters or more, all masked at once: :func:`~docstore.masking.mask_secrets`), cut to
    :data:`MAX_MESSAGE` characters."""
    return scrub_secrets(text, secrets, limit=MAX_MESSAGE)


_ARG_ERROR = re.compile(r"^(invalid input for query argument \$\d+)")
# A constraint violation's DETAIL spells out the whole row: a document's embedding and text.
_FAILING_ROW = re.compile(r"(Failing row contains) \(.*", re.DOTALL)
# The server quotes the text it could not parse: a vector literal's values.
_VECTOR_INPUT = re.compile(
    r"(invalid input syntax for type (?:vector|halfvec|sparsevec)): \".*", re.DOTALL
)
# Python's datetime holds the years 1-9999, PostgreSQL's timestamps 4713 BC-294276 AD.
OUT_OF_RANGE_HINT = (
    " (a date or timestamp outside the years 1-9999 came back, which Python cannot hold: find"
    " it with `WHERE isfinite(col) AND (col < '0001-01-01' OR col >= '10000-01-01')`, then"
    " set it to NULL or select it as text)"
)


def withhold_values(text: str) -> str:
    """``text`` without the values a message can quote: a failing row (a document's
    embedding and text), a vector literal the server could not parse, a query argument
    asyncpg could not encode (the start of its ``repr``)."""
    text = _FAILING_ROW.sub(r"\1 (the row's values are not shown)", text)
    text = _VECTOR_INPUT.sub(r"\1 (the value is not shown)", text)
    match = _ARG_ERROR.match(text)
    return match[1] if match else text


def redact(exc: BaseException) -> None:
    """Withhold the values (:func:`withhold_values`) in the messages of ``exc`` and of the
    asyncpg errors in its ``__cause__``/``__context__`` chain, in place: docstore's errors keep
    the asyncpg error as their ``__cause__``, and a traceback prints it (a logged exception, an
    unhandled one). Other exceptions in the chain are left as they are."""
    stack, seen = [exc], set()
    while stack:
        one = stack.pop()
        if id(one) in seen:
            continue
        seen.add(id(one))
        if isinstance(one, _ASYNCPG_MESSAGES) and one.args and isinstance(one.args[0], str):
            one.args = (withhold_values(one.args[0]), *one.args[1:])
            for attr in ("message", "detail"):
                value = getattr(one, attr, None)
                if isinstance(value, str):
                    setattr(one, attr, withhold_values(value))
        stack.extend(e for e in (one.__cause__, one.__context__) if e is not None)


_ASYNCPG_MESSAGES = (asyncpg.PostgresError, asyncpg.InterfaceError)


def describe(exc: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """A short, safe description of ``exc``: class, SQLSTATE, scrubbed and truncated message,
    without the values it quotes (:func:`withhold_values`; in ``exc`` and its chain too:
    :func:`redact`)."""
    redact(exc)
    message = withhold_values(str(exc))
    sqlstate = getattr(exc, "sqlstate", None)
    code = f" [{sqlstate}]" if sqlstate else ""
    hint = OUT_OF_RANGE_HINT if is_out_of_range_date(exc) else ""
    text = scrub(message, secrets)
    return f"{type(exc).__name__}{code}{': ' if text else ''}{text}{hint}"


def is_out_of_range_date(exc: BaseException) -> bool:
    """asyncpg decoding a date or timestamp Python's datetime cannot hold."""
    message = str(exc)
    return isinstance(exc, OverflowError | ValueError) and (
        message.startswith("date value out of range")  # asyncpg's decoder
        or (message.startswith("year ") and message.endswith("is out of range"))  # datetime's
    )
