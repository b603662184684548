"""How a vector search finds its hits: one pure function from what is known to a plan.

:func:`plan_vector_search` decides the mode (``exact`` / ``halfvec`` / ``ann``), the number of
candidates re-ranked exactly, ``hnsw.ef_search``, whether the HNSW index is forced, and when
an ANN search runs a second, wider pass — from the stored :class:`~docstore.search.tuning.
Calibration` and the scope's size. No database here: :mod:`docstore.search.api` looks those
up and runs the plan; tests read the plans directly.

The halfvec rule (bench/scope.py, bench/scale.py, bench/RESULTS.md; 20,000 x 3,072, top 5):
the in-row ``embedding_half`` scan costs ~0.3 ms + ~2.5 us a row (100 / 1,000 / 3,000 rows:
0.8 / 2.3 / 5.7 ms); a filtered HNSW scan ~3.5 ms at a 25-50 % share of the table, 9.5 ms at
10 %, 15 ms at 5 % (it walks past every other scope's nodes); the exact scan ~7 us a row
(TOAST reads of 12 KB vectors). So a scope of up to :data:`HALFVEC_ALWAYS_ROWS` documents is
always ranked on ``embedding_half``, and up to :data:`HALFVEC_SCOPE_ROWS` while it is under
:data:`HALFVEC_MAX_SHARE` of the table. That scan reads every row of the scope: its recall is
that of half precision (~1e-4 in distance) before the exact re-rank, so it needs no
calibration. A larger scope takes the HNSW index under the filter rule's conditions for
recall (below): while it keeps :data:`MIN_ANN_SHARE` of the table and the calibration met its
target. A scope failing them is ranked on ``embedding_half`` too, up to
:data:`HALFVEC_FILTER_ROWS` rows (~50 ms at 3,072 dimensions); past that it takes the index
whatever the share, bounding what one search costs. (An integrator's 4,000-document crate in
a 36,000-row table whose calibration missed its target: recall@10 0.993 with one question at
0 through the index; 1.000 on ``embedding_half``, and faster.) The scope is counted up to
:data:`HALFVEC_SCOPE_ROWS` + 1 rows; past that its size is the planner's estimate (at least
the count): a capped count would make every scope of a table past ~400,000 rows look under
5 % of it.

The filter rule (bench/filtered.py, and plan-by-plan measurements on 50,000 and 100,000
clustered 3,072-dim documents with filters matching 0.01-10 % of them): a search with a
``filter`` is sized first (:mod:`docstore.search.filter_size`: counted on the filter's own
B-tree/GIN index, at most :data:`HALFVEC_FILTER_ROWS` + 1 entries, or its share estimated from
a page sample when no index serves it), then :func:`filter_mode` picks the plan. Left to
itself, PostgreSQL never took the HNSW index for an index-served filter: it read every matching
row's 12 KB vector from TOAST and sorted them — as many buffers as the exact scan (33,484 vs
33,367 for 5,000 of 50,000 rows) — and the spread check, calibrated on unfiltered searches,
then called the list flat and ran it again. Ranking those rows on ``embedding_half`` was 2-8x
faster than that plan and than the exact scan, recall 1.00 (measured up to 10,000 rows: 57 ms
vs 229 ms exact at 100,000); :data:`HALFVEC_FILTER_ROWS` stops it at pgvector's
``hnsw.max_scan_tuples`` (20,000), past which a filtered HNSW scan could not see every row
either. A filter matching no more rows than the halfvec shape re-ranks exactly anyway is
exact. The HNSW index (forced: ``enable_sort`` off) pays only while the filter keeps a good
share of the graph: the relaxed iterative scan's recall was 0.94-0.95 at a 1 % share and
0.975-1.00 at 5-10 % (34 ms against 570 ms for the halfvec scan at 5 % of 100,000 rows), so a
filter under :data:`MIN_ANN_SHARE` is ranked on ``embedding_half`` — as is every large filter
when the calibration could not meet its recall target. A filtered ANN plan keeps the
calibration's second pass and its spread rule, as an unfiltered one does: the calibration's
recall target counts on that pass for its flattest queries, and a filter does not make a
list flatter — its :data:`~docstore.search.tuning.SPREAD_RANK`-th candidate is about the
``SPREAD_RANK / share``-th of the whole table, so if anything its spread is larger. On the
real-text corpus (7,959 documents, its 200 real queries, filters no index serves keeping
100 %, ~50 %, ~10 % and ~7 % of the rows) the first pass called 13.5 %, 15.5 %, 11 % and
9.5 % of the lists flat (13.5 % unfiltered), and the median exact spread grew from 0.195 to
0.217. One pass there gave recall@10 0.990 with three queries under 0.7 (filter keeping every
row) and 0.990 with one (~50 %); with the second pass, 0.998-0.999 and none at every share,
as unfiltered (p95 latency +10-20 ms for the escalated tenth). Both passes' beams
are widened by ``1 / share`` (:func:`restricted_ef_search`), since a filtered scan keeps only that
share of what it walks. Filtered searches still stay
out of the tuner's escalation window (:meth:`~docstore.search.tuner.SearchTuner.
mostly_escalating`), which follows the unfiltered query stream the calibration measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from docstore.errors import SchemaError
from docstore.models import bounded_int
from docstore.search.queries import MAX_EF_SEARCH, MAX_OVERSAMPLE
from docstore.search.tuning import CALIBRATION_K, Calibration

HALFVEC_ALWAYS_ROWS = 1000
HALFVEC_SCOPE_ROWS = 3000
HALFVEC_MAX_SHARE = 0.2
MAX_LIMIT = 1000
MIN_CANDIDATES = 40
"""Candidates of an ANN search re-ranked exactly, at least (``limit × oversample`` above)."""
MIN_HALFVEC_CANDIDATES = 10
HNSW_MAX_SCAN_TUPLES = 20_000  # pgvector's default hnsw.max_scan_tuples (iterative scans)
DEFAULT_EF_SEARCH = 100
"""``hnsw.ef_search`` before any calibration (and with ``DOCSTORE_HNSW_EF_SEARCH`` unset)."""
HALFVEC_FILTER_ROWS = HNSW_MAX_SCAN_TUPLES
"""An index-served filter matching up to this many rows is ranked on ``embedding_half``."""
MIN_ANN_SHARE = 0.05
"""A larger filter takes the HNSW index only while it keeps this share of the table."""
RECHECK_SHARE = 0.125
"""While most searches need the second pass, this share still runs the first (and the
spread check), so the store notices when the queries get easier again."""
VectorMode = Literal["exact", "ann", "halfvec"]


@dataclass(frozen=True)
class Scope:
    """A doc_type/source_name scope: its rows — counted up to :data:`HALFVEC_SCOPE_ROWS` + 1;
    past that the planner's estimate, at least the count (``math.inf`` where none is known:
    on a Citus cluster) — and the table's (``reltuples``; below 0 when never analyzed)."""

    rows: float
    table_rows: float

    @property
    def share(self) -> float:
        """The share of the table the scope keeps (1 when the table's size is unknown)."""
        return _share(self.rows, self.table_rows)


