"""docstore's tables on a Citus cluster: ``documents`` and ``document_sources`` distributed by
``source_name``, co-located (``docstore init --distributed``, ``store.distribute()``).

What the conversion does, in one transaction on the coordinator (measured on Citus 13.0 with
PostgreSQL 15, ``tests/citus``):

* **keys**: Citus requires every primary key and unique constraint to contain the
  distribution column. The natural keys ``(doc_type, source_name, doc_path)`` and
  ``(doc_type, source_name)`` already do; the primary keys become ``(id, source_name)``, so
  ``id`` stays unique in practice (one sequence feeds every shard) but is no longer enforced
  alone.
* **foreign keys** from local tables into the two tables (``source_population_jobs.source_id``)
  are dropped: Citus has no foreign key from a local table into a distributed one.
  ``store.sources.delete()`` deletes a source's population jobs itself.
* **updated_at**: the ``BEFORE UPDATE`` triggers stay. Citus refuses to distribute a table with
  triggers unless ``citus.enable_unsafe_triggers`` is on (set for the conversion only); then
  each shard gets the trigger and it fires on the worker that holds the row. "Unsafe" is about
  triggers that read or write other tables (they would see one shard); docstore's only sets
  ``NEW.updated_at``.
* **embedding_half** (a generated column, ``STORAGE PLAIN``) and ``toast_tuple_target`` are
  part of each shard's definition; HNSW and GIN indexes made on the coordinator
  (``create_vector_index``, ``create_text_index``) are built on every shard.
* **ANN settings**: ``citus.propagate_set_commands = 'local'`` becomes the database's default,
  so ``SET LOCAL hnsw.ef_search`` (and the others docstore sets) reach the shards a
  transaction touches. docstore's distributed ANN statements set it themselves as well.

The rest of docstore's tables (schema version, calibration, checkpoints, population jobs)
stay local tables on the coordinator: docstore connects to the coordinator only.

Ids: the conversion makes ``documents.id`` and ``document_sources.id`` ``bigint`` (column and
sequence; ``source_population_jobs.source_id`` too), so an INSERT made through any node gets
an id: Citus refuses ``nextval`` of an ``integer`` sequence on a worker ("nextval(sequence)
calls in worker nodes are not supported for column defaults of type int or smallint"), and
gives each worker its own range of a ``bigint`` one (group id << 48: 2^48 + 1 on the first
worker, 2^49 + 1 on the second; the coordinator keeps counting from the table's current
value), so ids stay unique across nodes. The conversion rewrites both tables once (the
single-node schema keeps ``integer``); views over ``id`` (docstore's compatibility views)
must be uninstalled first and installed again after. Tables distributed while ``id`` was an
``integer`` (docstore before this change) stay so: Citus refuses ``ALTER COLUMN TYPE`` on a
column with a sequence default of a distributed table.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from docstore.errors import SchemaError

DISTRIBUTION_COLUMN = "source_name"
TABLES = ("document_sources", "documents")
"""Distributed in this order; ``documents`` is co-located with ``document_sources``."""

PROPAGATE_SET_LOCAL = "SET LOCAL citus.propagate_set_commands = 'local'"
"""Run first in a transaction whose ``SET LOCAL`` settings must reach the shards."""

_HAS_CITUS_CATALOG = "SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL"
_DISTRIBUTED = """
SELECT logicalrelid::regclass::text FROM pg_catalog.pg_dist_partition
 WHERE logicalrelid IN (to_regclass('documents'), to_regclass('document_sources'))
   AND partmethod = 'h'
"""
_PRIMARY_KEY = """
SELECT c.conname, array_agg(a.attname::text ORDER BY a.attname) AS columns
  FROM pg_constraint c
  JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
 WHERE c.conrelid = to_regclass($1) AND c.contype = 'p'
 GROUP BY c.conname
"""
_UNIQUE_WITHOUT_KEY = """
SELECT c.conname FROM pg_constraint c
 WHERE c.conrelid = to_regclass($1) AND c.contype IN ('p', 'u')
   AND NOT EXISTS (SELECT 1 FROM pg_attribute a
                    WHERE a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
                      AND a.attname = $2)
"""
_ID_TYPE = """
SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
 WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped
"""
_VIEWS_ON_ID = """
SELECT DISTINCT v.oid::regclass::text FROM pg_depend d
  JOIN pg_rewrite r ON r.oid = d.objid
  JOIN pg_class v ON v.oid = r.ev_class
  JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
 WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = to_regclass($1)
   AND a.attname = 'id' AND v.oid <> d.refobjid
 ORDER BY 1
