"""Connection pool, retry, read-only mode and error translation: :class:`Database`.

:class:`Database` is the lower half of :class:`docstore.Store` (which adds the repositories
and search on top). ``store = await docstore.connect()`` and
``async with docstore.connect() as store:`` both work, as with asyncpg's pool. The store
owns an asyncpg pool whose ``init`` registers the
pgvector codecs on every connection; its ``execute/fetch/fetchrow/fetchval`` mirror asyncpg's
query surface for notebooks and scripts.

Transient failures (refused/reset connections, connect timeouts, SQLSTATE 08xxx, 57P01-03,
53300, 40001, 40P01) are retried with exponential backoff and jitter; everything else
(authentication, missing database, syntax, constraint and data errors) raises at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any, Generic, Literal, Self, TypeVar

import asyncpg
import tenacity
from pydantic import BaseModel

from docstore import embedded
from docstore.codecs import register_codecs
from docstore.config import (
    Settings,
    UrlSource,
    load_settings,
    redact_url,
    resolve_url,
    url_password,
)
from docstore.errors import (
    DatabaseUnavailableError,
    DocstoreError,
    QueryError,
    ReadOnlyError,
    SchemaError,
)
from docstore.schema import runner

logger = logging.getLogger("docstore")

T = TypeVar("T")
IsolationLevel = Literal["read_committed", "read_uncommitted", "serializable", "repeatable_read"]

TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "40001", "40P01"})
_FATAL_CONNECT_SQLSTATES = frozenset({"28P01", "28000", "3D000", "42501"})
_MAX_MESSAGE = 300


# Set while docstore's own stateless work holds a connection (see Database.run): releasing it
# then skips asyncpg's reset query (RESET ALL, UNLISTEN *, ...), a server round trip that
# measured ~0.4 ms of a 3.5 ms ANN search. Open transactions are still rolled back by asyncpg.
_STATELESS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "docstore_stateless", default=False
)


async def _reset_connection(conn: asyncpg.Connection) -> None:
    if _STATELESS.get():
        return
    query = conn.get_reset_query()
    if query:
        await conn.execute(query)


class PoolTimeoutError(DatabaseUnavailableError):
    """No pooled connection became free within ``DOCSTORE_POOL_ACQUIRE_TIMEOUT``."""


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
    if isinstance(exc, asyncpg.InterfaceError):
        # "connection was closed in the middle of operation", "connection is closed"
        return "closed" in str(exc)
    return isinstance(exc, OSError | TimeoutError | asyncio.TimeoutError)


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


class Health(BaseModel):
    """What ``docstore health`` prints: can we talk to the database, and what is it."""

    ok: bool
    url: str
    url_source: str
    latency_ms: float
    server_version: str
    pgvector_version: str | None
    schema_version: int | None
    latest_schema_version: int
    embedding_dim: int | None
    read_only: bool
    in_recovery: bool
    replica_lag_seconds: float | None = None
    """On a replica: seconds since the last replayed transaction (None on a primary)."""
    vector_indexes: dict[str, bool] = {}
    """HNSW indexes on documents, name → valid (an invalid one is a failed concurrent build)."""
    text_index_valid: bool | None = None
    """The full-text index: valid or not, None when absent."""


class Database:
    """docstore's handle on one database: a pool plus the settings it was opened with.

    Create it with :func:`docstore.connect`. ``repr(store)`` and :attr:`url` never show a
    password.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        settings: Settings,
        url: str,
        url_source: UrlSource,
        read_only: bool,
    ) -> None:
        self._pool = pool
        self.settings = settings
        self._url = url
        self.url_source = url_source
        self.read_only = read_only
        self._secrets = tuple(s for s in (url_password(url),) if s)

    # -- identity --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The database URL with its password replaced by ``***``."""
        return redact_url(self._url)

    @property
    def embedding_dim(self) -> int:
        return self.settings.embedding_dim

    @property
    def pool(self) -> asyncpg.Pool:
        """The underlying asyncpg pool (for code that needs asyncpg directly)."""
        return self._pool

    def __repr__(self) -> str:
        return f"<{type(self).__name__} url={self.url!r} read_only={self.read_only}>"

    # -- lifecycle ---------------------------------------------------------------------------
    async def close(self) -> None:
        """Close the pool, waiting for checked-out connections to be released."""
        await self._pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- guards & errors ---------------------------------------------------------------------
    def ensure_writable(self) -> None:
        """Raise :class:`ReadOnlyError` if this store was opened read-only."""
        if self.read_only:
            raise ReadOnlyError(
                "this store is read-only (READ_ONLY is set or connect(read_only=True)); "
                "writes are refused until read-only mode is lifted"
            )

    def translate(self, exc: BaseException) -> DocstoreError:
        """Map an asyncpg/OS exception to docstore's hierarchy (message scrubbed)."""
        if isinstance(exc, DocstoreError):
            return exc
        return _translate(exc, self._url, self._secrets)

    # -- running work ------------------------------------------------------------------------
    def _retrying(self, *, after_first_failure: bool = False) -> tenacity.AsyncRetrying:
        return _retrying(
            self.settings,
            self.url,
            f"query on {self.url}",
            after_first_failure=after_first_failure,
            retry_on=is_transient_query_failure,
        )

    async def _attempt(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async with self.acquire() as conn:
            return await work(conn)

    async def run(
        self, work: Callable[[asyncpg.Connection], Awaitable[T]], *, stateless: bool = False
    ) -> T:
        """Run ``work(connection)`` on a pooled connection, retrying transient failures.

        ``work`` is called again from the start on a retry, so it should be one transaction or
        idempotent. Errors come out as docstore errors. ``stateless=True`` promises that
        ``work`` leaves no session state behind (no ``SET`` outside a transaction, no
        ``LISTEN``, cursor or advisory lock), so the connection goes back to the pool without
        a reset round trip.
        """
        token = _STATELESS.set(stateless)
        try:
            try:
                # The first attempt runs without tenacity's machinery (~70 us a call, 2% of
                # an ANN search); only a transient failure enters the retry loop.
                return await self._attempt(work)
            except BaseException as exc:
                if not is_transient_query_failure(exc) or self.settings.retry_attempts < 2:
                    raise
                await _first_retry_wait(self.settings, f"query on {self.url}", exc)
            async for attempt in self._retrying(after_first_failure=True):
                with attempt:
                    return await self._attempt(work)
        except DocstoreError:
            raise
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
            raise self.translate(exc) from exc
        finally:
            _STATELESS.reset(token)
        raise AssertionError("unreachable")  # pragma: no cover

    async def run_in_transaction(
        self, work: Callable[[asyncpg.Connection], Awaitable[T]], **transaction: Any
    ) -> T:
        """Like :meth:`run`, inside one transaction (retried whole on 40001/40P01 etc.)."""

        async def in_tx(conn: asyncpg.Connection) -> T:
            async with conn.transaction(**transaction):
                return await work(conn)

        return await self.run(in_tx)

    @contextlib.asynccontextmanager
    async def acquire(self, *, timeout: float | None = None) -> AsyncIterator[Any]:
        """Check a connection out of the pool (``async with store.acquire() as conn``).

        Waits at most ``timeout`` (default ``DOCSTORE_POOL_ACQUIRE_TIMEOUT``) for a free
        connection, then raises :class:`PoolTimeoutError`.
        """
        wait = self.settings.pool_acquire_timeout if timeout is None else timeout
        try:
            # asyncio.timeout rather than acquire(timeout=...): no extra task per acquire.
            async with asyncio.timeout(wait):
                conn = await self._pool.acquire()
        except TimeoutError:
            raise PoolTimeoutError(
                f"no database connection became free within {wait:g}s (pool max size "
                f"{self.settings.pool_max_size}); raise DOCSTORE_POOL_MAX_SIZE or "
                f"DOCSTORE_POOL_ACQUIRE_TIMEOUT, or reduce concurrency"
            ) from None
        try:
            yield conn
        finally:
            await self._pool.release(conn)

    @contextlib.asynccontextmanager
    async def transaction(
        self, *, isolation: IsolationLevel | None = None, readonly: bool = False
    ) -> AsyncIterator[Any]:
        """``async with store.transaction() as conn:`` — one transaction on one connection.

        Not retried: a transaction that fails part-way raises, and the caller decides.
        """
        async with self.acquire() as conn:
            try:
                async with conn.transaction(isolation=isolation, readonly=readonly):
                    yield conn
            except DocstoreError:
                raise
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                raise self.translate(exc) from exc

    # -- asyncpg's query surface -------------------------------------------------------------
    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        """Run a statement; returns the command tag (as ``asyncpg.Connection.execute``)."""
        return await self.run(lambda conn: conn.execute(query, *args, timeout=timeout))

    async def executemany(self, query: str, args: Any, *, timeout: float | None = None) -> None:
        """Run a statement once per argument tuple (one transaction, as in asyncpg)."""
        await self.run(lambda conn: conn.executemany(query, args, timeout=timeout))

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]:
        """Run a query and return all rows (``asyncpg.Record``)."""
        return await self.run(lambda conn: conn.fetch(query, *args, timeout=timeout))

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        """Run a query and return the first row, or None."""
        return await self.run(lambda conn: conn.fetchrow(query, *args, timeout=timeout))

    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        """Run a query and return one value of the first row, or None."""
        return await self.run(
            lambda conn: conn.fetchval(query, *args, column=column, timeout=timeout)
        )

    # -- schema & health ---------------------------------------------------------------------
    async def migrate(self) -> list[int]:
        """Apply pending schema migrations; returns the versions applied (``[]``: none due)."""
        self.ensure_writable()
        return await self.run(
            lambda conn: runner.apply_migrations(conn, embedding_dim=self.embedding_dim)
        )

    async def schema_status(self) -> runner.SchemaStatus:
        """The database's schema version and embedding dimension."""
        return await self.run(runner.schema_status)

    async def health(self) -> Health:
        """Round-trip to the server and report versions, schema, read-only state, replica lag
        and the search indexes (present, valid)."""

        async def probe(conn: asyncpg.Connection) -> Health:
            started = time.perf_counter()
            await conn.fetchval("select 1")
            latency = (time.perf_counter() - started) * 1000
            row: Any = await conn.fetchrow(
                "select current_setting('server_version') as server_version,"
                " (select extversion from pg_extension where extname = 'vector') as pgvector,"
                " current_setting('default_transaction_read_only') = 'on' as read_only,"
                " pg_is_in_recovery() as in_recovery,"
                " case when pg_is_in_recovery() then"
                "   extract(epoch from now() - pg_last_xact_replay_timestamp())::float8"
                " end as replica_lag"
            )
            indexes = await conn.fetch(
                "select c.relname as name, i.indisvalid as valid, am.amname as am"
                " from pg_index i join pg_class c on c.oid = i.indexrelid"
                " join pg_am am on am.oid = c.relam"
                " where i.indrelid = to_regclass('documents')"
                " and (am.amname = 'hnsw' or c.relname = 'idx_documents_content_fts')"
            )
            status = await runner.schema_status(conn)
            return Health(
                ok=True,
                url=self.url,
                url_source=self.url_source.value,
                latency_ms=round(latency, 3),
                server_version=row["server_version"],
                pgvector_version=row["pgvector"],
                schema_version=status.current,
                latest_schema_version=status.latest,
                embedding_dim=status.embedding_dim,
                read_only=self.read_only or row["read_only"],
                in_recovery=row["in_recovery"],
                replica_lag_seconds=row["replica_lag"],
                vector_indexes={r["name"]: r["valid"] for r in indexes if r["am"] == "hnsw"},
                text_index_valid=next((r["valid"] for r in indexes if r["am"] != "hnsw"), None),
            )

        return await self.run(probe)


