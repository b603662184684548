"""``LegacyDatabase``: the legacy Doc Server's data operations, on docstore's schema.

Each method is named and behaves as the legacy operation did (``../shared/legacy/README.md``):
a crate is a document source of doc_type ``rust``; documents are docstore documents, so they
gain docstore's validation and the ANN index. Crate and population-job ids are the legacy ids
of migrated rows and ``id + 1,000,000,000`` for rows created after the cutover, as the views
show them (:mod:`docstore.compat.ids`). Bad input raises docstore's
:class:`~docstore.errors.ValidationError` (naming the field, or the row of a batch).

Why this is long: :class:`LegacyDatabase` is the legacy server's whole data API, one method
per legacy operation (crates, documents, search, crate configs, population jobs), kept in one
class so a port can be read side by side with the legacy code it replaces.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from docstore.arguments import as_int
from docstore.compat import config_values, ids, installs, jobs, similar, views, writes
from docstore.compat import configs as configs_store
from docstore.compat.rows import CrateDocument, CrateStats, LegacyDoc, SimilarDoc
from docstore.embeddings import query_vector
from docstore.errors import DocstoreError, ValidationError
from docstore.metrics import Metrics, timed
from docstore.models import Document, Source, key_text, naive_utc
from docstore.repositories.documents import lock_sources
from docstore.search.planner import MAX_LIMIT
from docstore.store import Store, connect


class LegacyDatabase:
    """The legacy data API over a :class:`~docstore.Store` (``doc_type`` ``"rust"``)."""

    def __init__(self, store: Store, doc_type: str = "rust") -> None:
        self.store = store
        self.doc_type = doc_type
        self._owns_store = False

    @property
    def _metrics(self) -> Metrics:
        return self.store._metrics

    @classmethod
    async def connect(cls, url: str | None = None, *, doc_type: str = "rust") -> LegacyDatabase:
        """Open a store like :func:`docstore.connect` (DATABASE_URL → MCPDOCS_DATABASE_URL →
        embedded) and wrap it. Like the schema, this store's stale legacy views are brought up
        to date (:meth:`refresh_views`) unless the store is read-only or
        ``DOCSTORE_AUTO_MIGRATE`` is off; one that cannot be (a role that may not replace
        it, a read-only session, a long transaction holding it) is logged as a warning and
        left as is: the store opens all the same."""
        db = cls(await connect(url), doc_type)
        db._owns_store = True
        try:
            if db.store.settings.auto_migrate and not db.store.read_only:
                await db.refresh_views()
        except DocstoreError as exc:
            installs.logger.warning("%s", exc)
        except BaseException:
            await db.store.close()
            raise
        return db

    async def close(self) -> None:
        """Close the store this facade opened itself (:meth:`connect`); a store given to the
        constructor stays open: its owner closes it."""
        if self._owns_store:
            await self.store.close()

    async def __aenter__(self) -> LegacyDatabase:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- crates ------------------------------------------------------------------------------
    @timed("compat.upsert_crate")
    async def upsert_crate(self, name: str, version: str | None) -> int | None:
        """Insert or update a crate; a NULL version keeps the old one; bumps last_updated.
        Returns the crate's id (its legacy id if migrated, else its source's id +
        1,000,000,000: ``crates.id`` in the views; None, as the views' NULL, once that is
        past the legacy ``integer``)."""
        self.store.ensure_writable()
        key_text("source_name", name)
        Source(doc_type=self.doc_type, source_name=name)  # length, like any source name
        config_values.version_text("version", version, optional=True)  # VARCHAR(50)
        # a crate row now exists: a source that only had documents (an "orphan") stops being one
        config: dict[str, Any] = {"orphan": False}
        if version is not None:
            config["version"] = version
        # last_populated from EXCLUDED (the same now()): on a Citus cluster a function in DO
        # UPDATE SET must be IMMUTABLE
        row = await self.store.fetchrow(
            """INSERT INTO document_sources (doc_type, source_name, config, last_populated)
               VALUES ($1, $2, $3::jsonb, now())
               ON CONFLICT (doc_type, source_name) DO UPDATE
                  SET config = document_sources.config || EXCLUDED.config,
                      last_populated = EXCLUDED.last_populated
               RETURNING id, config""",
            self.doc_type,
            name,
            config,
        )
        assert row is not None
        return ids.crate_id(row["id"], row["config"])

    @timed("compat.get_crate_stats")
    async def get_crate_stats(self) -> list[CrateStats]:
        """One row per crate, ordered by name: (name, version, last_updated, total_docs,
        total_tokens) — the crate's recorded totals, as the legacy ``crates`` row held them
        (0 when none is recorded; None for one recorded as null — a legacy NULL — or beyond
        the legacy ``integer``, as the ``crates`` view shows it: stored by
        ``store.sources.refresh_stats`` or before :meth:`insert_embeddings_batch` refused such
        totals)."""
        rows = await self.store.fetch(
            f"""SELECT source_name, config->>'version' AS version, last_populated,
                      {views.total_sql("config", "total_docs")} AS total_docs,
                      {views.total_sql("config", "total_tokens")} AS total_tokens
                 FROM document_sources
                WHERE doc_type = $1 AND config->>'orphan' IS DISTINCT FROM 'true'
                ORDER BY source_name""",
            self.doc_type,
        )
        return [
            CrateStats(
                r["source_name"],
                r["version"],
                naive_utc(r["last_populated"]),
                r["total_docs"],
                r["total_tokens"],
            )
            for r in rows
        ]

    # -- documents ---------------------------------------------------------------------------
    @timed("compat.has_embeddings")
    async def has_embeddings(self, crate_name: str) -> bool:
        """Does the crate have any document? False for None, as the legacy ``= NULL``."""
        if key_text("crate_name", crate_name, optional=True) is None:
            return False
        return bool(
            await self.store.fetchval(
                "SELECT EXISTS (SELECT 1 FROM documents WHERE doc_type = $1 AND source_name = $2)",
                self.doc_type,
                crate_name,
            )
        )

    @timed("compat.count_crate_documents")
    async def count_crate_documents(self, crate_name: str) -> int:
        """Number of documents of a crate (on the primary, like the other compat reads: a
        count right after a write sees it); 0 for None, as the legacy ``= NULL`` matched
        nothing."""
        if key_text("crate_name", crate_name, optional=True) is None:
            return 0
        with self.store.read_from_primary():
            return await self.store.documents.count(self.doc_type, crate_name)

    def _document(
        self, crate_name: str, doc_path: str, content: str, embedding: Any, token_count: Any
    ) -> Document:
        return Document(
            doc_type=self.doc_type,
            source_name=crate_name,
            doc_path=doc_path,
            content=content,
            embedding=embedding,
            token_count=token_count,
            metadata={"crate_name": crate_name},
        )

    @timed("compat.insert_embedding")
    async def insert_embedding(
        self,
        crate_id: int | None,
        crate_name: str,
        doc_path: str,
        content: str,
        embedding: Any,
        token_count: int | None,
    ) -> None:
        """Upsert one document on (crate_name, doc_path). ``crate_id`` (an id
        :meth:`upsert_crate` returned, or None) is accepted for the legacy signature; the
        crate is identified by name, as it always really was."""
        del crate_id
        doc = self._document(crate_name, doc_path, content, embedding, token_count)
        await writes.upsert_crate_documents(
            self.store, self.doc_type, crate_name, [doc], totals=False
        )

    @timed("compat.insert_embeddings_batch")
    async def insert_embeddings_batch(
        self,
        crate_id: int | None,
        crate_name: str,
        docs: Iterable[LegacyDoc | Sequence[Any]],
    ) -> None:
        """Upsert many documents and recompute the crate's total_docs and total_tokens, all
        in one transaction (a stored row's metadata is kept: :mod:`docstore.compat.writes`).
        Each row is ``(doc_path, content, embedding[, token_count])``; a row of another shape
        or a bad value raises :class:`ValidationError` with its ``index``, and totals beyond
        the legacy ``integer`` columns (``crates.total_docs``/``total_tokens``) one naming
        the total, before anything is written."""
        del crate_id
        batch = writes.batch_documents(crate_name, docs, self._document)
        await writes.upsert_crate_documents(
            self.store, self.doc_type, crate_name, batch, totals=True
        )

    @timed("compat.search_similar_docs")
    async def search_similar_docs(
        self, crate_name: str, embedding: Any, limit: int = 5
    ) -> list[SimilarDoc]:
        """Cosine similarity ``1 - (embedding <=> q)``, best first, within one crate, on the
        primary (a search right after a write sees it). Up to 1,000 results through
        :meth:`Store.search` when there is a cosine ANN index (or on a Citus cluster); a
        larger ``limit`` (up to 2,147,483,647, the legacy ``integer``), or no index, ranks the
        crate exactly with a query like the legacy function's (ties by id, as
        ``store.search``), reading only the three columns returned
        (:mod:`docstore.compat.similar`). ``limit`` 0 or a None crate: ``[]`` (legacy
        ``LIMIT 0`` / ``= NULL``). Documents without an embedding are never returned, nor a
        zero vector migrated before validation (its cosine similarity is NaN)."""
        wanted = as_int(limit)  # numpy's integers too, never a bool
        if wanted is None or not 0 <= wanted <= ids.INT_MAX:
            raise ValidationError(
                f"limit must be an integer from 0 to {ids.INT_MAX}", field="limit"
            )
        limit = wanted
        query = query_vector(embedding, self.store.embedding_dim)
        if key_text("crate_name", crate_name, optional=True) is None or limit == 0:
            return []
        with self.store.read_from_primary():
            if limit > MAX_LIMIT or await similar.exact_only(self.store):
                return await similar.exact_similar(
                    self.store, self.doc_type, crate_name, query, limit
                )
            hits = await self.store.search(
                query, doc_type=self.doc_type, source_name=crate_name, limit=limit
            )
        return [SimilarDoc(h.doc_path, h.content, float(h.similarity or 0.0)) for h in hits]

    @timed("compat.get_crate_documents")
    async def get_crate_documents(self, crate_name: str) -> list[CrateDocument]:
        """All documents of a crate ordered by doc_path: (doc_path, content, embedding);
        ``[]`` for None, as the legacy ``= NULL``."""
        if key_text("crate_name", crate_name, optional=True) is None:
            return []
        rows = await self.store.fetch(
            "SELECT doc_path, content, embedding FROM documents"
            " WHERE doc_type = $1 AND source_name = $2 ORDER BY doc_path",
            self.doc_type,
            crate_name,
        )
        return [CrateDocument(r["doc_path"], r["content"], r["embedding"]) for r in rows]

    @timed("compat.delete_crate_embeddings")
    async def delete_crate_embeddings(self, crate_name: str) -> int:
        """Delete all documents of a crate; returns how many (0 for None, as the legacy
        ``= NULL`` matched nothing)."""
        if crate_name is None:
            self.store.ensure_writable()
            return 0
        return await self.store.documents.delete_source(self.doc_type, crate_name)

    # -- legacy SQL ----------------------------------------------------------------------------
    async def _schema(self, schema: str | None) -> str:
        key_text("schema", schema, optional=True)  # a str, or None: the first on search_path
        return schema or str(await self.store.fetchval("SELECT current_schema()"))

    @timed("compat.install_views")
    async def install_views(self, schema: str | None = None) -> str:
        """Create the read views ``crates``, ``doc_embeddings``, ``crate_stats`` and the function
        ``search_similar_docs(vector, varchar, integer)`` in ``schema`` (default: the
        connection's first search_path schema), with the legacy names and types, over
        documents/document_sources. Writes through the views fail with a message pointing
        here. The function finds docstore's tables and pgvector in the schemas they are in
        now, whatever the caller's search_path. Reader roles
        (:func:`docstore.readonly.create_reader_role`) may read the views (``SELECT``, and
        ``USAGE`` on ``schema``). Refuses a schema that holds real legacy tables. Returns the
        schema used."""
        self.store.ensure_writable()
        target = await self._schema(schema)
        await installs.install(self.store, target, self.doc_type)
        return target

    async def views_status(self) -> list[installs.LegacyViews]:
        """Every install of the legacy views over this store's tables (whatever its doc type)
        and its state (:class:`~docstore.compat.LegacyViews`): a stale one (from an older
        docstore, made before docstore's tables or pgvector moved, or changed since) still
        runs the SQL it was installed with until :meth:`refresh_views`."""
        return await installs.status(self.store)

    @timed("compat.refresh_views")
    async def refresh_views(self) -> list[str]:
        """Install every stale install again (:meth:`views_status`), each for its own doc type;
        returns the schemas refreshed. ``docstore init`` runs it, and :meth:`connect` unless
        the store is read-only or ``DOCSTORE_AUTO_MIGRATE`` is off. Raises
        :class:`~docstore.errors.SchemaError` naming those it could not refresh
        (:func:`docstore.compat.installs.refresh`), after the others."""
        self.store.ensure_writable()
        return await installs.refresh(self.store)

    async def installed_views(self, schema: str | None = None) -> list[str]:
        """What :meth:`install_views` creates that ``schema`` holds, sorted: the views
        ``crate_stats``, ``crates``, ``doc_embeddings``, the functions (``"name()"``:
        ``search_similar_docs()`` and the write guard's) and the guard's table. Empty before
        :meth:`install_views` and after :meth:`uninstall_views`."""
        return await installs.installed(self.store, await self._schema(schema))

    @timed("compat.uninstall_views")
    async def uninstall_views(self, schema: str | None = None) -> str:
        """Drop what :meth:`install_views` created in ``schema``; returns the schema."""
        self.store.ensure_writable()
        target = await self._schema(schema)
        await installs.uninstall(self.store, target)
        return target

    # -- crate configs & population jobs -----------------------------------------------------
    # Stored as the Migrator maps them: every config of a crate in its source's
    # config["crate_configs"] (the lowest id's fields mirrored at the top level), jobs in
    # source_population_jobs. Config ids are unique across crates (allocated under a lock).

    @timed("compat.create_crate_config")
    async def create_crate_config(
        self,
        name: str,
        version_spec: str = "latest",
        current_version: str | None = None,
        features: Sequence[str] | None = None,
        expected_docs: int = 1000,
        enabled: bool = True,
    ) -> int:
        """Insert or update the config of ``(name, version_spec)``; returns its id. Values of
        the wrong type raise :class:`ValidationError` before anything is written."""
        self.store.ensure_writable()
        name = config_values.name(name)
        values = config_values.new_config(
            version_spec, current_version, features, expected_docs, enabled
        )
        version_spec = values["version_spec"]
        now = datetime.now(UTC).isoformat()
        async with self.store.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('docstore crate_configs'))")
            source_id, config = await configs_store.source_configs(conn, self.doc_type, name)
            configs = list(config.get("crate_configs", []))
            mine = next((c for c in configs if c["version_spec"] == version_spec), None)
            if mine is None:
                used = [c["id"] for c in await configs_store.all_configs(conn, self.doc_type)]
                mine = {
                    "id": max(used, default=0) + 1,
                    "name": name,
                    "version_spec": version_spec,
                    "last_checked": None,
                    "last_populated": None,
                    "created_at": now,
                }
                configs.append(mine)
            mine.update(values, updated_at=now)
            await configs_store.save_configs(conn, source_id, config, configs)
            return int(mine["id"])

    @timed("compat.get_crate_config")
    async def get_crate_config(
        self, name: str, version_spec: str = "latest"
    ) -> dict[str, Any] | None:
        """The config of ``(name, version_spec)`` as the legacy row's columns (timestamps as
        aware datetimes), or None."""
        async with self.store.transaction() as conn:
            for c in await configs_store.all_configs(conn, self.doc_type):
                if c["name"] == name and c["version_spec"] == version_spec:
                    return config_values.as_row(c)
        return None

    @timed("compat.list_crate_configs")
    async def list_crate_configs(self, enabled_only: bool = False) -> list[dict[str, Any]]:
        """Every config as the legacy row's columns, ordered by name and version_spec."""
        async with self.store.transaction() as conn:
            stored = await configs_store.all_configs(conn, self.doc_type)
        configs = [config_values.as_row(c) for c in stored]
        if enabled_only:
            configs = [c for c in configs if c["enabled"]]
        return sorted(configs, key=lambda c: (c["name"], c["version_spec"]))

    @timed("compat.update_crate_config")
    async def update_crate_config(self, config_id: int, **fields: Any) -> bool:
        """Set ``current_version``, ``features``, ``expected_docs``, ``enabled``,
        ``last_checked`` or ``last_populated`` of a config; False if there is none. Values
        of the wrong type raise :class:`ValidationError` before anything is written
        (timestamps: datetimes, naive ones taken as UTC; ``config_id`` an integer, numpy's
        too, never a bool or float)."""
        config_id = config_values.config_id(config_id, "config_id")
        checked = config_values.updates(fields)
        self.store.ensure_writable()
        async with self.store.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('docstore crate_configs'))")
            stored = await configs_store.all_configs(conn, self.doc_type)
            found = next((c for c in stored if c["id"] == config_id), None)
            if found is None:
                return False
            name = found["name"]
            source_id, config = await configs_store.source_configs(conn, self.doc_type, name)
            configs = config["crate_configs"]
            mine = next(c for c in configs if c["id"] == config_id)
            mine.update(checked)
            mine["updated_at"] = datetime.now(UTC).isoformat()
            await configs_store.save_configs(conn, source_id, config, configs)
            return True

    @timed("compat.get_crates_needing_update")
    async def get_crates_needing_update(self, max_age: timedelta) -> list[dict[str, Any]]:
        """Enabled configs never checked or last checked longer than ``max_age`` ago, oldest
        check first (never checked first), then by name. ``max_age``: a non-negative
        timedelta of at most about 1,000 years, else :class:`ValidationError`."""
        cutoff = datetime.now(UTC) - config_values.max_age(max_age)
        due = [
            c
            for c in await self.list_crate_configs(enabled_only=True)
            if c["last_checked"] is None or c["last_checked"] < cutoff
        ]
        return sorted(
            due,
            key=lambda c: (c["last_checked"] is not None, c["last_checked"] or cutoff, c["name"]),
        )

    @timed("compat.create_population_job")
    async def create_population_job(self, crate_config_id: int) -> int | None:
        """A ``pending`` job for a config; returns its id (its own id + 1,000,000,000, which
        :meth:`update_population_job` and :meth:`get_population_job` take; None once that is
        past the legacy ``integer``). ``crate_config_id`` is an integer (numpy's too; a bool
        or float is a :class:`ValidationError`); a config that does not exist raises
        :class:`ValidationError` (legacy: the foreign key refused it)."""
        self.store.ensure_writable()
        crate_config_id = config_values.config_id(crate_config_id, "crate_config_id")
        config = next(
            (c for c in await self.list_crate_configs() if c["id"] == crate_config_id), None
        )
        missing = ValidationError(f"no crate config {crate_config_id}", field="crate_config_id")
        if config is None:
            raise missing

        async def work(conn: Any) -> Any:
            # the source's lock, as sources.delete() takes it: a job is never added to a
            # source being deleted (on Citus no foreign key would refuse it)
            await lock_sources(conn, [(self.doc_type, config["name"])])
            return await conn.fetchrow(
                jobs.CREATE,
                self.doc_type,
                config["name"],
                {"crate_config_id": crate_config_id, "version_spec": config["version_spec"]},
            )

        job = await self.store.run_in_transaction(work)
        if job is None:  # the crate was deleted meanwhile
            raise missing
        return ids.job_id(job["id"], job["legacy_id"])

    @timed("compat.update_population_job")
    async def update_population_job(
        self,
        job_id: int,
        status: str,
        *,
        error_message: str | None = None,
        docs_populated: int | None = None,
    ) -> bool:
        """Move a job (by its legacy id, as :meth:`create_population_job` returned it) to
        ``running`` (sets started_at), ``completed`` or ``failed`` (sets completed_at); False
        if there is no such job. Another status raises :class:`ValidationError`."""
        sql, key, docs_populated = jobs.update_statement(
            job_id, status, error_message, docs_populated
        )
        self.store.ensure_writable()
        result = await self.store.execute(
            sql,
            key,
            status,
            error_message,
            docs_populated,
            self.doc_type,
        )
        return result.split()[-1] != "0"

    @timed("compat.get_population_job")
    async def get_population_job(self, job_id: int) -> dict[str, Any] | None:
        """A job (by its legacy id) as the legacy row's columns (``crate_config_id`` from its
        metadata)."""
        sql, key = jobs.get_statement(job_id)
        row = await self.store.fetchrow(sql, key, self.doc_type)
        return None if row is None else jobs.as_row(row)


# the row types were defined here first: still importable from this module
__all__ = ["CrateDocument", "CrateStats", "LegacyDatabase", "LegacyDoc", "SimilarDoc"]
