"""A store's asyncpg pools: how each is opened, set up, re-pointed and closed.

Every pooled connection is set up by the pool's ``init`` (:class:`CodecInit`: docstore's
codecs, :func:`docstore.codecs.register_codecs`), is a
:class:`~docstore.readonly.ReadOnlyConnection` in a read-only store
(:func:`connection_class`), and goes back to the pool through :func:`reset_connection`, which
skips asyncpg's reset query after docstore's own stateless work (:data:`STATELESS`).
:class:`Pools` holds the primary's pool, the read replica's (if any) and what error messages
must never show.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import asyncpg

from docstore.codecs import register_json_codecs, register_vector_codecs
from docstore.config import Settings, UrlSource, redact_url
from docstore.core import tcp
from docstore.errors import DocstoreError, EventLoopError
from docstore.failures import describe, translate
from docstore.readonly import ReadOnlyConnection

Role = Literal["primary", "replica"]

# A replica that is not there should cost a read little time before it goes to the primary.
logger = logging.getLogger("docstore")

REPLICA_CONNECT_TIMEOUT = 5.0
POOL_CLOSE_TIMEOUT = 30.0  # seconds store.close() waits for checked-out connections
INTERRUPTED_CLOSE_TIMEOUT = 3.0
"""The same wait for a store closed by a cancelled task (Ctrl-C): its work was cancelled, and
each connection it held goes back within :data:`CANCEL_WAIT`; one that does not is not worth
keeping an interrupted command from exiting for."""
CANCEL_WAIT = 2.0
"""Seconds a connection whose statement ran out of time or was cancelled may take to go back
to its pool: asyncpg waits there for the server to confirm the cancel it sent (milliseconds on
a server that answers). Past this the connection is closed, as when the network is gone, and
the caller is not kept waiting for it: asyncpg 0.31 would otherwise wait forever."""
OTHER_LOOP = (
    "this store was opened on another event loop, and its connections belong to that loop:"
    " open the store in the loop that uses it (`async with docstore.connect()` inside the same"
    " `asyncio.run()`), hand the work to its loop (`asyncio.run_coroutine_threadsafe(coro,"
    " store.loop)`), or use `docstore.sync.connect()`, which runs the store on a loop of its own"
)

# Set while docstore's own stateless work holds a connection (see Runner.run): releasing it
# then skips asyncpg's reset query (RESET ALL, UNLISTEN *, ...), a server round trip that
# measured ~0.4 ms of a 3.5 ms ANN search. Open transactions are still rolled back by asyncpg.
STATELESS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "docstore_stateless", default=False
)

VECTOR_SCHEMA = (
    "select n.nspname from pg_extension e join pg_namespace n"
    " on n.oid = e.extnamespace where e.extname = 'vector'"
)


async def reset_connection(conn: asyncpg.Connection) -> None:
    """The pools' ``reset``: asyncpg's reset query, unless the work was :data:`STATELESS`."""
    if STATELESS.get():
        return
    query = conn.get_reset_query()
    if query:
        await conn.execute(query)


def connection_class(read_only: bool) -> type[asyncpg.Connection]:
    """A read-only store's connections guard every statement (:mod:`docstore.readonly`)."""
    return ReadOnlyConnection if read_only else asyncpg.Connection


