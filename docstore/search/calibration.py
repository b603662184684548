"""Measuring a calibration: the procedure behind ``store.calibrate_search()``.

:class:`Calibrator` takes the calibration queries it is given and measures, on this store's
data: their exact top-10 (:meth:`Calibrator.truth`: a scan of ``embedding_half`` re-ranked at
full precision), the ANN pass at each ``ef_search`` of :data:`~docstore.search.tuning.EF_GRID`
until one finds every exact neighbour, and the exact scan's latency; then
:func:`~docstore.search.tuning.choose_settings` picks the cheapest policy meeting the target.
Which queries to measure on, storing the result and when to recalibrate are
:mod:`docstore.search.tuner`'s business; live recall re-runs searches through
:meth:`Calibrator.truth` too.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from docstore.core.together import together
from docstore.errors import QueryError
from docstore.search import queries
from docstore.search.planner import level_candidates
from docstore.search.statements import fetch as _fetch
from docstore.search.table_changes import table_state, tolerated
from docstore.search.tuning import (
    CALIBRATION_K,
    EF_GRID,
    NET_PROBES,
    NET_QUERIES,
    RECALL_FLOOR,
    SELECTION_FLOOR,
    Calibration,
    QuerySource,
    Ranked,
    Trial,
    choose_settings,
    recall_at,
)

if TYPE_CHECKING:
    from docstore.search.surface import SearchDatabase

logger = logging.getLogger("docstore")

MIN_ESCALATION = 640
"""The least second-pass ``ef_search`` a calibration chooses (see _min_escalation)."""

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``, called while a calibration runs."""

# Pages drawn at random (SYSTEM reads only the chosen pages; from ~2,000 to 4,000 dimensions
# the in-row half-precision copy makes each row a page of its own, so pages are rows; with
# fewer dimensions a page holds neighbouring inserts), then a pseudo-random n of their rows.
_SAMPLE = """
SELECT embedding FROM documents TABLESAMPLE SYSTEM ($1) REPEATABLE ($2)
 WHERE embedding IS NOT NULL
 ORDER BY hashint8extended(id, $2::bigint), id LIMIT $3
"""
_SIZE = """
SELECT c.reltuples, (SELECT max(id) FROM documents) AS hi
  FROM pg_class c WHERE c.oid = 'documents'::regclass
"""
_UNKNOWN_SIZE_PERCENT = 0.1
"""Where the planner has no row count yet (never analyzed; the coordinator's empty shell on
Citus), the first draw's share of pages; each further draw takes 10× more."""


MEASURE_ATTEMPTS = 3
"""Measurements tried before a calibration whose table kept changing is given up."""


class TableChangedError(QueryError):
    """More than :data:`~docstore.search.table_changes.TOLERANCE` of the documents table
    changed during each of :data:`MEASURE_ATTEMPTS` measurements of a calibration: nothing
    was stored (``create_vector_index`` defers the calibration then)."""


