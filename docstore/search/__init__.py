"""Search: pure SQL builders (:mod:`.filters`, :mod:`.queries`), the search API (:mod:`.api`)
and its results (:mod:`.results`)."""

from docstore.search.filters import OPERATORS, build_filter
from docstore.search.queries import METRICS
from docstore.search.results import Hit, Latency, RecallReport, SearchResults, VectorIndex
from docstore.search.surface import SearchDatabase
from docstore.search.text_sql import reciprocal_rank_fusion

__all__ = [
    "METRICS",
    "OPERATORS",
    "Hit",
    "Latency",
    "RecallReport",
    "SearchDatabase",
    "SearchResults",
    "VectorIndex",
    "build_filter",
    "reciprocal_rank_fusion",
]
