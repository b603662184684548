"""Settings and URL resolution: pure, no database."""

from __future__ import annotations

import logging

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
    assert (load_settings().hnsw_ef_search, load_settings().search_oversample) == (200, 4)
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
