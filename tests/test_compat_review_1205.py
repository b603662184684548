"""Regression tests of confirmed compat-layer defects (review of 2026-12-05): crate totals
beyond the legacy ``integer``, crate-config ids that are not integers, numpy integers, a
migrated row's legacy ``crate_id``, config timestamps and ages at the limits, a batch row's
index, a None crate, reader roles and the compatibility views, and a source config edited in
place. Each runs against a real database."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import numpy as np
import pytest

import docstore
from docstore import Source
from docstore.compat import LegacyDatabase
from docstore.compat import views as compat_views
from docstore.errors import ReadOnlyError, ValidationError
from docstore.readonly import roles, write_capabilities
from tests.conftest import PgCluster, unit_vector
from tests.legacy_db import legacy_database, legacy_execute, legacy_fetch
from tests.test_readonly import _reader

INT_MAX = 2**31 - 1


def _vec(seed: int) -> np.ndarray:
    return unit_vector(seed)


# -- 1: crate totals beyond the legacy integer ------------------------------------------------


async def test_a_batch_whose_crate_totals_pass_the_legacy_integer_is_refused_whole(
    store: docstore.Store,
) -> None:
    """Legacy ``crates.total_tokens`` is an ``integer``: the legacy batch failed in its
    ``UPDATE crates``, nothing written. A batch that would pass it is a ValidationError naming
    the total, before anything is written; rows it replaces do not count twice."""
    db = LegacyDatabase(store)
    await db.upsert_crate("tokio", "1.0")
    with pytest.raises(ValidationError) as refused:
        await db.insert_embeddings_batch(
            None, "tokio", [("a", "x", _vec(1), INT_MAX), ("b", "y", _vec(2), INT_MAX)]
        )
    assert refused.value.field == "total_tokens" and "nothing was written" in str(refused.value)
    assert await db.count_crate_documents("tokio") == 0
    [stats] = await db.get_crate_stats()
    assert (stats.total_docs, stats.total_tokens) == (0, 0)

    await db.insert_embeddings_batch(None, "tokio", [("a", "x", _vec(1), INT_MAX)])  # fits
    with pytest.raises(ValidationError, match="total_tokens"):
        await db.insert_embeddings_batch(None, "tokio", [("b", "y", _vec(2), 1)])
    # replacing "a" itself: its old count is not added to the new one
    await db.insert_embeddings_batch(None, "tokio", [("a", "x", _vec(1), INT_MAX - 5)])
    await db.insert_embeddings_batch(None, "tokio", [("b", "y", _vec(2), 5)])
    [stats] = await db.get_crate_stats()
    assert (stats.total_docs, stats.total_tokens) == (2, INT_MAX)


async def test_totals_stored_beyond_the_legacy_integer_show_as_null_not_an_error(
    store: docstore.Store,
) -> None:
    """A source whose recorded totals pass ``integer`` (``store.sources.refresh_stats``, or a
    batch stored before the check) made the ``crates`` view and ``get_crate_stats`` fail for
    every crate with 22003; they now show NULL for that crate's total alone."""
    db = LegacyDatabase(store)
    await db.install_views()
    await db.upsert_crate("serde", "1.0")
    await db.upsert_crate("tokio", "1.40")
    await db.insert_embeddings_batch(None, "serde", [("a", "x", _vec(1), 10)])
    await store.documents.upsert_many(
        docstore.Document(
            doc_type="rust", source_name="tokio", doc_path=p, content="c", token_count=INT_MAX
        )
        for p in ("a", "b")
    )
    await store.sources.refresh_stats("rust", "tokio")  # docstore's own API: JSON, no limit
    stored = await store.fetchval(
        "SELECT config->>'total_tokens' FROM document_sources WHERE source_name = 'tokio'"
    )
    assert int(stored) == 2 * INT_MAX

    rows = await store.fetch("SELECT name, total_docs, total_tokens FROM crates ORDER BY name")
    assert [tuple(r) for r in rows] == [("serde", 1, 10), ("tokio", 2, None)]
    stats = {s.name: s for s in await db.get_crate_stats()}
    assert (stats["serde"].total_docs, stats["serde"].total_tokens) == (1, 10)
    assert (stats["tokio"].total_docs, stats["tokio"].total_tokens) == (2, None)
    # nor does a value that is no integer at all; a missing one is still 0
    await store.execute(
        "UPDATE document_sources SET config = (config - 'total_tokens')"
        " || jsonb_build_object('total_docs', 'lots') WHERE source_name = 'tokio'"
    )
    rows = await store.fetch("SELECT name, total_docs, total_tokens FROM crates ORDER BY name")
    assert [tuple(r) for r in rows] == [("serde", 1, 10), ("tokio", None, 0)]
    assert len(await store.fetch("SELECT * FROM crate_stats")) == 2