@dataclass(frozen=True)
class FilterSize:
    """What a filter matches (:mod:`docstore.search.filter_size`): ``indexed`` — PostgreSQL
    reaches its rows through an index (no sequential scan); ``rows`` — counted on that index
    (up to :data:`HALFVEC_FILTER_ROWS` + 1, past it the planner's estimate) or estimated from
    a page sample; the table's ``rows`` (``reltuples``; below 0 when never analyzed)."""

    indexed: bool
    rows: float
    table_rows: float

    @property
    def share(self) -> float:
        """The share of the table the filter keeps (1 when the table's size is unknown)."""
        return _share(self.rows, self.table_rows)


def _share(rows: float, table_rows: float) -> float:
    return min(rows / table_rows, 1.0) if table_rows > 0 else 1.0


@dataclass(frozen=True)
class VectorPlan:
    """What :meth:`~docstore.Store.search` runs."""

    mode: VectorMode
    candidates: int = 0
    """Rows re-ranked on full-precision vectors (0: exact mode)."""
    ef_search: int = 0
    force_index: bool = False
    """``enable_sort``/``enable_seqscan`` off: the HNSW index for sure (large scopes)."""
    escalate_below: float | None = None
    """ANN: run a second pass when the candidates' spread is under this."""
    escalation_ef_search: int = 0
    source: str = ""
    """Where ``ef_search`` came from: "argument", "calibration", "setting" or "default";
    "oversample": the calibration's, raised for the caller's own ``oversample``."""
    oversample: int = 0
    """ANN: candidates per requested hit this search asked for (the second pass's too)."""


def halfvec_scope(scope: Scope, ann_ok: bool = True) -> bool:
    """The scope rule (module docstring): whether a doc_type/source_name ``scope`` is ranked
    on ``embedding_half`` — for speed, a small scope (at most :data:`HALFVEC_ALWAYS_ROWS`
    rows, or :data:`HALFVEC_SCOPE_ROWS` under :data:`HALFVEC_MAX_SHARE` of the table); for
    recall, one of at most :data:`HALFVEC_FILTER_ROWS` rows under :data:`MIN_ANN_SHARE` of
    the table or while the calibration missed its target (``ann_ok`` False). A table never
    analyzed lets the rows alone decide."""
    rows, known = scope.rows, scope.table_rows > 0
    if rows <= HALFVEC_ALWAYS_ROWS:
        return True
    if rows <= HALFVEC_SCOPE_ROWS and (not known or scope.share < HALFVEC_MAX_SHARE):
        return True
    small_share = known and scope.share < MIN_ANN_SHARE
    return rows <= HALFVEC_FILTER_ROWS and (small_share or not ann_ok)


