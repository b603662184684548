"""The search planner and the calibration policy: pure functions, no database."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from docstore.errors import SchemaError, ValidationError
from docstore.search import planner, tuning
from docstore.search.planner import Scope, plan_vector_search
from docstore.search.tuning import Calibration, Trial, choose_settings, probe_vectors


def calibration(**changes: object) -> Calibration:
    base: dict[str, object] = {
        "metric": "cosine",
        "target_recall": 0.98,
        "ef_search": 64,
        "escalation_ef_search": 640,
        "escalate_below": 0.09,
        "expected_recall": 0.99,
        "lowest_recall": 0.8,
        "escalation_rate": 0.1,
        "expected_ms": 4.0,
        "met_target": True,
        "queries": 100,
        "query_source": "probes",
        "table_rows": 10_000,
        "calibrated_at": datetime.now(UTC),
    }
    return Calibration.model_validate(base | changes)


def plan(**options: object) -> planner.VectorPlan:
    args: dict[str, object] = {
        "limit": 10,
        "exact": None,
        "has_index": True,
        "metric": "cosine",
        "scoped_only": False,
        "scope": None,
        "filtered": False,
        "oversample": 4,
    }
    return plan_vector_search(**(args | options))  # type: ignore[arg-type]


# -- planner ----------------------------------------------------------------------------------


def test_exact_without_an_index_and_when_asked() -> None:
    assert plan(has_index=False).mode == "exact"
    assert plan(exact=True).mode == "exact"
    with pytest.raises(SchemaError, match="create_vector_index"):
        plan(exact=False, has_index=False)


def test_a_restricted_search_widens_the_calibrated_beam_by_its_share() -> None:
    """A filtered HNSW scan keeps only the filter's share of the beam it walks (helper 110:
    a filter keeping 54 % of the real-text corpus left real questions at recall@10 0.5)."""
    cal = calibration(ef_search=100, escalation_ef_search=1000)
    assert plan(calibration=cal).ef_search == 100
    half = planner.FilterSize(indexed=False, rows=5_000, table_rows=10_000)
    filtered = plan(filtered=True, filter_size=half, calibration=cal)
    assert filtered.mode == "ann" and filtered.ef_search == 200
    assert filtered.escalation_ef_search == 1000 and filtered.escalate_below == 0.09
    small = planner.FilterSize(indexed=False, rows=600, table_rows=10_000)  # 6 %: capped
    assert plan(filtered=True, filter_size=small, calibration=cal).ef_search == 1000
    scope = plan(scoped_only=True, filtered=True, scope=Scope(9_000, 10_000), calibration=cal)
    assert scope.mode == "ann" and scope.ef_search == 112
    # an explicit ef_search is the caller's: not widened
    assert plan(filtered=True, filter_size=half, calibration=cal, ef_search=50).ef_search == 50
    assert planner.restricted_ef_search(64, 1.0) == 64
    assert planner.restricted_ef_search(64, 0.0) == planner.MAX_EF_SEARCH


def test_small_scopes_are_ranked_on_embedding_half() -> None:
    small = plan(scoped_only=True, filtered=True, scope=Scope(800, 50_000))
    assert small.mode == "halfvec" and small.candidates == 40
    share = plan(scoped_only=True, filtered=True, scope=Scope(2500, 50_000))
    assert share.mode == "halfvec"
    large_share = plan(scoped_only=True, filtered=True, scope=Scope(2500, 5_000))
    assert large_share.mode == "ann" and large_share.force_index
    assert plan(scoped_only=True, filtered=True, scope=Scope(3001, 50_000)).mode == "ann"
    # past the speed rule, the filter rule's recall conditions up to HALFVEC_FILTER_ROWS
    # (integrator review 2026-12-07): under MIN_ANN_SHARE of the table, or a calibration that
    # missed its target, is ranked on embedding_half; a larger scope takes the index
    assert plan(scoped_only=True, filtered=True, scope=Scope(3001, 10**6)).mode == "halfvec"
    unmet = calibration(met_target=False)
    missed = plan(scoped_only=True, filtered=True, scope=Scope(4000, 36_000), calibration=unmet)
    assert missed.mode == "halfvec"
    met = plan(
        scoped_only=True, filtered=True, scope=Scope(4000, 36_000), calibration=calibration()
    )
    assert met.mode == "ann" and met.force_index
    huge = plan(scoped_only=True, filtered=True, scope=Scope(60_000, 10**6), calibration=unmet)
    assert huge.mode == "ann" and huge.force_index
    # exact=False insists on the index
    assert plan(exact=False, scoped_only=True, filtered=True, scope=Scope(5, 10)).mode == "ann"


def test_an_oversample_given_by_the_caller_is_honoured_under_a_calibration() -> None:
    """``oversample=20`` asked for 200 candidates and got the calibration's 64: the level's
    cap applies to the default the calibration measured with, not to the caller's own."""
    default = plan(limit=10, oversample=20, calibration=calibration())
    assert (default.candidates, default.ef_search, default.source) == (64, 64, "calibration")
    given = plan(limit=10, oversample=20, oversample_given=True, calibration=calibration())
    assert (given.candidates, given.ef_search, given.source) == (200, 200, "oversample")
    assert given.escalate_below == 0.09 and given.escalation_ef_search == 640  # kept
    assert planner.escalation_candidates(given, 10) == 200
    small = plan(limit=10, oversample=1, oversample_given=True, calibration=calibration())
    assert (small.candidates, small.ef_search) == (40, 64)  # at least 40; ef as calibrated
    top = plan(limit=100, oversample=100, oversample_given=True, calibration=calibration())
    assert (top.candidates, top.ef_search) == (planner.MAX_LIMIT, planner.MAX_EF_SEARCH)
    # a first pass as wide as the second: no second pass (it would run the same search again)
    assert top.escalate_below is None and top.escalation_ef_search == 0
    wide = plan(limit=10, oversample=64, oversample_given=True, calibration=calibration())
    assert wide.ef_search == 640 and wide.escalate_below is None
    # without a calibration the caller's oversample is still explicit: no live-recall sample
    assert plan(oversample=20, oversample_given=True).source == "oversample"
    assert plan(oversample=20).source == "default"


