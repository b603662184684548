"""Settings read from the environment (pydantic-settings).

URL resolution order: an explicit ``url=`` argument, then ``DATABASE_URL``, then the legacy
``MCPDOCS_DATABASE_URL`` (logged once at INFO), then the embedded PostgreSQL. Reads may go to
a replica: ``DATABASE_READ_URL``, or a multi-host URL (:func:`split_read_write`). An empty
variable counts as unset. Invalid values raise :class:`~docstore.errors.ConfigurationError`
naming the variable and never echoing its value.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import platformdirs
import pydantic
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from docstore.errors import ConfigurationError

logger = logging.getLogger("docstore")

_POSTGRES_SCHEMES = ("postgres", "postgresql")
_SECRET_QUERY_KEYS = frozenset({"password", "sslpassword", "passfile"})
REDACTED = "***"


def _default_embedded_dir() -> Path:
    return Path(platformdirs.user_data_dir("docstore", appauthor=False))


def _check_url(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        raise ValueError("not a valid URL") from None
    if parts.scheme not in _POSTGRES_SCHEMES:
        raise ValueError("must be a postgresql:// or postgres:// URL")
    return value


class Settings(BaseSettings):
    """Every environment variable docstore reads; see the README's configuration table."""

    model_config = SettingsConfigDict(
        env_ignore_empty=True,
        extra="ignore",
        populate_by_name=True,
        case_sensitive=False,
        frozen=True,
    )

    database_url: str | None = Field(None, validation_alias="DATABASE_URL", repr=False)
    mcpdocs_database_url: str | None = Field(
        None, validation_alias="MCPDOCS_DATABASE_URL", repr=False
    )
    legacy_database_url: str | None = Field(
        None, validation_alias="LEGACY_DATABASE_URL", repr=False
    )
    database_read_url: str | None = Field(None, validation_alias="DATABASE_READ_URL", repr=False)
    read_only: bool = Field(False, validation_alias="READ_ONLY")
    pool_min_size: int = Field(1, ge=0, validation_alias="DOCSTORE_POOL_MIN_SIZE")
    pool_max_size: int = Field(5, ge=1, validation_alias="DOCSTORE_POOL_MAX_SIZE")
    pool_acquire_timeout: float = Field(
        30.0, gt=0, validation_alias="DOCSTORE_POOL_ACQUIRE_TIMEOUT"
    )
    command_timeout: float | None = Field(60.0, gt=0, validation_alias="DOCSTORE_COMMAND_TIMEOUT")
    statement_timeout: float | None = Field(
        None, ge=0, validation_alias="DOCSTORE_STATEMENT_TIMEOUT"
    )
    embedding_dim: int = Field(3072, ge=1, le=16000, validation_alias="DOCSTORE_EMBEDDING_DIM")
    embedded_dir: Path = Field(
        default_factory=_default_embedded_dir, validation_alias="DOCSTORE_EMBEDDED_DIR"
    )
    auto_migrate: bool = Field(True, validation_alias="DOCSTORE_AUTO_MIGRATE")
    application_name: str = Field(
        "docstore", min_length=1, max_length=63, validation_alias="DOCSTORE_APPLICATION_NAME"
    )
    retry_attempts: int = Field(5, ge=1, le=100, validation_alias="DOCSTORE_RETRY_ATTEMPTS")
    retry_initial_delay: float = Field(0.2, ge=0, validation_alias="DOCSTORE_RETRY_INITIAL_DELAY")
    retry_max_delay: float = Field(5.0, ge=0, validation_alias="DOCSTORE_RETRY_MAX_DELAY")
    hnsw_ef_search: int = Field(200, ge=1, le=1000, validation_alias="DOCSTORE_HNSW_EF_SEARCH")
    search_oversample: int = Field(4, ge=1, le=100, validation_alias="DOCSTORE_SEARCH_OVERSAMPLE")
    metrics: bool = Field(True, validation_alias="DOCSTORE_METRICS")
    replica_retry_seconds: float = Field(
        5.0, ge=0, validation_alias="DOCSTORE_REPLICA_RETRY_SECONDS"
    )

    @field_validator(
        "database_url", "mcpdocs_database_url", "legacy_database_url", "database_read_url"
    )
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        return _check_url(value)

    @pydantic.model_validator(mode="after")
    def _pool_bounds(self) -> Settings:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError("DOCSTORE_POOL_MIN_SIZE must not exceed DOCSTORE_POOL_MAX_SIZE")
        return self


class UrlSource(StrEnum):
    """Where the database URL came from."""

    ARGUMENT = "argument"
    DATABASE_URL = "DATABASE_URL"
    MCPDOCS_DATABASE_URL = "MCPDOCS_DATABASE_URL"
    EMBEDDED = "embedded"


