"""The compatibility layer against the legacy behaviour, case by case: ids that survive a
migration, NULL crates, races, the SQL function's limits and search_path, the types and
limits of crate configs, and the errors bad input gets."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np
import pytest

import docstore
from docstore.codecs import register_codecs
from docstore.compat import CrateDocument, LegacyDatabase, LegacyDoc
from docstore.errors import ValidationError
from docstore.migrate.legacy import LEGACY_SCHEMA_SQL
from tests.conftest import unit_vector
from tests.legacy_db import legacy_fetch
from tests.test_calibration import clustered, noisy_queries
from tests.test_compat import LegacySQL

OFFSET = 1_000_000_000
CRATE_DOCS = 60


async def _legacy_conn(url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(url)
    await conn.execute(LEGACY_SCHEMA_SQL)
    await register_codecs(conn, "public")
    return conn


@pytest.fixture
async def both(
    empty_database_url: str, database_url: str
) -> AsyncIterator[tuple[asyncpg.Connection, LegacyDatabase]]:
    """A legacy database (its connection) and a docstore database (LegacyDatabase)."""
    conn = await _legacy_conn(empty_database_url)
    async with docstore.connect(database_url) as store:
        yield conn, LegacyDatabase(store)
    await conn.close()


# -- 1. crate and population-job ids -----------------------------------------------------------


@pytest.fixture
def migrated_unsorted(pg: Any, database_url: str) -> Iterator[tuple[str, str]]:
    """A legacy database whose crate ids are in insertion (not name) order and whose job ids
    have a gap (a deleted job), migrated into ``database_url``."""
    from docstore.migrate import Migrator

    name = pg.create_database(prefix="legacy")
    legacy_url = pg.url(name)

    async def setup() -> None:
        conn = await _legacy_conn(legacy_url)
        for i, crate in enumerate(("tokio", "serde", "anyhow")):  # ids 1, 2, 3
            crate_id = await conn.fetchval(
                "INSERT INTO crates (name, version) VALUES ($1, '1.0') RETURNING id", crate
            )
            await conn.execute(
                "INSERT INTO doc_embeddings (crate_id, crate_name, doc_path, content, embedding,"
                " token_count) VALUES ($1, $2, 'p', 'c', $3, 1)",
                crate_id,
                crate,
                unit_vector(i),
            )
        await conn.execute("INSERT INTO crate_configs (name) VALUES ('tokio'), ('serde')")
        for _ in range(3):
            await conn.execute("INSERT INTO population_jobs (crate_config_id) VALUES (1)")
        await conn.execute("DELETE FROM population_jobs WHERE id = 2")
        await conn.execute(
            "UPDATE population_jobs SET status = 'failed', error_message = 'boom' WHERE id = 3"
        )
        await conn.close()
        async with Migrator(legacy_url, database_url) as m:
            assert (await m.run()).ok

    asyncio.run(setup())
    yield legacy_url, database_url
    pg.drop_database(name)


async def test_crate_and_job_ids_are_the_legacy_ones_after_a_migration(
    migrated_unsorted: tuple[str, str],
) -> None:
    legacy_url, target_url = migrated_unsorted
    async with docstore.connect(target_url) as store:
        compat = LegacyDatabase(store)
        await compat.install_views()
        for sql in (
            "select id, name from crates order by name",
            "select id, crate_id, crate_name from doc_embeddings order by id",
            "select name, doc_count from crate_stats order by name",
        ):
            assert await legacy_fetch(legacy_url, sql) == await legacy_fetch(target_url, sql), sql
        # the legacy API hands out and takes the same crate and job ids
        assert await compat.upsert_crate("serde", None) == 2
        legacy_jobs = await legacy_fetch(
            legacy_url, "select id, status, error_message from population_jobs order by id"
        )
        assert [j[0] for j in legacy_jobs] == [1, 3]
        job = await compat.get_population_job(3)
        assert (
            job is not None and (job["id"], job["status"], job["error_message"]) == (legacy_jobs[1])
        )
        assert await compat.get_population_job(2) is None
        assert await compat.update_population_job(3, "running")
        job = await compat.get_population_job(3)
        assert job is not None and job["status"] == "running"


async def test_ids_of_crates_and_jobs_created_after_the_cutover(store: docstore.Store) -> None:
    """A crate or job docstore created shows its own id + 1,000,000,000, the same in the
    views and in every method; the id create_population_job returns works with the others."""
    compat = LegacyDatabase(store)
    await compat.install_views()
    tokio = await compat.upsert_crate("tokio", "1.0")
    source = await store.sources.get("rust", "tokio")
    assert source is not None and tokio == source.id + OFFSET
    await compat.insert_embedding(tokio, "tokio", "a.html", "text", unit_vector(1), 3)
    assert [tuple(r) for r in await store.fetch("select id, name from crates")] == [
        (tokio, "tokio")
    ]
    assert [tuple(r) for r in await store.fetch("select crate_id from doc_embeddings")] == [
        (tokio,)
    ]
    config = await compat.create_crate_config("tokio")
    job = await compat.create_population_job(config)
    own = await store.fetchval("select id from source_population_jobs")
    assert job == own + OFFSET
    assert await compat.update_population_job(job, "completed", docs_populated=5)
    got = await compat.get_population_job(job)
    assert got is not None and (got["id"], got["status"], got["docs_populated"]) == (
        job,
        "completed",
        5,
    )
    assert await compat.get_population_job(own) is None  # the bare serial id is not a job id


async def test_ids_past_the_legacy_integer_are_null_not_a_broken_view(
    store: docstore.Store,
) -> None:
    """A source id past 1,147,483,647 (upserts use up sequence values) made every query on the
    views fail with "integer out of range"; such an id is NULL there and None from the API,
    like a Citus id; a job id beyond the legacy integer is a ValidationError, not a driver
    error."""
    compat = LegacyDatabase(store)
    await compat.install_views()
    small = await compat.upsert_crate("small", "1.0")
    await store.execute(
        "SELECT setval(pg_get_serial_sequence('document_sources', 'id'), 1200000000)"
    )
    assert await compat.upsert_crate("big", "1.0") is None
    rows = {r["name"]: r["id"] for r in await store.fetch("select id, name from crates")}
    assert rows == {"small": small, "big": None}
    assert await store.fetchval("select count(*) from doc_embeddings") == 0
    for job in (5_000_000_000, -3_000_000_000):
        with pytest.raises(ValidationError, match="integer range"):
            await compat.get_population_job(job)


# -- 2. a NULL crate ---------------------------------------------------------------------------


async def test_a_null_crate_matches_nothing(
    both: tuple[asyncpg.Connection, LegacyDatabase],
) -> None:
    conn, compat = both
    legacy = LegacySQL(conn)
    for target in (legacy, compat):
        await target.insert_embeddings_batch(None, "tokio", [("a", "t", unit_vector(1), 1)])  # type: ignore[arg-type]
    assert await legacy.count_crate_documents(None) == 0  # type: ignore[arg-type]
    assert await compat.count_crate_documents(None) == 0  # type: ignore[arg-type]
    assert await legacy.search_similar_docs(None, unit_vector(1), 5) == []  # type: ignore[arg-type]
    assert await compat.search_similar_docs(None, unit_vector(1), 5) == []  # type: ignore[arg-type]
    with pytest.raises(docstore.ValidationError):  # the query is still checked
        await compat.search_similar_docs(None, [1.0, 2.0], 5)  # type: ignore[arg-type]


# -- 3. create_crate_config racing upsert_crate ------------------------------------------------


async def test_create_crate_config_waits_for_an_upsert_crate_of_the_same_new_crate(
    store: docstore.Store, database_url: str
) -> None:
    compat = LegacyDatabase(store)
    other = await asyncpg.connect(database_url)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute(  # what upsert_crate runs, committed a moment later
            "INSERT INTO document_sources (doc_type, source_name, config, last_populated)"
            " VALUES ('rust', 'newcrate', '{\"orphan\": false}', now())"
        )
        task = asyncio.create_task(compat.create_crate_config("newcrate"))
        await asyncio.sleep(0.5)
        await tx.commit()
    finally:
        await other.close()
    assert await asyncio.wait_for(task, 30) == 1
    assert [s.name for s in await compat.get_crate_stats()] == ["newcrate"]  # still a crate


async def test_create_crate_config_and_upsert_crate_concurrently(store: docstore.Store) -> None:
    compat = LegacyDatabase(store)
    for i in range(15):
        results = await asyncio.gather(
            compat.upsert_crate(f"c{i}", "1.0"),
            compat.create_crate_config(f"c{i}"),
            return_exceptions=True,
        )
        assert not [r for r in results if isinstance(r, BaseException)], results
    assert len(await compat.get_crate_stats()) == len(await compat.list_crate_configs()) == 15


# -- 4, 11. the SQL function -------------------------------------------------------------------


@pytest.fixture
async def pair(
    empty_database_url: str, database_url: str
) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Connection, docstore.Store]]:
    """The same crate through legacy SQL (legacy database) and LegacyDatabase (views
    installed), an HNSW index on the docstore side; a connection to each."""
    legacy = await _legacy_conn(empty_database_url)
    docs = [LegacyDoc(f"d/{i:03}", f"content {i}", unit_vector(i), i) for i in range(CRATE_DOCS)]
    crate = await legacy.fetchval("INSERT INTO crates (name) VALUES ('tokio') RETURNING id")
    for d in docs:
        await legacy.execute(
            "INSERT INTO doc_embeddings (crate_id, crate_name, doc_path, content, embedding,"
            " token_count) VALUES ($1, 'tokio', $2, $3, $4, $5)",
            crate,
            *d,
        )
    async with docstore.connect(database_url) as store:
        compat = LegacyDatabase(store)
        await compat.upsert_crate("tokio", None)
        await compat.insert_embeddings_batch(None, "tokio", docs)
        await store.create_vector_index(calibrate=False)
        await compat.install_views()
        target = await asyncpg.connect(database_url)
        await register_codecs(target, "public")
        yield legacy, target, store
        await target.close()
    await legacy.close()


SEARCH = "select doc_path from search_similar_docs($1, 'tokio', {limit})"


@pytest.mark.parametrize(
    ("limit", "scale"),
    [("NULL", 1.0), ("2147483647", 1.0), ("5", 1e6), ("NULL", 1e6)],
    ids=["null_limit", "int_max_limit", "beyond_half_precision", "null_limit_large_values"],
)
async def test_search_function_with_an_index_ranks_like_the_legacy_one(
    pair: tuple[asyncpg.Connection, asyncpg.Connection, docstore.Store], limit: str, scale: float
) -> None:
    """LIMIT NULL (no limit) returns the whole crate, LIMIT 2^31-1 does not overflow, a query
    half precision cannot hold is ranked exactly — with an HNSW index, as without."""
    legacy, target, _ = pair
    query = unit_vector(1000) * np.float32(scale)
    sql = SEARCH.format(limit=limit)
    a = [tuple(r) for r in await legacy.fetch(sql, query)]
    b = [tuple(r) for r in await target.fetch(sql, query)]
    assert a == b
    assert len(b) == (5 if limit == "5" else CRATE_DOCS)


async def test_search_function_with_only_the_compat_schema_on_the_path(
    pair: tuple[asyncpg.Connection, asyncpg.Connection, docstore.Store],
) -> None:
    _, target, store = pair
    assert await LegacyDatabase(store).install_views("legacy_compat") == "legacy_compat"
    query = unit_vector(1)
    await target.execute("SET search_path = legacy_compat, public")
    assert len(await target.fetch(SEARCH.format(limit=3), query)) == 3
    await target.execute("SET search_path = legacy_compat")
    assert await target.fetchval("select count(*) from doc_embeddings") == CRATE_DOCS
    assert await target.fetchval("select doc_count from crate_stats") == CRATE_DOCS
    rows = await target.fetch(
        "select doc_path from search_similar_docs($1::public.vector, 'tokio', 3)", query
    )
    assert len(rows) == 3 and rows[0][0] == "d/001"


# -- 5, 6. crate configs -----------------------------------------------------------------------


async def test_crate_config_timestamps_are_datetimes_like_the_legacy_columns(
    both: tuple[asyncpg.Connection, LegacyDatabase],
) -> None:
    legacy, compat = both
    checked = datetime.now(UTC) - timedelta(hours=2)
    await legacy.execute(
        "INSERT INTO crate_configs (name, last_checked) VALUES ('tokio', $1)", checked
    )
    config_id = await compat.create_crate_config("tokio")
    assert await compat.update_crate_config(config_id, last_checked=checked)
    a = dict(await legacy.fetchrow("SELECT * FROM crate_configs WHERE id = 1"))
    for b in (
        await compat.get_crate_config("tokio"),
        (await compat.list_crate_configs())[0],
        (await compat.get_crates_needing_update(timedelta(hours=1)))[0],
    ):
        assert b is not None and list(b) == list(a)
        assert {k: type(v) for k, v in a.items()} == {k: type(v) for k, v in b.items()}
        assert b["last_checked"] == checked and b["last_checked"].tzinfo is not None


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.create_crate_config("tokio", version_spec="v" * 51),
        lambda c: c.create_crate_config("tokio", current_version="1." + "0" * 49),
        lambda c: c.update_crate_config(1, current_version="1." + "0" * 49),
    ],
    ids=["create_version_spec", "create_current_version", "update_current_version"],
)
async def test_versions_longer_than_the_legacy_varchar_50_are_refused(
    store: docstore.Store, call: Callable[[LegacyDatabase], Any]
) -> None:
    compat = LegacyDatabase(store)
    assert await compat.create_crate_config("tokio", version_spec="v" * 50) == 1
    with pytest.raises(docstore.ValidationError):
        await call(compat)
    [config] = await compat.list_crate_configs()
    assert config["current_version"] is None


# -- 7, 10. the Python search ------------------------------------------------------------------


async def test_search_similar_docs_reads_the_primary(database_url: str, pg: Any) -> None:
    """With a read replica (here a database that never sees the writes) the legacy search
    sees a batch written just before, like the legacy server searching after populating."""
    lagging = f"lagging_parity_{os.getpid()}"
    await pg.execute(f'CREATE DATABASE "{lagging}" TEMPLATE "{pg.template}"')
    try:
        async with docstore.connect(database_url, database_read_url=pg.url(lagging)) as store:
            compat = LegacyDatabase(store)
            await compat.insert_embeddings_batch(
                None, "tokio", [("a.html", "t", unit_vector(1), 3)]
            )
            hits = await compat.search_similar_docs("tokio", unit_vector(1), 5)
            assert [h.doc_path for h in hits] == ["a.html"]
            hits = await compat.search_similar_docs("tokio", unit_vector(1), 5000)
            assert [h.doc_path for h in hits] == ["a.html"]
    finally:
        await pg.execute(f'DROP DATABASE "{lagging}" WITH (FORCE)')


async def test_search_similar_docs_without_an_index_answers_as_store_search(
    store: docstore.Store,
) -> None:
    """Without a vector index the legacy search ranks the crate exactly with its own
    three-column query (``docstore.compat.similar``; its speed is ``bench/compat.py``'s): the
    same rows, order (ties by id) and similarities as ``store.search``; never another
    doc_type's document, one without an embedding, nor a zero vector migrated before
    validation (NaN) — above 1,000 results neither; counted as exact searches; with an
    index, ``store.search`` again (a halfvec search for this small crate)."""
    compat = LegacyDatabase(store)
    tied = unit_vector(500)
    docs = [(f"p{i:03}", f"c{i}", unit_vector(i % 40), i) for i in range(60)]
    docs += [("tie-b", "b", tied, 1), ("tie-a", "a", tied, 1)]
    await compat.insert_embeddings_batch(None, "tokio", docs)  # type: ignore[arg-type]
    await compat.insert_embeddings_batch(None, "serde", docs[:5])  # type: ignore[arg-type]
    await store.execute(
        "INSERT INTO documents (doc_type, source_name, doc_path, content, embedding)"
        " VALUES ('rust', 'tokio', 'zero', 'z', $1), ('rust', 'tokio', 'bare', 'b', NULL),"
        " ('solana', 'tokio', 'other-type', 'o', $2)",
        np.zeros(3072, dtype=np.float32),
        tied,
    )
    apart = {"zero", "bare", "other-type"}

    async def exact_count() -> int:
        modes = (await store.metrics(disk=False)).vector_search
        return modes["exact"].count if "exact" in modes else 0

    before = await exact_count()
    for query in (tied, unit_vector(3), unit_vector(1234)):
        for limit in (1, 5, 100, 1000):
            similar = await compat.search_similar_docs("tokio", query, limit)
            hits = await store.search(query, doc_type="rust", source_name="tokio", limit=limit)
            assert hits.mode == "exact"
            assert [(s.doc_path, s.content) for s in similar] == [
                (h.doc_path, h.content) for h in hits
            ]
            assert [s.similarity for s in similar] == [h.similarity for h in hits]
            assert apart.isdisjoint(s.doc_path for s in similar)
        assert await compat.search_similar_docs("tokio", query, 5000) == similar
    assert len(await compat.search_similar_docs("tokio", tied, 100)) == 62
    assert await exact_count() - before == 12 + 12 + 3 + 1  # store.search, the facade
    await store.create_vector_index()
    halfvec = (await store.metrics(disk=False)).vector_search.get("halfvec")
    similar = await compat.search_similar_docs("tokio", tied, 5)
    assert {s.doc_path for s in similar[:2]} == {"tie-a", "tie-b"}
    after = (await store.metrics(disk=False)).vector_search["halfvec"].count
    assert after - (halfvec.count if halfvec else 0) == 1  # through store.search


async def test_the_search_function_runs_the_calibrated_second_pass(
    store: docstore.Store, database_url: str
) -> None:
    """An operator's rehearsal: with an HNSW index, ``search_similar_docs()`` in SQL ran only
    the calibration's first pass, and missed true nearest documents that ``store.search``
    (and so the facade) finds with its second, wider pass: recall@10 0.983 against 1.000 on
    200 real questions, 3 with the wrong best hit. It runs the second pass for flat
    candidates as ``store.search`` does: under a calibration whose first pass is poor
    (``ef_search`` 10) and that calls every search flat, it returns the exact top 10."""
    points = clustered(1500)  # one crate, the whole table: the ANN branch
    compat = LegacyDatabase(store)
    docs = [(f"p{i:04}", f"c{i}", v, 1) for i, v in enumerate(points)]
    await compat.insert_embeddings_batch(None, "tokio", docs)  # type: ignore[arg-type]
    await store.create_vector_index(calibrate=False)
    await store.calibrate_search(query_vectors=noisy_queries(points, 8, noise=0.05, seed=1))
    await store.execute(
        "UPDATE docstore_search_calibration SET calibration = calibration"
        """ || '{"ef_search": 10, "escalate_below": 10.0, "escalation_ef_search": 1000}'"""
    )
    await compat.install_views()
    conn = await asyncpg.connect(database_url)
    try:
        await register_codecs(conn, "public")
        for q in noisy_queries(points, 30, noise=0.05, seed=5):
            truth = await store.search(q, exact=True, source_name="tokio", limit=10)
            rows = await conn.fetch("select doc_path from search_similar_docs($1, 'tokio', 10)", q)
            assert [r[0] for r in rows] == [h.doc_path for h in truth]
    finally:
        await conn.close()


async def test_search_similar_docs_limits_like_the_legacy_function(
    both: tuple[asyncpg.Connection, LegacyDatabase],
) -> None:
    conn, compat = both
    legacy = LegacySQL(conn)
    docs = [(f"p{i:04}", f"c{i}", unit_vector(i), i) for i in range(1100)]
    for target in (legacy, compat):
        await target.insert_embeddings_batch(None, "tokio", docs)  # type: ignore[arg-type]
    query = unit_vector(99_999)
    for limit in (0, 1, 1001, 2**31 - 1):
        a = await legacy.search_similar_docs("tokio", query, limit)
        b = await compat.search_similar_docs("tokio", query, limit)
        assert [r[0] for r in a] == [r[0] for r in b], limit
        assert [r[2] for r in a] == pytest.approx([r[2] for r in b], abs=1e-6)
    for bad in (-1, 2**31, 1.5, True, None):
        with pytest.raises(docstore.ValidationError):
            await compat.search_similar_docs("tokio", query, bad)  # type: ignore[arg-type]


# -- 8. reprs ----------------------------------------------------------------------------------


def test_reprs_show_the_embeddings_size_not_its_values() -> None:
    v = unit_vector(1)
    for value, dims in (
        (CrateDocument("p", "c", v), "embedding=<3072 dims>"),
        (LegacyDoc("p", "c", v, 3), "embedding=<3072 dims>"),
        (LegacyDoc("p", "c", v.tolist(), 3), "embedding=<3072 dims>"),
        (LegacyDoc("p", "c", None), "embedding=None"),
    ):
        text = repr(value)
        assert dims in text and f"{v[0]:.4f}"[:6] not in text and len(text) < 200, text


# -- 9. docstore errors for bad input ----------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "field", "index"),
    [
        (lambda c: c.update_crate_config(1, name="other"), "name", None),
        (lambda c: c.create_population_job(999), "crate_config_id", None),
        (lambda c: c.update_population_job(1, "done"), "status", None),
        (lambda c: c.update_population_job(1, None), "status", None),
        (lambda c: c.update_population_job("1", "running"), "id", None),
        (
            lambda c: c.update_population_job(1, "running", docs_populated="5"),
            "docs_populated",
            None,
        ),
        (lambda c: c.get_population_job(1.5), "id", None),
        (
            lambda c: c.insert_embeddings_batch(
                None, "tokio", [("a.html", "t", None, 1), ("b.html", "t")]
            ),
            None,
            1,
        ),
        (
            lambda c: c.insert_embeddings_batch(None, "tokio", [("a.html", "t", None, 1, 2)]),
            None,
            0,
        ),
        (lambda c: c.insert_embeddings_batch(None, "tokio", [("a.html", "t", None), 7]), None, 1),
        (lambda c: c.insert_embeddings_batch(None, "tokio", 7), "docs", None),
    ],
    ids=[
        "update_unknown_field",
        "job_for_missing_config",
        "unknown_status",
        "status_none",
        "job_id_text",
        "docs_populated_text",
        "job_id_float",
        "short_row",
        "long_row",
        "row_not_iterable",
        "docs_not_iterable",
    ],
)
async def test_bad_input_raises_a_validation_error(
    store: docstore.Store,
    call: Callable[[LegacyDatabase], Any],
    field: str | None,
    index: int | None,
) -> None:
    compat = LegacyDatabase(store)
    await compat.create_crate_config("tokio")
    with pytest.raises(docstore.ValidationError) as raised:
        await call(compat)
    assert (raised.value.field, raised.value.index) == (field, index)
    assert await compat.count_crate_documents("tokio") == 0
    assert await store.fetchval("select count(*) from source_population_jobs") == 0