# --------------------------------------------------------------------------------------------
# connect()


D = TypeVar("D", bound=Database)


class StoreOpener(Generic[D]):
    """What :func:`connect` returns: awaitable (→ store) and an async context manager."""

    def __init__(self, opener: Callable[[], Awaitable[D]]) -> None:
        self._opener = opener
        self._store: D | None = None

    def __await__(self) -> Generator[Any, None, D]:
        return self._opener().__await__()

    async def __aenter__(self) -> D:
        self._store = await self._opener()
        return self._store

    async def __aexit__(self, *exc: object) -> None:
        if self._store is not None:
            await self._store.close()


def open_database(
    factory: type[D],
    url: str | None = None,
    *,
    read_only: bool | None = None,
    migrate: bool | None = None,
    settings: Settings | None = None,
    **overrides: Any,
) -> StoreOpener[D]:
    """Open a ``factory`` (a :class:`Database` subclass); see :func:`docstore.connect`.

    The URL is ``url``, else ``DATABASE_URL``, else ``MCPDOCS_DATABASE_URL``, else the
    embedded PostgreSQL (extra ``docstore[embedded]``). ``read_only`` defaults to ``READ_ONLY``.

    ``migrate``: apply pending schema migrations while connecting. Defaults to
    ``DOCSTORE_AUTO_MIGRATE`` (true), and is always off in read-only mode: a read-only store
    never runs DDL. ``overrides`` are :class:`~docstore.config.Settings` fields by name
    (``pool_max_size=10``, ``embedding_dim=1536``, ...).

    Usage: ``store = await docstore.connect()`` or ``async with docstore.connect() as store:``.
    """

    async def open_store() -> D:
        cfg = settings or load_settings(**overrides)
        if overrides and settings is not None:
            cfg = load_settings(**{**settings.model_dump(), **overrides})
        return await _open(factory, cfg, url, read_only, migrate)

    return StoreOpener(open_store)


