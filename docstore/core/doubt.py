"""Work whose connection broke while it ran: was it applied, and may it run again?

A connection that breaks after a statement was sent (a reset, a failover, a server restart)
leaves the statement *in doubt*: the server may have run it, and committed it, before the
reply was lost. Running it again blindly would apply a write twice (an ``INSERT ...
RETURNING`` through ``store.fetchval``, a counted ``DELETE``, a transaction that reports what
it changed); never running it again would fail every read a failover interrupts. docstore
settles the doubt with the server instead of guessing:

- :func:`read_only_replay` — plain work (``store.run``, ``fetch*``, ``execute``) runs again on
  a fresh connection with ``default_transaction_read_only`` on: a read gives its answer, and
  anything that would write is refused by the server (SQLSTATE 25006) before it changes a
  row — the caller then gets :class:`DatabaseUnavailableError` saying the first attempt may
  have been applied.
- :class:`CommitMarker` — a transaction (``run_in_transaction``) reads its transaction id just
  before ``COMMIT`` (``txid_current_if_assigned()``: NULL when it wrote nothing). Broken before
  ``COMMIT`` was sent, it rolled back: run it again. Broken during ``COMMIT``,
  ``txid_status`` on a fresh connection tells whether it committed (raise, saying so: it is
  not run again) or aborted (run it again). On a Citus coordinator the coordinator's own
  transaction id does not speak for the workers' commits, so there the doubt stands.

A failure the server answered (it ended the session: a restart, a failover,
``pg_terminate_backend``; or 40001/40P01) rolled back only the *current* transaction. Work
that may have committed something before it (:meth:`Handoff.committed_earlier`: more than
one statement sent, one string that may commit partway, or the error raised inside a
procedure, ``DO`` block or function, which may run ``COMMIT``) is in doubt too, and settled
the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from docstore.core.pools import STATELESS
from docstore.errors import DatabaseUnavailableError
from docstore.failures import is_closed

T = TypeVar("T")
Work = Callable[[asyncpg.Connection], Awaitable[T]]

MARKER_SQL = "SELECT txid_current_if_assigned()"
STATUS_SQL = "SELECT txid_status($1)"
STATUS_WAIT = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
"""Pauses between asks while the server still reports the transaction ``in progress`` (its
backend has not yet noticed the client is gone)."""


class Handoff:
    """Whether work was handed its connection, and how many statements it sent on it (from
    asyncpg's protocol counter, kept past the connection's death). ``partway``: the work
    sends one string of statements that may commit part of itself (``execute("…; COMMIT;
    …")``, :func:`~docstore.readonly.statements.may_commit_partway`) in one round trip,
    which the counter sees as one."""

    __slots__ = ("handed", "partway", "protocol", "start")

    def __init__(self, partway: bool = False) -> None:
        self.partway = partway
        self.handed = False
        self.protocol: Any = None
        self.start = 0

    def begin(self, conn: Any) -> None:
        """``conn`` is handed to the work: from here on a failure may leave it in doubt."""
        self.handed = True
        self.protocol = getattr(conn, "_protocol", None)
        self.start = self.sent()

    def sent(self) -> int:
        return int(getattr(self.protocol, "queries_count", 0))

    def committed_earlier(self, exc: BaseException) -> bool:
        """Whether work the server stopped with ``exc`` may have committed part of itself
        first: it sent more than one statement (or one string that may commit partway), or
        ``exc`` was raised inside server-side code (its context names a procedure, ``DO``
        block or function)."""
        return self.partway or self.sent() - self.start > 1 or ran_server_code(exc)


def ran_server_code(exc: BaseException) -> bool:
    """The server's error for ``exc`` has a context: it came from inside a procedure, ``DO``
    block or function, which may have committed part of its work (``CALL``/``DO`` with
    transaction control)."""
    return any(
        isinstance(err, asyncpg.PostgresError) and getattr(err, "context", None)
        for err in (exc, exc.__cause__)
    )


def in_doubt_error(where: str, exc: BaseException, *, committed: bool = False) -> Exception:
    """The error for work that was not run again because it may (or did) apply."""
    if committed:
        return DatabaseUnavailableError(
            f"the connection to {where} was lost while the transaction's COMMIT was in"
            " flight; the server committed it, so it was not run again (its result is lost:"
            f" read the data back) ({type(exc).__name__})"
        )
    if getattr(exc, "sqlstate", None) in _CONFLICTS:
        return DatabaseUnavailableError(
            f"the server at {where} stopped the work after part of it may have committed: it"
            f" may or may not have been applied, so it was not run again ({type(exc).__name__})"
        )
    return DatabaseUnavailableError(
        f"the connection to {where} was lost while the statement ran: it may or may not"
        f" have been applied, so it was not run again ({type(exc).__name__})"
    )


_CONFLICTS = frozenset({"40001", "40P01"})  # serialization failure, deadlock: not a lost link


def read_only_replay(work: Work[T], where: str, first: BaseException) -> Work[T]:
    """``work`` as it runs again after ``first`` left it in doubt: with every transaction on
    the connection read-only by default, so a read answers and a write is refused before it
    writes (then :func:`in_doubt_error` for ``first`` is raised).

    Not covered: a statement that asks for a read-write transaction itself (``START
    TRANSACTION READ WRITE``), and what PostgreSQL allows in a read-only transaction
    (``NOTIFY``, ``ANALYZE``, advisory locks): those run again."""

    async def replay(conn: asyncpg.Connection) -> T:
        # the pool's reset (RESET ALL) must run when the connection goes back, even for
        # stateless work: a cancellation may land between SET and RESET
        STATELESS.set(False)
        try:
            await conn.execute("SET default_transaction_read_only = on")
            result = await work(conn)
        except asyncpg.ReadOnlySQLTransactionError:
            raise in_doubt_error(where, first) from first
        finally:
            with contextlib.suppress(asyncpg.InterfaceError, asyncpg.PostgresError, OSError):
                if not is_closed(conn):
                    if conn.is_in_transaction():  # the work left one open: end it first
                        await conn.execute("ROLLBACK")
                    await conn.execute("RESET default_transaction_read_only")
        return result

    return replay


class CommitMarker:
    """What a transaction's attempt had reached when its connection broke (module docstring)."""

    __slots__ = ("committing", "xid")

    def __init__(self) -> None:
        self.committing = False
        self.xid: int | None = None

    def wrap(self, work: Work[T], transaction: dict[str, Any]) -> Work[T]:
        """``work`` inside one transaction that records its id just before committing. A
        ``COMMIT`` that runs out of ``command_timeout`` is in doubt as a lost one is: the
        connection is closed (its backend finishes or aborts the commit) and the caller
        settles it."""

        async def in_tx(conn: asyncpg.Connection) -> T:
            self.committing, self.xid = False, None
            try:
                async with conn.transaction(**transaction):
                    result = await work(conn)
                    self.xid = await conn.fetchval(MARKER_SQL)
                    self.committing = True
            except TimeoutError as exc:
                if not self.committing:
                    raise
                conn.terminate()
                raise asyncpg.ConnectionDoesNotExistError(
                    "connection was closed in the middle of operation (COMMIT timed out)"
                ) from exc
            return result

        return in_tx

    async def settle(
        self,
        ask: Callable[[Work[Any]], Awaitable[Any]],
        where: str,
        exc: BaseException,
        *,
        distributed: bool,
    ) -> None:
        """Return if the broken attempt certainly did not commit (run it again); raise
        :func:`in_doubt_error` if it did, or if that cannot be known. ``ask`` runs a query on
        a fresh connection, retrying transient failures (a lost COMMIT often comes with a
        restart or a failover that refuses the next connections for a moment too)."""
        if not self.committing:
            return  # COMMIT was never sent: the server rolls the transaction back
        if distributed:
            raise in_doubt_error(where, exc) from exc
        if self.xid is None:
            return  # it wrote nothing: nothing to apply twice
        xid = self.xid
        for pause in (*STATUS_WAIT, None):
            try:
                status = await ask(lambda conn: conn.fetchval(STATUS_SQL, xid))
            except Exception:
                raise in_doubt_error(where, exc) from exc
            if status == "aborted":
                return
            if status == "committed":
                raise in_doubt_error(where, exc, committed=True) from exc
            if pause is None or status != "in progress":
                raise in_doubt_error(where, exc) from exc
            await asyncio.sleep(pause)
