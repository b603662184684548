"""Running work on pooled connections: checkout, retries, replica reads, transactions, locks.

:meth:`Runner.run` is how every docstore operation reaches the database: it checks a
connection out (waiting at most ``DOCSTORE_POOL_ACQUIRE_TIMEOUT``, measured by
:mod:`docstore.metrics`), runs the work, retries transient failures with backoff
(:mod:`docstore.failures`), sends reads to the replica when :class:`~docstore.core.routing.
ReplicaRouter` says so (and to the primary if the replica fails), and turns every failure into
a docstore error whose message holds no secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, TypeVar, get_args

import asyncpg
import tenacity

from docstore.arguments import timeout_seconds
from docstore.config import Settings
from docstore.core import locks
from docstore.core.doubt import CommitMarker, Handoff, in_doubt_error, read_only_replay
from docstore.core.pools import STATELESS, Pools, Role, release
from docstore.core.routing import ReplicaRouter
from docstore.core.shards import PLACEMENT_SQL, NotRouted, ShardRouter
from docstore.errors import DocstoreError, PoolTimeoutError, ValidationError
from docstore.failures import (
    POOL_CLOSED,
    first_retry_wait,
    is_transient,
    is_transient_query_failure,
    may_have_run,
    must_close,
    retrying,
)
from docstore.metrics import Metrics, timed

logger = logging.getLogger("docstore")

T = TypeVar("T")
_Work = Callable[[asyncpg.Connection], Awaitable[T]]
_OnDoubt = Callable[[_Work[T], BaseException], Awaitable[tuple[_Work[T], bool]]]
"""What to run after an attempt that may have applied (docstore.core.doubt), and whether the
doubt stands (the first attempt may have applied, so giving up must say so); or raise."""
IsolationLevel = Literal["read_committed", "read_uncommitted", "serializable", "repeatable_read"]
ISOLATION_LEVELS = frozenset(get_args(IsolationLevel))


def _check_isolation(isolation: object) -> None:
    if isolation is not None and isolation not in ISOLATION_LEVELS:
        raise ValidationError(
            f"isolation must be one of {', '.join(sorted(ISOLATION_LEVELS))} or None",
            field="isolation",
        )


def _in_doubt(handoff: Handoff, exc: BaseException) -> bool:
    """Whether a failure leaves work in doubt (:mod:`docstore.core.doubt`): transient, after
    the work was handed its connection, and either the server may have run the statement
    (the connection broke under it) or the work may have committed part of itself first."""
    return (
        handoff.handed
        and is_transient_query_failure(exc)
        and (may_have_run(exc) or handoff.committed_earlier(exc))
    )


def _retry_on(handoff: Handoff) -> Callable[[BaseException], bool]:
    """Transient failures; a timeout only before the work had its connection (connecting
    timed out: nothing ran), never a statement's ``command_timeout`` (it may have run)."""

    def retry_on(exc: BaseException) -> bool:
        return is_transient_query_failure(exc) or (not handoff.handed and is_transient(exc))

    return retry_on


async def _retry_as_is(work: _Work[T], exc: BaseException) -> tuple[_Work[T], bool]:
    return work, False


def _in_transaction(work: _Work[T], transaction: dict[str, Any]) -> _Work[T]:
    async def in_tx(conn: asyncpg.Connection) -> T:
        async with conn.transaction(**transaction):
            return await work(conn)

    return in_tx


def _replay_read_only(where: str) -> _OnDoubt[Any]:
    async def replay(work: _Work[T], exc: BaseException) -> tuple[_Work[T], bool]:
        return read_only_replay(work, where, exc), True  # the first attempt may have applied

    return replay


