"""The migration lock: one PostgreSQL advisory lock on the target, held by a migration, its
repairs and a rollback, so no two of them ever write the same target at once."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg

from docstore.errors import MigrationError
from docstore.failures import is_closed
from docstore.migrate.context import cancelling
from docstore.transient import describe

logger = logging.getLogger("docstore")

# "docstore migrate" in the advisory-lock key space.
MIGRATION_LOCK_KEY = 0x646F6373_6D696772 & 0x7FFFFFFFFFFFFFFF


# The session holding the lock (what pg_stat_activity shows this role of it).
_HOLDER = """
SELECT a.pid, a.application_name, a.state, a.backend_start, a.state_change
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted
   AND l.classid::bigint = ($1::bigint >> 32) AND l.objid::bigint = ($1::bigint & 4294967295)
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


@contextlib.asynccontextmanager
async def migration_lock(tgt: asyncpg.Connection) -> AsyncIterator[None]:
    """The migration's advisory lock on the target, for the duration of the block. A
    connection closed meanwhile (a COPY cancelled on it) released it with its session."""
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
