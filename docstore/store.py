"""The public :class:`Store` and :func:`connect`: a store composed of its parts.

A :class:`Store` holds, and is made of:

* ``_db`` — the connection core, :class:`~docstore.core.database.Database` (pools, retries,
  replica routing, health, metrics, reload; :mod:`docstore.core`);
* ``tuner`` — :class:`~docstore.search.tuner.SearchTuner` (calibration, live recall);
* ``_indexes``, ``_vector``, ``_text``, ``_recall`` — the search parts
  (:mod:`docstore.search.api` lists them), which run on the core;
* ``documents`` and ``sources`` — the repositories, which run on the store.

Its methods are its parts' methods, reached by :class:`~docstore.core.delegate.delegate`
(same signature, docstring and metrics name as the part's), except where the store adds to
them: :meth:`Store.health` and :meth:`Store.metrics` add live search recall, and
:meth:`Store.close` stops the tuner first.
"""

from __future__ import annotations

import asyncio
from typing import Any, Self

import asyncpg

from docstore.config import Settings, UrlSource
from docstore.core.database import Database
from docstore.core.delegate import delegate
from docstore.core.health import Health
from docstore.core.opener import StoreOpener, open_database
from docstore.core.surface import ReadQueries
from docstore.metrics import Metrics, MetricsSnapshot, timed
from docstore.repositories import DocumentRepository, SourceRepository
from docstore.search.indexes import SearchIndexes
from docstore.search.recall import RecallEvaluator, with_live_recall
from docstore.search.text import TextSearch
from docstore.search.tuner import SearchTuner
from docstore.search.vector import VectorSearch


