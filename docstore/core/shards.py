"""One-source searches run on the Citus worker that holds the source's shard.

Through the coordinator a one-source search pays Citus's routing (~0.5 ms), a second hop and,
for every constant of the statement, printing it into the SQL sent to the worker (search
statements carry their query vector as a CTE instead, see
:class:`~docstore.search.queries.VectorRefs`, but the CTE's result is shipped in a round trip
of its own): ``bench/citus.py`` measures 1.6–1.9× a single node's latency. The same statement
sent to the worker that holds the shard runs there with Citus's local execution and real
bound parameters (1.1–1.3×): Citus 13 syncs its metadata to the workers, so any node accepts
queries on the distributed table.

:class:`ShardRouter` finds that worker (``pg_dist_placement`` of the shard
``get_shard_id_for_distribution_column('documents', source)`` maps to, on an active primary
node with synced metadata), keeps source → node in a bounded LRU for
:data:`PLACEMENT_CACHE_SECONDS` (shards can move; a stale node still answers correctly,
since any node routes), and keeps one small lazily-opened pool per worker: the coordinator's
URL and connection settings (user, password, TLS, codecs, read-only guard) with only the host
and port replaced. When a worker cannot be reached — or refuses the client, or has no
metadata — the search runs through the coordinator instead (logged once per outage at
WARNING, without secrets) and that worker is tried again after
``DOCSTORE_REPLICA_RETRY_SECONDS``: a search never fails because of routing.
``DOCSTORE_CITUS_ROUTE_SEARCHES=false`` turns routing off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from docstore.config import Settings
from docstore.core.pools import POOL_CLOSE_TIMEOUT, CodecInit, Pools, create_pool, release
from docstore.errors import DocstoreError
from docstore.failures import is_transient_query_failure, must_close
from docstore.metrics import Metrics

logger = logging.getLogger("docstore")

T = TypeVar("T")
Node = tuple[str, int]

PLACEMENT_CACHE_SECONDS = 60.0
"""How long a source's node is trusted before it is looked up again."""
PLACEMENT_CACHE_SIZE = 4096
"""Sources whose node is remembered (least recently used forgotten first)."""
WORKER_CONNECT_TIMEOUT = 2.0
"""Seconds a connection to a worker may take before the search goes to the coordinator."""

PLACEMENT_SQL = """
SELECT n.groupid, n.nodename, n.nodeport
  FROM pg_catalog.pg_dist_placement p
  JOIN pg_catalog.pg_dist_node n ON n.groupid = p.groupid
 WHERE p.shardid = get_shard_id_for_distribution_column('documents', $1::text)
   AND n.isactive AND n.noderole = 'primary' AND n.hasmetadata AND n.metadatasynced
 ORDER BY n.nodeid LIMIT 1
"""
"""The primary node holding ``$1``'s shard of ``documents`` (none: the coordinator routes)."""

# a worker that answers but cannot run the statement itself: no metadata (documents is not
# known there), or it refuses this client (pg_hba, a password only the coordinator knows)
_WORKER_PROBLEMS = (
    asyncpg.UndefinedTableError,
    asyncpg.UndefinedFunctionError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidPasswordError,
    asyncpg.InsufficientPrivilegeError,
)


class NotRouted(Exception):
    """The search was not run on a worker: run it through the coordinator."""


