"""An operator's cutover rehearsal with legacy data shapes the tests had not tried (helper
104, 2026-12-07): legacy NULL crate totals, an id at the top of the legacy ``integer``."""

from __future__ import annotations

import random
import string
from collections.abc import Iterator

import numpy as np
import pytest

import docstore
from docstore.compat import LegacyDatabase
from docstore.errors import MigrationError
from docstore.migrate import Migrator
from tests.conftest import PgCluster, unit_vector
from tests.legacy_db import legacy_database, legacy_execute, legacy_fetch

INT_MAX = 2**31 - 1


@pytest.fixture
def legacy_url(pg: PgCluster) -> Iterator[str]:
    yield from legacy_database(pg, crates=2, docs=6)


async def test_a_legacy_null_crate_total_reads_null_in_the_crates_view(
    legacy_url: str, database_url: str
) -> None:
    """Was: 0 (``config->>'total_docs' IS NULL`` is true of a JSON null too); a total that
    was never recorded (a source docstore created) still reads 0, the legacy default."""
    await legacy_execute(
        legacy_url,
        "INSERT INTO crates (name, version, total_docs, total_tokens)"
        " VALUES ('nulls', '1.0', NULL, NULL), ('zeros', '1.0', 0, 0)",
    )
    async with Migrator(legacy_url, database_url) as m:
        assert (await m.run()).ok
    async with docstore.connect(database_url) as store:
        await store.sources.upsert(docstore.Source(source_name="unrecorded"))
        await LegacyDatabase(store).install_views("compat")
        rows = await store.fetch(
            "SELECT name, total_docs, total_tokens FROM compat.crates"
            " WHERE name IN ('nulls', 'zeros', 'unrecorded') ORDER BY name"
        )
    assert [tuple(r) for r in rows] == [
        ("nulls", None, None),
        ("unrecorded", 0, 0),
        ("zeros", 0, 0),
    ]


async def _sequence(url: str) -> tuple[int, bool]:
    rows = await legacy_fetch(url, "SELECT last_value, is_called FROM doc_embeddings_id_seq")
    return rows[0][0], rows[0][1]


async def test_a_dry_run_rollback_leaves_the_legacy_sequences_as_they_were(
    legacy_url: str, database_url: str
) -> None:
    """Was: ``rollback --dry-run`` ("nothing was changed") set the legacy sequence to the
    largest id (``setval`` is not undone by a rollback): with a row at 2,147,483,647 beside a
    sequence far below it, the legacy application's next insert failed, and a real rollback
    of a document written after the cutover failed with SequenceGeneratorLimitExceeded."""
    await legacy_execute(
        legacy_url,
        "INSERT INTO doc_embeddings (id, crate_id, crate_name, doc_path, content, embedding)"
        " SELECT v.id, c.id, c.name, v.path, 'x', $3"
        " FROM (SELECT id, name FROM crates ORDER BY id LIMIT 1) c,"
        " (VALUES ($1::int, 'max.html'), ($1::int - 1, 'max-1.html'), ($2::int, 'above.html'),"
        " ($2::int + 2, 'further.html')) v(id, path)",
        INT_MAX,
        51,  # above the sequence, with a gap after it (rows inserted with their ids): past both
        unit_vector(3),
    )
    await legacy_execute(legacy_url, "SELECT setval('doc_embeddings_id_seq', 50)")
    async with Migrator(legacy_url, database_url) as m:
        assert (await m.run()).ok
        async with docstore.connect(database_url) as store:
            crate = (await store.fetch("SELECT source_name FROM document_sources LIMIT 1"))[0][0]
            await LegacyDatabase(store).insert_embedding(
                1, crate, "after-cutover.html", "x", np.ones(3072, np.float32).tolist(), 1
            )
        before = await _sequence(legacy_url)
        report = await m.rollback(dry_run=True)
        assert report.dry_run and await _sequence(legacy_url) == before
        report = await m.rollback()
    # past 53, not to the maximum nor past 2,147,483,646 (review 107: the next id collided)
    assert await _sequence(legacy_url) == (54, True)
    rows = await legacy_fetch(
        legacy_url, "SELECT id FROM doc_embeddings WHERE doc_path = 'after-cutover.html'"
    )
    assert rows == [(54,)]
    await legacy_execute(  # the legacy application's next insert
        legacy_url,
        "INSERT INTO doc_embeddings (crate_id, crate_name, doc_path, content)"
        " SELECT id, name, 'next.html', 'n' FROM crates ORDER BY id LIMIT 1",
    )


