"""Settings and URL resolution: pure, no database."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import pytest

from docstore import config
from docstore.config import UrlSource, load_settings, redact_url, resolve_url, url_password
from docstore.errors import ConfigurationError

GOOD = "postgresql://app:s3cret@db.example:5432/docs"
LEGACY = "postgresql://old:hunter2@legacy.example/rust_docs_vectors"


def test_explicit_url_beats_every_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", GOOD)
    monkeypatch.setenv("MCPDOCS_DATABASE_URL", LEGACY)
    url, source = resolve_url(load_settings(), "postgresql://x@h/db")
    assert (url, source) == ("postgresql://x@h/db", UrlSource.ARGUMENT)


def test_database_url_beats_legacy_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", GOOD)
    monkeypatch.setenv("MCPDOCS_DATABASE_URL", LEGACY)
    assert resolve_url(load_settings()) == (GOOD, UrlSource.DATABASE_URL)


def test_empty_database_url_counts_as_unset_and_legacy_fallback_logs_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(config, "_legacy_fallback_logged", False)
    monkeypatch.setenv("DATABASE_URL", "")
    monkeypatch.setenv("MCPDOCS_DATABASE_URL", LEGACY)
    with caplog.at_level(logging.INFO, logger="docstore"):
        assert resolve_url(load_settings()) == (LEGACY, UrlSource.MCPDOCS_DATABASE_URL)
        resolve_url(load_settings())
    fallback = [r for r in caplog.records if "MCPDOCS_DATABASE_URL" in r.getMessage()]
    assert len(fallback) == 1 and fallback[0].levelno == logging.INFO
    assert "hunter2" not in caplog.text


def test_no_url_means_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "")
    monkeypatch.setenv("MCPDOCS_DATABASE_URL", "")
    assert resolve_url(load_settings()) == (None, UrlSource.EMBEDDED)


@pytest.mark.parametrize("value", ["true", "1", "yes", "on", "TRUE", "On"])
def test_read_only_truthy_spellings(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("READ_ONLY", value)
    assert load_settings().read_only is True


@pytest.mark.parametrize("value", ["false", "0", "no", "off"])
def test_read_only_falsy_spellings(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("READ_ONLY", value)
    assert load_settings().read_only is False


def test_defaults_match_the_legacy_server() -> None:
    settings = load_settings()
    assert settings.pool_max_size == 5
    assert settings.embedding_dim == 3072
    assert settings.read_only is False


def test_search_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (load_settings().hnsw_ef_search, load_settings().search_oversample) == (None, 4)
    monkeypatch.setenv("DOCSTORE_HNSW_EF_SEARCH", "300")
    monkeypatch.setenv("DOCSTORE_SEARCH_OVERSAMPLE", "8")
    settings = load_settings()
    assert (settings.hnsw_ef_search, settings.search_oversample) == (300, 8)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DOCSTORE_POOL_MAX_SIZE", "lots"),
        ("DOCSTORE_POOL_MAX_SIZE", "0"),
        ("DOCSTORE_EMBEDDING_DIM", "-3"),
        ("DOCSTORE_EMBEDDING_DIM", "1"),  # no direction to rank by (calibration: NaN)
        ("DOCSTORE_POOL_ACQUIRE_TIMEOUT", "soon"),
        ("READ_ONLY", "perhaps"),
        ("DOCSTORE_RETRY_ATTEMPTS", "0"),
        ("DOCSTORE_HNSW_EF_SEARCH", "2000"),
        ("DOCSTORE_SEARCH_OVERSAMPLE", "0"),
    ],
)
def test_invalid_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert variable in str(info.value)


def test_invalid_url_is_named_but_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://root:hunter2@db/x")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert "DATABASE_URL" in str(info.value)
    assert "hunter2" not in str(info.value)
    assert (info.value.__cause__ is None and info.value.__context__ is None) or (
        "hunter2" not in repr(info.value.__context__)
    )


def test_pool_min_above_max_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCSTORE_POOL_MIN_SIZE", "8")
    with pytest.raises(ConfigurationError, match="DOCSTORE_POOL_MIN_SIZE"):
        load_settings()


def test_settings_repr_hides_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", LEGACY)
    assert "hunter2" not in repr(load_settings())


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:hunter2@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h/db", "postgresql://h/db"),
        ("postgresql://u:hunter2@h1:5432,h2:5433/db", "postgresql://u:***@h1:5432,h2:5433/db"),
        (
            "postgresql://u@h/db?password=hunter2&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
        ),
        ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert "hunter2" not in redact_url(url)


def test_url_password_finds_userinfo_and_query_passwords() -> None:
    assert url_password("postgresql://u:hunter2@h/db") == "hunter2"
    assert url_password("postgresql://u@h/db?password=hunter2") == "hunter2"
    assert url_password("postgresql://u@h/db") is None


# -- URLs asyncpg would misread (issue 13) ----------------------------------------------------

UNENCODED = "postgresql://app:P@ss:w/0rd@/db"
"""The issue's URL: the password ``P@ss:w/0rd`` not percent-encoded."""


