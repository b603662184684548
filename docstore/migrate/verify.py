"""Validation that streams with the copy: each copied range is checked against what is stored
on the target while later ranges are still copying.

Two halves, compared per id range ``(first, last]``:

* **what left the legacy database**: the copy's pipe hashes the binary COPY stream of the
  range as it passes — header, every row, trailer — at no extra read of the source
  (:mod:`docstore.migrate.digest`: XXH3-128, each embedding folded to its CRC-32C when the
  target can compute one). The range's ``(id, xmin)`` stamp and its ids are read in the same
  snapshot (:data:`~docstore.migrate.legacy.CHUNK_FACTS`);
* **what the target stores**: once the range's transaction has committed, a
  :class:`StreamVerifier` (its own pooled connection, so it overlaps the next ranges' COPY)
  reads the range back from ``documents`` with ``COPY (SELECT the same columns …) TO STDOUT
  (FORMAT binary)`` through the legacy-id index, in legacy-id order (the embedding as the
  CRC-32C of its stored value when folded: :data:`READ_BACK_FOLDED`), and hashes those bytes
  the same way. In the same snapshot it stamps the rows it read (an md5 of their
  ``(id, xmin)``).

Binary COPY sends each value in its type's binary form (text bytes, the vector's exact float
bits, jsonb's canonical text, int8 microseconds), so equal hashes mean the stored rows are the
streamed rows byte for byte (the embeddings, when folded, by their CRC-32C), same count, same
order. The stamps let validation at the end of the run accept a verified range without reading
it again, as long as neither side changed since (:mod:`docstore.migrate.validate`); anything
else is read again on both sides.

A verifier failure (a lost connection, say) never fails the copy: its ranges stay unverified
and validation reads them again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg

from docstore.errors import DocstoreError
from docstore.migrate import legacy
from docstore.migrate.context import LONG_TIMEOUT, StageContext, now
from docstore.migrate.digest import FOLDED_EMBEDDING, stored_digest
from docstore.store import Store
from docstore.transient import describe

logger = logging.getLogger("docstore")

_SELECTED = (
    "FROM documents WHERE doc_type = $1 AND metadata ? 'legacy_id'"
    " AND metadata->>'legacy_id' = ANY($2::text[])"
    " AND metadata->>'migrated_from' = 'rust_docs_vectors'"
)
_ORDER = "(metadata->>'legacy_id')::bigint, id"
# The range's rows shaped exactly like the copy query's output (legacy.DOCUMENT_COLUMNS).
READ_BACK = f"SELECT {', '.join(legacy.DOCUMENT_COLUMNS)} {_SELECTED} ORDER BY {_ORDER}"
# The same with each embedding as the CRC-32C of its stored binary value (digest's folded form).
READ_BACK_FOLDED = READ_BACK.replace(" embedding,", f" {FOLDED_EMBEDDING},", 1)
# The rows read back, as (id, xmin): validation compares it with state.TARGET_RANGE_STAMPS.
READ_BACK_STAMP = (
    "SELECT count(*) AS rows,"
    f" md5(string_agg(id::text || ':' || xmin::text, ',' ORDER BY {_ORDER})) AS stamp"
    f" {_SELECTED}"
)


@dataclass(frozen=True)
class StreamedRange:
    """A range as it left the legacy database (handed over after its transaction commits)."""

    first: int  # exclusive
    last: int  # inclusive
    rows: int
    legacy_stamp: str  # the checkpoint's stamp, read in the stream's snapshot
    sent: bytes  # the digest of the binary COPY stream (raw or folded: ctx.fold_embeddings)
    ids: list[str]  # its legacy ids, for the read-back's index lookup


@dataclass(frozen=True)
class VerifiedRange:
    """A range whose stored rows were read back and compared with the stream."""

    first: int
    last: int
    rows: int
    legacy_stamp: str
    same: bool  # stored bytes == sent bytes
    target_rows: int
    target_stamp: str  # md5 of the (id, xmin) of the rows read back


def _stop_if_cancelled(exc: BaseException) -> None:
    """Re-raise as a cancellation when the reader was being cancelled: asyncpg may turn a
    cancelled read (or releasing its connection) into another error, and a reader that
    swallowed it would go on serving the queue forever, so that leaving the verifier's block
    (a failed or interrupted copy) never returned."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


