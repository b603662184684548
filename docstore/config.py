"""Settings read from the environment (pydantic-settings), and which database URL to use.

URL resolution order: an explicit ``url=`` argument, then ``DATABASE_URL``, then the legacy
``MCPDOCS_DATABASE_URL`` (logged once at INFO), then the embedded PostgreSQL. Reads may go to
a replica: ``DATABASE_READ_URL``, or a multi-host URL (:func:`split_read_write`). An empty
variable counts as unset. Invalid values raise :class:`~docstore.errors.ConfigurationError`
naming the variable and never echoing its value.

How a URL is read, checked and redacted is :mod:`docstore.urls` (its public names are
importable from here too: :func:`parse_url`, :func:`check_url`, :func:`redact_url`, ...).
"""

from __future__ import annotations

import logging
import math
import os
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import platformdirs
import pydantic
from pydantic import Field, field_serializer, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from docstore.errors import ConfigurationError
from docstore.urls import (
    PERCENT_ENCODE_HINT,
    REDACTED,
    ParsedUrl,
    UrlError,
    check_url,
    parse_url,
    redact_url,
    url_password,
    url_secrets,
    with_database,
)

logger = logging.getLogger("docstore")


ROOT_EMBEDDED_DIR = Path("/var/lib/docstore")
"""root's default embedded directory when it has none under its home yet (see below)."""


def _default_embedded_dir() -> Path:
    """The user's data directory (``~/.local/share/docstore`` on Linux). As root the server
    runs as the user ``pgserver``, which cannot reach a directory under a closed ``/root``
    (and docstore will not open it, see :mod:`docstore.embedded_setup`): root uses
    :data:`ROOT_EMBEDDED_DIR` unless an earlier version already made the home one."""
    home = Path(platformdirs.user_data_dir("docstore", appauthor=False))
    if os.name != "nt" and os.geteuid() == 0 and not home.exists():
        return ROOT_EMBEDDED_DIR
    return home


