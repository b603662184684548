"""Read-only stores: what keeps writes out, on the client and on the server.

A store opened with ``READ_ONLY=true`` or ``connect(read_only=True)`` refuses docstore's write
APIs in Python (:meth:`~docstore.db.Database.ensure_writable`). Raw SQL needs more: the session
setting ``default_transaction_read_only = on`` that the store's connections start with is
only a default, and SQL can undo it (``SET TRANSACTION READ WRITE``, ``BEGIN READ WRITE; …``
in one string, ``SET default_transaction_read_only = off``, a ``DO`` block that commits).

**The client guarantee** — :class:`ReadOnlyConnection`, the connection class of a read-only
store's pools. Every statement sent through asyncpg's public API on it (``execute``,
``fetch…``, ``executemany``, prepared statements, cursors, ``copy_…``, transactions) runs

1. as **one** statement through the extended protocol (``execute()`` without arguments would
   otherwise use the simple protocol, which runs ``"COMMIT; BEGIN READ WRITE; INSERT …"``), and
2. inside a transaction PostgreSQL itself holds read-only: ``BEGIN READ ONLY`` followed at
   once by a snapshot-taking ``SELECT 1`` (one round trip), because PostgreSQL refuses to
   switch a transaction to read-write after its first snapshot or inside a subtransaction, and
   a ``DO`` block or procedure cannot commit inside a transaction block.

Outside a transaction, a plain read (``SELECT``, ``WITH``, ``VALUES``, ``TABLE``, ``SHOW``,
``EXPLAIN``: statements that cannot commit, see :func:`leading_keyword`) runs without that
wrapping, as one implicit transaction, when the server reports (PostgreSQL ≥ 14 sends
``default_transaction_read_only`` to the client whenever it changes) that the session default
is still ``on``; anything else is wrapped in ``BEGIN READ ONLY; SELECT 1`` … ``COMMIT``. After
a statement whose command tag says it ended or began a transaction (``COMMIT AND CHAIN``, …),
the guard checks the transaction again; a statement that turns the session default off is
answered with :class:`~docstore.errors.ReadOnlyError` and the default is turned back on.
``copy_to_table`` / ``copy_records_to_table`` are refused before anything is sent.

Its limits: code that reaches past asyncpg's public API (private attributes, calling
``asyncpg.Connection`` methods unbound, a connection of its own) is not guarded; functions
that open their own connections (``dblink``) are outside any transaction's read-only flag;
before PostgreSQL 16 ``RESET transaction_read_only`` inside one statement (a ``DO`` block)
could turn a read-only transaction read-write, so :meth:`~docstore.db.Database.health` reports
the client guarantee only on PostgreSQL 16 and later.

**The server guarantee** — a login role that cannot write (:func:`create_reader_role`), checked
by :func:`write_capabilities`; or a hot standby, which refuses every write.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import logging
import os
import re
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Literal, TypeVar, cast

import asyncpg
from asyncpg import cursor as _cursor
from asyncpg import prepared_stmt as _prepared

from docstore.errors import ConfigurationError, ReadOnlyError, SchemaError, ValidationError

logger = logging.getLogger("docstore")

T = TypeVar("T")

Guarantee = Literal["none", "client", "role", "standby"]

DOCSTORE_TABLES = (
    "documents",
    "document_sources",
    "docstore_schema_version",
    "docstore_migration_checkpoints",
    "source_population_jobs",
    "docstore_search_calibration",
    "docstore_search_queries",
)
"""docstore's tables: a reader role may read them and must not be able to write any."""

# Statements that cannot commit, begin or end a transaction, so one of them may run on its
# own (an implicit transaction under the session's read-only default). CALL and DO can commit
# outside a transaction block; every other statement that can is a transaction statement.
READ_KEYWORDS = frozenset({"select", "with", "values", "table", "show", "explain"})

# After a statement with one of these command tags the transaction may be a new one (COMMIT
# AND CHAIN) or may have been changed (RESET before PostgreSQL 16): check it again.
_TRANSACTION_TAG_PREFIXES = ("BEGIN", "START", "COMMIT", "ROLLBACK", "PREPARE", "RESET")