async def _open(
    factory: type[D],
    settings: Settings,
    url: str | None,
    read_only: bool | None,
    migrate: bool | None,
) -> D:
    resolved, source = resolve_url(settings, url)
    if resolved is None:
        resolved = await embedded.embedded_url(settings.embedded_dir)
    ro = settings.read_only if read_only is None else read_only
    do_migrate = (settings.auto_migrate if migrate is None else migrate) and not ro
    if migrate and ro:
        logger.warning("read-only store: schema migrations are not applied")
    secrets = tuple(s for s in (url_password(resolved),) if s)
    server_settings = {"application_name": settings.application_name}
    if ro:
        server_settings["default_transaction_read_only"] = "on"
    if settings.statement_timeout is not None:
        server_settings["statement_timeout"] = str(int(settings.statement_timeout * 1000))

    async def bootstrap() -> str | None:
        conn = await asyncpg.connect(
            resolved, server_settings=server_settings, timeout=settings.pool_acquire_timeout
        )
        try:
            if do_migrate and await conn.fetchval(
                "SELECT to_regclass('doc_embeddings') IS NOT NULL"
                " AND to_regclass('docstore_schema_version') IS NULL"
            ):
                raise SchemaError(
                    f"{redact_url(resolved)} is a legacy rust_docs_vectors database (it has "
                    "doc_embeddings and no docstore schema): point DATABASE_URL at docstore's "
                    "database, or run `docstore init --url ...` to add docstore's tables to it"
                )
            if do_migrate:
                applied = await runner.apply_migrations(conn, embedding_dim=settings.embedding_dim)
                if applied:
                    logger.info("applied schema migrations %s to %s", applied, redact_url(resolved))
            status = await runner.schema_status(conn)
            runner.check_compatible(status, settings.embedding_dim)
            if status.pending and status.current is not None:
                logger.warning(
                    "schema of %s is at version %s, docstore expects %s: run `docstore init`",
                    redact_url(resolved),
                    status.current,
                    status.latest,
                )
            schema: str | None = await conn.fetchval(
                "select n.nspname from pg_extension e join pg_namespace n "
                "on n.oid = e.extnamespace where e.extname = 'vector'"
            )
            return schema
        finally:
            await conn.close()

    async def init_connection(conn: asyncpg.Connection) -> None:
        if vector_schema is not None:
            await register_codecs(conn, vector_schema)

    retrying = _retrying(settings, redact_url(resolved), f"connect to {redact_url(resolved)}")
    try:
        vector_schema: str | None = None
        async for attempt in retrying:
            with attempt:
                vector_schema = await bootstrap()
        if vector_schema is None:
            logger.warning(
                "pgvector is not enabled in %s: vectors are not decoded", redact_url(resolved)
            )
        pool: asyncpg.Pool | None = None
        async for attempt in retrying:
            with attempt:
                pool = await asyncpg.create_pool(
                    resolved,
                    min_size=settings.pool_min_size,
                    max_size=settings.pool_max_size,
                    command_timeout=settings.command_timeout,
                    server_settings=server_settings,
                    init=init_connection,
                    reset=_reset_connection,
                    timeout=settings.pool_acquire_timeout,
                )
    except DocstoreError:
        raise
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
            raise
        raise _translate(exc, resolved, secrets) from None
    assert pool is not None
    return factory(pool, settings=settings, url=resolved, url_source=source, read_only=ro)


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


