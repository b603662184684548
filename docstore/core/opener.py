"""Opening a store: resolve the URLs, check (and migrate) the schema, open the pools.

:func:`open_database` is what :func:`docstore.connect` runs; it returns a
:class:`StoreOpener`, which is awaitable and an async context manager, as asyncpg's pool is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, Protocol, TypeVar

import asyncpg

from docstore import embedded
from docstore.config import (
    Settings,
    UrlSource,
    load_settings,
    redact_url,
    resolve_url,
    settings_values,
    split_read_write,
    statement_timeout_ms,
    url_secrets,
)
from docstore.core import tcp
from docstore.core.pools import (
    VECTOR_SCHEMA,
    CodecInit,
    Pool,
    connection_class,
    create_pool,
    open_replica,
)
from docstore.errors import DocstoreError, SchemaError
from docstore.failures import retrying, translate
from docstore.schema import citus, runner

logger = logging.getLogger("docstore")


class _Closable(Protocol):
    async def close(self) -> None: ...


D = TypeVar("D", bound=_Closable)


class StoreOpener(Generic[D]):
    """What :func:`connect` returns: awaitable (→ store) and an async context manager."""

    def __init__(self, opener: Callable[[], Awaitable[D]]) -> None:
        self._opener = opener
        self._store: D | None = None

    def __await__(self) -> Generator[Any, None, D]:
        return self._opener().__await__()

    async def __aenter__(self) -> D:
        self._store = await self._opener()
        return self._store

    async def __aexit__(self, *exc: object) -> None:
        if self._store is not None:
            await self._store.close()


IS_LEGACY_DATABASE = (
    "SELECT to_regclass('doc_embeddings') IS NOT NULL"
    " AND to_regclass('docstore_schema_version') IS NULL"
)
"""Whether a database is a legacy rust_docs_vectors one docstore must not work on."""


async def refuse_legacy(conn: asyncpg.Connection, url: str) -> None:
    """:class:`SchemaError` if ``conn``'s database is a legacy rust_docs_vectors one
    (``doc_embeddings`` and no docstore schema): docstore must not build its tables there
    unasked, nor work on it."""
    if await conn.fetchval(IS_LEGACY_DATABASE):
        raise SchemaError(
            f"{redact_url(url)} is a legacy rust_docs_vectors database (it has "
            "doc_embeddings and no docstore schema): point DATABASE_URL at docstore's "
            "database, or run `docstore init --url ...` to add docstore's tables to it"
        )


def open_database(
    factory: Callable[..., D],
    url: str | None = None,
    *,
    read_only: bool | None = None,
    migrate: bool | None = None,
    settings: Settings | None = None,
    **overrides: Any,
) -> StoreOpener[D]:
    """Open a ``factory`` (:class:`~docstore.core.database.Database` or
    :class:`~docstore.Store`: called with the primary's pool and the keyword arguments of
    ``Database``); see :func:`docstore.connect`.

    The URL is ``url``, else ``DATABASE_URL``, else ``MCPDOCS_DATABASE_URL``, else the
    embedded PostgreSQL (extra ``docstore[embedded]``). ``read_only`` defaults to ``READ_ONLY``.

    ``migrate``: apply pending schema migrations while connecting. Defaults to
    ``DOCSTORE_AUTO_MIGRATE`` (true), and is always off in read-only mode: a read-only store
    never runs DDL, and on a Citus worker (docstore's tables are the coordinator's; a store
    connected to a worker writes and reads ``documents`` and ``document_sources`` there).
    ``overrides`` are :class:`~docstore.config.Settings` fields by name
    (``pool_max_size=10``, ``embedding_dim=1536``, ...).

    Usage: ``store = await docstore.connect()`` or ``async with docstore.connect() as store:``.
    """

    # DATABASE_READ_URL pairs with a URL from the environment; with connect(url) only a read
    # URL given as explicitly (database_read_url="...", or in the Settings passed) is used:
    # database_read_url=None means no replica, as reload(url, database_read_url=None) does
    explicit_read_url = overrides.get("database_read_url") is not None or settings is not None

    async def open_store() -> D:
        cfg = settings or load_settings(**overrides)
        if overrides and settings is not None:
            cfg = load_settings(**{**settings_values(settings), **overrides})
        return await _open(factory, cfg, url, read_only, migrate, explicit_read_url)

    return StoreOpener(open_store)


async def _open(
    factory: Callable[..., D],
    settings: Settings,
    url: str | None,
    read_only: bool | None,
    migrate: bool | None,
    explicit_read_url: bool = False,
) -> D:
    resolved, source = resolve_url(settings, url)
    if resolved is None:
        resolved = await embedded.embedded_url(settings.embedded_dir)
    resolved, read_url = split_read_write(
        settings, resolved, read_url=source is not UrlSource.ARGUMENT or explicit_read_url
    )
    ro = settings.read_only if read_only is None else read_only
    do_migrate = (settings.auto_migrate if migrate is None else migrate) and not ro
    if migrate and ro:
        logger.warning("read-only store: schema migrations are not applied")
    secrets = url_secrets(resolved, read_url)
    # TIMESTAMP columns hold naive UTC (models.naive_utc; filters convert to it): their
    # CURRENT_TIMESTAMP defaults, the update trigger and now() in upserts must read the clock
    # in UTC whatever the server's, database's or role's TimeZone (kwargs win over the URL's).
    server_settings = {"application_name": settings.application_name, "timezone": "UTC"}
    if ro:
        server_settings["default_transaction_read_only"] = "on"
    if settings.statement_timeout is not None:
        server_settings["statement_timeout"] = statement_timeout_ms(settings.statement_timeout)
    connect_kwargs: dict[str, Any] = {
        "server_settings": server_settings,
        "command_timeout": settings.command_timeout,
        "timeout": settings.pool_acquire_timeout,
    }

    distributed = False

    async def bootstrap() -> str | None:
        nonlocal distributed
        conn = await asyncpg.connect(
            resolved, server_settings=server_settings, timeout=settings.pool_acquire_timeout
        )
        try:
            tcp.apply(conn, settings.tcp_timeout)
            # on a Citus worker docstore's schema (and its local tables) is the coordinator's
            migrate_here = do_migrate and not await citus.is_worker(conn)
            if migrate_here:
                await refuse_legacy(conn, resolved)
                applied = await runner.apply_migrations(conn, embedding_dim=settings.embedding_dim)
                if applied:
                    logger.info("applied schema migrations %s to %s", applied, redact_url(resolved))
            status = await runner.schema_status(conn)
            runner.check_compatible(status, settings.embedding_dim)
            if ahead := runner.ahead_warning(status):
                logger.warning("%s: %s", redact_url(resolved), ahead)
            if status.pending and status.current is not None:
                logger.warning(
                    "schema of %s is at version %s, docstore expects %s: run `docstore init`",
                    redact_url(resolved),
                    status.current,
                    status.latest,
                )
            distributed = status.distributed
            schema: str | None = await conn.fetchval(VECTOR_SCHEMA)
            return schema
        finally:
            await conn.close()

    policy = retrying(settings, f"connect to {redact_url(resolved)}")
    try:
        vector_schema: str | None = None
        async for attempt in policy:
            with attempt:
                vector_schema = await bootstrap()
        if vector_schema is None:
            # a database docstore has not initialised yet (`docstore init`, migrate() or the
            # next connect() creates pgvector): every new connection looks again
            logger.debug("pgvector is not enabled in %s yet", redact_url(resolved))
        init = CodecInit(vector_schema, tcp_timeout=settings.tcp_timeout)
        pool: asyncpg.Pool | None = None
        async for attempt in policy:
            with attempt:
                pool = await create_pool(
                    resolved,
                    min_size=settings.pool_min_size,
                    max_size=settings.pool_max_size,
                    init=init,
                    connection_class=connection_class(ro),
                    connect_kwargs=connect_kwargs,
                )
        assert pool is not None
        primary = Pool("primary", pool, resolved, connect_kwargs, init, connection_class(ro))
        replica = None if read_url is None else await open_replica(read_url, primary, settings)
    except DocstoreError:
        raise
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
            raise
        raise translate(exc, resolved, secrets) from None
    return factory(
        primary.pool,
        settings=settings,
        url=resolved,
        url_source=source,
        read_only=ro,
        connect_kwargs=connect_kwargs,
        init=init,
        replica=replica,
        distributed=distributed,
    )