def test_the_totals_sql_never_casts_what_is_not_an_integer() -> None:
    sql = compat_views.total_sql("s.config", "total_tokens")
    assert "::integer" in sql and "~ '^-?[0-9]{1,10}$'" in sql and "BETWEEN" in sql


# -- 2, 3: config ids and numpy integers ---------------------------------------------------


async def test_a_crate_config_id_must_be_an_integer_and_is_stored_as_one(
    store: docstore.Store,
) -> None:
    """``True``/``1.0`` found config 1 by ``==`` and were stored as JSON ``true``/``1.0``,
    after which ``get_population_job`` failed; numpy's integers failed in the driver."""
    db = LegacyDatabase(store)
    config = await db.create_crate_config("tokio")
    for wrong in (True, 1.0, "1", None):
        with pytest.raises(ValidationError) as refused:
            await db.create_population_job(wrong)  # type: ignore[arg-type]
        assert refused.value.field == "crate_config_id"
        with pytest.raises(ValidationError) as refused:
            await db.update_crate_config(wrong, enabled=False)  # type: ignore[arg-type]
        assert refused.value.field == "config_id"
    assert await store.fetchval("SELECT count(*) FROM source_population_jobs") == 0
    assert (await db.get_crate_config("tokio") or {})["enabled"] is True

    job = await db.create_population_job(np.int64(config))  # type: ignore[arg-type]
    assert job is not None
    row = await db.get_population_job(job)
    assert row is not None and row["crate_config_id"] == config
    kind, text = await store.fetchrow(
        "SELECT jsonb_typeof(metadata->'crate_config_id'), metadata->>'crate_config_id'"
        " FROM source_population_jobs"
    )
    assert (kind, text) == ("number", str(config))
    assert await db.update_crate_config(np.int32(config), enabled=False)  # type: ignore[arg-type]
    assert (await db.get_crate_config("tokio") or {})["enabled"] is False
    with pytest.raises(ValidationError, match="no crate config 99"):
        await db.create_population_job(np.int16(99))  # type: ignore[arg-type]


async def test_numpy_integers_are_accepted_wherever_an_integer_is(store: docstore.Store) -> None:
    db = LegacyDatabase(store)
    await db.upsert_crate("tokio", "1.0")
    await db.insert_embeddings_batch(
        None, "tokio", [(f"p{i}", "x", _vec(i), np.int64(i)) for i in range(3)]
    )
    hits = await db.search_similar_docs("tokio", _vec(1), np.int64(2))  # type: ignore[arg-type]
    assert [h.doc_path for h in hits][:1] == ["p1"] and len(hits) == 2
    for wrong in (np.bool_(True), True, 2.0):
        with pytest.raises(ValidationError, match="limit"):
            await db.search_similar_docs("tokio", _vec(1), wrong)  # type: ignore[arg-type]

    config = await db.create_crate_config("serde", expected_docs=np.int64(10))  # type: ignore[arg-type]
    assert await db.update_crate_config(config, expected_docs=np.uint8(5))
    stored = (await db.get_crate_config("serde") or {})["expected_docs"]
    assert stored == 5 and type(stored) is int
    with pytest.raises(ValidationError, match="expected_docs"):
        await db.update_crate_config(config, expected_docs=True)

    job = await db.create_population_job(config)
    assert job is not None
    assert await db.update_population_job(
        np.int64(job),  # type: ignore[arg-type]
        "completed",
        docs_populated=np.int64(3),  # type: ignore[arg-type]
    )
    row = await db.get_population_job(job)
    assert row is not None and row["docs_populated"] == 3 and row["status"] == "completed"
    with pytest.raises(ValidationError, match="docs_populated"):
        await db.update_population_job(job, "running", docs_populated=np.bool_(False))  # type: ignore[arg-type]


