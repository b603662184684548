"""docstore on a Citus cluster (coordinator + 2 workers): distributed schema, writes, searches."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
from prometheus_client import generate_latest
from typer.testing import CliRunner

import docstore
from docstore.cli import app
from docstore.codecs import register_codecs
from docstore.compat import LegacyDatabase
from docstore.migrate import Migrator
from docstore.migrate.legacy import LEGACY_SCHEMA_SQL
from docstore.prometheus import registry_for, snapshot_from_text
from docstore.repositories.documents import _insert_new
from docstore.search import growth, planner, queries, table_size
from docstore.search import tuner as tuner_module
from docstore.search.calibration import Calibrator
from docstore.testing import printed_vector
from tests.citus.conftest import SCRIPT
from tests.conftest import PgCluster, unit_vector
from tests.legacy_db import build_legacy
from tests.test_compat import LegacySQL, same, without_time
from tests.test_compat import docs as legacy_docs
from tests.test_migrate import legacy_snapshot

pytestmark = pytest.mark.citus

SOURCES = ("tokio", "serde", "axum", "rayon", "clap", "hyper")


def corpus(per_source: int = 40) -> list[docstore.Document]:
    """Documents of several sources, each with a distinct random unit vector."""
    docs = []
    for s, source in enumerate(SOURCES):
        for i in range(per_source):
            seed = 1000 * s + i
            docs.append(
                docstore.Document(
                    source_name=source,
                    doc_path=f"{source}/{i}",
                    content=f"how to spawn task {i} with {source}",
                    embedding=unit_vector(seed),
                    token_count=i,
                    metadata={"n": i, "even": i % 2 == 0},
                )
            )
    return docs


def exact_top(docs: list[docstore.Document], query: np.ndarray, k: int = 10) -> list[str]:
    """The doc_paths of the exact cosine top ``k`` (numpy, float64)."""
    matrix = np.stack([np.asarray(d.embedding, dtype=np.float64) for d in docs])
    q = query.astype(np.float64)
    distances = 1 - matrix @ q / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(q))
    return [docs[i].doc_path for i in np.argsort(distances, kind="stable")[:k]]


async def shard_placements(store: docstore.Store, table: str) -> dict[int, int]:
    """Shards of ``table`` per worker port."""
    rows = await store.fetch(
        "SELECT nodeport, count(*) AS n FROM citus_shards WHERE table_name = $1::regclass"
        " GROUP BY nodeport",
        table,
    )
    return {r["nodeport"]: r["n"] for r in rows}


async def on_every_shard(store: docstore.Store, table: str, sql: str) -> list[str]:
    """``sql`` (``%s`` = the shard's name) run on every shard of ``table``; its results."""
    rows = await store.fetch(
        "SELECT success, result FROM run_command_on_shards($1, $2)", table, sql
    )
    assert all(r["success"] for r in rows), rows
    return [r["result"] for r in rows]


# -- the cluster script ----------------------------------------------------------------------


def test_cluster_up_again_is_idempotent(citus_cluster: tuple[str, Path | None]) -> None:
    url, directory = citus_cluster
    if directory is None:
        pytest.fail("DOCSTORE_TEST_CITUS_URL is set: this test checks scripts/citus-cluster")
    env = {k: v for k, v in os.environ.items() if k != "CITUS_BASE_PORT"}
    started = time.perf_counter()
    again = subprocess.run(  # the ports are remembered in the directory
        [str(SCRIPT), "up", str(directory)], capture_output=True, text=True, timeout=120, env=env
    )
    took = time.perf_counter() - started
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == url
    assert took < 10, f"up on a running cluster took {took:.1f} s"
    url_only = subprocess.run(
        [str(SCRIPT), "url", str(directory)], capture_output=True, text=True, env=env
    )
    assert url_only.stdout.strip() == url


# -- schema ----------------------------------------------------------------------------------


def test_init_distributed_cli(citus_url: str) -> None:
    result = CliRunner().invoke(app, ["init", "--distributed", "--url", citus_url])
    assert result.exit_code == 0, result.output
    assert "distributed by source_name" in result.output
    asyncio.run(_check_distributed_schema(citus_url))
    again = CliRunner().invoke(app, ["init", "--distributed", "--url", citus_url])
    assert again.exit_code == 0, again.output
    assert "nothing to do" in again.output


async def _check_distributed_schema(citus_url: str) -> None:
    async with docstore.connect(citus_url) as store:
        assert store.distributed
        assert (await store.schema_status()).distributed
        rows = await store.fetch(
            "SELECT logicalrelid::text AS t, partmethod::text, colocationid,"
            " column_to_column_name(logicalrelid, partkey) AS col FROM pg_dist_partition"
            " WHERE logicalrelid IN ('documents'::regclass, 'document_sources'::regclass)"
        )
        assert {r["t"]: (r["partmethod"], r["col"]) for r in rows} == {
            "documents": ("h", "source_name"),
            "document_sources": ("h", "source_name"),
        }
        assert len({r["colocationid"] for r in rows}) == 1  # co-located
        docs_shards = await shard_placements(store, "documents")
        assert len(docs_shards) == 2, docs_shards  # shards on both workers
        pkey = await store.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'documents'::regclass AND contype = 'p'"
        )
        assert pkey == "PRIMARY KEY (id, source_name)"
        # on every shard: the updated_at trigger, embedding_half stored PLAIN, the page-sized
        # TOAST target
        triggers = await on_every_shard(
            store,
            "documents",
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = '%s'::regclass AND NOT tgisinternal",
        )
        assert set(triggers) == {"1"}
        storage = await on_every_shard(
            store,
            "documents",
            "SELECT attstorage::text || attgenerated::text FROM pg_attribute"
            " WHERE attrelid = '%s'::regclass AND attname = 'embedding_half'",
        )
        assert set(storage) == {"ps"}
        # migration 6: the 12 KB vector goes to TOAST without a pglz attempt, on every shard
        embedding = await on_every_shard(
            store,
            "documents",
            "SELECT attstorage::text FROM pg_attribute"
            " WHERE attrelid = '%s'::regclass AND attname = 'embedding'",
        )
        assert set(embedding) == {"e"}
        options = await on_every_shard(
            store, "documents", "SELECT reloptions::text FROM pg_class WHERE oid = '%s'::regclass"
        )
        assert set(options) == {"{toast_tuple_target=8160}"}