_BEGIN_READ_ONLY = "BEGIN READ ONLY; SELECT 1"
_PROBE = "SELECT pg_catalog.current_setting('transaction_read_only')"  # no search_path games
_RESTORE = "SET default_transaction_read_only = on"

# Exact statements asyncpg itself sends (Transaction, Connection._reset): one statement each,
# run as asyncpg would run them (simple protocol).
_ASYNCPG_STATEMENTS = frozenset({"COMMIT;", "ROLLBACK;", "COMMIT", "ROLLBACK"})
_SAVEPOINT_RE = re.compile(
    r"(?:SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO) __asyncpg_savepoint_\d+__;"
)
# BEGIN / START TRANSACTION with its modes, as asyncpg's Transaction.start() writes it (and as
# people type it): started here as BEGIN … READ ONLY plus its snapshot, in one round trip.
_ISOLATION = r"READ\s+COMMITTED|READ\s+UNCOMMITTED|REPEATABLE\s+READ|SERIALIZABLE"
_MODE = rf"ISOLATION\s+LEVEL\s+(?:{_ISOLATION})|READ\s+ONLY|READ\s+WRITE|(?:NOT\s+)?DEFERRABLE"
_BEGIN_RE = re.compile(
    rf"\s*(?:BEGIN(?:\s+(?:TRANSACTION|WORK))?|START\s+TRANSACTION)"
    rf"(?P<modes>(?:(?:\s*,\s*|\s+)(?:{_MODE}))*)\s*;?\s*",
    re.IGNORECASE | re.ASCII,
)
_MODE_RE = re.compile(_MODE, re.IGNORECASE | re.ASCII)
# A string of nothing but SET LOCAL name = plain-value statements (docstore's search settings):
# no quotes, comments or other statements can hide in it, so it may use the simple protocol.
_SET_LOCAL = (
    r"SET\s+LOCAL\s+[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?"
    r"\s*(?:=|\s+TO\s)\s*-?[A-Za-z0-9_.]+"
)
_SET_LOCALS_RE = re.compile(
    rf"\s*{_SET_LOCAL}(?:\s*;\s*{_SET_LOCAL})*\s*;?\s*", re.IGNORECASE | re.ASCII
)
_SPACE = " \t\n\r\f\v"
_WORD_RE = re.compile(r"[A-Za-z]+")


def leading_keyword(sql: str) -> str | None:
    """The first keyword of ``sql`` in lower case, past whitespace, ``--`` and (nested)
    ``/* */`` comments and opening parentheses, as PostgreSQL's lexer reads them; None when
    the statement does not start with a plain keyword (a quoted name, an unclosed comment...).

    The guard only trusts the answer to let a statement skip its ``BEGIN READ ONLY`` wrapper,
    so anything it cannot read is treated as a statement that might write.
    """
    i, n = 0, len(sql)
    while i < n:
        if sql[i] in _SPACE or sql[i] == "(":
            i += 1
        elif sql.startswith("--", i):
            while i < n and sql[i] not in "\r\n":
                i += 1
        elif sql.startswith("/*", i):
            depth, i = 1, i + 2
            while depth and i < n:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            if depth:
                return None
        else:
            break
    match = _WORD_RE.match(sql, i)
    if match is None:
        return None
    end = match.end()
    if end < n and (sql[end].isalnum() or sql[end] in "_$" or ord(sql[end]) >= 0x80):
        return None  # an identifier such as select_x: not a keyword
    return match.group().lower()


_CACHEABLE = 4096  # characters: docstore's own statements are shorter, and few


@functools.lru_cache(maxsize=512)
def _cached_keyword(sql: str) -> str | None:
    return leading_keyword(sql)


def _leading_keyword(sql: str) -> str | None:
    return _cached_keyword(sql) if len(sql) <= _CACHEABLE else leading_keyword(sql)


Classified = tuple[Literal["simple", "begin", "statement"], str]