# -- 7: a migrated row's legacy crate_id ----------------------------------------------------

DOCS = 40


@pytest.fixture
def legacy_url(pg: PgCluster) -> Iterator[str]:
    yield from legacy_database(pg, crates=4, docs=DOCS)


_CRATE_READS = (
    "SELECT id, crate_id, crate_name, doc_path FROM doc_embeddings ORDER BY id",
    "SELECT name, version, last_updated, doc_count, total_tokens FROM crate_stats ORDER BY name",
)


async def test_doc_embeddings_keep_a_legacy_crate_id_naming_another_crate(
    legacy_url: str, database_url: str
) -> None:
    """The legacy schema lets a row's ``crate_id`` name another crate than its
    ``crate_name``; the views derived it from the name, so ``crate_id`` and
    ``crate_stats.doc_count`` differed from legacy after a migration that validated OK."""
    from docstore.migrate import Migrator

    crate2_row = (
        await legacy_fetch(
            legacy_url, "SELECT min(id) FROM doc_embeddings WHERE crate_name = 'crate2'"
        )
    )[0][0]
    await legacy_execute(
        legacy_url, "UPDATE doc_embeddings SET crate_id = 1 WHERE id = $1", crate2_row
    )
    async with docstore.connect(database_url) as store:
        async with Migrator(legacy_url, store) as migrator:
            assert (await migrator.run()).ok
        db = LegacyDatabase(store)
        await db.install_views()
        await db.install_views()  # again, as an upgrade of an existing install does
        for sql in _CRATE_READS:
            legacy = await legacy_fetch(legacy_url, sql)
            assert [tuple(r) for r in await store.fetch(sql)] == legacy, sql
        moved = await store.fetchrow(
            "SELECT crate_id, crate_name FROM doc_embeddings WHERE id = $1", crate2_row
        )
        assert tuple(moved) == (1, "crate2")
        # a legacy_crate_id the views cannot show (beyond integer, or not a number) never
        # fails them: the row shows its own crate's id
        crate2 = await store.fetchval("SELECT id FROM crates WHERE name = 'crate2'")
        for odd in ("99999999999", "x1"):
            await store.execute(
                "UPDATE documents SET metadata = jsonb_set(metadata, '{legacy_crate_id}', $2)"
                " WHERE metadata->>'legacy_id' = $1",
                str(crate2_row),
                f'"{odd}"' if not odd.isdigit() else odd,
            )
            assert (
                await store.fetchval(
                    "SELECT crate_id FROM doc_embeddings WHERE id = $1", crate2_row
                )
                == crate2
            )


# -- 8, 9: config timestamps and ages at the limits ------------------------------------------


async def test_config_timestamps_a_zone_moves_out_of_range_are_validation_errors(
    store: docstore.Store,
) -> None:
    db = LegacyDatabase(store)
    config = await db.create_crate_config("tokio")
    for stamp in (
        datetime(1, 1, 1, 1, tzinfo=timezone(timedelta(hours=5))),
        datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))),
    ):
        for field in ("last_checked", "last_populated"):
            with pytest.raises(ValidationError) as refused:
                await db.update_crate_config(config, **{field: stamp})
            assert refused.value.field == field and "out of range" in str(refused.value)
    assert (await db.get_crate_config("tokio") or {})["last_checked"] is None
    # the limits themselves are fine
    assert await db.update_crate_config(config, last_checked=datetime(1, 1, 1, tzinfo=UTC))
    assert await db.update_crate_config(
        config, last_checked=datetime(9999, 12, 31, 23, 59, tzinfo=UTC)
    )