async def test_existing_tables_are_converted_with_their_rows(citus_url: str) -> None:
    docs = corpus(10)
    async with docstore.connect(citus_url) as store:
        assert not store.distributed  # plain tables on the coordinator
        await store.documents.upsert_many(docs)
        await store.sources.upsert(docstore.Source(source_name="tokio"))
        before = {(s.source_name, s.documents) for s in await store.documents.stats()}
        await store.migrate(distributed=True)
        assert store.distributed
        after = {(s.source_name, s.documents) for s in await store.documents.stats()}
        assert after == before
        # the coordinator's own table is an empty shell now
        assert await store.fetchval("SELECT pg_relation_size('documents')") == 0
        counts = await on_every_shard(store, "documents", "SELECT count(*) FROM %s")
        assert sum(map(int, counts)) == len(docs)
        assert await store.migrate(distributed=True) == []  # idempotent
    async with docstore.connect(citus_url) as reopened:
        assert reopened.distributed  # detected when a store opens


async def test_distributed_needs_a_citus_coordinator(single_url: str) -> None:
    async with docstore.connect(single_url) as store:
        with pytest.raises(docstore.SchemaError, match="no Citus"):
            await store.migrate(distributed=True)
        assert not store.distributed
        assert not (await store.schema_status()).distributed
        assert (await store.metrics(disk=False)).nodes == []  # no per-node probe


# -- writes ----------------------------------------------------------------------------------


async def test_upsert_many_counts_and_timestamps(dstore: docstore.Store) -> None:
    docs = corpus(20)
    first = await dstore.documents.upsert_many(docs)
    assert (first.inserted, first.updated, first.unchanged) == (len(docs), 0, 0)
    again = await dstore.documents.upsert_many(docs)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, len(docs))
    before = await dstore.documents.get_by_key("rust", "tokio", "tokio/3")
    assert before is not None and before.id is not None
    edited = docs[3].model_copy(update={"content": "changed"})
    result = await dstore.documents.upsert_many([edited, docs[4]])
    assert (result.inserted, result.updated, result.unchanged) == (0, 1, 1)
    after = await dstore.documents.get_by_key("rust", "tokio", "tokio/3")
    assert after is not None
    assert after.content == "changed"
    assert after.id == before.id
    assert after.created_at == before.created_at
    # the BEFORE UPDATE trigger fired on the worker holding the row
    assert after.updated_at is not None and before.updated_at is not None
    assert after.updated_at > before.updated_at
    unchanged = await dstore.documents.get_by_key("rust", "tokio", "tokio/4")
    assert unchanged is not None and unchanged.updated_at == unchanged.created_at
    assert await dstore.documents.get(before.id) == after  # by id: fans out
    assert await dstore.documents.count() == len(docs)
    assert await dstore.documents.count(source_name="serde") == 20
    assert await dstore.documents.delete_source("rust", "serde") == 20
    assert await dstore.documents.count() == len(docs) - 20
    assert await dstore.documents.delete(before.id)


async def test_racing_insert_falls_back_to_on_conflict(dstore: docstore.Store) -> None:
    """The COPY of 'new' rows meets rows a writer without the source lock inserted first:
    INSERT … ON CONFLICT on the distributed table takes over (routed per row)."""
    docs = corpus(3)[:3]
    await dstore.documents.upsert_many(docs)
    edited = [docs[0].model_copy(update={"content": "edited"}), docs[1], docs[2]]
    async with dstore.transaction() as conn:
        result = await _insert_new(conn, edited)
    assert (result.inserted, result.updated, result.unchanged) == (0, 1, 2)
    stored = await dstore.documents.get_by_key(*docs[0].key)
    assert stored is not None and stored.content == "edited"


async def test_ids_come_from_any_node_and_are_distinct(
    dstore: docstore.Store, citus_worker_urls: list[str]
) -> None:
    """An upsert through either worker gets ids from that worker's range of the bigint
    sequence (group id << 48), one through the coordinator from the table's own count."""
    docs = corpus(4)
    by_node = [docs[:8], docs[8:16], docs[16:]]  # sources written through each node
    assert (await dstore.documents.upsert_many(by_node[0])).inserted == 8
    for url, part in zip(citus_worker_urls, by_node[1:], strict=True):
        async with docstore.connect(url) as worker:
            assert worker.distributed
            assert (await worker.documents.upsert_many(part)).inserted == len(part)
            await worker.sources.upsert(docstore.Source(source_name=part[0].source_name))
    await dstore.sources.upsert(docstore.Source(source_name="tokio"))
    rows = await dstore.fetch("SELECT id, source_name, doc_path FROM documents")
    ids = {r["doc_path"]: r["id"] for r in rows}
    assert len(set(ids.values())) == len(docs) == 24
    coordinator = [ids[d.doc_path] for d in by_node[0]]
    first, second = ([ids[d.doc_path] for d in part] for part in by_node[1:])
    assert max(coordinator) < 2**31
    assert all(2**48 < i < 2**49 for i in first) and all(2**49 < i < 2**50 for i in second)
    sources = {s.source_name: s.id for s in await dstore.sources.list()}
    assert sources["tokio"] is not None and sources["tokio"] < 2**31
    assert all((sources[p[0].source_name] or 0) > 2**48 for p in by_node[1:])
    # the coordinator finds and deletes a worker's row by its bigint id
    found = await dstore.documents.get(second[0])
    assert found is not None and found.id == second[0]
    assert await dstore.documents.delete(second[0])
    with pytest.raises(docstore.ValidationError, match="bigint range"):
        await dstore.documents.get(2**63)
    # calibration's probes: the ids span 2^50, the sample still finds the stored vectors
    sample = await Calibrator(dstore).sample_stored(20)
    assert len({v.tobytes() for v in sample}) == 20