def _classify(sql: str) -> Classified:
    """How ``execute(sql)`` without arguments runs: ``("simple", sql)`` one of asyncpg's own
    statements or plain ``SET LOCAL``s, ``("begin", "BEGIN … READ ONLY")`` (``""``: it asked
    for READ WRITE), ``("statement", sql)`` one statement, guarded."""
    if sql in _ASYNCPG_STATEMENTS or _SAVEPOINT_RE.fullmatch(sql):
        return "simple", sql
    if _SET_LOCALS_RE.fullmatch(sql) and "read_only" not in sql.lower():
        return "simple", sql
    begin = _BEGIN_RE.fullmatch(sql)
    if begin is None:
        return "statement", sql
    modes = [" ".join(m.upper().split()) for m in _MODE_RE.findall(begin["modes"])]
    if "READ WRITE" in modes:
        return "begin", ""
    start = "BEGIN"
    for mode in modes:
        if mode.startswith("ISOLATION"):
            start = "BEGIN " + mode  # the last one, as PostgreSQL takes it
    return "begin", start + " READ ONLY" + (" DEFERRABLE" if "DEFERRABLE" in modes else "")


_classify_cached = functools.lru_cache(maxsize=512)(_classify)


def _refused(what: str) -> ReadOnlyError:
    return ReadOnlyError(f"this store is read-only: {what}")


_SERVER_REFUSALS = (
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.ActiveSQLTransactionError,
    asyncpg.InvalidTransactionTerminationError,
)


def _as_refusal(exc: BaseException) -> ReadOnlyError | None:
    """The server's read-only refusal ``exc`` as a :class:`ReadOnlyError` (None: not one)."""
    if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
        return _refused(f"the database refused a write ({exc})")
    if isinstance(exc, asyncpg.ActiveSQLTransactionError) and "read-write" in str(exc):
        return _refused(f"a transaction cannot be made read-write ({exc})")
    if isinstance(exc, asyncpg.InvalidTransactionTerminationError):
        return _refused(
            f"a procedure or DO block cannot commit inside its read-only transaction ({exc})"
        )
    return None


Run = Callable[[], Awaitable[tuple[T, str | None]]]