async def test_a_key_the_targets_index_cannot_hold_blocks_the_dry_run_and_names_the_row(
    legacy_url: str, database_url: str
) -> None:
    """Was: the dry run exited 0 ("copied as they are"), then every run failed its chunk with
    ProgramLimitExceededError (index row size 2712 exceeds btree maximum 2704): the legacy
    index on (crate_name, doc_path) took a key docstore's, with the doc type, cannot."""
    crate = (await legacy_fetch(legacy_url, "SELECT name FROM crates ORDER BY id LIMIT 1"))[0][0]
    # A btree row of at most 2,704 bytes: 8 of header, the short values with a 1-byte header
    # unaligned ("rust", the crate), the path's 4-byte header 4-aligned. Docstore's index
    # holds up to 2,700 - align4(13 + crate) bytes of path, the legacy one 4 more: 2 more.
    length = 2_702 - (13 + len(crate.encode()) + 3) // 4 * 4
    rng = random.Random(4)  # incompressible
    long_path = "".join(rng.choices(string.ascii_letters + string.digits, k=length))
    # keys as long or longer that compress, which the index holds: tried, not named
    paths = [(1000 + i, f"{i:04}" + "docs/" * 700) for i in range(1, 40)]
    paths += [(1050, long_path)]
    await legacy_execute(
        legacy_url,
        "INSERT INTO doc_embeddings (id, crate_id, crate_name, doc_path, content)"
        " SELECT v.id, c.id, c.name, v.path, 'x' FROM (SELECT id, name FROM crates"
        " ORDER BY id LIMIT 1) c, unnest($1::int[], $2::text[]) v(id, path)",
        [p[0] for p in paths],
        [p[1] for p in paths],
    )
    async with Migrator(legacy_url, database_url) as m:
        dry = await m.run(dry_run=True)
        blocking = [b for b in dry.preflight.blocking if "unique index" in b]
        assert len(blocking) == 1 and "ids 1050)" in blocking[0], dry.preflight.blocking
        with pytest.raises(MigrationError, match=r"ids \(\d+, \d+\]: 1 legacy .* ids 1050\)"):
            await m.run()
        await legacy_execute(
            legacy_url, "UPDATE doc_embeddings SET doc_path = 'short.html' WHERE id = 1050"
        )
        report = await m.run()  # resumes; the long keys that compress fit
        assert report.ok
    async with docstore.connect(database_url) as store:
        assert await store.fetchval("SELECT count(*) FROM documents") == 6 + len(paths)


@pytest.mark.parametrize(
    ("table", "column", "value", "instead"),
    [
        ("crates", "last_updated", "0001-01-01 00:00:00", "-infinity"),
        ("crate_configs", "last_checked", "9999-12-31 23:59:59.999999+00", "infinity"),
        ("crate_configs", "created_at", "0001-01-01 00:00:00+00", "2020-01-01 00:00:00+00"),
    ],
)
async def test_a_date_at_the_very_end_of_pythons_range_blocks_the_run_naming_it(
    legacy_url: str, database_url: str, table: str, column: str, value: str, instead: str
) -> None:
    """Was: a finite ``0001-01-01 00:00:00`` in ``crates.last_updated`` became ``-infinity``
    in the target (asyncpg reads and writes ±infinity as Python's first and last instants),
    and a rollback wrote ``-infinity`` back into the legacy database; the same in
    ``crate_configs`` or ``population_jobs`` made every run fail validation, for ever."""
    cast = "timestamp" if table == "crates" else "timestamptz"
    update = f"UPDATE {table} SET {column} = $1::text::{cast}"
    await legacy_execute(legacy_url, f"{update} WHERE id = (SELECT min(id) FROM {table})", value)
    async with Migrator(legacy_url, database_url) as m:
        blocking = (await m.preflight()).blocking
        assert any(f"{table} row" in b and column in b for b in blocking), blocking
        with pytest.raises(MigrationError, match="very ends"):
            await m.run()
        await legacy_execute(
            legacy_url, f"{update} WHERE {column} = $2::text::{cast}", instead, value
        )
        assert (await m.run()).ok
