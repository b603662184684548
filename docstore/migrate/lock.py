"""The migration lock: one PostgreSQL advisory lock on the target, held by a migration, its
repairs and a rollback, so no two of them ever write the same target at once.

A connection cut on the client's side only (a middlebox resetting it, a client-side network
failure) leaves its server session behind, holding the lock — and, mid-chunk, the chunk's
uncommitted rows, which block a second insert of the same keys — until the server notices the
peer is gone (TCP keepalive: two hours by default). :class:`Orphans` marks the sessions that
hold either (the lock's connection and the copy streams' target connections) while they work,
and ends the marked sessions a ``run()`` call's earlier attempts lost before the next attempt
takes the lock. The other connections of a run (preflight, the streaming verification's
readers, ANALYZE) hold neither, and an orphaned one finishes its statement and is idle.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from docstore.core import tcp
from docstore.errors import MigrationError, QueryError
from docstore.failures import is_closed
from docstore.migrate.context import cancelling
from docstore.transient import describe

logger = logging.getLogger("docstore")

# "docstore migrate" in the advisory-lock key space.
MIGRATION_LOCK_KEY = 0x646F6373_6D696772 & 0x7FFFFFFFFFFFFFFF


# The session holding the lock in this database (what pg_stat_activity shows this role of
# it): pg_locks lists the whole server's, and an advisory lock belongs to one database — a
# migration into another database on the same server is not one into this target.
_HOLDER = """
SELECT a.pid, a.application_name, a.state, a.backend_start, a.state_change
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.classid::bigint = ($1::bigint >> 32) AND l.objid::bigint = ($1::bigint & 4294967295)
   AND l.objsubid = 1
 LIMIT 1
"""


def _holder(row: asyncpg.Record) -> str:
    """The lock holder named for an operator: a session of a migrator whose connection was
    cut can hold it until the server notices the connection is gone."""
    since = (
        f", connected {row['backend_start']:%Y-%m-%d %H:%M:%S %Z}" if row["backend_start"] else ""
    )
    state = f", {row['state']} since {row['state_change']:%H:%M:%S}" if row["state_change"] else ""
    name = f" {row['application_name']!r}" if row["application_name"] else ""
    return (
        f" by server process {row['pid']}{name}{since}{state}; if that is a migrator whose"
        f" connection was cut, SELECT pg_terminate_backend({row['pid']}) releases it"
    )


# A marked session holds a shared advisory lock on (MARK_KEY, the call's token), the two-int4
# form (objsubid 2; the migration lock's bigint form is objsubid 1). The pools' reset on
# release (pg_advisory_unlock_all) drops it, and a connection whose reset fails is closed: a
# session still holding the mark at the next attempt is one whose connection was lost and
# that the server kept. A reused pid or a pooled connection gone on to other work cannot hold
# it. (Session advisory locks, the migration lock included, need a direct connection or
# session pooling: a transaction-pooling PgBouncer is not supported.)
MARK_KEY = 0x646F6373  # "docs"
_MARK = "SELECT pg_try_advisory_lock_shared($1::int, $2::int)"
# pg_terminate_backend waits up to $3 ms for each to exit.
_END = """
SELECT l.pid, pg_terminate_backend(l.pid, $3) AS ended
  FROM pg_locks l
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
   AND l.classid = $1::int::oid AND l.objid = $2::int::oid AND l.pid <> pg_backend_pid()
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
END_WAIT_MS = 5000


class Orphans:
    """Marks the lock's and the copy streams' target sessions of one ``run()`` call, and ends
    those its earlier attempts lost (see the module docs)."""

    def __init__(self) -> None:
        self.token = secrets.randbelow(2**31 - 1) + 1
        self._marked = False

    async def mark(self, conn: asyncpg.Connection) -> None:
        """Mark ``conn``'s session as this call's, and ask the server to end it after
        ``DOCSTORE_TCP_TIMEOUT`` of silence from a vanished client
        (:func:`docstore.core.tcp.mirror_on_server`): it holds the lock or a chunk's rows.
        ``conn`` is a pooled connection, whose reset unmarks and resets it when it is
        released (no statement to undo it that a connection hanging after a network cut
        could hold up)."""
        await conn.fetchval(_MARK, MARK_KEY, self.token)
        await tcp.mirror_on_server(conn)
        self._marked = True

    async def end(self, conn: asyncpg.Connection) -> list[int]:
        """End the marked sessions earlier attempts lost that still live (the same role may
        end its own sessions); the pids ended. One that did not exit within
        :data:`END_WAIT_MS` is logged (the lock error then names it); a failure of the
        statement is logged and ends nothing."""
        if not self._marked:
            return []
        try:
            rows = await conn.fetch(_END, MARK_KEY, self.token, END_WAIT_MS)
        except (asyncpg.PostgresError, QueryError) as exc:
            logger.warning("migration: could not end the lost sessions (%s)", describe(exc))
            return []
        for row in rows:
            logger.warning(
                "migration: the session of a lost connection (server process %d) %s",
                row["pid"],
                "was ended" if row["ended"] else "could not be ended",
            )
        return [row["pid"] for row in rows if row["ended"]]


async def holder(conn: asyncpg.Connection | Any) -> str | None:
    """Who holds the migration lock on ``conn``'s database (a running migration or rollback,
    named as :func:`migration_lock` names it), or None. Reads ``pg_locks`` only: takes no
    lock, works on a read-only store (``conn``: a connection or a store)."""
    row = await conn.fetchrow(_HOLDER, MIGRATION_LOCK_KEY)
    return None if row is None else _holder(row)


async def refuse_while_running(conn: asyncpg.Connection | Any, what: str) -> None:
    """Raise :class:`MigrationError` while a migration or rollback holds the lock: ``what``
    (validation, say) would read a target it is half-way through writing."""
    if (held := await holder(conn)) is not None:
        raise MigrationError(
            "a docstore migration or rollback is running against this target (its lock is"
            f" held{held}); {what} after it ends"
        )


@contextlib.asynccontextmanager
async def migration_lock(
    tgt: asyncpg.Connection, orphans: Orphans | None = None
) -> AsyncIterator[None]:
    """The migration's advisory lock on the target, for the duration of the block. A
    connection closed meanwhile (a COPY cancelled on it) released it with its session.

    ``orphans``: the sessions earlier attempts lost are ended first, and ``tgt``'s is marked.
    """
    if orphans is not None:
        await orphans.end(tgt)
        await orphans.mark(tgt)
    if not await tgt.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_KEY):
        holder = await tgt.fetchrow(_HOLDER, MIGRATION_LOCK_KEY)
        raise MigrationError(
            "another docstore migrator is running against this target (advisory lock held"
            + (_holder(holder) if holder is not None else "")
            + "); wait for it or stop it first"
        )
    try:
        yield
    finally:
        if not is_closed(tgt):
            try:
                await tgt.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
            except Exception as exc:
                # the connection broke after the work was done (and committed): ending the
                # session releases the lock, and the work's outcome stands
                logger.info(
                    "migration lock: unlocking failed (%s): closing its session", describe(exc)
                )
                tgt.terminate()
            except BaseException:
                if not cancelling():
                    raise
                tgt.terminate()  # cancelled: ending the session releases the lock