async def test_get_crates_needing_update_takes_a_non_negative_timedelta(
    store: docstore.Store,
) -> None:
    db = LegacyDatabase(store)
    await db.create_crate_config("tokio")
    for wrong in (24, "24h", None, timedelta.max, timedelta(days=-1), timedelta.min):
        with pytest.raises(ValidationError) as refused:
            await db.get_crates_needing_update(wrong)  # type: ignore[arg-type]
        assert refused.value.field == "max_age"
    assert [c["name"] for c in await db.get_crates_needing_update(timedelta(0))] == ["tokio"]
    far = timedelta(days=365_250)
    assert [c["name"] for c in await db.get_crates_needing_update(far)] == ["tokio"]


# -- 11: a batch row's index ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "field"),
    [
        (("b", "y", "abc", 2), "embedding"),
        (("b", "y", [float("nan")] * 3072, 2), "embedding"),
        (("b", None, None, 2), "content"),
        (("", "y", None, 2), "doc_path"),
        (("b", "y", None, -1), "token_count"),
        (("b", "y", None, 1.5), "token_count"),
        (("b", "y", [1.0] * 5, 2), "embedding"),
    ],
)
async def test_every_bad_batch_row_is_named_by_its_index(
    store: docstore.Store, row: tuple[Any, ...], field: str
) -> None:
    db = LegacyDatabase(store)
    await db.upsert_crate("tokio", "1.0")
    with pytest.raises(ValidationError) as refused:
        await db.insert_embeddings_batch(None, "tokio", [("a", "x", _vec(1), 1), row])
    assert (refused.value.index, refused.value.field) == (1, field), str(refused.value)
    assert str(refused.value).startswith("row 1")
    assert await db.count_crate_documents("tokio") == 0


async def test_a_bad_crate_name_is_the_crates_error_not_a_rows(store: docstore.Store) -> None:
    db = LegacyDatabase(store)
    for crate in (None, "", "x" * 256, 5):
        with pytest.raises(ValidationError) as refused:
            await db.insert_embeddings_batch(None, crate, [("a", "x", _vec(1), 1)])  # type: ignore[arg-type]
        assert (refused.value.field, refused.value.index) == ("crate_name", None)


# -- 12: a None crate matches nothing; install_views' schema --------------------------------


async def test_a_none_crate_matches_nothing(database_url: str) -> None:
    async with docstore.connect(database_url) as store:
        db = LegacyDatabase(store)
        await db.upsert_crate("tokio", "1.0")
        await db.insert_embeddings_batch(None, "tokio", [("a", "x", _vec(1), 1)])
        assert await db.has_embeddings(None) is False  # type: ignore[arg-type]
        assert await db.get_crate_documents(None) == []  # type: ignore[arg-type]
        assert await db.delete_crate_embeddings(None) == 0  # type: ignore[arg-type]
        assert await db.count_crate_documents("tokio") == 1
        for wrong in (5, b"tokio"):
            with pytest.raises(ValidationError):
                await db.has_embeddings(wrong)  # type: ignore[arg-type]
    async with docstore.connect(database_url, read_only=True) as reader:
        with pytest.raises(ReadOnlyError):  # a write API still refuses first
            await LegacyDatabase(reader).delete_crate_embeddings(None)  # type: ignore[arg-type]


async def test_install_views_refuses_a_schema_that_is_no_string(store: docstore.Store) -> None:
    db = LegacyDatabase(store)
    for wrong in (5, b"legacy", ["legacy"], "bad\x00name"):
        with pytest.raises(ValidationError) as refused:
            await db.install_views(wrong)  # type: ignore[arg-type]
        assert refused.value.field == "schema"
        with pytest.raises(ValidationError):
            await db.uninstall_views(wrong)  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            await db.installed_views(wrong)  # type: ignore[arg-type]


