"""When the table has changed enough since a calibration to calibrate again.

The tuner (:mod:`docstore.search.tuner`) recalibrates in the background when the table has
grown by half or shrunk by a third (:data:`GROWTH_FACTOR` either way) since the calibration,
and runs a calibration deferred at index build once the table has :data:`DEFERRED_ROWS`.

The table's rows are the planner's estimate (``estimate_rel_size``, :data:`TABLE_ROWS`): the
rows per page of the last ANALYZE, VACUUM or index build (``reltuples / relpages``) times the
pages the table has now, so a bulk load is seen as soon as it has grown the table, not when
ANALYZE next comes by. (The statistics system's live-row count over-counts: inserts a session
reports after another session's ANALYZE are added on top of ANALYZE's count.) Where there is no
density — never analyzed, a partitioned parent, a Citus coordinator's shell table (no pages of
its own) — ``reltuples`` as it is (-1 or 0: no growth); a deferred calibration counts the rows
instead, up to :data:`DEFERRED_ROWS` (:data:`DEFERRED_COUNT`), since the table it waits for
was empty when the index was built and has not been analyzed since.

Dead rows an update left count as rows until VACUUM, so such a table reads as grown though the
count a recalibration measures has not moved: :class:`GrowthWatch` remembers the estimate a
growth recalibration ran from, and starts the next only once the estimate has moved
:data:`GROWTH_FACTOR` from there (or agreed with the calibration in between) — one
recalibration per process, not one every ``RECALIBRATE_SECONDS``.
"""

from __future__ import annotations

GROWTH_FACTOR = 1.5
DEFERRED_ROWS = 1000
"""A calibration deferred at index build (fewer than two embeddings then) runs once the table
has this many rows."""

TABLE_ROWS = """
(SELECT CASE WHEN t.relpages > 0 AND t.reltuples >= 0
             THEN t.reltuples / t.relpages
                  * (pg_relation_size(t.oid) / current_setting('block_size')::real)
             ELSE t.reltuples END
   FROM pg_class t WHERE t.oid = 'documents'::regclass)"""
"""The planner's estimate of the table's rows (see the module docstring)."""
DEFERRED_COUNT = "(SELECT count(*) FROM (SELECT FROM documents LIMIT {limit}) AS deferred)"
"""The table's rows, counted up to ``{limit}`` (a bound parameter)."""


def grown(then: int, now: float) -> bool:
    """Whether ``now`` rows differ from a calibration's ``then`` by :data:`GROWTH_FACTOR`;
    from nothing (a deferred calibration): whether there are :data:`DEFERRED_ROWS` now."""
    if then <= 0 or now <= 0:
        return then <= 0 < now and now >= DEFERRED_ROWS
    return now > then * GROWTH_FACTOR or now < then / GROWTH_FACTOR


class GrowthWatch:
    """Per metric, the row estimate the last calibration in the background ran from."""

    def __init__(self) -> None:
        self.ran_from: dict[str, float] = {}
        self._seen: dict[str, float] = {}

    def reason(
        self, metric: str, calibrated: int | None, deferred: bool, rows: float, counted: int | None
    ) -> str | None:
        """Why to recalibrate ``metric`` — calibrated on ``calibrated`` rows, or ``deferred``
        — at an estimate of ``rows`` (``counted``: :data:`DEFERRED_COUNT`), or None: the
        estimate agrees with the calibration (which forgets where the last one ran from), or
        has not moved :data:`GROWTH_FACTOR` from there."""
        self._seen[metric] = rows
        if calibrated is None:
            now = max(rows, counted or 0)
            return (
                f"deferred at index build; the table has {now:,.0f} rows"
                if deferred and grown(0, now)
                else None
            )
        if not grown(calibrated, rows):
            self.ran_from.pop(metric, None)
            return None
        then = self.ran_from.get(metric)
        if then is not None and not grown(round(then), rows):
            return None
        return f"the table has ~{rows:,.0f} rows, {calibrated:,} then"

    def ran(self, metric: str) -> None:
        """A calibration of ``metric`` runs in the background (under the lock): it measures the
        table as it is, at the estimate last seen."""
        if metric in self._seen:
            self.ran_from[metric] = self._seen[metric]

    def failed(self, metric: str) -> None:
        """It failed: growth may start one again."""
        self.ran_from.pop(metric, None)
