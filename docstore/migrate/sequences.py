"""The legacy tables' id sequences during a rollback (:mod:`docstore.migrate.rollback`).

Rows written after the cutover have no legacy id: the rollback inserts them with their
table's sequence, after moving it past the table's rows and the ids it inserts explicitly —
never back (a sequence set below a row the transaction deleted would hand that row's id out
again after the row came back), and never to its maximum: a legacy table can hold an id of
2,147,483,647 beside a sequence far below it, which the legacy application used as it was,
and a sequence set there fails every later insert: then it goes past the ids below the block
of taken ids that ends at the maximum (ids 2,147,483,646 and 2,147,483,647: past the largest
below 2,147,483,646), never back.
``setval`` is not undone when a transaction rolls back, so a dry run moves a temporary copy
of each sequence instead and leaves the legacy database's own as they were.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import asyncpg

_STATE = """
SELECT s.seqrelid::regclass::text AS seq, s.seqmax, pg_sequence_last_value(s.seqrelid) AS last,
       (SELECT max(id) FROM {table}) AS top
  FROM pg_sequence s WHERE s.seqrelid = pg_get_serial_sequence('{table}', 'id')::regclass
"""
TOP_WINDOW = 10_000
"""Ids under the sequence's maximum looked at for the block of taken ids ending at it."""
_TOP_IDS = "SELECT id FROM {table} WHERE id >= $1::bigint - $2::bigint AND id <= $1::bigint"
_BELOW = "SELECT max(id) FROM {table} WHERE id < $1"


async def advance(
    leg: asyncpg.Connection, table: str, explicit: Iterable[Any], *, dry_run: bool
) -> str:
    """Move ``table``'s id sequence past its rows and the ``explicit`` ids about to be
    inserted (see the module's docstring); returns the sequence that rows without an id take
    theirs from (``nextval($n::regclass)``): the table's own, or in a dry run a temporary
    copy of it, moved instead."""
    row = await leg.fetchrow(_STATE.format(table=table))
    assert row is not None, f"{table}.id has no sequence"  # the legacy schema's SERIAL
    last: int | None = row["last"]  # None: never used
    given = [int(i) for i in explicit if i is not None]
    seqmax: int = row["seqmax"]
    top = max([row["top"] or 0, *given])
    if top < seqmax:  # room past every id: there
        wanted = max(top, last or 0)
    else:  # past every id below the block of taken ids that ends at the maximum
        taken = {r[0] for r in await leg.fetch(_TOP_IDS.format(table=table), seqmax, TOP_WINDOW)}
        taken.update(i for i in given if i >= seqmax - TOP_WINDOW)
        start = seqmax
        while start - 1 in taken:
            start -= 1
        below = await leg.fetchval(_BELOW.format(table=table), start)
        wanted = max([below or 0, *(i for i in given if i < start), last or 0])
    seq: str = row["seq"]
    if dry_run:
        seq = f"pg_temp.docstore_dry_run_{table}"
        await leg.execute(
            f"CREATE TEMPORARY SEQUENCE IF NOT EXISTS docstore_dry_run_{table}"
            f" MAXVALUE {int(row['seqmax'])}"
        )
        await leg.execute("SELECT setval($1::regclass, $2, $3)", seq, max(wanted, 1), wanted > 0)
    elif wanted and (last is None or wanted > last):
        await leg.execute("SELECT setval($1::regclass, $2)", seq, wanted)
    return seq
