"""The partitioned copy (c) compares with: the database copied, its ``documents`` turned into
``PARTITION BY LIST (doc_type)`` with an HNSW index per partition; and docstore's own writes
and reads against it (:func:`part_writes`)."""

from __future__ import annotations

import time

import asyncpg
import numpy as np
from common import DIM, BenchServer

import docstore
from docstore import Document
from docstore.search import queries

PART_DB = "docstore_part"

# documents as a LIST-partitioned table. The primary key must contain the partition key, so it
# is (id, doc_type); the natural key keeps its three columns, in an order that does not lead with
# doc_type: inside a partition doc_type is one value, and a B-tree leading with it lets the
# planner answer "ORDER BY distance" with an index scan of the whole partition plus a sort
# (detoasting every 12 KB vector) instead of the partition's HNSW index. ON CONFLICT
# (doc_type, source_name, doc_path) infers it all the same (a unique index on the same columns).
PARTITION_DDL = """
ALTER TABLE documents RENAME TO documents_flat;
ALTER SEQUENCE documents_id_seq OWNED BY NONE;
CREATE TABLE documents (
    LIKE documents_flat INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING STORAGE,
    PRIMARY KEY (id, doc_type),
    UNIQUE (source_name, doc_path, doc_type)
) PARTITION BY LIST (doc_type);
"""
PARTITION_FINISH = """
INSERT INTO documents (id, doc_type, source_name, doc_path, content, metadata, embedding,
                       token_count, created_at, updated_at)
SELECT id, doc_type, source_name, doc_path, content, metadata, embedding,
       token_count, created_at, updated_at FROM documents_flat;
DROP TABLE documents_flat;
ALTER SEQUENCE documents_id_seq OWNED BY documents.id;
CREATE INDEX idx_documents_metadata ON documents USING gin (metadata);
CREATE INDEX idx_documents_legacy_id ON documents ((metadata->>'legacy_id'))
    WHERE metadata ? 'legacy_id';
CREATE TRIGGER update_documents_updated_at BEFORE UPDATE ON documents
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
"""


def partition_name(doc_type: str) -> str:
    return "documents_" + "".join(ch if ch.isalnum() else "_" for ch in doc_type.lower())


async def make_partitioned(server: BenchServer, doc_types: list[str]) -> tuple[float, float]:
    """Copy the (still unindexed) database ``docstore`` to :data:`PART_DB` and turn its
    ``documents`` into a LIST partitioned table with an HNSW index per partition; returns the
    seconds the conversion (DDL, copying the rows, B-tree/GIN indexes, VACUUM ANALYZE) and the
    HNSW builds took."""
    conn = await asyncpg.connect(await server.create_database(PART_DB, template="docstore"))
    try:
        t0 = time.perf_counter()
        async with conn.transaction():
            await conn.execute(PARTITION_DDL)
            for t in doc_types:
                await conn.execute(
                    f"CREATE TABLE {partition_name(t)} PARTITION OF documents FOR VALUES IN"
                    f" ('{t}') WITH (toast_tuple_target = 8160)"
                )
            await conn.execute(
                "CREATE TABLE documents_default PARTITION OF documents DEFAULT"
                " WITH (toast_tuple_target = 8160)"
            )
            await conn.execute(PARTITION_FINISH)
        await conn.execute("VACUUM ANALYZE documents")
        converted = time.perf_counter() - t0
        await conn.execute("SET maintenance_work_mem = '512MB'")
        t0 = time.perf_counter()
        # on the parent: PostgreSQL builds one HNSW index per partition (and attaches each)
        await conn.execute(
            queries.create_vector_index_sql(
                dim=DIM, metric_name="cosine", m=16, ef_construction=64, concurrently=False
            )
        )
        return converted, time.perf_counter() - t0
    finally:
        await conn.close()


async def part_writes(part: docstore.Store) -> None:
    """docstore's own writes and reads, unchanged, against the partitioned table, and what
    does not carry over."""
    docs = [
        Document(
            doc_type=t,
            source_name="partition-check",
            doc_path=f"p{i}",
            content=f"partition check {i}",
            embedding=np.full(DIM, 1.0 / np.sqrt(DIM), dtype=np.float32),
        )
        for i, t in enumerate(["rust", "rust", "a-new-doc-type"])
    ]
    first = await part.documents.upsert_many(docs)
    again = await part.documents.upsert_many(
        [docs[0].model_copy(update={"content": "changed"}), docs[1], docs[2]]
    )
    got = await part.documents.get_by_key("a-new-doc-type", "partition-check", "p2")
    where = await part.fetchval(
        "SELECT tableoid::regclass::text FROM documents WHERE doc_type = 'a-new-doc-type'"
    )
    deleted = await part.documents.delete_source("rust", "partition-check")
    print(
        f"\n    docstore unchanged on the partitioned copy: upsert_many {first}; again {again};"
        f" get_by_key found={got is not None} (in {where}); delete_source removed {deleted}"
    )
    usage = await part.disk_usage()
    indexes = await part.vector_indexes()
    try:
        await part.execute("CREATE INDEX CONCURRENTLY scale_check ON documents (token_count)")
        concurrently = "accepted"
    except docstore.DocstoreError as exc:
        concurrently = f"refused ({str(exc).splitlines()[0][:130]})"
    print(
        f"    but: disk_usage().documents_table_bytes = {usage.documents_table_bytes:,} (the"
        f" parent has no storage); vector_indexes() sees"
        f" {[(i.name, i.usable, i.size_bytes) for i in indexes]}; CREATE INDEX CONCURRENTLY on"
        f" the partitioned table (create_vector_index's default): {concurrently}"
    )
