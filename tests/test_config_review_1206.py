"""Regressions from the 2026-12-06 core review: read/write URL pairing, durations, libpq-only
URL parameters and ``store.reload()``. Real databases where a database is involved."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest

import docstore
from docstore.config import (
    check_url,
    load_settings,
    split_read_write,
    statement_timeout_ms,
    with_env_urls,
)
from docstore.errors import ConfigurationError, SchemaError
from docstore.urls import parse_url
from tests.conftest import PgCluster
from tests.replica import ReplicaPair, replica_pair_fixture, replica_primary_fixture  # noqa: F401

SECRET = "s3cretPassw0rd"
DURATIONS = [
    "DOCSTORE_POOL_ACQUIRE_TIMEOUT",
    "DOCSTORE_COMMAND_TIMEOUT",
    "DOCSTORE_STATEMENT_TIMEOUT",
    "DOCSTORE_RETRY_INITIAL_DELAY",
    "DOCSTORE_RETRY_MAX_DELAY",
    "DOCSTORE_REPLICA_RETRY_SECONDS",
]


def _database(url: str) -> str:
    name = parse_url(url).database
    assert name is not None
    return name


@pytest.fixture
def other_database_url(pg: PgCluster) -> Iterator[str]:
    """A second docstore database on the same server."""
    name = pg.create_database(template=pg.template, prefix="other")
    yield pg.url(name)
    pg.drop_database(name)


# -- 4: connect(url, database_read_url=None) -----------------------------------------------
async def test_connect_url_with_read_url_none_ignores_the_environments_replica(
    database_url: str, other_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_READ_URL", other_database_url)
    async with docstore.connect(database_url, database_read_url=None) as store:
        assert store.read_url is None
        assert await store.replica.fetchval("select current_database()") == _database(database_url)


async def test_connect_url_with_an_explicit_read_url_still_uses_it(
    database_url: str, other_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_READ_URL", database_url)
    async with docstore.connect(database_url, database_read_url=other_database_url) as store:
        assert await store.replica.fetchval("select current_database()") == _database(
            other_database_url
        )


# -- 3: multi-host DATABASE_URL with DATABASE_READ_URL -------------------------------------
def test_multi_host_url_keeps_read_write_when_a_read_url_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_READ_URL", "postgresql://r@replica/docs")
    writes, reads = split_read_write(load_settings(), "postgresql://u@db1,db2/docs")
    assert writes.endswith("target_session_attrs=read-write")
    assert reads == "postgresql://r@replica/docs"
    given = "postgresql://u@db1,db2/docs?target_session_attrs=any"
    assert split_read_write(load_settings(), given)[0] == given


async def test_failover_list_with_read_url_writes_to_the_primary(
    replica_pair: ReplicaPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    servers = (replica_pair.replica, replica_pair.primary)  # the standby first
    hosts = ",".join(quote(str(server.socket_dir), safe="/") for server in servers)
    ports = ",".join(str(server.port) for server in servers)
    failover = f"postgresql://postgres@/{replica_pair.database}?host={hosts}&port={ports}"
    monkeypatch.setenv("DATABASE_URL", failover)
    monkeypatch.setenv("DATABASE_READ_URL", replica_pair.replica_url)
    async with docstore.connect() as store:
        assert "target_session_attrs=read-write" in store.url
        assert await store.fetchval("select pg_is_in_recovery()") is False
        await store.execute("create table written_on_the_primary (id int)")


# -- 7: durations ----------------------------------------------------------------------------
@pytest.mark.parametrize("variable", DURATIONS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity"])
def test_durations_refuse_inf_and_nan_naming_the_variable(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable) as info:
        load_settings()
    assert value.lower() not in str(info.value).lower().replace(variable.lower(), "")


@pytest.mark.parametrize("value", ["1e7", "2147483.648"])
def test_statement_timeout_above_what_postgresql_accepts_is_refused(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCSTORE_STATEMENT_TIMEOUT", value)
    with pytest.raises(ConfigurationError, match="DOCSTORE_STATEMENT_TIMEOUT"):
        load_settings()


def test_statement_timeout_ms_rounds_up_to_at_least_one_millisecond() -> None:
    assert statement_timeout_ms(0) == "0"
    assert statement_timeout_ms(0.0004) == "1"
    assert statement_timeout_ms(1.0001) == "1001"
    assert statement_timeout_ms(2147483.647) == "2147483647"


@pytest.mark.parametrize(
    ("value", "shown"), [("1.0004", "1001ms"), ("2147483.647", "2147483647ms"), ("0", "0")]
)
async def test_statement_timeout_reaches_the_server(
    value: str, shown: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCSTORE_STATEMENT_TIMEOUT", value)
    async with docstore.connect(database_url) as store:
        assert await store.fetchval("show statement_timeout") == shown


# -- 9: libpq-only URL parameters ------------------------------------------------------------
@pytest.mark.parametrize(
    "param",
    ["connect_timeout=10", "channel_binding=prefer", "keepalives=1", "tcp_user_timeout=5"],
)
def test_libpq_only_parameters_are_refused_naming_the_variable(param: str) -> None:
    url = f"postgresql://app:{SECRET}@db.example/docs?{param}"
    with pytest.raises(ConfigurationError) as info:
        check_url(url, "DATABASE_URL")
    message = str(info.value)
    assert message.startswith("DATABASE_URL: ")
    assert param.partition("=")[0] in message
    assert SECRET not in message


def test_connect_timeout_points_at_the_acquire_timeout() -> None:
    with pytest.raises(ConfigurationError, match="DOCSTORE_POOL_ACQUIRE_TIMEOUT"):
        check_url("postgresql://db.example/docs?connect_timeout=10", "DATABASE_URL")


def test_parameters_asyncpg_supports_are_still_accepted() -> None:
    for param in ("ssl_min_protocol_version=TLSv1.2", "application_name=x", "options=-cx%3Dy"):
        check_url(f"postgresql://db.example/docs?{param}", "DATABASE_URL")


async def test_connect_refuses_connect_timeout_before_connecting(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url + "&connect_timeout=10")
    with pytest.raises(ConfigurationError, match=r"DATABASE_URL: .*connect_timeout"):
        await docstore.connect()


# -- 6: reload() keeps the store's settings ------------------------------------------------
def test_with_env_urls_rereads_only_the_url_variables(
    database_url: str, other_database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = load_settings(database_url=database_url, pool_max_size=3, embedded_dir=tmp_path)
    monkeypatch.setenv("DATABASE_URL", other_database_url)
    monkeypatch.setenv("DOCSTORE_POOL_MAX_SIZE", "not a number")
    monkeypatch.setenv("DOCSTORE_EMBEDDED_DIR", str(tmp_path / "elsewhere"))
    fresh = with_env_urls(settings)
    assert fresh.database_url == other_database_url
    assert (fresh.pool_max_size, fresh.embedded_dir) == (3, tmp_path)


async def test_reload_keeps_the_stores_settings(
    database_url: str, other_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    async with docstore.connect(pool_max_size=2) as store:
        monkeypatch.setenv("DATABASE_URL", other_database_url)
        monkeypatch.setenv("DATABASE_READ_URL", other_database_url)
        monkeypatch.setenv("DOCSTORE_POOL_MAX_SIZE", "not a number")
        await store.reload()
        assert await store.fetchval("select current_database()") == _database(other_database_url)
        replica = store._db._pool_set.replica
        assert replica is not None
        assert replica.pool.get_max_size() == 2


# -- 5: reload() checks the target as connect() does -----------------------------------------
async def test_reload_refuses_a_database_without_docstores_schema(
    store: docstore.Store, empty_database_url: str, database_url: str
) -> None:
    with pytest.raises(SchemaError, match="no docstore schema"):
        await store.reload(empty_database_url)
    assert await store.fetchval("select current_database()") == _database(database_url)


async def test_reload_refuses_a_legacy_database(
    store: docstore.Store, pg: PgCluster, empty_database_url: str, database_url: str
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute("create table doc_embeddings (id int)")
    finally:
        await conn.close()
    with pytest.raises(SchemaError, match="legacy"):
        await store.reload(empty_database_url)
    assert await store.fetchval("select current_database()") == _database(database_url)


async def test_reload_reads_the_new_databases_vector_schema(
    store: docstore.Store, ext_schema_url: str
) -> None:
    name = _database(ext_schema_url)
    await store.reload(ext_schema_url)
    assert await store.fetchval("select 1") == 1
    assert await store.documents.count() == 0
    assert await store.fetchval("select current_database()") == name


# -- 11: reload(url=bad) names reload ------------------------------------------------------
async def test_reload_with_a_bad_url_names_reload(store: docstore.Store) -> None:
    with pytest.raises(ConfigurationError, match=r"^reload\(url=\.\.\.\)"):
        await store.reload(f"postgresql://app:{SECRET}@db.example/docs?connect_timeout=1")


async def test_settings_dumps_hide_passwords_and_connect_still_gets_them(
    database_url: str,
) -> None:
    """Before: ``Settings().model_dump()`` (and ``model_dump_json()``) held the plain URLs, so
    logging a dump printed the password; ``repr`` already hid them. Now dumps show the URLs
    redacted, and docstore's own copies of a Settings (``connect(settings=…, **overrides)``,
    ``store.reload()``) still connect with the real ones."""
    from docstore.config import Settings, settings_values

    url = f"postgresql://u:{SECRET}@db.example:5432/x"
    settings = Settings(
        DATABASE_URL=url, LEGACY_DATABASE_URL=url, DATABASE_READ_URL=url, MCPDOCS_DATABASE_URL=url
    )
    dumped = settings.model_dump()
    assert SECRET not in str(dumped) and SECRET not in settings.model_dump_json()
    assert dumped["legacy_database_url"] == "postgresql://u:***@db.example:5432/x"
    assert settings_values(settings)["database_url"] == url
    # a dump fed back is refused, saying why, rather than failing authentication later
    for copy in (
        lambda: Settings(**dumped),
        lambda: Settings.model_validate_json(settings.model_dump_json()),
    ):
        with pytest.raises(ConfigurationError, match="settings_values"):
            copy()
    assert Settings(**settings_values(settings)).database_url == url
    real = load_settings(database_url=database_url)
    async with docstore.connect(settings=real, pool_max_size=2) as store:  # copied with overrides
        assert await store.fetchval("SELECT 1") == 1
        assert store.settings.pool_max_size == 2
        await store.reload(database_url)  # rebuilt from the settings' values
        assert await store.fetchval("SELECT 2") == 2
        assert store.settings.pool_max_size == 2
