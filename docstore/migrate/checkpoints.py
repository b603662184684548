"""Checkpoints: one ``docstore_migration_checkpoints`` row per copied id range of
``doc_embeddings``, committed in the same transaction as the range's rows.

A row holds the range ``(first_key, last_key]``, its row count and a *stamp*: an md5 of the
range's ``(id, xmin)`` pairs in the legacy database when it was copied
(:data:`~docstore.migrate.legacy.CHUNK_VERSION`). Any insert, update or delete in the range
changes the stamp, and reading it costs no detoasting. So a killed migrator resumes after its
last committed range, a re-run skips ranges whose stamp still holds, the delta pass re-copies
those whose stamp moved, and validation knows which streamed checks still hold.

Run ids are ``<doc_type>:<legacy database>`` (:func:`~docstore.migrate.context.run_id`; a
``:`` or ``%`` in the doc_type percent-encoded, :func:`~docstore.migrate.context.run_doc_type`): the
checkpoints of *other* runs into a doc_type (:func:`others`) tell preflight that the doc_type
holds another legacy database's documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from docstore.codecs import keys_param
from docstore.migrate.context import LONG_TIMEOUT, run_doc_type
from docstore.migrate.legacy import LEGACY_KEY, MIGRATED_ROWS
from docstore.store import Store

_RECORD = """
INSERT INTO docstore_migration_checkpoints
       (run_id, table_name, first_key, last_key, rows, checksum)
VALUES ($1, 'doc_embeddings', $2, $3, $4, $5)
ON CONFLICT (run_id, table_name, first_key) DO UPDATE
   SET last_key = EXCLUDED.last_key, rows = EXCLUDED.rows, checksum = EXCLUDED.checksum,
       created_at = now()
