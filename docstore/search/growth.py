"""When the table has changed enough since a calibration to calibrate again.

The tuner (:mod:`docstore.search.tuner`) recalibrates in the background when the table has
grown by half or shrunk by a third (:data:`GROWTH_FACTOR` either way) since the calibration,
and runs a calibration deferred at index build once the table has :data:`DEFERRED_ROWS`.

The table's rows are counted in a sample of about :data:`SAMPLE_PAGES` of its pages and scaled
to the pages it has now (:func:`table_rows`; every row of a smaller table): a bulk load is
seen as soon as it has grown the table, not when ANALYZE next comes by, and only live rows
count. Each estimate that was tried before read something else than the rows:

* ``reltuples`` stays where the last ANALYZE put it: a calibration made on 1,000 rows stayed in
  force while the table grew tenfold, until autovacuum's ANALYZE came by (never, with
  autovacuum off), and a table never analyzed since an index was built on it empty has none;
* the statistics system's live-row count over-counts: inserts a session reports after another
  session's ANALYZE are added on top of ANALYZE's count (a loaded, analyzed table read as
  grown ×2 and recalibrated in the background);
* the planner's ``reltuples / relpages`` × today's pages counts the dead rows an update leaves
  as rows until VACUUM (a table whose rows were all updated read as grown ×2).

The sample's pages are the same from one lookup to the next (``REPEATABLE``), so an unchanged
table reads the same. Where the table has no pages of its own — a partitioned parent, a Citus
coordinator's shell table — ``reltuples`` as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from docstore.errors import DocstoreError

if TYPE_CHECKING:
    from docstore.core.surface import ReadQueries

logger = logging.getLogger("docstore")

GROWTH_FACTOR = 1.5
DEFERRED_ROWS = 1000
"""A calibration deferred at index build (fewer than two embeddings then) runs once the table
has about this many rows."""
SAMPLE_PAGES = 256
"""Pages the row count reads (~2 MB), once per ``CACHE_SECONDS`` per metric and process."""

PAGES = """
(SELECT CASE WHEN t.relkind = 'r'
             THEN pg_relation_size(t.oid) / current_setting('block_size')::int ELSE 0 END
   FROM pg_class t WHERE t.oid = 'documents'::regclass)"""
"""The table's pages now (0 for a table with no storage of its own)."""
RELTUPLES = "(SELECT reltuples FROM pg_class WHERE oid = 'documents'::regclass)"
_SAMPLED = "SELECT count(*) FROM documents TABLESAMPLE SYSTEM ($1) REPEATABLE (0)"


async def table_rows(reads: ReadQueries, pages: int, reltuples: float) -> float:
    """The table's live rows: counted in a sample of about :data:`SAMPLE_PAGES` of its
    ``pages`` and scaled to them (counted outright in a smaller table); ``reltuples`` for a
    table with no pages of its own."""
    if pages <= 0:
        return reltuples
    percent = min(100.0, 100.0 * SAMPLE_PAGES / pages)
    seen: int = await reads.fetchval(_SAMPLED, percent)
    return seen * 100.0 / percent


def grown(then: int, now: float) -> bool:
    """Whether ``now`` rows differ from a calibration's ``then`` by :data:`GROWTH_FACTOR`;
    from nothing (a deferred calibration): whether there are :data:`DEFERRED_ROWS` now."""
    if then <= 0 or now <= 0:
        return then <= 0 < now and now >= DEFERRED_ROWS
    return now > then * GROWTH_FACTOR or now < then / GROWTH_FACTOR


async def stale(
    reads: ReadQueries, table: Mapping[str, Any], calibrated: int | None, deferred: bool
) -> str | None:
    """Why a calibration made on ``calibrated`` rows (or ``deferred``) is to be made again —
    the table grew or shrank (:func:`grown`) — or None. ``table``: its ``pages`` and
    ``reltuples`` (:data:`PAGES`, :data:`RELTUPLES`). A count that fails is logged and
    tried again at the next lookup: the search that looked goes on."""
    if calibrated is None and not deferred:
        return None
    try:
        rows = await table_rows(reads, table["pages"], table["reltuples"])
    except DocstoreError as exc:
        logger.info("search calibration: the table's rows not counted: %s", exc)
        return None
    if calibrated is not None and grown(calibrated, rows):
        return f"the table has ~{rows:,.0f} rows, {calibrated:,} then"
    if deferred and grown(0, rows):
        return f"deferred at index build; the table has ~{rows:,.0f} rows now"
    return None
