"""A binary COPY pipe: rows stream from one connection's ``COPY … TO STDOUT`` into another's
``COPY … FROM STDIN`` through a bounded in-memory queue — no files, flat memory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import asyncpg

from docstore.errors import MigrationError

# At most this many COPY data messages (~64 KB each from the server) wait in memory.
QUEUE_DEPTH = 32


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
            await queue.put(None)

    async def stream() -> AsyncIterator[bytes]:
        while (data := await queue.get()) is not None:
            yield data

    producer = asyncio.create_task(produce())
    try:
        status = await target.copy_to_table(
            table, source=stream(), columns=list(columns), format="binary", timeout=timeout
        )
    except asyncio.CancelledError:
        producer.cancel()
        with contextlib.suppress(BaseException):
            await producer
        raise
    except BaseException as exc:
        # The target refused the data: let the source finish its COPY into the void, so the
        # source connection stays usable (the caller may retry the chunk another way).
        while not producer.done() or not queue.empty():
            if await queue.get() is None:
                break
        with contextlib.suppress(BaseException):
            await producer
        # The source failed first (the target then saw a truncated stream, a COPY format
        # error): its error is the cause, the target's is chained to it.
        if not producer.cancelled() and (cause := producer.exception()) is not None:
            raise cause from exc
        raise
    await producer  # re-raises a source-side failure: the rows above may be incomplete
    try:
        return int(status.split()[-1])
    except (ValueError, IndexError):
        raise MigrationError(f"unexpected COPY status {status[:40]!r}") from None
