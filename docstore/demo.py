"""The data behind ``docstore demo``: a few crate docs and a deterministic text embedding.

There is no embedding model in the demo (nothing may be downloaded), so texts are embedded by
hashing: each word maps to a fixed pseudo-random unit vector and a text is the normalized
sum of its words' vectors. Texts sharing words are close in cosine distance, which is enough
to show a similarity query ranking sensibly.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

import numpy as np

from docstore.codecs import FloatArray

DEMO_DOCS: tuple[tuple[str, str, str], ...] = (
    (
        "tokio",
        "tokio/runtime/index.html",
        "The Tokio runtime schedules async tasks on worker threads.",
    ),
    (
        "tokio",
        "tokio/task/fn.spawn.html",
        "spawn runs a future as a new async task on the runtime.",
    ),
    (
        "tokio",
        "tokio/sync/struct.Mutex.html",
        "An async mutex that can be held across await points.",
    ),
    (
        "serde",
        "serde/trait.Serialize.html",
        "Serialize a Rust data structure into any data format.",
    ),
    (
        "serde",
        "serde/trait.Deserialize.html",
        "Deserialize a data structure from JSON or other formats.",
    ),
    (
        "axum",
        "axum/routing/index.html",
        "Routing requests to async handlers in an axum web server.",
    ),
    ("sqlx", "sqlx/pool/struct.Pool.html", "A pool of database connections shared by async tasks."),
)

_WORD = re.compile(r"[a-z0-9]+")


def hash_embedding(text: str, dim: int) -> FloatArray:
    """Deterministic bag-of-words embedding of ``text`` with ``dim`` dimensions (unit norm)."""
    total = np.zeros(dim, dtype=np.float64)
    for word in _WORD.findall(text.lower()):
        seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        total += np.random.default_rng(seed).standard_normal(dim)
    norm = float(np.linalg.norm(total))
    if norm == 0.0:
        total[0] = 1.0
        norm = 1.0
    return (total / norm).astype(np.float32)


_TOPICS = (
    "async runtime task spawn future poll waker executor",
    "serialize deserialize json format derive field rename",
    "http request response router handler middleware body",
    "database pool connection query transaction row column",
    "error result option unwrap context backtrace report",
)
_TRICKY = "quote ' double \" tab\t newline\n backslash \\ unicode ✓ é 漢字 🦀"


async def build_sample_legacy(
    url: str, *, crates: int = 40, docs: int = 4133, seed: int = 0, fast: bool = False
) -> dict[str, int]:
    """Create and fill a legacy ``rust_docs_vectors`` database at ``url`` (an empty database),
    shaped like the migration plan's: ``crates`` crates, ``docs`` documents × 3,072 dims of
    varied text (quotes, tabs, newlines, backslashes, unicode), every 9th without an
    embedding, plus crate_configs and population_jobs. Embeddings cluster by crate, as real
    ones do. ``fast`` skips nothing today (kept for callers building large databases).

    Returns ``{"max_id": …, "null_embeddings": …}``.
    """
    import asyncpg  # local: the demo module is imported by the CLI at start-up

    from docstore.codecs import register_codecs
    from docstore.migrate.legacy import LEGACY_SCHEMA_SQL, ROLLBACK_COLUMNS

    del fast
    rng = np.random.default_rng(seed)
    dim = 3072
    centres = rng.standard_normal((crates, dim)).astype(np.float32)
    base = np.datetime64("2025-01-01T00:00:00")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(LEGACY_SCHEMA_SQL)
        await register_codecs(conn, "public")
        await conn.copy_records_to_table(
            "crates",
            records=[
                (i + 1, f"crate-{i}", f"{i % 5}.{i % 7}.0", None, 0, 0) for i in range(crates)
            ],
            columns=["id", "name", "version", "last_updated", "total_docs", "total_tokens"],
        )
        nulls = 0

        def rows() -> Iterator[tuple[object, ...]]:
            nonlocal nulls
            for j in range(docs):
                c = j % crates
                words = _TOPICS[c % len(_TOPICS)].split()
                picked = " ".join(rng.choice(words, size=int(rng.integers(60, 400))))
                embedding = None
                if j % 9 == 4:
                    nulls += 1
                else:
                    v = centres[c] + rng.standard_normal(dim).astype(np.float32)
                    embedding = v / np.linalg.norm(v)
                yield (
                    j + 1,
                    c + 1,
                    f"crate-{c}",
                    f"crate-{c}/module{j // crates}/item{j}.html",
                    f"# item {j}\n{picked}\n{_TRICKY}",
                    embedding,
                    len(picked.split()),
                    (base + np.timedelta64(j, "s")).item(),
                )

        await conn.copy_records_to_table(
            "doc_embeddings",
            records=rows(),
            columns=list(ROLLBACK_COLUMNS),  # the doc_embeddings columns
        )
        await conn.execute(
            """UPDATE crates c SET last_updated = now()::timestamp, total_docs = s.n,
                      total_tokens = s.t
                 FROM (SELECT crate_name, count(*) AS n, sum(token_count) AS t
                         FROM doc_embeddings GROUP BY 1) s
                WHERE s.crate_name = c.name;
               INSERT INTO crate_configs (name, version_spec, current_version, features)
               SELECT name, 'latest', version, '{}' FROM crates WHERE id <= 3;
               INSERT INTO population_jobs (crate_config_id, status, docs_populated)
               SELECT id, 'completed', 100 FROM crate_configs;
               SELECT setval('crates_id_seq', (SELECT max(id) FROM crates));
               SELECT setval('doc_embeddings_id_seq',
                             greatest((SELECT max(id) FROM doc_embeddings), 1));"""
        )
    finally:
        await conn.close()
    return {"max_id": docs, "null_embeddings": nulls}