async def _first_retry_wait(settings: Settings, what: str, exc: BaseException) -> None:
    """Log a first attempt's transient failure and wait as tenacity would have."""
    wait = random.uniform(0, min(settings.retry_initial_delay, settings.retry_max_delay))
    _log_retry(what, 1, settings.retry_attempts, wait, exc)
    await asyncio.sleep(wait)


def _retrying(
    settings: Settings,
    redacted: str,
    what: str,
    *,
    after_first_failure: bool = False,
    retry_on: Callable[[BaseException], bool] = is_transient,
) -> tenacity.AsyncRetrying:
    """Tenacity policy for transient failures; ``after_first_failure`` continues a call whose
    first attempt already failed (attempt numbers and backoff carry on from 2)."""
    offset = 1 if after_first_failure else 0

    def log_retry(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        _log_retry(what, state.attempt_number + offset, settings.retry_attempts, wait, exc)

    return tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(retry_on),
        stop=tenacity.stop_after_attempt(settings.retry_attempts - offset),
        wait=tenacity.wait_random_exponential(
            multiplier=settings.retry_initial_delay * 2**offset, max=settings.retry_max_delay
        ),
        before_sleep=log_retry,
        reraise=True,
    )


def _translate(exc: BaseException, url: str, secrets: tuple[str, ...]) -> DocstoreError:
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
    if is_transient(exc):
        return DatabaseUnavailableError(
            f"database at {where} unavailable: {describe(exc, secrets)}", sqlstate=sqlstate
        )
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedFunctionError):
        hint = " (is the schema applied? run `docstore init`)"
        return SchemaError(describe(exc, secrets) + hint)
    return QueryError(describe(exc, secrets), sqlstate=sqlstate)
