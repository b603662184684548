"""The search API: vector (exact and ANN), full-text, hybrid, index management, recall.

:class:`SearchDatabase` adds these to :class:`~docstore.db.Database`; :class:`docstore.Store`
is one. The SQL comes from the pure builders in :mod:`docstore.search.queries`; how a vector
search runs (mode, candidates, ``ef_search``, a second pass) from the pure planner
:mod:`docstore.search.planner`, fed with the database's calibration
(:mod:`docstore.search.tuning`, kept by ``store.tuner``: :mod:`docstore.search.tuner`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, cast

import asyncpg
import numpy as np

from docstore.db import Database, Health
from docstore.errors import DocstoreError, SchemaError, ValidationError
from docstore.metrics import MetricsSnapshot, timed
from docstore.models import half_precision_problem, query_vector
from docstore.search import planner, queries
from docstore.search.filters import build_filter
from docstore.search.planner import Scope
from docstore.search.results import (
    Hit,
    Latency,
    RecallReport,
    SearchResults,
    VectorIndex,
)
from docstore.search.tuner import Progress, SearchTuner
from docstore.search.tuning import Calibration

# How long a looked-up index list is trusted before the catalog is asked again (an index
# built or dropped by another process is noticed within this time).
INDEX_CACHE_SECONDS = 30.0
DEFAULT_MAINTENANCE_WORK_MEM = "512MB"
INDEX_BUILD_TIMEOUT = 24 * 3600.0
_HIT_DEFAULTS = {name: None for name in Hit.model_fields if name not in queries.DOCUMENT_COLUMNS}


def _hit(record: Any, **scores: Any) -> Hit:
    """A :class:`Hit` from a trusted database row (no re-validation; every field given, so
    pydantic computes no defaults: this runs for every hit of every search)."""
    data = {**_HIT_DEFAULTS, **record, **scores}
    data.pop("rank", None)  # text search: reported as text_rank
    data.pop("spread", None)  # ANN: the planner's signal, not a document field
    if isinstance(data["metadata"], str):
        data["metadata"] = json.loads(data["metadata"])
    return Hit.model_construct(None, **data)


def _positive_int(value: Any, field: str, upper: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= upper:
        raise ValidationError(f"{field} must be an integer from 1 to {upper}", field=field)
    return value


def _latency(samples_ms: list[float]) -> Latency:
    p50, p95, p99 = np.percentile(samples_ms, [50, 95, 99])
    return Latency(p50=p50, p95=p95, p99=p99, mean=float(np.mean(samples_ms)))


class SearchDatabase(Database):
    """Search methods of :class:`docstore.Store` (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._index_cache: tuple[float, list[VectorIndex]] | None = None
        self._scope_cache: dict[tuple[str | None, str | None], tuple[float, Scope]] = {}
        self._index_plan_cache: tuple[float, bool] | None = None
        self.tuner = SearchTuner(self)
        """Calibration, recent queries and live recall (:mod:`docstore.search.tuner`)."""

    async def close(self) -> None:
        """Stop the tuner's background work, then close the pools."""
        await self.tuner.aclose()
        await super().close()

    @timed("health")
    async def health(self) -> Health:
        """:meth:`Database.health <docstore.db.Database.health>`, plus live search recall:
        ``degraded`` (with a warning) while it is under the target."""
        health = await super().health()
        recall = self.tuner.recall()
        health.search_recall = recall
        if recall.below_target:
            health.degraded = True
            health.warnings.append(
                f"search recall {recall.estimate:.3f} over the last {recall.samples} sampled"
                f" searches is under the target {recall.target:.2f} (recalibrating)"
            )
        return health

    @timed("metrics")
    async def metrics(self, *, disk: bool = True) -> MetricsSnapshot:
        """:meth:`Database.metrics <docstore.db.Database.metrics>`, plus live search recall
        (``snapshot.search_recall``)."""
        snapshot = await super().metrics(disk=disk)
        snapshot.search_recall = self.tuner.recall()
        return snapshot

    # -- indexes ---------------------------------------------------------------------------
    @timed("vector_indexes")
    async def vector_indexes(self, *, refresh: bool = True) -> list[VectorIndex]:
        """The HNSW indexes on ``documents`` (``usable`` ones are what searches use)."""
        cached = self._index_cache
        if not refresh and cached and time.monotonic() - cached[0] < INDEX_CACHE_SECONDS:
            return cached[1]
        dim = self.embedding_dim
        wanted = queries.index_expression(dim)
        indexes = []
        for r in await self.fetch(queries.LIST_VECTOR_INDEXES):
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
        self.ensure_writable()
        name = queries.metric(metric).name
        sql = queries.create_vector_index_sql(
            dim=self.embedding_dim,
            metric_name=name,
            m=m,
            ef_construction=ef_construction,
            concurrently=concurrently,
        )
        index_name = queries.vector_index_name(name)
        built = None
        for index in await self.vector_indexes():
            if index.name == index_name and index.usable:
                built = index
        if built is None:
            await self._build_index(
                index_name, sql, concurrently, maintenance_work_mem, progress=progress
            )
            built = next((i for i in await self.vector_indexes() if i.name == index_name), None)
            if built is None:
                raise SchemaError(f"index {index_name} was not found after it was built")
            self.tuner.forget()
        if calibrate and built.usable and (await self.tuner.calibration(name)) is None:
            await self.calibrate_search(name, progress=progress)
        return built

    @timed("drop_vector_index")
    async def drop_vector_index(self, metric: str = "cosine", *, concurrently: bool = True) -> bool:
        """Drop docstore's HNSW index for ``metric``; True if there was one."""
        self.ensure_writable()
        index_name = queries.vector_index_name(metric)
        existed = any(i.name == index_name for i in await self.vector_indexes())
        await self._drop_index(index_name, concurrently)
        return existed

    async def _scope(self, doc_type: str | None, source_name: str | None) -> Scope:
        """A doc_type/source_name scope's size for the halfvec rule (:func:`~docstore.search.
        planner.halfvec_scope`): counted on the B-tree (at most ``HALFVEC_SCOPE_ROWS`` + 1
        entries read), the table's size from the planner's statistics; cached briefly."""
        key = (doc_type, source_name)
        now = time.monotonic()
        cached = self._scope_cache.get(key)
        if cached is not None and now - cached[0] < INDEX_CACHE_SECONDS:
            return cached[1]
        where, params = build_filter(
            queries.scoped_filter(doc_type, source_name, None), first_param=2
        )
        row = await self.replica.fetchrow(
            f"SELECT (SELECT count(*) FROM (SELECT 1 FROM documents d WHERE {where} LIMIT $1) s)"
            " AS rows, (SELECT reltuples FROM pg_class WHERE oid = 'documents'::regclass)"
            " AS total",
            planner.HALFVEC_SCOPE_ROWS + 1,
            *params,
        )
        scope = Scope(row["rows"], row["total"])
        self._scope_cache[key] = (now, scope)
        return scope

    @timed("text_index")
    async def text_index(self) -> bool | None:
        """True if the full-text index exists and is valid, False if invalid, None if absent."""
        return cast(
            "bool | None",
            await self.fetchval(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " WHERE c.relname = $1 AND i.indrelid = 'documents'::regclass",
                queries.TEXT_INDEX_NAME,
            ),
        )

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
        self.ensure_writable()
        if await self.text_index():
            return
        await self._build_index(
            queries.TEXT_INDEX_NAME,
            queries.create_text_index_sql(concurrently=concurrently),
            concurrently,
            maintenance_work_mem,
        )

    @timed("drop_text_index")
    async def drop_text_index(self, *, concurrently: bool = True) -> bool:
        """Drop the full-text index; True if there was one."""
        self.ensure_writable()
        existed = await self.text_index() is not None
        await self._drop_index(queries.TEXT_INDEX_NAME, concurrently)
        return existed

    async def _build_index(
        self,
        name: str,
        sql: str,
        concurrently: bool,
        maintenance_work_mem: str | None,
        *,
        progress: Progress | None = None,
    ) -> None:
        """Run index DDL (``name`` is one of docstore's fixed index names) on one connection:
        drop a leftover invalid index, raise ``maintenance_work_mem`` for the build only;
        ``progress`` is fed from ``pg_stat_progress_create_index`` while it runs."""
        async with self.acquire() as conn, _build_progress(self, conn, progress):
            try:
                await conn.execute(
                    f"DROP INDEX {'CONCURRENTLY ' if concurrently else ''}IF EXISTS {name}"
                )
                if maintenance_work_mem is not None:
                    await conn.execute(
                        "SELECT set_config('maintenance_work_mem', $1, false)",
                        maintenance_work_mem,
                    )
                try:
                    # not bound by DOCSTORE_COMMAND_TIMEOUT: a timeout would leave an INVALID
                    # index behind after a CONCURRENTLY build
                    await conn.execute(sql, timeout=INDEX_BUILD_TIMEOUT)
                finally:
                    await conn.execute("RESET maintenance_work_mem")
            except DocstoreError:
                raise
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                raise self.translate(exc) from exc
            finally:
                self._index_cache = None

    async def _drop_index(self, name: str, concurrently: bool) -> None:
        async with self.acquire() as conn:
            try:
                await conn.execute(
                    f"DROP INDEX {'CONCURRENTLY ' if concurrently else ''}IF EXISTS {name}"
                )
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                raise self.translate(exc) from exc
            finally:
                self._index_cache = None

    # -- vector search ---------------------------------------------------------------------
    async def _plan(
        self,
        *,
        metric: str,
        exact: bool | None,
        doc_type: str | None,
        source_name: str | None,
        filter: Mapping[str, Any] | None,
        limit: int,
        ef_search: int | None,
        oversample: int | None,
    ) -> tuple[planner.VectorPlan, VectorIndex | None]:
        """Look up what the planner needs (index, scope size, calibration) and plan."""
        index = None if exact else await self.vector_index(metric)
        scoped_only = filter is None and bool(doc_type or source_name)
        scope = None
        if index is not None and exact is None and scoped_only:
            scope = await self._scope(doc_type, source_name)
        calibration = None
        if index is not None and ef_search is None and self.settings.hnsw_ef_search is None:
            calibration = await self.tuner.calibration(metric)
        plan = planner.plan_vector_search(
            limit=limit,
            exact=exact,
            has_index=index is not None,
            metric=metric,
            scoped_only=scoped_only,
            scope=scope,
            filtered=bool(filter or doc_type or source_name),
            oversample=self.settings.search_oversample if oversample is None else oversample,
            ef_search=ef_search,
            calibration=calibration,
            configured_ef_search=self.settings.hnsw_ef_search,
        )
        return plan, index

    @timed("search")
    async def search(
        self,
        embedding: Any,
        *,
        doc_type: str | None = None,
        source_name: str | None = None,
        filter: Mapping[str, Any] | None = None,
        limit: int = 10,
        metric: str = "cosine",
        min_similarity: float | None = None,
        exact: bool | None = None,
        include_embedding: bool = False,
        ef_search: int | None = None,
        oversample: int | None = None,
    ) -> SearchResults:
        """The ``limit`` documents nearest to ``embedding``, best first.

        ``embedding`` is validated like a stored one (:func:`docstore.models.query_vector`:
        ``DOCSTORE_EMBEDDING_DIM`` finite real values within ±65,504, not all zero, and
        not lost to underflow in half precision), else :class:`ValidationError` before
        anything is sent. Documents with a NULL embedding never match
        (``store.documents.stats()`` counts them); neither does a stored zero-norm vector
        written before that rule (a migrated row): its cosine distance is NaN, and no hit
        has a NaN similarity.
        ``filter`` is a :mod:`~docstore.search.filters` document; ``doc_type`` and
        ``source_name`` are shortcuts ANDed with it. ``min_similarity`` drops weaker hits
        (cosine similarity is ``1 - (embedding <=> q)``, as in the legacy server).

        How it searches is decided by :func:`docstore.search.planner.plan_vector_search`:

        * ``exact=True``, or no HNSW index for ``metric``: the exact scan
          (``exact=False`` requires the index: :class:`SchemaError` without one);
        * scoped only by ``doc_type``/``source_name`` to a few documents — one source,
          typically: up to 1,000, or up to 3,000 while that is under 20 % of the table — the
          scope is ranked by ``embedding_half`` (the half-precision copy kept in each row, no
          TOAST reads) and the best ``limit × oversample`` (at least 10) re-ranked exactly:
          mode ``"halfvec"``;
        * otherwise ANN: ``limit × oversample`` candidates (at least 40) from the HNSW index,
          re-ranked on full-precision vectors, with ``hnsw.ef_search`` from the database's
          calibration (:meth:`calibrate_search`: the cheapest setting that meets
          ``DOCSTORE_SEARCH_TARGET_RECALL`` on this data) — and, when the candidates come back
          as a flat set (their spread under the calibrated threshold, the sign of a graph
          search that missed the query's neighbourhood), a second, wider pass whose
          candidates are merged in (``results.escalated``).

        ``ef_search``/``oversample`` given here (or ``DOCSTORE_HNSW_EF_SEARCH`` /
        ``DOCSTORE_SEARCH_OVERSAMPLE``) are explicit overrides: exactly that, no second pass.
        ``results.ef_search`` says what ran.
        """
        started = time.perf_counter()
        vector = query_vector(embedding, self.embedding_dim)
        mt = queries.metric(metric)
        queries.check_limit(limit)
        max_distance = None
        if min_similarity is not None:
            if isinstance(min_similarity, bool) or not isinstance(min_similarity, int | float):
                raise ValidationError("min_similarity must be a number", field="min_similarity")
            if not math.isfinite(min_similarity):
                raise ValidationError("min_similarity must be finite", field="min_similarity")
            max_distance = mt.max_distance(float(min_similarity))
        flt = queries.scoped_filter(doc_type, source_name, filter)
        plan, index = await self._plan(
            metric=mt.name,
            exact=exact,
            doc_type=doc_type,
            source_name=source_name,
            filter=filter,
            limit=limit,
            ef_search=ef_search,
            oversample=oversample,
        )
        shape: dict[str, Any] = {
            "dim": self.embedding_dim,
            "metric_name": mt.name,
            "limit": limit,
            "filter": flt,
            "max_distance": max_distance,
            "include_embedding": include_embedding,
        }
        escalated = False
        if plan.mode == "ann":
            records, escalated = await self._ann(vector, plan, shape, filtered=flt is not None)
        else:
            extra: dict[str, Any] = {}
            if plan.mode == "halfvec":
                extra = {"candidates": plan.candidates, "candidate_source": "halfvec"}
            sql, params = queries.vector_search_sql(vector, **shape, **extra)
            records = await self.run(_fetch(sql, params), stateless=True, read=True)
        self._metrics.search_mode(plan.mode, time.perf_counter() - started)
        hits = [
            _hit(r, similarity=mt.similarity(r["distance"]))
            for r in records
            if not math.isnan(r["distance"])  # a zero vector stored before validation
        ]
        if plan.mode == "ann":
            self.tuner.observe(
                vector,
                mt.name,
                limit,
                flt,
                [h.id for h in hits if h.id],
                calibrated=plan.source in ("calibration", "default"),
            )
        return SearchResults(
            hits,
            mode=plan.mode,
            metric=mt.name,
            index_name=index.name if plan.mode == "ann" and index else None,
            elapsed_ms=(time.perf_counter() - started) * 1000,
            ef_search=plan.ef_search or None,
            escalated=escalated,
        )

    async def _ann(
        self,
        vector: Any,
        plan: planner.VectorPlan,
        shape: dict[str, Any],
        *,
        filtered: bool,
    ) -> tuple[list[Any], bool]:
        """Run an ANN plan: the first pass, and the second if its candidates were flat."""
        threshold = plan.escalate_below
        direct = (
            threshold is not None
            and self.tuner.mostly_escalating()
            and (
                random.random() >= planner.RECHECK_SHARE  # a few still check: the stream may ease
            )
        )
        records: list[Any] = []
        if not direct:  # else most searches lately needed the second pass: go straight to it
            sql, params = queries.ann_search_sql(
                vector, candidates=plan.candidates, ef_search=plan.ef_search, **shape
            )
            records = await self._ann_records(
                sql, params, plan.ef_search, force_index=plan.force_index, filtered=filtered
            )
            if threshold is None:
                return records, False
            flat = bool(records) and records[0]["spread"] < threshold
            self.tuner.note_escalation(flat)
            if not flat:
                return records, False
        wide = min(
            max(
                planner.ann_candidates(shape["limit"], self.settings.search_oversample),
                plan.escalation_ef_search // 4,
            ),
            planner.MAX_LIMIT,
        )
        sql, params = queries.ann_search_sql(
            vector, candidates=wide, ef_search=plan.escalation_ef_search, **shape
        )
        second = await self._ann_records(
            sql, params, plan.escalation_ef_search, force_index=plan.force_index, filtered=filtered
        )
        merged = {r["id"]: r for r in (*records, *second)}
        best = sorted(merged.values(), key=lambda r: (r["distance"], r["id"]))
        return best[: shape["limit"]], True

    async def _ann_records(
        self,
        sql: str,
        params: list[Any],
        ef_search: int,
        *,
        force_index: bool = True,
        filtered: bool = False,
    ) -> list[Any]:
        """Run one ANN statement the way searches do (alone when PostgreSQL takes the index by
        itself, else under ``enable_seqscan = off``); calibration trials use it too."""
        alone = not filtered and await self._planner_takes_the_index(sql, params)
        work = _ann_fetch(sql, params, ef_search, force_index=force_index, alone=alone)
        return cast("list[Any]", await self.run(work, stateless=True, read=True))

    async def _planner_takes_the_index(self, sql: str, params: list[Any]) -> bool:
        """Whether PostgreSQL plans an unfiltered ANN statement on the HNSW index by itself.

        Then it runs alone, in one round trip. It does on large tables; on small ones its
        cost model (which does not count reading 12 KB vectors from TOAST) prefers a scan and
        sort of every row — several times slower — so there the statement runs under
        ``enable_seqscan = off``, in a transaction. Asked with EXPLAIN (no execution), and
        the answer kept for :data:`INDEX_CACHE_SECONDS`: as the table grows, the answer
        changes by itself.
        """
        now = time.monotonic()
        cached = self._index_plan_cache
        if cached is not None and now - cached[0] < INDEX_CACHE_SECONDS:
            return cached[1]
        rows = await self.run(_fetch("EXPLAIN (FORMAT JSON) " + sql, params), read=True)
        plan = rows[0][0]
        uses = '"Index Scan"' in (plan if isinstance(plan, str) else json.dumps(plan))
        self._index_plan_cache = (now, uses)
        return uses

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
        ``MIN_RECENT`` real queries to replace probes with, and when the table has grown or
        shrunk by half (:mod:`docstore.search.tuner`). ``progress(phase, done, total)`` is
        called as it goes. A read-only store keeps the result in memory only.
        """
        _positive_int(sample, "sample", 10_000)
        return await self.tuner.calibrate(
            metric, target=target, query_vectors=query_vectors, sample=sample, progress=progress
        )

    # -- full text & hybrid ----------------------------------------------------------------
    @timed("search_text")
    async def search_text(
        self,
        text: str,
        *,
        doc_type: str | None = None,
        source_name: str | None = None,
        filter: Mapping[str, Any] | None = None,
        limit: int = 10,
        include_embedding: bool = False,
    ) -> SearchResults:
        """Full-text search over content, best ``ts_rank_cd`` first.

        ``text`` uses web-search syntax (``websearch_to_tsquery``, English stemming):
        ``async runtime``, ``"exact phrase"``, ``tokio or async-std``, ``spawn -blocking``.
        Fast with the GIN index of :meth:`create_text_index` (the first 100,000 characters
        of each document are indexed); without it PostgreSQL tokenizes every document for
        every query, which is only reasonable for small tables.

        ``text`` has at most 256 words and 4,096 characters
        (:func:`~docstore.search.queries.check_text_query`: ranking time grows with every
        word, and PostgreSQL's query parser fails at ~15,000); longer text is refused with
        :class:`ValidationError` before anything is sent.
        """
        started = time.perf_counter()
        sql, params = queries.text_search_sql(
            text,
            limit=limit,
            filter=queries.scoped_filter(doc_type, source_name, filter),
            include_embedding=include_embedding,
        )
        records = await self.run(_fetch(sql, params), stateless=True, read=True)
        hits = [_hit(r, text_rank=r["rank"]) for r in records]
        return SearchResults(hits, mode="text", elapsed_ms=(time.perf_counter() - started) * 1000)

    @timed("hybrid_search")
    async def hybrid_search(
        self,
        text: str,
        embedding: Any,
        *,
        doc_type: str | None = None,
        source_name: str | None = None,
        filter: Mapping[str, Any] | None = None,
        limit: int = 10,
        k: int = 60,
        candidates: int | None = None,
        metric: str = "cosine",
        exact: bool | None = None,
        include_embedding: bool = False,
    ) -> SearchResults:
        """Vector and full-text search fused by Reciprocal Rank Fusion.

        Each ranking contributes ``1 / (k + rank)`` for its top ``candidates`` (default
        ``max(5 × limit, 50)``); hits carry ``score``, ``ranks`` and, where found, their
        ``similarity`` and ``text_rank``. Both searches run concurrently, after both inputs
        were validated: ``text`` as in :meth:`search_text`, ``embedding`` as in
        :meth:`search` (:class:`ValidationError` before anything is sent).
        """
        started = time.perf_counter()
        queries.check_text_query(text)
        embedding = query_vector(embedding, self.embedding_dim)
        queries.metric(metric)
        build_filter(queries.scoped_filter(doc_type, source_name, filter))
        queries.check_limit(limit)
        pool = queries.check_limit(
            max(5 * limit, 50) if candidates is None else candidates, "candidates"
        )
        common: dict[str, Any] = {
            "doc_type": doc_type,
            "source_name": source_name,
            "filter": filter,
            "limit": max(pool, limit),
            "include_embedding": include_embedding,
        }
        semantic, keyword = await asyncio.gather(
            self.search(embedding, metric=metric, exact=exact, **common),
            self.search_text(text, **common),
        )
        found: dict[int, Hit] = {h.id: h for h in keyword if h.id is not None}
        found.update({h.id: h for h in semantic if h.id is not None})
        text_ranks = {h.id: h.text_rank for h in keyword}
        fused = queries.reciprocal_rank_fusion({"vector": semantic.ids, "text": keyword.ids}, k=k)
        hits = [
            found[id_].model_copy(
                update={"score": score, "ranks": ranks, "text_rank": text_ranks.get(id_)}
            )
            for id_, score, ranks in fused[:limit]
        ]
        return SearchResults(
            hits,
            mode="hybrid",
            metric=semantic.metric,
            index_name=semantic.index_name,
            elapsed_ms=(time.perf_counter() - started) * 1000,
        )

    # -- recall ----------------------------------------------------------------------------
    async def _timed_searches(
        self, vectors: list[Any], options: dict[str, Any]
    ) -> tuple[list[list[int]], list[float], list[SearchResults]]:
        ids, ms, results = [], [], []
        for vector in vectors:
            started = time.perf_counter()
            result = await self.search(vector, **options)
            ms.append((time.perf_counter() - started) * 1000)
            ids.append(result.ids)
            results.append(result)
        return ids, ms, results

    @timed("evaluate_recall")
    async def evaluate_recall(
        self,
        sample: int = 100,
        limit: int = 10,
        *,
        metric: str = "cosine",
        doc_type: str | None = None,
        source_name: str | None = None,
        filter: Mapping[str, Any] | None = None,
        ef_search: int | None = None,
        oversample: int | None = None,
        seed: float | None = 0.5,
        query_vectors: Sequence[Any] | None = None,
    ) -> RecallReport:
        """Compare ANN with the exact scan on ``sample`` stored vectors used as queries.

        Reports recall@``limit`` (the mean share of the exact top-k that the ANN search
        returned), the share of queries answered perfectly, and p50/p95/p99 latency of both
        paths as ``search()`` sees them — run it after ``create_vector_index()`` to prove the
        index (and any ``ef_search``/``oversample`` you pass) is good enough on your data.
        ``seed`` (in [-1, 1]) makes the sample repeatable; None draws a fresh one. Pass
        ``query_vectors`` (your own query embeddings) to measure on those instead of a sample.
        """
        _positive_int(sample, "sample", 100_000)
        queries.check_limit(limit)
        mt = queries.metric(metric)
        index = await self.vector_index(mt.name)
        if index is None:
            raise SchemaError(
                f"no HNSW index for {mt.name} to evaluate: "
                f"await store.create_vector_index({mt.name!r})"
            )
        flt = queries.scoped_filter(doc_type, source_name, filter)
        if query_vectors is None:
            sampled = await self.run(_sample_vectors(flt, sample, seed), read=True)
            # a vector stored before validation (a migrated zero vector) is no valid query
            vectors = [v for v in sampled if half_precision_problem(v) is None]
        else:
            vectors = [query_vector(q, self.embedding_dim) for q in query_vectors]
        if not vectors:
            raise ValidationError("no stored embeddings match; nothing to sample", field="filter")
        options: dict[str, Any] = {"metric": mt.name, "limit": limit, "filter": flt}
        ann_options = {**options, "exact": False, "ef_search": ef_search, "oversample": oversample}
        # Two phases, not interleaved: an exact scan reads the whole table through the buffer
        # cache and would evict index pages that ANN queries in service find there.
        truths, exact_ms, _ = await self._timed_searches(vectors, {**options, "exact": True})
        await self._timed_searches(vectors[:10], ann_options)  # warm-up, not measured
        answers, ann_ms, results = await self._timed_searches(vectors, ann_options)
        recalls = [
            len(set(truth) & set(answer)) / len(truth) if truth else 1.0
            for truth, answer in zip(truths, answers, strict=True)
        ]
        ann_lat, exact_lat = _latency(ann_ms), _latency(exact_ms)
        plan, _ = await self._plan(
            metric=mt.name,
            exact=False,
            doc_type=None,
            source_name=None,
            filter=flt,
            limit=limit,
            ef_search=ef_search,
            oversample=oversample,
        )
        return RecallReport(
            escalated=float(np.mean([r.escalated for r in results])),
            sample=len(vectors),
            limit=limit,
            metric=mt.name,
            index=index.name,
            ef_search=plan.ef_search,
            candidates=plan.candidates,
            recall=float(np.mean(recalls)),
            min_recall=float(np.min(recalls)),
            perfect=float(np.mean([r == 1.0 for r in recalls])),
            ann=ann_lat,
            exact=exact_lat,
            speedup=exact_lat.p50 / ann_lat.p50 if ann_lat.p50 > 0 else math.inf,
        )


_BUILD_PROGRESS = """
SELECT phase,
       CASE WHEN tuples_total > 0 THEN tuples_done ELSE blocks_done END AS done,
       CASE WHEN tuples_total > 0 THEN tuples_total ELSE blocks_total END AS total
  FROM pg_stat_progress_create_index WHERE pid = $1
"""
BUILD_PROGRESS_SECONDS = 0.5


@contextlib.asynccontextmanager
async def _build_progress(
    store: SearchDatabase, conn: asyncpg.Connection, progress: Progress | None
) -> AsyncIterator[None]:
    """While the body builds an index on ``conn``, report its phase and tuples (or blocks)
    done from another connection every :data:`BUILD_PROGRESS_SECONDS`."""
    if progress is None:
        yield
        return
    pid = conn.get_server_pid()

    async def poll() -> None:
        while True:
            await asyncio.sleep(BUILD_PROGRESS_SECONDS)
            with contextlib.suppress(DocstoreError):
                row = await store.fetchrow(_BUILD_PROGRESS, pid)
                if row is not None:
                    progress(
                        f"index: {row['phase']}", int(row["done"] or 0), int(row["total"] or 0)
                    )

    task = asyncio.get_running_loop().create_task(poll())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _fetch(sql: str, params: list[Any]) -> Any:
    async def work(conn: asyncpg.Connection) -> list[Any]:
        return await conn.fetch(sql, *params)

    return work


def _ann_fetch(
    sql: str, params: list[Any], ef_search: int, *, force_index: bool, alone: bool
) -> Any:
    """An ANN statement (:func:`~docstore.search.queries.ann_search_sql`): ``alone`` — one
    round trip, the statement sets its own ``hnsw.*`` settings (the caller found PostgreSQL
    takes the index by itself) — or in a transaction under
    :func:`~docstore.search.queries.ann_settings_sql` (``enable_seqscan`` and, with
    ``force_index``, ``enable_sort`` off for its planning)."""
    if alone:
        return _fetch(sql, params)
    settings = queries.ann_settings_sql(ef_search, force_index=force_index)

    async def work(conn: asyncpg.Connection) -> list[Any]:
        async with conn.transaction():
            await conn.execute(settings)
            return await conn.fetch(sql, *params)

    return work


def _sample_vectors(flt: Mapping[str, Any] | None, sample: int, seed: float | None) -> Any:
    where, params = build_filter(flt, first_param=2)

    async def work(conn: asyncpg.Connection) -> list[Any]:
        async with conn.transaction():
            if seed is not None:
                await conn.execute("SELECT setseed($1)", float(seed))
            ids = await conn.fetch(
                f"SELECT d.id FROM documents d WHERE d.embedding IS NOT NULL AND {where}"
                " ORDER BY random() LIMIT $1",
                sample,
                *params,
            )
            rows = await conn.fetch(
                "SELECT embedding FROM documents WHERE id = ANY($1::int[]) ORDER BY id",
                [r["id"] for r in ids],
            )
            return [r["embedding"] for r in rows]

    return work
