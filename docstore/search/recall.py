"""Recall: how good ANN searches are, measured (``evaluate_recall``) and kept live.

:class:`RecallEvaluator` compares ANN with the exact scan on a sample of stored vectors (or
the caller's queries); :func:`with_live_recall` adds the tuner's live recall estimate to
``store.health()`` and ``store.metrics()``. A part of :class:`docstore.Store`, which delegates
``evaluate_recall`` here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import numpy as np

from docstore.core.health import Health
from docstore.core.surface import Queries
from docstore.errors import SchemaError, ValidationError
from docstore.metrics import Metrics, SearchRecall, timed
from docstore.models import bounded_int, finite_number, half_precision_problem, query_vector
from docstore.search import queries
from docstore.search.filters import binds_a_long_list, build_filter
from docstore.search.indexes import SearchIndexes
from docstore.search.results import Latency, RecallReport, SearchResults
from docstore.search.statements import CUSTOM_PLANS
from docstore.search.tuning import Ranked, recall_at
from docstore.search.vector import VectorSearch

MAX_RECALL_SAMPLE = 100_000  # stored vectors evaluate_recall() may sample


def _latency(samples_ms: list[float]) -> Latency:
    p50, p95, p99 = np.percentile(samples_ms, [50, 95, 99])
    return Latency(p50=p50, p95=p95, p99=p99, mean=float(np.mean(samples_ms)))


def with_live_recall(health: Health, recall: SearchRecall) -> Health:
    """``health`` plus live search recall: ``degraded`` (with a warning) while the recall of
    searches on the calibrated settings is under the target (``recall.below_target``: what
    makes the tuner recalibrate; searches with an explicit ``ef_search`` never do)."""
    health.search_recall = recall
    if recall.below_target:
        health.degraded = True
        overall = f"{recall.estimate:.3f}" if recall.estimate is not None else "none"
        health.warnings.append(
            f"search recall on the calibrated settings is under the target"
            f" {recall.target:.2f} (recalibrating); {overall} over the last"
            f" {recall.samples} sampled searches"
        )
    return health


class RecallEvaluator:
    """``store.evaluate_recall``: ANN against the exact scan (see the module docstring)."""

    def __init__(self, db: Queries, indexes: SearchIndexes, vector: VectorSearch) -> None:
        self._db = db
        self._indexes = indexes
        self._vector = vector

    @property
    def _metrics(self) -> Metrics:
        return self._db._metrics

    async def _timed_searches(
        self, vectors: list[Any], options: dict[str, Any]
    ) -> tuple[list[Ranked], list[float], list[SearchResults]]:
        ids: list[Ranked] = []
        ms, results = [], []
        for vector in vectors:
            started = time.perf_counter()
            # measuring must not feed the tuner: stored vectors are no real queries
            result = await self._vector.search(vector, **options, _observe=False)
            ms.append((time.perf_counter() - started) * 1000)
            ids.append(
                [(h.id, h.distance) for h in result if h.id is not None and h.distance is not None]
            )
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
        ``seed`` (a number in [-1, 1], else :class:`ValidationError`) makes the sample
        repeatable; None draws a fresh one. Pass ``query_vectors`` (your own query embeddings)
        to measure on those instead of a sample. Measuring never feeds the tuner: these
        searches are not kept as recent queries nor measured for live recall.

        The ANN side runs with ``exact=False``: always the HNSW index. Unscoped, that is the
        path ``search()`` takes; with ``doc_type``/``source_name``/``filter`` it is not
        always: ``search()`` ranks a small scope or filter on ``embedding_half`` (mode
        ``"halfvec"``) and falls back to that when a filtered index scan stops short, so a
        scoped report measures the forced HNSW scan, which may be slower (and lower in
        recall) than what ``search()`` does on the same scope.
        """
        sample = bounded_int(sample, "sample", MAX_RECALL_SAMPLE)
        limit = queries.check_limit(limit)
        seed = _check_seed(seed)
        mt = queries.metric(metric)
        index = await self._indexes.vector_index(mt.name)
        if index is None:
            raise SchemaError(
                f"no HNSW index for {mt.name} to evaluate: "
                f"await store.create_vector_index({mt.name!r})"
            )
        flt = queries.scoped_filter(doc_type, source_name, filter)
        if query_vectors is None:
            sampled = await self._db.run(_sample_vectors(flt, sample, seed), read=True)
            # a vector stored before validation (a migrated zero vector) is no valid query
            vectors = [v for v in sampled if half_precision_problem(v) is None]
        else:
            vectors = [query_vector(q, self._db.embedding_dim) for q in query_vectors]
        if not vectors:
            raise ValidationError("no stored embeddings match; nothing to sample", field="filter")
        options: dict[str, Any] = {"metric": mt.name, "limit": limit, "filter": flt}
        ann_options = {**options, "exact": False, "ef_search": ef_search, "oversample": oversample}
        # Two phases, not interleaved: an exact scan reads the whole table through the buffer
        # cache and would evict index pages that ANN queries in service find there.
        truths, exact_ms, _ = await self._timed_searches(vectors, {**options, "exact": True})
        await self._timed_searches(vectors[:10], ann_options)  # warm-up, not measured
        answers, ann_ms, results = await self._timed_searches(vectors, ann_options)
        recalls = [recall_at(a, t) for t, a in zip(truths, answers, strict=True)]
        ann_lat, exact_lat = _latency(ann_ms), _latency(exact_ms)
        plan, _ = await self._vector.plan(
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


def _check_seed(seed: float | None) -> float | None:
    """``evaluate_recall``'s ``seed``: None, or a finite number (not a bool) in [-1, 1]
    (``setseed``'s range), checked before anything runs."""
    return None if seed is None else finite_number(seed, "seed", bounds=(-1, 1))


def _sample_vectors(flt: Mapping[str, Any] | None, sample: int, seed: float | None) -> Any:
    where, params = build_filter(flt, first_param=2)

    async def work(conn: asyncpg.Connection) -> list[Any]:
        async with conn.transaction():
            if binds_a_long_list(where, params):  # :mod:`docstore.search.statements`
                await conn.execute(CUSTOM_PLANS)
            if seed is not None:
                await conn.execute("SELECT setseed($1)", seed)
            ids = await conn.fetch(
                f"SELECT d.id FROM documents d WHERE d.embedding IS NOT NULL AND {where}"
                " ORDER BY random() LIMIT $1",
                sample,
                *params,
            )
            rows = await conn.fetch(
                "SELECT embedding FROM documents WHERE id = ANY($1::bigint[]) ORDER BY id",
                [r["id"] for r in ids],
            )
            return [r["embedding"] for r in rows]

    return work
