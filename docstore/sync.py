"""docstore without ``await``, for plain scripts and notebooks that prefer it.

    import docstore.sync

    with docstore.sync.connect() as store:          # same URL resolution as docstore.connect
        store.documents.upsert_many(docs)
        results = store.search(embedding, limit=5)

A :class:`SyncStore` owns a private event loop on a daemon thread; every call is submitted to
it and waited for. That is why it also works inside Jupyter, whose own loop is already
running (``asyncio.run`` would refuse there), and why asyncpg's connections always stay on
the loop that made them. Every ``async`` method of :class:`docstore.Store` and of its
repositories is available under the same name and arguments; async iterators (such as
``store.documents.iter()``) become ordinary iterators. Do not share one SyncStore between
threads that call it concurrently — open one per thread or use the async API.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from docstore.search.results import RecallReport, SearchResults, VectorIndex
from docstore.store import Store
from docstore.store import connect as _connect

T = TypeVar("T")


class _LoopThread:
    """An asyncio loop running forever on a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="docstore-sync", daemon=True
        )
        self._thread.start()

    def run(self, awaitable: Awaitable[T]) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("a docstore.sync call cannot be made from its own loop")

        # docstore's context variables (read_from_primary(), ...) set in the calling thread
        # apply to the call, as they would to an awaited call.
        caller = [(var, value) for var, value in contextvars.copy_context().items()]

        async def wrap() -> T:
            for var, value in caller:
                if var.name.startswith("docstore_"):
                    var.set(value)
            return await awaitable

        future = asyncio.run_coroutine_threadsafe(wrap(), self.loop)
        try:
            return future.result()
        except BaseException:
            # Ctrl-C (or any error) on this side: stop the work on the loop too, so it does
            # not keep a connection checked out
            future.cancel()
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class _SyncProxy:
    """Wraps an object whose methods are async: calls run to completion on the loop."""

    def __init__(self, target: Any, runner: _LoopThread) -> None:
        self._target = target
        self._runner = runner

    def _iterate(self, iterator: AsyncIterator[Any]) -> Iterator[Any]:
        # __anext__ is called on the loop thread (an async generator registers with the loop
        # of the thread that first iterates it), and an abandoned iteration is closed there.
        async def step() -> Any:
            return await iterator.__anext__()

        try:
            while True:
                try:
                    yield self._runner.run(step())
                except StopAsyncIteration:
                    return
        finally:
            close = getattr(iterator, "aclose", None)
            if close is not None and not self._runner.loop.is_closed():
                self._runner.run(close())

    def _wrap(self, value: Any) -> Any:
        if inspect.isawaitable(value):
            return self._wrap(self._runner.run(value))
        if isinstance(value, AsyncIterator):
            return self._iterate(value)
        return value

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name.startswith("_"):
            return value
        if callable(value):

            @functools.wraps(value)
            def call(*args: Any, **kwargs: Any) -> Any:
                return self._wrap(value(*args, **kwargs))

            return call
        if hasattr(value, "store"):  # store.documents, store.sources, store.replica
            return _SyncProxy(value, self._runner)
        return value

    def __dir__(self) -> list[str]:
        return sorted(set(dir(type(self))) | set(dir(self._target)))


class SyncStore(_SyncProxy):
    """A :class:`docstore.Store` whose methods block instead of returning coroutines.

    The most used methods are spelled out below (typed, with the async method's docstring);
    every other method and repository of :class:`~docstore.Store` works the same way through
    attribute access.
    """

    _target: Store

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
        """Close the pool and stop this store's loop thread (idempotent)."""
        if not self._runner.loop.is_closed():
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

    Use it as ``with docstore.sync.connect() as store:`` or call ``store.close()``.
    """
    runner = _LoopThread()
    try:
        store = runner.run(_connect(url, **options))
    except BaseException:
        runner.stop()
        raise
    return SyncStore(store, runner)
