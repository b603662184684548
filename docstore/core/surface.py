"""The query surface as the layers above the core see it: :class:`Queries` and ``store.replica``.

Repositories, search, the tuner and the compat facade are written against :class:`Queries` —
what they may use of a store — so they run on a :class:`~docstore.core.database.Database`
and on a :class:`docstore.Store` (which delegates these to its Database) alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, Literal, Protocol, TypeVar

import asyncpg

from docstore.arguments import timeout_seconds
from docstore.config import Settings
from docstore.core.runner import IsolationLevel
from docstore.errors import DocstoreError
from docstore.metrics import Metrics, timed

T = TypeVar("T")


class Queries(Protocol):
    """What code above the core uses of a store (see :class:`~docstore.core.database.
    Database` for each member's documentation)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def read_only(self) -> bool: ...
    @property
    def distributed(self) -> bool: ...
    @property
    def embedding_dim(self) -> int: ...
    @property
    def replica(self) -> ReadQueries: ...
    @property
    def _metrics(self) -> Metrics: ...

    def ensure_writable(self) -> None: ...
    def translate(self, exc: BaseException) -> DocstoreError: ...
    def read_from_primary(self) -> AbstractContextManager[None]: ...

    async def run(
        self,
        work: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        stateless: bool = False,
        read: bool = False,
        shard: str | None = None,
        retry_in_doubt: bool | Literal["read_only"] = "read_only",
        commits_partway: bool = False,
    ) -> T: ...
    async def run_in_transaction(
        self,
        work: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        retry_in_doubt: bool = False,
        **transaction: Any,
    ) -> T: ...
    def acquire(self, *, timeout: float | None = None) -> AbstractAsyncContextManager[Any]: ...
    def transaction(
        self, *, isolation: IsolationLevel | None = None, readonly: bool = False
    ) -> AbstractAsyncContextManager[Any]: ...
    def has_idle_connection(self, *, read: bool = False) -> bool: ...
    def try_lock(
        self, key: int, *, poll: float | None = None
    ) -> AbstractAsyncContextManager[bool]: ...

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str: ...
    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]: ...
    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any: ...
    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any: ...


class ReadQueries:
    """``store.replica``: the read-only part of the query surface, routed to the replica."""

    def __init__(self, db: Queries, *, own: bool = False) -> None:
        #: the store these queries run on
        self.store = db
        # A caller's SQL may change session state (set_config(…, false), a temporary table,
        # an advisory lock), so the pool's reset query runs after it; only docstore's own
        # statements (``own``, see :func:`own_reads`) skip that round trip.
        self._stateless = own

    @property
    def _metrics(self) -> Metrics:
        return self.store._metrics

    @timed("fetch")
    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]:
        """Rows of a read-only query, from the replica."""
        timeout_seconds(timeout)
        return await self.store.run(
            lambda conn: conn.fetch(query, *args, timeout=timeout),
            stateless=self._stateless,
            read=True,
        )

    @timed("fetchrow")
    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        """The first row of a read-only query, from the replica, or None."""
        timeout_seconds(timeout)
        return await self.store.run(
            lambda conn: conn.fetchrow(query, *args, timeout=timeout),
            stateless=self._stateless,
            read=True,
        )

    @timed("fetchval")
    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        """One value of the first row of a read-only query, from the replica."""
        timeout_seconds(timeout)
        return await self.store.run(
            lambda conn: conn.fetchval(query, *args, column=column, timeout=timeout),
            stateless=self._stateless,
            read=True,
        )


def own_reads(db: Queries) -> ReadQueries:
    """``db.replica`` for docstore's own read-only statements, which change no session state:
    their connections go back to the pool without the reset query's round trip (~0.4 ms)."""
    return ReadQueries(db, own=True)
