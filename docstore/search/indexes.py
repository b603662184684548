"""Index management: the HNSW and full-text indexes searches use, and search calibration.

:class:`SearchIndexes` lists, builds and drops docstore's indexes on ``documents`` (index DDL
on one connection, ``maintenance_work_mem`` raised for the build, progress polled from
``pg_stat_progress_create_index``) and runs :meth:`~SearchIndexes.calibrate_search` (kept by
the tuner, :mod:`docstore.search.tuner`). A part of :class:`docstore.Store`, which delegates
``vector_indexes``, ``vector_index``, ``create_vector_index``, ``drop_vector_index``,
``text_index``, ``create_text_index``, ``drop_text_index`` and ``calibrate_search`` here.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any, cast

import asyncpg

from docstore.core.surface import Queries
from docstore.errors import DocstoreError, SchemaError
from docstore.metrics import Metrics, timed
from docstore.models import bounded_int
from docstore.search import index_ddl, queries, text_sql
from docstore.search.calibration import TableChangedError
from docstore.search.results import VectorIndex
from docstore.search.tuner import CALIBRATION_LOCK_KEY, Progress, SearchTuner
from docstore.search.tuning import Calibration

logger = logging.getLogger("docstore")

# How long a looked-up index list is trusted before the catalog is asked again (an index
# built or dropped by another process is noticed within this time).
INDEX_CACHE_SECONDS = 30.0
DEFAULT_MAINTENANCE_WORK_MEM = "512MB"
MAX_CALIBRATION_SAMPLE = 10_000  # probes calibrate_search() may make


class SearchIndexes:
    """docstore's indexes on ``documents``, and the calibration of ANN searches on them."""

    def __init__(self, db: Queries, tuner: SearchTuner) -> None:
        self._db = db
        self._tuner = tuner
        self._index_cache: tuple[float, list[VectorIndex]] | None = None

    @property
    def _metrics(self) -> Metrics:
        return self._db._metrics

    @timed("vector_indexes")
    async def vector_indexes(self, *, refresh: bool = True) -> list[VectorIndex]:
        """The HNSW indexes on ``documents`` (``usable`` ones are what searches use)."""
        cached = self._index_cache
        if not refresh and cached and time.monotonic() - cached[0] < INDEX_CACHE_SECONDS:
            return cached[1]
        indexes = _read_indexes(
            await self._db.fetch(queries.LIST_VECTOR_INDEXES), self._db.embedding_dim
        )
        self._index_cache = (time.monotonic(), indexes)
        return indexes

    async def vector_index(self, metric: str = "cosine") -> VectorIndex | None:
        """The usable HNSW index for ``metric``, or None (then searches scan exactly)."""
        name = queries.metric(metric).name
        for index in await self.vector_indexes(refresh=False):
            if index.usable and index.metric == name:
                return index
        return None

    @timed("create_vector_index")
    async def create_vector_index(
        self,
        metric: str = "cosine",
        *,
        m: int = 16,
        ef_construction: int = 64,
        concurrently: bool = True,
        maintenance_work_mem: str | None = DEFAULT_MAINTENANCE_WORK_MEM,
        calibrate: bool = True,
        progress: Progress | None = None,
    ) -> VectorIndex:
        """Build the HNSW index searches with ``metric`` will use, calibrate the search
        settings on it (:meth:`calibrate_search`, unless ``calibrate=False``), and return it.

        At ≤ 2,000 dimensions the index is on ``embedding`` itself; above that (pgvector
        cannot index ``vector`` there) on ``embedding::halfvec(N)`` with the halfvec operator
        class, and searches re-rank its candidates on the full-precision vectors.
        ``concurrently`` (default) does not block writes while building. An existing valid
        index for the metric is returned as is (calibrated if it never was); an invalid one (a
        failed concurrent build) is dropped and rebuilt. ``maintenance_work_mem`` is raised
        for the build only, so the graph is built in memory (much faster); ``None`` keeps the
        server's setting. ``progress(phase, done, total)`` follows the build
        (``pg_stat_progress_create_index``: its phases, tuples or blocks done) and the
        calibration.
        """
        self._db.ensure_writable()
        name = queries.metric(metric).name
        sql = queries.create_vector_index_sql(
            dim=self._db.embedding_dim,
            metric_name=name,
            m=m,
            ef_construction=ef_construction,
            concurrently=concurrently,
        )
        index_name = queries.vector_index_name(name)

        def usable(indexes: list[VectorIndex]) -> VectorIndex | None:
            return next((i for i in indexes if i.name == index_name and i.usable), None)

        dim = self._db.embedding_dim

        async def built_meanwhile(conn: asyncpg.Connection) -> bool:  # by another session
            rows = await conn.fetch(queries.LIST_VECTOR_INDEXES)
            return usable(_read_indexes(rows, dim)) is not None

        built = usable(await self.vector_indexes())
        if built is not None and not (calibrate and await self._tuner.calibration(name) is None):
            return built
        async with contextlib.AsyncExitStack() as held:

            async def hold_calibration() -> None:  # before the builder lets go of the index
                # (waiting out a background recalibration: the fresh graph's must come last)
                await _enter(held, self._db.try_lock(CALIBRATION_LOCK_KEY, poll=1.0))

            # also when built but not calibrated: through the DDL lock, so a caller arriving
            # between another's CREATE INDEX and its taking the calibration's lock waits
            fresh = await self._build_index(
                index_name,
                sql,
                concurrently=concurrently,
                maintenance_work_mem=maintenance_work_mem,
                built=built_meanwhile,
                # the old graph's settings go first: a build interrupted after must not
                # leave them in force
                before=lambda conn: self._tuner.discard(name, conn),
                after=hold_calibration if calibrate else None,
                progress=progress,
            )
            built = next((i for i in await self.vector_indexes() if i.name == index_name), None)
            if built is None:
                raise SchemaError(f"index {index_name} was not found after it was built")
            if not calibrate or not built.usable:
                return built
            # a fresh index is calibrated without asking the calibration (a replica may still
            # return the dropped graph's); another session's is calibrated by it: wait for
            # the end of that (the calibration's lock), and calibrate only if none is stored
            if not fresh and not await self._db.fetchval(_CALIBRATED, name):
                await _enter(held, self._db.try_lock(CALIBRATION_LOCK_KEY, poll=1.0))
            if fresh or not await self._db.fetchval(_CALIBRATED, name):
                await self._calibrate_built(name, progress)
            else:
                self._tuner._cache.pop(name, None)  # it cached "none" before waiting
        return built

    async def _calibrate_built(self, name: str, progress: Progress | None) -> None:
        """Calibrate a just-built index, or defer it (fewer than two embeddings; writes going
        on): the tuner calibrates by itself then."""
        if await self._db.fetchval(_TWO_EMBEDDINGS) < 2:  # nothing to calibrate on yet
            logger.info(
                "search calibration (%s) deferred: fewer than two stored embeddings; it"
                " runs by itself once the table has 1,000 rows with an embedding (or"
                " calibrate_search())",
                name,
            )
            await self._tuner.defer(name)
            return
        try:
            await self.calibrate_search(name, progress=progress)
        except TableChangedError as exc:  # writes going on: it calibrates by itself
            logger.warning("search calibration (%s) deferred: %s", name, exc)
            await self._tuner.defer(name)

    @timed("drop_vector_index")
    async def drop_vector_index(self, metric: str = "cosine", *, concurrently: bool = True) -> bool:
        """Drop docstore's HNSW index for ``metric``; True if there was one."""
        self._db.ensure_writable()
        existed = await self._drop_index(queries.vector_index_name(metric), concurrently)
        if existed:  # its settings measured this graph, not the next one
            await self._tuner.discard(queries.metric(metric).name)
        return existed

    @timed("text_index")
    async def text_index(self) -> bool | None:
        """True if the full-text index exists and is valid, False if invalid, None if absent."""
        return cast("bool | None", await self._db.fetchval(_TEXT_INDEX, text_sql.TEXT_INDEX_NAME))

    @timed("create_text_index")
    async def create_text_index(
        self,
        *,
        concurrently: bool = True,
        maintenance_work_mem: str | None = DEFAULT_MAINTENANCE_WORK_MEM,
    ) -> None:
        """Build the GIN index that makes :meth:`search_text` and :meth:`hybrid_search` fast.

        Opt-in, like the vector index: it makes every write of a new or changed document
        tokenize its text (``bench/RESULTS.md``: COPY of 5,000 documents 0.32 s → 1.13 s), and
        it is cheapest built once after a bulk load. Idempotent; an invalid index left by a
        failed concurrent build is rebuilt.
        """
        self._db.ensure_writable()
        if await self.text_index():
            return
        await self._build_index(
            text_sql.TEXT_INDEX_NAME,
            text_sql.create_text_index_sql(concurrently=concurrently),
            concurrently=concurrently,
            maintenance_work_mem=maintenance_work_mem,
            built=_text_built,
        )

    @timed("drop_text_index")
    async def drop_text_index(self, *, concurrently: bool = True) -> bool:
        """Drop the full-text index; True if there was one."""
        self._db.ensure_writable()
        return await self._drop_index(text_sql.TEXT_INDEX_NAME, concurrently)

    async def _build_index(self, name: str, sql: str, **options: Any) -> bool:
        """:func:`~docstore.search.index_ddl.build_index` with ``options``; the index list is
        asked again after."""
        try:
            return await index_ddl.build_index(self._db, name, sql, **options)
        finally:
            self._index_cache = None

    async def _drop_index(self, name: str, concurrently: bool) -> bool:
        try:
            return await index_ddl.drop_index(self._db, name, concurrently=concurrently)
        finally:
            self._index_cache = None

    @timed("calibrate_search")
    async def calibrate_search(
        self,
        metric: str = "cosine",
        *,
        target: float | None = None,
        query_vectors: Sequence[Any] | None = None,
        sample: int = 100,
        progress: Progress | None = None,
    ) -> Calibration:
        """Measure the cheapest ANN settings that meet the recall target on this database's
        data, store them (every process and replica uses them) and return them.

        Runs on recent real queries when the store has seen enough (or on ``query_vectors``),
        else on ``sample`` probes made from stored vectors: the exact top 10 of each, then the
        ANN search at each ``ef_search`` of a grid, then the cheapest policy — a base
        ``ef_search`` and, for queries whose candidates come back flat, a wider second pass —
        whose recall@10 meets ``target`` (default ``DOCSTORE_SEARCH_TARGET_RECALL``, 0.98)
        with no query under 0.7. ``create_vector_index()`` calls it; the store calls it
        again in the background when live recall falls under the target, when it has
        ``MIN_RECENT`` real queries to replace probes with, and when the table has grown by
        half or shrunk by a third (:mod:`docstore.search.tuner`). ``progress(phase, done,
        total)`` is called as it goes. A read-only store keeps the result in memory only.
        """
        sample = bounded_int(sample, "sample", MAX_CALIBRATION_SAMPLE)
        return await self._tuner.calibrate(
            metric, target=target, query_vectors=query_vectors, sample=sample, progress=progress
        )


