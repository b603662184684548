"""Connection pools, read/write routing, read-only mode and metrics hooks: :class:`Database`.

:class:`Database` is the lower half of :class:`docstore.Store` (which adds the repositories
and search on top). ``store = await docstore.connect()`` and
``async with docstore.connect() as store:`` both work, as with asyncpg's pool. The store
owns an asyncpg pool whose ``init`` registers the pgvector codecs on every connection; its
``execute/fetch/fetchrow/fetchval`` mirror asyncpg's query surface for notebooks and scripts.

**Read-only mode** (``READ_ONLY``, ``connect(read_only=True)``): write APIs refuse with
:class:`ReadOnlyError` before touching the database, and the pools' connections are
:class:`~docstore.readonly.ReadOnlyConnection`, which keep raw SQL inside read-only
transactions; :meth:`Database.health` reports which guarantee is in force.

**Replicas.** With ``DATABASE_READ_URL`` (or a multi-host ``DATABASE_URL``, see
:func:`~docstore.config.split_read_write`) a second pool serves reads — searches, document
and source reads, ``store.replica.fetch…`` — while writes and the plain query surface use
the primary. When the replica fails (refused, reset, shutting down, a recovery conflict),
the read is run on the primary instead, logged once per outage at WARNING, and the replica
is tried again after ``DOCSTORE_REPLICA_RETRY_SECONDS``. Replicas lag: code that must read
its own writes runs under ``with store.read_from_primary():``.

Failures are classified and translated by :mod:`docstore.failures` (transient ones are
retried with backoff); every operation is timed by :mod:`docstore.metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Literal, Self, TypeVar, cast

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
    split_read_write,
    url_secrets,
)
from docstore.errors import (
    ConfigurationError,
    DocstoreError,
    PoolTimeoutError,
    ReadOnlyError,
    SchemaError,
)
from docstore.failures import (
    describe,
    first_retry_wait,
    is_transient,
    is_transient_query_failure,
    retrying,
    translate,
)
from docstore.metrics import DiskUsage, Metrics, MetricsSnapshot, PoolStats, SearchRecall, timed
from docstore.readonly import Guarantee, ReadOnlyConnection, create_reader_role, write_capabilities
from docstore.schema import runner

logger = logging.getLogger("docstore")

T = TypeVar("T")
IsolationLevel = Literal["read_committed", "read_uncommitted", "serializable", "repeatable_read"]
Role = Literal["primary", "replica"]

# A replica that is not there should cost a read little time before it goes to the primary.
REPLICA_CONNECT_TIMEOUT = 5.0


# Set while docstore's own stateless work holds a connection (see Database.run): releasing it
# then skips asyncpg's reset query (RESET ALL, UNLISTEN *, ...), a server round trip that
# measured ~0.4 ms of a 3.5 ms ANN search. Open transactions are still rolled back by asyncpg.
_STATELESS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "docstore_stateless", default=False
)
# Set by Database.read_from_primary(): reads in this context skip the replica.
_PRIMARY_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "docstore_primary_only", default=False
)


async def _reset_connection(conn: asyncpg.Connection) -> None:
    if _STATELESS.get():
        return
    query = conn.get_reset_query()
    if query:
        await conn.execute(query)


class ReplicaHealth(BaseModel):
    """The read replica as ``store.health()`` found it."""

    url: str
    """Password redacted."""
    ok: bool
    latency_ms: float | None = None
    in_recovery: bool | None = None
    """True on a streaming standby (False: the read URL points at a primary)."""
    lag_seconds: float | None = None
    """Seconds since the last replayed transaction (grows while the primary is idle too)."""
    error: str | None = None
    """Why it could not be reached (no password in it)."""


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
    read_only_guarantee: Guarantee = "none"
    """What keeps writes out: ``"standby"`` (the server is a hot standby in recovery),
    ``"role"`` (the user, and every role it can ``SET ROLE`` to, is no superuser and may not
    write docstore's tables nor create objects: see :func:`docstore.readonly.create_reader_role`),
    ``"client"`` (a read-only store's guard, :class:`docstore.readonly.ReadOnlyConnection`: no
    statement leaves a read-only transaction; PostgreSQL 16 or later), ``"none"`` (writable, or
    only the session default ``default_transaction_read_only``, which SQL can undo)."""
    in_recovery: bool
    replica_lag_seconds: float | None = None
    """On a replica: seconds since the last replayed transaction (None on a primary)."""
    vector_indexes: dict[str, bool] = {}
    """HNSW indexes on documents, name → valid (an invalid one is a failed concurrent build)."""
    text_index_valid: bool | None = None
    """The full-text index: valid or not, None when absent."""
    read_replica: ReplicaHealth | None = None
    """The read replica (``DATABASE_READ_URL`` or a multi-host URL), when there is one."""
    search_recall: SearchRecall | None = None
    """Live recall of ANN searches against the recall target (a Store fills it)."""
    degraded: bool = False
    """Reachable, but something is below par: ``warnings`` says what."""
    warnings: list[str] = []


_HEALTH = """
select current_setting('server_version') as server_version,
       current_setting('server_version_num')::int as version_num,
       (select extversion from pg_extension where extname = 'vector') as pgvector,
       current_setting('default_transaction_read_only') = 'on' as read_only,
       pg_is_in_recovery() as in_recovery,
       case when pg_is_in_recovery() then
         extract(epoch from now() - pg_last_xact_replay_timestamp())::float8
       end as replica_lag
"""

_SEARCH_INDEXES = """
select c.relname as name, i.indisvalid as valid, am.amname as am
  from pg_index i join pg_class c on c.oid = i.indexrelid join pg_am am on am.oid = c.relam
 where i.indrelid = to_regclass('documents')
   and (am.amname = 'hnsw' or c.relname = 'idx_documents_content_fts')
"""

_DISK = """
select pg_database_size(current_database()) as database_bytes,
       coalesce(pg_table_size(to_regclass('documents')), 0) as table_bytes,
       coalesce(pg_indexes_size(to_regclass('documents')), 0) as indexes_bytes,
       coalesce((select jsonb_object_agg(c.relname, pg_relation_size(c.oid))
                   from pg_index i join pg_class c on c.oid = i.indexrelid
                  where i.indrelid = to_regclass('documents')), '{}') as indexes
"""

_CONNECTIONS = """
select coalesce(state, 'unknown') as state, count(*) as n from pg_stat_activity
 where application_name = $1 and datname = current_database() group by 1
"""


@dataclass
class _Pool:
    """One asyncpg pool and what it was opened with (so :meth:`Database.reload` can re-point
    it at a new URL)."""

    role: Role
    pool: asyncpg.Pool
    url: str
    connect_kwargs: dict[str, Any] = field(default_factory=dict)
    init: Any = None
    """The pool's ``init`` (codec registration), reused for a replica pool."""
    connection_class: type[asyncpg.Connection] = asyncpg.Connection
    """:class:`~docstore.readonly.ReadOnlyConnection` in a read-only store."""

    @property
    def redacted(self) -> str:
        return redact_url(self.url)


class Database:
    """docstore's handle on one database: its pools plus the settings it was opened with.

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
        connect_kwargs: dict[str, Any] | None = None,
        init: Any = None,
        replica: _Pool | None = None,
    ) -> None:
        self._primary = _Pool(
            "primary", pool, url, connect_kwargs or {}, init, _connection_class(read_only)
        )
        self._replica = replica
        self.settings = settings
        self.url_source = url_source
        self.read_only = read_only
        self._secrets = url_secrets(url, replica.url if replica else None)
        self._metrics = Metrics(enabled=settings.metrics)
        self._replica_down_until = 0.0

    # -- identity --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The database URL with its password replaced by ``***``."""
        return self._primary.redacted

    @property
    def read_url(self) -> str | None:
        """The read replica's URL (password redacted), or None without one."""
        return self._replica.redacted if self._replica else None

    @property
    def _url(self) -> str:
        return self._primary.url

    @property
    def embedding_dim(self) -> int:
        return self.settings.embedding_dim

    @property
    def pool(self) -> asyncpg.Pool:
        """The primary's asyncpg pool (for code that needs asyncpg directly)."""
        return self._primary.pool

    @property
    def replica(self) -> ReadQueries:
        """``fetch/fetchrow/fetchval`` on the read replica (the primary without one, or when
        it is down). For queries that only read."""
        return ReadQueries(self)

    def __repr__(self) -> str:
        replica = f" read_url={self.read_url!r}" if self._replica else ""
        return f"<{type(self).__name__} url={self.url!r}{replica} read_only={self.read_only}>"

    # -- lifecycle ---------------------------------------------------------------------------
    async def close(self) -> None:
        """Close the pools, waiting for checked-out connections to be released."""
        await asyncio.gather(*(p.pool.close() for p in self._pools()))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def reload(self, url: str | None = None) -> None:
        """Pick up a new database URL without dropping work in flight (credential rotation).

        Re-reads ``DATABASE_URL`` / ``MCPDOCS_DATABASE_URL`` / ``DATABASE_READ_URL`` from the
        environment (``url`` wins, as in :func:`~docstore.connect`), checks that the new
        primary accepts a connection and has a compatible schema, then points the pools at
        the new URLs: connections checked out now finish their queries and are replaced when
        released, idle ones are replaced at their next use. Other settings (pool sizes,
        timeouts) need a new store. Raises like :func:`~docstore.connect`; on failure the store
        keeps its old URLs.
        """
        settings = load_settings()
        resolved, source = resolve_url(settings, url)
        if resolved is None:
            if self.url_source is not UrlSource.EMBEDDED:
                raise ConfigurationError(
                    "reload() found no DATABASE_URL or MCPDOCS_DATABASE_URL to move to: set one,"
                    " or pass reload(url=...)"
                )
            resolved = await embedded.embedded_url(settings.embedded_dir)
        writes, reads = split_read_write(settings, resolved)
        secrets = url_secrets(writes, reads)
        try:
            conn = await asyncpg.connect(writes, **self._primary.connect_kwargs)
            try:
                status = await runner.schema_status(conn)
            finally:
                await conn.close()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise translate(exc, writes, secrets) from None
        runner.check_compatible(status, self.embedding_dim)
        self._secrets = tuple(dict.fromkeys((*self._secrets, *secrets)))
        await _repoint(self._primary, writes)
        if reads is not None and self._replica is not None:
            await _repoint(self._replica, reads)
        elif reads is not None:
            self._replica = await _open_replica(reads, self._primary, settings)
        elif self._replica is not None:
            old, self._replica = self._replica, None
            await old.pool.close()
        self.url_source = source
        self._replica_down_until = 0.0
        logger.info(
            "reloaded: primary %s%s",
            redact_url(writes),
            f", replica {redact_url(reads)}" if reads else "",
        )

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
        return translate(exc, self._url, self._secrets)

    @contextlib.contextmanager
    def read_from_primary(self) -> Iterator[None]:
        """``with store.read_from_primary():`` — reads in this block (this task and tasks it
        starts) go to the primary, so they see writes the replica may not have replayed yet."""
        token = _PRIMARY_ONLY.set(True)
        try:
            yield
        finally:
            _PRIMARY_ONLY.reset(token)

    # -- running work ------------------------------------------------------------------------
    def _retrying(self, *, after_first_failure: bool = False) -> tenacity.AsyncRetrying:
        return retrying(
            self.settings,
            f"query on {self.url}",
            after_first_failure=after_first_failure,
            retry_on=is_transient_query_failure,
            on_retry=self._metrics.retry,
        )

    async def _attempt(
        self, work: Callable[[asyncpg.Connection], Awaitable[T]], role: Role = "primary"
    ) -> T:
        async with self._checkout(role) as conn:
            return await work(conn)

    @timed("run")
    async def run(
        self,
        work: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        stateless: bool = False,
        read: bool = False,
    ) -> T:
        """Run ``work(connection)`` on a pooled connection, retrying transient failures.

        ``work`` is called again from the start on a retry, so it should be one transaction or
        idempotent. Errors come out as docstore errors. ``stateless=True`` promises that
        ``work`` leaves no session state behind (no ``SET`` outside a transaction, no
        ``LISTEN``, cursor or advisory lock), so the connection goes back to the pool without
        a reset round trip. ``read=True`` promises that ``work`` only reads: it runs on the
        read replica when there is one (on the primary if the replica fails).
        """
        token = _STATELESS.set(stateless)
        try:
            if read and self._use_replica():
                try:
                    result = await self._attempt(work, "replica")
                except BaseException as exc:
                    if not await self._replica_failed(exc):
                        raise
                else:
                    if self._replica_down_until:
                        self._replica_back()
                    return result
            try:
                # The first attempt runs without tenacity's machinery (~70 us a call, 2% of
                # an ANN search); only a transient failure enters the retry loop.
                return await self._attempt(work)
            except BaseException as exc:
                if not is_transient_query_failure(exc) or self.settings.retry_attempts < 2:
                    raise
                await first_retry_wait(
                    self.settings, f"query on {self.url}", exc, self._metrics.retry
                )
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

    def _use_replica(self) -> bool:
        if self._replica is None or _PRIMARY_ONLY.get():
            return False
        if time.monotonic() < self._replica_down_until:
            self._metrics.fallback()
            return False
        return True

    def _replica_back(self) -> None:
        self._replica_down_until = 0.0
        assert self._replica is not None
        logger.warning("read replica %s is back: reads go to it again", self._replica.redacted)

    async def _replica_failed(self, exc: BaseException) -> bool:
        """Whether a read that failed on the replica should run on the primary instead; if
        so the replica is skipped for ``DOCSTORE_REPLICA_RETRY_SECONDS`` (logged once)."""
        if isinstance(exc, DocstoreError) or not is_transient_query_failure(exc):
            return False  # a bad query, an acquire timeout: the primary would say the same
        assert self._replica is not None
        down = self._replica_down_until != 0.0
        self._replica_down_until = time.monotonic() + self.settings.replica_retry_seconds
        await self._replica.pool.expire_connections()  # reconnect, don't reuse dead sockets
        self._metrics.fallback()
        if not down:
            logger.warning(
                "read replica %s unavailable (%s): reads go to the primary; retrying the "
                "replica every %gs",
                self._replica.redacted,
                describe(exc, self._secrets),
                self.settings.replica_retry_seconds,
            )
        return True

    @timed("run_in_transaction")
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
        """Check a connection out of the primary's pool (``async with store.acquire() as c``).

        Waits at most ``timeout`` (default ``DOCSTORE_POOL_ACQUIRE_TIMEOUT``) for a free
        connection, then raises :class:`PoolTimeoutError`.
        """
        async with self._checkout("primary", timeout) as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _checkout(self, role: Role, timeout: float | None = None) -> AsyncIterator[Any]:
        target = self._replica if role == "replica" and self._replica else self._primary
        pool = target.pool
        wait = self.settings.pool_acquire_timeout if timeout is None else timeout
        metrics = self._metrics
        metrics.waiting[role] += 1
        started = time.perf_counter()
        try:
            # asyncio.timeout rather than acquire(timeout=...): no extra task per acquire.
            async with asyncio.timeout(wait):
                conn = await pool.acquire()
        except TimeoutError:
            metrics.timed_out(role)
            raise PoolTimeoutError(
                f"no database connection became free within {wait:g}s (pool max size "
                f"{pool.get_max_size()}, {role}); raise DOCSTORE_POOL_MAX_SIZE or "
                f"DOCSTORE_POOL_ACQUIRE_TIMEOUT, or reduce concurrency"
            ) from None
        finally:
            metrics.waiting[role] -= 1
        metrics.acquired(role, time.perf_counter() - started)
        try:
            yield conn
        except BaseException as exc:
            if is_transient(exc) and not conn.is_closed():
                conn.terminate()  # dead or mid-protocol: never hand it to the next caller
            raise
        finally:
            await pool.release(conn)

    @contextlib.asynccontextmanager
    async def transaction(
        self, *, isolation: IsolationLevel | None = None, readonly: bool = False
    ) -> AsyncIterator[Any]:
        """``async with store.transaction() as conn:`` — one transaction on one connection.

        Not retried: a transaction that fails part-way raises, and the caller decides. On a
        read-only store it is always ``READ ONLY`` (:mod:`docstore.readonly`).
        """
        try:
            async with (
                self.acquire() as conn,
                conn.transaction(isolation=isolation, readonly=readonly),
            ):
                yield conn
        except DocstoreError:
            raise
        except (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            OSError,
        ) as exc:  # in the body, or getting / releasing the connection
            raise self.translate(exc) from exc

    # -- asyncpg's query surface -------------------------------------------------------------
    @timed("execute")
    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        """Run a statement; returns the command tag (as ``asyncpg.Connection.execute``).

        On a read-only store, one statement per call (:mod:`docstore.readonly`)."""
        return await self.run(lambda conn: conn.execute(query, *args, timeout=timeout))

    @timed("executemany")
    async def executemany(self, query: str, args: Any, *, timeout: float | None = None) -> None:
        """Run a statement once per argument tuple (one transaction, as in asyncpg)."""
        await self.run(lambda conn: conn.executemany(query, args, timeout=timeout))

    @timed("fetch")
    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]:
        """Run a query and return all rows (``asyncpg.Record``), on the primary."""
        return await self.run(lambda conn: conn.fetch(query, *args, timeout=timeout))

    @timed("fetchrow")
    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        """Run a query and return the first row, or None."""
        return await self.run(lambda conn: conn.fetchrow(query, *args, timeout=timeout))

    @timed("fetchval")
    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        """Run a query and return one value of the first row, or None."""
        return await self.run(
            lambda conn: conn.fetchval(query, *args, column=column, timeout=timeout)
        )

    # -- schema & health ---------------------------------------------------------------------
    @timed("migrate")
    async def migrate(self) -> list[int]:
        """Apply pending schema migrations; returns the versions applied (``[]``: none due)."""
        self.ensure_writable()
        applied = await self.run(
            lambda conn: runner.apply_migrations(conn, embedding_dim=self.embedding_dim)
        )
        if applied:  # open connections were set up before (maybe without pgvector's codecs)
            await self._primary.pool.expire_connections()
        return applied

    @timed("schema_status")
    async def schema_status(self) -> runner.SchemaStatus:
        """The database's schema version and embedding dimension."""
        return await self.run(runner.schema_status)

    @timed("health")
    async def health(self) -> Health:
        """Round-trip to the server and report versions, schema, read-only state, replica lag,
        the search indexes (present, valid) and the read replica's state."""

        async def probe(conn: asyncpg.Connection) -> Health:
            started = time.perf_counter()
            await conn.fetchval("select 1")
            latency = (time.perf_counter() - started) * 1000
            row: Any = await conn.fetchrow(_HEALTH)
            indexes = await conn.fetch(_SEARCH_INDEXES)
            status = await runner.schema_status(conn)
            guarantee = await self._guarantee(conn, row)
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
                read_only=self.read_only or row["read_only"] or guarantee != "none",
                read_only_guarantee=guarantee,
                in_recovery=row["in_recovery"],
                replica_lag_seconds=row["replica_lag"],
                vector_indexes={r["name"]: r["valid"] for r in indexes if r["am"] == "hnsw"},
                text_index_valid=next((r["valid"] for r in indexes if r["am"] != "hnsw"), None),
            )

        health = await self.run(probe)
        if self._replica is not None:
            health.read_replica = await self._replica_health(self._replica)
        return health

    async def _guarantee(self, conn: asyncpg.Connection, row: Any) -> Guarantee:
        if row["in_recovery"]:
            return "standby"
        if not await write_capabilities(conn):
            return "role"
        # Before PostgreSQL 16, RESET transaction_read_only could undo a read-only transaction.
        if self.read_only and row["version_num"] >= 160000:
            return "client"
        return "none"

    @timed("create_reader_role")
    async def create_reader_role(self, name: str, password: str) -> None:
        """Create the login role ``name`` that can read docstore's tables and write nothing
        (the server-side read-only guarantee; ``health().read_only_guarantee == "role"`` for a
        store connected as it). Connect as the owner of docstore's tables to run it; an
        existing role is updated only if it cannot write. See
        :func:`docstore.readonly.create_reader_role`."""
        self.ensure_writable()
        await self.run(lambda conn: create_reader_role(conn, name, password))

    async def _replica_health(self, replica: _Pool) -> ReplicaHealth:
        try:
            async with self._checkout("replica", REPLICA_CONNECT_TIMEOUT) as conn:
                started = time.perf_counter()
                row = await conn.fetchrow(_HEALTH)
                latency = (time.perf_counter() - started) * 1000
        except (DocstoreError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            return ReplicaHealth(url=replica.redacted, ok=False, error=describe(exc, self._secrets))
        return ReplicaHealth(
            url=replica.redacted,
            ok=True,
            latency_ms=round(latency, 3),
            in_recovery=row["in_recovery"],
            lag_seconds=row["replica_lag"],
        )

    # -- metrics ---------------------------------------------------------------------------
    @timed("disk_usage")
    async def disk_usage(self) -> DiskUsage:
        """Database and ``documents`` sizes now, and the database's growth since the previous
        call (the plan's "disk usage growth")."""
        row: Any = await self.run(lambda conn: conn.fetchrow(_DISK))
        now = datetime.now(UTC)
        previous = self._metrics.previous_disk
        usage = DiskUsage(
            measured_at=now,
            database_bytes=row["database_bytes"],
            documents_table_bytes=row["table_bytes"],
            documents_indexes_bytes=row["indexes_bytes"],
            indexes=_json_object(row["indexes"]),
            growth_bytes=None
            if previous is None
            else row["database_bytes"] - previous.database_bytes,
            growth_seconds=None
            if previous is None
            else (now - previous.measured_at).total_seconds(),
        )
        self._metrics.previous_disk = usage
        return usage

    def has_idle_connection(self, *, read: bool = False) -> bool:
        """Whether the pool a query would use (the replica's for ``read`` when routed there)
        has a connection nobody is using, or room to open one — background work (live recall)
        runs only then, so it never makes a caller wait for a connection."""
        target = self._replica if read and self._use_replica_quietly() else self._primary
        assert target is not None
        pool = target.pool
        return pool.get_idle_size() > 0 or pool.get_size() < pool.get_max_size()

    def _use_replica_quietly(self) -> bool:
        return (
            self._replica is not None
            and not _PRIMARY_ONLY.get()
            and time.monotonic() >= self._replica_down_until
        )

    @contextlib.asynccontextmanager
    async def try_lock(self, key: int) -> AsyncIterator[bool]:
        """``async with store.try_lock(key) as locked:`` — a session advisory lock on the
        primary if nobody holds it (``locked`` False otherwise, without waiting), released on
        exit. For work one process at a time should do (a search calibration)."""
        async with self.acquire() as conn:
            try:
                locked = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                raise self.translate(exc) from exc
            try:
                yield locked
            finally:
                if locked and not conn.is_closed():
                    await conn.execute("SELECT pg_advisory_unlock($1)", key)

    def _pools(self) -> list[_Pool]:
        return [self._primary] + ([self._replica] if self._replica else [])

    def pool_stats(self) -> list[PoolStats]:
        """The pools as this process sees them now (no database round trip)."""
        return [
            PoolStats(
                role=p.role,
                url=p.redacted,
                size=p.pool.get_size(),
                min_size=p.pool.get_min_size(),
                max_size=p.pool.get_max_size(),
                in_use=p.pool.get_size() - p.pool.get_idle_size(),
                idle=p.pool.get_idle_size(),
                waiting=self._metrics.waiting[p.role],
                acquire_timeouts=self._metrics.acquire_timeouts[p.role],
                acquire=self._metrics.pool_acquire_stats(p.role),
            )
            for p in self._pools()
        ]

    @timed("metrics")
    async def metrics(self, *, disk: bool = True) -> MetricsSnapshot:
        """What this store has measured since it opened (:mod:`docstore.metrics`): operation
        latencies, vector searches by mode, pools, errors, retries, replica fallbacks, the
        server's count of this store's connections by state and, with ``disk``, disk usage.
        """

        async def server_view(conn: asyncpg.Connection) -> dict[str, int]:
            rows = await conn.fetch(_CONNECTIONS, self.settings.application_name)
            return {r["state"]: r["n"] for r in rows}

        connections = await self.run(server_view, stateless=True)
        usage = await self.disk_usage() if disk else self._metrics.previous_disk
        return self._metrics.snapshot(
            pools=self.pool_stats(),
            server_connections=connections,
            disk=usage,
            taken_at=datetime.now(UTC),
        )


def _json_object(value: Any) -> dict[str, int]:
    if isinstance(value, str):
        value = json.loads(value)
    return {str(k): int(v) for k, v in (value or {}).items()}


class ReadQueries:
    """``store.replica``: the read-only part of the query surface, routed to the replica."""

    def __init__(self, db: Database) -> None:
        #: the store these queries run on
        self.store = db

    @property
    def _metrics(self) -> Metrics:
        return self.store._metrics

    @timed("fetch")
    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]:
        """Rows of a read-only query, from the replica."""
        return await self.store.run(
            lambda conn: conn.fetch(query, *args, timeout=timeout), stateless=True, read=True
        )

    @timed("fetchrow")
    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        """The first row of a read-only query, from the replica, or None."""
        return await self.store.run(
            lambda conn: conn.fetchrow(query, *args, timeout=timeout), stateless=True, read=True
        )

    @timed("fetchval")
    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        """One value of the first row of a read-only query, from the replica."""
        return await self.store.run(
            lambda conn: conn.fetchval(query, *args, column=column, timeout=timeout),
            stateless=True,
            read=True,
        )


