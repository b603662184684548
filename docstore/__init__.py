"""docstore: the Doc Server's async data layer on PostgreSQL + pgvector.

Public API: :func:`connect`, :class:`Store`, :class:`Migrator`, :class:`Settings`, the models
(:class:`Document`, :class:`Source`, :class:`UpsertResult`, :class:`SourceStats`), search
results (:class:`SearchResults`, :class:`Hit`, :class:`VectorIndex`, :class:`RecallReport`) and
the errors in :mod:`docstore.errors`. Scripts that prefer no ``await`` use :mod:`docstore.sync`.
"""

from docstore import errors
from docstore.config import Settings
from docstore.db import Health
from docstore.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    DocstoreError,
    FilterError,
    MigrationError,
    PoolTimeoutError,
    QueryError,
    ReadOnlyError,
    SchemaError,
    ValidationError,
)
from docstore.migrate import MigrationReport, Migrator
from docstore.models import Document, Source, SourceStats, UpsertResult
from docstore.search.results import Hit, RecallReport, SearchResults, VectorIndex
from docstore.store import Store, connect

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "DatabaseUnavailableError",
    "DocstoreError",
    "Document",
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