"""
_FOREIGN_KEYS_IN = """
SELECT c.conrelid::regclass::text AS tbl, c.conname FROM pg_constraint c
 WHERE c.contype = 'f'
   AND c.confrelid IN (to_regclass('documents'), to_regclass('document_sources'))
   AND c.conrelid NOT IN (to_regclass('documents'), to_regclass('document_sources'))
"""


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def distributed_tables(conn: asyncpg.Connection) -> set[str]:
    """Which of ``documents`` / ``document_sources`` are hash-distributed Citus tables."""
    if not await conn.fetchval(_HAS_CITUS_CATALOG):
        return set()
    return {row[0] for row in await conn.fetch(_DISTRIBUTED)}


async def is_distributed(conn: asyncpg.Connection) -> bool:
    """Whether ``documents`` is a distributed table (docstore then uses its Citus SQL)."""
    return "documents" in await distributed_tables(conn)


async def is_worker(conn: asyncpg.Connection) -> bool:
    """Whether this is a Citus worker that sees docstore's distributed tables (Citus syncs
    their definitions to every node): docstore's schema is then the coordinator's business,
    and its local tables (schema version, calibration, jobs) are not here."""
    if not await conn.fetchval(_HAS_CITUS_CATALOG):
        return False
    return not await conn.fetchval("SELECT citus_is_coordinator()") and await is_distributed(conn)


async def _check_coordinator(conn: asyncpg.Connection) -> None:
    version = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'citus'")
    if version is None:
        raise SchemaError(
            "this database has no Citus: a distributed docstore needs a Citus coordinator "
            "(shared_preload_libraries = 'citus', CREATE EXTENSION citus, and the workers "
            "added with citus_add_node; scripts/citus-cluster up DIR makes one for development)"
        )
    if not await conn.fetchval("SELECT citus_is_coordinator()"):
        raise SchemaError(
            "this node is not the Citus coordinator: run `docstore init --distributed` against "
            "the coordinator (citus_set_coordinator_host registers it)"
        )


async def distribute(conn: asyncpg.Connection) -> list[str]:
    """Convert ``documents`` and ``document_sources`` into co-located distributed tables by
    ``source_name`` (rows already there move to the shards); returns what it did, ``[]`` when
    both already are. Idempotent; one transaction: a failure leaves the tables as they were.

    The caller holds the schema lock and has applied docstore's migrations. Raises
    :class:`SchemaError` when the database is not a Citus coordinator, or when a table has a
    unique constraint without ``source_name`` that is not docstore's.
    """
    await _check_coordinator(conn)
    done = await distributed_tables(conn)
    if done >= set(TABLES):
        await _set_database_defaults(conn)
        return []
    steps: list[str] = []
    async with conn.transaction():
        await conn.execute("SET LOCAL citus.enable_unsafe_triggers = on")
        for row in await conn.fetch(_FOREIGN_KEYS_IN):
            await conn.execute(
                f"ALTER TABLE {_ident(row['tbl'])} DROP CONSTRAINT {_ident(row['conname'])}"
            )
            steps.append(f"dropped foreign key {row['tbl']}.{row['conname']}")
        if await conn.fetchval(_ID_TYPE, "source_population_jobs", "source_id") == "integer":
            # it holds document_sources ids, which may now come from a worker's range
            await conn.execute(
                "ALTER TABLE source_population_jobs ALTER COLUMN source_id TYPE bigint"
            )
            steps.append("source_population_jobs: source_id bigint")
        for table in TABLES:
            if table in done:
                continue
            steps += await _bigint_id(conn, table)
            pk = await conn.fetchrow(_PRIMARY_KEY, table)
            if pk is not None and DISTRIBUTION_COLUMN not in pk["columns"]:
                await conn.execute(
                    f"ALTER TABLE {table} DROP CONSTRAINT {_ident(pk['conname'])},"
                    f" ADD CONSTRAINT {_ident(pk['conname'])}"
                    f" PRIMARY KEY (id, {DISTRIBUTION_COLUMN})"
                )
                steps.append(f"{table}: primary key (id, {DISTRIBUTION_COLUMN})")
            blocking = [
                r[0] for r in await conn.fetch(_UNIQUE_WITHOUT_KEY, table, DISTRIBUTION_COLUMN)
            ]
            if blocking:
                raise SchemaError(
                    f"{table} has unique constraints without {DISTRIBUTION_COLUMN} "
                    f"({', '.join(blocking)}): Citus cannot distribute it; drop them first"
                )
            if table == "documents":
                await conn.execute(
                    "SELECT create_distributed_table('documents', $1,"
                    " colocate_with => 'document_sources')",
                    DISTRIBUTION_COLUMN,
                )
            else:
                await conn.execute(
                    "SELECT create_distributed_table($1, $2)", table, DISTRIBUTION_COLUMN
                )
            # create_distributed_table copies the rows to the shards and leaves the
            # coordinator's copy behind, unreachable: free its space
            await conn.execute(
                "SELECT truncate_local_data_after_distributing_table($1::regclass)", table
            )
            steps.append(f"{table}: distributed by {DISTRIBUTION_COLUMN}")
    await _set_database_defaults(conn)
    return steps


async def _bigint_id(conn: asyncpg.Connection, table: str) -> list[str]:
    """Make ``table.id`` and its sequence ``bigint`` (before the table is distributed: Citus
    then gives each worker its own range of the sequence)."""
    if await conn.fetchval(_ID_TYPE, table, "id") != "integer":
        return []
    views = [r[0] for r in await conn.fetch(_VIEWS_ON_ID, table)]
    if views:
        raise SchemaError(
            f"views over {table}.id ({', '.join(views)}) stop its conversion to bigint: "
            "uninstall them (`docstore compat uninstall-views`, LegacyDatabase.uninstall_views) "
            "before `docstore init --distributed` and install them again after"
        )
    sequence = await conn.fetchval("SELECT pg_get_serial_sequence($1, 'id')", table)
    await conn.execute(f"ALTER TABLE {table} ALTER COLUMN id TYPE bigint")
    if sequence is not None:  # already quoted and qualified
        await conn.execute(f"ALTER SEQUENCE {sequence} AS bigint")
    return [f"{table}: id bigint"]


MAX_CACHED_CONNS_PER_WORKER = 8
"""Upper bound of the ``citus.max_cached_conns_per_worker`` default the conversion sets."""
_SHARDS_PER_WORKER = """
SELECT ceil(count(*)::numeric / greatest(count(DISTINCT p.groupid), 1))::int
  FROM pg_catalog.pg_dist_shard s JOIN pg_catalog.pg_dist_placement p USING (shardid)
 WHERE s.logicalrelid = 'documents'::regclass
