"""The hash the streaming validation compares: of a range's binary COPY stream as it left the
legacy database, and of the same rows read back from the target.

Two forms, the same for both sides of a run (:attr:`StageContext.fold_embeddings
<docstore.migrate.context.StageContext>`):

* **raw** — XXH3-128 of every byte of the stream, header to trailer (XXH3, not SHA-256: it
  checks two streams' equality as well for what can go wrong here — corruption, a row missing
  or doubled, not an adversary — at ~6 GB/s instead of ~1 GB/s on the migrator's one thread,
  where SHA-256 took 0.12 s of a 4,133-row run's 0.4 s of CPU);
* **folded** — XXH3-128 of the same stream with each embedding's binary value (3,072 floats,
  12 KB: ~97 % of a row) replaced by its CRC-32C as an 8-byte ``bytea``. The target's
  read-back selects :data:`FOLDED_EMBEDDING` in that column, so it sends
  8 bytes per row instead of 12 KB: the target computes the checksum of the value it *stores*,
  and the 51 MB of a 4,133-row migration (as much as the copy itself moved) no longer travel
  back over the network and through the migrator's one Python thread. Measured on one host
  (``bench/RESULTS.md``): the migrator's CPU 0.03–0.06 s lower, the server's read-back ~30 ms
  cheaper, the wall clock unchanged within the noise. Every other column is still compared
  byte for byte, and the rows' number and order as before.

  What folding gives up: an embedding that differs from the one sent passes only if its
  CRC-32C collides — never for up to 3 flipped bits or a difference confined to 32
  consecutive bits (one float, say), otherwise with probability 2⁻³² per differing row (a
  random difference; the checksum is not meant to resist a forger) — where the raw form
  compared its every byte inside the range's 128-bit hash. CRC-32C is the checksum
  PostgreSQL itself puts on every WAL record. ``Migrator.validate()`` (``docstore validate``)
  still digests every stored byte on both sides.

Folding needs PostgreSQL 18's ``pg_catalog.crc32c(bytea)`` (and EXECUTE on it) on the target
and ``google-crc32c``'s C implementation here (:func:`target_folds`); otherwise the run uses
the raw form.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable
from typing import Protocol

import asyncpg
import xxhash

from docstore.migrate import legacy
from docstore.store import Store

# The binary COPY stream (PostgreSQL's "Binary Format"): an 11-byte signature, int32 flags and
# an int32 header-extension length (then the extension); per row an int16 field count and
# per field an int32 length (-1: NULL) and the value; an int16 -1 trailer.
_HEADER = 19
_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_FOLDED_FIELD = struct.Struct(">iq")  # a field of 8 bytes: int8send of the CRC-32C
EMBEDDING_FIELD = legacy.DOCUMENT_COLUMNS.index("embedding")
# The read-back's embedding column in the folded form (NULL stays NULL).
# pg_catalog's: a crc32c(bytea) of another schema on the search path must not stand in for it.
FOLDED_EMBEDDING = "int8send(pg_catalog.crc32c(vector_send(embedding)))"
# (NULL, not an error, where there is no such function: PostgreSQL < 18)
_TARGET_FOLDS = """
SELECT coalesce(has_function_privilege(to_regprocedure('pg_catalog.crc32c(bytea)'), 'EXECUTE'),
                false)
   AND to_regprocedure('vector_send(vector)') IS NOT NULL
"""


class StreamDigest(Protocol):
    """What the copy feeds a range's stream to and the verifier its read-back."""

    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


def _c_crc32c() -> Callable[[bytes], int] | None:
    """google-crc32c's ``value`` when its C implementation loaded (its pure-Python fallback,
    ~1,000× slower, would make folding far costlier than shipping the bytes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "using a pure python implementation"
        try:
            import google_crc32c
        except ImportError:
            return None
    return google_crc32c.value if google_crc32c.implementation == "c" else None


_CRC32C = _c_crc32c()


async def target_folds(conn: asyncpg.Connection | Store) -> bool:
    """Whether a run into this target can use the folded form: the target has
    ``pg_catalog.crc32c(bytea)`` (PostgreSQL 18) with EXECUTE on it and pgvector's
    ``vector_send`` on its search path, and the C CRC-32C loaded here."""
    return _CRC32C is not None and bool(await conn.fetchval(_TARGET_FOLDS))


def sent_digest(folded: bool) -> StreamDigest:
    """The digest of one range's stream as it leaves the legacy database, in the raw or the
    folded form (see the module docs)."""
    return FoldedDigest() if folded else xxhash.xxh3_128()


def stored_digest() -> StreamDigest:
    """The digest of a range read back from the target: its stream is already in the run's
    form (the folded read-back selects the embeddings' CRC-32C), so it is hashed as it is."""
    return xxhash.xxh3_128()


class FoldedDigest:
    """XXH3-128 of a binary COPY stream of ``documents`` rows whose embedding field is replaced
    by its CRC-32C (:data:`FOLDED_EMBEDDING`'s bytes), fed in pieces cut anywhere.

    The stream is parsed as it passes: a field is handled once all its bytes arrived (the
    incomplete tail of a piece waits for the next); every byte that is not part of a non-NULL
    embedding field goes into the hash unchanged, in order, and each such field (its length
    and value) goes in as the 12 bytes of an 8-byte field holding the value's CRC-32C."""

    def __init__(self, fold_field: int = EMBEDDING_FIELD) -> None:
        if _CRC32C is None:
            raise RuntimeError("folding needs google-crc32c's C implementation")
        self._crc = _CRC32C
        self._hash = xxhash.xxh3_128()
        self._fold_field = fold_field
        self._rest = b""  # the start of a field (or header, or count) not complete yet
        self._in_header = True
        self._fields_left = 0  # of the current row
        self._field = 0  # index of the current row's next field
        self._ended = False  # the trailer was read: anything after it is hashed as it is

    def update(self, data: bytes, /) -> None:
        buf = self._rest + data if self._rest else bytes(data)
        end, pos = len(buf), 0
        if self._in_header:
            if end < _HEADER or end < (pos := _HEADER + _INT32.unpack_from(buf, 15)[0]):
                self._rest = buf
                return
            self._in_header = False
        view, hashed = memoryview(buf), 0
        left, field = self._fields_left, self._field
        while not self._ended:
            if left == 0:  # a row's field count, or the trailer
                if pos + 2 > end:
                    break
                left, field = _INT16.unpack_from(buf, pos)[0], 0
                pos += 2
                self._ended = left < 0
                continue
            if pos + 4 > end:
                break
            size = _INT32.unpack_from(buf, pos)[0]
            stop = pos + 4 + max(size, 0)
            if stop > end:
                break
            if field == self._fold_field and size >= 0:
                self._hash.update(view[hashed:pos])
                self._hash.update(_FOLDED_FIELD.pack(8, self._crc(buf[pos + 4 : stop])))
                hashed = stop
            pos, field, left = stop, field + 1, left - 1
        if self._ended:
            pos = end  # nothing follows a trailer; if something does, it is hashed as it is
        self._hash.update(view[hashed:pos])
        self._fields_left, self._field = max(left, 0), field
        self._rest = buf[pos:]

    def digest(self) -> bytes:
        """The hash of the stream so far (an incomplete last field counted as raw bytes, so a
        truncated stream never equals a whole one)."""
        if not self._rest:
            return self._hash.digest()
        partial = self._hash.copy()
        partial.update(self._rest)
        return partial.digest()