class ShardRouter:
    """Source → worker placement cache, worker pools, outages (see the module docstring).

    ``metrics`` counts searches run on a worker (``routed_searches``) and searches that
    went to the coordinator because their worker failed, was down or busy
    (``routing_fallbacks``): ``store.metrics()`` reports both."""

    def __init__(self, pools: Pools, settings: Settings, metrics: Metrics) -> None:
        self._pools = pools
        self._settings = settings
        self._metrics = metrics
        self._placements: OrderedDict[str, tuple[float, Node | None]] = OrderedDict()
        self._looking: dict[str, asyncio.Task[Node | None]] = {}  # lookups under way
        self.lookups = 0  # placement look-ups run on the coordinator
        self._forgets = 0  # forget(node) calls so far
        self._forgotten: dict[Node, int] = {}  # node → its last forget(node)
        self._workers: dict[Node, asyncpg.Pool] = {}
        self._inits: dict[Node, CodecInit] = {}  # each worker pool's own (see _own)
        self._opening = asyncio.Lock()
        self._down_until: dict[Node, float] = {}
        self._closed = False

    # -- placement ---------------------------------------------------------------------------
    async def node(self, source: str, lookup: Callable[[str], Awaitable[Any]]) -> Node | None:
        """The worker holding ``source``'s shard (cached), None for the coordinator.
        ``lookup(source)`` runs :data:`PLACEMENT_SQL` on the coordinator; concurrent searches
        of a source not cached share one look-up (a burst of searches of a new source would
        otherwise each run one)."""
        cached = self._placements.get(source)
        if cached is not None and time.monotonic() - cached[0] < PLACEMENT_CACHE_SECONDS:
            self._placements.move_to_end(source)
            return cached[1]
        task = self._looking.get(source)
        if task is None:
            task = asyncio.ensure_future(self._look_up(source, lookup))
            self._looking[source] = task
            task.add_done_callback(lambda t: self._looked_up(source, t))
        try:
            # shielded: a caller cancelled while waiting leaves the look-up to the others
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current is not None and current.cancelling()):
                raise NotRouted from None  # close() stopped the look-up, not this caller
            raise

    def _looked_up(self, source: str, task: asyncio.Task[Node | None]) -> None:
        if self._looking.get(source) is task:
            del self._looking[source]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have been cancelled meanwhile

    async def _look_up(self, source: str, lookup: Callable[[str], Awaitable[Any]]) -> Node | None:
        """Run ``lookup`` and cache its answer, unless meanwhile the source was pinned
        (:meth:`remember`), every placement was forgotten (a new URL) or the answer's node was
        (it failed): then the callers get the answer, the cache does not."""
        now, began = time.monotonic(), self._forgets
        self.lookups += 1
        row = await lookup(source)
        node = None if row is None or row["groupid"] == 0 else (row["nodename"], row["nodeport"])
        # still the source's registered look-up (remember() and forget() unregister it), and
        # its answer not a node forgotten since it began
        forgotten = self._forgotten.get(node, 0) if node else 0
        if self._looking.get(source) is not asyncio.current_task() or forgotten > began:
            return node
        self._placements[source] = (now, node)
        self._placements.move_to_end(source)
        while len(self._placements) > PLACEMENT_CACHE_SIZE:
            self._placements.popitem(last=False)
        return node

    def remember(self, source: str, node: Node | None) -> None:
        """Pin ``source`` to ``node`` (tests, and a caller that knows better); a look-up
        under way does not overwrite it."""
        self._looking.pop(source, None)
        self._placements[source] = (time.monotonic(), node)

    def forget(self, node: Node | None = None) -> None:
        """Drop cached placements (of ``node`` only, when given): looked up again next time;
        look-ups under way that name it (any, without ``node``) answer their callers but are
        not cached."""
        if node is None:
            self._looking.clear()
        else:
            self._forgets += 1
            self._forgotten[node] = self._forgets
        for source, (_, placed) in list(self._placements.items()):
            if node is None or placed == node:
                del self._placements[source]

    # -- running -----------------------------------------------------------------------------
    async def run(
        self,
        source: str,
        work: Callable[[asyncpg.Connection], Awaitable[T]],
        lookup: Callable[[str], Awaitable[Any]],
        begin: Callable[[asyncpg.Connection], None] | None = None,
    ) -> T:
        """``work`` on a connection to ``source``'s worker; :class:`NotRouted` when it should
        run through the coordinator (no worker holds it, the worker is down, or it failed in
        a way the coordinator would not). Other errors (a bad query) are raised as they are.
        ``begin(conn)`` is called when ``work`` is handed the worker's connection (the
        runner's :class:`~docstore.core.doubt.Handoff`: a timeout from then on is a
        statement's, not a connection's)."""
        self._pools.require_loop()  # a worker's pool is the store loop's too
        if self._closed:
            raise NotRouted
        try:
            node = await self.node(source, lookup)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, DocstoreError) as exc:
            logger.debug("search routing: placement unknown (%s)", self._pools.describe(exc))
            raise NotRouted from None
        if node is None:
            raise NotRouted
        if time.monotonic() < self._down_until.get(node, 0.0):
            self._metrics.routing_fallbacks += 1
            raise NotRouted
        pool = await self._pool(node)
        if pool.get_size() >= pool.get_max_size() and pool.get_idle_size() == 0:
            # every connection to this worker is busy: the coordinator answers too, rather
            # than waiting (a full pool is load, not an outage)
            self._metrics.routing_fallbacks += 1
            raise NotRouted
        attempted = time.monotonic()
        try:
            async with asyncio.timeout(self._settings.pool_acquire_timeout):
                conn: Any = await pool.acquire()
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # refused, timed out, TLS, authentication, ...
            await self._failed(node, exc)
            raise NotRouted from None
        failure: BaseException | None = None
        try:
            if begin is not None:
                begin(conn)  # the caller's Handoff: a timeout from here on is the statement's
            result = await work(conn)
        except BaseException as exc:
            failure = exc
            if must_close(conn, exc):
                conn.terminate()  # never hand a broken connection to the next search
            if is_transient_query_failure(exc) or isinstance(exc, _WORKER_PROBLEMS):
                await self._failed(node, exc)
                raise NotRouted from None
            raise
        finally:
            await release(pool, conn, failure)
        self._succeeded(node, attempted)
        self._metrics.routed_searches += 1
        return result

    async def _pool(self, node: Node) -> asyncpg.Pool:
        pool = self._workers.get(node)
        if pool is not None:
            return pool
        async with self._opening:
            if self._closed:  # close() ran while this search looked up its placement
                raise NotRouted
            pool = self._workers.get(node)
            if pool is None:
                primary = self._pools.primary
                init = _own(primary.init)
                pool = await create_pool(
                    primary.url,
                    min_size=0,
                    max_size=self._settings.pool_max_size,
                    init=init,
                    connection_class=primary.connection_class,
                    connect_kwargs=self._connect_kwargs(node),
                )
                self._workers[node] = pool
                if init is not None:
                    self._inits[node] = init
            return pool

    def _connect_kwargs(self, node: Node) -> dict[str, Any]:
        """The coordinator's connection settings, on ``node`` (explicit ``host``/``port``
        win over the URL's), with a short connect timeout."""
        return {
            **self._pools.primary.connect_kwargs,
            "timeout": min(self._settings.pool_acquire_timeout, WORKER_CONNECT_TIMEOUT),
            "host": node[0],
            "port": node[1],
        }

    async def _failed(self, node: Node, exc: BaseException) -> None:
        """``node`` is skipped for ``DOCSTORE_REPLICA_RETRY_SECONDS``; logged once an outage."""
        self._metrics.routing_fallbacks += 1
        down = node in self._down_until
        self._down_until[node] = time.monotonic() + self._settings.replica_retry_seconds
        self.forget(node)  # the shard may have moved: look it up again after the outage
        pool = self._workers.get(node)
        if pool is not None:
            await pool.expire_connections()
        if not down:
            logger.warning(
                "Citus worker %s:%s unavailable for one-source searches (%s): they go through "
                "the coordinator; retrying the worker every %gs",
                node[0],
                node[1],
                self._pools.describe(exc),
                self._settings.replica_retry_seconds,
            )

    def _succeeded(self, node: Node, attempted: float) -> None:
        """A search that reached ``node`` after it was marked down ends its outage (one
        that started before, and finished late, says nothing about the outage)."""
        until = self._down_until.get(node)
        if until is not None and attempted >= until - self._settings.replica_retry_seconds:
            del self._down_until[node]
            logger.info("Citus worker %s:%s is back: one-source searches run on it again", *node)

    # -- lifecycle ---------------------------------------------------------------------------
    async def repoint(self) -> None:
        """The coordinator's URL changed (``store.reload``): worker connections use the new
        credentials from now on (open ones are replaced as they come back); placements and
        outages are looked up and tried afresh (the new URL may name another cluster)."""
        self.forget()
        self._down_until.clear()
        schema = self._pools.primary.init.schema if self._pools.primary.init else None
        async with self._opening:  # no worker pool opens meanwhile
            for node, pool in list(self._workers.items()):
                pool.set_connect_args(self._pools.primary.url, **self._connect_kwargs(node))
                if node in self._inits:  # where the new database's pgvector lives
                    self._inits[node].repoint(schema)
                await pool.expire_connections()

    async def close(self) -> None:
        """Close every worker pool (``store.close()``)."""
        async with self._opening:  # no search opens a pool after this
            self._closed = True
            pools, self._workers, self._inits = list(self._workers.values()), {}, {}
        looking = list(self._looking.values())
        for task in looking:  # their callers go to the coordinator (NotRouted)
            task.cancel()
        await asyncio.gather(*looking, return_exceptions=True)
        await asyncio.gather(
            *(asyncio.wait_for(p.close(), POOL_CLOSE_TIMEOUT) for p in pools),
            return_exceptions=True,  # a timed-out close terminates that pool
        )

    def stats(self) -> dict[str, Any]:
        """Searches run on workers, fallbacks to the coordinator, open worker pools,
        placement look-ups run."""
        return {
            "routed": self._metrics.routed_searches,
            "fallbacks": self._metrics.routing_fallbacks,
            "workers": sorted(f"{h}:{p}" for h, p in self._workers),
            "lookups": self.lookups,
        }


def _own(init: CodecInit | None) -> CodecInit | None:
    """A worker pool's own ``init``, like the coordinator's: a worker connection set up
    without pgvector's codecs must not mark the coordinator's pool stale (nor the other way
    round)."""
    if init is None:
        return None
    return CodecInit(init.schema, remember=init.remember, tcp_timeout=init.tcp_timeout)
