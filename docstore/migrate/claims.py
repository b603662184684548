"""Which legacy database a doc_type holds: preflight's findings on the target's checkpoints.

Run ids are ``<doc_type>:<legacy database>`` (:func:`~docstore.migrate.context.run_id`), so the
checkpoints tell which legacy databases were migrated into which doc_types. A doc_type holds
one legacy database (:func:`other_legacy_database` blocks a second one); and a legacy
database already migrated into another doc_type is most likely a mistyped ``--doc-type``,
which would copy every document a second time next to the first copy
(:func:`migrated_elsewhere` warns, naming that doc_type).
"""

from __future__ import annotations

from urllib.parse import unquote

import asyncpg

from docstore.migrate import checkpoints, legacy
from docstore.migrate.context import run_doc_type
from docstore.store import Store

_MIGRATED_ROWS = (
    "SELECT count(*) FROM documents WHERE doc_type = $1 AND metadata->>'migrated_from' = $2"
)

# The checkpoints of the runs into doc_types other than $1 (as run_doc_type encodes it): each
# run's doc_type (encoded) and legacy database, the rows its checkpoints cover and up to $2
# of them (by first key), for telling whether it read this run's legacy database.
_OTHER_DOC_TYPES = """
SELECT split_part(run_id, ':', 1) AS doc_type, substr(run_id, strpos(run_id, ':') + 1) AS legacy,
       sum(rows) AS rows,
       array_agg(ARRAY[first_key, last_key]::text[] ORDER BY first_key)
         FILTER (WHERE n <= $2) AS ranges,
       array_agg(checksum ORDER BY first_key) FILTER (WHERE n <= $2) AS stamps
  FROM (SELECT run_id, first_key, last_key, rows, checksum,
               row_number() OVER (PARTITION BY run_id ORDER BY first_key) AS n
          FROM docstore_migration_checkpoints
         WHERE table_name = 'doc_embeddings' AND split_part(run_id, ':', 1) <> $1) c
 GROUP BY run_id ORDER BY run_id
"""


async def other_legacy_database(
    tgt: asyncpg.Connection | Store, doc_type: str, run: str, src: asyncpg.Connection
) -> str | None:
    """Why ``doc_type`` can't take this run's legacy database (run id ``run``), or None.

    A doc_type holds the documents of one legacy database: a run deletes the migrated rows
    of its id ranges that its legacy database does not have, and the legacy ids of two
    databases overlap, so a second one would delete the first one's documents. Detected by
    the checkpoints of another run into the doc_type (another legacy database, or the same
    one reached through another address: run ids name both) while it holds migrated
    documents; a run that starts on none forgets those checkpoints
    (:func:`~docstore.migrate.checkpoints.forget_others`). A run whose checkpoint stamps still
    hold on ``src`` (the ``(id, xmin)`` of its ranges: only the same database, or a physical
    copy of it, has them) read this legacy database through another address: not another
    one. Reads only the checkpoints unless there are such; then a few legacy stamps and the
    doc_type's migrated documents."""
    others = await checkpoints.others(tgt, doc_type, run)
    if not others:
        return None
    samples = await checkpoints.samples_of_others(tgt, doc_type, run)
    same = [name for name, taken in samples.items() if await _stamps_hold(src, taken)]
    others = [(name, rows) for name, rows in others if name not in same]
    if not others:
        return None
    migrated = await tgt.fetchval(_MIGRATED_ROWS, doc_type, legacy.MIGRATED_FROM)
    if not migrated:
        return None
    where = ", ".join(f"{name} ({rows:,} rows copied)" for name, rows in others)
    return (
        f"doc_type {doc_type!r} already holds {migrated:,} documents migrated from another "
        f"legacy database ({where}); this run's is {run[len(doc_type) + 1 :]}. Migrating a "
        "second legacy database into the same doc_type would delete them: use another "
        "--doc-type, or roll back / delete that doc_type's documents first (if it is the same "
        "database reached through another address whose rows all changed since, connect to "
        "it as that run did)"
    )


async def migrated_elsewhere(
    tgt: asyncpg.Connection | Store, doc_type: str, run: str, src: asyncpg.Connection
) -> list[str]:
    """Warnings that this run's legacy database (run id ``run``) is already migrated into
    other doc_types, naming each and how many migrated documents it holds, or [].

    Such a run copies every legacy document again, next to the other doc_type's: usually a
    mistyped ``--doc-type``. The same legacy database: the other run's id names it (the same
    database at the same address), or its checkpoint stamps still hold on ``src`` (reached
    through another address; see :func:`other_legacy_database`). Only those doc_types that
    still hold migrated documents count (a rolled-back or emptied one does not). Reads only
    the checkpoints unless other doc_types have some; then a few legacy stamps and those
    doc_types' migrated documents."""
    mine = run[len(run_doc_type(doc_type)) + 1 :]
    found = []
    for r in await tgt.fetch(_OTHER_DOC_TYPES, run_doc_type(doc_type), 3):
        taken = [
            checkpoints.Checkpoint(int(first), int(last), 0, stamp)
            for (first, last), stamp in zip(r["ranges"], r["stamps"], strict=True)
        ]
        held = await _stamps_hold(src, taken)
        if r["legacy"] != mine and not held:
            continue
        other = unquote(r["doc_type"])
        migrated = await tgt.fetchval(_MIGRATED_ROWS, other, legacy.MIGRATED_FROM)
        if migrated:
            via = "" if r["legacy"] == mine else f", read through {r['legacy']}"
            # the run id alone names a database and an address: another server's legacy
            # database behind the same address (two containers) has it too
            what = "this legacy database" if held else f"a legacy database at {mine}"
            found.append(
                f"{what} is already migrated into doc_type {other!r}"
                f" ({migrated:,} documents{via}): migrating it as {doc_type!r} copies all its"
                " documents a second time, next to them. A mistyped --doc-type? Run with"
                f" --doc-type {other} instead (a second copy already made: delete doc_type"
                f" {doc_type!r}'s documents and sources in the target)"
            )
    return found


async def _stamps_hold(src: asyncpg.Connection, taken: list[checkpoints.Checkpoint]) -> bool:
    """Whether any of these checkpoints' stamps is still what ``src`` has for its range."""
    for c in taken:
        if c.stamp and c.stamp == await src.fetchval(legacy.CHUNK_VERSION, c.first_key, c.last_key):
            return True
    return False
