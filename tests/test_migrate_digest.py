"""The streaming validation's folded digest (docstore.migrate.digest): pure tests of the stream
parser, then what a run chooses and what the folded check catches, against real databases."""

from __future__ import annotations

import asyncio
import itertools
import struct
import threading
from collections.abc import Iterator, Sequence

import google_crc32c
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

import docstore
from docstore.migrate import Migrator, digest
from docstore.migrate.digest import EMBEDDING_FIELD, FoldedDigest, sent_digest
from tests.conftest import PgCluster
from tests.fuzzing import examples
from tests.legacy_db import legacy_database, legacy_execute

Row = Sequence[bytes | None]


def copy_stream(rows: Sequence[Row], *, folded: bool, extension: bytes = b"") -> bytes:
    """A binary COPY stream of ``rows`` (PostgreSQL's documented format), with each embedding
    field as its 8-byte CRC-32C when ``folded`` (what the target's folded read-back sends)."""
    out = [b"PGCOPY\n\xff\r\n\x00", struct.pack(">ii", 0, len(extension)), extension]
    for row in rows:
        out.append(struct.pack(">h", len(row)))
        for i, value in enumerate(row):
            if value is None:
                out.append(struct.pack(">i", -1))
            elif folded and i == EMBEDDING_FIELD:
                out.append(struct.pack(">iq", 8, google_crc32c.value(value)))
            else:
                out.append(struct.pack(">i", len(value)) + value)
    out.append(struct.pack(">h", -1))
    return b"".join(out)


def document_row(i: int, embedding: bytes | None) -> Row:
    return (
        b"rust",
        b"crate%d" % (i % 3),
        b"path/%d.html" % i,
        b"text \x00\xff of row %d" % i,  # arbitrary bytes: the parser never looks inside
        b"\x01{}",
        embedding,
        None if i % 2 else struct.pack(">i", i),
        struct.pack(">q", i * 1_000_000),
    )


def fold(pieces: Iterator[bytes] | Sequence[bytes]) -> bytes:
    folded = FoldedDigest()
    for piece in pieces:
        folded.update(piece)
    return folded.digest()


