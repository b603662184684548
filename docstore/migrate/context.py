"""What every migration stage is given: :class:`StageContext` (the doc_type, chunking, the
target's embedding dimension, the run id that keys checkpoints, progress) and the small
helpers they share (the legacy connection, the read-only check, timestamps, a clock, two
connections' work side by side).

A stage is a module of functions over ``(ctx, legacy connection, target connection)``; the
:class:`~docstore.migrate.Migrator` opens the connections, holds the advisory lock and builds
the report, but each stage also runs alone on connections a caller opened (tests do).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar, cast

import asyncpg

from docstore.codecs import register_codecs
from docstore.config import Settings
from docstore.core import tcp
from docstore.core.together import together
from docstore.errors import DocstoreError, MigrationError, ReadOnlyError
from docstore.failures import connect_problem, describe, is_transient
from docstore.models import MAX_DOC_TYPE
from docstore.store import Store

logger = logging.getLogger("docstore")

P = ParamSpec("P")
T = TypeVar("T")
A = TypeVar("A")
B = TypeVar("B")
# progress(stage, rows done, rows total, bytes streamed so far)
Progress = Callable[[str, int, int, int], None]

DEFAULT_CHUNK_ROWS = 2000
DEFAULT_COPY_STREAMS = 2
"""Chunks copied at once. Two streams keep a 2-core target busy while one stream waits on the
legacy side (measured: 0.54-0.67 s vs 0.70-0.81 s for one psql pipe of 4,133 x 3,072);
more rarely help, since each stream's target backend is CPU-bound on the same cores."""
# Whole-table statements (checksums, rollback's COPY) are not bound by DOCSTORE_COMMAND_TIMEOUT.
LONG_TIMEOUT = 24 * 3600.0
MIGRATED_DOCUMENT = (
    "doc_type = $1 AND metadata->>'migrated_from' = 'rust_docs_vectors' AND metadata ? 'legacy_id'"
)


@dataclass
class StageContext:
    """The parameters of one migration that every stage reads.

    ``run_id`` keys the checkpoints (``<doc_type>:<legacy database>@<host>:<port>``, see
    :func:`run_id`); ``embedding_dim`` is the target's; ``streamed_bytes`` counts what the
    COPY pipes moved (for progress)."""

    doc_type: str
    run_id: str
    embedding_dim: int = 3072
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    copy_streams: int = DEFAULT_COPY_STREAMS
    progress: Progress | None = None
    streamed_bytes: int = 0
    # Set by the copy: the target had no document of doc_type when it began, so every
    # migrated row in it is one this run copied (the delta pass skips a clean-up scan).
    copied_into_empty: bool = False
    # The streaming validation's digest folds each embedding to its CRC-32C (the target can
    # compute it: docstore.migrate.digest.target_folds); both sides of a run use the same form.
    fold_embeddings: bool = False
    # The URLs' secrets, scrubbed from what the stages log (never shown: repr=False).
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def count_bytes(self, n: int) -> None:
        self.streamed_bytes += n

    def report(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total, self.streamed_bytes)


DOC_TYPE_RULE = f"1 to {MAX_DOC_TYPE} characters without NUL bytes"


def doc_type_ok(doc_type: str) -> bool:
    """Whether a migration may write ``doc_type`` (what ``documents.doc_type`` holds):
    checked by :class:`~docstore.migrate.Migrator` and, before anything connects, the CLI."""
    return 1 <= len(doc_type) <= MAX_DOC_TYPE and "\x00" not in doc_type


def run_doc_type(doc_type: str) -> str:
    """``doc_type`` as the first part of a run id: ``%`` and ``:`` (the separator)
    percent-encoded, so the first ``:`` of a run id always ends its doc_type and doc_type
    ``a`` never takes doc_type ``a:b``'s runs for its own. A doc_type without either (all
    the usual ones) is unchanged, so run ids written before still match."""
    return doc_type.replace("%", "%25").replace(":", "%3A")


