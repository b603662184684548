"""The legacy tables' id sequences during a rollback (:mod:`docstore.migrate.rollback`).

Rows written after the cutover have no legacy id: the rollback inserts them with their
table's sequence, after moving it past the table's rows and the ids it inserts explicitly —
never back (a sequence set below a row the transaction deleted would hand that row's id out
again after the row came back), and never to its maximum: a legacy table can hold an id of
2,147,483,647 beside a sequence far below it, which the legacy application used as it was,
and a sequence set there fails every later insert: then it stays where the legacy application
had it, moved only past the ids taken right after it.
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
# The end of the run of taken ids (the table's and the explicit ones $2) right after $1, or
# NULL when $1 + 1 is free.
_RUN_END = """
WITH ids AS (SELECT id::bigint FROM {table} WHERE id > $1
             UNION SELECT i FROM unnest($2::bigint[]) i WHERE i > $1)
SELECT CASE WHEN EXISTS (SELECT 1 FROM ids WHERE id = $1 + 1)
            THEN (SELECT min(a.id) FROM ids a
                   WHERE NOT EXISTS (SELECT 1 FROM ids b WHERE b.id = a.id + 1)) END
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
    given = [int(i) for i in explicit if i is not None]
    top = max([row["top"] or 0, *given])
    if top < row["seqmax"]:  # room past every id: there
        wanted = max(top, last or 0)
    else:  # an id at the maximum: from where the legacy app had it, past the ids right after
        end = await leg.fetchval(_RUN_END.format(table=table), last or 0, given)
        wanted = max(end or 0, last or 0)
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