def cut(stream: bytes, points: Sequence[int]) -> list[bytes]:
    bounds = [0, *sorted(points), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


ROWS = [document_row(i, None if i == 2 else bytes(range(i, i + 200)) * 61) for i in range(5)]


def test_the_folded_digest_is_the_hash_of_the_folded_stream_wherever_the_stream_is_cut() -> None:
    stream = copy_stream(ROWS, folded=False, extension=b"ext")
    expected = xxhash.xxh3_128(copy_stream(ROWS, folded=True, extension=b"ext")).digest()
    assert fold([stream]) == expected
    for size in (1, 2, 3, 5, 19, 20, 4096, 12_204):  # header, counts, lengths, values split
        assert fold(stream[i : i + size] for i in range(0, len(stream), size)) == expected
    # the raw digest hashes every byte: it differs from the folded one
    raw = sent_digest(False)
    raw.update(stream)
    assert raw.digest() == xxhash.xxh3_128(stream).digest() != expected


@settings(max_examples=examples(60), deadline=None)
@given(
    embeddings=st.lists(st.one_of(st.none(), st.binary(min_size=0, max_size=300)), max_size=6),
    points=st.lists(st.integers(min_value=0, max_value=4000), max_size=8),
)
def test_any_rows_cut_anywhere_fold_alike(
    embeddings: list[bytes | None], points: list[int]
) -> None:
    rows = [document_row(i, e) for i, e in enumerate(embeddings)]
    stream = copy_stream(rows, folded=False)
    expected = xxhash.xxh3_128(copy_stream(rows, folded=True)).digest()
    assert fold(cut(stream, [p for p in points if p < len(stream)])) == expected


def test_a_changed_truncated_or_extended_stream_never_folds_alike() -> None:
    stream = copy_stream(ROWS, folded=False)
    whole = fold([stream])
    one_bit = bytearray(stream)
    one_bit[stream.index(bytes(range(3, 203))) + 7] ^= 0x10  # a bit of row 3's embedding
    assert fold([bytes(one_bit)]) != whole
    assert fold([stream[:-2]]) != whole  # no trailer
    assert fold([stream[:-500]]) != whole  # cut inside the last row's embedding
    assert fold([stream, b"x"]) != whole  # something after the trailer
    assert fold([copy_stream(ROWS[:-1], folded=False)]) != whole  # a row missing
    assert fold([copy_stream([*ROWS, ROWS[-1]], folded=False)]) != whole  # a row doubled


# -- against real databases -----------------------------------------------------------------

DOCS, CHUNK = 60, 20


@pytest.fixture
def legacy_url(pg: PgCluster) -> Iterator[str]:
    yield from legacy_database(pg, crates=3, docs=DOCS)


async def test_a_run_folds_the_embeddings_where_the_target_computes_crc32c(
    legacy_url: str, database_url: str
) -> None:
    async with docstore.connect(database_url) as store:
        version = await store.fetchval("SELECT current_setting('server_version_num')::int")
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        report = await m.run()
    assert report.ok, report.validation
    assert report.embeddings_checked_by == ("crc32c" if version >= 180000 else "bytes")
    assert report.verified_chunks == [(0, 20), (20, 40), (40, 60)]


async def test_without_the_c_crc32c_a_run_checks_every_byte(
    legacy_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(digest, "_CRC32C", None)
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        report = await m.run()
    assert report.ok and report.embeddings_checked_by == "bytes"
    assert report.verified_chunks == [(0, 20), (20, 40), (40, 60)]
    assert sum(report.per_source.values()) == DOCS  # counted by validation's scan
    async with Migrator(legacy_url, database_url, validate=False) as m:
        unvalidated = await m.run()
    assert unvalidated.embeddings_checked_by is None
    assert unvalidated.per_source == report.per_source  # counted on their own


async def test_one_float_of_a_stored_embedding_changed_before_the_read_back_is_caught(
    legacy_url: str, database_url: str
) -> None:
    """The folded check compares the CRC-32C of the value the target *stores*: the last float
    of legacy row 5's embedding, changed in the target between its chunk's commit and the
    read-back, fails the streamed check of (0, 20]; validation re-reads and repairs it."""
    done: list[bool] = []

    def corrupt_first_chunk(stage: str, rows: int, total: int, nbytes: int) -> None:
        if stage == "documents" and rows == CHUNK and not done:
            sql = (
                "UPDATE documents SET embedding = array_append("
                "(embedding::real[])[1:3071], (embedding::real[])[3072] + 1e-3::real)::vector"
                " WHERE metadata->>'legacy_id' = '5' AND embedding IS NOT NULL"
            )
            writer = threading.Thread(target=asyncio.run, args=(legacy_execute(database_url, sql),))
            writer.start()
            writer.join()
            done.append(True)

    async with docstore.connect(database_url) as store:
        version = await store.fetchval("SELECT current_setting('server_version_num')::int")
    async with Migrator(
        legacy_url, database_url, chunk_rows=CHUNK, progress=corrupt_first_chunk
    ) as m:
        report = await m.run()
    assert done and report.ok, report.validation
    # (before PostgreSQL 18 every byte is compared, which catches it too)
    assert report.embeddings_checked_by == ("crc32c" if version >= 180000 else "bytes")
    assert report.verified_chunks == [(20, 40), (40, 60)]
    assert report.repaired_documents == 1
    assert any("legacy id 5): differs (embedding)" in w for w in report.warnings), report.warnings


async def test_a_crc32c_of_another_schema_never_stands_in_for_pg_catalogs(
    legacy_url: str, database_url: str
) -> None:
    """A constant ``public.crc32c(bytea)`` first on the search path would accept any changed
    embedding if the read-back called it: the fold names ``pg_catalog.crc32c``."""
    async with docstore.connect(database_url) as store:
        version = await store.fetchval("SELECT current_setting('server_version_num')::int")
        await store.execute(
            "CREATE FUNCTION public.crc32c(bytea) RETURNS bigint LANGUAGE sql IMMUTABLE"
            " AS 'SELECT 0::bigint'"
        )
        await store.execute(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET search_path = public, pg_catalog',"
            " current_database()); END $$"
        )
    await test_one_float_of_a_stored_embedding_changed_before_the_read_back_is_caught(
        legacy_url, database_url
    )
    async with docstore.connect(database_url) as store:
        if version >= 180000:
            assert await digest.target_folds(store)
