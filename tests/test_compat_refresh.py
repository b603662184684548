"""The legacy SQL is kept current: an install made by an older docstore (or before docstore's
tables moved) is found stale and installed again, each for its own doc type, once however
many processes start together; a role that may not replace it gets a clear error (a warning
on connect) and nothing changes."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import asyncpg
import numpy as np
import pytest
from typer.testing import CliRunner

import docstore
from docstore.cli import app
from docstore.compat import LegacyDatabase, LegacyViews, installs, views
from docstore.errors import ReadOnlyError, SchemaError
from docstore.search import planner
from tests.conftest import sample_documents, unit_vector, writer_role

runner = CliRunner()
DIM = 3072


def _function_source(schema: str) -> str:
    return f"""SELECT p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE n.nspname = '{schema}' AND p.proname = 'search_similar_docs'"""


async def _install_as_older_docstore(
    store: docstore.Store, schema: str, doc_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an older docstore left: the function with another threshold, and no stamp."""
    with monkeypatch.context() as m:
        m.setattr(views, "HALFVEC_FILTER_ROWS", 12_345)
        await LegacyDatabase(store, doc_type).install_views(schema)
    await store.execute(f"COMMENT ON FUNCTION {views.function_signature(schema, DIM)} IS NULL")


async def test_a_fresh_install_is_up_to_date_and_stamped(store: docstore.Store) -> None:
    legacy = LegacyDatabase(store)
    assert await legacy.views_status() == []
    await legacy.install_views("compat_a")
    assert await legacy.views_status() == [LegacyViews("compat_a", "rust", True)]
    assert await legacy.refresh_views() == []