def _doubt_policy(retry_in_doubt: object, where: str, read_only: bool) -> _OnDoubt[Any]:
    """What ``run(..., retry_in_doubt=...)`` does with work left in doubt (see Runner.run)."""
    if not isinstance(retry_in_doubt, bool) and retry_in_doubt != "read_only":
        raise ValidationError(
            'retry_in_doubt must be "read_only", True or False', field="retry_in_doubt"
        )
    if retry_in_doubt is False:
        return _refuse(where)
    if retry_in_doubt is True or read_only:  # safe to run it again
        return _retry_as_is
    return _replay_read_only(where)


def _refuse(where: str) -> _OnDoubt[Any]:
    async def refused(work: _Work[T], exc: BaseException) -> tuple[_Work[T], bool]:
        raise in_doubt_error(where, exc) from exc

    return refused


async def _acquire(pools: Pools, role: Role, wait: float, metrics: Metrics) -> Any:
    """A connection of ``pooled`` within ``wait`` seconds, timed; :class:`PoolTimeoutError`
    only when that wait ran out (a connect timeout — a hung server — is raised as is: a
    transient failure, retried, and for a replica a reason to read from the primary). While
    pgvector was not found, each connection asks again (:meth:`CodecInit.found_late`). From
    another event loop than the store's, :class:`EventLoopError` before anything is touched."""
    pools.require_loop()
    pooled = pools.get(role)
    pool = pooled.pool
    metrics.waiting[role] += 1
    started = time.perf_counter()
    try:
        # asyncio.timeout rather than acquire(timeout=...): no extra task per acquire.
        async with asyncio.timeout(wait) as waited:
            conn = await pool.acquire()
    except TimeoutError:
        if not waited.expired():
            raise
        metrics.timed_out(role)
        raise PoolTimeoutError(_pool_timeout_message(pool, role, wait)) from None
    finally:
        metrics.waiting[role] -= 1
    if pool.is_closing():
        # handed over by a statement that ended while the store closes: asyncpg's close()
        # would close the connection under the caller's statement (57014, or a protocol
        # error), and a release would reset it while close() closes it; it is closed now
        # (which releases it), and the caller is told the store is closed, as one arriving now
        conn.terminate()
        raise asyncpg.InterfaceError("pool is closing")
    if pooled.init is not None and pooled.init.looking:
        try:
            await pooled.init.found_late(conn, pool)
        except BaseException:
            conn.terminate()  # closed, which releases it
            raise
    metrics.acquired(role, time.perf_counter() - started)
    return conn