def _check_url(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parse_url(value)
    except UrlError as exc:
        problem = str(exc)
    else:
        if url_password(value) != REDACTED:
            return value
        # a URL out of model_dump(): connecting with it would fail authentication, unexplained
        problem = (
            f"its password is {REDACTED!r}, as Settings.model_dump() shows it: copy settings "
            "with docstore.config.settings_values(settings)"
        )
    raise ValueError(f"not a valid database URL: {problem}")  # pydantic names the variable


MAX_STATEMENT_TIMEOUT = 2147483.647
"""The largest ``DOCSTORE_STATEMENT_TIMEOUT`` (seconds): PostgreSQL's ``statement_timeout``
is an int of milliseconds."""


def statement_timeout_ms(seconds: float) -> str:
    """``statement_timeout`` for the server: whole milliseconds, rounded up so that a small
    positive timeout is at least 1 ms (``0`` would turn the timeout off)."""
    if seconds <= 0:
        return "0"
    return str(min(max(1, math.ceil(seconds * 1000)), 2**31 - 1))


_URL_FIELDS = ("database_url", "mcpdocs_database_url", "legacy_database_url", "database_read_url")


class Settings(BaseSettings):
    """Every environment variable docstore reads; see the README's configuration table.

    An invalid value raises :class:`ConfigurationError` naming the variable (never quoting
    the value), whether the value came from the environment or a keyword argument.
    """

    model_config = SettingsConfigDict(
        env_ignore_empty=True,
        extra="ignore",
        populate_by_name=True,
        case_sensitive=False,
        frozen=True,
        hide_input_in_errors=True,
    )

    def __init__(self, **values: Any) -> None:
        problems: list[str] = []
        try:
            super().__init__(**values)
        except pydantic.ValidationError as exc:
            problems = _describe(exc)
        if problems:
            # Raised outside the except block so the pydantic error (which holds the raw
            # input, possibly a password) is not even kept as __context__.
            raise ConfigurationError("invalid configuration: " + "; ".join(problems))

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
        30.0, gt=0, allow_inf_nan=False, validation_alias="DOCSTORE_POOL_ACQUIRE_TIMEOUT"
    )
    command_timeout: float | None = Field(
        60.0, gt=0, allow_inf_nan=False, validation_alias="DOCSTORE_COMMAND_TIMEOUT"
    )
    statement_timeout: float | None = Field(
        None,
        ge=0,
        le=MAX_STATEMENT_TIMEOUT,
        allow_inf_nan=False,
        validation_alias="DOCSTORE_STATEMENT_TIMEOUT",
    )
    """Seconds, sent as whole milliseconds rounded up (:func:`statement_timeout_ms`); 0 turns
    the server's timeout off."""
    tcp_timeout: float = Field(
        60.0, ge=0, le=32767, allow_inf_nan=False, validation_alias="DOCSTORE_TCP_TIMEOUT"
    )
    """Seconds after which a TCP connection whose peer stopped answering (a network cut) is
    declared lost, by docstore's keepalive and, for the migrator's sessions, by the server's
    (:mod:`docstore.core.tcp`); 0: none on docstore's side, the server's defaults (about two
    hours) on its side."""
    embedding_dim: int = Field(3072, ge=2, le=16000, validation_alias="DOCSTORE_EMBEDDING_DIM")
    embedded_dir: Path = Field(
        default_factory=_default_embedded_dir, validation_alias="DOCSTORE_EMBEDDED_DIR"
    )
    auto_migrate: bool = Field(True, validation_alias="DOCSTORE_AUTO_MIGRATE")
    application_name: str = Field(
        "docstore", min_length=1, max_length=63, validation_alias="DOCSTORE_APPLICATION_NAME"
    )
    retry_attempts: int = Field(5, ge=1, le=100, validation_alias="DOCSTORE_RETRY_ATTEMPTS")
    retry_initial_delay: float = Field(
        0.2, ge=0, allow_inf_nan=False, validation_alias="DOCSTORE_RETRY_INITIAL_DELAY"
    )
    retry_max_delay: float = Field(
        5.0, ge=0, allow_inf_nan=False, validation_alias="DOCSTORE_RETRY_MAX_DELAY"
    )
    hnsw_ef_search: int | None = Field(
        None, ge=1, le=1000, validation_alias="DOCSTORE_HNSW_EF_SEARCH"
    )
    """An explicit ``hnsw.ef_search`` for every ANN search; unset: the database's calibration."""
    search_oversample: int = Field(4, ge=1, le=100, validation_alias="DOCSTORE_SEARCH_OVERSAMPLE")
    search_target_recall: float = Field(
        0.98, gt=0, le=1, validation_alias="DOCSTORE_SEARCH_TARGET_RECALL"
    )
    search_recall_sample: float = Field(
        0.05, ge=0, le=1, validation_alias="DOCSTORE_SEARCH_RECALL_SAMPLE"
    )
    search_recall_budget: float = Field(
        0.02, ge=0, le=1, validation_alias="DOCSTORE_SEARCH_RECALL_BUDGET"
    )
    search_keep_queries: bool = Field(True, validation_alias="DOCSTORE_SEARCH_KEEP_QUERIES")
    metrics: bool = Field(True, validation_alias="DOCSTORE_METRICS")
    replica_retry_seconds: float = Field(
        5.0, ge=0, allow_inf_nan=False, validation_alias="DOCSTORE_REPLICA_RETRY_SECONDS"
    )
    """Seconds a failed read replica (or a Citus worker that failed a routed search) is
    skipped before it is tried again."""
    citus_route_searches: bool = Field(True, validation_alias="DOCSTORE_CITUS_ROUTE_SEARCHES")
    """On a Citus cluster, run a one-source search (``source_name`` given) on the worker
    holding the source's shard instead of through the coordinator, which prints the query
    vector into the SQL it sends the worker (:mod:`docstore.core.shards`)."""

    @field_validator(*_URL_FIELDS)
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        return _check_url(value)

    @field_serializer(*_URL_FIELDS)
    def _redacted(self, value: str | None) -> str | None:
        """``model_dump()`` / ``model_dump_json()`` show URLs without their passwords, as
        ``repr`` does (:func:`settings_values` has the real ones)."""
        return redact_url(value) if value else value

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


def _describe(exc: pydantic.ValidationError) -> list[str]:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = error.get("loc") or ()
        field = str(loc[0]) if loc else ""
        variable = _ENV_NAMES.get(field, field.upper())
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        problems.append(f"{variable}: {message}" if variable else message)
    return problems


def load_settings(**overrides: Any) -> Settings:
    """Read :class:`Settings` from the environment, with keyword overrides (field names).

    Raises :class:`ConfigurationError` naming the offending variable; the value is never
    included, since it may be a secret.
    """
    return Settings(**{key: value for key, value in overrides.items() if value is not None})


def settings_values(settings: Settings) -> dict[str, Any]:
    """Every field of ``settings`` by name, URLs with their passwords (``model_dump()`` hides
    them): what a copy with other values is built from."""
    return {name: getattr(settings, name) for name in type(settings).model_fields}


_ENV_URL_FIELDS = frozenset({"database_url", "mcpdocs_database_url", "database_read_url"})