async def test_an_older_install_is_found_stale_and_refreshed_for_its_own_doc_type(
    store: docstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _install_as_older_docstore(store, "old_sol", "sol'ana", monkeypatch)
    await _install_as_older_docstore(store, "old_rust", "rust", monkeypatch)
    legacy = LegacyDatabase(store)  # a rust facade refreshes the solana install as solana
    assert await legacy.views_status() == [
        LegacyViews("old_rust", "rust", False),
        LegacyViews("old_sol", "sol'ana", False),
    ]
    assert "12345" in await store.fetchval(_function_source("old_rust"))
    assert await legacy.refresh_views() == ["old_rust", "old_sol"]
    assert await legacy.views_status() == [
        LegacyViews("old_rust", "rust", True),
        LegacyViews("old_sol", "sol'ana", True),
    ]
    source = await store.fetchval(_function_source("old_rust"))
    assert "12345" not in source and f"{planner.HALFVEC_FILTER_ROWS}" in source
    assert "sol''ana" in await store.fetchval("SELECT pg_get_viewdef('old_sol.crates'::regclass)")
    assert await legacy.refresh_views() == []


async def test_an_install_stamped_by_another_docstore_is_stale(
    store: docstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:  # stamped, but with another rule's digest
        m.setattr(views, "HALFVEC_FILTER_ROWS", 777)
        await LegacyDatabase(store).install_views("stamped")
    legacy = LegacyDatabase(store)
    assert await legacy.views_status() == [LegacyViews("stamped", "rust", False)]
    assert await legacy.refresh_views() == ["stamped"]
    assert "777" not in await store.fetchval(_function_source("stamped"))


async def test_the_refreshed_function_searches(
    store: docstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.sources.upsert(docstore.Source(doc_type="rust", source_name="tokio"))
    await store.documents.upsert_many(sample_documents(20))
    await _install_as_older_docstore(store, "public", "rust", monkeypatch)
    await LegacyDatabase(store).refresh_views()
    query = unit_vector(5).astype(np.float32)
    rows = await store.fetch("SELECT * FROM search_similar_docs($1, 'tokio', 3)", query)
    expected = await LegacyDatabase(store).search_similar_docs("tokio", query, 3)
    assert [r["doc_path"] for r in rows] == [d.doc_path for d in expected]


async def test_processes_starting_together_refresh_it_once(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with docstore.connect(database_url) as store:
        await _install_as_older_docstore(store, "together", "rust", monkeypatch)
    stores = [await docstore.connect(database_url) for _ in range(4)]
    try:
        done = await asyncio.gather(*(LegacyDatabase(s).refresh_views() for s in stores))
        assert sorted(done) == [[], [], [], ["together"]]
    finally:
        for s in stores:
            await s.close()


async def test_connect_refreshes_a_stale_install(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with docstore.connect(database_url) as store:
        await _install_as_older_docstore(store, "at_connect", "rust", monkeypatch)
    async with await LegacyDatabase.connect(database_url) as legacy:
        assert await legacy.views_status() == [LegacyViews("at_connect", "rust", True)]


async def test_a_read_only_store_reports_but_does_not_refresh(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with docstore.connect(database_url) as store:
        await _install_as_older_docstore(store, "ro", "rust", monkeypatch)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("READ_ONLY", "true")
    async with await LegacyDatabase.connect() as legacy:  # no refresh, no error
        assert await legacy.views_status() == [LegacyViews("ro", "rust", False)]
        with pytest.raises(ReadOnlyError):
            await legacy.refresh_views()


async def test_a_role_that_may_not_replace_it_gets_a_clear_error_and_nothing_changes(
    database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with docstore.connect(database_url) as store:
        await _install_as_older_docstore(store, "owned", "rust", monkeypatch)
    async with writer_role(database_url) as url:
        admin = await asyncpg.connect(database_url)
        try:
            await admin.execute(f"GRANT USAGE, CREATE ON SCHEMA owned TO {urlsplit(url).username}")
            before = await admin.fetchval(_function_source("owned"))
            async with docstore.connect(url) as app_store:
                with pytest.raises(SchemaError, match="as the role that owns them") as caught:
                    await LegacyDatabase(app_store).refresh_views()
                assert (urlsplit(url).password or "?") not in str(caught.value)
            with caplog.at_level(logging.WARNING, logger="docstore.compat"):
                async with await LegacyDatabase.connect(url) as legacy:  # connects all the same
                    assert not (await legacy.views_status())[0].up_to_date
            assert "as the role that owns them" in caplog.text
            assert await admin.fetchval(_function_source("owned")) == before
        finally:
            await admin.close()


async def test_an_install_whose_doc_type_cannot_be_read_is_named(
    store: docstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _install_as_older_docstore(store, "odd", "rust", monkeypatch)
    await store.execute(f"COMMENT ON FUNCTION {views.function_signature('odd', DIM)} IS 'not json'")
    await store.execute(  # a function of docstore's no longer: no doc type in it
        "CREATE OR REPLACE FUNCTION odd.search_similar_docs(query_embedding vector(3072),"
        " target_crate_name varchar, limit_results integer DEFAULT 5) RETURNS TABLE"
        " (id int, crate_name varchar, doc_path text, content text, similarity float)"
        " LANGUAGE sql AS 'SELECT NULL::int, NULL::varchar, NULL, NULL, NULL::float'"
    )
    legacy = LegacyDatabase(store)
    assert await legacy.views_status() == [LegacyViews("odd", None, False)]
    with pytest.raises(SchemaError, match=r"'odd'.*install them again"):
        await legacy.refresh_views()


def test_init_brings_the_legacy_views_up_to_date_and_status_says_so(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def older() -> None:
        async with docstore.connect(database_url) as store:
            await _install_as_older_docstore(store, "cli_views", "rust", monkeypatch)

    asyncio.run(older())
    stale = runner.invoke(app, ["compat", "status", "--url", database_url])
    assert stale.exit_code == 0 and "stale: run `docstore init`" in stale.output, stale.output
    init = runner.invoke(app, ["init", "--url", database_url])
    assert init.exit_code == 0, init.output
    assert "schema 'cli_views' brought up to date" in init.output
    fresh = runner.invoke(app, ["compat", "status", "--url", database_url])
    assert "schema 'cli_views': doc type 'rust', up to date" in fresh.output
    again = runner.invoke(app, ["init", "--url", database_url])
    assert "brought up to date" not in again.output


def test_the_stamp_reads_back() -> None:
    assert installs._stamped_doc_type('{"docstore_compat": "ab", "doc_type": "x"}', None) == (
        "x",
        "ab",
    )
    assert installs._stamped_doc_type(
        None, "WHERE d.doc_type = 'it''s' AND d.source_name = target_crate_name"
    ) == (
        "it's",
        None,
    )
    assert installs._stamped_doc_type("[1]", None) == (None, None)