def test_ann_uses_the_calibration_with_its_second_pass() -> None:
    p = plan(calibration=calibration())
    assert (p.mode, p.ef_search, p.escalate_below, p.escalation_ef_search) == (
        "ann",
        64,
        0.09,
        640,
    )
    assert p.source == "calibration" and p.candidates == 40 and p.force_index
    # a small calibrated ef_search reads fewer candidates (at least 2 x limit): calibration
    # measured it that way; iterative scan fills what ef_search alone would not
    small = plan(calibration=calibration(ef_search=20))
    assert (small.ef_search, small.candidates) == (20, 20)
    wide = plan(calibration=calibration(ef_search=16), limit=50)
    assert (wide.ef_search, wide.candidates) == (80, 100)  # the beam scaled by 50 / 10


def test_a_larger_limit_gets_a_proportionally_wider_beam() -> None:
    """Calibration measures recall@10: at limit 50 its ef_search alone left the real-text
    corpus's worst question at recall@50 0.52; scaled by limit / 10 at 0.98."""
    assert planner.scaled_ef_search(100, 10) == 100 and planner.scaled_ef_search(100, 3) == 100
    assert planner.scaled_ef_search(100, 50) == 500
    assert planner.scaled_ef_search(64, 15) == 96
    assert planner.scaled_ef_search(33, 11) == 37  # rounded up
    assert planner.scaled_ef_search(400, 100) == planner.MAX_EF_SEARCH  # pgvector's cap
    p = plan(calibration=calibration(), limit=50)  # ef 64, second pass at 640
    assert (p.ef_search, p.candidates, p.escalation_ef_search) == (320, 200, 640)
    assert p.escalate_below == 0.09
    # a first pass as wide as the second: the second pass would search the same again
    top = plan(calibration=calibration(), limit=100)
    assert top.ef_search == 640 and top.escalate_below is None


