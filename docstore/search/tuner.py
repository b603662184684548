"""``store.tuner``: the database's calibration, recent queries, and live recall.

One :class:`SearchTuner` per store. It

* **loads the calibration** of a metric from ``docstore_search_calibration`` (cached for
  :data:`CACHE_SECONDS`, so a calibration made by another process or on the primary reaches
  this one within that time);
* **calibrates** (:meth:`SearchTuner.calibrate`, see :mod:`docstore.search.tuning`): exact
  ground truth for the calibration queries, ANN trials over ``ef_search``, the cheapest policy
  meeting the recall target; stored in the database for every process and replica (kept in
  memory only on a read-only store);
* **keeps recent queries**: the last :data:`RECENT_QUERIES` query vectors of ANN searches, in
  memory (``DOCSTORE_SEARCH_KEEP_QUERIES=false`` turns it off), written to
  ``docstore_search_queries`` (at most :data:`STORED_QUERIES` rows) when a calibration runs, so
  ``docstore index calibrate`` in another process calibrates on real queries too;
* **measures live recall**: a sampled share (``DOCSTORE_SEARCH_RECALL_SAMPLE``) of ANN searches
  is re-run exactly in the background — never on the caller's path, one at a time, only when
  the pool has an idle connection, and within a CPU budget (``DOCSTORE_SEARCH_RECALL_BUDGET``,
  the share of wall-clock time those re-runs may take, as a token bucket) — and the last
  :data:`RECALL_WINDOW` results make a rolling recall estimate (:meth:`SearchTuner.recall`);
* **recalibrates in the background** when the estimate falls under the target, when it is
  comfortably above it (cheaper settings), when a probe calibration can be redone on
  :data:`MIN_RECENT` real queries, and when the table has grown or shrunk by half since the
  calibration. At most one calibration runs at a time (an advisory lock across processes), and
  automatic ones at most every :data:`RECALIBRATE_SECONDS`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import numpy as np

from docstore.codecs import EncodedVector, encode_vector
from docstore.errors import QueryError, SchemaError, ValidationError
from docstore.metrics import SearchRecall
from docstore.search import queries
from docstore.search.planner import level_candidates
from docstore.search.tuning import (
    CALIBRATION_K,
    EF_GRID,
    NET_PROBES,
    NET_QUERIES,
    RECALL_FLOOR,
    SELECTION_FLOOR,
    Calibration,
    QuerySource,
    Trial,
    choose_settings,
    probe_vectors,
    recall_at,
)

if TYPE_CHECKING:
    from docstore.search.api import SearchDatabase

logger = logging.getLogger("docstore")

CACHE_SECONDS = 30.0
RECENT_QUERIES = 256
STORED_QUERIES = 512
MIN_RECENT = 64
"""Real queries needed before a calibration uses them instead of probes."""
PROBES = 100
RECALL_WINDOW = 200
MIN_RECALL_SAMPLES = 30
RECALIBRATE_SECONDS = 60.0
SETTLED_SECONDS = 3600.0
"""A calibration this old (or older) may be redone for cheaper settings when live recall is
comfortably above the target; a younger one is left alone (it was measured on this data)."""
ESCALATION_WINDOW = 32
MIN_ESCALATION = 640
"""The least second-pass ``ef_search`` a calibration chooses (see _min_escalation)."""
CALIBRATION_QUERIES = 128
"""The most recent distinct real queries a calibration measures on."""
BACKGROUND_PACE = 0.25
"""Share of the time an automatic (background) calibration keeps working: after each query
it measured it pauses three times as long, so it never takes over a busy server."""
GROWTH_FACTOR = 1.5
BUDGET_BURST_SECONDS = 0.25
"""The CPU budget is a token bucket: it refills at DOCSTORE_SEARCH_RECALL_BUDGET seconds per
second and holds at most this much, so time the store spends idle is not saved up and spent
in a burst when the load returns."""
"""Exact re-runs a new store may spend before the budget's share of elapsed time applies."""
_UNREADABLE = {"42501"}  # insufficient_privilege (an undefined table is a SchemaError)
CALIBRATION_LOCK_KEY = 0x646F6373_63616C69 & 0x7FFFFFFFFFFFFFFF  # "docscali"

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``, called while a calibration runs."""


_LOAD = """
SELECT c.calibration::text AS calibration,
       (SELECT reltuples FROM pg_class WHERE oid = 'documents'::regclass) AS table_rows
  FROM (SELECT 1) one
  LEFT JOIN docstore_search_calibration c ON c.metric = $1