"""


async def _set_database_defaults(conn: asyncpg.Connection) -> None:
    """Defaults for new sessions of this database (each set only when the database has no
    value of its own for it, so an operator's ``ALTER DATABASE … SET`` stays):

    * ``citus.propagate_set_commands = 'local'``, so raw SQL's ``SET LOCAL hnsw.ef_search``
      reaches the shards too (docstore's own statements set it themselves);
    * ``citus.max_cached_conns_per_worker`` = the shards of ``documents`` per worker (at most
      :data:`MAX_CACHED_CONNS_PER_WORKER`). A fanned-out search runs one task per shard, in
      parallel over several connections to each worker; Citus's default keeps one of them
      open after the transaction, so every unscoped search opened (and the worker forked)
      1.0 / 2.1 / 5.1 new connections per worker at 4 / 8 / 16 shards, and the coordinator
      spent 20–48 % more CPU per search than with the shards-per-worker connections kept
      (``bench/citus.py``, docs/scaling.md). The cost is idle connections on the workers:
      up to this many per worker for each coordinator session that fanned out (a store's
      pool: ``DOCSTORE_POOL_MAX_SIZE``), hence the bound.
    """
    current = await conn.fetchval(
        "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase"
        " WHERE d.datname = current_database() AND s.setrole = 0"
    )
    given = {item.split("=", 1)[0] for item in current or ()}
    name = _ident(await conn.fetchval("SELECT current_database()"))
    if "citus.propagate_set_commands" not in given:
        await conn.execute(f"ALTER DATABASE {name} SET citus.propagate_set_commands = 'local'")
    if "citus.max_cached_conns_per_worker" not in given:
        per_worker = await conn.fetchval(_SHARDS_PER_WORKER) or 1
        cached = max(1, min(int(per_worker), MAX_CACHED_CONNS_PER_WORKER))
        await conn.execute(
            f"ALTER DATABASE {name} SET citus.max_cached_conns_per_worker = {cached}"
        )


_NODES = """
SELECT n.nodename AS name, n.nodeport AS port, n.groupid = 0 AS coordinator,
       n.isactive AS active,
       citus_check_connection_to_node(n.nodename, n.nodeport) AS reachable
  FROM pg_dist_node n WHERE n.noderole = 'primary' ORDER BY n.groupid, n.nodeid
"""
_SHARDS_PER_NODE = """
SELECT nodename AS name, nodeport AS port, count(*) AS shards,
       sum(shard_size)::bigint AS documents_bytes
  FROM citus_shards WHERE table_name = 'documents'::regclass GROUP BY 1, 2
"""
NODE_CHECK_TIMEOUT_MS = 2000
"""How long ``health()`` waits for a node's connection check."""


async def _with_shards(conn: asyncpg.Connection, nodes: list[dict[str, Any]]) -> None:
    """Add each node's ``shards`` of ``documents`` and their ``documents_bytes`` (0 on a node
    holding none; None for every node when one did not answer: ``citus_shards`` asks every
    node for sizes, so it is not asked then)."""
    shards: dict[tuple[str, int], Any] = {}
    if all(n["reachable"] for n in nodes):
        shards = {(r["name"], r["port"]): r for r in await conn.fetch(_SHARDS_PER_NODE)}
    for node in nodes:
        placed = shards.get((str(node["name"]), int(node["port"])))
        node["shards"] = placed["shards"] if placed else (0 if shards else None)
        node["documents_bytes"] = placed["documents_bytes"] if placed else (0 if shards else None)


async def cluster_nodes(conn: asyncpg.Connection) -> list[dict[str, object]]:
    """The cluster's primary nodes as the coordinator sees them: name, port, coordinator,
    active, reachable (a connection check, at most :data:`NODE_CHECK_TIMEOUT_MS` a node),
    and the shards of ``documents`` each holds with their size (None when a node did not
    answer)."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL citus.node_connection_timeout = {NODE_CHECK_TIMEOUT_MS}")
        nodes = [dict(r) for r in await conn.fetch(_NODES)]
    await _with_shards(conn, nodes)
    return nodes


_DISK = """
SELECT (SELECT sum(result::bigint) FROM run_command_on_all_nodes(
            'SELECT pg_database_size(current_database())')) AS database_bytes,
       citus_table_size('documents') AS table_bytes,
       citus_total_relation_size('documents') - citus_table_size('documents') AS indexes_bytes
"""
_SHARD_INDEXES = """
SELECT result FROM run_command_on_shards('documents', $$
SELECT coalesce(jsonb_object_agg(c.relname, pg_relation_size(c.oid)), '{}')
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = '%s'::regclass$$)
 WHERE success
"""


async def disk_usage(conn: asyncpg.Connection) -> dict[str, Any]:
    """``database_bytes`` (every node), ``table_bytes`` and ``indexes_bytes`` of
    ``documents`` (every shard), and ``indexes``: each index's size summed over its shards
    (a shard's index is named ``<index>_<shardid>``)."""
    found = await conn.fetchrow(_DISK)
    assert found is not None  # one row, always
    row = dict(found)
    indexes: dict[str, int] = {}
    for (result,) in await conn.fetch(_SHARD_INDEXES):
        for name, size in json.loads(result).items():
            base = name.rsplit("_", 1)[0]
            indexes[base] = indexes.get(base, 0) + int(size)
    row["indexes"] = indexes
    return row


_NODE_ACTIVITY = """
SELECT json_build_object(
  'connections', (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()),
  'active_queries', (SELECT count(*) FROM pg_stat_activity
                      WHERE datname = current_database() AND state = 'active'
                        AND pid <> pg_backend_pid()),
  'documents_rows', (SELECT coalesce(sum(n_live_tup), 0) FROM pg_stat_user_tables
                      WHERE relname ~ '^documents_[0-9]+$'))
"""
_NODE_METRICS = """
SELECT n.nodename AS name, n.nodeport AS port, n.groupid = 0 AS coordinator,
       a.success AS reachable, CASE WHEN a.success THEN a.result END AS activity
  FROM pg_dist_node n
  LEFT JOIN run_command_on_all_nodes($1) a ON a.nodeid = n.nodeid
 WHERE n.noderole = 'primary' ORDER BY n.groupid, n.nodeid
"""


async def node_metrics(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Every primary node of the cluster for ``store.metrics()``: name, port, coordinator,
    reachable (answered a command within :data:`NODE_CHECK_TIMEOUT_MS`), its backends
    connected to this database (``connections``) and those running a query
    (``active_queries``, the probe itself not counted), the rows of the ``documents`` shards
    it holds (``documents_rows``: ``pg_stat_user_tables.n_live_tup``, an estimate that
    lags writes by up to about a second), and those shards' count and size from
    ``citus_shards`` (``shards``, ``documents_bytes``). A node that did not answer has None
    for everything it would have said. One command on every node, run in parallel."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL citus.node_connection_timeout = {NODE_CHECK_TIMEOUT_MS}")
        rows = await conn.fetch(_NODE_METRICS, _NODE_ACTIVITY)
    nodes = []
    for row in rows:
        node: dict[str, Any] = {k: row[k] for k in ("name", "port", "coordinator")}
        node["reachable"] = bool(row["reachable"])
        activity = json.loads(row["activity"]) if row["activity"] else {}
        for key in ("connections", "active_queries", "documents_rows"):
            node[key] = activity.get(key)
        nodes.append(node)
    await _with_shards(conn, nodes)
    return nodes