def test_explicit_settings_win_and_run_exactly_what_they_say() -> None:
    p = plan(calibration=calibration(), ef_search=300)
    assert (p.ef_search, p.escalate_below, p.source) == (300, None, "argument")
    q = plan(calibration=calibration(), configured_ef_search=120)
    assert (q.ef_search, q.escalate_below, q.source) == (120, None, "setting")
    with pytest.raises(ValidationError, match="ef_search"):
        plan(ef_search=0)
    with pytest.raises(ValidationError, match="oversample"):
        plan(oversample=101)


def test_uncalibrated_and_other_metric_use_the_default() -> None:
    assert plan().source == "default"
    assert plan().ef_search == planner.DEFAULT_EF_SEARCH
    assert plan(metric="l2", calibration=calibration()).source == "default"


def test_arbitrary_filters_leave_the_access_path_to_postgres() -> None:
    assert not plan(filtered=True).force_index
    assert plan(filtered=True, exact=False).force_index


# -- choosing settings -------------------------------------------------------------------------


def trials(
    recalls: dict[int, list[float]], spreads: dict[int, list[float]]
) -> dict[int, list[Trial]]:
    return {
        ef: [Trial(r, s) for r, s in zip(recalls[ef], spreads[ef], strict=True)] for ef in recalls
    }


def test_the_cheapest_plain_setting_that_meets_the_target() -> None:
    n = 50
    t = trials(
        {40: [0.9] * n, 100: [1.0] * (n - 1) + [0.9], 400: [1.0] * n},
        {ef: [0.2] * n for ef in (40, 100, 400)},
    )
    choice = choose_settings(t, {40: 1.0, 100: 2.0, 400: 5.0}, target=0.98)
    assert choice.met_target and choice.ef_search == 100 and choice.escalation_ef_search is None


def test_a_second_pass_for_the_flat_queries_when_that_is_cheaper() -> None:
    # 5 of 100 queries fail at ef 40, and they have the 5 smallest spreads
    n = 100
    recall40 = [0.0] * 5 + [1.0] * (n - 5)
    spread40 = [0.01 * (i + 1) for i in range(5)] + [0.5] * (n - 5)
    t = trials(
        {40: recall40, 640: [1.0] * n},
        {40: spread40, 640: [0.5] * n},
    )
    choice = choose_settings(t, {40: 2.0, 640: 10.0}, target=0.98)
    assert (choice.ef_search, choice.escalation_ef_search) == (40, 640)
    assert choice.escalate_below is not None and 0.05 < choice.escalate_below <= 0.5
    assert choice.escalation_rate == pytest.approx(0.05)  # the ties at 0.5 stay out
    assert choice.expected_ms == pytest.approx(2.0 + 0.05 * 10.0)
    assert choice.lowest_recall == 1.0 and choice.met_target


def test_no_query_may_stay_under_the_floor() -> None:
    n = 100
    # mean 0.99 at ef 40, but one query at 0.0: only the larger setting is acceptable
    t = trials({40: [0.0] + [1.0] * (n - 1), 100: [1.0] * n}, {40: [0.9] * n, 100: [0.9] * n})
    choice = choose_settings(t, {40: 1.0, 100: 3.0}, target=0.98)
    assert choice.lowest_recall >= tuning.RECALL_FLOOR


def test_when_nothing_meets_the_target_the_best_is_reported() -> None:
    t = trials({40: [0.5] * 20, 100: [0.8] * 20}, {40: [0.1] * 20, 100: [0.1] * 20})
    choice = choose_settings(t, {40: 1.0, 100: 2.0}, target=0.98)
    assert not choice.met_target and choice.expected_recall == pytest.approx(0.8)