async def _repoint(target: _Pool, url: str) -> None:
    """New connections of ``target`` use ``url``; open ones are replaced as they come back."""
    target.pool.set_connect_args(url, **target.connect_kwargs)
    await target.pool.expire_connections()
    target.url = url


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
    resolved, read_url = split_read_write(settings, resolved)
    ro = settings.read_only if read_only is None else read_only
    do_migrate = (settings.auto_migrate if migrate is None else migrate) and not ro
    if migrate and ro:
        logger.warning("read-only store: schema migrations are not applied")
    secrets = url_secrets(resolved, read_url)
    server_settings = {"application_name": settings.application_name}
    if ro:
        server_settings["default_transaction_read_only"] = "on"
    if settings.statement_timeout is not None:
        server_settings["statement_timeout"] = str(int(settings.statement_timeout * 1000))
    connect_kwargs: dict[str, Any] = {
        "server_settings": server_settings,
        "command_timeout": settings.command_timeout,
        "timeout": settings.pool_acquire_timeout,
    }

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
            schema: str | None = await conn.fetchval(_VECTOR_SCHEMA)
            return schema
        finally:
            await conn.close()

    policy = retrying(settings, f"connect to {redact_url(resolved)}")
    try:
        vector_schema: str | None = None
        async for attempt in policy:
            with attempt:
                vector_schema = await bootstrap()
        if vector_schema is None:
            # a database docstore has not initialised yet (`docstore init`, migrate() or the
            # next connect() creates pgvector): every new connection looks again
            logger.debug("pgvector is not enabled in %s yet", redact_url(resolved))
        init: Any = _codec_init(vector_schema)
        pool: asyncpg.Pool | None = None
        async for attempt in policy:
            with attempt:
                pool = await asyncpg.create_pool(
                    resolved,
                    min_size=settings.pool_min_size,
                    max_size=settings.pool_max_size,
                    init=init,
                    reset=_reset_connection,
                    connection_class=_connection_class(ro),
                    **cast(Any, connect_kwargs),
                )
        assert pool is not None
        primary = _Pool("primary", pool, resolved, connect_kwargs, init, _connection_class(ro))
        replica = None if read_url is None else await _open_replica(read_url, primary, settings)
    except DocstoreError:
        raise
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
            raise
        raise translate(exc, resolved, secrets) from None
    return factory(
        primary.pool,
        settings=settings,
        url=resolved,
        url_source=source,
        read_only=ro,
        connect_kwargs=connect_kwargs,
        init=init,
        replica=replica,
    )


