"""docstore's connection core: :class:`Database`, composed of small parts.

:class:`Database` is the lower half of :class:`docstore.Store` (which adds the repositories
and search beside it). It owns asyncpg pools whose ``init`` registers docstore's codecs
(pgvector's types, jsonb/json) on every connection; its ``execute/fetch/fetchrow/fetchval``
mirror asyncpg's query surface for notebooks and scripts. Its parts, each in its own module:

* :mod:`docstore.core.pools` — the pools (primary, replica), their set-up and secrets;
* :mod:`docstore.core.routing` — which pool a read goes to, replica fallback;
* :mod:`docstore.core.runner` — running work: checkout, retries, transactions, locks;
* :mod:`docstore.core.health` — health, disk usage, pool and metrics reports;
* :mod:`docstore.core.reload` — moving the pools to new URLs;
* :mod:`docstore.core.opener` — opening a store (:func:`~docstore.core.opener.open_database`).

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
from collections.abc import Iterator
from typing import Any, Self

import asyncpg

from docstore.arguments import timeout_seconds
from docstore.config import Settings, UrlSource, url_secrets
from docstore.core.delegate import delegate
from docstore.core.health import Reporter
from docstore.core.pools import CodecInit, Pool, Pools, connection_class
from docstore.core.reload import reload_pools
from docstore.core.routing import ReplicaRouter, primary_reads
from docstore.core.runner import Runner
from docstore.core.shards import ShardRouter
from docstore.core.surface import ReadQueries
from docstore.errors import DocstoreError, ReadOnlyError
from docstore.metrics import Metrics, timed
from docstore.readonly import create_reader_role
from docstore.readonly.statements import cached_may_commit_partway
from docstore.schema import runner


class Database:
    """docstore's handle on one database: its pools plus the settings it was opened with.

    Create it with :func:`docstore.connect`. ``repr(store)`` and :attr:`url` never show a
    password. Running work, health reports and replica routing are its parts' methods
    (:class:`~docstore.core.runner.Runner`, :class:`~docstore.core.health.Reporter`), reached
    here by :class:`~docstore.core.delegate.delegate`.
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
        init: CodecInit | None = None,
        replica: Pool | None = None,
        distributed: bool = False,
    ) -> None:
        self.settings = settings
        self.read_only = read_only
        self.loop = asyncio.get_running_loop()
        """The event loop the store was opened on: its connections belong to it, so work for
        the store from another thread (a metrics scrape) is handed to this loop."""
        self.distributed = distributed
        """``documents`` is a Citus distributed table: docstore then runs its Citus SQL
        (:mod:`docstore.schema.citus`). Read when the store opens; :meth:`migrate` with
        ``distributed=True`` sets it."""
        self._metrics = Metrics(enabled=settings.metrics)
        primary = Pool(
            "primary", pool, url, connect_kwargs or {}, init, connection_class(read_only)
        )
        self._pool_set = Pools(
            primary, replica, url_source, url_secrets(url, replica.url if replica else None)
        )
        self._router = ReplicaRouter(self._pool_set, settings, self._metrics)
        self._shards = ShardRouter(self._pool_set, settings, self._metrics)
        """Where one-source searches run on a Citus cluster (:mod:`docstore.core.shards`)."""
        self._runner = Runner(
            self._pool_set,
            self._router,
            settings,
            self._metrics,
            self._shards,
            distributed=lambda: self.distributed,
            read_only=read_only,
        )
        self._reporter = Reporter(
            self._pool_set,
            self._runner,
            settings,
            self._metrics,
            read_only,
            distributed=lambda: self.distributed,
        )

    # -- identity --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The database URL with its password replaced by ``***``."""
        return self._pool_set.primary.redacted

    @property
    def read_url(self) -> str | None:
        """The read replica's URL (password redacted), or None without one."""
        replica = self._pool_set.replica
        return replica.redacted if replica else None

    @property
    def url_source(self) -> UrlSource:
        """Where the URL came from (``url=``, an environment variable, the embedded server)."""
        return self._pool_set.url_source

    @property
    def embedding_dim(self) -> int:
        return self.settings.embedding_dim

    @property
    def pool(self) -> asyncpg.Pool:
        """The primary's asyncpg pool (for code that needs asyncpg directly)."""
        return self._pool_set.primary.pool

    @property
    def replica(self) -> ReadQueries:
        """``fetch/fetchrow/fetchval`` on the read replica (the primary without one, or when
        it is down). For queries that only read."""
        return ReadQueries(self)

    def _repr_as(self, kind: str) -> str:
        replica = f" read_url={self.read_url!r}" if self._pool_set.replica else ""
        return f"<{kind} url={self.url!r}{replica} read_only={self.read_only}>"

    def __repr__(self) -> str:
        return self._repr_as(type(self).__name__)

    def _pools(self) -> list[Pool]:
        return self._pool_set.all()

    # -- lifecycle ---------------------------------------------------------------------------
    def check_loop(self) -> bool:
        """Whether this is the store's event loop (:meth:`Pools.check_loop
        <docstore.core.pools.Pools.check_loop>`)."""
        return self._pool_set.check_loop()

    async def close(self) -> None:
        """Close the pools (the Citus workers' too), waiting for checked-out connections to
        be released."""
        if self._pool_set.check_loop():
            await self._shards.close()
        await self._pool_set.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def reload(self, url: str | None = None, *, database_read_url: str | None = None) -> None:
        """Pick up a new database URL without dropping work in flight (credential rotation).

        Re-reads ``DATABASE_URL`` / ``MCPDOCS_DATABASE_URL`` / ``DATABASE_READ_URL`` from the
        environment (``url`` wins, as in :func:`~docstore.connect`: it is paired with no
        replica but ``database_read_url``, never with ``DATABASE_READ_URL``), checks that the new
        primary accepts a connection and has a compatible schema, then points the pools at
        the new URLs: connections checked out now finish their queries and are replaced when
        released, idle ones are replaced at their next use. Other settings (pool sizes,
        timeouts, the embedded server's directory) stay the store's: they need a new store.
        A database without docstore's schema, a legacy one or an incompatible one is refused
        with :class:`~docstore.errors.SchemaError` (a reload never migrates); where pgvector
        lives is read from the new database. Raises like :func:`~docstore.connect`; on failure
        the store keeps its old URLs.
        """
        self._pool_set.require_loop()  # new pools would belong to the calling loop
        await reload_pools(self._pool_set, self._router, self.settings, url, database_read_url)
        await self._shards.repoint()

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
        return self._pool_set.translate(exc)

    @contextlib.contextmanager
    def read_from_primary(self) -> Iterator[None]:
        """``with store.read_from_primary():`` — reads in this block (this task and tasks it
        starts) go to the primary, so they see writes the replica may not have replayed yet."""
        with primary_reads():
            yield

    # -- running work (docstore.core.runner) -------------------------------------------------
    run = delegate(Runner.run, "_runner")
    run_in_transaction = delegate(Runner.run_in_transaction, "_runner")
    acquire = delegate(Runner.acquire, "_runner")
    transaction = delegate(Runner.transaction, "_runner")
    has_idle_connection = delegate(Runner.has_idle_connection, "_runner")
    try_lock = delegate(Runner.try_lock, "_runner")

    # -- asyncpg's query surface -------------------------------------------------------------
    @timed("execute")
    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        """Run a statement; returns the command tag (as ``asyncpg.Connection.execute``).

        Retried on transient failures; when the connection was lost while the statement
        ran, only as a read (:meth:`run`): a statement that writes raises
        :class:`DatabaseUnavailableError` saying it may have been applied, never runs twice.
        A string of several statements (no ``args``) with a ``COMMIT``, ``BEGIN``, ``CALL``…
        among them is in doubt also when the server ended the session: it may have committed
        part of itself (``…; COMMIT; …``); without one it is a single implicit transaction.
        On a read-only store, one statement per call (:mod:`docstore.readonly`). ``timeout``
        (seconds, this call's instead of ``DOCSTORE_COMMAND_TIMEOUT``): a statement still
        running then is cancelled and raises :class:`QueryError` (sqlstate ``57014``)."""
        timeout_seconds(timeout)
        return await self.run(
            lambda conn: conn.execute(query, *args, timeout=timeout),
            commits_partway=not args
            and isinstance(query, str)
            and cached_may_commit_partway(query),
        )

    @timed("executemany")
    async def executemany(self, query: str, args: Any, *, timeout: float | None = None) -> None:
        """Run a statement once per argument tuple (one transaction, as in asyncpg); retried
        as :meth:`execute` is."""
        timeout_seconds(timeout)
        await self.run(lambda conn: conn.executemany(query, args, timeout=timeout))

    @timed("fetch")
    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]:
        """Run a query and return all rows (``asyncpg.Record``), on the primary; retried as
        :meth:`execute` is (a write through ``RETURNING`` never runs twice)."""
        timeout_seconds(timeout)
        return await self.run(lambda conn: conn.fetch(query, *args, timeout=timeout))

    @timed("fetchrow")
    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        """Run a query and return the first row, or None."""
        timeout_seconds(timeout)
        return await self.run(lambda conn: conn.fetchrow(query, *args, timeout=timeout))

    @timed("fetchval")
    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        """Run a query and return one value of the first row, or None."""
        timeout_seconds(timeout)
        return await self.run(
            lambda conn: conn.fetchval(query, *args, column=column, timeout=timeout)
        )

    # -- schema & roles ----------------------------------------------------------------------
    @timed("migrate")
    async def migrate(self, *, distributed: bool = False) -> list[int]:
        """Apply pending schema migrations; returns the versions applied (``[]``: none due).

        ``distributed=True`` (``docstore init --distributed``): the database is a Citus
        coordinator, and ``documents`` / ``document_sources`` become (or already are)
        co-located distributed tables by ``source_name``
        (:func:`docstore.schema.citus.distribute`); raises :class:`SchemaError` elsewhere.
        """
        self.ensure_writable()
        applied = await self.run(  # versioned, under a lock: safe to run again as is
            lambda conn: runner.apply_migrations(
                conn, embedding_dim=self.embedding_dim, distributed=distributed
            ),
            retry_in_doubt=True,
        )
        if applied or distributed:  # open connections were set up before (maybe without
            # pgvector's codecs, or without the database's Citus defaults)
            await self._pool_set.primary.pool.expire_connections()
        self.distributed = distributed or self.distributed
        return applied

    @timed("schema_status")
    async def schema_status(self) -> runner.SchemaStatus:
        """The database's schema version and embedding dimension."""
        return await self.run(runner.schema_status)

    @timed("create_reader_role")
    async def create_reader_role(self, name: str, password: str) -> None:
        """Create the login role ``name`` that can read docstore's tables and write nothing
        (the server-side read-only guarantee; ``health().read_only_guarantee == "role"`` for a
        store connected as it). Connect as the owner of docstore's tables to run it; an
        existing role is updated only if it cannot write. See
        :func:`docstore.readonly.create_reader_role`."""
        self.ensure_writable()
        await self.run(  # creates the role or brings it to the same state: safe twice
            lambda conn: create_reader_role(conn, name, password), retry_in_doubt=True
        )

    # -- reports (docstore.core.health) ------------------------------------------------------
    health = delegate(Reporter.health, "_reporter")
    disk_usage = delegate(Reporter.disk_usage, "_reporter")
    pool_stats = delegate(Reporter.pool_stats, "_reporter")
    metrics = delegate(Reporter.metrics, "_reporter")