def test_min_escalation_keeps_the_second_pass_wide() -> None:
    n = 100
    t = trials(
        {40: [0.0] * 5 + [1.0] * 95, 100: [1.0] * n, 640: [1.0] * n},
        {ef: [0.01] * 5 + [0.5] * 95 for ef in (40, 100, 640)},
    )
    latency = {40: 1.0, 100: 10.0, 640: 20.0}
    assert choose_settings(t, latency, target=0.98).escalation_ef_search == 100
    assert choose_settings(t, latency, target=0.98, min_escalation=640).escalation_ef_search == 640


def test_the_net_escalates_the_flattest_even_when_no_query_failed() -> None:
    n = 100
    spreads = [i / 100 for i in range(n)]
    t = trials({40: [1.0] * n, 640: [1.0] * n}, {40: spreads, 640: spreads})
    assert choose_settings(t, {40: 1.0, 640: 5.0}, target=0.98).escalation_ef_search is None
    netted = choose_settings(t, {40: 1.0, 640: 5.0}, target=0.98, net=0.1)
    assert (netted.ef_search, netted.escalation_ef_search) == (40, 640)
    # at least the flattest 10 %, with headroom: 15 of the 100
    assert netted.escalation_rate == pytest.approx(0.15)


def test_recall_at() -> None:
    assert tuning.recall_at([(3, 0.3), (5, 0.5), (4, 0.4)], [(3, 0.3), (4, 0.4)]) == 0.5
    assert tuning.recall_at([], []) == 1.0
    assert tuning.recall_at([], [(1, 0.1)]) == 0.0
    # only the top k of what was found counts
    assert tuning.recall_at([(9, 0.5), (8, 0.6), (1, 0.1)], [(1, 0.1), (2, 0.2)]) == 0.0


def test_recall_at_counts_rows_tied_with_the_kth_exact_one() -> None:
    """With duplicated vectors the exact top k is one pick among equals: other equals found
    are no misses (a row counted once, and never more than k)."""
    truth = [(1, 0.1), (2, 0.25), (3, 0.25)]
    assert tuning.recall_at([(1, 0.1), (7, 0.25), (8, 0.25)], truth) == 1.0
    assert tuning.recall_at([(7, 0.25), (7, 0.25), (8, 0.25)], truth) == 2 / 3
    assert tuning.recall_at([(1, 0.1), (2, 0.25), (9, 0.2500001)], truth) == 2 / 3
    # a row strictly nearer than the k-th is no tie: equals found cannot stand in for it
    assert tuning.recall_at([(4, 0.25), (5, 0.25), (6, 0.25)], truth) == 2 / 3
    assert tuning.recall_at([(1, 0.1), (4, 0.25), (5, 0.25)], truth) == 1.0


# -- probes -----------------------------------------------------------------------------------


def test_probes_are_not_stored_vectors_and_stay_in_the_data_span() -> None:
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((64, 8)))[0]  # data in an 8-d subspace of 64-d
    stored = (rng.standard_normal((200, 8)) @ basis.T).astype(np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    probes = probe_vectors(stored, 50, seed=3)
    assert probes.shape == (50, 64)
    nearest = (probes @ stored.T).max(axis=1)
    assert nearest.max() < 1 - 1e-5  # none is a stored vector
    assert nearest.min() >= 0.29  # each still points at its base within cos 0.3
    residual = probes - (probes @ basis) @ basis.T
    assert np.abs(residual).max() < 1e-4  # no component outside the data's span
    np.testing.assert_allclose(np.linalg.norm(probes, axis=1), 1.0, atol=1e-4)


def test_probes_need_two_vectors() -> None:
    with pytest.raises(ValueError):
        probe_vectors(np.zeros((5, 8), dtype=np.float32), 3)
