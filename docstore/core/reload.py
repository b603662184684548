"""``store.reload()``: move a store's pools to new URLs without dropping work in flight."""

from __future__ import annotations

import logging

import asyncpg

from docstore import embedded
from docstore.config import (
    Settings,
    UrlSource,
    redact_url,
    resolve_url,
    split_read_write,
    url_secrets,
    with_env_urls,
)
from docstore.core.opener import refuse_legacy
from docstore.core.pools import VECTOR_SCHEMA, Pools, open_replica, repoint
from docstore.core.routing import ReplicaRouter
from docstore.errors import ConfigurationError, SchemaError
from docstore.failures import translate
from docstore.schema import runner

logger = logging.getLogger("docstore")


async def _check_target(url: str, pools: Pools, settings: Settings) -> str | None:
    """Connect to ``url`` as the pools would and refuse a database ``connect()`` would refuse
    or could not work with: a legacy one, one without docstore's schema (a reload never
    migrates), an incompatible one. Returns where its pgvector lives."""
    conn = await asyncpg.connect(url, **pools.primary.connect_kwargs)
    try:
        await refuse_legacy(conn, url)
        status = await runner.schema_status(conn)
        vector_schema: str | None = await conn.fetchval(VECTOR_SCHEMA)
    finally:
        await conn.close()
    if status.current is None:
        raise SchemaError(
            f"{redact_url(url)} has no docstore schema: run `docstore init --url ...` (or "
            "connect() to it, which applies the migrations) before reloading to it"
        )
    runner.check_compatible(status, settings.embedding_dim)
    if ahead := runner.ahead_warning(status):
        logger.warning("%s: %s", redact_url(url), ahead)
    return vector_schema


async def reload_pools(
    pools: Pools,
    router: ReplicaRouter,
    settings: Settings,
    url: str | None = None,
    read_url: str | None = None,
) -> None:
    """Re-read the URLs (``url`` wins), check the new primary, then re-point ``pools``.

    Only the URL variables are read from the environment again; everything else (the
    embedded server's directory, pool sizes, timeouts) is the store's ``settings``. See
    :meth:`docstore.core.database.Database.reload`. On failure nothing changes.
    """
    settings = with_env_urls(settings, database_read_url=read_url)
    resolved, source = resolve_url(settings, url, caller="reload")
    if resolved is None:
        if pools.url_source is not UrlSource.EMBEDDED:
            raise ConfigurationError(
                "reload() found no DATABASE_URL or MCPDOCS_DATABASE_URL to move to: set one,"
                " or pass reload(url=...)"
            )
        resolved = await embedded.embedded_url(settings.embedded_dir)
    # as connect(): an explicit url is not paired with DATABASE_READ_URL (it names the
    # replica of the environment's database, maybe another one), only with read_url
    explicit = source is UrlSource.ARGUMENT and read_url is None
    writes, reads = split_read_write(settings, resolved, read_url=not explicit)
    secrets = url_secrets(writes, reads)
    try:
        vector_schema = await _check_target(writes, pools, settings)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise translate(exc, writes, secrets) from None
    pools.secrets = tuple(dict.fromkeys((*pools.secrets, *secrets)))
    if pools.primary.init is not None:
        pools.primary.init.repoint(vector_schema)
    await repoint(pools.primary, writes)
    if reads is not None and pools.replica is not None:
        await repoint(pools.replica, reads)  # its connections look pgvector up themselves
    elif reads is not None:
        pools.replica = await open_replica(reads, pools.primary, settings)
    elif pools.replica is not None:
        old, pools.replica = pools.replica, None
        await old.pool.close()
    pools.url_source = source
    router.reset()
    logger.info(
        "reloaded: primary %s%s",
        redact_url(writes),
        f", replica {redact_url(reads)}" if reads else "",
    )