_TWO_EMBEDDINGS = (
    "SELECT count(*) FROM (SELECT 1 FROM documents WHERE embedding IS NOT NULL LIMIT 2) s"
)


_CALIBRATED = (
    "SELECT NOT (calibration ? 'deferred') FROM docstore_search_calibration WHERE metric = $1"
)
_TEXT_INDEX = (
    "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
    " WHERE c.relname = $1 AND i.indrelid = 'documents'::regclass"
)


async def _text_built(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval(_TEXT_INDEX, text_sql.TEXT_INDEX_NAME))


async def _enter(held: contextlib.AsyncExitStack, lock: Any) -> None:
    """Hold the calibration's lock (``store.try_lock``) until ``held`` closes; where no
    connection beside the pool can be had, calibrate without it."""
    with contextlib.suppress(DocstoreError):
        await held.enter_async_context(lock)


def _read_indexes(rows: Sequence[Any], dim: int) -> list[VectorIndex]:
    """The HNSW indexes of ``queries.LIST_VECTOR_INDEXES``' rows; ``usable``: valid, and on
    the expression searches at ``dim`` dimensions order by."""
    wanted = queries.index_expression(dim)
    indexes = []
    for r in rows:
        expression = r["definition"].split(" USING hnsw ", 1)[-1]
        on_ours = (
            r["on_expression"] and f"halfvec({dim})" in expression
            if dim > queries.MAX_VECTOR_INDEX_DIM
            else not r["on_expression"] and wanted in expression
        )
        indexes.append(
            VectorIndex(
                name=r["name"],
                metric=queries.OPCLASS_METRIC.get(r["opclass"]),
                opclass=r["opclass"],
                valid=r["valid"],
                usable=bool(r["valid"] and on_ours),
                size_bytes=r["size_bytes"],
                definition=r["definition"],
            )
        )
    return indexes
