"""Citus tooling for tests and benchmarks."""

from __future__ import annotations

from docstore.search.queries import METRICS, index_expression, vector_refs


def printed_vector(sql: str, dim: int) -> str:
    """A distributed search statement as docstore built it before the query vector became a
    CTE (:class:`~docstore.search.queries.VectorRefs`): each reference is the single-node
    one — ``$1::vector``, the HNSW order's cast, the sub-selected ``halfvec`` — which the
    coordinator prints as text into every shard's SQL. For comparisons only."""
    new, old = vector_refs(dim, distributed=True), vector_refs(dim)
    sql = sql.removeprefix(new.prefix)
    order = f"ORDER BY {index_expression(dim, 'd.embedding')}"
    for m in METRICS.values():  # the HNSW order: inline, as the index's expression needs
        sql = sql.replace(
            f"{order} {m.operator} {new.indexed}", f"{order} {m.operator} {old.indexed}"
        )
    return sql.replace(new.half, old.half).replace(new.vector, old.vector)
