"""docstore without ``await``, for plain scripts and notebooks that prefer it.

    import docstore.sync

    with docstore.sync.connect() as store:          # same URL resolution as docstore.connect
        store.documents.upsert_many(docs)
        results = store.search(embedding, limit=5)
        with store.transaction() as conn:           # its methods block too
            conn.execute("DELETE FROM documents WHERE source_name = $1", "old")

A :class:`SyncStore` owns a private event loop on a daemon thread; every call is submitted to
it and waited for. That is why it also works inside Jupyter, whose own loop is already
running (``asyncio.run`` would refuse there), and why asyncpg's connections always stay on
the loop that made them. Every ``async`` method of :class:`docstore.Store` and of its
repositories is available under the same name and arguments; async iterators (such as
``store.documents.iter()``) become ordinary iterators, and async context managers
(``transaction()``, ``acquire()``, ``try_lock()``) ordinary ``with`` blocks, entered and
exited on the store's loop. The connection such a block gives blocks the same way
(``conn.fetch(...)``, ``with conn.transaction():`` for a savepoint), and so does every
asyncpg object it returns: ``conn.prepare(query)`` gives a statement whose ``fetch…`` block,
and ``conn.cursor(query)`` a cursor (in a transaction, as in asyncpg) that is iterated with
``for`` (``prefetch`` rows per round trip, 50 by default) or read with ``fetch(n)``,
``fetchrow()`` and ``forward(n)``. No call returns a coroutine. Do not share one SyncStore
between threads that call it concurrently — open one per thread or use the async API.

Ctrl-C during a call raises :class:`KeyboardInterrupt` once the work on the loop has been
cancelled (its connection is back in the pool); in a ``with store.transaction()`` block it
rolls the transaction back. After :meth:`SyncStore.close` every call raises
:class:`~docstore.errors.DatabaseUnavailableError`. A SyncStore dropped without being closed
(a notebook cell run again) is closed when it is garbage-collected, with a
:class:`ResourceWarning`; while any part of it is still in use (``store.documents``, an
iterator, a connection) it stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import threading
import warnings
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any, TypeVar, cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from docstore.errors import DatabaseUnavailableError
from docstore.search.results import RecallReport, SearchResults, VectorIndex
from docstore.store import Store
from docstore.store import connect as _connect

T = TypeVar("T")

logger = logging.getLogger("docstore")

# How long a cancelled call (Ctrl-C) may take to unwind on the loop, and closing the store of
# a SyncStore nobody closed may take, before the caller stops waiting for them.
_SETTLE_TIMEOUT = 10.0
_SHUTDOWN_TIMEOUT = 30.0
# Rows an iterated cursor fetches per round trip once opened (asyncpg's default prefetch).
_PREFETCH = 50


def _closed() -> DatabaseUnavailableError:
    return DatabaseUnavailableError("this SyncStore is closed")


_ASYNC_API: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()


def _has_async_api(kind: type) -> bool:
    """Whether ``kind`` is one of asyncpg's or docstore's classes with coroutine methods (a
    connection, pool, prepared statement, cursor, …): its objects are handed to sync code
    wrapped, so that their calls block instead of returning coroutines."""
    known = _ASYNC_API.get(kind)
    if known is None:
        known = _ASYNC_API[kind] = _find_async_api(kind)
    return known


def _find_async_api(kind: type) -> bool:
    if issubclass(kind, asyncpg.Connection | PoolConnectionProxy):
        return True
    if not any(k.__module__.split(".")[0] in ("asyncpg", "docstore") for k in kind.__mro__):
        return False
    for name in dir(kind):
        if name.startswith("_"):
            continue
        try:  # unwrapped: asyncpg's @guarded hides that its methods are coroutines
            method = inspect.unwrap(getattr(kind, name))
        except Exception:  # a descriptor that only works on an instance
            continue
        if inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method):
            return True
    return False


def _unwrap(value: Any) -> Any:
    """A wrapped object passed back in (``store.pool.release(conn)``) as the object itself."""
    if isinstance(value, _SyncAwaitableContext) and value._awaited is not None:
        value = value._awaited
    return value._target if isinstance(value, _SyncProxy) else value


def _discard(awaitable: object) -> None:
    """Close a coroutine that will never run (no "was never awaited" warning)."""
    if inspect.iscoroutine(awaitable):
        awaitable.close()


class _LoopThread:
    """An asyncio loop running on a daemon thread until :meth:`stop`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.closed = False
        self._lock = threading.Lock()  # orders submissions against stop()
        self._shutdown_task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._main, name="docstore-sync", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def run(self, awaitable: Awaitable[T]) -> T:
        """Run ``awaitable`` on the loop and wait for it. Interrupted (Ctrl-C), the work on
        the loop is cancelled and allowed to unwind (at most ``_SETTLE_TIMEOUT``) before the
        exception is raised here, so none of it is still running then."""
        if threading.current_thread() is self._thread:
            _discard(awaitable)
            raise RuntimeError("a docstore.sync call cannot be made from its own loop")

        # docstore's context variables (read_from_primary(), ...) set in the calling thread
        # apply to the call, as they would to an awaited call.
        caller = [(var, value) for var, value in contextvars.copy_context().items()]

        async def wrap() -> T:
            for var, value in caller:
                if var.name.startswith("docstore_"):
                    var.set(value)
            return await awaitable

        coro = wrap()
        tasks: list[asyncio.Task[T]] = []
        finished = threading.Event()

        def done(task: asyncio.Task[T]) -> None:
            if task.cancelled():
                _discard(awaitable)  # cancelled before it started
            else:
                task.exception()  # retrieved: no "never retrieved" if the caller gave up
            finished.set()

        def start() -> None:
            task = self.loop.create_task(coro)
            task.add_done_callback(done)
            tasks.append(task)

        def cancel() -> None:
            for task in tasks:
                task.cancel()

        with self._lock:
            if self.closed:
                coro.close()
                _discard(awaitable)
                raise _closed()
            self.loop.call_soon_threadsafe(start)
        try:
            finished.wait()
        except BaseException:
            # Ctrl-C (or any error) on this side: stop the work on the loop too, so it does
            # not keep a connection checked out, and let it unwind before raising
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs
                self.loop.call_soon_threadsafe(cancel)
            finished.wait(_SETTLE_TIMEOUT)
            raise
        task = tasks[0]
        if task.cancelled() and self.closed:
            raise _closed()  # cancelled by stop() from another thread
        return task.result()

    def stop(self, closing: Callable[[], Awaitable[object]] | None = None) -> None:
        """Run ``closing`` (if given), cancel what still runs and let it finish, close the
        async generators, then stop and close the loop (idempotent). From another thread it
        waits for all that; from the loop's own thread it only starts it."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            try:
                self.loop.call_soon_threadsafe(self._begin_shutdown, closing)
            except RuntimeError:  # the loop is closed already
                return
        if threading.current_thread() is not self._thread:
            self._thread.join(_SHUTDOWN_TIMEOUT + 3 * _SETTLE_TIMEOUT)

    def _begin_shutdown(self, closing: Callable[[], Awaitable[object]] | None) -> None:
        self._shutdown_task = self.loop.create_task(self._shutdown(closing))

    async def _shutdown(self, closing: Callable[[], Awaitable[object]] | None) -> None:
        try:
            if closing is not None:
                try:
                    await asyncio.wait_for(closing(), _SHUTDOWN_TIMEOUT)
                except Exception:
                    logger.warning("closing an unclosed docstore.sync store failed", exc_info=True)
            current = asyncio.current_task()
            pending = [task for task in asyncio.all_tasks() if task is not current]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=_SETTLE_TIMEOUT)
            await self.loop.shutdown_asyncgens()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.loop.shutdown_default_executor(), _SETTLE_TIMEOUT)
        finally:
            self.loop.stop()


class _SyncProxy:
    """Wraps an object whose methods are async: calls run to completion on the loop."""

    def __init__(self, target: Any, runner: _LoopThread, owner: _SyncProxy | None = None) -> None:
        self._target = target
        self._runner = runner
        # the SyncStore this is a part of: kept alive (so not closed) while its parts are used
        self._owner = owner

    def _part(self, target: Any, kind: type[_SyncProxy] | None = None) -> _SyncProxy:
        owner = self if self._owner is None else self._owner
        return (kind or _SyncProxy)(target, self._runner, owner)

    def _iterate(self, iterator: AsyncIterator[Any]) -> Iterator[Any]:
        # __anext__ is called on the loop thread (an async generator registers with the loop
        # of the thread that first iterates it), and an abandoned iteration is closed there.
        async def step() -> Any:
            return await iterator.__anext__()

        try:
            while True:
                try:
                    item = self._runner.run(step())
                except StopAsyncIteration:
                    return
                yield self._wrap(item)
        finally:
            self._aclose(iterator)

    def _aclose(self, iterator: AsyncIterator[Any]) -> None:
        # after a break, an error or Ctrl-C; a failure here never masks the exception that
        # ended the iteration (a closed store has closed its async generators already)
        close = getattr(iterator, "aclose", None)
        if close is None or self._runner.closed:
            return
        try:
            self._runner.run(close())
        except Exception:
            logger.debug("closing an abandoned docstore.sync iteration failed", exc_info=True)

    def _wrap(self, value: Any) -> Any:
        # Iterables first: an asyncpg cursor factory is awaitable too (awaited, it opens).
        if isinstance(value, AsyncIterator):
            return self._iterate(value)
        if hasattr(type(value), "__aiter__"):
            return self._part(value, _SyncCursor)
        if isinstance(value, contextlib.AbstractAsyncContextManager):
            both = inspect.isawaitable(value)  # pool.acquire(): with it, or use it as is
            return self._part(value, _SyncAwaitableContext if both else _SyncContext)
        if inspect.isawaitable(value):
            return self._wrap(self._runner.run(value))
        if _has_async_api(type(value)):  # a connection, prepared statement, cursor, pool
            return self._part(value)
        return value

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name.startswith("_"):
            return value
        if callable(value):

            @functools.wraps(value)
            def call(*args: Any, **kwargs: Any) -> Any:
                if self._runner.closed:  # not asyncpg's "released to the pool" error
                    raise _closed()
                args = tuple(_unwrap(arg) for arg in args)
                kwargs = {key: _unwrap(arg) for key, arg in kwargs.items()}
                return self._wrap(value(*args, **kwargs))

            return call
        if hasattr(value, "store") or _has_async_api(type(value)):
            return self._part(value)  # store.documents, store.sources, store.replica, store.pool
        return value

    def __dir__(self) -> list[str]:
        return sorted(set(dir(type(self))) | set(dir(self._target)))

    def __repr__(self) -> str:
        return f"<sync {self._target!r}>"


class _SyncContext(_SyncProxy):
    """An async context manager as a ``with`` block, entered and exited on the loop. The
    connection it gives (``transaction()``, ``acquire()``) is wrapped to block as well."""

    def __enter__(self) -> Any:
        return self._wrap(self._runner.run(self._target.__aenter__()))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None or isinstance(exc, Exception):
            return bool(self._runner.run(self._target.__aexit__(exc_type, exc, tb)))
        # KeyboardInterrupt, SystemExit, GeneratorExit: raised on the loop it would stop it.
        # There the block ends as if cancelled (a transaction rolls back), and ``exc``
        # propagates here whatever that cleanup does.
        try:
            cancelled = asyncio.CancelledError()
            self._runner.run(self._target.__aexit__(asyncio.CancelledError, cancelled, None))
        except (asyncio.CancelledError, Exception):
            logger.debug("leaving an interrupted docstore.sync block failed", exc_info=True)
        return False


class _SyncAwaitableContext(_SyncContext):
    """Both an async context manager and an awaitable (asyncpg's ``pool.acquire()``): a
    ``with`` block enters it; used as is (``conn = store.pool.acquire()``), it is awaited
    once and stands for what that gave (``conn.fetchval(...)``, ``pool.release(conn)``)."""

    _awaited: _SyncProxy | None = None

    def awaited(self) -> Any:
        if self._awaited is None:
            self._awaited = self._wrap(self._runner.run(self._target))
        return self._awaited

    def __getattr__(self, name: str) -> Any:
        return getattr(self.awaited(), name)


class _SyncCursor(_SyncProxy):
    """An asyncpg cursor (``conn.cursor(...)``, ``statement.cursor(...)``) from sync code.

    Iterated, it runs as ``async for`` does (``prefetch`` rows per round trip, 50 by
    default). Its methods (``fetch``, ``fetchrow``, ``forward``) first open it, once, as
    ``await conn.cursor(...)`` does; iterated after that, it yields the rows that remain.
    """

    _opened: _SyncProxy | None = None

    def __iter__(self) -> Iterator[Any]:
        if self._opened is not None:
            return self._rest(self._opened)

        async def start() -> AsyncIterator[Any]:
            return aiter(self._target)  # on the loop, as every call: a closed store refuses

        return self._iterate(self._runner.run(start()))

    @staticmethod
    def _rest(cursor: _SyncProxy) -> Iterator[Any]:
        while rows := cursor.fetch(_PREFETCH):
            yield from rows

    def _open(self) -> Any:
        if self._opened is None:
            self._opened = self._part(self._runner.run(self._target))
        return self._opened

    def fetch(self, n: int, **options: Any) -> list[Any]:
        """Blocking :meth:`asyncpg.cursor.Cursor.fetch`: the next ``n`` rows."""
        return cast(list[Any], self._open().fetch(n, **options))

    def fetchrow(self, **options: Any) -> Any:
        """Blocking :meth:`asyncpg.cursor.Cursor.fetchrow`: the next row, or None."""
        return self._open().fetchrow(**options)

    def forward(self, n: int, **options: Any) -> int:
        """Blocking :meth:`asyncpg.cursor.Cursor.forward`: skip ``n`` rows (how many it did)."""
        return cast(int, self._open().forward(n, **options))


class SyncStore(_SyncProxy):
    """A :class:`docstore.Store` whose methods block instead of returning coroutines.

    The most used methods are spelled out below (typed, with the async method's docstring);
    every other method and repository of :class:`~docstore.Store` works the same way through
    attribute access.
    """

    _target: Store
    _finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def store(self) -> Store:
        """The underlying async :class:`~docstore.Store` (only usable on this store's loop)."""
        return self._target

    def _call(self, method: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        return self._runner.run(method(*args, **kwargs))

    def search(self, embedding: Any, **options: Any) -> SearchResults:
        """Blocking :meth:`docstore.Store.search`."""
        return self._call(self._target.search, embedding, **options)

    def search_text(self, text: str, **options: Any) -> SearchResults:
        """Blocking :meth:`docstore.Store.search_text`."""
        return self._call(self._target.search_text, text, **options)

    def hybrid_search(self, text: str, embedding: Any, **options: Any) -> SearchResults:
        """Blocking :meth:`docstore.Store.hybrid_search`."""
        return self._call(self._target.hybrid_search, text, embedding, **options)

    def create_vector_index(self, metric: str = "cosine", **options: Any) -> VectorIndex:
        """Blocking :meth:`docstore.Store.create_vector_index`."""
        return self._call(self._target.create_vector_index, metric, **options)

    def evaluate_recall(self, sample: int = 100, limit: int = 10, **options: Any) -> RecallReport:
        """Blocking :meth:`docstore.Store.evaluate_recall`."""
        return self._call(self._target.evaluate_recall, sample, limit, **options)

    def close(self) -> None:
        """Close the pool and stop this store's loop thread (idempotent). Afterwards every
        call raises :class:`~docstore.errors.DatabaseUnavailableError`."""
        if self._finalizer is not None:
            self._finalizer.detach()
        if not self._runner.closed:
            try:
                self._runner.run(self._target.close())
            finally:
                self._runner.stop()

    def __enter__(self) -> SyncStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SyncStore {self._target!r}>"


def connect(url: str | None = None, **options: Any) -> SyncStore:
    """Blocking :func:`docstore.connect`: same arguments, same URL resolution
    (``url`` → ``DATABASE_URL`` → ``MCPDOCS_DATABASE_URL`` → embedded), same errors.

    Use it as ``with docstore.sync.connect() as store:`` or call ``store.close()``. A store
    dropped without either is closed when it is garbage-collected (or at exit), with a
    :class:`ResourceWarning`.
    """
    runner = _LoopThread()
    try:
        store = runner.run(_connect(url, **options))
    except BaseException:
        runner.stop()
        raise
    sync = SyncStore(store, runner)
    # Not a method of `sync`, nor holding it: the finalizer must not keep it alive.
    sync._finalizer = weakref.finalize(sync, _close_unclosed, runner, store)
    return sync


def _close_unclosed(runner: _LoopThread, store: Store) -> None:
    """A SyncStore nobody closed went away: close its store on its loop and stop the thread
    (rather than keep both, and the pool's connections, for the life of the process)."""
    if runner.closed:
        return
    warnings.warn(
        f"SyncStore was not closed: closing {store!r} now (use `with docstore.sync.connect()"
        " as store:` or call store.close())",
        ResourceWarning,
        stacklevel=3,  # where the last reference went (past weakref.finalize.__call__)
    )
    runner.stop(store.close)
