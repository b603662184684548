"""Plans that cannot go stale: statements a pooled connection prepared while the table was empty
stay on good plans after the table grows (issue 14 A).

The trap: a new database, one long-lived store. Its connections prepare docstore's statements
while ``documents`` is empty and never analyzed; then a large load arrives. Without statistics
PostgreSQL estimates one row for ``doc_type = $1 AND source_name = $2``, and the batch key
lookup walked a whole source through ``idx_documents_type_source`` for every key (2,000 keys
against 4,000 rows of one source: 8 million buffers, 9 s). Migration 4 dropped the indexes that
repeat the unique key's leading columns, so key lookups use the unique key whatever the
statistics say.

The checks are deterministic: ``EXPLAIN (ANALYZE, BUFFERS) EXECUTE`` of the very statement the
pooled connection has cached (asyncpg's named prepared statement, with its generic plan if
PostgreSQL switched to one) counts the buffers each statement reads per key.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import numpy as np
import pytest

import docstore
from docstore import Document
from docstore.repositories import documents as repo

BIG = 3000
KEYS = 500


def docs(n: int, *, start: int = 0, content: str = "c", source: str = "big") -> list[Document]:
    gen = np.random.default_rng(start)
    return [
        Document(
            source_name=source,
            doc_path=f"{source}/{i}",
            content=f"{content} {i}",
            embedding=gen.standard_normal(3072).astype(np.float32),
            token_count=i,
        )
        for i in range(start, start + n)
    ]


async def _measure(conn: asyncpg.Connection, sql: str, *args: Any) -> int:
    """Buffers read by one execution of the connection's cached prepared statement ``sql``.

    ``EXPLAIN EXECUTE`` takes no bind parameters, so each argument becomes a literal of the
    statement's own parameter type. Runs in a transaction that is rolled back (EXPLAIN
    ANALYZE of an UPDATE really runs it).
    """
    row = await conn.fetchrow(
        "SELECT name, parameter_types::text[] AS types FROM pg_prepared_statements"
        " WHERE btrim(statement, E' \\n') = $1",
        sql.strip(),
    )
    assert row is not None, f"statement not prepared on this connection: {sql[:60]}"
    literals = [
        await conn.fetchval(f"SELECT quote_nullable($1::{typ})", arg)
        for typ, arg in zip(row["types"], args, strict=True)
    ]
    tx = conn.transaction()
    await tx.start()
    try:
        plan = await conn.fetchval(
            f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE {row['name']}({', '.join(literals)})"
        )
    finally:
        await tx.rollback()
    top = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
    return int(top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0))


@pytest.mark.parametrize("trap", [False, True], ids=["docstore-schema", "with-source-index"])
async def test_statements_prepared_on_an_empty_table_stay_cheap_after_it_grows(
    empty_database_url: str, trap: bool
) -> None:
    """``trap=True`` puts the dropped index back, to show the test sees the trap."""
    async with docstore.connect(empty_database_url, pool_min_size=1, pool_max_size=1) as store:
        # never analyzed, as the scenario says: an autovacuum ANALYZE during a slow run (a
        # loaded CI host) would give the planner statistics and replan the cached statements
        await store.execute("ALTER TABLE documents SET (autovacuum_enabled = false)")
        if trap:  # one of the indexes migration 4 dropped
            await store.execute("CREATE INDEX idx_documents_source_name ON documents (source_name)")
        # Tiny table, never analyzed: every hot statement runs > 5 times on the one connection
        # (PostgreSQL considers a generic plan from the sixth execution on).
        for round_ in range(8):
            small = docs(3, start=10_000 + 3 * round_)
            await store.documents.upsert_many(small)  # lookup + COPY
            changed = [d.model_copy(update={"content": "changed"}) for d in small]
            await store.documents.upsert_many(changed)  # lookup + UPDATE
            await store.documents.upsert_many(changed)  # lookup + UPDATE + missing check
            await store.documents.get_by_key("rust", "big", small[0].doc_path)
        await store.documents.upsert_many(docs(BIG))  # the large load
        keys = docs(KEYS, start=BIG - KEYS)
        key_columns = [[d.doc_type for d in keys], [d.source_name for d in keys]]
        key_columns.append([d.doc_path for d in keys])
        async with store.acquire() as conn:
            lookup = await _measure(conn, repo._SELECT_EXISTING, *key_columns)
            update = await _measure(conn, repo._GUARDED_UPDATE, *repo._values(keys[0]))
            compare = await _measure(conn, repo._COMPARE, *repo._values(keys[0]))
            get = await _measure(
                conn,
                f"SELECT {repo._COLUMNS} FROM documents"
                " WHERE doc_type = $1 AND source_name = $2 AND doc_path = $3",
                "rust",
                "big",
                keys[0].doc_path,
            )
    per_key = lookup / KEYS  # (_SELECT_MISSING is the same probe, run only for vanished rows)
    if trap:  # a walk through the whole source for every key
        assert max(per_key, update, compare, get) > BIG / 2, (lookup, update, compare, get)
        return
    assert per_key < 10, lookup  # the unique key: a few index pages a key
    assert update < 100, update  # a real update: new tuple, TOAST chunks, index entries
    assert get < 10, get
    assert compare < 20, compare  # the row and its TOAST chunks


async def test_the_key_probe_is_planned_for_the_table_as_it_is_after_a_truncate(
    database_url: str,
) -> None:
    """The batch key probe's generic plan, made at the first batch after a TRUNCATE (an empty
    table, analyzed empty), probed each key with a sequential scan, and the connection kept it
    while the load filled the table: quadratic (5,000 documents into an emptied table 2.2 s
    against 0.5 s). Each batch's probe is now planned for the table as it is."""
    async with docstore.connect(database_url, pool_min_size=1, pool_max_size=1) as store:
        for round_ in range(7):  # past the five custom plans on the one connection
            await store.documents.upsert_many(docs(3, start=20_000 + 3 * round_))
        await store.execute("TRUNCATE documents")
        await store.execute("VACUUM ANALYZE documents")
        loaded = await store.documents.upsert_many(docs(600), batch_size=200)
        assert loaded.inserted == 600
        plans = await store.fetch(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE btrim(statement, E' \\n') = ANY($1::text[])",
            [repo._SELECT_EXISTING.strip(), repo._SELECT_MISSING.strip()],
        )
    assert plans and all(p["generic_plans"] == 0 for p in plans), plans
    assert sum(p["custom_plans"] for p in plans) >= 10


