"""The real-text legacy database of ``bench/migrate.py``: passages of the Rust standard
library's API documentation (``../shared/corpora/rustdocs-dev.npz``, ~480 characters each)
with their real sentence embeddings lifted to 3,072 dimensions (``corpus.load``), in the
deployed legacy schema; a passage's crate is its doc path's first two components."""

from __future__ import annotations

import datetime as dt
import sys

import asyncpg
import common
import numpy as np

from docstore.codecs import register_codecs
from docstore.migrate.legacy import LEGACY_SCHEMA_SQL, ROLLBACK_COLUMNS

CORPUS = common.shared_dir() / "corpora"


def crate_of(path: str) -> str:
    """``std/collections/struct.HashMap.html`` → ``std::collections``; ``std/fn.x.html`` → std."""
    parts = path.split("/")
    return "::".join(parts[:2]) if len(parts) > 2 else parts[0]


async def build_real_legacy(url: str, rows: int) -> dict[str, int]:
    """A legacy database of ``rows`` real documentation passages (evenly spaced over the
    corpus) with their embeddings lifted to 3,072 dims."""
    sys.path.insert(0, str(CORPUS))
    from corpus import load  # type: ignore[import-not-found]

    texts, paths, vectors, _, _ = load()
    pick = np.unique(np.linspace(0, len(texts) - 1, num=min(rows, len(texts))).astype(int))
    crates = sorted({crate_of(paths[i]) for i in pick})
    crate_id = {name: i + 1 for i, name in enumerate(crates)}
    base = dt.datetime(2025, 6, 1, 12, 0, 0)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(LEGACY_SCHEMA_SQL)
        await register_codecs(conn, "public")
        await conn.copy_records_to_table(
            "crates",
            records=[(crate_id[n], n, "1.97.0", base, 0, 0) for n in crates],
            columns=["id", "name", "version", "last_updated", "total_docs", "total_tokens"],
        )
        await conn.copy_records_to_table(
            "doc_embeddings",
            records=(
                (
                    j + 1,
                    crate_id[crate_of(paths[i])],
                    crate_of(paths[i]),
                    paths[i],
                    texts[i],
                    vectors[i],
                    len(texts[i].split()),
                    base + dt.timedelta(seconds=j),
                )
                for j, i in enumerate(pick)
            ),
            columns=list(ROLLBACK_COLUMNS),  # doc_embeddings' columns
        )
        await conn.execute(
            """UPDATE crates c SET total_docs = s.n, total_tokens = s.t
                 FROM (SELECT crate_name, count(*) AS n, sum(token_count) AS t
                         FROM doc_embeddings GROUP BY 1) s WHERE s.crate_name = c.name;
               SELECT setval('crates_id_seq', (SELECT max(id) FROM crates));
               SELECT setval('doc_embeddings_id_seq', (SELECT max(id) FROM doc_embeddings))"""
        )
        await conn.execute("VACUUM ANALYZE crates")  # one statement each: not in a transaction
        await conn.execute("VACUUM ANALYZE doc_embeddings")
    finally:
        await conn.close()
    return {"max_id": len(pick), "null_embeddings": 0, "crates": len(crates), "docs": len(pick)}