"""
_SAVE = """
INSERT INTO docstore_search_calibration (metric, calibration) VALUES ($1, $2::jsonb)
ON CONFLICT (metric) DO UPDATE SET calibration = excluded.calibration, updated_at = now()
"""
_SAVE_QUERIES = """
WITH added AS (
  INSERT INTO docstore_search_queries (metric, embedding)
  SELECT $1, q FROM unnest($2::vector[]) AS q
  RETURNING id)
DELETE FROM docstore_search_queries
 WHERE id <= (SELECT id FROM docstore_search_queries ORDER BY id DESC OFFSET $3 LIMIT 1)
"""
_RECENT = """
SELECT embedding FROM docstore_search_queries WHERE metric = $1 ORDER BY id DESC LIMIT $2
"""
_SAMPLE_IDS = """
SELECT d.embedding FROM documents d
 WHERE d.id = ANY($1::bigint[]) AND d.embedding IS NOT NULL
"""
_ID_RANGE = "SELECT min(id) AS lo, max(id) AS hi, count(*) FILTER (WHERE true) AS n FROM documents"


class SearchTuner:
    """Calibration, recent queries and live recall of one store (see the module docstring)."""

    def __init__(self, store: SearchDatabase) -> None:
        self._store = store
        settings = store.settings
        self.target = settings.search_target_recall
        self._sample_rate = settings.search_recall_sample
        self._budget = settings.search_recall_budget
        self._keep = settings.search_keep_queries
        self._cache: dict[str, tuple[float, Calibration | None, float]] = {}
        self._recent: dict[str, collections.deque[np.ndarray]] = {}
        self._since_calibration: collections.Counter[str] = collections.Counter()
        self._window: collections.deque[float] = collections.deque(maxlen=RECALL_WINDOW)
        self._tuned: collections.deque[float] = collections.deque(maxlen=RECALL_WINDOW)
        """Recalls of searches on calibrated settings since the last calibration: what the
        reaction (recalibrate up or down) looks at."""
        self._tokens = BUDGET_BURST_SECONDS
        self._refilled = time.monotonic()
        self._rerun: asyncio.Task[None] | None = None
        self._calibrating: asyncio.Task[Any] | None = None
        self._last_auto = -RECALIBRATE_SECONDS
        self._lock = asyncio.Lock()
        self._unreadable_logged = False
        self._escalations: collections.deque[bool] = collections.deque(maxlen=ESCALATION_WINDOW)

    # -- the calibration in force --------------------------------------------------------------
    async def calibration(self, metric: str = "cosine") -> Calibration | None:
        """The stored calibration of ``metric`` (cached for :data:`CACHE_SECONDS`), or None.

        Looking it up may start a background recalibration when the table has grown or
        shrunk by half since.
        """
        now = time.monotonic()
        cached = self._cache.get(metric)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        try:
            row = await self._store.replica.fetchrow(_LOAD, metric)
        except (QueryError, SchemaError) as exc:
            if isinstance(exc, QueryError) and exc.sqlstate not in _UNREADABLE:
                raise
            # a schema older than migration 5 (a read-only store does not upgrade it), or a
            # role without SELECT on it: search with the defaults, and say so once
            if not self._unreadable_logged:
                logger.warning(
                    "search calibration unreadable (%s): ANN searches use the defaults", exc
                )
                self._unreadable_logged = True
            self._cache[metric] = (now, None, -1.0)
            return None
        found = None
        if row is not None and row["calibration"] is not None:
            found = Calibration.model_validate_json(row["calibration"])
        rows = float(row["table_rows"]) if row is not None else -1.0
        self._cache[metric] = (now, found, rows)
        if found is not None and _grown(found.table_rows, rows):
            self._auto(metric, f"the table has {rows:,.0f} rows, {found.table_rows:,} then")
        return found

    def forget(self) -> None:
        """Drop the cached calibrations (the next search reads them again)."""
        self._cache.clear()

    def _remember(self, calibration: Calibration) -> None:
        self._cache[calibration.metric] = (time.monotonic(), calibration, calibration.table_rows)

    # -- calibrating ------------------------------------------------------------------------
    async def calibrate(
        self,
        metric: str = "cosine",
        *,
        target: float | None = None,
        query_vectors: Sequence[Any] | None = None,
        sample: int = PROBES,
        progress: Progress | None = None,
        pace: float | None = None,
    ) -> Calibration:
        """Measure and store the cheapest ANN settings meeting the recall target (see
        :mod:`docstore.search.tuning`); returns what was stored.

        Queries: ``query_vectors`` if given; else the :data:`CALIBRATION_QUERIES` most recent
        distinct real queries of this metric (this store's and those stored by any process)
        when there are at least :data:`MIN_RECENT`; else ``sample`` probes made from stored
        vectors. ``pace`` (0–1): work only that share of the time, pausing between queries
        (background calibrations), instead of running flat out.
        """
        store = self._store
        mt = queries.metric(metric)
        goal = self.target if target is None else _check_target(target)
        index = await store.vector_index(mt.name)
        if index is None:
            raise SchemaError(
                f"no HNSW index for {mt.name} to calibrate: "
                f"await store.create_vector_index({mt.name!r})"
            )
        async with self._lock:
            started = time.perf_counter()
            vectors, source = await self._calibration_queries(mt.name, query_vectors, sample)
            if len(vectors) < 2:
                raise ValidationError(
                    "calibration needs at least two query vectors or two stored embeddings",
                    field="query_vectors",
                )
            oversample = store.settings.search_oversample
            truths = await self._truths(vectors, mt.name, progress, pace)
            trials, latency = await self._trials(
                vectors, truths, mt.name, oversample, progress, pace
            )
            exact_ms = await self._exact_latency(vectors[:5], mt.name)
            choose = functools.partial(
                choose_settings,
                trials,
                latency,
                target=goal,
                min_escalation=_min_escalation(trials),
                net=NET_PROBES if source == "probes" else NET_QUERIES,
            )
            choice = choose(floor=SELECTION_FLOOR)
            if not choice.met_target:  # this index cannot keep every query at 0.9
                choice = choose(floor=RECALL_FLOOR)
            table_rows = await store.replica.fetchval(
                "SELECT reltuples FROM pg_class WHERE oid = 'documents'::regclass"
            )
            calibration = Calibration(
                metric=mt.name,
                target_recall=goal,
                ef_search=choice.ef_search,
                escalation_ef_search=choice.escalation_ef_search,
                escalate_below=choice.escalate_below,
                expected_recall=choice.expected_recall,
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
            if not store.read_only:
                await store.execute(_SAVE, mt.name, calibration.model_dump_json())
            self._remember(calibration)
            self._since_calibration[mt.name] = 0
            self._tuned.clear()
            self._escalations.clear()
            level = logging.INFO if choice.met_target else logging.WARNING
            logger.log(
                level,
                "search calibrated (%s, %d %s): ef_search %d%s, recall %.3f (target %.2f)%s",
                mt.name,
                len(vectors),
                source,
                choice.ef_search,
                f", {choice.escalation_ef_search} below spread {choice.escalate_below:.4g}"
                f" ({choice.escalation_rate:.0%})"
                if choice.escalation_ef_search
                else "",
                choice.expected_recall,
                goal,
                "" if choice.met_target else " — target not met: the index cannot reach it",
            )
            return calibration

    async def _calibration_queries(
        self, metric: str, given: Sequence[Any] | None, sample: int
    ) -> tuple[list[np.ndarray], QuerySource]:
        store = self._store
        if given is not None:
            from docstore.models import query_vector

            return [query_vector(q, store.embedding_dim) for q in given], "given"
        recent = list(self._recent.get(metric, ()))
        if self._keep and not store.read_only:
            if recent:
                encoded = [EncodedVector(encode_vector(v)) for v in recent]
                await store.execute(_SAVE_QUERIES, metric, encoded, STORED_QUERIES)
                self._recent[metric].clear()  # stored: not again with the next calibration
            rows = await store.fetch(_RECENT, metric, RECENT_QUERIES)
            recent = [np.asarray(r["embedding"], dtype=np.float32) for r in rows]
        distinct = list({v.tobytes(): v for v in recent}.values())[:CALIBRATION_QUERIES]
        if len(distinct) >= MIN_RECENT:
            return distinct, "recent queries"
        stored = await self._sample_stored(3 * sample)
        if len(stored) < 2:
            return list(stored), "probes"
        return list(probe_vectors(np.stack(stored), sample, seed=len(stored))), "probes"

    async def _sample_stored(self, n: int) -> list[np.ndarray]:
        """About ``n`` stored embeddings at random ids (no full scan of the table)."""
        store = self._store
        span = await store.replica.fetchrow(_ID_RANGE)
        if span is None or span["lo"] is None:
            return []
        lo, hi = int(span["lo"]), int(span["hi"])
        rng = np.random.default_rng(hi)
        picked: list[np.ndarray] = []
        for _ in range(4):
            ids = rng.integers(lo, hi + 1, size=max(n * 2, 16)).tolist()
            rows = await store.replica.fetch(_SAMPLE_IDS, ids)
            picked += [np.asarray(r["embedding"], dtype=np.float32) for r in rows]
            if len(picked) >= n:
                break
        return [v for v in picked if float(np.linalg.norm(v)) > 0][:n]

    async def _truths(
        self,
        vectors: list[np.ndarray],
        metric: str,
        progress: Progress | None,
        pace: float | None,
    ) -> list[list[int]]:
        """Exact top-k ids of each vector (half-precision scan + exact re-rank), on up to
        half the pool's connections (one when paced)."""
        store = self._store
        limit = 1 if pace else max(1, (store.settings.pool_max_size - 2) // 2)
        gate = asyncio.Semaphore(limit)  # leave the callers connections
        done = 0

        async def one(vector: np.ndarray) -> list[int]:
            nonlocal done
            async with gate:
                started = time.perf_counter()
                ids = await self.truth(vector, metric, CALIBRATION_K)
                await _pause(time.perf_counter() - started, pace)
            done += 1
            if progress is not None:
                progress("exact top-10", done, len(vectors))
            return ids

        return list(await asyncio.gather(*(one(v) for v in vectors)))

    async def truth(
        self,
        vector: np.ndarray,
        metric: str,
        limit: int,
        flt: Mapping[str, Any] | None = None,
    ) -> list[int]:
        """The exact top ``limit`` ids: every row in scope ranked on ``embedding_half`` (read
        from the row itself, no TOAST), the best ``max(4 × limit, 40)`` re-ranked on the
        full-precision vectors — exact unless half precision reorders a document from outside
        the first 4k into the top k."""
        store = self._store
        sql, params = queries.vector_search_sql(
            vector,
            dim=store.embedding_dim,
            metric_name=metric,
            limit=limit,
            filter=flt,
            candidates=max(4 * limit, 40),
            candidate_source="halfvec",
        )
        # ORDER BY embedding_half is no index's expression: a scan of the scope, as wanted
        rows = await store.run(_fetch(sql, params), stateless=True, read=True)
        return [r["id"] for r in rows]

    async def _trials(
        self,
        vectors: list[np.ndarray],
        truths: list[list[int]],
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
                found = [r["id"] for r in rows]
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
                v, dim=store.embedding_dim, metric_name=metric, limit=CALIBRATION_K
            )
            started = time.perf_counter()
            await store.run(_fetch(sql, params), stateless=True, read=True)
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times) if times else None

    # -- the second pass ----------------------------------------------------------------------
    def note_escalation(self, escalated: bool) -> None:
        """A first ANN pass came back flat (``escalated``) or not."""
        self._escalations.append(escalated)

    def mostly_escalating(self) -> bool:
        """Whether most of the last :data:`ESCALATION_WINDOW` first passes needed the second:
        the queries are harder than the calibration's (questions far from every document),
        so searches go straight to the second pass — one pass instead of two — until the
        next calibration, on those queries, sets the levels for them."""
        window = self._escalations
        return len(window) >= ESCALATION_WINDOW // 2 and sum(window) * 2 > len(window)

    # -- what searches report ---------------------------------------------------------------
    def observe(
        self,
        vector: np.ndarray,
        metric: str,
        limit: int,
        flt: Mapping[str, Any] | None,
        found: list[int],
        *,
        calibrated: bool = True,
    ) -> None:
        """Called by every ANN search after it returned (cheap; never waits).
        ``calibrated``: it ran on the calibration's settings (not on explicit ones), so its
        recall may move them."""
        if self._keep:
            self._recent.setdefault(metric, collections.deque(maxlen=RECENT_QUERIES)).append(vector)
            self._since_calibration[metric] += 1
            cached = self._cache.get(metric)
            if (
                self._since_calibration[metric] >= MIN_RECENT
                and cached is not None
                and cached[1] is not None
                and cached[1].query_source == "probes"
            ):
                self._auto(metric, f"{MIN_RECENT} real queries to calibrate on")
        if self._sample_rate <= 0 or random.random() >= self._sample_rate:
            return
        if self._rerun is not None and not self._rerun.done():
            return
        now = time.monotonic()
        self._tokens = min(
            BUDGET_BURST_SECONDS, self._tokens + self._budget * (now - self._refilled)
        )
        self._refilled = now
        if self._tokens <= 0:
            return
        if not self._store.has_idle_connection(read=True):
            return
        self._rerun = asyncio.get_running_loop().create_task(
            self._measure(vector, metric, limit, flt, found, calibrated)
        )

    async def _measure(
        self,
        vector: np.ndarray,
        metric: str,
        limit: int,
        flt: Mapping[str, Any] | None,
        found: list[int],
        calibrated: bool,
    ) -> None:
        started = time.monotonic()
        try:
            truth = await self.truth(vector, metric, limit, flt)
        except Exception as exc:  # a background measurement never fails a caller
            logger.debug("live recall re-run failed: %s", type(exc).__name__)
            return
        finally:
            self._tokens -= time.monotonic() - started
        if not truth:
            return
        recall = recall_at(found[: len(truth)], truth)
        self._window.append(recall)
        if calibrated:
            self._tuned.append(recall)
            self._react(metric)

    def _react(self, metric: str) -> None:
        n = len(self._tuned)
        if n < MIN_RECALL_SAMPLES:
            return
        estimate = sum(self._tuned) / n
        if estimate < self.target:
            self._auto(metric, f"live recall {estimate:.3f} under the target {self.target}")
        elif n >= RECALL_WINDOW // 2 and estimate >= self.target + (1 - self.target) / 2:
            cached = self._cache.get(metric)
            current = cached[1] if cached is not None else None
            if (
                current is not None
                and current.escalation_rate > 0
                and (datetime.now(UTC) - current.calibrated_at).total_seconds() > SETTLED_SECONDS
            ):
                self._auto(metric, f"live recall {estimate:.3f}, comfortably above the target")

    def recall(self, metric: str = "cosine") -> SearchRecall:
        """The live recall estimate and the ``metric`` calibration in force."""
        n = len(self._window)
        estimate = sum(self._window) / n if n else None
        cached = self._cache.get(metric)
        calibration = cached[1] if cached else None
        return SearchRecall(
            target=self.target,
            estimate=estimate,
            samples=n,
            lowest=min(self._window) if n else None,
            below_target=estimate is not None
            and n >= MIN_RECALL_SAMPLES
            and estimate < self.target,
            ef_search=calibration.ef_search if calibration else None,
            escalation_ef_search=calibration.escalation_ef_search if calibration else None,
            calibration_source=calibration.query_source if calibration else None,
            calibrated_at=calibration.calibrated_at if calibration else None,
        )

    # -- background work -------------------------------------------------------------------
    def _auto(self, metric: str, why: str) -> None:
        now = time.monotonic()
        if self._calibrating is not None and not self._calibrating.done():
            return
        if now - self._last_auto < RECALIBRATE_SECONDS:
            return
        self._last_auto = now
        self._calibrating = asyncio.get_running_loop().create_task(self._recalibrate(metric, why))

    async def _recalibrate(self, metric: str, why: str) -> None:
        logger.info("recalibrating search (%s): %s", metric, why)
        try:
            async with self._store.try_lock(CALIBRATION_LOCK_KEY) as locked:
                if locked:
                    await self.calibrate(metric, pace=BACKGROUND_PACE)
        except Exception as exc:  # background: logged, never raised into a search
            logger.warning("background search calibration failed: %s", exc)

    async def wait(self) -> None:
        """Wait for background work in flight (a recalibration, a live-recall re-run)."""
        for task in (self._calibrating, self._rerun):
            if task is not None:
                with contextlib.suppress(Exception):
                    await task

    async def aclose(self) -> None:
        """Stop background work (the store is closing)."""
        for task in (self._calibrating, self._rerun):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


def _grown(then: int, now: float) -> bool:
    if then <= 0 or now <= 0:
        return then <= 0 < now and now >= 1000
    return now > then * GROWTH_FACTOR or now < then / GROWTH_FACTOR


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


def _check_target(target: float) -> float:
    if isinstance(target, bool) or not isinstance(target, int | float) or not 0 < target <= 1:
        raise ValidationError("the recall target must be a number in (0, 1]", field="target")
    return float(target)


def _fetch(sql: str, params: list[Any]) -> Callable[[asyncpg.Connection], Awaitable[Any]]:
    async def work(conn: asyncpg.Connection) -> Any:
        return await conn.fetch(sql, *params)

    return work


__all__ = ["Calibration", "SearchRecall", "SearchTuner"]