_ENV_NAMES: dict[str, str] = {
    name: str(field.validation_alias or name).upper()
    for name, field in Settings.model_fields.items()
}


def load_settings(**overrides: Any) -> Settings:
    """Read :class:`Settings` from the environment, with keyword overrides (field names).

    Raises :class:`ConfigurationError` naming the offending variable; the value is never
    included, since it may be a secret.
    """
    clean = {key: value for key, value in overrides.items() if value is not None}
    problems: list[str] = []
    try:
        return Settings(**clean)
    except pydantic.ValidationError as exc:
        for error in exc.errors(include_input=False, include_url=False):
            loc = error.get("loc") or ()
            field = str(loc[0]) if loc else ""
            variable = _ENV_NAMES.get(field, field.upper())
            message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
            problems.append(f"{variable}: {message}" if variable else message)
    # Raised outside the except block so the pydantic error (which holds the raw input,
    # possibly a password) is not even kept as __context__.
    raise ConfigurationError("invalid configuration: " + "; ".join(problems))


_legacy_fallback_logged = False


def resolve_url(settings: Settings, url: str | None = None) -> tuple[str | None, UrlSource]:
    """Pick the database URL: argument → DATABASE_URL → MCPDOCS_DATABASE_URL → embedded.

    Returns ``(None, UrlSource.EMBEDDED)`` when no URL is configured.
    """
    global _legacy_fallback_logged
    if url:
        _check_argument_url(url)
        return url, UrlSource.ARGUMENT
    if settings.database_url:
        return settings.database_url, UrlSource.DATABASE_URL
    if settings.mcpdocs_database_url:
        if not _legacy_fallback_logged:
            logger.info(
                "DATABASE_URL is not set; using the legacy MCPDOCS_DATABASE_URL (%s)",
                redact_url(settings.mcpdocs_database_url),
            )
            _legacy_fallback_logged = True
        return settings.mcpdocs_database_url, UrlSource.MCPDOCS_DATABASE_URL
    return None, UrlSource.EMBEDDED


def _check_argument_url(url: str) -> None:
    problem = None
    try:
        _check_url(url)
    except ValueError as exc:
        problem = str(exc)
    if problem:
        raise ConfigurationError(f"url: {problem}")


def redact_url(url: str) -> str:
    """Return ``url`` with its password (in userinfo or the query string) replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        netloc = f"{user}:{REDACTED}@{hosts}" if password else f"{user}@{hosts}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, REDACTED if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs],
            safe="/*",
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_password(url: str) -> str | None:
    """The password embedded in ``url`` (userinfo or ``?password=``), for scrubbing messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.password:
        return parts.password
    for key, value in parse_qsl(parts.query):
        if key.lower() == "password" and value:
            return value
    return None


def url_secrets(*urls: str | None) -> tuple[str, ...]:
    """Every secret in ``urls`` (passwords, ``sslpassword``), to scrub from messages."""
    found: list[str] = []
    for url in urls:
        if not url:
            continue
        password = url_password(url)
        if password:
            found.append(password)
        try:
            query = parse_qsl(urlsplit(url).query)
        except ValueError:
            continue
        found += [v for k, v in query if k.lower() == "sslpassword" and v]
    return tuple(dict.fromkeys(found))


def _hosts(url: str) -> list[str]:
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    from_query = [v for k, v in parse_qsl(parts.query) if k == "host"]
    return (from_query[0] if from_query else hosts).split(",")


def _with_query(url: str, key: str, value: str) -> str:
    parts = urlsplit(url)
    pairs = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != key]
    query = urlencode([*pairs, (key, value)], safe="/,")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def split_read_write(settings: Settings, url: str) -> tuple[str, str | None]:
    """``(url for writes, url for reads or None)`` for a resolved database URL.

    ``DATABASE_READ_URL`` wins. Otherwise a URL naming several hosts
    (``postgresql://db1,db2,db3/docs``) is split: writes go to the host that accepts them
    (``target_session_attrs=read-write`` unless the URL says otherwise), reads prefer a
    standby (``target_session_attrs=prefer-standby``). A single-host URL has no read URL.
    """
    if settings.database_read_url:
        return url, settings.database_read_url
    if len(_hosts(url)) < 2:
        return url, None
    given = dict(parse_qsl(urlsplit(url).query)).get("target_session_attrs")
    writes = url if given else _with_query(url, "target_session_attrs", "read-write")
    return writes, _with_query(url, "target_session_attrs", "prefer-standby")


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server (query string kept)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))