# -- 6: reader roles read the views, whichever came first ----------------------------------

_VIEW_READS = (
    "SELECT count(*) FROM {s}.crates",
    "SELECT count(*) FROM {s}.doc_embeddings",
    "SELECT count(*) FROM {s}.crate_stats",
    "SELECT count(*) FROM {s}.search_similar_docs("
    "array_fill(0.1, array[3072])::real[]::vector, 'tokio', 5)",
)


async def _reads_as(url: str, schema: str) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        return [int(await conn.fetchval(sql.format(s=schema))) for sql in _VIEW_READS]
    finally:
        await conn.close()


async def test_a_reader_role_made_after_the_views_reads_them_in_any_schema(
    pg: PgCluster, database_url: str
) -> None:
    async with docstore.connect(database_url) as store:
        db = LegacyDatabase(store)
        await db.upsert_crate("tokio", "1.0")
        await db.insert_embeddings_batch(None, "tokio", [("a", "x", _vec(1), 1)])
        await db.install_views()
        await db.install_views("legacy")
    async with _reader(pg, database_url, "Rd-after-views-1") as url:
        for schema in ("public", "legacy"):
            assert await _reads_as(url, schema) == [1, 1, 1, 1], schema
        name = url.split("://", 1)[1].split(":", 1)[0]
        conn = await asyncpg.connect(database_url)
        try:
            assert await write_capabilities(conn, name) == []
        finally:
            await conn.close()


async def test_views_installed_after_a_reader_role_are_readable_by_it(
    pg: PgCluster, database_url: str
) -> None:
    async with _reader(pg, database_url, "Rd-before-views-1") as url:
        other = "not_a_reader_1205"
        async with docstore.connect(database_url) as store:
            await store.execute(f"DROP ROLE IF EXISTS {other}")
            await store.execute(f"CREATE ROLE {other} LOGIN")  # may read nothing
            try:
                db = LegacyDatabase(store)
                await db.upsert_crate("tokio", "1.0")
                await db.install_views("legacy")
                await db.install_views("legacy")  # again: nothing to grant twice
                assert await _reads_as(url, "legacy") == [1, 0, 1, 0]
                readers = await store.run(roles.reader_roles)
                assert other not in readers and len(readers) >= 1
                granted = await store.fetchval(
                    "SELECT has_table_privilege($1, 'legacy.crates', 'SELECT')", other
                )
                assert granted is False
            finally:
                await store.execute(f"DROP OWNED BY {other}; DROP ROLE {other}")


def test_the_roles_module_names_the_views_compat_installs() -> None:
    assert set(roles.LEGACY_VIEWS) == set(compat_views.VIEW_NAMES)
    assert roles.LEGACY_VIEW_GUARD == compat_views.GUARD_FUNCTION


# -- another review, item 8: a source config edited in place -------------------------------


async def test_a_source_config_edited_in_place_to_hold_a_userdict_is_stored(
    store: docstore.Store,
) -> None:
    """``check_in_place_edits`` accepted it (it converts such mappings) but the raw config
    was sent, and the driver's ``json.dumps`` failed: a QueryError."""
    source = Source(source_name="b", config={})
    source.config["opts"] = collections.UserDict(token="x")
    saved = await store.sources.upsert(source)
    assert saved.config == {"opts": {"token": "x"}}
    assert (
        await store.fetchval(
            "SELECT config->'opts'->>'token' FROM document_sources WHERE source_name = 'b'"
        )
        == "x"
    )


