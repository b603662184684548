"""Live recall: how many of the true neighbours the ANN searches of this store find.

A sampled share (``DOCSTORE_SEARCH_RECALL_SAMPLE``) of ANN searches is re-run exactly in the
background — never on the caller's path, one at a time, only when the pool has an idle
connection, and within a CPU budget (``DOCSTORE_SEARCH_RECALL_BUDGET``, the share of
wall-clock time those re-runs may take, as a token bucket) — and the last
:data:`RECALL_WINDOW` results make a rolling recall estimate. What to do about the estimate
(recalibrate) is :mod:`docstore.search.tuner`'s decision: :class:`LiveRecall` tells it after
each measurement of a search that ran on the calibrated settings.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from docstore.metrics import SearchRecall
from docstore.search.tuning import Calibration, Ranked, recall_at

if TYPE_CHECKING:
    from docstore.search.surface import SearchDatabase

logger = logging.getLogger("docstore")

RECALL_WINDOW = 200
MIN_RECALL_SAMPLES = 30
"""Measurements needed before the estimate counts (as under the target, or to react to)."""
BUDGET_BURST_SECONDS = 0.25
"""The CPU budget is a token bucket: it refills at DOCSTORE_SEARCH_RECALL_BUDGET seconds per
second and holds at most this much, so time the store spends idle is not saved up and spent
in a burst when the load returns."""

Truth = Callable[[np.ndarray, str, int, Mapping[str, Any] | None], Awaitable[Ranked]]
"""``truth(vector, metric, limit, filter)``: the exact top ``limit`` as ``(id, distance)``."""


class LiveRecall:
    """Sampled exact re-runs of one store's ANN searches and the rolling recall they give.

    ``truth`` computes a search's exact answer; ``on_calibrated(metric)`` is called after each
    measurement of a search that ran on the calibrated settings (its recall is in
    :attr:`tuned`).
    """

    def __init__(
        self, store: SearchDatabase, truth: Truth, on_calibrated: Callable[[str], None]
    ) -> None:
        settings = store.settings
        self._store = store
        self._truth = truth
        self._on_calibrated = on_calibrated
        self._sample_rate = settings.search_recall_sample
        self._budget = settings.search_recall_budget
        self.window: collections.deque[float] = collections.deque(maxlen=RECALL_WINDOW)
        """Recalls of the last measured searches, whatever settings they ran on."""
        self.tuned: collections.deque[float] = collections.deque(maxlen=RECALL_WINDOW)
        """Recalls of searches on calibrated settings since the last calibration: what the
        reaction (recalibrate up or down) looks at."""
        self._tokens = BUDGET_BURST_SECONDS
        self._refilled = time.monotonic()
        self.task: asyncio.Task[None] | None = None
        """The re-run in flight, if any."""

    def sample(
        self,
        vector: np.ndarray,
        metric: str,
        limit: int,
        flt: Mapping[str, Any] | None,
        found: Ranked,
        calibrated: bool,
    ) -> None:
        """Maybe start a background exact re-run of a search that returned ``found`` (cheap;
        never waits): when it is sampled, no re-run is in flight, the budget has tokens left
        and the pool has an idle connection."""
        if self._sample_rate <= 0 or random.random() >= self._sample_rate:
            return
        if self.task is not None and not self.task.done():
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
        self.task = asyncio.get_running_loop().create_task(
            self._measure(vector, metric, limit, flt, found, calibrated)
        )

    async def _measure(
        self,
        vector: np.ndarray,
        metric: str,
        limit: int,
        flt: Mapping[str, Any] | None,
        found: Ranked,
        calibrated: bool,
    ) -> None:
        started = time.monotonic()
        try:
            truth = await self._truth(vector, metric, limit, flt)
        except Exception as exc:  # a background measurement never fails a caller
            logger.debug("live recall re-run failed: %s", type(exc).__name__)
            return
        finally:
            self._tokens -= time.monotonic() - started
        if not truth:
            return
        recall = recall_at(found[: len(truth)], truth)
        self.window.append(recall)
        if calibrated:
            self.tuned.append(recall)
            self._on_calibrated(metric)

    def snapshot(self, target: float, calibration: Calibration | None) -> SearchRecall:
        """The live recall estimate (every measured search) and ``calibration``, the one in
        force. ``below_target`` counts searches on the calibrated settings only (what
        recalibrates; not those with an explicit ``ef_search``)."""
        n, tuned = len(self.window), len(self.tuned)
        return SearchRecall(
            target=target,
            estimate=sum(self.window) / n if n else None,
            samples=n,
            lowest=min(self.window) if n else None,
            below_target=tuned >= MIN_RECALL_SAMPLES and sum(self.tuned) / tuned < target,
            ef_search=calibration.ef_search if calibration else None,
            escalation_ef_search=calibration.escalation_ef_search if calibration else None,
            calibration_source=calibration.query_source if calibration else None,
            calibrated_at=calibration.calibrated_at if calibration else None,
        )