def asyncpg_reading(url: str) -> tuple[list[Any], Any]:
    """``(addresses, parameters)`` as asyncpg reads ``url`` when it connects."""
    from asyncpg import connect_utils

    return connect_utils._parse_connect_dsn_and_args(  # type: ignore[no-any-return]
        dsn=url,
        host=None,
        port=None,
        user=None,
        password=None,
        passfile=None,
        database=None,
        ssl=None,
        service=None,
        servicefile=None,
        direct_tls=None,
        server_settings=None,
        target_session_attrs=None,
        krbsrvname=None,
        gsslib=None,
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (UNENCODED, "port of the host is not a number"),
        ("postgresql://u:pa/ss@h/db", "port of the host is not a number"),
        ("postgresql://u:12/ss@h/db", "'@' after the host"),
        ("postgresql://u:12?a=b@h/db", "'@' in the query string"),
        ("postgresql://u:a#b@h/db", "'#'"),
        ("postgresql://u:q@r@h/db", "more than one '@'"),
        ("postgresql://u:a b@h/db", "a space or a control character"),
        ("postgresql://u:a\tb@h/db", "a space or a control character"),
        ("postgresql://u:100%@h/db", "'%' that is not followed by two hex digits"),
        ("postgresql://u:%ff@h/db", "not UTF-8"),
        ("postgresql://u:%00@h/db", "NUL"),
        ("postgresql://u:a[b]c@h/db", "urllib cannot read its host part"),
        ("postgresql://u:p\uff20ss@h/db", "urllib cannot read its host part"),
        ("postgresql://u:p\ud800@h/db", "lone surrogates"),
        ("postgresql://h1,,h2/db", "empty entry"),
        ("postgresql://h1,/db", "empty entry"),
        ("postgresql://h1:5432,h2:x/db", "port of host #2 in the host list"),
        ("postgresql://h:99999/db", "from 1 to 65535"),
        ("postgresql://h:0/db", "from 1 to 65535"),
        ("postgresql://h:\u0665\u0664/db", "from 1 to 65535"),  # int() would take these
        ("postgresql://:5432/db", "a port but no host name"),
        ("postgresql://[::1/db", "urllib cannot read its host part"),
        ("postgresql://[::1]:5432junk/db", "port of the host"),
        ("postgresql://[nothost]/db", "urllib cannot read"),
        ("postgresql://h/db;x", "';'"),
        ("postgresql://h/db?sslmode", "not key=value"),
        ("postgresql://h/db?a=1&&b=2", "not key=value"),
        ("postgresql://h/db?sslmode=sometimes", "sslmode must be one of"),
        ("postgresql://h/db?target_session_attrs=writable", "target_session_attrs must be"),
        ("postgresql://h/db?port=5432", None),
        ("postgresql:///db?host=h1,h2&port=1,2,3", "3 ports for 2 hosts"),
        ("postgresql:///db?host=h1,,h2", "empty entry"),
        ("postgresql:///db?port=x", "port parameter"),
        ("mysql://root:hunter2@db/x", "must be a postgresql:// or postgres:// URL"),
        ("postgresql:/db", "must start with postgresql://"),
        (" postgresql://h/db", "whitespace"),
        ("host=db user=app password=hunter2", "libpq key=value connection string"),
    ],
)
def test_urls_asyncpg_would_misread_are_refused_without_quoting_them(
    url: str, problem: str | None
) -> None:
    if problem is None:
        config.parse_url(url)
        return
    with pytest.raises(ConfigurationError) as info:
        config.check_url(url, "DATABASE_URL")
    message = str(info.value)
    assert message.startswith("DATABASE_URL: not a valid database URL: ")
    assert problem in message
    assert info.value.__cause__ is None and info.value.__context__ is None
    for secret in ("P@ss", "w/0rd", "hunter2", "pa/ss", "12/ss", "q@r", "a b", "100%"):
        assert secret not in message