def filter_mode(size: FilterSize, candidates: int, ann_ok: bool) -> VectorMode:
    """The filter rule (module docstring): ``exact`` for an index-served filter matching no
    more than the ``candidates`` the halfvec shape would re-rank exactly anyway; ``halfvec``
    for one matching up to :data:`HALFVEC_FILTER_ROWS`; ``ann`` for a filter keeping at least
    :data:`MIN_ANN_SHARE` of the table when the calibration met its target (``ann_ok``);
    ``halfvec`` otherwise (a selective filter no index serves: one scan of the table)."""
    if size.indexed and size.rows <= candidates:
        return "exact"
    if size.indexed and size.rows <= HALFVEC_FILTER_ROWS:
        return "halfvec"
    return "ann" if ann_ok and size.share >= MIN_ANN_SHARE else "halfvec"


def ann_candidates(limit: int, oversample: int) -> int:
    """Candidates of an ANN search: ``limit × oversample``, at least :data:`MIN_CANDIDATES`
    (and ``limit``), at most :data:`MAX_LIMIT`."""
    return min(max(limit * oversample, MIN_CANDIDATES, limit), MAX_LIMIT)


def level_candidates(ef_search: int, limit: int, oversample: int) -> int:
    """Candidates of a calibrated ANN pass at ``ef_search``: :func:`ann_candidates`, but no
    more than ``ef_search`` (and at least ``2 × limit``), so a small ``ef_search`` that finds
    the neighbours of easy queries reads fewer index entries and vectors. Calibration
    measures each ``ef_search`` with exactly these candidates."""
    return min(ann_candidates(limit, oversample), max(ef_search, 2 * limit))


