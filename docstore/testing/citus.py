"""Citus tooling for tests and benchmarks."""

from __future__ import annotations

from docstore.search.queries import query_vector


def printed_vector(sql: str, dim: int) -> str:
    """A distributed search statement as docstore built it before the query vector became a
    CTE (:class:`~docstore.search.queries.QueryVector`): every reference is ``$1`` itself,
    which the coordinator prints as text into each shard's SQL. For comparisons only."""
    return (
        sql.removeprefix(query_vector(dim, distributed=True).prefix)
        .replace(f"(SELECT q.v::halfvec({int(dim)}) FROM q)", f"$1::vector::halfvec({int(dim)})")
        .replace("(SELECT q.v FROM q)", "$1::vector")
    )