async def run_id(src: asyncpg.Connection, doc_type: str) -> str:
    """The id of a migration of ``src`` into ``doc_type``: re-runs find their checkpoints, and
    preflight tells another legacy database's checkpoints in the doc_type by it.

    ``<database>@<server address>:<port>`` over TCP; over a Unix socket, which has neither,
    ``<database>@socket:<port>/<the cluster's system identifier>``: two servers on one host
    (staging and production, each with its ``rust_docs_vectors``) were both ``…@socket:``
    before, and one's run took the other's checkpoints for its own."""
    where = await src.fetchval(_WHERE)
    return f"{run_doc_type(doc_type)}:{where}"


# (no statement that may fail: the caller's transaction holds the copy's snapshot)
_WHERE = """
SELECT current_database() || '@' || coalesce(
         inet_server_addr()::text || ':' || inet_server_port()::text,
         'socket:' || current_setting('port') || coalesce('/' || CASE
           WHEN has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE')
           THEN (SELECT system_identifier::text FROM pg_catalog.pg_control_system()) END, ''))
"""


_TCP_DEFAULT: float = Settings.model_fields["tcp_timeout"].default
CANCEL_SEND_WAIT = 1.0
"""Seconds a cancelled legacy connection waits for the cancel request of the statement it
ran to reach the server (milliseconds on a server that answers) before it is closed."""
# The server polls the client's socket every second while a statement runs (PostgreSQL 14+;
# set after connecting, not as a startup parameter, which PgBouncer refuses): a statement of
# a migrator that vanished (killed, its cancel request lost) ends within a second, where a
# lock wait or a long scan went on until it sent its first row.
_WATCH_CLIENT = """
SELECT set_config('client_connection_check_interval', '1s', false)
 WHERE current_setting('server_version_num')::int >= 140000
"""


@contextlib.asynccontextmanager
async def open_legacy(
    source: str | Store,
    secrets: tuple[str, ...] = (),
    *,
    writable: bool = False,
    target: Store | None = None,
) -> AsyncIterator[Any]:
    """A connection to the legacy database (a URL, or a Store whose pool lends one);
    read-only unless ``writable`` (rollback), with docstore's codecs when it has pgvector.

    The session setting is explicit both ways: a rollback still writes into a legacy database
    frozen with ``ALTER DATABASE … SET default_transaction_read_only = on``
    (docs/cutover.md), which keeps the legacy application out while it runs. A failure to
    connect is a :class:`MigrationError` that names the problem, never the password.
    ``target``: the store migrated into, whose ``DOCSTORE_TCP_TIMEOUT`` a connection from a
    URL takes (:mod:`docstore.core.tcp`; without it, the default's).
    """
    settings = {
        "application_name": "docstore-migrate",
        "default_transaction_read_only": "off" if writable else "on",
    }
    if isinstance(source, Store):
        async with source.acquire() as pooled:
            # (the pool resets the session when the connection goes back)
            await pooled.execute(
                f"SET default_transaction_read_only = {settings['default_transaction_read_only']}"
            )
            yield pooled
        return
    try:
        conn = await asyncpg.connect(source, server_settings=settings)
    except DocstoreError:
        raise
    except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
        problem = connect_problem(exc, secrets) or describe(exc, secrets)
        # a server away for now (refused, starting up, reset) stays the cause, so a run
        # resumes after it (migrate.resume); no other cause is chained
        cause = exc if is_transient(exc) else None
        raise MigrationError(f"cannot reach the legacy database: {problem}") from cause
    try:
        # DOCSTORE_TCP_TIMEOUT on both ends: the session holds a snapshot the legacy server's
        # vacuum waits for, which it should not keep for hours after the migrator vanished
        tcp.apply(conn, _TCP_DEFAULT if target is None else target.settings.tcp_timeout)
        await tcp.mirror_on_server(conn)
        await _watch_client(conn)
        schema = await conn.fetchval(
            "SELECT n.nspname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
            " WHERE t.typname = 'vector' LIMIT 1"
        )
        if schema:
            await register_codecs(conn, schema)
        yield conn
    except BaseException:
        if cancelling():
            # cancelled (Ctrl-C): it may be stuck in a COPY or a cancelled query, where a
            # graceful close fails or waits; the server rolls its transaction back. Closed
            # once the statement's cancel request went out: closing the connection drops it,
            # and the server went on with the statement (a lock wait until the lock was free)
            try:
                await cancel_sent(conn)
            finally:
                conn.terminate()
        raise
    finally:
        await conn.close()


