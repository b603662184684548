"""``store.sources``: documentation sources (crates, APIs, repos) in ``document_sources``."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from docstore.core.surface import own_reads
from docstore.errors import ValidationError
from docstore.metrics import Metrics, timed
from docstore.models import Source, check_key
from docstore.repositories.documents import DELETE_SOURCE_DOCUMENTS, lock_sources

if TYPE_CHECKING:
    from docstore.core.surface import Queries


async def delete_source_jobs(conn: Any, source_ids: list[int]) -> None:
    """Delete the population jobs of deleted sources (``source_ids``), in the caller's
    transaction. On one node the foreign key's cascade already did; a Citus cluster's
    conversion had to drop that key, so every path that deletes sources calls this."""
    if source_ids:
        await conn.execute(
            "DELETE FROM source_population_jobs WHERE source_id = ANY($1::bigint[])", source_ids
        )


_COLUMNS = (
    "id, doc_type, source_name, config, enabled, last_checked, last_populated, created_at, "
    "updated_at"
)

_UPSERT = f"""
INSERT INTO document_sources AS s (doc_type, source_name, config, enabled, last_checked,
                                   last_populated)
VALUES ($1, $2, $3::jsonb, $4, $5, $6)
ON CONFLICT (doc_type, source_name) DO UPDATE
   SET config = excluded.config, enabled = excluded.enabled,
       last_checked = coalesce(excluded.last_checked, s.last_checked),
       last_populated = coalesce(excluded.last_populated, s.last_populated)
 WHERE (s.config, s.enabled, s.last_checked, s.last_populated)
       IS DISTINCT FROM (excluded.config, excluded.enabled,
                         coalesce(excluded.last_checked, s.last_checked),
                         coalesce(excluded.last_populated, s.last_populated))
