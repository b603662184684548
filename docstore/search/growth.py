"""When the table has changed enough since a calibration to calibrate again.

The tuner (:mod:`docstore.search.tuner`) recalibrates in the background when the table has
grown by half or shrunk by a third (:data:`GROWTH_FACTOR` either way) since the calibration,
and runs a calibration deferred at index build once the table has :data:`DEFERRED_ROWS`.

Two counts are kept: the table's rows, and its rows with an embedding — the rows an HNSW index
holds and a calibration probes with. A deferred calibration waits for the latter (counting
every row started, on a table of documents still waiting for their embeddings, a calibration
at each lookup that failed for want of two embeddings to probe with); growth since a
calibration compares the latter with the same count then (``Calibration.embedded_estimate``),
or all rows with all rows where a calibration stored before that count has only
``table_estimate`` (never one count with the other: a table a third of whose rows have no
embedding would read as shrunk).

They are counted in a sample of about :data:`SAMPLE_PAGES` of the table's pages and scaled to
the pages it has now (:func:`table_rows`; every row of a smaller table): a bulk load is seen as
soon as it has grown the table, not when ANALYZE next comes by, and only live rows count.
On one node the sample's pages are the same from one lookup to the next (``REPEATABLE``), so
an unchanged table reads the same; on a table whose rows per page vary a lot (embedded rows
fill a page, rows without an embedding do not) that reading can stay well off the exact count,
so a calibration stores the estimates of its moment and later estimates are compared with
them, not with its count. The check runs in the background
(:meth:`~docstore.search.tuner.SearchTuner.calibration` starts it, once per cache period, when
the pool has an idle connection), never on a search's path.

Each estimate that was tried before read something else than the rows:

* ``reltuples`` stays where the last ANALYZE put it: a calibration made on 1,000 rows stayed in
  force while the table grew tenfold, until autovacuum's ANALYZE came by (never, with
  autovacuum off), and a table never analyzed since an index was built on it empty has none;
* the statistics system's live-row count over-counts: inserts a session reports after another
  session's ANALYZE are added on top of ANALYZE's count (a loaded, analyzed table read as
  grown ×2 and recalibrated in the background);
* the planner's ``reltuples / relpages`` × today's pages counts the dead rows an update leaves
  as rows until VACUUM (a table whose rows were all updated read as grown ×2).

A partitioned table's pages are its partitions'. A Citus distributed table's are its shards'
(``citus_relation_size``, which asks every node; the coordinator's shell table has none), and
the sample is drawn from every shard (Citus runs ``TABLESAMPLE`` on each) without
``REPEATABLE``: with one seed every shard would read the pages at the same positions, ~256 / N
independent draws for N shards, where fresh draws on each shard make ~256 (a few per cent of
noise, well inside :data:`GROWTH_FACTOR`). While a node does not answer, the check fails like
any search fanned out to it (retried, then logged) and is tried again at the next lookup.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple

from docstore.errors import DocstoreError
from docstore.search import table_size

if TYPE_CHECKING:
    from docstore.core.surface import ReadQueries
    from docstore.search.tuning import Calibration

logger = logging.getLogger("docstore")

GROWTH_FACTOR = 1.5
DEFERRED_ROWS = 1000
"""A calibration deferred at index build (fewer than two embeddings then) runs once the table
has about this many rows with an embedding."""
SAMPLE_PAGES = 256
"""Pages the row count reads (~2 MB): once per ``CACHE_SECONDS`` per metric and process, and
once per calibration."""

_PAGES = {False: f"SELECT {table_size.PAGES}", True: f"SELECT {table_size.SHARD_PAGES}"}
_SAMPLED = (
    "SELECT count(*) AS rows, count(embedding) AS embedded FROM documents TABLESAMPLE SYSTEM ($1)"
)
"""The rows and the rows with an embedding in the sample (``count(embedding)`` tests for NULL:
nothing is detoasted); on one node the same pages each time (``REPEATABLE``, :data:`_SAMPLE`)."""
_SAMPLE = {False: _SAMPLED + " REPEATABLE (0)", True: _SAMPLED}


class Rows(NamedTuple):
    """The table's estimated live rows, and how many of them have an embedding."""

    rows: float
    embedded: float


async def table_rows(reads: ReadQueries, pages: int, *, distributed: bool = False) -> Rows:
    """The table's live :class:`Rows`: counted in a sample of about :data:`SAMPLE_PAGES` of
    its ``pages`` and scaled to them (counted outright in a smaller table); none without
    pages."""
    if pages <= 0:
        return Rows(0.0, 0.0)
    percent = min(100.0, 100.0 * SAMPLE_PAGES / pages)
    seen = await reads.fetchrow(_SAMPLE[distributed], percent)
    return Rows(seen["rows"] * 100.0 / percent, seen["embedded"] * 100.0 / percent)


def grown(then: int, now: float) -> bool:
    """Whether ``now`` rows differ from a calibration's ``then`` by :data:`GROWTH_FACTOR`;
    from nothing (a deferred calibration): whether there are :data:`DEFERRED_ROWS` now."""
    if then <= 0 or now <= 0:
        return then <= 0 < now and now >= DEFERRED_ROWS
    return now > then * GROWTH_FACTOR or now < then / GROWTH_FACTOR


async def estimate(reads: ReadQueries, *, distributed: bool = False) -> Rows:
    """:func:`table_rows` of the table as it is now (``distributed``: a Citus distributed
    table's, its shards' pages sampled on the workers)."""
    pages = await reads.fetchval(_PAGES[distributed])
    return await table_rows(reads, pages, distributed=distributed)


def _baseline(calibration: Calibration, now: Rows) -> tuple[float, float, str]:
    """``(then, now, what)``: the calibration's count and today's, of the same rows."""
    embedded, everything = calibration.embedded_estimate, calibration.table_estimate
    if embedded is not None:  # (none then: grown() as for a deferred calibration)
        return embedded, now.embedded, "rows with an embedding"
    then = everything if everything is not None and everything > 0 else calibration.table_rows
    return then, now.rows, "rows"


async def stale(
    reads: ReadQueries, calibration: Calibration | None, deferred: bool, *, distributed: bool
) -> str | None:
    """Why ``calibration`` (or a ``deferred`` one) is to be made again — the table grew or
    shrank (:func:`grown`) since it was measured: today's :func:`estimate` against the
    estimate then, of the same rows (see the module docs) — or None. A count that fails is
    logged and tried again at the next lookup."""
    if calibration is None and not deferred:
        return None
    try:
        rows = await estimate(reads, distributed=distributed)
    except DocstoreError as exc:
        logger.info("search calibration: the table's rows not counted: %s", exc)
        return None
    if calibration is not None:
        then, now, what = _baseline(calibration, rows)
        if grown(round(then), now):
            return f"the table has ~{now:,.0f} {what}, ~{then:,.0f} then"
    elif grown(0, rows.embedded):
        embedded = f"~{rows.embedded:,.0f} rows with an embedding"
        return f"deferred at index build; the table has {embedded} now"
    return None