@contextlib.asynccontextmanager
async def _closed_typed(
    checkout: contextlib.AbstractAsyncContextManager[Any], pools: Pools
) -> AsyncIterator[Any]:
    """``checkout``'s connection, a closed store's refusal to give one typed as the store's
    methods type it (:class:`~docstore.errors.DatabaseUnavailableError`, "this store … is
    closed") rather than asyncpg's "pool is closing"/"pool is closed"; what the caller's own
    block raises is left as it is."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            conn = await stack.enter_async_context(checkout)
        except asyncpg.InterfaceError as exc:
            if POOL_CLOSED not in str(exc):
                raise
            raise pools.translate(exc) from exc
        yield conn


def _pool_timeout_message(pool: asyncpg.Pool, role: Role, wait: float) -> str:
    """Why no connection came within ``wait``: every one was busy, or (the pool had room)
    opening one did not finish — a server that does not answer."""
    size, most = pool.get_size(), pool.get_max_size()
    if size < most:
        return (
            f"no database connection within {wait:g}s ({role}): opening one did not finish"
            f" ({size} of {most} open) — is the server answering? (DOCSTORE_POOL_ACQUIRE_TIMEOUT)"
        )
    return (
        f"no database connection became free within {wait:g}s (pool max size {most}, "
        f"{role}); raise DOCSTORE_POOL_MAX_SIZE or DOCSTORE_POOL_ACQUIRE_TIMEOUT, or reduce "
        "concurrency"
    )


class Runner:
    """The pools plus retry: runs work on connections (see the module docstring)."""

    def __init__(
        self,
        pools: Pools,
        router: ReplicaRouter,
        settings: Settings,
        metrics: Metrics,
        shards: ShardRouter | None = None,
        distributed: Callable[[], bool] = lambda: False,
        read_only: bool = False,
    ) -> None:
        self._pools = pools
        self._router = router
        self._settings = settings
        self._metrics = metrics
        self._shards = shards
        self._distributed = distributed
        self._read_only = read_only  # the store's: nothing it runs can write

    async def _placement(self, source: str) -> Any:
        """The node holding ``source``'s shard, asked of the coordinator."""
        return await self._attempt(lambda conn: conn.fetchrow(PLACEMENT_SQL, source))

    def _retrying(self, handoff: Handoff) -> tenacity.AsyncRetrying:
        return retrying(
            self._settings,
            self._what,
            after_first_failure=True,
            retry_on=_retry_on(handoff),
            on_retry=self._metrics.retry,
        )

    async def _attempt(
        self,
        work: Callable[[asyncpg.Connection], Awaitable[T]],
        role: Role = "primary",
        handoff: Handoff | None = None,
    ) -> T:
        async with self.checkout(role) as conn:
            if handoff is not None:
                handoff.begin(conn)  # from here on a broken connection leaves work in doubt
            return await work(conn)

    @timed("run")
    async def run(
        self,
        work: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        stateless: bool = False,
        read: bool = False,
        shard: str | None = None,
        retry_in_doubt: bool | Literal["read_only"] = "read_only",
        commits_partway: bool = False,
    ) -> T:
        """Run ``work(connection)`` on a pooled connection, retrying transient failures.

        ``work`` is called again from the start on a retry, so it should be one transaction or
        idempotent. Errors come out as docstore errors. ``stateless=True`` promises that
        ``work`` leaves no session state behind (no ``SET`` outside a transaction, no
        ``LISTEN``, cursor or advisory lock), so the connection goes back to the pool without
        a reset round trip. ``read=True`` promises that ``work`` only reads: it runs on the
        read replica when there is one (on the primary if the replica fails).

        ``shard`` (a ``source_name``, with ``read``; the caller checked the database is a
        Citus cluster and routing is on): ``work`` reads only that source's rows, so it runs
        on the Citus worker holding its shard (:mod:`docstore.core.shards`), else — no
        such worker, or it fails to answer — as without ``shard``. Not with a read replica
        configured: the user sent reads away from the primaries, the workers' included.

        A connection lost while ``work`` ran leaves it in doubt: the server may have applied
        it. By default (``retry_in_doubt="read_only"``) it is then run again only with every
        transaction read-only (:mod:`docstore.core.doubt`): a read answers, and work that would
        write raises :class:`DatabaseUnavailableError` saying it may or may not have been
        applied — it is never applied twice. ``retry_in_doubt=True`` promises that running
        ``work`` twice does no harm (a versioned schema migration): it is retried as is.
        ``retry_in_doubt=False``: raise that error at once. A failure the server answered
        (it ended the session, 40001, 40P01) is in doubt too when ``work`` may have committed
        part of itself first: it sent more than one statement, or one string of statements
        that may (``commits_partway=True``, which :meth:`execute` sets for a string with a
        ``COMMIT``, ``BEGIN``, ``CALL``… among several: asyncpg sends it in one round trip),
        or the error came from inside a procedure, ``DO`` block or function (``CALL`` with
        ``COMMIT``). Other failures the server answered, and
        failures before ``work`` was handed a connection (a connect timeout included), are
        retried as usual.
        """
        on_doubt: _OnDoubt[T] = _doubt_policy(retry_in_doubt, self._where, self._read_only)
        return await self._run(
            work, on_doubt, stateless=stateless, read=read, shard=shard, partway=commits_partway
        )

    @timed("run_in_transaction")
    async def run_in_transaction(
        self,
        /,
        work: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        retry_in_doubt: bool = False,
        **transaction: Any,
    ) -> T:
        """Like :meth:`run`, inside one transaction (retried whole on 40001/40P01 etc.);
        ``transaction`` are ``asyncpg.Connection.transaction``'s options.

        A connection lost before ``COMMIT`` was sent: the transaction rolled back and runs
        again. Lost during ``COMMIT`` (or ``COMMIT`` ran out of ``command_timeout``): the
        server is asked whether it committed (:class:`docstore.core.doubt.CommitMarker`); if
        it did, or that cannot be known, :class:`DatabaseUnavailableError` says so and it is
        not run again. ``retry_in_doubt=True`` promises that running ``work`` twice does no
        harm (an upsert of the same values): it is then run again as is."""
        # no marker to read (its round trip: ~15% of a row's) when running it again is safe,
        # as run() decides: promised, or on a read-only store, where nothing can commit a write
        if retry_in_doubt is True or self._read_only:
            return await self._run(_in_transaction(work, transaction), _retry_as_is)
        marker = CommitMarker()
        distributed = self._distributed()

        async def ask(query: _Work[Any]) -> Any:
            return await self._run(query, _retry_as_is)

        async def settle(attempt: _Work[T], exc: BaseException) -> tuple[_Work[T], bool]:
            await marker.settle(ask, self._where, exc, distributed=distributed)
            return attempt, False  # settled: it did not commit

        return await self._run(marker.wrap(work, transaction), settle)

    @property
    def _where(self) -> str:
        return self._pools.primary.redacted

    async def _run(
        self,
        work: Callable[[asyncpg.Connection], Awaitable[T]],
        on_doubt: _OnDoubt[T],
        *,
        stateless: bool = False,
        read: bool = False,
        shard: str | None = None,
        partway: bool = False,
    ) -> T:
        token = STATELESS.set(stateless)
        handoff = Handoff(partway)
        doubt: list[BaseException] = []  # a failure that left work in doubt, still unsettled

        async def settle(exc: BaseException) -> None:
            nonlocal work
            if not doubt and _in_doubt(handoff, exc):  # once standing, the replay is safe
                work, stands = await on_doubt(work, exc)
                if stands:
                    doubt.append(exc)

        try:
            shards = self._shards if self._pools.replica is None else None
            if shard is not None and read and shards is not None:
                try:
                    return await shards.run(shard, work, self._placement, handoff.begin)
                except NotRouted:
                    handoff.handed = False  # on to the coordinator: a connection of its own
            if read and self._router.use_replica():
                answered = await self._on_replica(work)
                if answered:
                    return answered[0]
            try:
                # The first attempt runs without tenacity's machinery (~70 us a call, 2% of
                # an ANN search); only a transient failure enters the retry loop.
                return await self._attempt(work, handoff=handoff)
            except BaseException as exc:
                if not _retry_on(handoff)(exc):
                    raise
                await settle(exc)  # with no retry left too: it may say "it committed"
                if self._settings.retry_attempts < 2:
                    raise
                await first_retry_wait(self._settings, self._what, exc, self._metrics.retry)
            async for attempt in self._retrying(handoff):
                with attempt:
                    handoff.handed = False
                    try:
                        return await self._attempt(work, handoff=handoff)
                    except BaseException as exc:
                        await settle(exc)
                        raise
        except DocstoreError:
            raise
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
            if doubt and is_transient_query_failure(exc):  # gave up: say what may have run
                raise in_doubt_error(self._where, doubt[0]) from exc
            raise self._pools.translate(exc, ran=handoff.handed) from exc
        finally:
            STATELESS.reset(token)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _on_replica(self, work: _Work[T]) -> list[T]:
        """``[result]`` of a read on the replica; ``[]`` when it failed in a way the primary
        may not (the read then runs there). Other failures raise, naming the replica."""
        handoff = Handoff()
        try:
            result = await self._attempt(work, "replica", handoff)
        except BaseException as exc:
            if await self._router.failed(exc, before_work=not handoff.handed):
                return []
            if isinstance(exc, DocstoreError) or not isinstance(exc, Exception):
                raise  # already typed; or a cancellation
            raise self._pools.translate(exc, "replica", ran=handoff.handed) from exc
        self._router.succeeded()
        return [result]

    @property
    def _what(self) -> str:
        return f"query on {self._pools.primary.redacted}"

    @contextlib.asynccontextmanager
    async def acquire(self, *, timeout: float | None = None) -> AsyncIterator[Any]:
        """Check a connection out of the primary's pool (``async with store.acquire() as c``).

        Waits at most ``timeout`` (default ``DOCSTORE_POOL_ACQUIRE_TIMEOUT``) for a free
        connection, then raises :class:`PoolTimeoutError`; on a closed (or closing) store,
        :class:`DatabaseUnavailableError`.
        """
        timeout_seconds(timeout)
        async with _closed_typed(self.checkout("primary", timeout), self._pools) as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def checkout(self, role: Role, timeout: float | None = None) -> AsyncIterator[Any]:
        """A connection of ``role``'s pool, timed; a broken one is never pooled again."""
        pooled = self._pools.get(role)
        wait = self._settings.pool_acquire_timeout if timeout is None else timeout
        conn = await _acquire(self._pools, role, wait, self._metrics)
        failure: BaseException | None = None
        try:
            yield conn
        except BaseException as exc:
            failure = exc
            if must_close(conn, exc):
                conn.terminate()  # dead or mid-protocol: never hand it to the next caller
            raise
        finally:
            try:
                await release(pooled.pool, conn, failure)
            except Exception as exc:
                # the connection broke on the way back (asyncpg closed it): when the work was
                # done its outcome stands (running it again could apply it twice), and when
                # it failed the caller gets that failure, not this one
                if not is_transient(exc):
                    raise
                logger.info(
                    "a connection broke while going back to the pool: %s", self._pools.describe(exc)
                )

    @contextlib.asynccontextmanager
    async def transaction(
        self, *, isolation: IsolationLevel | None = None, readonly: bool = False
    ) -> AsyncIterator[Any]:
        """``async with store.transaction() as conn:`` — one transaction on one connection.

        Not retried: a transaction that fails part-way raises, and the caller decides. On a
        read-only store it is always ``READ ONLY`` (:mod:`docstore.readonly`).
        """
        _check_isolation(isolation)
        handed = False
        try:
            async with (
                self.acquire() as conn,
                conn.transaction(isolation=isolation, readonly=readonly),
            ):
                handed = True
                yield conn
        except DocstoreError:
            raise
        except (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            OSError,
        ) as exc:  # in the body, or getting / releasing the connection
            raise self._pools.translate(exc, ran=handed) from exc

    def has_idle_connection(self, *, read: bool = False) -> bool:
        """Whether the pool a query would use (the replica's for ``read`` when routed there)
        has a connection nobody is using, or room to open one — background work (live recall)
        runs only then, so it never makes a caller wait for a connection."""
        target = self._pools.replica if read and self._router.use_replica_quietly() else None
        pool = (target or self._pools.primary).pool
        return pool.get_idle_size() > 0 or pool.get_size() < pool.get_max_size()

    def try_lock(
        self, key: int, *, poll: float | None = None
    ) -> contextlib.AbstractAsyncContextManager[bool]:
        """``async with store.try_lock(key) as locked:`` — a session advisory lock on the
        primary if nobody holds it (``locked`` False otherwise, without waiting; with ``poll``,
        asked every ``poll`` seconds until taken), released on exit. For work one process at a
        time should do (a search calibration, an index build).

        The lock is held on a connection of its own, opened for it and closed on exit (which
        releases it if the process dies), not on a pooled one, which the work inside may need
        (a one-connection pool deadlocked). Where the server allows no more connections
        (``53300``), a pool of two or more lends one (:mod:`docstore.core.locks`)."""
        return locks.try_lock(self._pools, self._settings.tcp_timeout, self.acquire, key, poll)
