"""The client guarantee's mechanism: how a statement runs inside a read-only transaction.

:class:`GuardedConnection` is the base of :class:`~docstore.readonly.ReadOnlyConnection`: it
holds the transaction state (is the open transaction known to be read-only, with its
snapshot taken?) and runs each statement it is given through :meth:`~GuardedConnection._guarded`
as :mod:`docstore.readonly` describes — on its own when it is a plain read under the
read-only session default, else between ``BEGIN READ ONLY; SELECT 1`` and ``COMMIT`` — after
refusing what would reach the server's filesystem (:mod:`docstore.readonly.server_files`),
and turns the server's read-only refusals into :class:`~docstore.errors.ReadOnlyError`.
Which of asyncpg's methods go through it is :mod:`docstore.readonly.connection`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import asyncpg

from docstore.errors import ReadOnlyError
from docstore.readonly.roles import file_capabilities
from docstore.readonly.server_files import CODE_KEYWORDS, statement_refusal
from docstore.readonly.statements import READ_KEYWORDS, cached_leading_keyword

logger = logging.getLogger("docstore")

T = TypeVar("T")

# After a statement with one of these command tags the transaction may be a new one (COMMIT
# AND CHAIN) or may have been changed (RESET before PostgreSQL 16): check it again.
_TRANSACTION_TAG_PREFIXES = ("BEGIN", "START", "COMMIT", "ROLLBACK", "PREPARE", "RESET")

_BEGIN_READ_ONLY = "BEGIN READ ONLY; SELECT 1"
_PROBE = "SELECT pg_catalog.current_setting('transaction_read_only')"  # no search_path games
_RESTORE = "SET default_transaction_read_only = on"


def refused(what: str) -> ReadOnlyError:
    """The error a read-only store raises for ``what`` it refused."""
    return ReadOnlyError(f"this store is read-only: {what}")


SERVER_REFUSALS = (
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.ActiveSQLTransactionError,
    asyncpg.InvalidTransactionTerminationError,
)


def as_refusal(exc: BaseException) -> ReadOnlyError | None:
    """The server's read-only refusal ``exc`` as a :class:`ReadOnlyError` (None: not one)."""
    if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
        return refused(f"the database refused a write ({exc})")
    if isinstance(exc, asyncpg.ActiveSQLTransactionError) and "read-write" in str(exc):
        return refused(f"a transaction cannot be made read-write ({exc})")
    if isinstance(exc, asyncpg.InvalidTransactionTerminationError):
        return refused(
            f"a procedure or DO block cannot commit inside its read-only transaction ({exc})"
        )
    return None


Run = Callable[[], Awaitable[tuple[T, str | None]]]