async def test_a_source_whose_orphan_flag_is_no_boolean_breaks_no_other_crate(
    store: docstore.Store,
) -> None:
    """``(config->>'orphan')::boolean`` failed the views and get_crate_stats for every crate
    once one source's config held anything else there."""
    db = LegacyDatabase(store)
    await db.install_views()
    await db.upsert_crate("serde", "1.0")
    await db.upsert_crate("tokio", "1.40")
    await store.execute(
        'UPDATE document_sources SET config = config || \'{"orphan": "maybe"}\''
        " WHERE source_name = 'tokio'"
    )
    assert {r["name"] for r in await store.fetch("SELECT name FROM crates")} == {"serde", "tokio"}
    assert {s.name for s in await db.get_crate_stats()} == {"serde", "tokio"}
    await store.execute(
        "UPDATE document_sources SET config = config || '{\"orphan\": true}'"
        " WHERE source_name = 'tokio'"
    )
    assert [r["name"] for r in await store.fetch("SELECT name FROM crates")] == ["serde"]


async def test_search_results_and_recall_titles_print_names_as_text(
    store: docstore.Store,
) -> None:
    from rich.console import Console

    await store.documents.upsert_many(
        [
            docstore.Document(
                doc_type="x[/y]",
                source_name="s",
                doc_path="p",
                content="c",
                embedding=unit_vector(1),
            )
        ]
    )
    results = await store.search(unit_vector(1), doc_type="x[/y]")
    console = Console(record=True, width=120)
    console.print(results)  # was rich.errors.MarkupError
    assert "doc_type x[/y]" in console.export_text()


async def test_metadata_edited_in_place_to_hold_a_userdict_is_stored_as_an_object(
    store: docstore.Store,
) -> None:
    doc = docstore.Document(source_name="s", doc_path="p", content="c", metadata={"a": 1})
    doc.metadata["b"] = collections.UserDict({"c": 2})
    stored = await store.documents.upsert(doc)  # was a ValidationError
    assert stored.metadata == {"a": 1, "b": {"c": 2}}
    doc.metadata["d"] = float("nan")
    with pytest.raises(ValidationError, match="metadata"):
        await store.documents.upsert(doc)


async def test_search_similar_docs_never_returns_fewer_rows_than_the_crate_holds(
    empty_database_url: str,
) -> None:
    """The function's ANN branch (a crate over 3,000 documents) took the HNSW scan's rows as
    they came; an iterative scan stops after ``hnsw.max_scan_tuples`` index tuples, so a crate
    that is a small share of a large table got fewer rows than the legacy function returns.
    Here the cap is lowered in the session instead (16 dimensions keep the table cheap): 33
    candidates, so 33 rows where 50 were asked for."""
    rng = np.random.default_rng(3)
    async with docstore.connect(empty_database_url, embedding_dim=16) as store:
        db = LegacyDatabase(store)
        await db.install_views()
        for crate, n in (("big", 3_100), ("rest", 28_000)):
            vectors = rng.standard_normal((n, 16)).astype(np.float32)
            await store.documents.upsert_many(
                docstore.Document(source_name=crate, doc_path=f"p{i}", content="c", embedding=v)
                for i, v in enumerate(vectors)
            )
        await store.execute("ANALYZE documents")
        await store.create_vector_index(calibrate=False)
        query = rng.standard_normal(16).astype(np.float32)
        # a calibration that settled on a small ef_search, as on easy queries it may
        await store.execute(
            "INSERT INTO docstore_search_calibration (metric, calibration)"
            """ VALUES ('cosine', '{"ef_search": 10}')"""
        )
        async with store.transaction() as conn:
            await conn.execute("SET LOCAL hnsw.max_scan_tuples = 60")
            rows = await conn.fetch("SELECT * FROM search_similar_docs($1, 'big', 50)", query)
            await conn.execute("SET LOCAL enable_indexscan = off")  # the exact ranking
            exact = await conn.fetch(
                "SELECT doc_path FROM documents WHERE source_name = 'big'"
                " ORDER BY embedding <=> $1 LIMIT 50",
                query,
            )
    assert [r["doc_path"] for r in rows] == [r["doc_path"] for r in exact]