async def test_conversion_keeps_ids_and_makes_them_bigint(
    citus_url: str, citus_worker_urls: list[str]
) -> None:
    docs = corpus(5)
    async with docstore.connect(citus_url) as store:
        await store.documents.upsert_many(docs)
        gone = await store.documents.get_by_key(*docs[3].key)
        assert gone is not None and gone.id is not None
        await store.documents.delete(gone.id)  # a gap in the ids
        await store.sources.upsert(docstore.Source(source_name="serde"))
        query = "SELECT doc_path, id FROM documents"
        before = dict(await store.fetch(query))
        source_before = await store.fetchval("SELECT id FROM document_sources")
        assert (
            await store.fetchval(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
                " WHERE attrelid = 'documents'::regclass AND attname = 'id'"
            )
            == "integer"
        )
        await store.migrate(distributed=True)
        assert dict(await store.fetch(query)) == before
        assert await store.fetchval("SELECT id FROM document_sources") == source_before
        types = await store.fetch(
            "SELECT attrelid::regclass::text AS tbl, format_type(atttypid, atttypmod) AS type"
            " FROM pg_attribute WHERE (attrelid, attname) IN (('documents'::regclass, 'id'),"
            " ('document_sources'::regclass, 'id'),"
            " ('source_population_jobs'::regclass, 'source_id')) ORDER BY 1"
        )
        assert [r["type"] for r in types] == ["bigint"] * 3
        new = docstore.Document(source_name="tokio", doc_path="after", content="x")
        await store.documents.upsert_many([new])
        after = await store.documents.get_by_key(*new.key)
        assert after is not None and after.id == max(before.values()) + 1  # sequence kept
    async with docstore.connect(citus_worker_urls[0]) as worker:
        late = docstore.Document(source_name="serde", doc_path="late", content="x")
        await worker.documents.upsert_many([late])
        got = await worker.documents.get_by_key(*late.key)
        assert got is not None and got.id is not None and got.id > 2**48


async def test_conversion_asks_to_uninstall_the_views_first(citus_url: str) -> None:
    async with docstore.connect(citus_url) as store:
        await store.migrate()
        await LegacyDatabase(store).install_views()
        with pytest.raises(docstore.SchemaError, match="uninstall-views"):
            await store.migrate(distributed=True)
        assert not store.distributed
        await LegacyDatabase(store).uninstall_views()
        await store.migrate(distributed=True)
        await LegacyDatabase(store).install_views()
        for insert in (
            "insert into crates (name) values ('x')",
            "insert into crates (name) values ('x') returning id",  # legacy code reads ids back
            "insert into doc_embeddings (crate_name, doc_path, content) values ('x', 'p', 'c')"
            " returning id, crate_id",
        ):
            with pytest.raises(docstore.QueryError, match="LegacyDatabase"):
                await store.execute(insert)
        assert await store.fetchval("SELECT count(*) FROM docstore_legacy_view_guard") == 0
        # with a WHERE, Citus fails on the rewritten statement first: a QueryError, not a
        # SchemaError sending the user to `docstore init`
        with pytest.raises(docstore.QueryError) as raised:
            await store.execute("update crates set version = '2' where name = 'x'")
        assert not isinstance(raised.value, docstore.SchemaError)
        await LegacyDatabase(store).uninstall_views()
        assert await store.fetchval("SELECT to_regclass('docstore_legacy_view_guard')") is None


async def test_views_show_worker_ids_beyond_integer_as_null(
    dstore: docstore.Store, citus_worker_urls: list[str]
) -> None:
    """Legacy SQL keeps its integer columns: a row a worker wrote (id from 2^48) has a NULL
    id there, and still counts in crate_stats."""
    legacy = LegacyDatabase(dstore)
    await legacy.install_views()
    crate_id = await legacy.upsert_crate("tokio", "1.0")
    await legacy.insert_embedding(crate_id, "tokio", "near", "c", unit_vector(1).tolist(), 3)
    async with docstore.connect(citus_worker_urls[1]) as worker:
        await worker.documents.upsert_many(
            [docstore.Document(source_name="tokio", doc_path="far", content="c")]
        )
        await worker.sources.upsert(docstore.Source(source_name="serde"))
    rows = await dstore.fetch("SELECT doc_path, id, crate_id FROM doc_embeddings ORDER BY 1")
    near = await dstore.documents.get_by_key("rust", "tokio", "near")
    assert near is not None and near.id is not None
    assert [tuple(r) for r in rows] == [
        ("far", None, crate_id),
        ("near", near.id + 1_000_000_000, crate_id),
    ]
    types = await dstore.fetch(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid IN ('crates'::regclass, 'doc_embeddings'::regclass)"
        " AND attname IN ('id', 'crate_id')"
    )
    assert {r[0] for r in types} == {"integer"}
    crates = {r["name"]: r["id"] for r in await dstore.fetch("SELECT name, id FROM crates")}
    assert crates == {"tokio": crate_id, "serde": None}
    stats = {r["name"]: r["doc_count"] for r in await dstore.fetch("SELECT * FROM crate_stats")}
    assert stats == {"tokio": 2, "serde": 0}
    # table_size: the shards' bytes, not the coordinator's empty shell
    sizes = {r[0] for r in await dstore.fetch("SELECT table_size FROM crate_stats")}
    cluster, shell = await dstore.fetchrow(
        "SELECT pg_size_pretty(citus_total_relation_size('documents')),"
        " pg_size_pretty(pg_total_relation_size('documents'))"
    )
    assert sizes == {cluster} and cluster != shell


# -- searches --------------------------------------------------------------------------------


async def test_one_source_search_is_routed_to_one_shard(dstore: docstore.Store) -> None:
    docs = corpus(40)
    await dstore.documents.upsert_many(docs)
    query = unit_vector(5)
    sql, params = queries.vector_search_sql(
        query,
        dim=3072,
        limit=5,
        filter={"doc_type": "rust", "source_name": "tokio"},
        distributed=True,  # as searches send it (the vector as a CTE): still one shard
    )
    plan = "\n".join(r[0] for r in await dstore.fetch("EXPLAIN " + sql, *params))
    assert set(re.findall(r"Task Count: (\d+)", plan)) == {"1"}, plan
    tokio = [d for d in docs if d.source_name == "tokio"]
    for exact in (True, None):
        results = await dstore.search(query, source_name="tokio", limit=5, exact=exact)
        assert [h.doc_path for h in results] == exact_top(tokio, query, 5)


