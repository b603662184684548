"""The legacy SQL is kept current: an install of this store's made by an older docstore (or
before docstore's tables moved, or changed by hand since) is found stale and installed again,
each for its own doc type, once however many processes start together. Another tenant's
install, a newer docstore's, a lookalike are left alone; what cannot be refreshed (a role that
may not replace it, a read-only session, a long transaction on a view) is a clear error — a
warning on connect, which opens all the same — and nothing changes."""

from __future__ import annotations

import asyncio
import json
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
from tests.conftest import as_user, sample_documents, unit_vector, writer_role

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
    for view in ("crates", "doc_embeddings"):
        await store.execute(f'COMMENT ON VIEW "{schema}".{view} IS NULL')


async def test_a_fresh_install_is_up_to_date_and_stamped(store: docstore.Store) -> None:
    legacy = LegacyDatabase(store)
    assert await legacy.views_status() == []
    await legacy.install_views("compat_a")
    assert await legacy.views_status() == [LegacyViews("compat_a", "rust", "current")]
    assert await legacy.refresh_views() == []


async def test_an_older_install_is_found_stale_and_refreshed_for_its_own_doc_type(
    store: docstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _install_as_older_docstore(store, "old_sol", "sol'ana", monkeypatch)
    await _install_as_older_docstore(store, "old_rust", "rust", monkeypatch)
    legacy = LegacyDatabase(store)  # a rust facade refreshes the solana install as solana
    assert await legacy.views_status() == [
        LegacyViews("old_rust", "rust", "stale"),
        LegacyViews("old_sol", "sol'ana", "stale"),
    ]
    assert "12345" in await store.fetchval(_function_source("old_rust"))
    assert await legacy.refresh_views() == ["old_rust", "old_sol"]
    assert await legacy.views_status() == [
        LegacyViews("old_rust", "rust", "current"),
        LegacyViews("old_sol", "sol'ana", "current"),
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
    assert await legacy.views_status() == [LegacyViews("stamped", "rust", "stale")]
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
        assert await legacy.views_status() == [LegacyViews("at_connect", "rust", "current")]


async def test_a_read_only_store_reports_but_does_not_refresh(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with docstore.connect(database_url) as store:
        await _install_as_older_docstore(store, "ro", "rust", monkeypatch)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("READ_ONLY", "true")
    async with await LegacyDatabase.connect() as legacy:  # no refresh, no error
        assert await legacy.views_status() == [LegacyViews("ro", "rust", "stale")]
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
    assert await legacy.views_status() == [LegacyViews("odd", None, "unknown")]
    with pytest.raises(SchemaError, match=r"'odd'.*install them again"):
        await legacy.refresh_views()


def test_the_generation_is_raised_with_the_sql() -> None:
    """Changing what install_sql makes needs GENERATION raised (and the digest updated):
    an older docstore then leaves a newer install alone instead of undoing it."""
    digest = installs._digest(installs.canonical_statements())
    assert digest == installs.GENERATION_DIGEST, (
        f"install_sql changed: raise installs.GENERATION to {installs.GENERATION + 1} and set"
        f" GENERATION_DIGEST = {digest!r}"
    )


async def test_another_tenants_install_is_neither_listed_nor_touched(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tenants in one database, each with docstore's tables in its own schema."""
    admin = await asyncpg.connect(empty_database_url)
    await admin.execute("CREATE EXTENSION vector; CREATE SCHEMA tenant_a; CREATE SCHEMA tenant_b")
    url_a, url_b = (
        f"{empty_database_url}&search_path={t}%2Cpublic" for t in ("tenant_a", "tenant_b")
    )
    try:
        async with docstore.connect(url_a) as a:
            await a.sources.upsert(docstore.Source(doc_type="rust", source_name="a-crate"))
            await LegacyDatabase(a).install_views("compat_a")
        async with docstore.connect(url_b) as b:
            await b.sources.upsert(docstore.Source(doc_type="rust", source_name="b-crate"))
            await _install_as_older_docstore(b, "compat_b", "rust", monkeypatch)
        before = await admin.fetchval(_function_source("compat_b"))
        async with await LegacyDatabase.connect(url_a) as legacy:
            assert await legacy.views_status() == [LegacyViews("compat_a", "rust", "current")]
            assert await legacy.refresh_views() == []
        assert await admin.fetchval(_function_source("compat_b")) == before
        assert [r[0] for r in await admin.fetch("SELECT name FROM compat_b.crates")] == ["b-crate"]
        async with await LegacyDatabase.connect(url_b) as legacy:  # its own tenant refreshes it
            assert await legacy.views_status() == [LegacyViews("compat_b", "rust", "current")]
        assert [r[0] for r in await admin.fetch("SELECT name FROM compat_b.crates")] == ["b-crate"]
        assert [r[0] for r in await admin.fetch("SELECT name FROM compat_a.crates")] == ["a-crate"]
    finally:
        await admin.close()


async def test_a_lookalike_of_another_role_is_not_an_install(store: docstore.Store) -> None:
    await store.execute("CREATE SCHEMA look")
    await store.execute("CREATE TABLE look.crates (id int)")
    await store.execute(
        "CREATE FUNCTION look.search_similar_docs(query_embedding vector(3072),"
        " target_crate_name varchar, limit_results integer DEFAULT 5) RETURNS int"
        " LANGUAGE sql AS 'SELECT 1'"
    )
    await store.execute(
        f"CREATE FUNCTION look.{views.GUARD_FUNCTION}() RETURNS int LANGUAGE sql AS 'SELECT 1'"
    )
    legacy = LegacyDatabase(store)
    assert await legacy.views_status() == []
    assert await legacy.refresh_views() == []


async def test_a_newer_docstores_install_is_left_alone(
    store: docstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:  # the next release: other SQL, a higher generation
        m.setattr(views, "HALFVEC_FILTER_ROWS", 4_321)
        m.setattr(installs, "GENERATION", installs.GENERATION + 1)
        await LegacyDatabase(store).install_views("rolling")
    legacy = LegacyDatabase(store)
    assert await legacy.views_status() == [LegacyViews("rolling", "rust", "newer")]
    assert await legacy.refresh_views() == []
    assert "4321" in await store.fetchval(_function_source("rolling"))


async def test_what_the_database_holds_is_checked_not_only_the_stamp(
    store: docstore.Store,
) -> None:
    legacy = LegacyDatabase(store)
    await legacy.install_views("held")
    await store.execute("DROP VIEW held.crate_stats")
    assert await legacy.views_status() == [LegacyViews("held", "rust", "stale")]
    assert await legacy.refresh_views() == ["held"]
    assert "crate_stats" in await legacy.installed_views("held")
    source = await store.fetchval(_function_source("held"))
    await store.execute(  # edited by hand; the comment (the stamp) survives a REPLACE
        "CREATE OR REPLACE FUNCTION held.search_similar_docs(query_embedding vector(3072),"
        " target_crate_name varchar, limit_results integer DEFAULT 5) RETURNS TABLE"
        " (id int, crate_name varchar, doc_path text, content text, similarity float)"
        " LANGUAGE plpgsql AS $$" + source.replace("RETURN;", "RETURN; -- edited", 1) + "$$"
    )
    assert await legacy.views_status() == [LegacyViews("held", "rust", "stale")]
    assert await legacy.refresh_views() == ["held"]
    assert await store.fetchval(_function_source("held")) == source


async def test_one_install_that_cannot_be_refreshed_does_not_hold_up_the_others(
    store: docstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _install_as_older_docstore(store, "a_odd", "rust", monkeypatch)
    await store.execute(
        "CREATE OR REPLACE FUNCTION a_odd.search_similar_docs(query_embedding vector(3072),"
        " target_crate_name varchar, limit_results integer DEFAULT 5) RETURNS TABLE"
        " (id int, crate_name varchar, doc_path text, content text, similarity float)"
        " LANGUAGE sql AS 'SELECT NULL::int, NULL::varchar, NULL, NULL, NULL::float'"
    )
    await _install_as_older_docstore(store, "b_stale", "rust", monkeypatch)
    legacy = LegacyDatabase(store)
    with pytest.raises(SchemaError, match=r"'a_odd'.*--doc-type"):
        await legacy.refresh_views()
    assert await legacy.views_status() == [
        LegacyViews("a_odd", None, "unknown"),
        LegacyViews("b_stale", "rust", "current"),
    ]


async def test_a_reader_role_connects_with_a_warning(
    database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A reader role's sessions are read-only by default (``READ_ONLY`` unset): connect must
    open, the install stays stale."""
    async with docstore.connect(database_url) as store:
        await _install_as_older_docstore(store, "by_reader", "rust", monkeypatch)
        await store.create_reader_role("compat_reader", "Rd-secret-9")
    url = as_user(database_url, "compat_reader", "Rd-secret-9")
    try:
        with caplog.at_level(logging.WARNING, logger="docstore.compat"):
            async with await LegacyDatabase.connect(url) as legacy:
                assert await legacy.views_status() == [LegacyViews("by_reader", "rust", "stale")]
                assert await legacy.store.fetchval("SELECT count(*) FROM by_reader.crates") == 0
        assert "read-only" in caplog.text and "Rd-secret-9" not in caplog.text
    finally:
        admin = await asyncpg.connect(database_url)
        await admin.execute("DROP OWNED BY compat_reader; DROP ROLE compat_reader")
        await admin.close()


async def test_a_long_transaction_on_a_view_delays_connect_by_the_lock_timeout_only(
    database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with docstore.connect(database_url) as store:
        await _install_as_older_docstore(store, "busy", "rust", monkeypatch)
    reader = await asyncpg.connect(database_url)
    other = await asyncpg.connect(database_url)
    try:
        await reader.execute("BEGIN; SELECT count(*) FROM busy.crates")  # a legacy client
        loop = asyncio.get_running_loop()
        start = loop.time()
        with caplog.at_level(logging.WARNING, logger="docstore.compat"):
            legacy = await LegacyDatabase.connect(database_url)
        waited = loop.time() - start
        async with legacy:
            assert waited < installs.REFRESH_LOCK_TIMEOUT + 5, waited
            assert "long transaction" in caplog.text
            assert await legacy.views_status() == [LegacyViews("busy", "rust", "stale")]
            # a legacy reader after it: the views were left as they were, and read
            assert await other.fetchval("SELECT count(*) FROM busy.crates", timeout=5) == 0
        await reader.execute("COMMIT")
        async with await LegacyDatabase.connect(database_url) as legacy:
            assert await legacy.views_status() == [LegacyViews("busy", "rust", "current")]
    finally:
        await reader.close()
        await other.close()


@pytest.mark.parametrize("other_refreshes", [True, False])
async def test_a_refresh_that_waited_for_another_processes_refresh_says_nothing(
    store: docstore.Store,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    other_refreshes: bool,
) -> None:
    """Was: a process that waited more than ``lock_timeout`` for the schema's install lock,
    held by another process refreshing the same install (itself waiting on a view's lock, then
    succeeding), warned that the views were left stale, although they were current by then.
    Now it waits ``ADVISORY_WAIT`` times as long and looks again; it warns only when the
    install is still stale, saying another session held it."""
    await _install_as_older_docstore(store, "handoff", "rust", monkeypatch)
    other = await asyncpg.connect(database_url)  # another process
    lock_timeout = 1.0
    locked = asyncio.Event()

    async def other_process() -> None:  # holds the lock more than lock_timeout
        async with other.transaction():
            await other.execute(installs._LOCK, "handoff")
            locked.set()
            await asyncio.sleep(
                1.2 * lock_timeout
                if other_refreshes
                else 1.5 * installs.ADVISORY_WAIT * lock_timeout
            )
            if other_refreshes:
                await installs._install(other, store, "handoff", "rust")

    try:
        holding = asyncio.create_task(other_process())
        await locked.wait()
        if other_refreshes:
            assert await installs.refresh(store, lock_timeout=lock_timeout) == []
            assert await LegacyDatabase(store).views_status() == [
                LegacyViews("handoff", "rust", "current")
            ]
        else:
            with pytest.raises(SchemaError, match="another session was installing them"):
                await installs.refresh(store, lock_timeout=lock_timeout)
        await holding
    finally:
        await other.close()
    assert await installs.refresh(store, lock_timeout=lock_timeout) == (
        [] if other_refreshes else ["handoff"]
    )


async def test_the_largest_lock_timeout_is_taken(
    store: docstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 105: twice the largest lock_timeout the setting takes (the wait for another
    process's install) was sent as is: InvalidParameterValueError."""
    await _install_as_older_docstore(store, "patient", "rust", monkeypatch)
    assert await installs.refresh(store, lock_timeout=2_147_483.647) == ["patient"]


async def test_a_session_without_standard_conforming_strings_installs_the_same(
    database_url: str,
) -> None:
    admin = await asyncpg.connect(database_url)
    try:
        database = await admin.fetchval("SELECT current_database()")
        await admin.execute(f'ALTER DATABASE "{database}" SET standard_conforming_strings = off')
        async with docstore.connect(database_url) as store:
            assert await store.fetchval("SHOW standard_conforming_strings") == "off"
            await store.sources.upsert(docstore.Source(doc_type="a\\b", source_name="tokio"))
            legacy = LegacyDatabase(store, "a\\b")
            await legacy.install_views("scs")
            assert await legacy.views_status() == [LegacyViews("scs", "a\\b", "current")]
            assert await store.fetch("SELECT name FROM scs.crates") == [("tokio",)]
    finally:
        await admin.close()


@pytest.mark.parametrize(
    "damage",
    [
        "DROP VIEW held.crates, held.doc_embeddings CASCADE",
        f"DROP FUNCTION {views.function_signature('held', DIM)}",
        "DROP TRIGGER docstore_read_only ON held.crates",
        f"ALTER FUNCTION {views.function_signature('held', DIM)} RESET enable_seqscan",
        f"ALTER FUNCTION {views.function_signature('held', DIM)} SECURITY DEFINER",
        f"ALTER FUNCTION {views.function_signature('held', DIM)} STRICT",
        "ALTER VIEW held.crates SET (security_invoker = true)",
        f"DROP FUNCTION {views.function_signature('held', DIM)};"
        " COMMENT ON VIEW held.doc_embeddings IS 'a note of the DBA'",
        f"CREATE OR REPLACE FUNCTION held.{views.GUARD_FUNCTION}() RETURNS trigger"
        " LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$",
    ],
)
async def test_a_partly_dropped_or_altered_install_is_repaired(
    store: docstore.Store, damage: str
) -> None:
    await store.sources.upsert(docstore.Source(doc_type="rust", source_name="tokio"))
    legacy = LegacyDatabase(store)
    await legacy.install_views("held")
    whole = await legacy.installed_views("held")
    await store.execute(damage)
    assert await legacy.views_status() == [LegacyViews("held", "rust", "stale")]
    assert await legacy.refresh_views() == ["held"]
    assert await legacy.views_status() == [LegacyViews("held", "rust", "current")]
    assert await legacy.installed_views("held") == whole
    with pytest.raises(docstore.QueryError, match="read-only docstore compatibility view"):
        await store.execute("DELETE FROM held.crates")


async def test_a_generation_with_other_view_columns_replaces_the_views(
    store: docstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CREATE OR REPLACE VIEW cannot change a column's type: the refresh drops and creates,
    giving the views and the function back their owner and exactly their privileges."""
    legacy = LegacyDatabase(store)
    await legacy.install_views("cols")
    fn = views.function_signature("cols", DIM)
    plain_fn = "cols.search_similar_docs(vector, varchar, integer)"
    await store.execute(
        "CREATE ROLE cols_app; CREATE ROLE cols_other; CREATE ROLE cols_owner;"
        " GRANT USAGE ON SCHEMA cols TO cols_app, cols_other;"
        " GRANT SELECT ON cols.crates TO cols_app;"
        " GRANT SELECT (name) ON cols.crates TO cols_other;"
        f" REVOKE EXECUTE ON FUNCTION {fn} FROM PUBLIC;"
        f" GRANT EXECUTE ON FUNCTION {fn} TO cols_app WITH GRANT OPTION;"
        " ALTER TABLE cols.doc_embeddings OWNER TO cols_owner;"
        # what the re-creating role's default privileges would give, and must not
        " ALTER DEFAULT PRIVILEGES IN SCHEMA cols GRANT SELECT ON TABLES TO cols_other;"
        " ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO cols_other"
    )
    granted = f"""SELECT has_table_privilege('cols_app', 'cols.crates', 'SELECT'),
        has_table_privilege('cols_other', 'cols.crates', 'SELECT'),
        has_column_privilege('cols_other', 'cols.crates', 'name', 'SELECT'),
        has_function_privilege('cols_app', '{plain_fn}', 'EXECUTE WITH GRANT OPTION'),
        has_function_privilege('cols_other', '{plain_fn}', 'EXECUTE'),
        (SELECT pg_get_userbyid(relowner) FROM pg_class
          WHERE oid = 'cols.doc_embeddings'::regclass)"""
    held = (True, False, True, True, False, "cols_owner")
    assert tuple(await store.fetchrow(granted)) == held
    total_sql = views.total_sql
    monkeypatch.setattr(views, "total_sql", lambda c, k: f"({total_sql(c, k)})::bigint")
    monkeypatch.setattr(installs, "GENERATION", installs.GENERATION + 1)
    assert await legacy.views_status() == [LegacyViews("cols", "rust", "stale")]
    assert await legacy.refresh_views() == ["cols"]
    assert await legacy.views_status() == [LegacyViews("cols", "rust", "current")]
    assert (
        await store.fetchval(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'cols.crates'::regclass AND attname = 'total_docs'"
        )
        == "bigint"
    )
    assert tuple(await store.fetchrow(granted)) == held
    await store.execute(
        "REASSIGN OWNED BY cols_owner TO CURRENT_USER;"
        " DROP OWNED BY cols_app, cols_other, cols_owner;"
        " DROP ROLE cols_app, cols_other, cols_owner"
    )


async def test_a_role_that_cannot_read_the_catalog_still_connects(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with docstore.connect(database_url) as store:
        await LegacyDatabase(store).install_views("cat")
        await store.execute("REVOKE SELECT ON pg_rewrite FROM PUBLIC")
    async with writer_role(database_url) as url:
        with caplog.at_level(logging.WARNING, logger="docstore.compat"):
            async with await LegacyDatabase.connect(url) as legacy:
                with pytest.raises(docstore.DocstoreError, match="pg_rewrite"):
                    await legacy.views_status()
        assert "cannot read this store's legacy views" in caplog.text


async def test_a_refresh_under_repeatable_read_sees_a_concurrent_uninstall(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With default_transaction_isolation 'repeatable read' the look after the lock took its
    snapshot before the lock: it brought back views another process had just removed."""
    admin = await asyncpg.connect(database_url)
    database = await admin.fetchval("SELECT current_database()")
    await admin.execute(
        f"ALTER DATABASE \"{database}\" SET default_transaction_isolation = 'repeatable read'"
    )
    await admin.close()
    async with docstore.connect(database_url) as a, docstore.connect(database_url) as b:
        await _install_as_older_docstore(a, "race", "rust", monkeypatch)

        async def uninstall_holding_the_lock() -> None:
            async with b.transaction(isolation="read_committed") as conn:
                await conn.execute(installs._LOCK, "race")
                await asyncio.sleep(0.5)  # A lists the install stale and waits for the lock
                for statement in views.uninstall_sql("race", DIM):
                    await conn.execute(statement)

        task = asyncio.create_task(uninstall_holding_the_lock())
        await asyncio.sleep(0.2)
        assert await LegacyDatabase(a).refresh_views() == []
        await task
        assert await LegacyDatabase(a).installed_views("race") == []


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
    other = runner.invoke(
        app,
        [
            "compat",
            "install-views",
            "--url",
            database_url,
            "--schema",
            "sol",
            "--doc-type",
            "solana",
        ],
    )
    assert other.exit_code == 0 and "'solana'" in other.output, other.output
    listed = runner.invoke(app, ["compat", "status", "--url", database_url])
    assert "schema 'sol': doc type 'solana', up to date" in listed.output
    bad = runner.invoke(app, ["compat", "install-views", "--url", database_url, "--doc-type", ""])
    assert bad.exit_code == 2 and "--doc-type" in bad.output


def test_the_stamp_reads_back() -> None:
    stamp = {"docstore_compat": "ab", "doc_type": "x", "generation": 7}
    assert installs._stamp([json.dumps(stamp)], None) == stamp
    assert installs._stamp(["a DBA's note", None, json.dumps(stamp)], None) == stamp
    older = "WHERE d.doc_type = 'it''s' AND d.source_name = target_crate_name"
    assert installs._stamp([None, None, None], older) == {"doc_type": "it's", "generation": 1}
    assert installs._stamp(["[1]"], None) == {"doc_type": None, "generation": 1}
