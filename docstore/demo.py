"""The data behind ``docstore demo``: a few crate docs and a deterministic text embedding.

There is no embedding model in the demo (nothing may be downloaded), so texts are embedded by
hashing: each word maps to a fixed pseudo-random unit vector and a text is the normalized
sum of its words' vectors. Texts sharing words are close in cosine distance, which is enough
to show a similarity query ranking sensibly.
"""

from __future__ import annotations

import hashlib
import re

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