async def test_unscoped_exact_top10_equals_single_node(
    dstore: docstore.Store, single_url: str
) -> None:
    docs = corpus(40)
    await dstore.documents.upsert_many(docs)
    async with docstore.connect(single_url) as single:
        await single.documents.upsert_many(docs)
        for seed in (5, 77, 1234, 4242):
            query = unit_vector(seed + 100_000)
            on_cluster = await dstore.search(query, limit=10, exact=True)
            on_one = await single.search(query, limit=10, exact=True)
            assert [h.doc_path for h in on_cluster] == [h.doc_path for h in on_one]
            assert [h.doc_path for h in on_cluster] == exact_top(docs, query)
            assert np.allclose(
                [h.similarity for h in on_cluster], [h.similarity for h in on_one], atol=1e-6
            )


async def test_ann_fans_out_and_merges(dstore: docstore.Store) -> None:
    docs = corpus(40)
    await dstore.documents.upsert_many(docs)
    index = await dstore.create_vector_index(calibrate=False)
    assert index.usable
    hnsw = await on_every_shard(
        dstore,
        "documents",
        "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = '%s'::regclass"
        " AND a.amname = 'hnsw' AND i.indisvalid",
    )
    assert set(hnsw) == {"1"}  # the HNSW index exists on every shard
    hits = 0
    for seed in (5, 77, 1234):
        query = unit_vector(seed + 200_000)
        results = await dstore.search(query, limit=10, exact=False)
        assert results.mode == "ann"
        truth = exact_top(docs, query)
        hits += len(set(truth) & {h.doc_path for h in results})
        by_type = await dstore.search(query, doc_type="rust", limit=10, exact=False)
        assert by_type.mode == "ann"
        assert len(set(truth) & {h.doc_path for h in by_type}) >= 9
        scoped = await dstore.search(query, source_name="axum", limit=5, exact=False)
        assert scoped.mode == "ann"
        axum = [d for d in docs if d.source_name == "axum"]
        assert [h.doc_path for h in scoped] == exact_top(axum, query, 5)
    assert hits / 30 >= 0.9


