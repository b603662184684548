"""Legacy keys too long for docstore's unique index on ``(doc_type, source_name, doc_path)``.

The legacy unique index is on ``(crate_name, doc_path)``; docstore's adds the doc type, so a
key the legacy index took can make an index row PostgreSQL refuses (an index row holds at
most about 2,700 bytes, after compressing what compresses): the copy of its chunk fails on
every run. Such keys are over :data:`~docstore.models.MAX_KEY_BYTES` (docstore's own writes
refuse those anyway). Whether one fits is decided by trying it in a temporary copy of the
index on the target, in a transaction rolled back (compression included): a thorough
preflight (a dry run) tries the first :data:`PROBED` and blocks the run on those refused; a
chunk that fails on one tries its candidates and names those refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from docstore.errors import DocstoreError, MigrationError
from docstore.migrate.context import LONG_TIMEOUT
from docstore.models import MAX_KEY_BYTES
from docstore.store import Store

PROBED = 10_000
"""Over-long legacy keys a thorough preflight or a failed chunk tries, at most (by id)."""

_LONG = (
    "SELECT id, crate_name, doc_path, count(*) OVER () AS found FROM doc_embeddings"
    f" WHERE $1 + octet_length(crate_name) + octet_length(doc_path) > {MAX_KEY_BYTES}"
    " {within} ORDER BY id LIMIT {limit}"
)
_PROBE = """CREATE TEMPORARY TABLE docstore_key_probe (
    doc_type varchar(50), source_name varchar(255), doc_path text,
    UNIQUE (doc_type, source_name, doc_path)) ON COMMIT DROP"""

Key = tuple[int, str, str]


class KeyTooLong(MigrationError):
    """A chunk's copy failed on an index row too large; ``candidates``: the chunk's legacy
    keys over :data:`MAX_KEY_BYTES` (its caller tries them once its transaction is over:
    :func:`proven`)."""

    def __init__(self, message: str, low: int, high: int, candidates: list[Key]) -> None:
        super().__init__(message)
        self.low, self.high, self.candidates = low, high, candidates


async def chunk_error(
    src: asyncpg.Connection, doc_type: str, low: int, high: int
) -> KeyTooLong | None:
    """The chunk ``(low, high]``'s error once an index row was too large: its legacy keys
    over ``MAX_KEY_BYTES`` as candidates (None: it has none, the error is another's)."""
    rows = await src.fetch(long_keys_query(id_range=True), len(doc_type.encode()), low, high)
    if not rows:
        return None
    return KeyTooLong(
        f"cannot copy doc_embeddings ids ({low}, {high}]:"
        f" {problem([r['id'] for r in rows], rows[0]['found'], maybe=True)}, then run again"
        " (the run resumes after the chunks already committed; `docstore migrate --dry-run`"
        " names every such row)",
        low,
        high,
        [(r["id"], r["crate_name"], r["doc_path"]) for r in rows],
    )


async def proven(tgt: Any, doc_type: str, exc: KeyTooLong) -> MigrationError:
    """``exc`` naming the candidates the index refuses (tried on ``tgt``, the target, once
    the chunk's transaction rolled back), or as it is if none can be told apart."""
    refused = await refused_on(tgt, doc_type, exc.candidates)
    if not refused:
        return exc
    return MigrationError(
        f"cannot copy doc_embeddings ids ({exc.low}, {exc.high}]:"
        f" {problem(refused, len(refused))}, then run again (the run resumes after the"
        " chunks already committed)"
    )


def too_long(exc: asyncpg.PostgresError) -> bool:
    """An index row too large (54000; on Citus a worker's, as XX000 with its message)."""
    return exc.sqlstate == "54000" or (
        exc.sqlstate == "XX000" and str(exc).startswith("index row size")
    )


def long_keys_query(*, id_range: bool) -> str:
    """Legacy rows whose key with the doc type (``$1``: its UTF-8 bytes) is over
    ``MAX_KEY_BYTES``, the first :data:`PROBED`; ``id_range``: only ids ``($2, $3]``."""
    within = "AND id > $2 AND id <= $3" if id_range else ""
    return _LONG.format(within=within, limit=PROBED)


def problem(ids: Sequence[int], found: int, *, maybe: bool = False) -> str:
    """What is wrong with those legacy documents (``ids``: the first, ``found`` in all) and
    how to fix it; ``maybe``: they are the candidates, not each one proven."""
    shown = ", ".join(map(str, ids[:10])) + (", …" if found > min(len(ids), 10) else "")
    many = f"{found:,} legacy document{'' if found == 1 else 's'}"
    which = "one of the legacy documents" if maybe else many
    return (
        f"{which} with a key (doc_type, crate, doc_path) over {MAX_KEY_BYTES:,} bytes"
        f" (doc_embeddings ids {shown}) cannot be held by docstore's unique index on"
        " (doc_type, source_name, doc_path): PostgreSQL's index rows end at about 2,700"
        " bytes, and docstore's key adds the doc type to the legacy one. Shorten the"
        " doc_path in the legacy database"
    )


async def unindexable(
    src: asyncpg.Connection, store: Store, doc_type: str
) -> tuple[str | None, str | None]:
    """A thorough preflight's findings on the legacy keys over ``MAX_KEY_BYTES``: a blocking
    one for those the target's index refuses, and a warning when there are more than were
    tried (or none could be: a read-only target role, which the run would not get past)."""
    rows = await src.fetch(
        long_keys_query(id_range=False), len(doc_type.encode()), timeout=LONG_TIMEOUT
    )
    if not rows:
        return None, None
    keys = [(r["id"], r["crate_name"], r["doc_path"]) for r in rows]
    async with store.acquire() as conn:
        refused = await refused_on(conn, doc_type, keys)
    found = rows[0]["found"]
    untried = (
        f"{found - len(rows):,} more legacy keys over {MAX_KEY_BYTES:,} bytes were not tried"
        f" (the first {len(rows):,} were): a run stops at the chunk of one docstore's unique"
        " index cannot hold, naming it"
        if found > len(rows)
        else None
    )
    if refused is None:
        untried = (
            f"{found:,} legacy keys over {MAX_KEY_BYTES:,} bytes could not be tried on the"
            " target (no temporary table there): a run stops at the chunk of one docstore's"
            " unique index cannot hold, naming it"
        )
    return (problem(refused, len(refused)) if refused else None), untried


async def refused_on(conn: Any, doc_type: str, keys: list[Key]) -> list[int] | None:
    """The ids of ``keys`` a unique index like docstore's refuses, each tried in a temporary
    table on ``conn`` (the target, outside a transaction) in a transaction rolled back; None
    when no temporary table can be made there (a read-only role or store)."""
    refused = []
    tx = conn.transaction()
    await tx.start()
    try:
        try:
            await conn.execute(_PROBE)
        except (asyncpg.PostgresError, DocstoreError):
            return None
        for key, crate, path in keys:
            try:
                async with conn.transaction():  # a savepoint
                    await conn.execute(
                        "INSERT INTO pg_temp.docstore_key_probe VALUES ($1, $2, $3)",
                        doc_type,
                        crate,
                        path,
                    )
            except asyncpg.PostgresError as exc:
                if not too_long(exc):
                    raise
                refused.append(key)
    finally:
        await tx.rollback()
    return refused
