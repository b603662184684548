"""The asyncpg connection class of a read-only store: asyncpg's whole query surface
(``execute``, ``fetch…``, ``executemany``, prepared statements, cursors, ``copy_…``,
transactions) routed through the guard of :mod:`docstore.readonly.guard`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Generator
from typing import Any, cast

import asyncpg
from asyncpg import cursor as _cursor
from asyncpg import prepared_stmt as _prepared

from docstore.readonly.guard import SERVER_REFUSALS, GuardedConnection, as_refusal, refused
from docstore.readonly.statements import READ_KEYWORDS, classify, leading_keyword


class ReadOnlyConnection(GuardedConnection):
    """The asyncpg connection of a read-only store: no statement sent through its public API
    runs outside a read-only transaction (see :mod:`docstore.readonly`).

    Reads work as on any connection — ``fetch``, ``transaction()`` (always ``READ ONLY``),
    cursors, prepared statements, ``copy_from_query`` — with these differences: ``execute()``
    runs one statement per call (a string of several is refused with
    :class:`~docstore.errors.ReadOnlyError`), ``copy_to_table`` and ``copy_records_to_table``
    are refused, a cursor must be a query (``SELECT``, ``WITH``, ``VALUES``, ``TABLE``,
    ``SHOW`` or ``EXPLAIN``), and statements that would reach the server's filesystem are
    refused: a ``COPY`` other than ``TO STDOUT``, a function such as ``lo_export``, and — when
    the role could write server files — ``DO`` and ``LOAD``
    (:mod:`docstore.readonly.server_files`).
    """

    __slots__ = ()

    async def execute(self, query: str, *args: object, timeout: float | None = None) -> str:
        """As :meth:`asyncpg.Connection.execute`, one statement per call, read-only."""
        if not args:
            if query == self.get_reset_query():
                return await self._passthrough(query, timeout)
            kind, sql = classify(query)
            if kind == "simple":
                return await self._passthrough(query, timeout)
            if kind == "begin" and not self.is_in_transaction():
                return await self._begin(sql, timeout)

        async def run() -> tuple[str, str | None]:
            _, tag = await self._bind_execute(query, args, 0, timeout)
            return tag or "", tag

        try:
            return await self._guarded(query, run)
        except asyncpg.PostgresSyntaxError as exc:
            if "multiple commands" not in str(exc):
                raise
            raise refused(
                "execute() runs one statement per call (a string of several could leave the "
                "read-only transaction)"
            ) from exc

    async def executemany(self, command: str, args: Any, *, timeout: float | None = None) -> None:
        """As :meth:`asyncpg.Connection.executemany`, read-only."""
        base = super().executemany

        async def run() -> tuple[None, str | None]:
            await base(command, args, timeout=timeout)
            return None, None

        await self._guarded(command, run)

    async def fetch(
        self,
        query: str,
        *args: object,
        timeout: float | None = None,
        record_class: Any = None,
    ) -> list[Any]:
        """As :meth:`asyncpg.Connection.fetch`, read-only."""
        return await self._guarded(
            query, lambda: self._bind_execute(query, args, 0, timeout, record_class=record_class)
        )

    async def fetchrow(
        self,
        query: str,
        *args: object,
        timeout: float | None = None,
        record_class: Any = None,
    ) -> Any:
        """As :meth:`asyncpg.Connection.fetchrow`, read-only."""
        rows = await self._guarded(
            query, lambda: self._bind_execute(query, args, 1, timeout, record_class=record_class)
        )
        return rows[0] if rows else None

    async def fetchval(
        self, query: str, *args: object, column: int = 0, timeout: float | None = None
    ) -> Any:
        """As :meth:`asyncpg.Connection.fetchval`, read-only."""
        rows = await self._guarded(query, lambda: self._bind_execute(query, args, 1, timeout))
        return rows[0][column] if rows else None

    async def fetchmany(
        self,
        query: str,
        args: Any,
        *,
        timeout: float | None = None,
        record_class: Any = None,
    ) -> list[Any]:
        """As :meth:`asyncpg.Connection.fetchmany`, read-only."""
        base = super().fetchmany

        async def run() -> tuple[list[Any], str | None]:
            return await base(query, args, timeout=timeout, record_class=record_class), None

        return await self._guarded(query, run)

    def transaction(
        self,
        *,
        isolation: Any = None,
        readonly: bool = True,
        deferrable: bool = False,
    ) -> Any:
        """As :meth:`asyncpg.Connection.transaction`, always ``READ ONLY`` (``readonly`` is
        ignored); the transaction takes its snapshot as it begins."""
        del readonly
        return super().transaction(isolation=isolation, readonly=True, deferrable=deferrable)

    async def prepare(
        self,
        query: str,
        *,
        name: str | None = None,
        timeout: float | None = None,
        record_class: Any = None,
    ) -> Any:
        """As :meth:`asyncpg.Connection.prepare`; running the statement is guarded."""
        statement = await super().prepare(
            query, name=name, timeout=timeout, record_class=record_class
        )
        return _ReadOnlyStatement(self, query, cast(Any, statement)._state)

    def cursor(
        self,
        query: str,
        *args: object,
        prefetch: int | None = None,
        timeout: float | None = None,
        record_class: Any = None,
    ) -> Any:
        """As :meth:`asyncpg.Connection.cursor` (inside a transaction), for a query."""
        cast(Any, self)._check_open()
        return _ReadOnlyCursorFactory(self, query, None, args, prefetch, timeout, record_class)

    async def _check_cursor(self, query: str) -> None:
        if not self.is_in_transaction():
            return  # asyncpg refuses a cursor outside a transaction
        await self._guarded(query, _nothing)
        if leading_keyword(query) not in READ_KEYWORDS:
            raise refused("a cursor must be a query (SELECT, WITH, VALUES, TABLE, SHOW or EXPLAIN)")

    async def copy_to_table(self, table_name: str, **kwargs: Any) -> str:
        """Refused: COPY … FROM writes."""
        raise refused(f"copy_to_table({table_name!r}) writes")

    async def copy_records_to_table(self, table_name: str, **kwargs: Any) -> str:
        """Refused: COPY … FROM writes."""
        raise refused(f"copy_records_to_table({table_name!r}) writes")

    async def _copy_in(self, copy_stmt: str, source: Any, timeout: float | None) -> str:
        raise refused("COPY … FROM writes")

    async def _copy_out(self, copy_stmt: str, output: Any, timeout: float | None) -> str:
        # copy_from_table / copy_from_query build "COPY (query) TO STDOUT …" and send it
        # through the simple protocol: parse it first, so it is known to be one statement.
        base = cast(Any, super())._copy_out

        async def run() -> tuple[str, str | None]:
            status: str = await base(copy_stmt, output, timeout)
            return status, status

        try:
            await cast(Any, self)._get_statement(copy_stmt, timeout, use_cache=False)
        except asyncpg.PostgresSyntaxError as exc:
            raise refused(f"a COPY must be one statement ({exc})") from exc
        return await self._guarded(copy_stmt, run)


async def _nothing() -> tuple[None, str | None]:
    return None, ""


class _ReadOnlyStatement(_prepared.PreparedStatement):
    """A prepared statement of a :class:`ReadOnlyConnection`: running it is guarded."""

    __slots__ = ()

    def _conn(self) -> ReadOnlyConnection:
        return cast(ReadOnlyConnection, cast(Any, self)._connection)

    def _tag(self) -> str | None:
        # fetchrow/fetchval stop after one row (no tag then): a statement returning rows is a
        # query, never a transaction statement
        return self.get_statusmsg() or ("SELECT" if self.get_attributes() else None)

    async def fetch(self, *args: Any, timeout: float | None = None) -> list[Any]:
        base = super().fetch

        async def run() -> tuple[list[Any], str | None]:
            rows = await base(*args, timeout=timeout)
            return rows, self._tag()

        return await self._conn()._guarded(self.get_query(), run)

    async def fetchrow(self, *args: Any, timeout: float | None = None) -> Any:
        base = super().fetchrow

        async def run() -> tuple[Any, str | None]:
            return await base(*args, timeout=timeout), self._tag()

        return await self._conn()._guarded(self.get_query(), run)

    async def fetchval(self, *args: Any, column: int = 0, timeout: float | None = None) -> Any:
        base = super().fetchval

        async def run() -> tuple[Any, str | None]:
            return await base(*args, column=column, timeout=timeout), self._tag()

        return await self._conn()._guarded(self.get_query(), run)

    async def fetchmany(self, args: Any, *, timeout: float | None = None) -> list[Any]:
        base = super().fetchmany

        async def run() -> tuple[list[Any], str | None]:
            return await base(args, timeout=timeout), None

        return await self._conn()._guarded(self.get_query(), run)

    async def executemany(self, args: Any, *, timeout: float | None = None) -> None:
        base = super().executemany

        async def run() -> tuple[None, str | None]:
            await base(args, timeout=timeout)
            return None, None

        await self._conn()._guarded(self.get_query(), run)

    def cursor(self, *args: Any, prefetch: int | None = None, timeout: float | None = None) -> Any:
        state = cast(Any, self)._state
        return _ReadOnlyCursorFactory(
            self._conn(), self.get_query(), state, args, prefetch, timeout, state.record_class
        )


class _Awaiting:
    """Await an ``__await__`` iterator from inside a coroutine."""

    def __init__(self, iterator: Generator[Any, None, Any]) -> None:
        self._iterator = iterator

    def __await__(self) -> Generator[Any, None, Any]:
        return self._iterator


class _ReadOnlyCursorFactory(_cursor.CursorFactory):
    """A cursor factory whose cursor is checked (a query, in a read-only transaction) before
    its statement runs."""

    __slots__ = ()

    def _conn(self) -> ReadOnlyConnection:
        return cast(ReadOnlyConnection, cast(Any, self)._connection)

    def __aiter__(self) -> Any:
        return _ReadOnlyCursorIterator(self, super().__aiter__())

    def __await__(self) -> Generator[Any, None, Any]:
        return self._open().__await__()

    async def _open(self) -> Any:
        await self._conn()._check_cursor(cast(Any, self)._query)
        cursor = await _refusals_translated(_Awaiting(super().__await__()))
        cursor.__class__ = _ReadOnlyCursor
        return cursor


class _ReadOnlyCursorIterator:
    def __init__(self, factory: _ReadOnlyCursorFactory, inner: Any) -> None:
        self._factory = factory
        self._inner = inner
        self._checked = False

    def __aiter__(self) -> _ReadOnlyCursorIterator:
        return self

    async def __anext__(self) -> Any:
        if not self._checked:
            await self._factory._conn()._check_cursor(cast(Any, self._factory)._query)
            self._checked = True
        return await _refusals_translated(self._inner.__anext__())


class _ReadOnlyCursor(_cursor.Cursor):
    """An asyncpg cursor whose fetches report the server's read-only refusals (a volatile
    function that writes, such as ``nextval``, runs when rows are fetched) as
    :class:`~docstore.errors.ReadOnlyError`, like every other statement of the store."""

    __slots__ = ()

    async def fetch(self, n: int, *, timeout: float | None = None) -> list[Any]:
        return cast(list[Any], await _refusals_translated(super().fetch(n, timeout=timeout)))

    async def fetchrow(self, *, timeout: float | None = None) -> Any:
        return await _refusals_translated(super().fetchrow(timeout=timeout))

    async def forward(self, n: int, *, timeout: float | None = None) -> int:
        return cast(int, await _refusals_translated(super().forward(n, timeout=timeout)))


async def _refusals_translated(work: Awaitable[Any]) -> Any:
    """``await work``, the server's read-only refusals raised as ``ReadOnlyError``."""
    try:
        return await work
    except SERVER_REFUSALS as exc:
        refusal = as_refusal(exc)
        if refusal is None:
            raise
        raise refusal from exc
