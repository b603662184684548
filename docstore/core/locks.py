"""``store.try_lock(key)``: a session advisory lock held beside the pool, not in it.

The lock lives on a connection of its own (:func:`try_lock`), opened for it and closed on
exit — closing the session releases the lock, also when the process dies — so the work done
under it may use every pooled connection. Held on a pooled connection, a one-connection pool
deadlocked: the work waited for the connection its own lock held (``PoolTimeoutError`` after
``DOCSTORE_POOL_ACQUIRE_TIMEOUT``), and every other caller with it; a larger pool lost a
connection for as long as the work ran (a paced search calibration: minutes). Where the
server or the role allows no connection beyond the pool's (``53300``), a pool of two or more
lends one of its connections for the lock instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg

from docstore.core import tcp
from docstore.core.pools import Pools
from docstore.errors import DocstoreError
from docstore.failures import is_closed

logger = logging.getLogger("docstore")

CLOSE_TIMEOUT = 10.0
"""Seconds :func:`try_lock` waits for its connection to close before ending the socket."""
TOO_MANY_CONNECTIONS = "53300"

_Acquire = Callable[[], contextlib.AbstractAsyncContextManager[Any]]


@contextlib.asynccontextmanager
async def try_lock(
    pools: Pools, tcp_timeout: float, acquire: _Acquire, key: int, poll: float | None = None
) -> AsyncIterator[bool]:
    """``pg_try_advisory_lock(key)`` on a connection of its own to ``pools``' primary (see
    the module docstring); whether it was taken. ``acquire``: the pool's checkout, for the
    fallback. ``poll``: asked again every ``poll`` seconds until it is taken — on that
    connection, or in the fallback on a pooled one checked out for each attempt, so none is
    held while waiting (a waiting ``pg_advisory_lock`` would hold a snapshot, which a
    ``CREATE INDEX CONCURRENTLY`` under the lock waits for)."""
    pools.require_loop()  # the store's work under the lock runs on its loop
    try:
        conn = await _connect_aside(pools, tcp_timeout)
    except DocstoreError as exc:
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate != TOO_MANY_CONNECTIONS or pools.primary.pool.get_max_size() < 2:
            raise
        logger.info("try_lock: no connection beyond the pool's (%s): the lock on a pooled one", exc)
        while True:  # with poll, a pooled connection is held only once the lock is taken
            async with acquire() as pooled:
                locked = await _lock(pools, pooled, key, own=False, poll=None)
                if locked or poll is None:
                    try:
                        yield locked
                    finally:
                        if locked and not is_closed(pooled):
                            await pooled.execute("SELECT pg_advisory_unlock($1)", key)
                    return
            await asyncio.sleep(poll)
    try:
        yield await _lock(pools, conn, key, own=True, poll=poll)
    finally:
        # closing the session releases the lock; a close that cannot finish (the server or
        # the network gone) ends the socket instead, which ends the session too: the work
        # inside is done, so that is logged, not raised (a cancellation still is)
        try:
            await conn.close(timeout=CLOSE_TIMEOUT)
        except Exception as exc:
            conn.terminate()
            logger.info("try_lock: its connection did not close cleanly: %s", pools.describe(exc))
        except BaseException:
            conn.terminate()
            raise


async def _connect_aside(pools: Pools, tcp_timeout: float) -> asyncpg.Connection:
    """A connection to the primary of its own, set up like the pool's sockets
    (``DOCSTORE_TCP_TIMEOUT``); without the codecs: it runs docstore's own SQL only."""
    primary = pools.primary
    try:
        conn = await asyncpg.connect(
            primary.url, connection_class=primary.connection_class, **primary.connect_kwargs
        )
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise pools.translate(exc) from exc
    tcp.apply(conn, tcp_timeout)
    return conn


async def _lock(
    pools: Pools, conn: asyncpg.Connection, key: int, *, own: bool, poll: float | None
) -> bool:
    """``pg_try_advisory_lock(key)`` on ``conn`` (every ``poll`` seconds until taken); a
    connection of its ``own`` that fails is ended (its lock with it; a pooled one is the
    checkout's to handle)."""
    try:
        while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
            if poll is None:
                return False
            await asyncio.sleep(poll)
        return True
    except BaseException as exc:
        if own:
            conn.terminate()
        if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError | OSError):
            raise pools.translate(exc, ran=True) from exc
        raise