async def test_the_tuner_sees_a_distributed_table_grow(
    dstore: docstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The growth check measured the coordinator's shell table, which has no pages: on a
    cluster no growth was seen, and a calibration deferred at index build (index first, then
    load) waited for ``docstore index calibrate``. It reads the shards' pages
    (``citus_relation_size``) and samples every shard now: the deferred calibration is started
    once the rows are there, and so is a recalibration of a table grown threefold. (The
    background calibrations are recorded, not run: paced, each takes minutes on a cluster.)"""
    monkeypatch.setattr(tuner_module, "CACHE_SECONDS", 0.0)
    monkeypatch.setattr(growth, "DEFERRED_ROWS", 100)
    started: list[str] = []
    monkeypatch.setattr(tuner_module.SearchTuner, "_auto", lambda _, m, why: started.append(why))
    tuner = dstore.tuner
    await dstore.create_vector_index()
    assert await tuner.calibration() is None  # deferred: no embeddings yet
    await dstore.documents.upsert_many(corpus(20))  # 120 documents, a page each
    await tuner.calibration()
    await tuner.wait()
    assert started == ["deferred at index build; the table has ~120 rows with an embedding now"]
    first = await tuner.calibrate(sample=10)
    assert first.table_rows == 120
    assert first.embedded_estimate is not None and abs(first.embedded_estimate - 120) <= 12
    await tuner.calibration()
    await tuner.wait()
    assert len(started) == 1  # no growth since
    await dstore.documents.upsert_many(corpus(60))  # 360: more pages than the sample's 256
    assert await dstore.fetchval(f"SELECT {table_size.SHARD_PAGES}") > growth.SAMPLE_PAGES
    await tuner.calibration()
    await tuner.wait()
    assert len(started) == 2
    grown = re.fullmatch(r"the table has ~(\d+) rows with an embedding, ~(\d+) then", started[1])
    assert grown is not None and int(grown[2]) == round(first.embedded_estimate or 0)
    assert abs(int(grown[1]) - 360) <= 72


async def test_fanned_out_statements_send_the_vector_once_not_in_each_shards_sql(
    dstore: docstore.Store,
) -> None:
    """The coordinator printed a 3,072-float query vector into every shard's SQL, four times
    in an ANN statement (~135 KB a shard); now it goes to each worker once, in binary, as the
    CTE's intermediate result. Same rows, and the shards still order by the HNSW index."""
    docs = corpus(40)
    await dstore.documents.upsert_many(docs)
    await dstore.create_vector_index(calibrate=False)
    query = np.asarray(unit_vector(31_337), dtype=np.float32)
    shapes = {
        "ann": dict(candidates=40, ef_search=64),
        "exact": {},
        "halfvec": dict(candidates=40, candidate_source="halfvec"),
    }
    async with dstore.acquire() as conn:
        for name, extra in shapes.items():
            build = queries.ann_search_sql if name == "ann" else queries.vector_search_sql
            rows = {}
            for distributed in (False, True):
                sql, params = build(query, dim=3072, limit=10, distributed=True, **extra)
                if not distributed:  # as before: the statement refers to $1 itself
                    sql = printed_vector(sql, 3072)
                issued: list[str] = []

                def log(_: object, message: Any, into: list[str] = issued) -> None:
                    into.append(message.message)

                conn.add_log_listener(log)
                try:
                    async with conn.transaction():
                        await conn.execute(queries.ann_settings_sql(64, distributed=True))
                        await conn.execute(
                            "SET LOCAL citus.log_remote_commands = on;"
                            " SET LOCAL client_min_messages = log"
                        )
                        rows[distributed] = [r["id"] for r in await conn.fetch(sql, *params)]
                        if distributed and name == "ann":
                            plan = await conn.fetch("EXPLAIN " + sql, *params)
                finally:
                    conn.remove_log_listener(log)
                sent = [m for m in issued if m.startswith("issuing SELECT")]
                assert sent, issued
                if distributed:
                    assert max(map(len, sent)) < 8_000, (name, max(map(len, sent)))
                    if name == "ann":
                        text = "\n".join(r[0] for r in plan)
                        assert "Index Scan using documents_embedding_hnsw" in text, text
                else:  # the query vector printed into each shard's SQL, as before
                    assert min(map(len, sent)) > 30_000, (name, min(map(len, sent)))
            assert rows[True] == rows[False] and len(rows[True]) == 10, name


async def test_ann_set_local_reaches_the_shards(dstore: docstore.Store) -> None:
    await dstore.documents.upsert_many(corpus(2))
    probe = "SELECT DISTINCT current_setting('hnsw.ef_search') FROM documents"
    async with dstore.acquire() as conn:
        async with conn.transaction():
            await conn.execute(queries.ann_settings_sql(123, distributed=True))
            seen = {r[0] for r in await conn.fetch(probe)}
        assert seen == {"123"}
        async with conn.transaction():  # what docstore's setting changes: without it, the
            await conn.execute("SET LOCAL citus.propagate_set_commands = 'none'")
            await conn.execute("SET LOCAL hnsw.ef_search = 123")
            # shards: the default ("" in a cached worker connection that saw an earlier
            # transaction's SET LOCAL before pgvector was loaded there)
            assert {r[0] for r in await conn.fetch(probe)} <= {"40", ""}


async def test_filters(dstore: docstore.Store) -> None:
    docs = corpus(30)
    await dstore.documents.upsert_many(docs)
    query = unit_vector(9_999)
    flt: dict[str, Any] = {"metadata.n": {"$lt": 10}, "metadata.even": True}
    wanted = [d for d in docs if (d.metadata or {})["n"] < 10 and (d.metadata or {})["even"]]
    exact = await dstore.search(query, filter=flt, limit=10, exact=True)
    assert [h.doc_path for h in exact] == exact_top(wanted, query)
    await dstore.create_vector_index(calibrate=False)
    ann = await dstore.search(query, filter=flt, limit=10, exact=False)
    assert {h.doc_path for h in ann} <= {d.doc_path for d in wanted}
    assert len(set(exact_top(wanted, query)) & {h.doc_path for h in ann}) >= 9
    in_list = await dstore.search(
        query, filter={"source_name": {"$in": ["tokio", "clap"]}}, limit=10, exact=True
    )
    pair = [d for d in docs if d.source_name in ("tokio", "clap")]
    assert [h.doc_path for h in in_list] == exact_top(pair, query)


async def test_text_and_hybrid_search(dstore: docstore.Store) -> None:
    docs = corpus(20)
    await dstore.documents.upsert_many(docs)
    await dstore.create_text_index()
    await dstore.create_vector_index(calibrate=False)
    text = await dstore.search_text("spawn task 7", source_name="tokio", limit=5)
    assert len(text) > 0 and all(h.source_name == "tokio" for h in text)
    assert "tokio/7" in [h.doc_path for h in text]
    everywhere = await dstore.search_text("spawn task 7", limit=10)
    assert {h.source_name for h in everywhere} > {"tokio"}
    query = unit_vector(7)  # tokio/7's own vector
    for scope in ({"source_name": "tokio"}, {}):
        hybrid = await dstore.hybrid_search("spawn task 7", query, limit=5, **scope)
        assert hybrid.mode == "hybrid"
        assert hybrid[0].doc_path == "tokio/7"


# -- the legacy API and SQL ------------------------------------------------------------------

LEGACY_READS_WITHOUT_IDS = [
    "select crate_name, count(*) from doc_embeddings group by 1 order by 1",
    "select exists (select 1 from doc_embeddings where crate_name = 'tokio')",
    "select exists (select 1 from doc_embeddings where crate_name = 'nope')",
    "select count(*) from doc_embeddings where embedding is null",
    "select crate_name, doc_path, md5(content), token_count from doc_embeddings"
    " order by crate_name, doc_path",
    "select name, version, total_docs, total_tokens from crates order by name",
    "select c.name, count(d.id) from crates c join doc_embeddings d on c.name = d.crate_name"
    " group by 1 order by 1",
    "select name, version, doc_count, total_tokens from crate_stats order by name",
]


async def test_legacy_operations_and_views_behave_as_on_the_legacy_server(
    dstore: docstore.Store, empty_database_url: str
) -> None:
    """The legacy Doc Server's operations through LegacyDatabase on the cluster against the
    legacy SQL on a single node, then the compat views and search_similar_docs."""
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(LEGACY_SCHEMA_SQL)
        await register_codecs(conn, "public")
        legacy, compat = LegacySQL(conn), LegacyDatabase(dstore)
        ids, serde_ids = {}, {}
        for target in (legacy, compat):
            ids[target] = await target.upsert_crate("tokio", "1.0")
            assert await target.upsert_crate("tokio", None) == ids[target]
            serde_ids[target] = await target.upsert_crate("serde", "2.0")
        a, b = await same(legacy, compat, "get_crate_stats")
        assert without_time(a) == without_time(b)
        batch = legacy_docs(30, seed=1)
        serde = legacy_docs(12, seed=2, prefix="serde")
        for target in (legacy, compat):
            await target.insert_embeddings_batch(ids[target], "tokio", batch)
            await target.insert_embeddings_batch(serde_ids[target], "serde", serde)
        a, b = await same(legacy, compat, "get_crate_stats")
        assert without_time(a) == without_time(b)
        changed = np.full(3072, 0.25, dtype=np.float32)
        for target in (legacy, compat):
            await target.insert_embedding(ids[target], "tokio", "doc/3.html", "x", changed, 7)
        assert await same(legacy, compat, "count_crate_documents", "tokio") == (30, 30)
        for query in (batch[7].embedding, changed):
            a, b = await same(legacy, compat, "search_similar_docs", "tokio", query, 5)
            assert [r[:2] for r in a] == [r[:2] for r in b]

        used = await compat.install_views()
        assert used == "public"
        for sql in LEGACY_READS_WITHOUT_IDS:
            expected = [tuple(r) for r in await conn.fetch(sql)]
            assert [tuple(r) for r in await dstore.fetch(sql)] == expected, sql
        function_sql = (
            "select doc_path, md5(content), similarity from search_similar_docs($1, $2, 5)"
        )
        for with_index in (False, True):
            if with_index:
                await dstore.create_vector_index(calibrate=False)
            for crate, query in (("tokio", batch[3].embedding), ("serde", changed)):
                expected = await conn.fetch(function_sql, query, crate)
                got = await dstore.fetch(function_sql, query, crate)
                assert [tuple(r)[:2] for r in got] == [tuple(r)[:2] for r in expected]
        assert await same(legacy, compat, "delete_crate_embeddings", "tokio") == (30, 30)
        # writes through the views are still refused, but Citus plans a DELETE on the view
        # before its INSTEAD OF trigger could explain ("could not find valid entry for shard")
        with pytest.raises(docstore.QueryError):
            await dstore.execute("delete from doc_embeddings")
        assert await dstore.documents.count() == 12
    finally:
        await conn.close()


# -- the Migrator: single-node legacy database -> cluster --------------------------------------

LEGACY_DOCS = 4133


async def test_compat_function_ranks_a_large_crate_exactly(dstore: docstore.Store) -> None:
    """search_similar_docs() on a cluster, past the size where one node would use the HNSW
    index: its settings cannot reach the shard from a legacy caller's autocommit SELECT, so
    the crate is ranked by its half-precision copy and re-ranked exactly — the exact top 10."""
    rng = np.random.default_rng(5)
    big = planner.HALFVEC_SCOPE_ROWS + 500
    vectors = rng.normal(size=(big + 500, 3072)).astype(np.float32)
    await dstore.documents.upsert_many(
        docstore.Document(
            source_name="big" if i < big else f"s{i % 5}",
            doc_path=f"p{i}",
            content="c",
            embedding=v,
        )
        for i, v in enumerate(vectors)
    )
    vectors = vectors[:big]
    await dstore.create_vector_index(calibrate=False)
    await dstore.execute("ANALYZE documents")  # the shards' planners then choose the index
    await LegacyDatabase(dstore).install_views()
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for q in range(8):
        query = vectors[q * 31] + rng.normal(scale=0.5, size=3072).astype(np.float32)
        truth = [f"p{i}" for i in np.argsort(-(unit @ query))[:10]]
        rows = await dstore.fetch("SELECT doc_path FROM search_similar_docs($1, 'big', 10)", query)
        assert [r[0] for r in rows] == truth


async def test_an_older_install_of_the_legacy_views_is_refreshed_on_a_cluster(
    dstore: docstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stamp and the refresh (docstore.compat.installs) on a coordinator: an install with
    another rule and no stamp is found stale, installed again with the cluster's rules, and
    searches."""
    from docstore.compat import views

    schema = f"old_{uuid.uuid4().hex[:8]}"
    await dstore.documents.upsert_many(sample := _few_documents(12))
    with monkeypatch.context() as m:  # what an older docstore left: other SQL, no stamps
        m.setattr(views, "MIN_HALFVEC_CANDIDATES", 12_345)
        await LegacyDatabase(dstore).install_views(schema)
    await dstore.execute(
        f"COMMENT ON FUNCTION {views.function_signature(schema, 3072)} IS NULL;"
        f" COMMENT ON VIEW {schema}.crates IS NULL; COMMENT ON VIEW {schema}.doc_embeddings IS NULL"
    )
    assert "12345" in await dstore.fetchval(
        "SELECT prosrc FROM pg_proc WHERE proname = 'search_similar_docs'"
        f" AND pronamespace = '{schema}'::regnamespace"
    )
    legacy = LegacyDatabase(dstore)
    mine = [v for v in await legacy.views_status() if v.schema == schema]
    assert [(v.doc_type, v.up_to_date) for v in mine] == [("rust", False)]
    assert schema in await legacy.refresh_views()
    mine = [v for v in await legacy.views_status() if v.schema == schema]
    assert [(v.doc_type, v.up_to_date) for v in mine] == [("rust", True)]
    assert "12345" not in await dstore.fetchval(
        "SELECT prosrc FROM pg_proc WHERE proname = 'search_similar_docs'"
        f" AND pronamespace = '{schema}'::regnamespace"
    )
    with pytest.raises(docstore.QueryError, match="read-only docstore compatibility view"):
        await dstore.execute(f"INSERT INTO {schema}.crates (name) VALUES ('x')")
    query = sample[0].embedding
    rows = await dstore.fetch(
        f"SELECT doc_path FROM {schema}.search_similar_docs($1, 'few', 3)", query
    )
    assert rows[0][0] == sample[0].doc_path
    await legacy.uninstall_views(schema)


def _few_documents(n: int) -> list[docstore.Document]:
    rng = np.random.default_rng(11)
    return [
        docstore.Document(
            source_name="few",
            doc_path=f"f{i}",
            content="c",
            embedding=rng.normal(size=3072).astype(np.float32),
        )
        for i in range(n)
    ]


async def test_migrate_a_legacy_database_into_the_cluster_and_back(
    dstore: docstore.Store, citus_url: str, pg: PgCluster
) -> None:
    """Acceptance 2 of issue 16: after the migration the shards of documents on both workers
    hold rows, per-source counts equal the legacy database's, a one-source search is a
    single-shard router plan, an unscoped exact search returns the legacy top 10; then the
    rollback into an empty single-node database gives the legacy database back."""
    names = [f"citus_legacy_{uuid.uuid4().hex[:12]}", f"citus_back_{uuid.uuid4().hex[:12]}"]
    for name in names:
        await pg.execute(f'CREATE DATABASE "{name}"')
    legacy_url, back_url = (pg.url(name) for name in names)
    try:
        await build_legacy(legacy_url, crates=8, docs=LEGACY_DOCS)
        async with Migrator(legacy_url, citus_url, chunk_rows=1000) as migrator:
            report = await migrator.run()
        assert report.ok, report.validation
        assert report.copied_documents == LEGACY_DOCS
        rows_per_worker = await dstore.fetch(
            "SELECT s.nodeport, sum(r.result::bigint) AS n FROM citus_shards s"
            " JOIN run_command_on_shards('documents', 'SELECT count(*) FROM %s') r"
            " ON r.shardid = s.shardid WHERE s.table_name = 'documents'::regclass"
            " GROUP BY s.nodeport"
        )
        assert len(rows_per_worker) == 2 and all(r["n"] > 0 for r in rows_per_worker)
        assert sum(r["n"] for r in rows_per_worker) == LEGACY_DOCS
        legacy = await asyncpg.connect(legacy_url)
        try:
            await register_codecs(legacy, "public")
            per_source = dict(
                await legacy.fetch("SELECT crate_name, count(*) FROM doc_embeddings GROUP BY 1")
            )
            stats = {s.source_name: s.documents for s in await dstore.documents.stats()}
            assert stats == per_source
            query = unit_vector(31337)
            legacy_top = [
                r[0]
                for r in await legacy.fetch(
                    "SELECT doc_path FROM doc_embeddings WHERE embedding IS NOT NULL"
                    " ORDER BY embedding <=> $1 LIMIT 10",
                    query,
                )
            ]
        finally:
            await legacy.close()
        cluster_top = await dstore.search(query, limit=10, exact=True)
        assert [h.doc_path for h in cluster_top] == legacy_top
        sql, params = queries.vector_search_sql(
            query,
            dim=3072,
            limit=5,
            filter={"doc_type": "rust", "source_name": "crate3"},
            distributed=True,
        )
        plan = "\n".join(r[0] for r in await dstore.fetch("EXPLAIN " + sql, *params))
        assert set(re.findall(r"Task Count: (\d+)", plan)) == {"1"}, plan
        async with Migrator(back_url, citus_url) as back:
            result = await back.rollback()
        assert result.documents == LEGACY_DOCS
        assert await legacy_snapshot(back_url) == await legacy_snapshot(legacy_url)
    finally:
        for name in names:
            await pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- health and disk usage -------------------------------------------------------------------


async def test_health_and_disk_usage_per_node(dstore: docstore.Store) -> None:
    docs = corpus(20)
    await dstore.documents.upsert_many(docs)
    await dstore.create_vector_index(calibrate=False)
    health = await dstore.health()
    assert health.ok and health.distributed and not health.degraded, health.warnings
    roles = sorted((n.coordinator, n.reachable, n.active) for n in health.cluster)
    assert roles == [(False, True, True), (False, True, True), (True, True, True)]
    workers = [n for n in health.cluster if not n.coordinator]
    assert all(n.shards and n.documents_bytes for n in workers)
    shards = await dstore.fetchval(
        "SELECT count(*) FROM citus_shards WHERE table_name = 'documents'::regclass"
    )
    assert sum(n.shards or 0 for n in health.cluster) == shards
    usage = await dstore.disk_usage()
    stored = sum(n.documents_bytes or 0 for n in health.cluster)
    assert usage.documents_table_bytes + usage.documents_indexes_bytes == stored
    assert usage.indexes["documents_embedding_hnsw_cosine"] > 8 * 8192  # every shard's
    assert usage.database_bytes > stored


async def test_metrics_per_node(dstore: docstore.Store, citus_worker_urls: list[str]) -> None:
    docs = corpus(20)
    await dstore.documents.upsert_many(docs)
    # n_live_tup reaches pg_stat_user_tables when the writing backend reports: at once
    # when it closes, about 10 s later (PostgreSQL 15's idle report) for a worker connection
    # the coordinator keeps cached (citus.max_cached_conns_per_worker)
    deadline = time.monotonic() + 30
    while True:
        snapshot = await dstore.metrics(disk=False)
        rows = sum(n.documents_rows or 0 for n in snapshot.nodes)
        if rows == len(docs) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    async with docstore.connect(citus_worker_urls[0]) as worker:
        # a store on the first worker, with a query running there while metrics are taken
        sleeping = asyncio.create_task(worker.execute("SELECT pg_sleep(3)"))
        await asyncio.sleep(0.5)
        snapshot = await dstore.metrics(disk=False)
        await sleeping
    assert rows == len(docs)
    nodes = {(n.port, n.coordinator): n for n in snapshot.nodes}
    assert sorted(c for _, c in nodes) == [False, False, True]
    assert all(n.reachable and (n.connections or 0) >= 1 for n in snapshot.nodes)
    first = next(n for n in snapshot.nodes if str(n.port) in citus_worker_urls[0])
    assert (first.active_queries or 0) >= 1  # the pg_sleep
    workers = [n for n in snapshot.nodes if not n.coordinator]
    assert all(n.shards and n.documents_bytes and n.documents_rows for n in workers)
    shards = await dstore.fetchval(
        "SELECT count(*) FROM citus_shards WHERE table_name = 'documents'::regclass"
    )
    assert sum(n.shards or 0 for n in snapshot.nodes) == shards
    health = await dstore.health()
    assert {(n.port, n.shards, n.documents_bytes) for n in health.cluster} == {
        (n.port, n.shards, n.documents_bytes) for n in snapshot.nodes
    }


# -- one-source searches on the shard's worker ------------------------------------------------


async def _worker_backends(worker_urls: list[str], application_name: str) -> dict[int, int]:
    """Backends named ``application_name`` on each worker, by port."""
    found = {}
    for url in worker_urls:
        conn = await asyncpg.connect(url)
        try:
            port = await conn.fetchval("SELECT current_setting('port')::int")
            found[port] = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                application_name,
            )
        finally:
            await conn.close()
    return found


async def _one_source_searches(store: docstore.Store, query: Any) -> list[list[str]]:
    """The doc_paths of tokio's exact, halfvec, ANN, text and hybrid searches."""
    found = []
    for exact in (True, None, False):
        results = await store.search(query, source_name="tokio", limit=5, exact=exact)
        assert results.mode == {True: "exact", None: "halfvec", False: "ann"}[exact]
        found.append([h.doc_path for h in results])
    text = await store.search_text("spawn task 7", source_name="tokio", limit=5)
    found.append([h.doc_path for h in text])
    hybrid = await store.hybrid_search("spawn task 7", query, source_name="tokio", limit=5)
    found.append([h.doc_path for h in hybrid])
    return found


async def test_one_source_search_runs_on_the_shards_worker(
    citus_url: str, dstore: docstore.Store, citus_worker_urls: list[str], single_url: str
) -> None:
    docs = corpus(30)
    await dstore.documents.upsert_many(docs)
    await dstore.create_vector_index(calibrate=False)
    await dstore.create_text_index()
    holder = await dstore.fetchval(
        "SELECT nodeport FROM citus_shards WHERE table_name = 'documents'::regclass"
        " AND shardid = get_shard_id_for_distribution_column('documents', 'tokio')"
    )
    query = unit_vector(7)
    runs: dict[bool, list[list[str]]] = {}
    for route in (True, False):  # the default, then DOCSTORE_CITUS_ROUTE_SEARCHES=false
        name = f"docstore-route-{uuid.uuid4().hex[:8]}"
        overrides: dict[str, Any] = {} if route else {"citus_route_searches": False}
        async with docstore.connect(citus_url, application_name=name, **overrides) as store:
            assert store.distributed
            runs[route] = await _one_source_searches(store, query)
            stats = store._db._shards.stats()
            snapshot = await store.metrics(disk=False)
            assert (snapshot.routed_searches, snapshot.routing_fallbacks) == (
                (7, 0) if route else (0, 0)
            )
            backends = await _worker_backends(citus_worker_urls, name)
        if route:  # every search (hybrid: both halves; the halfvec scope count) ran on
            # tokio's worker, nowhere else
            assert stats["routed"] == 7 and stats["fallbacks"] == 0, stats
            assert stats["workers"] == [f"localhost:{holder}"]
            assert backends[holder] >= 1 and sum(backends.values()) == backends[holder]
        else:
            assert stats == {"routed": 0, "fallbacks": 0, "workers": [], "lookups": 0}
            assert sum(backends.values()) == 0, backends
    assert runs[True] == runs[False]
    tokio = [d for d in docs if d.source_name == "tokio"]
    assert runs[True][0] == exact_top(tokio, query, 5)
    assert runs[True][4][0] == "tokio/7"
    async with docstore.connect(single_url) as single:
        await single.documents.upsert_many(docs)
        for exact in (True, None):
            on_one = await single.search(query, source_name="tokio", limit=5, exact=exact)
            assert [h.doc_path for h in on_one] == runs[True][0]


async def test_concurrent_searches_of_a_new_source_share_one_placement_lookup(
    dstore: docstore.Store,
) -> None:
    """A burst of searches of a source not yet cached ran one placement query on the
    coordinator each; now they wait for one, and every search still runs on the worker."""
    docs = corpus(10)
    await dstore.documents.upsert_many(docs)
    shards = dstore._db._shards
    before = shards.lookups
    burst = await asyncio.gather(
        *(dstore.search(unit_vector(i), source_name="tokio", limit=3, exact=True) for i in range(6))
    )
    assert shards.lookups - before == 1
    tokio = [d for d in docs if d.source_name == "tokio"]
    for i, results in enumerate(burst):
        assert [h.doc_path for h in results] == exact_top(tokio, unit_vector(i), 3)
    # cached now; forgotten placements are looked up once more
    await dstore.search(unit_vector(0), source_name="tokio", limit=3, exact=True)
    assert shards.lookups - before == 1
    shards.forget()
    await asyncio.gather(
        *(dstore.search(unit_vector(i), source_name="tokio", limit=3) for i in range(3))
    )
    assert shards.lookups - before == 2


async def test_unreachable_worker_falls_back_to_the_coordinator(
    citus_url: str, dstore: docstore.Store, caplog: pytest.LogCaptureFixture
) -> None:
    docs = corpus(20)
    await dstore.documents.upsert_many(docs)
    query = unit_vector(3)
    expected = exact_top([d for d in docs if d.source_name == "axum"], query, 5)
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        closed = int(probe.getsockname()[1])
    async with docstore.connect(citus_url, replica_retry_seconds=60.0) as store:
        shards = store._db._shards
        shards.remember("axum", ("localhost", closed))  # a stale cache / a worker gone
        caplog.set_level("WARNING", logger="docstore")
        results = await store.search(query, source_name="axum", limit=5, exact=True)
        assert [h.doc_path for h in results] == expected
        warnings = [r.getMessage() for r in caplog.records if "Citus worker" in r.getMessage()]
        assert len(warnings) == 1, warnings  # once per outage
        assert f"localhost:{closed}" in warnings[0] and "coordinator" in warnings[0]
        # the failed node's placements were dropped: the next lookup finds the real worker
        assert shards.stats()["routed"] == 0 and shards.stats()["fallbacks"] == 1
        results = await store.search(query, source_name="axum", limit=5, exact=True)
        assert [h.doc_path for h in results] == expected
        assert shards.stats()["routed"] == 1
        # while down, the node is skipped without a connection attempt
        shards.remember("axum", ("localhost", closed))
        results = await store.search(query, source_name="axum", limit=5, exact=True)
        assert [h.doc_path for h in results] == expected
        assert shards.stats()["fallbacks"] == 2
        assert len([r for r in caplog.records if "Citus worker" in r.getMessage()]) == 1
        snapshot = await store.metrics(disk=False)  # and in metrics(), and for Prometheus
        assert (snapshot.routed_searches, snapshot.routing_fallbacks) == (1, 2)
        exposed = snapshot_from_text(generate_latest(registry_for(store)).decode())
        assert (exposed.routed_searches, exposed.routing_fallbacks) == (1, 2)


async def test_read_only_store_routes_with_its_guard(
    citus_url: str, dstore: docstore.Store
) -> None:
    docs = corpus(10)
    await dstore.documents.upsert_many(docs)
    query = unit_vector(2)
    async with docstore.connect(citus_url, read_only=True) as store:
        results = await store.search(query, source_name="serde", limit=3, exact=True)
        assert [h.doc_path for h in results] == exact_top(
            [d for d in docs if d.source_name == "serde"], query, 3
        )
        shards = store._db._shards
        assert shards.stats()["routed"] == 1
        # fanned out through the coordinator: the query vector's intermediate result reaches
        # the workers inside a read-only transaction too
        everywhere = await store.search(query, limit=3, exact=True)
        assert [h.doc_path for h in everywhere] == exact_top(docs, query, 3)
        pool = next(iter(shards._workers.values()))
        async with pool.acquire() as conn:  # the worker's connections: read-only too
            assert await conn.fetchval("SHOW default_transaction_read_only") == "on"
            with pytest.raises(docstore.ReadOnlyError):
                await conn.execute("DELETE FROM documents")


async def test_database_caches_connections_per_worker_for_fan_out(
    dstore: docstore.Store,
) -> None:
    settings = await dstore.fetchval(
        "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d"
        " ON d.oid = s.setdatabase WHERE d.datname = current_database() AND s.setrole = 0"
    )
    per_worker = await dstore.fetchval(
        "SELECT ceil(count(*)::numeric / count(DISTINCT nodeport))::int FROM citus_shards"
        " WHERE table_name = 'documents'::regclass"
    )
    expected = min(per_worker, 8)
    assert f"citus.max_cached_conns_per_worker={expected}" in settings
    assert "citus.propagate_set_commands=local" in settings
    assert await dstore.fetchval("SHOW citus.max_cached_conns_per_worker") == str(expected)