RETURNING {_COLUMNS}
"""


def _to_source(record: Any) -> Source:
    """A :class:`Source` from a trusted row (``config`` decoded by the pool's jsonb codec)."""
    return Source.model_construct(**dict(record))


@dataclass
class SourceRepository:
    """Sources keyed by ``(doc_type, source_name)``. Reached as ``store.sources``."""

    store: Queries

    @property
    def _metrics(self) -> Metrics:
        return self.store._metrics

    @timed("sources.upsert")
    async def upsert(self, source: Source | dict[str, Any]) -> Source:
        """Insert or update a source (config and enabled replaced; timestamps kept if None).

        An identical source is not rewritten (``updated_at`` unchanged).
        """
        self.store.ensure_writable()
        if isinstance(source, Source):
            source.check_in_place_edits()  # its config dict may have changed since
            src = source
        else:
            src = Source.model_validate(source)
        record = await self.store.fetchrow(
            _UPSERT,
            src.doc_type,
            src.source_name,
            src.config,  # jsonb: encoded by the pool's codec
            src.enabled,
            src.last_checked,
            src.last_populated,
        )
        if record is None:  # unchanged: the guarded update returned nothing
            with self.store.read_from_primary():  # as written, not as a replica has it
                found = await self.get(src.doc_type, src.source_name)
            assert found is not None
            return found
        return _to_source(record)

    @timed("sources.get")
    async def get(self, doc_type: str, source_name: str) -> Source | None:
        """The source, or None."""
        check_key(doc_type, source_name)
        record = await own_reads(self.store).fetchrow(
            f"SELECT {_COLUMNS} FROM document_sources WHERE doc_type = $1 AND source_name = $2",
            doc_type,
            source_name,
        )
        return None if record is None else _to_source(record)

    @timed("sources.list")
    async def list(self, doc_type: str | None = None, enabled: bool | None = None) -> list[Source]:
        """Sources ordered by (doc_type, source_name), optionally filtered."""
        check_key(doc_type, None, optional=True)
        records = await own_reads(self.store).fetch(
            f"SELECT {_COLUMNS} FROM document_sources"
            " WHERE ($1::text IS NULL OR doc_type = $1) AND ($2::bool IS NULL OR enabled = $2)"
            " ORDER BY doc_type, source_name",
            doc_type,
            enabled,
        )
        return [_to_source(r) for r in records]

    async def _set(self, doc_type: str, source_name: str, assignment: str, *args: Any) -> bool:
        self.store.ensure_writable()
        check_key(doc_type, source_name)
        status = await self.store.execute(
            f"UPDATE document_sources SET {assignment} WHERE doc_type = $1 AND source_name = $2",
            doc_type,
            source_name,
            *args,
        )
        return status == "UPDATE 1"

    @timed("sources.set_enabled")
    async def set_enabled(self, doc_type: str, source_name: str, enabled: bool) -> bool:
        """Enable or disable a source; False if it does not exist."""
        return await self._set(doc_type, source_name, "enabled = $3", enabled)

    @timed("sources.mark_checked")
    async def mark_checked(
        self, doc_type: str, source_name: str, at: datetime | None = None
    ) -> bool:
        """Record that the source was checked for updates (now, or ``at``)."""
        if at is None:  # not coalesce($3, now()): Citus refuses now() inside COALESCE
            return await self._set(doc_type, source_name, "last_checked = now()")
        return await self._set(doc_type, source_name, "last_checked = $3", at)

    @timed("sources.mark_populated")
    async def mark_populated(
        self, doc_type: str, source_name: str, at: datetime | None = None
    ) -> bool:
        """Record that the source's documents were (re)populated (now, or ``at``)."""
        if at is None:
            return await self._set(doc_type, source_name, "last_populated = now()")
        return await self._set(doc_type, source_name, "last_populated = $3", at)

    @timed("sources.needing_update")
    async def needing_update(self, older_than: timedelta) -> builtins.list[Source]:
        """Enabled sources never checked, or last checked longer than ``older_than`` ago."""
        records = await self.store.fetch(
            f"SELECT {_COLUMNS} FROM document_sources WHERE enabled"
            " AND (last_checked IS NULL OR last_checked < now() - $1::interval)"
            " ORDER BY last_checked NULLS FIRST, doc_type, source_name",
            older_than,
        )
        return [_to_source(r) for r in records]

    @timed("sources.delete")
    async def delete(
        self, doc_type: str, source_name: str, *, with_documents: bool = False
    ) -> bool:
        """Delete a source; False if it did not exist.

        A source that still has documents is refused with :class:`ValidationError` unless
        ``with_documents=True``, which deletes them in the same transaction. Its population
        jobs go with it (also on a Citus cluster, where no foreign key can cascade).
        """
        self.store.ensure_writable()
        check_key(doc_type, source_name)

        async def work(conn: Any) -> bool:
            await lock_sources(conn, [(doc_type, source_name)])  # no upsert adds documents now
            docs = await conn.fetchval(
                "SELECT count(*) FROM documents WHERE doc_type = $1 AND source_name = $2",
                doc_type,
                source_name,
            )
            if docs and not with_documents:
                raise ValidationError(
                    f"source {doc_type}/{source_name} still has {docs} documents: delete them "
                    "first or pass with_documents=True",
                    key=(doc_type, source_name),
                )
            if docs:
                await conn.execute(DELETE_SOURCE_DOCUMENTS, doc_type, source_name)
            deleted = await conn.fetchval(
                "DELETE FROM document_sources WHERE doc_type = $1 AND source_name = $2"
                " RETURNING id",
                doc_type,
                source_name,
            )
            if deleted is None:
                return False
            await delete_source_jobs(conn, [deleted])
            return True

        return await self.store.run_in_transaction(work)

    @timed("sources.refresh_stats")
    async def refresh_stats(self, doc_type: str, source_name: str) -> Source | None:
        """Write ``total_docs`` and ``total_tokens`` into the source's config (as the legacy
        ``crates`` table kept them); returns the updated source, or None if it doesn't exist.
        """
        self.store.ensure_writable()
        check_key(doc_type, source_name)
        if self.store.distributed:
            return await self._refresh_stats_distributed(doc_type, source_name)
        record = await self.store.fetchrow(
            f"""UPDATE document_sources s
                   SET config = s.config || jsonb_build_object(
                           'total_docs', t.docs, 'total_tokens', t.tokens)
                  FROM (SELECT count(*) AS docs, coalesce(sum(token_count), 0) AS tokens
                          FROM documents WHERE doc_type = $1 AND source_name = $2) t
                 WHERE s.doc_type = $1 AND s.source_name = $2
             RETURNING {", ".join("s." + c.strip() for c in _COLUMNS.split(","))}""",
            doc_type,
            source_name,
        )
        return None if record is None else _to_source(record)

    async def _refresh_stats_distributed(self, doc_type: str, source_name: str) -> Source | None:
        """:meth:`refresh_stats` on Citus, which refuses STABLE functions over columns
        (``jsonb_build_object``) in an UPDATE: the totals are read, then written as a value,
        in one transaction."""

        async def work(conn: Any) -> Any:
            totals = await conn.fetchrow(
                "SELECT count(*) AS total_docs, coalesce(sum(token_count), 0) AS total_tokens"
                " FROM documents WHERE doc_type = $1 AND source_name = $2",
                doc_type,
                source_name,
            )
            return await conn.fetchrow(
                f"UPDATE document_sources SET config = config || $3::jsonb"
                f" WHERE doc_type = $1 AND source_name = $2 RETURNING {_COLUMNS}",
                doc_type,
                source_name,
                {k: int(v) for k, v in totals.items()},
            )

        record = await self.store.run_in_transaction(work)
        return None if record is None else _to_source(record)