class StreamVerifier:
    """Reads back finished ranges on its own target connection while later ones copy.

    ``async with StreamVerifier(ctx, store) as v``: :meth:`submit` each committed range,
    :meth:`drain` to wait for all; :attr:`verified` holds the results by first key. Leaving
    the block (after a failed copy, too) lets each reader finish the range in hand and skips
    the rest: readers are stopped, not cancelled, since cancelling asyncpg half-way through
    taking a pooled connection or a COPY can leave the pool waiting for it forever."""

    def __init__(self, ctx: StageContext, store: Store) -> None:
        self.ctx = ctx
        self.store = store
        self.verified: dict[int, VerifiedRange] = {}
        self.total_rows = 0  # rows to verify, for progress (the copy and delta pass set it)
        self.seconds = 0.0  # time spent reading back (overlapping the copy)
        self.failed: str | None = None
        self._error: BaseException | None = None  # raised by drain(): a progress callback's
        self._done_rows = 0
        self._queue: asyncio.Queue[StreamedRange | None] = asyncio.Queue()  # None: stop
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping: asyncio.Future[list[Any]] | None = None  # set once: stop()

    async def __aenter__(self) -> StreamVerifier:
        # The readers connect while the first chunk copies. As many as there are copy
        # streams: when the streams commit their last chunks together, those are verified
        # side by side instead of one after the other (the run's tail).
        self._tasks = [asyncio.create_task(self._run())] + [
            asyncio.create_task(self._run_extra()) for _ in range(self.ctx.copy_streams - 1)
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop the readers (each finishes the range in hand, the rest stay unverified) and
        give their connections back; nothing may be submitted afterwards. Idempotent."""
        if self._stopping is None:
            for _ in self._tasks:
                self._queue.put_nowait(None)
            self._stopping = asyncio.ensure_future(
                asyncio.gather(*self._tasks, return_exceptions=True)
            )
        # shielded: a caller cancelled while waiting leaves the readers stopping, and the
        # next stop() (leaving the block) waits for the same
        await asyncio.shield(self._stopping)

    def submit(self, streamed: StreamedRange) -> None:
        """Queue a range whose rows (and checkpoint) are committed on the target."""
        self.verified.pop(streamed.first, None)  # a re-copy replaces an earlier result
        self._queue.put_nowait(streamed)

    async def drain(self) -> None:
        """Wait until every submitted range is verified (or given up); re-raises what a
        progress callback raised in the verifier."""
        await self._queue.join()
        if self._error is not None:
            raise self._error

    async def _run_extra(self) -> None:
        """Another reader, if the pool lends a connection soon (otherwise the first reader
        verifies everything alone)."""
        try:
            async with self.store.acquire(timeout=5) as conn:
                await self._serve(conn)
        except (DocstoreError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            _stop_if_cancelled(exc)
            logger.info("one streaming verification reader fewer: %s", self._describe(exc))

    def _describe(self, exc: BaseException) -> str:
        return describe(exc, self.ctx.secrets)

    async def _run(self) -> None:
        served = False  # the stop marker was taken: serving again would wait forever
        try:
            async with self.store.acquire() as conn:
                await self._serve(conn)
                served = True
        except (DocstoreError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            _stop_if_cancelled(exc)
            if served:  # giving the connection back failed, after every range was done
                logger.info(
                    "streaming verification reader: giving its connection back: %s",
                    self._describe(exc),
                )
                return
            # never fails the copy: the ranges stay unverified, validation reads them again
            self.failed = f"{type(exc).__name__}"
            logger.warning(
                "streaming verification stopped (%s): validation re-reads", self._describe(exc)
            )
        if not served:
            await self._serve(None)  # let drain() return: the ranges are done, unverified

    async def _serve(self, conn: asyncpg.Connection | None) -> None:
        """Verify queued ranges until the stop marker (``None``)."""
        while (item := await self._queue.get()) is not None:
            try:
                if conn is not None and self.failed is None and self._stopping is None:
                    await self._verify(conn, item)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                _stop_if_cancelled(exc)
                self.failed = f"{type(exc).__name__}"
                logger.warning(
                    "streaming verification stopped (%s): validation re-reads", self._describe(exc)
                )
            except Exception as exc:  # the progress callback's: the run stops at drain()
                _stop_if_cancelled(exc)
                self.failed = f"{type(exc).__name__}"
                self._error = exc
            finally:
                self._queue.task_done()
        self._queue.task_done()  # the stop marker

    async def _verify(self, conn: asyncpg.Connection, item: StreamedRange) -> None:
        started = now()
        folded = self.ctx.fold_embeddings
        stored = stored_digest()

        async def hash_bytes(data: bytes) -> None:
            stored.update(data)

        # one snapshot: the stamp names exactly the row versions whose bytes were hashed
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await conn.copy_from_query(
                READ_BACK_FOLDED if folded else READ_BACK,
                self.ctx.doc_type,
                item.ids,
                output=hash_bytes,
                format="binary",
                timeout=LONG_TIMEOUT,
            )
            stamp = await conn.fetchrow(READ_BACK_STAMP, self.ctx.doc_type, item.ids)
        assert stamp is not None
        self.verified[item.first] = VerifiedRange(
            first=item.first,
            last=item.last,
            rows=item.rows,
            legacy_stamp=item.legacy_stamp,
            same=stored.digest() == item.sent,
            target_rows=stamp["rows"],
            target_stamp=stamp["stamp"] or "",
        )
        self.seconds += now() - started
        self._done_rows += item.rows
        self.ctx.report("verified", self._done_rows, max(self.total_rows, self._done_rows))
