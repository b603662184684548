"""What a store reports about itself: :class:`Health`, disk usage, pools, metrics snapshots.

:class:`Reporter` answers ``store.health()`` (a round trip to the primary, and one to the
read replica when there is one), ``store.disk_usage()``, ``store.pool_stats()`` and
``store.metrics()`` (:mod:`docstore.metrics` holds what was recorded; the snapshot adds the
pools, the server's view of this store's connections and disk usage).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from pydantic import BaseModel

from docstore.config import Settings
from docstore.core.pools import REPLICA_CONNECT_TIMEOUT, Pool, Pools
from docstore.core.runner import Runner
from docstore.errors import DocstoreError
from docstore.metrics import (
    DiskUsage,
    Metrics,
    MetricsSnapshot,
    NodeMetrics,
    PoolStats,
    SearchRecall,
    timed,
)
from docstore.readonly import Guarantee, file_capabilities, write_capabilities
from docstore.schema import citus, runner

logger = logging.getLogger("docstore")


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


class ClusterNode(BaseModel):
    """One primary node of a Citus cluster, as the coordinator sees it."""

    name: str
    port: int
    coordinator: bool
    active: bool
    reachable: bool
    """The coordinator could connect to it just now (``citus_check_connection_to_node``)."""
    shards: int | None = None
    """Shards of ``documents`` placed on it (None when a node did not answer)."""
    documents_bytes: int | None = None
    """Their size on disk, indexes and TOAST included."""


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
    statement leaves a read-only transaction, and the role cannot write the server's files —
    :func:`docstore.readonly.file_capabilities` is empty; PostgreSQL 16 or later), ``"none"``
    (writable, or only the session default ``default_transaction_read_only``, which SQL can
    undo)."""
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
    distributed: bool = False
    """``documents`` is a Citus distributed table (``docstore init --distributed``)."""
    cluster: list[ClusterNode] = []
    """On a Citus coordinator: every primary node, with the shards of ``documents`` it holds;
    an unreachable node makes the health ``degraded``."""
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


