"""``store.reload()``: move a store's pools to new URLs without dropping work in flight."""

from __future__ import annotations

import logging

import asyncpg

from docstore import embedded
from docstore.config import (
    UrlSource,
    load_settings,
    redact_url,
    resolve_url,
    split_read_write,
    url_secrets,
)
from docstore.core.pools import Pools, open_replica, repoint
from docstore.core.routing import ReplicaRouter
from docstore.errors import ConfigurationError
from docstore.failures import translate
from docstore.schema import runner

logger = logging.getLogger("docstore")


async def reload_pools(
    pools: Pools,
    router: ReplicaRouter,
    embedding_dim: int,
    url: str | None = None,
    read_url: str | None = None,
) -> None:
    """Re-read the URLs (``url`` wins), check the new primary, then re-point ``pools``.

    See :meth:`docstore.core.database.Database.reload`. On failure nothing changes.
    """
    settings = load_settings(**({} if read_url is None else {"database_read_url": read_url}))
    resolved, source = resolve_url(settings, url)
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
        conn = await asyncpg.connect(writes, **pools.primary.connect_kwargs)
        try:
            status = await runner.schema_status(conn)
        finally:
            await conn.close()
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise translate(exc, writes, secrets) from None
    runner.check_compatible(status, embedding_dim)
    pools.secrets = tuple(dict.fromkeys((*pools.secrets, *secrets)))
    await repoint(pools.primary, writes)
    if reads is not None and pools.replica is not None:
        await repoint(pools.replica, reads)
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
