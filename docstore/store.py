"""The public :class:`Store` and :func:`connect`: the database handle plus the repositories."""

from __future__ import annotations

from typing import Any

from docstore.config import Settings
from docstore.db import StoreOpener, open_database
from docstore.repositories import DocumentRepository, SourceRepository
from docstore.search.api import SearchDatabase


class Store(SearchDatabase):
    """A connected docstore: asyncpg-style queries, ``documents`` and ``sources``, and search.

    Create it with :func:`connect`. See :class:`~docstore.db.Database` for the query surface,
    transactions, retries and read-only mode, and :class:`~docstore.search.api.SearchDatabase`
    for ``search``, ``search_text``, ``hybrid_search``, ``create_vector_index`` and
    ``evaluate_recall``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.documents = DocumentRepository(self)
        """Documents keyed by (doc_type, source_name, doc_path)."""
        self.sources = SourceRepository(self)
        """Sources keyed by (doc_type, source_name)."""


def connect(
    url: str | None = None,
    *,
    read_only: bool | None = None,
    migrate: bool | None = None,
    settings: Settings | None = None,
    **overrides: Any,
) -> StoreOpener[Store]:
    """Open a :class:`Store`: ``await docstore.connect()`` or ``async with docstore.connect()``.

    The URL is ``url``, else ``DATABASE_URL``, else ``MCPDOCS_DATABASE_URL`` (logged once),
    else the embedded PostgreSQL (extra ``docstore[embedded]``). ``read_only`` defaults to
    ``READ_ONLY``. ``migrate`` applies pending schema migrations while connecting; it defaults
    to ``DOCSTORE_AUTO_MIGRATE`` (true) and is always off in read-only mode (no DDL).
    ``overrides`` are :class:`~docstore.config.Settings` fields by name
    (``pool_max_size=10``, ``embedding_dim=1536``, ...).

    Raises :class:`ConfigurationError`, :class:`DatabaseUnavailableError` or
    :class:`SchemaError`; none of their messages contain the password.
    """
    return open_database(
        Store, url, read_only=read_only, migrate=migrate, settings=settings, **overrides
    )
