"""The search API: vector (exact and ANN), full-text, hybrid, index management, recall.

A :class:`docstore.Store` is composed of these parts, each in its own module, and delegates
its search methods to them:

* :mod:`docstore.search.indexes` — :class:`SearchIndexes`: ``vector_indexes``,
  ``vector_index``, ``create_vector_index``, ``drop_vector_index``, ``text_index``,
  ``create_text_index``, ``drop_text_index``, ``calibrate_search``;
* :mod:`docstore.search.vector` — :class:`VectorSearch`: ``search`` (planning and running
  exact, halfvec and ANN searches);
* :mod:`docstore.search.text` — :class:`TextSearch`: ``search_text``, ``hybrid_search``;
* :mod:`docstore.search.recall` — :class:`RecallEvaluator`: ``evaluate_recall``, and the
  live recall that ``health()`` and ``metrics()`` report.

The SQL comes from the pure builders in :mod:`docstore.search.queries` (vector) and
:mod:`docstore.search.text_sql` (full text); how a vector search
runs (mode, candidates, ``ef_search``, a second pass) from the pure planner
:mod:`docstore.search.planner`, fed with the database's calibration
(:mod:`docstore.search.tuning`, kept by ``store.tuner``: :mod:`docstore.search.tuner`).

:class:`SearchDatabase` (:mod:`docstore.search.surface`, re-exported here) is what the tuner
needs of the store it serves: the store's :class:`~docstore.core.surface.Queries` plus the index
lookup and the ANN statement runner.
"""

from __future__ import annotations

from docstore.search.index_ddl import BUILD_PROGRESS_SECONDS, INDEX_BUILD_TIMEOUT
from docstore.search.indexes import (
    DEFAULT_MAINTENANCE_WORK_MEM,
    INDEX_CACHE_SECONDS,
    SearchIndexes,
)
from docstore.search.recall import RecallEvaluator
from docstore.search.statements import fetch as _fetch
from docstore.search.surface import SearchDatabase
from docstore.search.text import TextSearch
from docstore.search.vector import _HIT_DEFAULTS, VectorSearch, _ann_fetch, _hit

__all__ = [
    "BUILD_PROGRESS_SECONDS",
    "DEFAULT_MAINTENANCE_WORK_MEM",
    "INDEX_BUILD_TIMEOUT",
    "INDEX_CACHE_SECONDS",
    "_HIT_DEFAULTS",
    "RecallEvaluator",
    "SearchDatabase",
    "SearchIndexes",
    "TextSearch",
    "VectorSearch",
    "_ann_fetch",
    "_fetch",
    "_hit",
]
