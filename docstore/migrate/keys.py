"""Legacy keys too long for docstore's unique index on ``(doc_type, source_name, doc_path)``.

The legacy unique index is on ``(crate_name, doc_path)``; docstore's adds the doc type, so a
key the legacy index took can make an index row PostgreSQL refuses (an index row holds at
most about 2,700 bytes, after compressing what compresses): the copy of its chunk fails on
every run. Such keys are over :data:`~docstore.models.MAX_KEY_BYTES` (docstore's own writes
refuse those anyway). A thorough preflight (a dry run) tries each of them in a temporary
copy of the index on the target, which decides exactly (compression included), and blocks
the run on those it refuses; a chunk that fails on one names its candidates.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from docstore.errors import DocstoreError
from docstore.migrate.context import LONG_TIMEOUT
from docstore.models import MAX_KEY_BYTES
from docstore.store import Store

PROBED = 1_000
"""Over-long legacy keys a thorough preflight tries, at most (the first, by id)."""

_LONG = (
    "SELECT id, crate_name, doc_path, count(*) OVER () AS found FROM doc_embeddings"
    f" WHERE $1 + octet_length(crate_name) + octet_length(doc_path) > {MAX_KEY_BYTES}"
    " {within} ORDER BY id LIMIT {limit}"
)
_PROBE = """CREATE TEMPORARY TABLE docstore_key_probe (
    doc_type varchar(50), source_name varchar(255), doc_path text,
    UNIQUE (doc_type, source_name, doc_path)) ON COMMIT DROP"""


def long_keys_query(*, id_range: bool, limit: int) -> str:
    """Legacy rows whose key with the doc type (``$1``: its UTF-8 bytes) is over
    ``MAX_KEY_BYTES``; ``id_range``: only ids ``($2, $3]``."""
    within = "AND id > $2 AND id <= $3" if id_range else ""
    return _LONG.format(within=within, limit=int(limit))


def problem(ids: Sequence[int], found: int, *, maybe: bool = False) -> str:
    """What is wrong with those legacy documents (``ids``: the first, ``found`` in all) and
    how to fix it; ``maybe``: they are the candidates, not each one proven."""
    shown = ", ".join(map(str, ids)) + (", …" if found > len(ids) else "")
    many = f"{found:,} legacy document{'' if found == 1 else 's'}"
    which = "one of the legacy documents" if maybe else many
    return (
        f"{which} with a key (doc_type, crate, doc_path) over {MAX_KEY_BYTES:,} bytes"
        f" (doc_embeddings ids {shown}) cannot be held by docstore's unique index on"
        " (doc_type, source_name, doc_path): PostgreSQL's index rows end at about 2,700"
        " bytes, and docstore's key adds the doc type to the legacy one. Shorten its"
        " doc_path in the legacy database"
    )


async def unindexable(src: asyncpg.Connection, store: Store, doc_type: str) -> str | None:
    """A thorough preflight's blocking finding for the legacy keys the target's index refuses,
    or None (none refused, or none can be tried: a read-only target role, which the run would
    not get past anyway)."""
    rows = await src.fetch(
        long_keys_query(id_range=False, limit=PROBED),
        len(doc_type.encode()),
        timeout=LONG_TIMEOUT,
    )
    if not rows:
        return None
    keys = [(r["id"], r["crate_name"], r["doc_path"]) for r in rows]
    refused = await _refused(store, doc_type, keys)
    if not refused:
        return None
    tried = rows[0]["found"]
    return problem(refused[:10], len(refused)) + (
        f" (the first {len(rows):,} of {tried:,} such keys were tried)" if tried > len(rows) else ""
    )


async def _refused(store: Store, doc_type: str, keys: list[tuple[int, str, str]]) -> list[int]:
    """The ids of ``keys`` a unique index like docstore's refuses: each tried in a temporary
    table on the target, in a transaction rolled back."""
    refused = []
    async with store.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            try:
                await conn.execute(_PROBE)
            except (asyncpg.PostgresError, DocstoreError):  # a read-only role or store
                return []
            for key, crate, path in keys:
                try:
                    async with conn.transaction():  # a savepoint
                        await conn.execute(
                            "INSERT INTO pg_temp.docstore_key_probe VALUES ($1, $2, $3)",
                            doc_type,
                            crate,
                            path,
                        )
                except asyncpg.ProgramLimitExceededError:
                    refused.append(key)
        finally:
            await tx.rollback()
    return refused