class GuardedConnection(asyncpg.Connection):
    """An asyncpg connection that can run a statement inside a read-only transaction (the
    machinery of :class:`~docstore.readonly.ReadOnlyConnection`, which routes asyncpg's query
    surface through :meth:`_guarded`)."""

    __slots__ = ("_ro_checked", "_ro_file_capabilities")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # True while the open transaction is known to be read-only with its snapshot taken.
        self._ro_checked = False
        # How the session's role could write the server's files (None: not asked yet).
        self._ro_file_capabilities: list[str] | None = None

    async def _simple(self, sql: str, timeout: float | None = None) -> str:
        """``sql`` through the simple protocol, unguarded: only for docstore's and asyncpg's
        own fixed statements."""
        return await asyncpg.Connection.execute(self, sql, timeout=timeout)

    def _session_default(self) -> str | None:
        """``default_transaction_read_only`` as the server last reported it (None before
        PostgreSQL 14, which does not report it)."""
        value: str | None = getattr(self.get_settings(), "default_transaction_read_only", None)
        return value

    async def _guarded(self, query: str, run: Run[T]) -> T:
        """``run()`` (which returns its result and the command tag, None if unknown) inside a
        read-only transaction; the server's read-only refusals come out as ReadOnlyError.
        Statements that would reach the server's filesystem are refused before anything is
        sent (:mod:`docstore.readonly.server_files`)."""
        keyword = cached_leading_keyword(query)
        reason = statement_refusal(query, keyword)
        if reason is not None:
            raise refused(reason)
        if keyword in CODE_KEYWORDS:
            capabilities = await self._file_capabilities()
            if capabilities:
                raise refused(
                    f"{keyword.upper()} runs code the client cannot check, and a read-only "
                    "transaction does not keep this role from writing the server's files "
                    f"({'; '.join(capabilities)}): connect as a reader role to run it"
                )
        try:
            return await self._guard(query, run)
        except SERVER_REFUSALS as exc:
            refusal = as_refusal(exc)
            if refusal is None:
                raise
            raise refusal from exc

    async def _guard(self, query: str, run: Run[T]) -> T:
        # The hot path (a docstore read) runs no coroutine but run(): ~5 us of Python.
        cast(Any, self)._check_open()
        protocol = cast(Any, self)._protocol
        if protocol.is_in_transaction():
            if not self._ro_checked:
                await self._check_transaction()
        else:
            self._ro_checked = False
            default = self._session_default()
            if default == "off":
                await self._restore_session_default()
                default = self._session_default()
            if default != "on" or cached_leading_keyword(query) not in READ_KEYWORDS:
                return await self._wrapped(run)
            # one statement that cannot commit: one implicit transaction, read-only whole
        result, tag = await run()
        if not protocol.is_in_transaction():
            self._ro_checked = False
        elif tag is None or tag.startswith(_TRANSACTION_TAG_PREFIXES):
            self._ro_checked = False
            await self._check_transaction()
        if self._session_default() == "off":
            await self._check_session_default()
        return result

    async def _wrapped(self, run: Run[T]) -> T:
        """``run()`` between ``BEGIN READ ONLY; SELECT 1`` and ``COMMIT``."""
        await self._simple(_BEGIN_READ_ONLY)
        self._ro_checked = True
        try:
            result, tag = await run()
        except BaseException:
            await self._abandon()
            raise
        if self.is_in_transaction() and not _begins(tag):
            await self._simple("COMMIT")
        if not self.is_in_transaction():
            self._ro_checked = False
        # a BEGIN inside the wrapper left it open: the caller's transaction now, checked
        await self._check_session_default()
        return result

    async def _file_capabilities(self) -> list[str]:
        """:func:`~docstore.readonly.file_capabilities` of the session's login role, asked once
        per connection."""
        if self._ro_file_capabilities is None:
            self._ro_file_capabilities = await file_capabilities(self)
        return self._ro_file_capabilities

    async def _check_transaction(self) -> None:
        """Make sure the open transaction is read-only and has its snapshot (the probe takes
        it); roll it back and refuse if it is read-write."""
        if self._ro_checked:
            return
        try:
            value = await asyncpg.Connection.fetchval(self, _PROBE)
        except asyncpg.InFailedSQLTransactionError:
            return  # aborted: the server runs nothing but the ROLLBACK that ends it
        if value != "on":
            await self._abandon()
            raise refused(
                "a read-write transaction was open on one of its connections; it was rolled back"
            )
        self._ro_checked = True

    async def _abandon(self) -> None:
        """Roll back the open transaction, quietly (a broken connection is the pool's
        business: its reset rolls back too)."""
        self._ro_checked = False
        if self.is_closed() or not self.is_in_transaction():
            return
        with contextlib.suppress(Exception):
            await self._simple("ROLLBACK")

    async def _restore_session_default(self) -> None:
        if self._session_default() == "off":
            logger.warning("read-only store: default_transaction_read_only was off; set it on")
            await self._simple(_RESTORE)

    async def _check_session_default(self) -> None:
        if self._session_default() != "off":
            return
        with contextlib.suppress(asyncpg.PostgresError):  # an aborted transaction: next time
            await self._simple(_RESTORE)
        raise refused(
            "default_transaction_read_only cannot be turned off (docstore turned it back on)"
        )

    async def _passthrough(self, sql: str, timeout: float | None) -> str:
        """One of asyncpg's own statements, or a string of plain ``SET LOCAL`` statements."""
        cast(Any, self)._check_open()
        try:
            if self.is_in_transaction() and not sql.startswith("ROLLBACK"):
                await self._check_transaction()
            status = await self._simple(sql, timeout)
        except SERVER_REFUSALS as exc:
            refusal = as_refusal(exc)
            if refusal is None:
                raise
            raise refusal from exc
        if not self.is_in_transaction():
            self._ro_checked = False
        await self._check_session_default()
        return status

    async def _begin(self, sql: str, timeout: float | None) -> str:
        if not sql:
            raise refused("its transactions are READ ONLY (BEGIN … READ WRITE was not sent)")
        cast(Any, self)._check_open()
        try:
            await self._simple(f"{sql}; SELECT 1", timeout)
        except BaseException:
            await self._abandon()
            raise
        self._ro_checked = True
        return "BEGIN"

    async def _bind_execute(
        self, query: str, args: tuple[Any, ...], limit: int, timeout: float | None, **kw: Any
    ) -> tuple[list[Any], str | None]:
        data, status, _ = await cast(Any, self)._execute(
            query, args, limit, timeout, return_status=True, **kw
        )
        # no tag: the portal was suspended after ``limit`` rows, so the statement returns rows
        # (a query, never a transaction statement)
        return data, status.decode() if status else ("SELECT" if data else None)


def _begins(tag: str | None) -> bool:
    return tag is not None and tag.split(" ", 1)[0] in ("BEGIN", "START")