async def _watch_client(conn: asyncpg.Connection) -> None:
    """:data:`_WATCH_CLIENT` on ``conn``'s session; a server that cannot (a platform without
    the socket check) is left as it is."""
    try:
        await conn.fetchval(_WATCH_CLIENT)
    except asyncpg.PostgresError as exc:
        logger.debug("client_connection_check_interval not set: %s", describe(exc))


async def cancel_sent(conn: asyncpg.Connection, wait: float = CANCEL_SEND_WAIT) -> None:
    """Wait up to ``wait`` seconds for the cancel requests asyncpg sends for ``conn``'s
    cancelled statement (on a connection of their own) to be done: ``conn.terminate()``
    abandons those still pending. Never cancels them, nor raises their errors."""
    pending = [t for t in getattr(conn, "_cancellations", ()) if not t.done()]
    if pending:
        await asyncio.wait(pending, timeout=wait)


async def ensure_writable(store: Store, action: str) -> None:
    """Raise :class:`ReadOnlyError` unless the target accepts writes (checked before anything
    is written anywhere)."""
    if store.read_only:
        raise ReadOnlyError(
            f"the target store is read-only: unset READ_ONLY to {action} (in the shell that "
            "runs docstore, not the app's); nothing was written"
        )
    read_only = await store.fetchval(
        "SELECT current_setting('transaction_read_only') = 'on' OR pg_is_in_recovery()"
    )
    if read_only:
        raise ReadOnlyError(
            f"the target database is read-only (a standby, or default_transaction_read_only "
            f"is on): cannot {action}; nothing was written"
        )


def cancelling() -> bool:
    """Whether the current task is being cancelled (Ctrl-C): what it raises meanwhile is a
    consequence, and connections are closed rather than cleaned up (``migrate/pipe.py``)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def cancellation_wins(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """A call cancelled while it runs raises ``CancelledError`` (Ctrl-C: the CLI then exits
    130): never the error of a connection that cleaning up found cut off half-way, nor a
    result when a step swallowed the cancellation."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        task = asyncio.current_task()
        before = task.cancelling() if task is not None else 0

        def cancelled() -> bool:
            return task is not None and task.cancelling() > before

        try:
            result = await method(*args, **kwargs)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if cancelled():
                raise asyncio.CancelledError(f"cancelled ({type(exc).__name__})") from exc
            raise
        if cancelled():
            raise asyncio.CancelledError("cancelled")
        return result

    return wrapper


def now() -> float:
    return time.perf_counter()


def iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def as_utc(value: datetime | None) -> datetime | None:
    """A legacy TIMESTAMP (naive, UTC by convention) as an aware datetime.

    ``infinity`` / ``-infinity`` stay the naive ``datetime.max`` / ``datetime.min``: asyncpg
    reads them so from TIMESTAMP and TIMESTAMPTZ columns alike (the target's too, so both
    sides compare equal) and writes only those back as infinities."""
    if value is None or value.tzinfo is not None or value in (datetime.max, datetime.min):
        return value
    return value.replace(tzinfo=UTC)


async def side_by_side(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Both awaited concurrently (each on its own connection). The first failure cancels and
    awaits the other and is raised as itself, so callers catching asyncpg's errors
    (``Migrator`` turns them into a ``MigrationError``) still do; cancelled, both are cancelled
    and awaited (:func:`docstore.core.together.together`: not an ``asyncio.TaskGroup``, whose
    child failure on Python 3.11 leaves the awaiting task marked as being cancelled, which
    ``cancellation_wins`` would then report as an interruption)."""
    one, two = await together(first, second)
    return cast(A, one), cast(B, two)