class Calibrator:
    """The calibration procedure of one store (see the module docstring)."""

    def __init__(self, store: SearchDatabase) -> None:
        self._store = store

    async def measure(
        self,
        metric: str,
        vectors: list[np.ndarray],
        source: QuerySource,
        *,
        target: float,
        progress: Progress | None = None,
        pace: float | None = None,
        started: float | None = None,
    ) -> Calibration:
        """Measure the cheapest ANN settings meeting ``target`` on ``vectors`` (at least two,
        from ``source``) and return them as a :class:`Calibration`, not stored.

        ``pace``: see :meth:`~docstore.search.tuner.SearchTuner.calibrate`; ``started``: the
        ``time.perf_counter()`` the calibration's ``seconds`` count from (default: now).
        """
        store = self._store
        started = time.perf_counter() if started is None else started
        oversample = store.settings.search_oversample
        for attempt in range(1, MEASURE_ATTEMPTS + 1):
            before = await table_state(store)
            truths = await self._truths(vectors, metric, progress, pace)
            trials, latency = await self._trials(
                vectors, truths, metric, oversample, progress, pace
            )
            after = await table_state(store, before)
            if tolerated(before, after):
                if after.changed_since(before):
                    logger.info(
                        "search calibration: %s; its measurement stands",
                        after.describe_change(before),
                    )
                break
            # rows written meanwhile: the exact answers were taken on another table than the
            # trials ran on (a bulk load made recall fall as ef_search rose: ef 20 won)
            logger.info(
                "search calibration measured again (try %d of %d): %s",
                *(attempt, MEASURE_ATTEMPTS, after.describe_change(before)),
            )
            if attempt == MEASURE_ATTEMPTS:
                raise TableChangedError(
                    f"the documents table changed while the search calibration measured, "
                    f"{MEASURE_ATTEMPTS} times (the last: {after.describe_change(before)}): "
                    "nothing was stored; calibrate again when the writes pause"
                )
        exact_ms = await self._exact_latency(vectors[:5], metric)
        choose = functools.partial(
            choose_settings,
            trials,
            latency,
            target=target,
            min_escalation=_min_escalation(trials),
            net=NET_PROBES if source == "probes" else NET_QUERIES,
        )
        choice = choose(floor=SELECTION_FLOOR)
        if not choice.met_target:  # this index cannot keep every query at 0.9
            choice = choose(floor=RECALL_FLOOR)
        table_rows = after.rows  # counted: reltuples lags a load until ANALYZE
        return Calibration(
            metric=metric,
            target_recall=target,
            ef_search=choice.ef_search,
            escalation_ef_search=choice.escalation_ef_search,
            escalate_below=choice.escalate_below,
            expected_recall=choice.expected_recall,
            recall_error=choice.recall_error,
            lowest_recall=choice.lowest_recall,
            escalation_rate=choice.escalation_rate,
            expected_ms=choice.expected_ms,
            exact_ms=exact_ms,
            met_target=choice.met_target,
            queries=len(vectors),
            query_source=source,
            table_rows=max(int(table_rows or 0), 0),
            calibrated_at=datetime.now(UTC),
            seconds=time.perf_counter() - started,
        )

    async def sample_stored(self, n: int) -> list[np.ndarray]:
        """About ``n`` stored embeddings from random pages (no full scan of the table).

        The share of pages is sized from the planner's row count and grown until ``n``
        non-zero embeddings are found or the whole table was read: ids may be sparse
        (deleted rows; on Citus each worker counts from its own range), so they are never
        drawn directly. The same table and planner row count give the same sample.
        """
        replica = self._store.replica
        size = await replica.fetchrow(_SIZE)
        if size is None or size["hi"] is None:
            return []
        rows = float(size["reltuples"])
        percent = min(100.0, 400.0 * n / rows) if rows > 0 else _UNKNOWN_SIZE_PERCENT
        seed = int(size["hi"]) % 2**31
        while True:
            found = await replica.fetch(_SAMPLE, percent, seed, n * 2)
            picked = [np.asarray(r["embedding"], dtype=np.float32) for r in found]
            picked = [v for v in picked if float(np.linalg.norm(v)) > 0]
            if len(picked) >= n or percent >= 100.0:
                return picked[:n]
            percent = min(100.0, percent * 10)

    async def _truths(
        self,
        vectors: list[np.ndarray],
        metric: str,
        progress: Progress | None,
        pace: float | None,
    ) -> list[Ranked]:
        """Exact top-k ``(id, distance)`` of each vector (half-precision scan + exact
        re-rank), on up to half the pool's connections (one when paced)."""
        store = self._store
        limit = 1 if pace else max(1, (store.settings.pool_max_size - 2) // 2)
        gate = asyncio.Semaphore(limit)  # leave the callers connections
        done = 0

        async def one(vector: np.ndarray) -> Ranked:
            nonlocal done
            async with gate:
                started = time.perf_counter()
                ids = await self.truth(vector, metric, CALIBRATION_K)
                await _pause(time.perf_counter() - started, pace)
            done += 1
            if progress is not None:
                progress("exact top-10", done, len(vectors))
            return ids

        return await together(*(one(v) for v in vectors))  # a failure stops the rest

    async def truth(
        self,
        vector: np.ndarray,
        metric: str,
        limit: int,
        flt: Mapping[str, Any] | None = None,
    ) -> Ranked:
        """The exact top ``limit`` as ``(id, distance)``: every row in scope ranked on
        ``embedding_half`` (read from the row itself, no TOAST), the best
        ``max(4 × limit, 40)`` re-ranked on the full-precision vectors — exact unless half
        precision reorders a document from outside the first 4k into the top k."""
        store = self._store
        sql, params = queries.vector_search_sql(
            vector,
            dim=store.embedding_dim,
            metric_name=metric,
            limit=limit,
            filter=flt,
            candidates=max(4 * limit, 40),
            candidate_source="halfvec",
            distributed=store.distributed,
        )
        # the embedding_half order is unindexed(): a scan of the scope, even where someone
        # indexed that column
        rows = await store.run(_fetch(sql, params), stateless=True, read=True)
        return [(r["id"], r["distance"]) for r in rows]

    async def _trials(
        self,
        vectors: list[np.ndarray],
        truths: list[Ranked],
        metric: str,
        oversample: int,
        progress: Progress | None,
        pace: float | None,
    ) -> tuple[dict[int, list[Trial]], dict[int, float]]:
        """Every vector through the ANN pass at each ``ef_search`` of the grid, until one
        finds every exact neighbour of every vector (larger ones cannot do better)."""
        store = self._store
        trials: dict[int, list[Trial]] = {}
        latency: dict[int, float] = {}
        grid = EF_GRID
        for step, ef in enumerate(grid):
            candidates = level_candidates(ef, CALIBRATION_K, oversample)
            sql_params = [
                queries.ann_search_sql(
                    v,
                    dim=store.embedding_dim,
                    metric_name=metric,
                    limit=CALIBRATION_K,
                    candidates=candidates,
                    ef_search=ef,
                    distributed=store.distributed,
                )
                for v in vectors
            ]
            for sql, params in sql_params[:3]:  # warm the index's pages
                await store._ann_records(sql, params, ef)
            results: list[Trial] = []
            times: list[float] = []
            for (sql, params), truth in zip(sql_params, truths, strict=True):
                started = time.perf_counter()
                rows = await store._ann_records(sql, params, ef)
                took = time.perf_counter() - started
                times.append(took * 1000)
                await _pause(took, pace)
                found = [(r["id"], r["distance"]) for r in rows]
                results.append(Trial(recall_at(found, truth), rows[0]["spread"] if rows else 0.0))
            trials[ef] = results
            latency[ef] = statistics.median(times)
            if progress is not None:
                progress("ANN trials", step + 1, len(grid))
            if min(t.recall for t in results) >= 1.0 and ef >= MIN_ESCALATION:
                break
        return trials, latency

    async def _exact_latency(self, vectors: list[np.ndarray], metric: str) -> float | None:
        store = self._store
        times = []
        for v in vectors:
            sql, params = queries.vector_search_sql(
                v,
                dim=store.embedding_dim,
                metric_name=metric,
                limit=CALIBRATION_K,
                distributed=store.distributed,
            )
            started = time.perf_counter()
            await store.run(_fetch(sql, params), stateless=True, read=True)
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times) if times else None


async def _pause(seconds: float, pace: float | None) -> None:
    """After ``seconds`` of work, rest long enough to keep to ``pace`` (None: no rest)."""
    if pace:
        await asyncio.sleep(seconds * (1 - pace) / pace)


def _min_escalation(trials: Mapping[int, Sequence[Trial]]) -> int:
    """The smallest second-pass ``ef_search``: twice the first that finds at least 90 % of
    every calibration query's neighbours, and at least :data:`MIN_ESCALATION`. The second
    pass is the safety net for the questions that get lost in the graph, and the hardest of
    those are rarer than any sample shows (on the real-text corpus they needed 400–640, where
    every probe was found at 160 and a calibration on 128 real queries stopped at 250)."""
    grid = sorted(trials)
    enough = next((ef for ef in grid if min(t.recall for t in trials[ef]) >= 0.9), grid[-1])
    wanted = max(2 * enough, MIN_ESCALATION)
    return next((ef for ef in grid if ef >= wanted), grid[-1])
