"""Vector search: plan (:mod:`docstore.search.planner`) and run exact, halfvec and ANN searches.

:class:`VectorSearch` looks up what the pure planner needs (the usable index, the scope's
or filter's size (:mod:`~docstore.search.filter_size`), the database's calibration from the
tuner), runs the plan — ANN statements alone when PostgreSQL takes the HNSW index by itself
(:mod:`~docstore.search.ann_plans`), else under ``enable_seqscan = off`` — and a
second, wider ANN pass when the first one's candidates come back flat. A part of
:class:`docstore.Store`, which delegates ``search`` here.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping
from typing import Any, cast

import asyncpg

from docstore.core.surface import Queries
from docstore.metrics import Metrics, timed
from docstore.models import finite_number, flag, query_vector
from docstore.search import planner, queries, scopes
from docstore.search.ann_plans import IndexPlans
from docstore.search.filter_size import FilterSizes
from docstore.search.indexes import INDEX_CACHE_SECONDS, SearchIndexes
from docstore.search.kept import Kept
from docstore.search.planner import Scope
from docstore.search.results import Hit, SearchResults, VectorIndex
from docstore.search.scopes import shard
from docstore.search.statements import fetch as _fetch
from docstore.search.tuner import SearchTuner

"""Scopes whose size is kept (as :class:`FilterSizes` keeps filters')."""
_HIT_DEFAULTS = {name: None for name in Hit.model_fields if name not in queries.DOCUMENT_COLUMNS}


def _hit(record: Any, **scores: Any) -> Hit:
    """A :class:`Hit` from a trusted database row (no re-validation; every field given, so
    pydantic computes no defaults: this runs for every hit of every search). ``metadata``
    arrives decoded (the pool's jsonb codec, :mod:`docstore.codecs`)."""
    data = {**_HIT_DEFAULTS, **record, **scores}
    data.pop("rank", None)  # text search: reported as text_rank
    data.pop("spread", None)  # ANN: the planner's signal, not a document field
    for signal in ("found", "table_rows", "scan_cap"):  # ANN: whether the scan was cut short
        data.pop(signal, None)
    return Hit.from_row(data)


class VectorSearch:
    """``store.search``: nearest documents to a query vector (see the module docstring)."""

    def __init__(self, db: Queries, indexes: SearchIndexes, tuner: SearchTuner) -> None:
        self._db = db
        self._indexes = indexes
        self._tuner = tuner
        self._scope_cache: Kept[tuple[str | None, str | None], Scope] = Kept(
            scopes.SCOPE_CACHE_ENTRIES, INDEX_CACHE_SECONDS
        )
        self._index_plans = IndexPlans(db, indexes)
        self.filter_sizes = FilterSizes(db)

    @property
    def _metrics(self) -> Metrics:
        return self._db._metrics

    async def plan(
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
        """Look up what the planner needs (index, scope or filter size, calibration); plan."""
        index = None if exact else await self._indexes.vector_index(metric)
        scoped_only = filter is None and bool(doc_type or source_name)
        scope = None
        if index is not None and exact is None and scoped_only:
            scope = await scopes.cached_scope(self._db, self._scope_cache, doc_type, source_name)
        flt = None if scoped_only else queries.scoped_filter(doc_type, source_name, filter)
        size = None
        if index is not None and exact is None and ef_search is None and flt is not None:
            size = await self.filter_sizes.size(flt)
        calibration = None
        if index is not None and ef_search is None and self._db.settings.hnsw_ef_search is None:
            calibration = await self._tuner.calibration(metric)
        plan = planner.plan_vector_search(
            limit=limit,
            exact=exact,
            has_index=index is not None,
            metric=metric,
            scoped_only=scoped_only,
            scope=scope,
            filtered=bool(filter or doc_type or source_name),
            oversample=self._db.settings.search_oversample if oversample is None else oversample,
            oversample_given=oversample is not None,
            ef_search=ef_search,
            calibration=calibration,
            configured_ef_search=self._db.settings.hnsw_ef_search,
            filter_size=size,
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
        _observe: bool = True,
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
        (cosine similarity is ``1 - (embedding <=> q)``, as in the legacy server); it must
        lie within the metric's similarities: [-1, 1] for cosine, [0, 1] for l2.

        How it searches is decided by :func:`docstore.search.planner.plan_vector_search`:

        * ``exact=True``, or no HNSW index for ``metric``: the exact scan
          (``exact=False`` requires the index: :class:`SchemaError` without one);
        * scoped only by ``doc_type``/``source_name`` to a few documents — up to 1,000, or
          3,000 while under 20 % of the table; up to 20,000 while under 5 % of it or while
          the calibration missed its target — or with a ``filter`` its own index serves
          matching up to 20,000 (or one no index serves under 5 % of the table; sized on the
          data: :mod:`~docstore.search.filter_size`), the rows are ranked on
          ``embedding_half`` (the half-precision copy in each row, no TOAST reads) and the best
          ``limit × oversample`` (at least 10) re-ranked exactly: mode ``"halfvec"`` (a filter
          matching no more than those is simply ``"exact"``);
        * otherwise ANN: candidates from the HNSW index — ``limit × oversample`` (at least
          40; with a calibration and no ``oversample`` given here, no more than its
          ``ef_search``, at least ``2 × limit``) —
          re-ranked on full-precision vectors, ``hnsw.ef_search`` from the database's
          calibration (:meth:`calibrate_search`: the cheapest setting that meets
          ``DOCSTORE_SEARCH_TARGET_RECALL`` on this data); when the candidates come back
          flat (their spread under the calibrated threshold: a graph search that missed the
          query's neighbourhood), a second, wider pass is merged in (``results.escalated``),
          with a ``filter`` as without one.

        ``ef_search`` given here (or ``DOCSTORE_HNSW_EF_SEARCH``) is an explicit override: no
        second pass, and never moving the calibration; ``hnsw.ef_search`` is at least the
        candidate count (pgvector returns no more than it), so ``results.ef_search`` says what
        ran. ``oversample`` given here is honoured under a calibration too (``ef_search``
        raised to the candidates; the calibration never moved by it); the default,
        ``DOCSTORE_SEARCH_OVERSAMPLE``, is what the calibration measures with.

        ``_observe`` (private): False keeps the search out of the tuner (recent queries, live
        recall, recalibration): ``evaluate_recall`` measures on stored vectors, which must not
        become the "real queries" a calibration is chosen on.
        """
        started = time.perf_counter()
        vector = query_vector(embedding, self._db.embedding_dim)
        mt = queries.metric(metric)
        limit = queries.check_limit(limit)
        flag(exact, "exact", optional=True)
        flag(include_embedding, "include_embedding")
        max_distance = _check_arguments(mt, min_similarity, ef_search, oversample)
        flt = queries.scoped_filter(doc_type, source_name, filter)
        plan, index = await self.plan(
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
            "dim": self._db.embedding_dim,
            "metric_name": mt.name,
            "limit": limit,
            "filter": flt,
            "max_distance": max_distance,
            "include_embedding": include_embedding,
            "distributed": self._db.distributed,
        }
        escalated = False
        mode = plan.mode
        if mode == "ann":
            records, escalated, mode = await self._ann(
                vector,
                plan,
                shape,
                filtered=flt is not None,
                # exact=False insists on the index: no fallback to the filtered rows then
                may_rank_filtered=flt is not None and exact is None,
                notes_escalation=filter is None and plan.source == "calibration",  # the stream's
                source=shard(self._db, source_name),
            )
            ann_found = [(r["id"], r["distance"]) for r in records]  # before min_similarity
            if max_distance is not None:  # the bound on the ordered rows: a prefix of them
                records = [r for r in records if r["distance"] <= max_distance]
        else:
            extra: dict[str, Any] = {}
            if plan.mode == "halfvec":
                extra = {"candidates": plan.candidates, "candidate_source": "halfvec"}
            sql, params = queries.vector_search_sql(vector, **shape, **extra)
            records = await self._db.run(
                _fetch(sql, params), stateless=True, read=True, shard=shard(self._db, source_name)
            )
        self._metrics.search_mode(mode, time.perf_counter() - started)
        hits = [
            _hit(r, similarity=mt.similarity(r["distance"]))
            for r in records
            if not math.isnan(r["distance"])  # a zero vector stored before validation
        ]
        if mode == "ann" and _observe:
            # live recall compares the top `limit` with the exact top `limit`, so it gets the
            # rows before min_similarity cut them
            self._tuner.observe(
                vector,
                mt.name,
                limit,
                flt,
                [(i, d) for i, d in ann_found if i],
                calibrated=plan.source in ("calibration", "default"),
            )
        return SearchResults(
            hits,
            mode=mode,
            metric=mt.name,
            index_name=index.name if mode == "ann" and index else None,
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
        may_rank_filtered: bool = False,
        notes_escalation: bool = True,
        source: str | None = None,
    ) -> tuple[list[Any], bool, planner.VectorMode]:
        """Run an ANN plan: the first pass, and the second if its candidates were flat (which
        counts in the tuner's window if ``notes_escalation``). Returns the top ``limit`` rows
        (``max_distance`` not applied), whether the second pass ran, and the mode: ``"ann"``,
        or ``"halfvec"`` when a filtered index scan came back short and ``may_rank_filtered``
        (:func:`filtered_rows`)."""
        shape = {**shape, "max_distance": None}
        threshold = plan.escalate_below
        direct = (
            threshold is not None
            and self._tuner.mostly_escalating()
            and (
                random.random() >= planner.RECHECK_SHARE  # a few still check: the stream may ease
            )
        )
        records: list[Any] = []
        if not direct:  # else most searches lately needed the second pass: go straight to it
            sql, params = queries.ann_search_sql(
                vector,
                candidates=plan.candidates,
                ef_search=plan.ef_search,
                **shape,
            )
            records = await self._ann_records(
                sql,
                params,
                plan.ef_search,
                force_index=plan.force_index,
                filtered=filtered,
                source=source,
            )
            if may_rank_filtered and _short(records, max(plan.candidates, shape["limit"])):
                return await filtered_rows(self._db, vector, plan, shape, source), False, "halfvec"
            if threshold is None:
                return records, False, "ann"
            flat = bool(records) and records[0]["spread"] < threshold
            if notes_escalation:
                self._tuner.note_escalation(flat)
            if not flat:
                return records, False, "ann"
        wide = planner.escalation_candidates(plan, shape["limit"])
        sql, params = queries.ann_search_sql(
            vector,
            candidates=wide,
            ef_search=plan.escalation_ef_search,
            **shape,
        )
        second = await self._ann_records(
            sql,
            params,
            plan.escalation_ef_search,
            force_index=plan.force_index,
            filtered=filtered,
            source=source,
        )
        if may_rank_filtered and _short(second, max(wide, shape["limit"])):
            return await filtered_rows(self._db, vector, plan, shape, source), True, "halfvec"
        merged = {r["id"]: r for r in (*records, *second)}
        best = sorted(merged.values(), key=lambda r: (r["distance"], r["id"]))
        return best[: shape["limit"]], True, "ann"

    async def _ann_records(
        self,
        sql: str,
        params: list[Any],
        ef_search: int,
        *,
        force_index: bool = True,
        filtered: bool = False,
        source: str | None = None,
    ) -> list[Any]:
        """Run one ANN statement the way searches do (alone when PostgreSQL takes the index by
        itself, else under ``enable_seqscan = off``; on a Citus cluster always in a
        transaction whose settings reach the shards, on ``source``'s worker when given: the
        ``SET LOCAL`` settings go with the statement); calibration trials use it too."""
        distributed = self._db.distributed
        alone = (
            not distributed and not filtered and await self._planner_takes_the_index(sql, params)
        )
        work = _ann_fetch(
            sql, params, ef_search, force_index=force_index, alone=alone, distributed=distributed
        )
        return cast("list[Any]", await self._db.run(work, stateless=True, read=True, shard=source))

    async def _planner_takes_the_index(self, sql: str, params: list[Any]) -> bool:
        """Whether PostgreSQL plans an unfiltered ANN statement on the HNSW index by itself
        (:meth:`IndexPlans.takes_the_index <docstore.search.ann_plans.IndexPlans.takes_the_index>`):
        then it runs alone, in one round trip, else under ``enable_seqscan = off``."""
        return await self._index_plans.takes_the_index(sql, params)


def _check_arguments(
    mt: Any, min_similarity: float | None, ef_search: int | None, oversample: int | None
) -> float | None:
    """``search()``'s tuning arguments checked (whichever plan runs: a value only an ANN plan
    uses must not start failing the day a source outgrows the halfvec rule or an index is
    built); the distance ``min_similarity`` allows, or None."""
    if ef_search is not None:
        planner.check_ef_search(ef_search)
    if oversample is not None:
        planner.check_oversample(oversample)
    if min_similarity is None:
        return None
    bounds = mt.similarity_bounds  # above its top no hit could match: a mistake, not a query
    return cast(
        float, mt.max_distance(finite_number(min_similarity, "min_similarity", bounds=bounds))
    )


async def filtered_rows(
    db: Queries, vector: Any, plan: planner.VectorPlan, shape: dict[str, Any], source: str | None
) -> list[Any]:
    """The filtered rows ranked directly — by ``embedding_half``, the best candidates
    re-ranked exactly, as a small scope's search is — for a filter the HNSW scan could not
    fill its candidate list from: pgvector's iterative scan stops after
    ``hnsw.max_scan_tuples`` (20,000) index tuples, so a filter matching a small share of a
    large table would otherwise return too few hits, or not the nearest ones (:func:`_short`).
    The filter's own indexes (B-tree, GIN), when it can use them, keep this cheap."""
    sql, params = queries.vector_search_sql(
        vector, **shape, candidates=plan.candidates, candidate_source="halfvec"
    )
    return cast(
        "list[Any]", await db.run(_fetch(sql, params), stateless=True, read=True, shard=source)
    )


def _short(records: list[Any], asked: int) -> bool:
    """Whether an ANN statement's index scan may have stopped before it found the ``asked``
    candidates its filter allows: it produced fewer, and the table is not so small that the
    scan must have seen every row (half pgvector's ``hnsw.max_scan_tuples``, a margin for
    statistics that lag the table's growth; on a Citus cluster, where the coordinator's table
    is an empty shell, always). With no candidate at all there is nothing to tell by."""
    if not records:
        return True
    first = records[0]
    if first["found"] >= asked:
        return False
    rows, cap = first.get("table_rows"), first.get("scan_cap")
    cap = int(cap) if cap else planner.HNSW_MAX_SCAN_TUPLES
    return rows is None or rows < 0 or 2 * rows >= cap


def _ann_fetch(
    sql: str,
    params: list[Any],
    ef_search: int,
    *,
    force_index: bool,
    alone: bool,
    distributed: bool = False,
) -> Any:
    """An ANN statement (:func:`~docstore.search.queries.ann_search_sql`): ``alone`` — one
    round trip, the statement sets its own ``hnsw.*`` settings (the caller found PostgreSQL
    takes the index by itself) — or in a transaction under
    :func:`~docstore.search.queries.ann_settings_sql` (``enable_seqscan`` and, with
    ``force_index``, ``enable_sort`` off for its planning)."""
    if alone:
        return _fetch(sql, params)
    settings = queries.ann_settings_sql(ef_search, force_index=force_index, distributed=distributed)

    async def work(conn: asyncpg.Connection) -> list[Any]:
        async with conn.transaction():
            await conn.execute(settings)
            return await conn.fetch(sql, *params)

    return work