class CodecInit:
    r"""The pools' ``init``: the jsonb/json codecs and pgvector's on every new connection.
    Without pgvector when the store opened (``schema`` None), each new connection looks for it
    again (until it is found), so a store that runs
    :meth:`~docstore.core.database.Database.migrate` on a new database decodes vectors from
    then on. A reload :meth:`repoint`\ s it to the new database's schema: a pool that kept the
    old database's would fail every new connection (``unknown type``)."""

    def __init__(
        self, schema: str | None, *, remember: bool = True, tcp_timeout: float = 0.0
    ) -> None:
        self.schema = schema
        self.remember = remember
        """False: every new connection looks it up on its own server (a replica's pool,
        whose server a reload may change while a connection to the old one is opening)."""
        self.tcp_timeout = tcp_timeout
        """``DOCSTORE_TCP_TIMEOUT``, set on every new connection's socket (:mod:`.tcp`)."""
        self._stale = False
        """Some connections were set up without pgvector's codecs (it was not there yet): the
        pool's connections are to be replaced once it is found (:meth:`found_late`)."""
        self._epoch = 0
        """Raised by :meth:`repoint`: a lookup that began before it (on a connection to the
        old database) must not write its answer over the new one."""

    @property
    def looking(self) -> bool:
        """While pgvector is not known to the pool (its primary), or some connection was set
        up without it, each checkout asks (:meth:`found_late`)."""
        return (self.remember and self.schema is None) or self._stale

    async def found_late(self, conn: Any, pool: asyncpg.Pool) -> None:
        """On a checkout while :attr:`looking`: look for pgvector (a store opened without the
        schema while a deploy step runs ``docstore init`` in another process); once it is
        there, register its codecs on ``conn`` — which may have opened before — and expire
        the pool's connections, so none without them is handed out again (vectors failed on
        them: "no binary format encoder for type vector"). A replica's pool (``remember``
        False) looks on its own server each time. Asked no more once every connection has
        the codecs."""
        epoch = self._epoch
        schema = (self.schema if self.remember else None) or await conn.fetchval(VECTOR_SCHEMA)
        if schema is None:
            return
        await register_vector_codecs(conn, schema)
        if epoch != self._epoch:
            return  # re-pointed meanwhile: the reload replaces the pool's connections itself
        if self.remember:
            self.schema = schema
        self._stale = False
        await pool.expire_connections()

    def repoint(self, schema: str | None) -> None:
        """New connections register pgvector's codecs in ``schema`` (None: look it up)."""
        self.schema, self._stale = schema, False  # the reload replaces every connection
        self._epoch += 1

    async def __call__(self, conn: asyncpg.Connection) -> None:
        tcp.apply(conn, self.tcp_timeout)
        await register_json_codecs(conn)
        schema, epoch = self.schema, self._epoch
        if schema is None:
            schema = await conn.fetchval(VECTOR_SCHEMA)
            if epoch != self._epoch:
                pass  # re-pointed meanwhile: this answer is the old database's
            elif schema is None:  # this one has no codecs: replaced once pgvector is there
                self._stale = True
            elif self.remember and self.schema is None:
                self.schema, self._stale = schema, True  # the older connections have none
        if schema is not None:
            await register_vector_codecs(conn, schema)


@dataclass
class Pool:
    """One asyncpg pool and what it was opened with (so a reload can re-point it)."""

    role: Role
    pool: asyncpg.Pool = field(repr=False)
    url: str = field(repr=False)  # its password: shown redacted (__repr__)
    connect_kwargs: dict[str, Any] = field(default_factory=dict, repr=False)
    init: CodecInit | None = None
    """The pool's ``init`` (codec registration); a replica's pool has its own."""
    connection_class: type[asyncpg.Connection] = asyncpg.Connection
    """:class:`~docstore.readonly.ReadOnlyConnection` in a read-only store."""

    _redacted: tuple[str, str] = field(default=("", ""), init=False, repr=False, compare=False)

    @property
    def redacted(self) -> str:
        """:attr:`url` without its secrets, redacted once per URL (a reload may re-point the
        pool): ``Runner.run()`` names it for every call's in-doubt policy, and redacting costs
        ~0.16 ms — 0.2 ms on every facade search (bench/compat.py) while it ran each time."""
        url, redacted = self._redacted
        if url != self.url or not redacted:
            redacted = redact_url(self.url)
            self._redacted = (self.url, redacted)
        return redacted

    def __repr__(self) -> str:
        return f"Pool(role={self.role!r}, url={self.redacted!r})"


async def create_pool(
    url: str,
    *,
    min_size: int,
    max_size: int,
    init: CodecInit | None,
    connection_class: type[asyncpg.Connection],
    connect_kwargs: dict[str, Any],
) -> asyncpg.Pool:
    """An asyncpg pool set up the docstore way (codecs, reset, connection class)."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        init=init,
        reset=reset_connection,
        connection_class=connection_class,
        **cast(Any, connect_kwargs),
    )
    return pool


async def open_replica(url: str, primary: Pool, settings: Settings) -> Pool:
    """The read pool, set up like ``primary``'s. It connects lazily (``min_size=0``) with a
    short connect timeout, so a replica that is down when the store opens costs nothing but a
    logged fallback later, and within half the acquire wait, so a replica that accepts
    connections but never answers sends the read to the primary in time. Its connections
    look up pgvector's schema on the replica itself (a logical replica or another database
    may keep it in another schema than the primary's)."""
    kwargs = {
        **primary.connect_kwargs,
        # well inside the acquire wait: a replica that never answers times out connecting
        # (the read then falls back to the primary), not waiting for the pool
        "timeout": min(settings.pool_acquire_timeout / 2, REPLICA_CONNECT_TIMEOUT),
    }
    # one round trip per new (pooled) connection
    init = CodecInit(None, remember=False, tcp_timeout=settings.tcp_timeout)
    pool = await create_pool(
        url,
        min_size=0,
        max_size=settings.pool_max_size,
        init=init,
        connection_class=primary.connection_class,
        connect_kwargs=kwargs,
    )
    return Pool("replica", pool, url, kwargs, init, primary.connection_class)


