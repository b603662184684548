"""The legacy search's exact path (:meth:`LegacyDatabase.search_similar_docs
<docstore.compat.LegacyDatabase.search_similar_docs>`): a crate ranked exactly, like the
legacy ``search_similar_docs`` function, reading only the three columns it returns.

It runs for a ``limit`` beyond what :meth:`Store.search <docstore.Store.search>` ranks, and
whenever ``store.search`` would scan exactly anyway (:func:`exact_only`): then building a
:class:`~docstore.search.results.Hit` per row (every document column read, ``metadata``
decoded) for three fields kept was a third of a small crate's search on the client.
"""

from __future__ import annotations

import math
import time
from typing import Any

from docstore.compat.rows import SimilarDoc
from docstore.core.surface import own_reads
from docstore.search.queries import unindexed
from docstore.store import Store

# the distance computed once a row: in the ORDER BY and the select list apart, PostgreSQL
# reads the 12 KB vector from TOAST twice (1.40 against 1.20 ms a small crate); ties by id
# and no NULL embedding, as store.search
EXACT_SEARCH = f"""SELECT doc_path, content, {unindexed("embedding <=> $1")} AS distance
  FROM documents WHERE doc_type = $2 AND source_name = $3 AND embedding IS NOT NULL
 ORDER BY distance, id LIMIT $4"""


async def exact_only(store: Store) -> bool:
    """Whether ``store.search`` would scan exactly anyway: no usable cosine index (looked up in
    the store's index cache), on one node (a Citus cluster keeps the search's own SQL, which
    sends the query vector to the shards once)."""
    return not store.distributed and await store.vector_index("cosine") is None


async def exact_similar(
    store: Store, doc_type: str, crate_name: str, query: Any, limit: int
) -> list[SimilarDoc]:
    """The crate's ``limit`` documents nearest to ``query`` (validated) by cosine distance,
    exactly; counted with ``store.search``'s exact scans in the metrics (the signal to build
    an index). An all-zero vector migrated before validation has no cosine similarity (NaN):
    never returned, as by ``store.search``."""
    started = time.perf_counter()
    rows = await own_reads(store).fetch(EXACT_SEARCH, query, doc_type, crate_name, limit)
    store._metrics.search_mode("exact", time.perf_counter() - started)
    return [SimilarDoc(r[0], r[1], 1 - r[2]) for r in rows if not math.isnan(r[2])]
