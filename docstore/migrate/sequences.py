"""The legacy tables' id sequences during a rollback (:mod:`docstore.migrate.rollback`).

Rows written after the cutover have no legacy id: the rollback inserts them with their
table's sequence, after moving it past the table's rows and the ids it inserts explicitly —
never back (a sequence set below a row the transaction deleted would hand that row's id out
again after the row came back), and never to its maximum: a legacy table can hold an id of
2,147,483,647 beside a sequence far below it, which the legacy application used as it was,
and a sequence set there fails every later insert: it goes past the ids below its maximum.
``setval`` is not undone when a transaction rolls back, so a dry run moves a temporary copy
of each sequence instead and leaves the legacy database's own as they were.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import asyncpg

_STATE = """
SELECT s.seqrelid::regclass::text AS seq, s.seqmax, pg_sequence_last_value(s.seqrelid) AS last,
       (SELECT max(id) FROM {table} WHERE id < s.seqmax) AS below
  FROM pg_sequence s WHERE s.seqrelid = pg_get_serial_sequence('{table}', 'id')::regclass
"""


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
    # past every id below the sequence's maximum (one at it, the legacy app never had past)
    top = max((int(i) for i in explicit if i is not None and int(i) < row["seqmax"]), default=0)
    wanted = max(row["below"] or 0, top, last or 0)
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