def test_the_hint_shows_how_to_percent_encode() -> None:
    with pytest.raises(ConfigurationError) as info:
        config.check_url(UNENCODED, "connect(url=...)")
    assert "urllib.parse.quote(password, safe='')" in str(info.value)
    assert "connect(url=...)" in str(info.value)
    encoded = f"postgresql://app:{quote('P@ss:w/0rd', safe='')}@/db"
    parsed = config.parse_url(encoded)
    assert (parsed.user, parsed.password, parsed.hosts, parsed.database) == (
        "app",
        "P@ss:w/0rd",
        (),
        "db",
    )


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:P%40ss%3Aw%2F0rd@db.example:5432/docs",
        "postgres://app:p:with:colons@h/db",  # ':' after the first one is the password's
        "postgresql://app:p%C3%A4ss@[::1]:5433/db?sslmode=disable",
        "postgresql://u:pässword@127.0.0.1/db",
        "POSTGRESQL://u@h/db",
        "postgresql://u@h1:5432,h2,[::1]:5434/db?target_session_attrs=read-write",
        "postgresql:///db?host=/tmp,/var/run/postgresql&port=5432,5433",
        "postgresql://%2Ftmp%2Fsock/db",
        "postgresql://u@h/db?password=p%26q&application_name=docs+server",
        "postgresql://u@h/a%20db%2Fwith%3Fodd",
        "postgresql://",
        "postgresql://h:/db",
    ],
)
def test_well_formed_urls_read_as_asyncpg_reads_them(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGPASSFILE", "/nonexistent")
    parsed = config.parse_url(url)
    addrs, params = asyncpg_reading(url)
    assert params.password == (parsed.password or parsed.param("password"))
    if parsed.user:
        assert params.user == parsed.user
    if parsed.database:
        assert params.database == parsed.database
    if parsed.hosts:
        hosts = [a if isinstance(a, str) else a[0] for a in addrs]
        assert [h.split("/.s.PGSQL.")[0] for h in hosts] == list(parsed.hosts)
        ports = [a[1] for a in addrs if not isinstance(a, str)]
        assert all(p in ports or p is None for p in parsed.ports)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (UNENCODED, "postgresql://***@/db"),
        ("postgresql://u:a#b@c@h/db", "postgresql://***@h/db"),
        ("postgresql://u:12?password=x@h/db", "postgresql://u:***?password=***"),
        ("postgresql://h/db?password=a&b@c", "postgresql://h/db?password=***"),
        ("postgresql://app:secret/db", "postgresql://app:***/db"),
        ("mysql://root:hunter2@db/x", "mysql://***@db/x"),
        ("host=db password=hunter2 user=u", "host=db password=*** user=u"),
        ("host=db password='hunter 2' user=u", "host=db password=*** user=u"),
        (
            "postgresql://u@h/db?sslpassword=hunter2&sslkey=/k",
            "postgresql://u@h/db?sslpassword=***&sslkey=/k",
        ),
        ("postgresql://u:p%40ss@h/db?Password=hunter2", "postgresql://u:***@h/db?Password=***"),
    ],
)
def test_redaction_hides_the_whole_password_even_of_malformed_urls(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_url_secrets_cover_decoded_and_written_forms() -> None:
    secrets = config.url_secrets(
        "postgresql://u:p%40ss@h/db?sslpassword=k%2Fey", UNENCODED, None, ""
    )
    assert {"p@ss", "p%40ss", "k/ey", "k%2Fey", "P@ss:w/0rd"} <= set(secrets)


@pytest.mark.parametrize(
    "variable", ["DATABASE_URL", "DATABASE_READ_URL", "MCPDOCS_DATABASE_URL", "LEGACY_DATABASE_URL"]
)
def test_malformed_url_variables_are_named(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, UNENCODED)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert f"{variable}: not a valid database URL" in str(info.value)
    assert "P@ss" not in str(info.value) and "0rd" not in str(info.value)
    assert "urllib.parse.quote" in str(info.value)


def test_settings_built_directly_raise_configuration_error_without_the_value() -> None:
    with pytest.raises(ConfigurationError) as info:
        config.Settings(database_url=UNENCODED)
    assert "DATABASE_URL" in str(info.value) and "P@ss" not in repr(info.value)
    assert info.value.__context__ is None


def test_url_argument_and_read_url_are_checked_where_connect_resolves_them() -> None:
    with pytest.raises(ConfigurationError, match=r"^connect\(url=\.\.\.\): "):
        resolve_url(load_settings(), UNENCODED)
    stale = config.Settings.model_construct(database_read_url=UNENCODED)  # skips validation
    with pytest.raises(ConfigurationError, match=r"^DATABASE_READ_URL: "):
        config.split_read_write(stale, "postgresql://h/db")
