"""``store.tuner``: the database's calibration, recent queries, and live recall.

One :class:`SearchTuner` per store. It

* **loads the calibration** of a metric from ``docstore_search_calibration`` (cached for
  :data:`CACHE_SECONDS`, so a calibration made by another process or on the primary reaches
  this one within that time);
* **calibrates** (:meth:`SearchTuner.calibrate`; the measuring is
  :mod:`docstore.search.calibration`, the choice :mod:`docstore.search.tuning`): exact ground
  truth for the calibration queries, ANN trials over ``ef_search``, the cheapest policy
  meeting the recall target; stored in the database for every process and replica (kept in
  memory only on a read-only store, and in force there until a writer stores a newer one);
* **keeps recent queries**: the last :data:`RECENT_QUERIES` query vectors of ANN searches, in
  memory (``DOCSTORE_SEARCH_KEEP_QUERIES=false`` turns it off), written to
  ``docstore_search_queries`` when a calibration runs (each write first trims the table, all
  metrics together, to its newest :data:`STORED_QUERIES` rows, then adds up to
  :data:`RECENT_QUERIES`: at most their sum), so ``docstore index calibrate`` in another
  process calibrates on real queries too (``evaluate_recall``'s searches are not kept);
* **measures live recall** (:mod:`docstore.search.live_recall`): a sampled share
  (``DOCSTORE_SEARCH_RECALL_SAMPLE``) of ANN searches is re-run exactly in the background —
  never on the caller's path, one at a time, only when the pool has an idle connection, and
  within a CPU budget (``DOCSTORE_SEARCH_RECALL_BUDGET``, the share of wall-clock time those
  re-runs may take, as a token bucket) — and the last :data:`RECALL_WINDOW` results make a
  rolling recall estimate (:meth:`SearchTuner.recall`);
* **recalibrates in the background** when the estimate falls under the target, when it is
  comfortably above it (cheaper settings), when a probe calibration can be redone on
  :data:`MIN_RECENT` real queries, and when the table has grown by half or shrunk by a third
  since the calibration (:mod:`docstore.search.growth`: live rows counted in a sample of pages,
  in the background when the pool has an idle connection, so a bulk load is seen without
  waiting for ANALYZE). At most one calibration runs at
  a time (an advisory lock across processes), and an automatic one starts
  :data:`RECALIBRATE_SECONDS` after the last ended at the earliest — twice that after one
  failed, four times after two failed in a row, up to :data:`MAX_BACKOFF_SECONDS`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from docstore.codecs import EncodedVector, encode_vector
from docstore.core.surface import own_reads
from docstore.embeddings import query_vector
from docstore.errors import DocstoreError, QueryError, SchemaError, ValidationError
from docstore.metrics import SearchRecall
from docstore.models import finite_number
from docstore.search import growth, queries
from docstore.search.calibration import MIN_ESCALATION, Calibrator, Progress, TableChangedError
from docstore.search.live_recall import (
    BUDGET_BURST_SECONDS,
    MIN_RECALL_SAMPLES,
    RECALL_WINDOW,
    LiveRecall,
)
from docstore.search.tuning import Calibration, QuerySource, Ranked, probe_vectors, summary
from docstore.transient import describe

if TYPE_CHECKING:
    from docstore.search.surface import SearchDatabase

logger = logging.getLogger("docstore")

CACHE_SECONDS = 30.0
RECENT_QUERIES = 256
STORED_QUERIES = 512
MIN_RECENT = 64
"""Real queries needed before a calibration uses them instead of probes."""
PROBES = 100
RECALIBRATE_SECONDS = 60.0
MAX_BACKOFF_SECONDS = 960.0
"""After automatic calibrations that failed in a row — a table that kept changing through each
one's measurements under a long bulk load, a connection limit — the wait before the next
doubles from :data:`RECALIBRATE_SECONDS` up to this; a success sets it back."""
SETTLED_SECONDS = 3600.0
"""A calibration this old (or older) may be redone for cheaper settings when live recall is
comfortably above the target; a younger one is left alone (it was measured on this data)."""
ESCALATION_WINDOW = 32
CALIBRATION_QUERIES = 128
"""The most recent distinct real queries a calibration measures on."""
BACKGROUND_PACE = 0.25
"""Share of the time an automatic (background) calibration keeps working: after each query
it measured it pauses three times as long, so it never takes over a busy server."""
_UNREADABLE = {"42501"}  # insufficient_privilege (an undefined table is a SchemaError)
CALIBRATION_LOCK_KEY = 0x646F6373_63616C69 & 0x7FFFFFFFFFFFFFFF  # "docscali"

_LOAD = """
SELECT c.calibration FROM (SELECT 1) one
  LEFT JOIN docstore_search_calibration c ON c.metric = $1