_VECTOR_SCHEMA = (
    "select n.nspname from pg_extension e join pg_namespace n"
    " on n.oid = e.extnamespace where e.extname = 'vector'"
)


def _codec_init(vector_schema: str | None) -> Callable[[asyncpg.Connection], Awaitable[None]]:
    """The pools' ``init``: pgvector's codecs on every new connection. Without pgvector when
    the store opened, each new connection looks for it again (until it is found), so a store
    that runs :meth:`Database.migrate` on a new database decodes vectors from then on."""
    found = vector_schema

    async def init_connection(conn: asyncpg.Connection) -> None:
        nonlocal found
        if found is None:
            found = await conn.fetchval(_VECTOR_SCHEMA)
        if found is not None:
            await register_codecs(conn, found)

    return init_connection


async def _open_replica(url: str, primary: _Pool, settings: Settings) -> _Pool:
    """The read pool, set up like ``primary``'s. It connects lazily (``min_size=0``) with a
    short connect timeout, so a replica that is down when the store opens costs nothing but a
    logged fallback later."""
    kwargs = {
        **primary.connect_kwargs,
        "timeout": min(settings.pool_acquire_timeout, REPLICA_CONNECT_TIMEOUT),
    }
    pool = await asyncpg.create_pool(
        url,
        min_size=0,
        max_size=settings.pool_max_size,
        init=primary.init,
        reset=_reset_connection,
        connection_class=primary.connection_class,
        **cast(Any, kwargs),
    )
    return _Pool("replica", pool, url, kwargs, primary.init, primary.connection_class)


def _connection_class(read_only: bool) -> type[asyncpg.Connection]:
    """A read-only store's connections guard every statement (:mod:`docstore.readonly`)."""
    return ReadOnlyConnection if read_only else asyncpg.Connection