"""


@dataclass(frozen=True)
class Checkpoint:
    first_key: int  # exclusive
    last_key: int  # inclusive
    rows: int
    stamp: str  # md5 of the legacy range's (id, xmin) when it was copied; "" when empty


async def record(
    tgt: asyncpg.Connection, run_id: str, first: int, last: int, rows: int, stamp: str | None
) -> None:
    """Record a copied range (call it inside the transaction that wrote the range's rows)."""
    await tgt.execute(_RECORD, run_id, first, last, rows, stamp or "")


async def load(tgt: asyncpg.Connection, run_id: str) -> list[Checkpoint]:
    """This run's checkpoints, by first key."""
    rows = await tgt.fetch(
        "SELECT first_key, last_key, rows, checksum FROM docstore_migration_checkpoints"
        " WHERE run_id = $1 AND table_name = 'doc_embeddings' ORDER BY first_key",
        run_id,
    )
    return [Checkpoint(r["first_key"], r["last_key"], r["rows"], r["checksum"]) for r in rows]


async def forget(tgt: asyncpg.Connection, run_id: str) -> None:
    """Drop every checkpoint of ``run_id`` (``restart``: rows are then upserted again)."""
    await tgt.execute("DELETE FROM docstore_migration_checkpoints WHERE run_id = $1", run_id)


async def prune(
    tgt: asyncpg.Connection,
    run_id: str,
    first_keys: Sequence[int],
    loaded: Sequence[Checkpoint] | None = None,
) -> dict[int, Checkpoint]:
    """The run's checkpoints of the current chunks (by first key), after dropping those whose
    first key is not among ``first_keys`` (``loaded``: the run's checkpoints, already read).

    The chunk plan keeps an earlier run's ranges (:func:`~docstore.migrate.copy.plan_chunks`),
    so only a plan drawn anew drops any: kept, checkpoints of other boundaries would make the
    delta pass re-copy their ranges and report that the legacy database changed during this
    run. (Nothing is deleted, and no statement sent, when none is stale.)"""
    current = set(first_keys)
    kept, stale = {}, []
    for c in await load(tgt, run_id) if loaded is None else loaded:
        if c.first_key in current:
            kept[c.first_key] = c
        else:
            stale.append(c.first_key)
    if stale:
        await tgt.execute(
            "DELETE FROM docstore_migration_checkpoints WHERE run_id = $1"
            " AND table_name = 'doc_embeddings' AND first_key = ANY($2::text[]::bigint[])",
            run_id,
            keys_param(stale),
        )
    return kept


# Migrated rows of doc_type $1 by checkpoint range: with $2 = [first+1, last+1, ...] of the
# ranges in order, range i's rows fall in bucket 2i+1 (ids are integers: (first, last] is
# [first+1, last+1)). One pass over the doc_type's rows, however many checkpoints.
_HELD = f"""
SELECT width_bucket({LEGACY_KEY}, $2::text[]::bigint[]) AS bucket, count(*) AS n
  FROM documents WHERE {MIGRATED_ROWS}
 GROUP BY 1
"""


async def still_held(
    tgt: asyncpg.Connection, doc_type: str, done: dict[int, Checkpoint]
) -> dict[int, Checkpoint]:
    """The checkpoints of ``done`` whose ranges the target still holds whole — as many
    migrated rows as were copied. A range whose rows were deleted from the target since
    (by hand, say) is copied again rather than skipped: its checkpoint and legacy stamp
    still hold, but the rows they vouch for are gone. (No statement when ``done`` is
    empty, as on a first run.)"""
    if not done:
        return done
    ordered = sorted(done.values(), key=lambda c: c.first_key)
    bounds = [key for c in ordered for key in (c.first_key + 1, c.last_key + 1)]
    rows = await tgt.fetch(_HELD, doc_type, keys_param(bounds), timeout=LONG_TIMEOUT)
    counts = {r["bucket"]: r["n"] for r in rows}
    return {c.first_key: c for i, c in enumerate(ordered) if counts.get(2 * i + 1, 0) == c.rows}


# Checkpoints of the runs into doc_type $1 (as context.run_doc_type encodes it) other than
# run $2.
_OTHER_RUNS = """
 WHERE table_name = 'doc_embeddings' AND left(run_id, length($1) + 1) = $1 || ':'
   AND run_id <> $2
"""


async def others(
    conn: asyncpg.Connection | Store, doc_type: str, run_id: str
) -> list[tuple[str, int]]:
    """The other runs into ``doc_type`` that left checkpoints: (their legacy database, the
    rows their checkpoints cover), by run id."""
    rows = await conn.fetch(
        "SELECT substr(run_id, length($1) + 2) AS legacy, sum(rows) AS rows"
        f" FROM docstore_migration_checkpoints {_OTHER_RUNS} GROUP BY run_id ORDER BY run_id",
        run_doc_type(doc_type),
        run_id,
    )
    return [(r["legacy"], int(r["rows"])) for r in rows]


async def samples_of_others(
    conn: asyncpg.Connection | Store, doc_type: str, run_id: str, per_run: int = 3
) -> dict[str, list[Checkpoint]]:
    """Up to ``per_run`` checkpoints of each other run into ``doc_type`` (by its legacy
    database), for telling whether that run read the same legacy database (its stamps hold)."""
    rows = await conn.fetch(
        "SELECT legacy, first_key, last_key, rows, checksum FROM ("
        " SELECT substr(run_id, length($1) + 2) AS legacy, first_key, last_key, rows, checksum,"
        "        row_number() OVER (PARTITION BY run_id ORDER BY first_key) AS n"
        f" FROM docstore_migration_checkpoints {_OTHER_RUNS}) c WHERE n <= $3",
        run_doc_type(doc_type),
        run_id,
        per_run,
    )
    out: dict[str, list[Checkpoint]] = {}
    for r in rows:
        out.setdefault(r["legacy"], []).append(
            Checkpoint(r["first_key"], r["last_key"], r["rows"], r["checksum"])
        )
    return out


async def forget_others(tgt: asyncpg.Connection, doc_type: str, run_id: str) -> None:
    """Drop the checkpoints of the other runs into ``doc_type``: when a run starts on a
    doc_type that holds no migrated documents (theirs are gone), and after a rollback has
    made the doc_type the copy of the rolled-back-into legacy database (``run_id``'s)."""
    await tgt.execute(
        f"DELETE FROM docstore_migration_checkpoints {_OTHER_RUNS}", run_doc_type(doc_type), run_id
    )


async def count(conn: asyncpg.Connection | Store, run_id: str) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM docstore_migration_checkpoints WHERE run_id = $1", run_id
        )
    )