async def test_a_search_binding_a_list_is_never_run_on_a_generic_plan(database_url: str) -> None:
    """PostgreSQL hashes an ``$in`` list only in a plan made with its values; the generic plan
    a prepared statement switches to from its sixth run compared every row with every value
    (an exact search with 300 metadata values: 55 → 370 ms from the sixth run on). Vector
    and text searches binding a list are planned with their values each time, on a connection
    that runs them again and again: exact and text searches, then with an index the default
    search ranking the filtered rows on ``embedding_half``. Without that, PostgreSQL switched
    them to generic plans."""
    async with docstore.connect(database_url, pool_min_size=1, pool_max_size=1) as store:
        rows = docs(300, source="lists")
        for i, doc in enumerate(rows):
            doc.metadata = {"v": str(i % 50)}
        await store.documents.upsert_many(rows)
        await store.execute("VACUUM ANALYZE documents")
        values = [str(i) for i in range(0, 50, 2)]
        filters = [
            {"metadata.v": {"$in": values}},
            {"metadata.v": {"$nin": values}},
            {"token_count": {"$in": list(range(0, 300, 3))}},
            {"source_name": {"$in": ["lists", "other"]}, "metadata.v": {"$in": values}},
        ]
        query = rows[7].embedding
        for flt in filters:  # the same filters with short lists: kept by asyncpg's cache
            short = {
                key: {op: items[:2] for op, items in value.items()}
                if key != "source_name"
                else value
                for key, value in flt.items()
            }
            await store.search(query, filter=short, exact=True)
            await store.search_text("c", filter=short)
        for _ in range(8):  # past the five custom plans on the one connection
            for flt in filters:
                exact = await store.search(query, filter=flt, exact=True)
                ranked = await store.search(query, filter=flt, limit=5)
                assert ranked.ids == exact.ids[:5]
                await store.search_text("c", filter=flt)
        kept = await store.fetch(_KEPT_LISTS)
        # each run prepared a statement of its own, whose first run PostgreSQL plans with its
        # values; none is kept to be run again (and switched to a generic plan), and none is
        # left behind: only the short lists' statements, in asyncpg's cache
        assert len(kept) <= 2 * len(filters), [p["statement"][-60:] for p in kept]
        await store.create_vector_index(calibrate=False)  # sized filters, ranked on halfvec
        selective = {"metadata.v": {"$in": ["0", *(f"absent {i}" for i in range(10))]}}
        modes = set()
        for _ in range(8):
            for flt in [*filters, selective]:  # 6 of 300 rows match the last one
                modes.add((await store.search(query, filter=flt, limit=5)).mode)
        assert "halfvec" in modes, modes
        kept = await store.fetch(_KEPT_LISTS)  # the ANN and sizing statements: custom plans
    assert kept and all(p["generic_plans"] == 0 for p in kept), [dict(p) for p in kept]


_KEPT_LISTS = (
    "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
    " WHERE statement LIKE '% = ANY(%' AND statement NOT LIKE '%pg_prepared_statements%'"
)