async def repoint(target: Pool, url: str) -> None:
    """New connections of ``target`` use ``url``; open ones are replaced as they come back."""
    target.pool.set_connect_args(url, **target.connect_kwargs)
    await target.pool.expire_connections()
    target.url = url


async def release(pool: asyncpg.Pool, conn: Any, failure: BaseException | None) -> None:
    """Give ``conn`` back to ``pool`` after work that ended with ``failure`` (None: done).
    After a command timeout or a cancellation asyncpg has asked the server to cancel the
    statement, and the release waits for that, at most :data:`CANCEL_WAIT` (then asyncpg closes
    the connection); a release that fails then is logged, not raised over ``failure``."""
    if not isinstance(failure, TimeoutError | asyncio.CancelledError):
        await pool.release(conn)
        return
    try:
        await pool.release(conn, timeout=CANCEL_WAIT)
    except Exception as exc:  # asyncpg closed it; a cancellation of this wait propagates
        logger.info("a cancelled statement's connection was closed: %s", describe(exc))


@dataclass
class Pools:
    """Where a store's connections come from: the primary's pool, the read replica's (None
    without one), where the URL came from, and the secrets no message may show. Shared by the
    store's collaborators; a reload changes it in place."""

    primary: Pool
    replica: Pool | None
    url_source: UrlSource
    secrets: tuple[str, ...] = field(repr=False)
    _closing: asyncio.Future[None] | None = field(default=None, init=False, repr=False)
    loop: asyncio.AbstractEventLoop = field(
        default_factory=asyncio.get_running_loop, init=False, repr=False
    )
    """The event loop the pools were opened on: their connections belong to it."""

    def check_loop(self) -> bool:
        """Whether this is the pools' loop; :class:`EventLoopError` when it is another one and
        theirs still runs, False when theirs is closed (nothing can close them there)."""
        if asyncio.get_running_loop() is self.loop:
            return True
        if self.loop.is_closed():
            return False
        raise EventLoopError(OTHER_LOOP)

    def require_loop(self) -> None:
        """:class:`EventLoopError` unless this is the pools' loop (:meth:`check_loop`)."""
        if not self.check_loop():
            raise EventLoopError(OTHER_LOOP)

    def all(self) -> list[Pool]:
        return [self.primary] + ([self.replica] if self.replica else [])

    def get(self, role: Role) -> Pool:
        """The pool of ``role`` (the primary's when there is no replica)."""
        return self.replica if role == "replica" and self.replica else self.primary

    def translate(
        self, exc: BaseException, role: Role = "primary", *, ran: bool = False
    ) -> DocstoreError:
        """Map an asyncpg/OS exception that ``role``'s pool raised to docstore's hierarchy
        (naming that pool's URL, redacted; message scrubbed). ``ran``: raised while work ran
        on a connection it was handed (see :func:`docstore.failures.translate`)."""
        return translate(exc, self.get(role).url, self.secrets, ran=ran)

    def describe(self, exc: BaseException) -> str:
        """A one-line description of ``exc`` without secrets."""
        return describe(exc, self.secrets)

    async def close(self) -> None:
        """Close every pool, waiting up to :data:`POOL_CLOSE_TIMEOUT` for checked-out
        connections to be released (:data:`INTERRUPTED_CLOSE_TIMEOUT` when the closing task is
        being cancelled), then terminating what is left (logged): a connection some code
        never gave back must not make ``store.close()`` wait forever. Callers waiting for a
        connection are told the store is closed (``runner._acquire``). Calls made while one
        runs (a shutdown hook and an ``async with``) wait for that one. From another event
        loop than the store's, see :meth:`check_loop`."""
        if not self.check_loop():
            for pool in self.all():  # their loop is gone: let go of the sockets
                with contextlib.suppress(RuntimeError):
                    pool.pool.terminate()
            return
        if self._closing is None:
            task = asyncio.current_task()
            cancelled = task is not None and task.cancelling() > 0
            wait = INTERRUPTED_CLOSE_TIMEOUT if cancelled else POOL_CLOSE_TIMEOUT
            self._closing = asyncio.ensure_future(self._close(wait))
        await asyncio.shield(self._closing)

    async def _close(self, wait: float) -> None:
        async def close(pool: Pool) -> None:
            try:
                await asyncio.wait_for(pool.pool.close(), wait)
            except TimeoutError:  # asyncpg terminates the pool when its close() is cancelled
                logger.warning(
                    "closing the %s pool: connections still checked out after %gs were terminated",
                    pool.role,
                    wait,
                )

        await asyncio.gather(*(close(p) for p in self.all()))
