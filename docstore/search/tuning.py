"""ANN settings that meet a recall target on the data in front of them (pure: no database).

An HNSW search's recall depends on the data *and* the queries: the same ``ef_search`` gives
recall@10 1.000 for questions that sit next to a stored document and 0.86 for questions far
from every document (issue 14). So docstore measures instead of assuming:

1. **Calibration queries.** Recent real query vectors when the store has seen enough of them;
   before that, *probes* (:func:`probe_vectors`): points between a stored vector and another
   stored direction, at cosines from 0.3 to 0.95 to their base — not stored vectors, and
   spread from "a paraphrase of a document" to "a question far from everything".
2. **Trials.** Each calibration query's exact top ``k`` (the ground truth), then one ANN
   search per ``ef_search`` of :data:`EF_GRID`, recording its recall@k and its *spread*: the
   distance between the best and the :data:`SPREAD_RANK`-th candidate after the exact
   re-rank.
3. **The choice** (:func:`choose_settings`): the cheapest policy — a base ``ef_search``, and
   optionally a second, larger ``ef_search`` for queries whose spread is below a threshold —
   whose recall on the calibration queries meets the target (mean, with a margin for the
   sample's error) and leaves no query under :data:`RECALL_FLOOR`.

Why the spread: a graph search that ends in the wrong region returns a flat set of equally
mediocre candidates, while one that reached a query's neighbourhood finds a few clearly
better ones. On the real-text corpus (``../shared/corpora``, 200 real queries) every query
under 0.7 recall at ``ef_search`` 100 was among the 9 % with the smallest spread; searching
those again with a larger ``ef_search`` rescues them at a small cost, where raising
``ef_search`` for every query would cost every query. The threshold is measured in the same
units on the same data, so a query distribution of far-away questions simply escalates more.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np
from pydantic import BaseModel

EF_GRID: tuple[int, ...] = (20, 40, 64, 100, 160, 250, 400, 640, 1000)
"""``hnsw.ef_search`` values calibration tries (pgvector's maximum is 1,000)."""
SPREAD_RANK = 40
"""The spread of a search is the distance of this candidate (or the last) minus the best."""
RECALL_FLOOR = 0.7
"""No calibration query may end under this recall@k when any policy achieves it."""
THRESHOLD_SAFETY = 1.5
NET_PROBES = 0.03
"""Least share of probes a policy escalates: probes are synthetic, and real questions that
get lost in the graph are flatter than almost every probe (their spread is smaller: on the
real-text corpus the 5th-flattest of 100 probes escalates ~30 % of the real queries, on far
questions every one). A share of probes, not of real queries: set higher, the real queries
of such a corpus would mostly escalate and pay the second pass."""
SELECTION_FLOOR = 0.9
"""The lowest recall a calibration query may keep under the chosen policy, when some policy
achieves it: above :data:`RECALL_FLOOR`, so queries the sample did not contain stay above
that."""
NET_QUERIES = 0.05
"""Least share of real calibration queries a policy escalates (failures rarer than the
sample can show: 1 in 200 on the real-text corpus)."""
DEFAULT_TARGET = 0.98
CALIBRATION_K = 10
QuerySource = Literal["probes", "recent queries", "given"]


class Calibration(BaseModel):
    """ANN settings measured on this database's data, and how they were measured.

    Stored in the database (``docstore_search_calibration``), so every process and replica
    searches with them. ``ef_search`` is the first pass's ``hnsw.ef_search``; a search whose
    spread (:data:`SPREAD_RANK`) is under ``escalate_below`` runs again with
    ``escalation_ef_search``.
    """

    metric: str
    target_recall: float
    ef_search: int
    escalation_ef_search: int | None = None
    escalate_below: float | None = None
    """Spread threshold; None: never escalate."""
    expected_recall: float
    """Mean recall@k of the chosen policy on the calibration queries."""
    recall_error: float | None = None
    """One standard error of ``expected_recall`` (the queries are a sample): the target is met
    when the mean less this reaches it (None: stored by a docstore that did not keep it)."""
    lowest_recall: float
    escalation_rate: float
    """Share of the calibration queries that escalated."""
    expected_ms: float
    """Mean latency of the policy on the calibration queries (first pass + escalations)."""
    exact_ms: float | None = None
    """Median latency of the exact scan of the same queries, for comparison."""
    met_target: bool
    queries: int
    query_source: QuerySource
    table_rows: int
    table_estimate: float | None = None
    """The table's rows as :func:`docstore.search.growth.table_rows` estimated them when this
    was measured: later estimates are compared with it, so the sample's own bias cancels."""
    embedded_estimate: float | None = None
    """The same estimate's rows with an embedding, what later growth is measured in (a
    calibration stored without it, by an earlier docstore, is compared on all rows)."""
    calibrated_at: datetime
    seconds: float = 0.0
    """How long the calibration took."""


@dataclass(frozen=True)
class Trial:
    """One calibration query at one ``ef_search``: recall@k against the exact top k, and
    the spread of its candidates."""

    recall: float
    spread: float


@dataclass(frozen=True)
class Choice:
    """The policy :func:`choose_settings` picked."""

    ef_search: int
    escalation_ef_search: int | None
    escalate_below: float | None
    expected_recall: float
    lowest_recall: float
    escalation_rate: float
    expected_ms: float
    met_target: bool
    recall_error: float = 0.0
    """One standard error of ``expected_recall``."""


Ranked = Sequence[tuple[int, float]]
"""Rows of a search as ``(id, distance)``, best first (the distance as the server computed it
on the full-precision vectors)."""

TIE = 1e-9
"""Relative slack under which a found row's distance counts as equal to the k-th exact one.
Both sides come from one server expression on the same stored vectors, so rows with equal
vectors have bit-equal distances; the slack only absorbs the last bit."""


def recall_at(found: Ranked, truth: Ranked) -> float:
    """Share of the exact top k (``truth``) that the top k of ``found`` holds. A found row
    counts when it is one of ``truth``'s rows or as near as its k-th: where several rows tie
    at the k-th distance (duplicated vectors), the exact top k is one arbitrary pick among
    equals, and an ANN search that picked other equals lost nothing."""
    k = len(truth)
    if not k:
        return 1.0
    kth = truth[-1][1]
    slack = TIE * max(1.0, abs(kth))
    nearer = {i for i, d in truth if d < kth - slack}  # each must be found itself
    tied = k - len(nearer)  # the places equals may fill, in any pick
    rows = dict(found[:k])
    ties = sum(1 for i, d in rows.items() if i not in nearer and d <= kth + slack)
    return (len(nearer & rows.keys()) + min(ties, tied)) / k


def _error(recalls: np.ndarray) -> float:
    """One standard error of the mean recall (0 for a single query)."""
    n = len(recalls)
    return float(recalls.std(ddof=1)) / math.sqrt(n) if n > 1 else 0.0


def _meets(recalls: np.ndarray, target: float, floor: float) -> bool:
    """Mean recall at least ``target`` after one standard error (the calibration queries are
    a sample of what will be asked), and no query under ``floor``."""
    return float(recalls.mean()) - _error(recalls) >= target and float(recalls.min()) >= floor


def summary(c: Calibration) -> str:
    """What a calibration chose, for the log: its levels and recall, and :func:`shortfall`."""
    second = (
        f", {c.escalation_ef_search} below spread {c.escalate_below:.4g} ({c.escalation_rate:.0%})"
        if c.escalation_ef_search
        else ""
    )
    text = (
        f"ef_search {c.ef_search}{second}, recall {c.expected_recall:.3f}"
        f" (target {c.target_recall:g})"
    )
    return text if c.met_target else f"{text} — target not met: {shortfall(c)}"


def shortfall(c: Calibration, floor: float = RECALL_FLOOR) -> str:
    """Which of :func:`_meets`' conditions the chosen policy of a calibration that did not meet
    its target failed, with the figures: its mean recall itself, the mean less one standard
    error (:attr:`Calibration.recall_error`), or its worst query, under ``floor`` (an unmet
    calibration's last choice was made under :data:`RECALL_FLOOR`). Empty when it met it."""
    if c.met_target:
        return ""
    mean, target, error = c.expected_recall, c.target_recall, c.recall_error
    unmet = []
    if mean < target:
        unmet.append(f"mean recall {mean:.4f} is under {target:g}")
    elif error is not None and mean - error < target:
        unmet.append(
            f"mean recall {mean:.4f} less one standard error ({error:.4f} over {c.queries}"
            f" queries) is {mean - error:.4f}, under {target:g}"
        )
    if c.lowest_recall < floor:
        unmet.append(f"the worst query's recall {c.lowest_recall:.2f} is under the floor {floor:g}")
    if not unmet:  # stored by a docstore that kept no standard error
        unmet.append(f"mean recall less one standard error is under {target:g}")
    return "; ".join(unmet)


def choose_settings(
    trials: Mapping[int, Sequence[Trial]],
    latency_ms: Mapping[int, float],
    *,
    target: float,
    floor: float = RECALL_FLOOR,
    round_trip_ms: float = 0.0,
    min_escalation: int | None = None,
    net: float = 0.0,
) -> Choice:
    """The cheapest policy meeting ``target`` on the calibration queries.

    ``trials[ef][i]`` is query ``i`` searched with ``ef_search = ef``; ``latency_ms[ef]`` the
    typical latency of one such search. A policy is a base ``ef``, and optionally a larger
    ``ef`` for the queries whose base spread is under a threshold; an escalated query keeps
    the better of its two results (docstore merges both candidate sets). Cost is expected
    latency: base + escalation rate × (escalated search + ``round_trip_ms``).

    When no policy meets the target, the one with the highest mean recall (then the
    cheapest) is returned with ``met_target=False``: the best this index can do.
    ``min_escalation`` is the smallest second-pass ``ef`` allowed. ``net`` is the least
    share of the calibration queries a policy must escalate (those with the flattest
    candidates): a safety net for failures too rare to show in the sample — only a policy
    at the grid's largest ``ef`` may go without one.
    """
    grid = sorted(trials)
    if not grid:
        raise ValueError("no trials")
    n = len(trials[grid[0]])
    recall = {ef: np.array([t.recall for t in trials[ef]]) for ef in grid}
    best: tuple[float, Choice] | None = None
    fallback: tuple[tuple[float, float], Choice] | None = None

    def consider(choice: Choice, recalls: np.ndarray) -> None:
        nonlocal best, fallback
        choice = dataclasses.replace(choice, recall_error=_error(recalls))
        if _meets(recalls, target, floor) and (best is None or choice.expected_ms < best[0]):
            best = (choice.expected_ms, choice)
        key = (float(recalls.mean()), -choice.expected_ms)
        if fallback is None or key > fallback[0]:
            fallback = (key, choice)

    least = math.ceil(net * n)
    for base in grid:
        plain = recall[base]
        if least == 0 or base == grid[-1]:
            consider(
                Choice(
                    base,
                    None,
                    None,
                    float(plain.mean()),
                    float(plain.min()),
                    0.0,
                    latency_ms[base],
                    False,
                ),
                plain,
            )
        spreads = np.array([t.spread for t in trials[base]])
        order = np.argsort(spreads, kind="stable")
        for high in (ef for ef in grid if ef > max(base, (min_escalation or 0) - 1)):
            better = np.maximum(plain, recall[high])
            # escalate the m queries with the smallest spread, m = least..n: the first m
            # that meets the target is this (base, high) pair's cheapest policy
            for m in range(max(1, least), n + 1):
                recalls = plain.copy()
                recalls[order[:m]] = better[order[:m]]
                if m < n and not _meets(recalls, target, floor):
                    continue
                threshold = _threshold(spreads, order, m)
                escalated = spreads < threshold
                recalls = np.where(escalated, better, plain)
                rate = float(escalated.mean())
                cost = latency_ms[base] + rate * (latency_ms[high] + round_trip_ms)
                consider(
                    Choice(
                        base,
                        high,
                        threshold,
                        float(recalls.mean()),
                        float(recalls.min()),
                        rate,
                        cost,
                        False,
                    ),
                    recalls,
                )
                break
    if best is not None:
        choice = best[1]
        return Choice(**{**choice.__dict__, "met_target": True})
    assert fallback is not None
    return fallback[1]


def _threshold(spreads: np.ndarray, order: np.ndarray, m: int) -> float:
    """A spread threshold that escalates the ``m`` smallest spreads and, as headroom,
    :data:`THRESHOLD_SAFETY` times as many queries (a share of queries, not a factor on the
    spread: spreads of similar queries are close together, and a factor could escalate most
    of them)."""
    k = min(len(spreads), math.ceil(m * THRESHOLD_SAFETY))
    wide = math.nextafter(float(spreads[order[k - 1]]), math.inf)
    if int((spreads < wide).sum()) <= k:
        return wide
    # ties at the k-th spread: stop just below them, if that still escalates m
    below = float(spreads[order[k - 1]])
    if int((spreads < below).sum()) >= m:
        return below
    return math.nextafter(float(spreads[order[m - 1]]), math.inf)


def probe_vectors(stored: np.ndarray, n: int, *, seed: int = 0) -> np.ndarray:
    """``n`` calibration probes made from ``stored`` vectors (at least 2 rows), none of them
    a stored vector.

    Probe ``i`` turns a stored vector ``a`` towards another stored vector's direction ``u``
    (the part of it orthogonal to ``a``) until its cosine to ``a`` is ``c``, with ``c`` spread
    evenly over [0.3, 0.95]: from a near paraphrase of a document to a question far from
    every document. Built from stored directions, probes stay in the span of the data (real
    text embeddings often fill only a subspace; isotropic noise would leave it and be an
    easy probe). Scaled to the mean norm of ``stored``.
    """
    rng = np.random.default_rng(seed)
    data = np.asarray(stored, dtype=np.float64)
    norms = np.linalg.norm(data, axis=1)
    usable = data[norms > 0]
    if len(usable) < 2:
        raise ValueError("probes need at least two stored non-zero vectors")
    unit = usable / np.linalg.norm(usable, axis=1, keepdims=True)
    scale = float(norms[norms > 0].mean())
    cosines = 0.3 + 0.65 * (np.arange(n) + rng.random(n)) / n
    probes = np.empty((n, data.shape[1]))
    for i, c in enumerate(cosines):
        a, b = rng.choice(len(unit), size=2, replace=False)
        u = unit[b] - (unit[a] @ unit[b]) * unit[a]
        norm_u = np.linalg.norm(u)
        if norm_u < 1e-6:  # b parallel to a: any direction orthogonal to a will do
            u = rng.standard_normal(data.shape[1])
            u -= (unit[a] @ u) * unit[a]
            norm_u = np.linalg.norm(u)
        probes[i] = c * unit[a] + math.sqrt(1 - c * c) * (u / norm_u)
    return (probes * scale).astype(np.float32)