class Store:
    """A connected docstore: asyncpg-style queries, ``documents`` and ``sources``, and search.

    Create it with :func:`connect`. See :class:`~docstore.core.database.Database` for the
    query surface, transactions, retries and read-only mode, and :mod:`docstore.search.api`
    for ``search``, ``search_text``, ``hybrid_search``, ``create_vector_index`` and
    ``evaluate_recall``. ``repr(store)`` and :attr:`url` never show a password.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._db = Database(*args, **kwargs)
        self.tuner = SearchTuner(self)
        """Calibration, recent queries and live recall (:mod:`docstore.search.tuner`)."""
        self._indexes = SearchIndexes(self._db, self.tuner)
        self._vector = VectorSearch(self._db, self._indexes, self.tuner)
        self._text = TextSearch(self._db, self._vector)
        self._recall = RecallEvaluator(self._db, self._indexes, self._vector)
        self.documents = DocumentRepository(self)
        """Documents keyed by (doc_type, source_name, doc_path)."""
        self.sources = SourceRepository(self)
        """Sources keyed by (doc_type, source_name)."""

    # -- identity (the core's) ---------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        """The settings this store was opened with."""
        return self._db.settings

    @property
    def read_only(self) -> bool:
        """Opened read-only (``READ_ONLY`` or ``connect(read_only=True)``)."""
        return self._db.read_only

    @property
    def distributed(self) -> bool:
        """``documents`` is a Citus distributed table (``docstore init --distributed``)."""
        return self._db.distributed

    @property
    def url(self) -> str:
        """The database URL with its password replaced by ``***``."""
        return self._db.url

    @property
    def read_url(self) -> str | None:
        """The read replica's URL (password redacted), or None without one."""
        return self._db.read_url

    @property
    def url_source(self) -> UrlSource:
        """Where the URL came from (``url=``, an environment variable, the embedded server)."""
        return self._db.url_source

    @property
    def embedding_dim(self) -> int:
        """The dimension of ``documents.embedding`` (``DOCSTORE_EMBEDDING_DIM``, checked
        against the database at connect): every stored and query vector has it."""
        return self._db.embedding_dim

    @property
    def pool(self) -> asyncpg.Pool:
        """The primary's asyncpg pool (for code that needs asyncpg directly)."""
        return self._db.pool

    @property
    def replica(self) -> ReadQueries:
        """``fetch/fetchrow/fetchval`` on the read replica (the primary without one, or when
        it is down). For queries that only read."""
        return ReadQueries(self)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the store was opened on (its connections belong to it)."""
        return self._db.loop

    @property
    def _metrics(self) -> Metrics:
        return self._db._metrics

    def __repr__(self) -> str:
        return self._db._repr_as(type(self).__name__)

    # -- lifecycle ---------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop the tuner's background work, then close the pools. From another event loop
        than the store's: :class:`~docstore.errors.EventLoopError` while that loop runs; once
        it is closed (a notebook cell's ``asyncio.run()`` ended), the connections are let go."""
        if self._db.check_loop():
            await self.tuner.aclose()
        await self._db.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    reload = delegate(Database.reload, "_db")

    # -- guards, running work, asyncpg's query surface (the core's) --------------------------
    ensure_writable = delegate(Database.ensure_writable, "_db")
    translate = delegate(Database.translate, "_db")
    read_from_primary = delegate(Database.read_from_primary, "_db")
    run = delegate(Database.run, "_db")
    run_in_transaction = delegate(Database.run_in_transaction, "_db")
    acquire = delegate(Database.acquire, "_db")
    transaction = delegate(Database.transaction, "_db")
    has_idle_connection = delegate(Database.has_idle_connection, "_db")
    try_lock = delegate(Database.try_lock, "_db")
    execute = delegate(Database.execute, "_db")
    executemany = delegate(Database.executemany, "_db")
    fetch = delegate(Database.fetch, "_db")
    fetchrow = delegate(Database.fetchrow, "_db")
    fetchval = delegate(Database.fetchval, "_db")
    migrate = delegate(Database.migrate, "_db")
    schema_status = delegate(Database.schema_status, "_db")
    create_reader_role = delegate(Database.create_reader_role, "_db")

    # -- reports (the core's, plus live search recall) ---------------------------------------
    @timed("health")
    async def health(self) -> Health:
        """:meth:`Database.health <docstore.db.Database.health>`, plus live search recall:
        ``degraded`` (with a warning) while it is under the target. A database without
        docstore's schema yet has no calibration to read (nor a warning that it is
        unreadable)."""
        health = await self._db.health()
        if health.schema_version is None:
            return with_live_recall(health, self.tuner.recall())
        return with_live_recall(health, await self.tuner.current_recall())

    @timed("metrics")
    async def metrics(self, *, disk: bool = True) -> MetricsSnapshot:
        """:meth:`Database.metrics <docstore.db.Database.metrics>`, plus live search recall
        (``snapshot.search_recall``)."""
        snapshot = await self._db.metrics(disk=disk)
        snapshot.search_recall = await self.tuner.current_recall()
        return snapshot

    disk_usage = delegate(Database.disk_usage, "_db")
    pool_stats = delegate(Database.pool_stats, "_db")
    _pools = delegate(Database._pools, "_db")

    # -- search (docstore.search) -------------------------------------------------------------
    search = delegate(VectorSearch.search, "_vector")
    search_text = delegate(TextSearch.search_text, "_text")
    hybrid_search = delegate(TextSearch.hybrid_search, "_text")
    vector_indexes = delegate(SearchIndexes.vector_indexes, "_indexes")
    vector_index = delegate(SearchIndexes.vector_index, "_indexes")
    create_vector_index = delegate(SearchIndexes.create_vector_index, "_indexes")
    drop_vector_index = delegate(SearchIndexes.drop_vector_index, "_indexes")
    text_index = delegate(SearchIndexes.text_index, "_indexes")
    create_text_index = delegate(SearchIndexes.create_text_index, "_indexes")
    drop_text_index = delegate(SearchIndexes.drop_text_index, "_indexes")
    calibrate_search = delegate(SearchIndexes.calibrate_search, "_indexes")
    evaluate_recall = delegate(RecallEvaluator.evaluate_recall, "_recall")
    _ann_records = delegate(VectorSearch._ann_records, "_vector")  # for the tuner's trials


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
