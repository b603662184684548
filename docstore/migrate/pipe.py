"""A binary COPY pipe: rows stream from one connection's ``COPY … TO STDOUT`` into another's
``COPY … FROM STDIN`` through a bounded in-memory queue — no files, flat memory.

**Cancelled mid-stream** (Ctrl-C: the CLI's main task is cancelled), a pipe closes the
connections whose COPY it cut off half-way and re-raises the ``CancelledError``: asyncpg cannot
reliably bring a connection back from a cancelled COPY (the ``ROLLBACK`` after it fails with
"another operation is in progress", or waits), and a closed session is rolled back by the
server — its chunk's rows and checkpoint never committed, its advisory lock released — so a
re-run resumes after the last committed chunk. :func:`transaction` is ``conn.transaction()`` for
the blocks around a pipe: after a cancellation it never replaces the ``CancelledError`` with the
error of rolling back such a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import asyncpg

from docstore.errors import MigrationError
from docstore.failures import is_closed
from docstore.migrate.context import cancelling

# At most this many COPY data messages (~64 KB each from the server) wait in memory.
QUEUE_DEPTH = 32
# How long rolling back a transaction whose block was cancelled may take before its
# connection is closed instead (the server then rolls it back).
CANCELLED_ROLLBACK_TIMEOUT = 5.0


class Digest(Protocol):
    """What :func:`pipe` feeds the bytes it moves to (a ``hashlib`` object)."""

    def update(self, data: bytes, /) -> None: ...


async def pipe(
    source: asyncpg.Connection,
    query: str,
    args: Sequence[Any],
    target: asyncpg.Connection,
    table: str,
    columns: Sequence[str],
    *,
    on_bytes: Callable[[int], None] | None = None,
    digest: Digest | None = None,
    timeout: float | None = None,
) -> int:
    """Copy the rows of ``query`` (run on ``source``) into ``table`` on ``target`` in binary.

    Column types must match exactly (cast in ``query``). Returns the number of rows the
    target accepted. ``digest`` is fed every byte that leaves the source, in order (the
    binary COPY stream, header to trailer), as it passes: a hash of what was sent, at no
    extra read of the source. ``timeout`` bounds the target's COPY (the source side keeps its
    connection's own command timeout). A failure on either side cancels the other and raises
    (the source's error when the source failed: the target's then follows from it, chained);
    the caller's target transaction must then roll back (a truncated binary stream would
    otherwise be accepted by PostgreSQL as a short one).
    """
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=QUEUE_DEPTH)

    async def write(data: bytes) -> None:
        data = bytes(data)
        if digest is not None:
            digest.update(data)
        await queue.put(data)
        if on_bytes is not None:
            on_bytes(len(data))

    async def produce() -> None:
        try:
            await source.copy_from_query(query, *args, output=write, format="binary")
        finally:
            # The end marker (after a failure too: the target sees the stream end and fails on
            # it). Once nobody reads any more (the pipe was cancelled: asyncpg may turn that
            # into another error here), never wait for room in the queue: it stays full.
            if reading:
                await queue.put(None)
            else:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)

    async def stream() -> AsyncIterator[bytes]:
        while (data := await queue.get()) is not None:
            yield data

    reading = True  # the target reads the queue
    producer = asyncio.create_task(produce())
    copying = True  # the target is inside its COPY
    try:
        try:
            status = await target.copy_to_table(
                table, source=stream(), columns=list(columns), format="binary", timeout=timeout
            )
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            copying = False
            # The target refused the data: let the source finish its COPY into the void, so
            # the source connection stays usable (the caller may retry the chunk another way).
            while not producer.done() or not queue.empty():
                if await queue.get() is None:
                    break
            with contextlib.suppress(Exception):
                await producer
            # The source failed first (the target then saw a truncated stream, a COPY format
            # error): its error is the cause, the target's is chained to it.
            if not producer.cancelled() and (cause := producer.exception()) is not None:
                raise cause from exc
            raise
        copying = False
        await producer  # re-raises a source-side failure: the rows above may be incomplete
    except asyncio.CancelledError:
        # Cut off half-way: close what is still inside a COPY (see the module docs).
        reading = False
        if copying:
            target.terminate()
        if not producer.done():
            producer.cancel()
            source.terminate()
        with contextlib.suppress(BaseException):  # a failure of the source is moot now
            await producer  # returns at once: it no longer waits for room in the queue
        raise
    try:
        return int(status.split()[-1])
    except (ValueError, IndexError):
        raise MigrationError(f"unexpected COPY status {status[:40]!r}") from None


@contextlib.asynccontextmanager
async def transaction(conn: asyncpg.Connection, **options: Any) -> AsyncIterator[None]:
    """``conn.transaction(**options)`` around a block that may be cancelled inside a
    :func:`pipe`. When the block was cancelled (it raised ``CancelledError``, or anything while
    its task is being cancelled), a connection the pipe closed is left alone (the server
    rolled back) and a rollback that fails or takes over :data:`CANCELLED_ROLLBACK_TIMEOUT`
    closes the connection instead: what the block raised comes out, never the rollback's
    error. Otherwise as ``async with conn.transaction(**options)``."""
    tx = conn.transaction(**options)
    await tx.start()
    try:
        yield
    except BaseException as exc:
        if not (isinstance(exc, asyncio.CancelledError) or cancelling()):
            await tx.rollback()
            raise
        if not is_closed(conn):
            try:
                async with asyncio.timeout(CANCELLED_ROLLBACK_TIMEOUT):
                    await tx.rollback()
            except BaseException:  # its COPY was cut off, or it was cancelled again
                conn.terminate()
        raise
    await tx.commit()
