"""docstore: the Doc Server's async data layer on PostgreSQL + pgvector.

Public API: :func:`connect`, :class:`Store`, :class:`Migrator`, :class:`Settings`, the models
(:class:`Document`, :class:`Source`, :class:`UpsertResult`, :class:`SourceStats`), search
results (:class:`SearchResults`, :class:`Hit`, :class:`VectorIndex`, :class:`RecallReport`),
:class:`Health` (``store.health()``), :class:`MigrationReport` (``Migrator.run()``) and the
errors in :mod:`docstore.errors`. Scripts that prefer no ``await`` use :mod:`docstore.sync`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from docstore import errors
from docstore.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    DocstoreError,
    EventLoopError,
    FilterError,
    MigrationError,
    PoolTimeoutError,
    QueryError,
    ReadOnlyError,
    SchemaError,
    ValidationError,
)

if TYPE_CHECKING:
    from docstore.config import Settings
    from docstore.db import Health
    from docstore.migrate import MigrationReport, Migrator
    from docstore.models import Document, Source, SourceStats, UpsertResult
    from docstore.search.results import Hit, RecallReport, SearchResults, VectorIndex
    from docstore.store import Store, connect

# Loaded on first use (PEP 562), so that ``import docstore`` — and the ``docstore`` command
# before it parses its arguments — does not wait about a second for pydantic, asyncpg, numpy
# and the migrator; the errors above are light and always loaded.
_LAZY = {
    "Settings": "docstore.config",
    "Health": "docstore.db",
    "MigrationReport": "docstore.migrate",
    "Migrator": "docstore.migrate",
    "Document": "docstore.models",
    "Source": "docstore.models",
    "SourceStats": "docstore.models",
    "UpsertResult": "docstore.models",
    "Hit": "docstore.search.results",
    "RecallReport": "docstore.search.results",
    "SearchResults": "docstore.search.results",
    "VectorIndex": "docstore.search.results",
    "Store": "docstore.store",
    "connect": "docstore.store",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'docstore' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "DatabaseUnavailableError",
    "DocstoreError",
    "Document",
    "EventLoopError",
    "FilterError",
    "Health",
    "Hit",
    "MigrationError",
    "MigrationReport",
    "Migrator",
    "PoolTimeoutError",
    "QueryError",
    "ReadOnlyError",
    "RecallReport",
    "SchemaError",
    "SearchResults",
    "Settings",
    "Source",
    "SourceStats",
    "Store",
    "UpsertResult",
    "ValidationError",
    "VectorIndex",
    "__version__",
    "connect",
    "errors",
]
