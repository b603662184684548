"""(a) Storage: heap, TOAST and each index of ``documents``, bytes per document, extrapolated
linearly to 1M / 10M documents against this machine's RAM and ``shared_buffers``."""

from __future__ import annotations

from common import DIM, ram_bytes
from common import human_bytes as human

import docstore

STORAGE = """
SELECT pg_relation_size(c.oid) AS heap,
       pg_table_size(c.oid) AS table_size,
       coalesce(pg_relation_size(c.reltoastrelid), 0) AS toast,
       coalesce(pg_indexes_size(c.reltoastrelid), 0) AS toast_index,
       (SELECT count(*) FROM documents) AS rows,
       (SELECT avg(octet_length(content)) FROM documents) AS content_bytes
  FROM pg_class c WHERE c.oid = 'documents'::regclass
"""
INDEXES = """
SELECT c.relname AS name, am.amname AS am, pg_relation_size(c.oid) AS bytes
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam
 WHERE i.indrelid = 'documents'::regclass ORDER BY bytes DESC
"""
PART_STORAGE = """
SELECT sum(pg_table_size(relid)) AS table_size, sum(pg_indexes_size(relid)) AS indexes
  FROM pg_partition_tree('documents') WHERE isleaf
"""


async def storage(store: docstore.Store, part: docstore.Store | None) -> None:
    """Print the sizes of ``store``'s ``documents`` (and of ``part``'s partitioned copy)."""
    row = await store.fetchrow(STORAGE)
    idx = await store.fetch(INDEXES)
    n = row["rows"]
    shared = await store.fetchval("SELECT pg_size_bytes(current_setting('shared_buffers'))")
    print(
        f"\n(a) STORAGE of documents: {n:,} rows x {DIM} dims, content ~{row['content_bytes']:.0f}"
    )
    print("    bytes a row (pg_relation_size / pg_table_size / pg_relation_size of each index)\n")
    parts: list[tuple[str, int]] = [
        ("heap (row incl. in-row embedding_half)", row["heap"]),
        ("TOAST (the 12 KB vector) + its index", row["toast"] + row["toast_index"]),
        ("fsm + vm", row["table_size"] - row["heap"] - row["toast"] - row["toast_index"]),
    ]
    parts += [(f"index {r['name']} ({r['am']})", r["bytes"]) for r in idx]
    total = sum(b for _, b in parts)
    hnsw = sum(r["bytes"] for r in idx if r["am"] == "hnsw")
    print(f"    {'relation':58} {'total':>10} {'per doc':>9} {'1M docs':>10} {'10M docs':>10}")
    for name, b in [*parts, ("TOTAL", total)]:
        print(
            f"    {name[:58]:58} {human(b):>10} {b / n:>9,.0f} {human(b / n * 1e6):>10}"
            f" {human(b / n * 1e7):>10}"
        )
    pages = row["heap"] / 8192
    print(f"\n    heap: {n / pages:.2f} rows per 8 KB page ({row['heap'] / n:,.0f} B a row)")
    print(
        f"    extrapolated linearly (HNSW grows ~linearly in rows at fixed m=16): the HNSW"
        f" index is {human(hnsw / n * 1e6)} at 1M and {human(hnsw / n * 1e7)} at 10M; the"
        f" heap (what halfvec scans read) {human(row['heap'] / n * 1e6)} /"
        f" {human(row['heap'] / n * 1e7)}"
    )
    print(
        f"    this machine: RAM {human(ram_bytes())}, shared_buffers {human(shared)}; 1M docs"
        f" total {human(total / n * 1e6)}, 10M docs {human(total / n * 1e7)}"
    )
    if part is not None:
        prow = await part.fetchrow(PART_STORAGE)
        print(
            f"    partitioned copy (LIST by doc_type): tables {human(prow['table_size'])}, indexes"
            f" {human(prow['indexes'])} vs flat {human(row['table_size'])} /"
            f" {human(total - row['table_size'])}"
        )
