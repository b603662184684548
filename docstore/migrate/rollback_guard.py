"""The rollback's guard: it never deletes legacy documents the target never received.

A rollback makes the legacy tables mirror the target, so a legacy row without a target
document at its key is deleted. That is right for rows the target received and then deleted
after the cutover; it loses data for rows the target never had — outside every id range the
target's migration from this legacy database copied (its checkpoints): a migration that never
finished, rows written to the legacy database after it, a mistyped doc_type or the wrong
target (no ranges at all). Those refuse the rollback unless it is forced.
"""

from __future__ import annotations

import asyncpg

from docstore.errors import MigrationError
from docstore.migrate.checkpoints import Checkpoint

# The legacy documents the rollback would delete (no target document at their key) that lie
# outside every id range ($1 lows, exclusive; $2 highs, inclusive) the target's migration from
# this legacy database copied: rows the target never received. Up to 5 of their ids.
_NEVER_RECEIVED = """
SELECT count(*) AS n, (array_agg(d.id ORDER BY d.id))[1:5] AS ids
  FROM doc_embeddings d
 WHERE NOT EXISTS (SELECT 1 FROM {stage} s
                    WHERE s.crate_name = d.crate_name AND s.doc_path = d.doc_path)
   AND NOT EXISTS (SELECT 1 FROM unnest($1::bigint[], $2::bigint[]) AS r(lo, hi)
                    WHERE d.id > r.lo AND d.id <= r.hi)
"""


async def refuse_deleting_unreceived(
    leg: asyncpg.Connection, doc_type: str, received: list[Checkpoint], stage: str
) -> None:
    """Raise :class:`MigrationError` (inside the legacy transaction: nothing is changed) if
    the rollback would delete legacy documents the target never received (``received``: the
    id ranges its migration from this legacy database copied; ``stage``: the temporary table
    holding the target's documents)."""
    row = await leg.fetchrow(
        _NEVER_RECEIVED.format(stage=stage),
        [c.first_key for c in received],
        [c.last_key for c in received],
    )
    if row is None or not row["n"]:
        return
    ids = ", ".join(str(i) for i in row["ids"]) + (", …" if row["n"] > len(row["ids"]) else "")
    why = (
        "no migration from this legacy database into it is recorded on the target"
        if not received
        else "they lie outside every id range the target's migration from this legacy "
        "database copied (a migration that never finished, or rows written to the legacy "
        "database after it)"
    )
    raise MigrationError(
        f"rollback refused, nothing was changed: it would delete {row['n']:,} legacy "
        f"documents (ids {ids}) that the target's doc_type {doc_type!r} never received — "
        f"{why}. Check the doc_type and the target; finish the migration (`docstore "
        "migrate`) to carry them over first; or force the rollback (`--force`, "
        "`rollback(force=True)`) to delete them. `--dry-run` shows what a rollback writes."
    )
