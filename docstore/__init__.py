"""docstore: the Doc Server's async data layer on PostgreSQL + pgvector.

Public API: :func:`connect`, :class:`Store`, :class:`Settings` and the errors in
:mod:`docstore.errors`.
"""

from docstore import errors
from docstore.config import Settings
from docstore.db import Health, PoolTimeoutError, Store, connect
from docstore.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    DocstoreError,
    FilterError,
    MigrationError,
    QueryError,
    ReadOnlyError,
    SchemaError,
    ValidationError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "DatabaseUnavailableError",
    "DocstoreError",
    "FilterError",
    "Health",
    "MigrationError",
    "PoolTimeoutError",
    "QueryError",
    "ReadOnlyError",
    "SchemaError",
    "Settings",
    "Store",
    "ValidationError",
    "__version__",
    "connect",
    "errors",
]