class Reporter:
    """Health, disk usage, pool and metrics reports of one store."""

    def __init__(
        self,
        pools: Pools,
        runner: Runner,
        settings: Settings,
        metrics: Metrics,
        read_only: bool,
        distributed: Callable[[], bool] = lambda: False,
    ) -> None:
        self._distributed = distributed
        """Whether the database is distributed now (the store's flag: migrate() may set it)."""
        self._pools = pools
        self._runner = runner
        self._settings = settings
        self._metrics = metrics
        self._read_only = read_only

    @timed("health")
    async def health(self) -> Health:
        """Round-trip to the server and report versions, schema, read-only state, replica lag,
        the search indexes (present, valid) and the read replica's state. It waits for a pool
        connection like any query: under load, bound it (``asyncio.wait_for``) when it serves
        as a liveness probe."""

        async def probe(conn: asyncpg.Connection) -> Health:
            started = time.perf_counter()
            await conn.fetchval("select 1")
            latency = (time.perf_counter() - started) * 1000
            row: Any = await conn.fetchrow(_HEALTH)
            indexes = await conn.fetch(_SEARCH_INDEXES)
            status = await runner.schema_status(conn)
            guarantee = await self._guarantee(conn, row)
            nodes = await citus.cluster_nodes(conn) if status.distributed else []
            down = [f"{n['name']}:{n['port']}" for n in nodes if not n["reachable"]]
            return Health(
                ok=True,
                url=self._pools.primary.redacted,
                url_source=self._pools.url_source.value,
                latency_ms=round(latency, 3),
                server_version=row["server_version"],
                pgvector_version=row["pgvector"],
                schema_version=status.current,
                latest_schema_version=status.latest,
                embedding_dim=status.embedding_dim,
                read_only=self._read_only or row["read_only"] or guarantee != "none",
                read_only_guarantee=guarantee,
                in_recovery=row["in_recovery"],
                replica_lag_seconds=row["replica_lag"],
                vector_indexes={r["name"]: r["valid"] for r in indexes if r["am"] == "hnsw"},
                text_index_valid=next((r["valid"] for r in indexes if r["am"] != "hnsw"), None),
                distributed=status.distributed,
                cluster=[ClusterNode.model_validate(n) for n in nodes],
                degraded=bool(down),
                warnings=[
                    *(f"Citus node {n} is unreachable from the coordinator" for n in down),
                    *filter(None, [runner.ahead_warning(status)]),
                ],
            )

        health = await self._runner.run(probe)
        if self._pools.replica is not None:
            health.read_replica = await self._replica_health(self._pools.replica)
        return health

    async def _guarantee(self, conn: asyncpg.Connection, row: Any) -> Guarantee:
        if row["in_recovery"]:
            return "standby"
        if not await write_capabilities(conn):
            return "role"
        # Before PostgreSQL 16, RESET transaction_read_only could undo a read-only transaction;
        # a role that can write the server's files (a superuser, pg_write_server_files, ...)
        # does so inside a read-only transaction too, through SQL no client check sees.
        if self._read_only and row["version_num"] >= 160000 and not await file_capabilities(conn):
            return "client"
        return "none"

    async def _replica_health(self, replica: Pool) -> ReplicaHealth:
        try:
            async with self._runner.checkout("replica", REPLICA_CONNECT_TIMEOUT) as conn:
                started = time.perf_counter()
                row = await conn.fetchrow(_HEALTH)
                latency = (time.perf_counter() - started) * 1000
        except (DocstoreError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            return ReplicaHealth(url=replica.redacted, ok=False, error=self._pools.describe(exc))
        return ReplicaHealth(
            url=replica.redacted,
            ok=True,
            latency_ms=round(latency, 3),
            in_recovery=row["in_recovery"],
            lag_seconds=row["replica_lag"],
        )

    @timed("disk_usage")
    async def disk_usage(self) -> DiskUsage:
        """Database and ``documents`` sizes now, and the database's growth since the previous
        call (the plan's "disk usage growth"). On a Citus cluster: summed over every node and
        every shard."""

        async def measure(conn: asyncpg.Connection) -> Any:
            if await citus.is_distributed(conn):  # every node's, every shard's
                return await citus.disk_usage(conn)
            return await conn.fetchrow(_DISK)

        row: Any = await self._runner.run(measure)
        now = datetime.now(UTC)
        previous = self._metrics.previous_disk
        usage = DiskUsage(
            measured_at=now,
            database_bytes=row["database_bytes"],
            documents_table_bytes=row["table_bytes"],
            documents_indexes_bytes=row["indexes_bytes"],
            indexes=row["indexes"],  # jsonb: decoded by the pool's codec
            growth_bytes=None
            if previous is None
            else row["database_bytes"] - previous.database_bytes,
            growth_seconds=None
            if previous is None
            else (now - previous.measured_at).total_seconds(),
        )
        self._metrics.previous_disk = usage
        return usage

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
            for p in self._pools.all()
        ]

    @timed("metrics")
    async def metrics(self, *, disk: bool = True) -> MetricsSnapshot:
        """What this store has measured since it opened (:mod:`docstore.metrics`): operation
        latencies, vector searches by mode, pools, errors, retries, replica fallbacks, the
        server's count of this store's connections by state and, with ``disk``, disk usage.

        On a distributed database (Citus), ``nodes`` too: every primary node's reachability,
        connections and active queries, and the shards of ``documents`` it holds with their
        rows and bytes (:func:`docstore.schema.citus.node_metrics`: one command run on every
        node in parallel, plus ``citus_shards``). A single node's snapshot skips it.
        """

        async def server_view(conn: asyncpg.Connection) -> dict[str, int]:
            rows = await conn.fetch(_CONNECTIONS, self._settings.application_name)
            return {r["state"]: r["n"] for r in rows}

        connections = await self._runner.run(server_view, stateless=True)
        nodes = None
        if self._distributed():
            try:
                found = await self._runner.run(citus.node_metrics, stateless=True)
            except DocstoreError as exc:  # a node left mid-way, Citus functions not granted
                # the process's own counters are worth having without the per-node part
                logger.warning("metrics: Citus nodes not read (%s)", exc)
            else:
                nodes = [NodeMetrics.model_validate(n) for n in found]
        usage = await self.disk_usage() if disk else self._metrics.previous_disk
        return self._metrics.snapshot(
            pools=self.pool_stats(),
            server_connections=connections,
            disk=usage,
            taken_at=datetime.now(UTC),
            nodes=nodes,
        )
