"""What the search parts need of the store they serve: :class:`SearchDatabase`.

Its own module, below every search part, so the tuner, the calibration and live recall can
name the store's type without importing :mod:`docstore.search.api` (which imports them).
"""

from __future__ import annotations

from typing import Any, Protocol

from docstore.core.surface import Queries
from docstore.search.results import VectorIndex


class SearchDatabase(Queries, Protocol):
    """A store with search, as :class:`~docstore.search.tuner.SearchTuner` uses it
    (:class:`docstore.Store` is one)."""

    async def vector_indexes(self, *, refresh: bool = True) -> list[VectorIndex]: ...
    async def vector_index(self, metric: str = "cosine") -> VectorIndex | None: ...
    async def _ann_records(
        self,
        sql: str,
        params: list[Any],
        ef_search: int,
        *,
        force_index: bool = True,
        filtered: bool = False,
        source: str | None = None,
    ) -> list[Any]: ...