class ReadOnlyConnection(asyncpg.Connection):
    """The asyncpg connection of a read-only store: no statement sent through its public API
    runs outside a read-only transaction (see the module's documentation).

    Reads work as on any connection — ``fetch``, ``transaction()`` (always ``READ ONLY``),
    cursors, prepared statements, ``copy_from_query`` — with three differences: ``execute()``
    runs one statement per call (a string of several is refused with
    :class:`~docstore.errors.ReadOnlyError`), ``copy_to_table`` and ``copy_records_to_table``
    are refused, and a cursor must be a query (``SELECT``, ``WITH``, ``VALUES``, ``TABLE``,
    ``SHOW`` or ``EXPLAIN``).
    """

    __slots__ = ("_ro_checked",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # True while the open transaction is known to be read-only with its snapshot taken.
        self._ro_checked = False

    # -- the guard ---------------------------------------------------------------------------
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
        read-only transaction; the server's read-only refusals come out as ReadOnlyError."""
        try:
            return await self._guard(query, run)
        except _SERVER_REFUSALS as exc:
            refusal = _as_refusal(exc)
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
            if default != "on" or _leading_keyword(query) not in READ_KEYWORDS:
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
            raise _refused(
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
        raise _refused(
            "default_transaction_read_only cannot be turned off (docstore turned it back on)"
        )

    async def _passthrough(self, sql: str, timeout: float | None) -> str:
        """One of asyncpg's own statements, or a string of plain ``SET LOCAL`` statements."""
        cast(Any, self)._check_open()
        try:
            if self.is_in_transaction() and not sql.startswith("ROLLBACK"):
                await self._check_transaction()
            status = await self._simple(sql, timeout)
        except _SERVER_REFUSALS as exc:
            refusal = _as_refusal(exc)
            if refusal is None:
                raise
            raise refusal from exc
        if not self.is_in_transaction():
            self._ro_checked = False
        await self._check_session_default()
        return status

    async def _begin(self, sql: str, timeout: float | None) -> str:
        if not sql:
            raise _refused("its transactions are READ ONLY (BEGIN … READ WRITE was not sent)")
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

    # -- asyncpg's query surface ---------------------------------------------------------------
    async def execute(self, query: str, *args: object, timeout: float | None = None) -> str:
        """As :meth:`asyncpg.Connection.execute`, one statement per call, read-only."""
        if not args:
            if query == self.get_reset_query():
                return await self._passthrough(query, timeout)
            kind, sql = _classify_cached(query) if len(query) <= _CACHEABLE else _classify(query)
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
            raise _refused(
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
            raise _refused(
                "a cursor must be a query (SELECT, WITH, VALUES, TABLE, SHOW or EXPLAIN)"
            )

    async def copy_to_table(self, table_name: str, **kwargs: Any) -> str:
        """Refused: COPY … FROM writes."""
        raise _refused(f"copy_to_table({table_name!r}) writes")

    async def copy_records_to_table(self, table_name: str, **kwargs: Any) -> str:
        """Refused: COPY … FROM writes."""
        raise _refused(f"copy_records_to_table({table_name!r}) writes")

    async def _copy_in(self, copy_stmt: str, source: Any, timeout: float | None) -> str:
        raise _refused("COPY … FROM writes")

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
            raise _refused(f"a COPY must be one statement ({exc})") from exc
        return await self._guarded(copy_stmt, run)


async def _nothing() -> tuple[None, str | None]:
    return None, ""


def _begins(tag: str | None) -> bool:
    return tag is not None and tag.split(" ", 1)[0] in ("BEGIN", "START")


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
        return await _Awaiting(super().__await__())


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
        return await self._inner.__anext__()


# --------------------------------------------------------------------------------------------
# The server's guarantee: a role that cannot write


_CAPABILITIES = """
WITH base AS (SELECT oid FROM pg_roles WHERE rolname = coalesce($1, session_user)),
roles AS (SELECT r.oid, r.rolname, r.rolsuper FROM pg_roles r, base
           WHERE pg_has_role(base.oid, r.oid, 'MEMBER')),
tables AS (SELECT name, to_regclass(name) AS rel FROM unnest($2::text[]) AS t(name)),
ns AS (SELECT coalesce((SELECT relnamespace FROM pg_class WHERE oid = to_regclass('documents')),
                       (SELECT oid FROM pg_namespace WHERE nspname = current_schema())) AS oid)
SELECT r.rolname, 'is a superuser' AS what FROM roles r WHERE r.rolsuper
UNION ALL
SELECT r.rolname, 'may write to ' || t.name FROM roles r, tables t
 WHERE t.rel IS NOT NULL
   AND has_table_privilege(r.oid, t.rel, 'INSERT, UPDATE, DELETE, TRUNCATE, TRIGGER')
UNION ALL
SELECT r.rolname, 'may create objects in schema ' || n.nspname
  FROM roles r, ns JOIN pg_namespace n ON n.oid = ns.oid
 WHERE has_schema_privilege(r.oid, ns.oid, 'CREATE')
UNION ALL
SELECT r.rolname, 'may create schemas in database ' || current_database() FROM roles r
 WHERE has_database_privilege(r.oid, current_database(), 'CREATE')
UNION ALL
SELECT r.rolname, 'may use sequence ' || c.relname FROM roles r, ns
  JOIN pg_class c ON c.relnamespace = ns.oid AND c.relkind = 'S'
 WHERE has_sequence_privilege(r.oid, c.oid, 'USAGE, UPDATE')
UNION ALL
SELECT r.rolname, 'may run SECURITY DEFINER function ' || p.proname FROM roles r, ns
  JOIN pg_proc p ON p.pronamespace = ns.oid AND p.prosecdef
 WHERE has_function_privilege(r.oid, p.oid, 'EXECUTE')
 ORDER BY 1, 2
"""


async def write_capabilities(conn: asyncpg.Connection, role: str | None = None) -> list[str]:
    """How ``role`` (default: the session's user) could write to docstore's database, through
    itself or a role it is a member of (``SET ROLE``): superuser, write privileges on
    docstore's tables, ``CREATE`` on docstore's schema or the database, sequences, SECURITY
    DEFINER functions. ``[]``: the server refuses its writes (temporary tables and large
    objects aside, which any role may create outside a read-only transaction).
    """
    rows = await conn.fetch(_CAPABILITIES, role, list(DOCSTORE_TABLES))
    return [f"role {r['rolname']} {r['what']}" for r in rows]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def scram_verifier(password: str, *, iterations: int = 4096, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (printable ASCII), so a
    password can be set without its text reaching the server or its logs."""
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


async def create_reader_role(conn: asyncpg.Connection, name: str, password: str) -> None:
    """Create (or, if it exists and cannot write, update) the login role ``name`` that may read
    docstore's tables and write nothing: the server-side read-only guarantee.

    Grants ``CONNECT`` on the database, ``USAGE`` on docstore's schema, ``SELECT`` on
    docstore's tables, ``EXECUTE`` on the schema's functions, and default privileges so tables
    the connected role creates in that schema later are readable too. The role also gets
    ``default_transaction_read_only = on``. A printable-ASCII password is sent as a
    SCRAM-SHA-256 verifier, never as text.

    Run it connected as the role that owns docstore's tables (it needs to grant on them and
    to create roles). Raises :class:`SchemaError` when docstore's schema is not applied,
    :class:`ConfigurationError` when the role would still be able to write (an existing
    writer, or grants to ``PUBLIC``: nothing is changed then), :class:`ValidationError` for an
    unusable name or password.
    """
    if not name or len(name.encode()) > 63 or "\x00" in name:
        raise ValidationError("a role name is 1 to 63 bytes", field="name")
    if not password or "\x00" in password:
        raise ValidationError("the reader role needs a password", field="password")
    schema: str | None = await conn.fetchval(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = to_regclass('documents')"
    )
    if schema is None:
        raise SchemaError("docstore's schema is not applied here: run `docstore init` first")
    if all(32 <= ord(c) < 127 for c in password):
        secret = "'" + scram_verifier(password) + "'"
    else:  # SASLprep would apply: let the server hash it
        secret = str(await conn.fetchval("SELECT quote_literal($1)", password))
    role, s = _ident(name), _ident(schema)
    database = _ident(str(await conn.fetchval("SELECT current_database()")))
    tables = [
        r["name"]
        for r in await conn.fetch(
            "SELECT name FROM unnest($1::text[]) AS t(name) WHERE to_regclass(name) IS NOT NULL",
            list(DOCSTORE_TABLES),
        )
    ]
    async with conn.transaction():
        if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name):
            if await write_capabilities(conn, name):
                raise ConfigurationError(
                    f"role {name} exists and can write: pick another name for the reader role"
                )
            await conn.execute(f"ALTER ROLE {role} WITH LOGIN PASSWORD {secret}")
        else:
            await conn.execute(
                f"CREATE ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
                f" NOREPLICATION NOBYPASSRLS PASSWORD {secret}"
            )
        await conn.execute(f"ALTER ROLE {role} SET default_transaction_read_only = on")
        await conn.execute(f"GRANT CONNECT ON DATABASE {database} TO {role}")
        await conn.execute(f"GRANT USAGE ON SCHEMA {s} TO {role}")
        await conn.execute(
            f"GRANT SELECT ON {', '.join(f'{s}.{_ident(t)}' for t in tables)} TO {role}"
        )
        await conn.execute(f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {s} TO {role}")
        await conn.execute(
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT ON TABLES TO {role}"
        )
        problems = await write_capabilities(conn, name)
        if problems:
            raise ConfigurationError(
                f"role {name} would still be able to write ({'; '.join(problems)}): revoke "
                "those privileges (from PUBLIC too) and try again"
            )
    logger.info("reader role %s can read docstore's tables in schema %s", name, schema)


__all__ = [
    "DOCSTORE_TABLES",
    "READ_KEYWORDS",
    "Guarantee",
    "ReadOnlyConnection",
    "create_reader_role",
    "leading_keyword",
    "scram_verifier",
    "write_capabilities",
]