def with_env_urls(settings: Settings, **overrides: Any) -> Settings:
    """``settings`` with ``DATABASE_URL``, ``MCPDOCS_DATABASE_URL`` and ``DATABASE_READ_URL``
    read again from the environment (what ``store.reload()`` picks up), and keyword
    ``overrides`` (field names; None ones dropped). Every other field keeps its value in
    ``settings``, so an unrelated variable changed (or made invalid) since does not matter.
    """
    kept = {k: v for k, v in settings_values(settings).items() if k not in _ENV_URL_FIELDS}
    return Settings(**kept, **{key: value for key, value in overrides.items() if value is not None})


_legacy_fallback_logged = False


def resolve_url(
    settings: Settings, url: str | None = None, *, caller: str = "connect"
) -> tuple[str | None, UrlSource]:
    """Pick the database URL: argument → DATABASE_URL → MCPDOCS_DATABASE_URL → embedded.

    Returns ``(None, UrlSource.EMBEDDED)`` when no URL is configured. A URL asyncpg would
    misread raises :class:`ConfigurationError` naming its source (see :func:`check_url`;
    ``url`` is named as ``caller``'s argument: ``connect(url=...)``, ``reload(url=...)``),
    before anything connects.
    """
    global _legacy_fallback_logged
    if url:
        return check_url(url, f"{caller}(url=...)"), UrlSource.ARGUMENT
    if settings.database_url:
        return check_url(settings.database_url, "DATABASE_URL"), UrlSource.DATABASE_URL
    if settings.mcpdocs_database_url:
        legacy = check_url(settings.mcpdocs_database_url, "MCPDOCS_DATABASE_URL")
        if not _legacy_fallback_logged:
            logger.info(
                "DATABASE_URL is not set; using the legacy MCPDOCS_DATABASE_URL (%s)",
                redact_url(legacy),
            )
            _legacy_fallback_logged = True
        return legacy, UrlSource.MCPDOCS_DATABASE_URL
    return None, UrlSource.EMBEDDED


def _hosts(url: str) -> list[str]:
    try:
        parsed = parse_url(url)
    except UrlError:
        return [""]
    return list(parsed.hosts) or parsed.query_hosts() or [""]


def _with_query(url: str, key: str, value: str) -> str:
    parts = urlsplit(url)
    pairs = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != key]
    query = urlencode([*pairs, (key, value)], safe="/,")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def read_write_urls(url: str) -> tuple[str, str | None]:
    """``(url for writes, url for reads or None)`` from one URL: a URL naming several hosts
    (``postgresql://db1,db2,db3/docs``) is split, writes going to the host that accepts them
    (``target_session_attrs=read-write`` unless the URL says otherwise) and reads preferring a
    standby (``target_session_attrs=prefer-standby``); a single-host URL has no read URL."""
    if len(_hosts(url)) < 2:
        return url, None
    given = dict(parse_qsl(urlsplit(url).query)).get("target_session_attrs")
    writes = url if given else _with_query(url, "target_session_attrs", "read-write")
    return writes, _with_query(url, "target_session_attrs", "prefer-standby")


def split_read_write(
    settings: Settings, url: str, *, read_url: bool = True
) -> tuple[str, str | None]:
    """``(url for writes, url for reads or None)`` for a resolved database URL.

    A URL naming several hosts (``postgresql://db1,db2,db3/docs``, a failover list) always
    writes to the host that accepts them (``target_session_attrs=read-write`` unless the URL
    says otherwise), so a failover never sends writes to a standby. Reads go to
    ``DATABASE_READ_URL`` (checked like ``DATABASE_URL``) unless ``read_url`` is False: a URL
    given explicitly (``connect(url)``, the CLI's ``--url``/``--target``) is not paired with
    a replica the environment names for whatever ``DATABASE_URL`` is — that replica may hold
    another database. Otherwise a multi-host URL reads from a standby if there is one
    (``target_session_attrs=prefer-standby``), and a single-host URL has no read URL.
    """
    writes, reads = read_write_urls(url)
    if read_url and settings.database_read_url:
        return writes, check_url(settings.database_read_url, "DATABASE_READ_URL")
    return writes, reads


__all__ = [
    "PERCENT_ENCODE_HINT",
    "REDACTED",
    "ParsedUrl",
    "Settings",
    "UrlError",
    "UrlSource",
    "check_url",
    "load_settings",
    "parse_url",
    "read_write_urls",
    "redact_url",
    "resolve_url",
    "split_read_write",
    "statement_timeout_ms",
    "url_password",
    "url_secrets",
    "with_database",
    "with_env_urls",
]