"""
_SAVE = """
INSERT INTO docstore_search_calibration (metric, calibration) VALUES ($1, $2::jsonb)
ON CONFLICT (metric) DO UPDATE SET calibration = excluded.calibration, updated_at = now()
"""
_DISCARD = "DELETE FROM docstore_search_calibration WHERE metric = $1"
# What create_vector_index() stores when asked to calibrate a table with fewer than two
# embeddings: no settings, but the lookup then calibrates in the background once the table
# has grown (as from a calibration made at 0 rows: growth.grown)
_DEFERRED = '{"deferred": "fewer than two stored embeddings when the index was built"}'
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


@dataclasses.dataclass
class _Spacing:
    """When the next automatic calibration may start: :data:`RECALIBRATE_SECONDS` after the
    last automatic one ended (or began, while it runs), doubled for each that failed in a row
    (up to :data:`MAX_BACKOFF_SECONDS`)."""

    clock: Callable[[], float] = time.monotonic
    last: float = -math.inf
    failures: int = 0

    def interval(self) -> float:
        doubled = RECALIBRATE_SECONDS * 2.0 ** min(self.failures, 16)
        return max(min(doubled, MAX_BACKOFF_SECONDS), RECALIBRATE_SECONDS)

    def start(self) -> bool:
        """Whether one may start now (then counted as started)."""
        now = self.clock()
        if now - self.last < self.interval():
            return False
        self.last = now
        return True

    def ended(self, *, failed: bool) -> None:
        """One ended (a success resets :attr:`failures` in ``calibrate``): the interval counts
        from now — a paced calibration that failed after longer than the interval would
        otherwise start again at once."""
        self.last = self.clock()
        self.failures += int(failed)


class _Unstored:
    """A read-only store's own calibrations, which it cannot store. Each is in force until the
    stored calibration (its row's JSON, or None: none, or unreadable) differs from the one
    stored when it was made — a writer stored a newer one, or deferred one for a new index:
    the rows are compared, never the clocks of different hosts."""

    def __init__(self) -> None:
        self._own: dict[str, tuple[Calibration, Any]] = {}

    def keep(self, calibration: Calibration, stored: Any) -> None:
        self._own[calibration.metric] = (calibration, stored)

    def pick(self, metric: str, stored: Any) -> Calibration | None:
        """The store's own calibration while ``stored`` is the row it was made beside."""
        own, then = self._own.get(metric, (None, None))
        if own is not None and then != stored:
            del self._own[metric]
            return None
        return own


class SearchTuner:
    """Calibration, recent queries and live recall of one store (see the module docstring)."""

    def __init__(self, store: SearchDatabase) -> None:
        self._store = store
        settings = store.settings
        self.target = settings.search_target_recall
        self._keep = settings.search_keep_queries
        self._cache: dict[str, tuple[float, Calibration | None]] = {}
        self._recent: dict[str, collections.deque[np.ndarray]] = {}
        self._since_calibration: collections.Counter[str] = collections.Counter()
        self._calibrator = Calibrator(store)
        self._reads = own_reads(store)
        self._live = LiveRecall(store, self._calibrator.truth, self._react)
        self._calibrating: asyncio.Task[Any] | None = None
        self._checking: asyncio.Task[Any] | None = None  # the growth check (_check)
        self._spacing = _Spacing()
        self._lock = asyncio.Lock()
        self._unreadable_logged = False
        self._unstored = _Unstored()
        self._escalations: collections.deque[bool] = collections.deque(maxlen=ESCALATION_WINDOW)
        self._discarded = 0  # discard() calls: a calibration measuring across one is not saved

    # -- the calibration in force --------------------------------------------------------------
    async def calibration(self, metric: str = "cosine") -> Calibration | None:
        """The stored calibration of ``metric`` (cached for :data:`CACHE_SECONDS`), or None
        (a read-only store: its own, until a newer one is stored).

        Looking it up may start a background recalibration when the table has grown by half
        or shrunk by a third since.
        """
        now = time.monotonic()
        cached = self._cache.get(metric)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        stored = await self._stored(metric)
        deferred = stored is not None and "deferred" in stored
        found = None if stored is None or deferred else Calibration.model_validate(stored)
        if (own := self._unstored.pick(metric, stored)) is not None:
            found, deferred = own, False
        self._cache[metric] = (now, found)
        idle = self._store.has_idle_connection(read=True)
        if (found is not None or deferred) and idle and _done(self._checking):
            self._checking = asyncio.get_running_loop().create_task(
                self._check(metric, found, deferred)
            )
        return found

    async def _stored(self, metric: str) -> Any:
        """The stored calibration row's JSON (decoded by the pools' jsonb codec), or None."""
        try:
            return (await own_reads(self._store).fetchrow(_LOAD, metric))["calibration"]
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
            return None

    async def defer(self, metric: str) -> None:
        """Record that ``metric`` is to be calibrated in the background once the table has
        :data:`~docstore.search.growth.DEFERRED_ROWS` (the index was built on fewer than two
        embeddings); searches use the defaults until then (or call :meth:`calibrate`)."""
        if not self._store.read_only:
            await self._store.execute(_SAVE, metric, _DEFERRED)
        self._cache.pop(metric, None)

    async def discard(self, metric: str, conn: Any = None) -> None:
        """Delete ``metric``'s stored calibration (on ``conn``, else the store's): the index it
        measured is gone (dropped, or rebuilt as another graph), and its settings would be
        applied to the next one."""
        self._discarded += 1
        if not self._store.read_only:
            await (conn or self._store).execute(_DISCARD, metric)
        self._cache.pop(metric, None)
        self._unstored = _Unstored()

    def _remember(self, calibration: Calibration) -> None:
        self._cache[calibration.metric] = (time.monotonic(), calibration)

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
        store, discarded = self._store, self._discarded
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
            calibration = await self._calibrator.measure(
                mt.name,
                vectors,
                source,
                target=goal,
                progress=progress,
                pace=pace,
                started=started,
            )
            with contextlib.suppress(DocstoreError):  # what later estimates compare with
                rows = await growth.estimate(self._reads, distributed=store.distributed)
                update = {"table_estimate": rows.rows, "embedded_estimate": rows.embedded}
                calibration = calibration.model_copy(update=update)
            if discarded != self._discarded:  # measured a graph dropped meanwhile
                raise TableChangedError("the HNSW index was rebuilt while it was calibrated")
            if not store.read_only:
                await store.execute(_SAVE, mt.name, calibration.model_dump_json())
            else:  # in force here until the stored one changes
                self._unstored.keep(calibration, await self._stored(mt.name))
            self._spacing.failures = 0
            self._remember(calibration)
            self._since_calibration[mt.name] = 0
            self._live.tuned.clear()
            self._escalations.clear()
            logger.log(
                logging.INFO if calibration.met_target else logging.WARNING,
                "search calibrated (%s, %d %s): %s",
                mt.name,
                len(vectors),
                source,
                summary(calibration),
            )
            return calibration

    async def _calibration_queries(
        self, metric: str, given: Sequence[Any] | None, sample: int
    ) -> tuple[list[np.ndarray], QuerySource]:
        store = self._store
        if given is not None:
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
        stored = await self._calibrator.sample_stored(3 * sample)
        if len(stored) < 2:
            return list(stored), "probes"
        return list(probe_vectors(np.stack(stored), sample, seed=len(stored))), "probes"

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
        found: Ranked,
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
        self._live.sample(vector, metric, limit, flt, found, calibrated)

    def _react(self, metric: str) -> None:
        """After a live-recall measurement on calibrated settings: recalibrate when the
        estimate is under the target, or comfortably above it on a settled calibration."""
        n = len(self._live.tuned)
        if n < MIN_RECALL_SAMPLES:
            return
        estimate = sum(self._live.tuned) / n
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

    async def current_recall(self, metric: str = "cosine") -> SearchRecall:
        """:meth:`recall`, with the stored calibration read first when this process has not
        read it yet: ``health()`` and ``metrics()`` of a new process (``docstore health``,
        ``docstore stats``) report the calibration every process searches with, not "not
        calibrated". A calibration that cannot be read is reported as absent."""
        if metric not in self._cache:
            with contextlib.suppress(DocstoreError):
                await self.calibration(metric)
        return self.recall(metric)

    def recall(self, metric: str = "cosine") -> SearchRecall:
        """The live recall estimate and the ``metric`` calibration in force
        (:meth:`LiveRecall.snapshot <docstore.search.live_recall.LiveRecall.snapshot>`)."""
        cached = self._cache.get(metric)
        return self._live.snapshot(self.target, cached[1] if cached else None)

    # -- background work -------------------------------------------------------------------
    def _auto(self, metric: str, why: str) -> None:
        if not _done(self._calibrating) or not self._spacing.start():
            return
        self._calibrating = asyncio.get_running_loop().create_task(self._recalibrate(metric, why))

    async def _check(self, metric: str, found: Calibration | None, deferred: bool) -> None:
        """The growth check (:func:`docstore.search.growth.stale`), in the background: its row
        count is not on a search's path; a calibration if it finds a reason."""
        distributed = self._store.distributed
        why = await growth.stale(self._reads, found, deferred, distributed=distributed)
        if why is not None:
            self._auto(metric, why)

    async def _recalibrate(self, metric: str, why: str) -> None:
        logger.info("recalibrating search (%s): %s", metric, why)
        try:
            async with self._store.try_lock(CALIBRATION_LOCK_KEY) as locked:
                if locked:
                    await self.calibrate(metric, pace=BACKGROUND_PACE)
            self._spacing.ended(failed=False)
        except Exception as exc:  # background: logged, never raised into a search
            self._spacing.ended(failed=True)
            logger.warning(
                "background search calibration failed: %s; the next in %.0f s at the earliest",
                describe(exc),
                self._spacing.interval(),
            )

    async def wait(self) -> None:
        """Wait for background work in flight (a recalibration, a live-recall re-run)."""
        for slot in ("_checking", "_calibrating"):  # in order: a check may start a calibration
            task = getattr(self, slot)
            if task is not None:
                with contextlib.suppress(Exception):
                    await task
        if self._live.task is not None:
            with contextlib.suppress(Exception):
                await self._live.task

    async def aclose(self) -> None:
        """Stop background work (the store is closing)."""
        for task in (self._checking, self._calibrating, self._live.task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


def _done(task: asyncio.Task[Any] | None) -> bool:
    return task is None or task.done()


def _check_target(target: float) -> float:
    return finite_number(target, "target", bounds=(0, 1), open_low=True, name="the recall target")


__all__ = [
    "BUDGET_BURST_SECONDS",
    "MIN_ESCALATION",
    "MIN_RECALL_SAMPLES",
    "RECALL_WINDOW",
    "Calibration",
    "Progress",
    "SearchRecall",
    "SearchTuner",
]
