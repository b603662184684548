"""How much of ``documents`` changed while a calibration measured (:mod:`calibration`).

A calibration's exact answers and its ANN trials must describe the same table. Refusing every
change made it never finish under a trickle of writes (one upsert every 5 s into an unrelated
source on 26,500 rows failed each of its three paced tries), so a measurement stands when the
rows changed meanwhile are at most :data:`TOLERANCE` of the table. A changed row matters only
to the queries whose exact top 10 it enters or leaves. On 20,000 clustered rows × 3,072
dimensions, rows changed between the exact answers and the trials moved the mean recall@10 of
100 probes by: 0.5 % inserted ≤ 0.002, 0.5 % re-embedded (1 % as counted here) ≤ 0.006, 2 %
re-embedded 0.023, 10 % 0.047. A trickle passes; a bulk load does not.

**Counting them.** One scan, the same one before and after, classes each row version by its
``xmin`` against the snapshot the first scan ran on (``pg_current_snapshot()``, handed back
to the second as a parameter):

* *old*: written by a transaction older than the snapshot's ``xmin`` — all there at the
  start; fewer at the end by the rows deleted or updated meanwhile, exactly;
* *new*: not visible in it (``xmax`` or later, or in progress then) — written meanwhile;
* *recent*: the rest, committed before the start but newer than its oldest transaction in
  progress (none unless a transaction was open then), and the rows of that transaction's
  subtransactions (docstore COPYs new rows in a savepoint) that committed meanwhile, which
  the snapshot cannot tell apart: their difference counts.

``xmin`` is 32 bits: it is widened to the 64-bit ``xid8`` the snapshot holds by its distance
back from the next transaction id, so wraparound does not matter (a frozen row keeps its raw
``xmin``: one a multiple of 2³² transactions older than the window's may count as changed —
more caution, never a change missed). An update counts twice: a version gone, one written.
Rows written and deleted between the two scans are not seen. On a Citus cluster each worker
has its own transaction ids: there the count and the last id are compared and any difference
refuses, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from docstore.core.surface import own_reads

if TYPE_CHECKING:
    from docstore.search.surface import SearchDatabase

TOLERANCE = 0.005
"""The share of ``documents``' rows that may change while a calibration measures (see the
module docstring); more and it measures again."""

_STATE = """
WITH s AS MATERIALIZED (
    SELECT snap, pg_snapshot_xmin(snap)::text::bigint AS lo,
           pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS next
      FROM (SELECT coalesce($1::text::pg_snapshot, pg_current_snapshot()) AS snap) given
)
SELECT (SELECT snap::text FROM s) AS snapshot,
       count(*) AS n,
       max(w.id) AS last_id,
       count(*) FILTER (WHERE w.xid >= s.lo) AS recent,
       count(*) FILTER (
           WHERE w.xid >= s.lo AND NOT pg_visible_in_snapshot(w.xid::text::xid8, s.snap)
       ) AS new
  FROM s
  CROSS JOIN LATERAL (
      SELECT d.id, s.next - (s.next - d.xmin::text::bigint) % 4294967296 AS xid
        FROM documents d
  ) w
"""
_STATE_DISTRIBUTED = """
SELECT NULL::text AS snapshot, count(*) AS n, max(id) AS last_id, 0::bigint AS recent,
       0::bigint AS new
  FROM documents
"""


@dataclass(frozen=True)
class TableState:
    """``documents`` as one scan saw it: rows, last id and row versions by class (module
    docstring), and the snapshot later scans compare with (None on Citus)."""

    snapshot: str | None
    rows: int
    last_id: int | None
    recent: int
    new: int

    def changed_since(self, start: TableState) -> int:
        """Rows inserted, updated (twice) or deleted since ``start`` (this scan ran with its
        snapshot); on Citus 0 when the count and the last id are the same, else every row."""
        if self.snapshot is None:  # Citus: no common transaction ids to compare
            same = (self.rows, self.last_id) == (start.rows, start.last_id)
            return 0 if same else max(self.rows, start.rows, 1)
        old_gone = (start.rows - start.recent) - (self.rows - self.recent)
        recent_moved = abs((self.recent - self.new) - (start.recent - start.new))
        return max(old_gone, 0) + self.new + recent_moved

    def describe_change(self, start: TableState) -> str:
        """What :meth:`changed_since` found, for a log line or an error message."""
        if self.snapshot is None:
            return (
                f"{start.rows:,} rows and then {self.rows:,} (on a Citus cluster rows are not "
                "told apart: a different row count or last id is a change of every row)"
            )
        rows = max(start.rows, self.rows)
        return (
            f"{self.changed_since(start):,} of {rows:,} rows changed, at most "
            f"{100 * TOLERANCE:.1f} % may"
        )


async def table_state(store: SearchDatabase, start: TableState | None = None) -> TableState:
    """Scan ``documents`` once; ``start``: the scan to compare with (its snapshot classes the
    row versions), else this scan's own snapshot is the one kept."""
    if store.distributed:
        row = await own_reads(store).fetchrow(_STATE_DISTRIBUTED)
    else:
        row = await own_reads(store).fetchrow(_STATE, start.snapshot if start else None)
    return TableState(
        snapshot=row["snapshot"],
        rows=int(row["n"]),
        last_id=row["last_id"],
        recent=int(row["recent"]),
        new=int(row["new"]),
    )


def tolerated(start: TableState, end: TableState) -> bool:
    """Whether the rows changed from ``start`` to ``end`` leave a measurement standing."""
    return end.changed_since(start) <= TOLERANCE * max(start.rows, end.rows)