def scaled_ef_search(ef_search: int, limit: int) -> int:
    """The calibration's ``ef_search`` for a search of ``limit`` hits. It was measured on
    recall@:data:`~docstore.search.tuning.CALIBRATION_K`; a larger ``limit`` gets a beam
    ``limit / CALIBRATION_K`` times as wide (at most :data:`MAX_EF_SEARCH`). Measured on the
    real-text corpus's 200 questions (``bench/recall_k.py``): at limit 50 the calibrated
    beam alone left the worst question at recall 0.54 (mean 0.993), the scaled one at 0.98
    (mean 1.000), at ~1.7× the latency and still 4× faster than the exact scan."""
    if limit <= CALIBRATION_K:
        return ef_search
    return min(MAX_EF_SEARCH, -(-ef_search * limit // CALIBRATION_K))


def escalation_candidates(plan: VectorPlan, limit: int) -> int:
    """Candidates of the second, wider pass: a quarter of its ``ef_search``, at least
    :func:`ann_candidates` of the plan's ``oversample``, at most :data:`MAX_LIMIT`."""
    wide = ann_candidates(limit, max(plan.oversample, 1))
    return min(max(wide, plan.escalation_ef_search // 4), MAX_LIMIT)


def halfvec_candidates(limit: int, oversample: int) -> int:
    """Candidates the halfvec shape re-ranks: ``limit × oversample``, at least
    :data:`MIN_HALFVEC_CANDIDATES`, at most :data:`MAX_LIMIT`. Half precision moves a cosine
    distance by ~1e-4, so the exact top-k is almost always among them."""
    return min(max(limit * oversample, MIN_HALFVEC_CANDIDATES, limit), MAX_LIMIT)


def restricted_ef_search(ef_search: int, share: float) -> int:
    """The calibration's ``ef_search`` (either pass's) for a search restricted to ``share`` of
    the table (a filter, a large scope): a filtered HNSW scan keeps only that share of the
    beam it walks, so the beam is widened by ``1 / share`` (at most :data:`MAX_EF_SEARCH`) to
    reach as deep as the calibration's did unfiltered (measured: bench/RESULTS.md, "A filter's
    share widens the beam")."""
    if share >= 1 or not ef_search:
        return ef_search
    return min(MAX_EF_SEARCH, math.ceil(ef_search / max(share, 1e-9)))


def check_ef_search(value: object, field: str = "ef_search") -> int:
    return bounded_int(value, field, MAX_EF_SEARCH)


def check_oversample(value: object) -> int:
    return bounded_int(value, "oversample", MAX_OVERSAMPLE)


def plan_vector_search(
    *,
    limit: int,
    exact: bool | None,
    has_index: bool,
    metric: str,
    scoped_only: bool,
    scope: Scope | None,
    filtered: bool,
    oversample: int,
    oversample_given: bool = False,
    ef_search: int | None = None,
    calibration: Calibration | None = None,
    configured_ef_search: int | None = None,
    filter_size: FilterSize | None = None,
) -> VectorPlan:
    """The plan of one vector search.

    ``scoped_only``: the search is restricted by doc_type/source_name and nothing else
    (``scope`` is then that scope's size, looked up by the caller); ``filtered``: any
    restriction at all. ``ef_search`` given by the caller wins over the calibration, which
    wins over ``default_ef_search`` (``DOCSTORE_HNSW_EF_SEARCH``), which wins over
    :data:`DEFAULT_EF_SEARCH`. An explicit ``ef_search`` runs with no second pass, raised
    to the candidate count when below it (pgvector returns at most ``ef_search`` rows).

    ``oversample_given`` (the caller's own ``oversample``, not ``DOCSTORE_SEARCH_OVERSAMPLE``):
    a calibrated search takes ``limit × oversample`` candidates, not the fewer the calibration
    measured with (:func:`level_candidates`), its ``ef_search`` raised to at least that many;
    the second pass stays while it is wider than the first (source ``"oversample"``: it never
    moves the calibration).

    ``filter_size`` (a search with a ``filter``, sized by the caller; not with ``exact`` or
    ``ef_search`` given: those win): :func:`filter_mode` picks the mode; its ANN plan forces
    the HNSW index and keeps the calibration's second pass and spread rule (module docstring).
    """
    if exact or not has_index:
        if exact is False:
            raise SchemaError(
                f"exact=False needs an HNSW index for {metric}: "
                f"await store.create_vector_index({metric!r})"
            )
        return VectorPlan("exact")
    oversample = check_oversample(oversample)
    calibration = calibration if calibration is not None and calibration.metric == metric else None
    ann_ok = calibration is None or calibration.met_target
    if exact is None and scoped_only and scope is not None and halfvec_scope(scope, ann_ok):
        return VectorPlan("halfvec", candidates=halfvec_candidates(limit, oversample))
    sized = exact is None and ef_search is None and filter_size is not None
    if filter_size is not None and sized:
        mode = filter_mode(filter_size, halfvec_candidates(limit, oversample), ann_ok)
        if mode == "exact":
            return VectorPlan("exact")
        if mode == "halfvec":
            return VectorPlan("halfvec", candidates=halfvec_candidates(limit, oversample))
    candidates = ann_candidates(limit, oversample)
    share = filter_size.share if sized and filter_size is not None else 1.0
    if scoped_only and scope is not None:
        share = scope.share
    # the index for sure when asked for, unscoped, a scope found large (not small enough for
    # halfvec) or a filter sized for it; an unsized filter (Citus, an explicit ef_search) may
    # match a handful of rows, where the planner's B-tree plan is the fast one
    # (queries.ann_settings_sql)
    force = exact is False or not filtered or scoped_only or sized
    if ef_search is not None or configured_ef_search is not None:  # explicit: no second pass
        given = ef_search if ef_search is not None else configured_ef_search
        ef = check_ef_search(given)
        return VectorPlan(
            "ann",
            candidates,
            max(ef, min(candidates, MAX_EF_SEARCH)),
            force,
            source="argument" if ef_search is not None else "setting",
            oversample=oversample,
        )
    if calibration is not None:
        ef = restricted_ef_search(scaled_ef_search(calibration.ef_search, limit), share)
        level = level_candidates(ef, limit, oversample)
        if oversample_given:
            level, ef = candidates, max(ef, min(candidates, MAX_EF_SEARCH))
        # the second pass, filtered or not (module docstring), while it is wider than the first;
        # widened by the share as the first is
        second = restricted_ef_search(calibration.escalation_ef_search or 0, share)
        escalate = second > ef and calibration.escalate_below is not None
        return VectorPlan(
            "ann",
            level,
            ef,
            force,
            escalate_below=calibration.escalate_below if escalate else None,
            escalation_ef_search=max(second, candidates) if escalate else 0,
            source="oversample" if oversample_given else "calibration",
            oversample=oversample,
        )
    return VectorPlan(
        "ann",
        candidates,
        max(DEFAULT_EF_SEARCH, min(candidates, MAX_EF_SEARCH)),
        force,
        source="oversample" if oversample_given else "default",
        oversample=oversample,
    )
