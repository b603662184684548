"""docstore's exception hierarchy.

Every error docstore raises on purpose is a :class:`DocstoreError`, so callers can catch by
meaning (``except ReadOnlyError``) instead of by message. Messages never contain passwords or
vector values: they name the setting, field, row or SQLSTATE instead.
"""

from __future__ import annotations


class DocstoreError(Exception):
    """Base class of every error docstore raises."""


class ConfigurationError(DocstoreError):
    """A setting is missing or invalid (the message names the variable, never its value)."""


class DatabaseUnavailableError(DocstoreError):
    """The database could not be reached, refused the credentials, or went away.

    ``sqlstate`` is set when the server answered with an error code (for example ``28P01``
    for a wrong password or ``3D000`` for a missing database).
    """

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class PoolTimeoutError(DatabaseUnavailableError):
    """No pooled connection became free within ``DOCSTORE_POOL_ACQUIRE_TIMEOUT``."""


class EventLoopError(DocstoreError, RuntimeError):
    """A store was used from another event loop than the one it was opened on (its
    connections belong to that loop): a notebook cell's ``asyncio.run()`` after the one that
    opened it, or another thread's loop."""


class ReadOnlyError(DocstoreError):
    """A write was attempted on a store opened in read-only mode (``READ_ONLY``)."""


class SchemaError(DocstoreError):
    """The database schema is missing, outdated, or cannot be created (e.g. no pgvector)."""


class ValidationError(DocstoreError, ValueError):
    """Input was rejected before anything was written.

    ``field`` names the offending field and ``index``/``key`` locate the row in a batch.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        index: int | None = None,
        key: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.index = index
        self.key = key


class FilterError(DocstoreError, ValueError):
    """A search filter is malformed: unknown field or operator, or a value of the wrong shape."""


class MigrationError(DocstoreError):
    """A legacy migration could not start or did not complete (the message says how to fix it)."""


class QueryError(DocstoreError):
    """The server rejected a statement (syntax, constraint, data error, ...).

    ``sqlstate`` carries the PostgreSQL error code; the original asyncpg exception is the
    ``__cause__``, its message and detail without the values they quoted (a failing row, a
    vector literal, an argument's ``repr``: a traceback prints the cause). The message is
    truncated so large literals never flood logs.
    """

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


__all__ = [
    "ConfigurationError",
    "DatabaseUnavailableError",
    "DocstoreError",
    "FilterError",
    "MigrationError",
    "QueryError",
    "ReadOnlyError",
    "SchemaError",
    "ValidationError",
]
