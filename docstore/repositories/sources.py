"""``store.sources``: documentation sources (crates, APIs, repos) in ``document_sources``."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from docstore.codecs import keys_param
from docstore.core.surface import own_reads
from docstore.errors import QueryError, ValidationError
from docstore.metrics import Metrics, timed
from docstore.models import Source, aware_utc, check_key, flag
from docstore.repositories.documents import DELETE_SOURCE_DOCUMENTS, lock_sources
from docstore.storable import in_utc, json_object

if TYPE_CHECKING:
    from docstore.core.surface import Queries


async def delete_source_jobs(conn: Any, source_ids: list[int]) -> None:
    """Delete the population jobs of deleted sources (``source_ids``), in the caller's
    transaction. On one node the foreign key's cascade already did; a Citus cluster's
    conversion had to drop that key, so every path that deletes sources calls this (the ids
    as text[]: :func:`docstore.codecs.keys_param`)."""
    if source_ids:
        await conn.execute(
            "DELETE FROM source_population_jobs WHERE source_id = ANY($1::text[]::bigint[])",
            keys_param(source_ids),
        )


_COLUMNS = (
    "id, doc_type, source_name, config, enabled, last_checked, last_populated, created_at, "
    "updated_at"
)

# config compared as jsonb's text: jsonb's equality takes 1 and 1.0 for one number, so such a
# change was reported unchanged and never written
_UPSERT = f"""
INSERT INTO document_sources AS s (doc_type, source_name, config, enabled, last_checked,
                                   last_populated)
VALUES ($1, $2, $3::jsonb, $4, $5, $6)
ON CONFLICT (doc_type, source_name) DO UPDATE
   SET config = excluded.config, enabled = excluded.enabled,
       last_checked = coalesce(excluded.last_checked, s.last_checked),
       last_populated = coalesce(excluded.last_populated, s.last_populated)
 WHERE (s.config::text, s.enabled, s.last_checked, s.last_populated)
       IS DISTINCT FROM (excluded.config::text, excluded.enabled,
                         coalesce(excluded.last_checked, s.last_checked),
                         coalesce(excluded.last_populated, s.last_populated))
RETURNING {_COLUMNS}
"""

_SELECT_BY_KEY = f"SELECT {_COLUMNS} FROM document_sources WHERE doc_type = $1 AND source_name = $2"
_SOURCE_ROW = "SELECT id FROM document_sources WHERE doc_type = $1 AND source_name = $2 FOR UPDATE"
_UPSERT_ROUNDS = 3  # upsert(): write-and-read rounds before a vanishing row is an error


MAX_OLDER_THAN = timedelta(days=365_250)
"""``needing_update(older_than)`` at most about 1,000 years: ``now() - older_than`` must stay
within PostgreSQL's timestamps (4713 BC; ``timedelta.max`` is 2.7 million years)."""


def _timestamp(value: Any) -> datetime:
    """A ``mark_*(at=…)`` time: a datetime, naive read as UTC (as :class:`Source` reads it),
    that UTC keeps within the years 1–9999."""
    if not isinstance(value, datetime):
        raise ValidationError(f"at must be a datetime, got {type(value).__name__}", field="at")
    try:
        return in_utc(cast(datetime, aware_utc(value)))
    except ValueError as exc:
        raise ValidationError(f"at {exc}", field="at") from None


async def source_totals(conn: Any, doc_type: str, source_name: str) -> dict[str, int]:
    """The source's ``total_docs``/``total_tokens``, counted from its documents."""
    totals = await conn.fetchrow(
        "SELECT count(*) AS total_docs, coalesce(sum(token_count), 0) AS total_tokens"
        " FROM documents WHERE doc_type = $1 AND source_name = $2",
        doc_type,
        source_name,
    )
    return {k: int(v) for k, v in totals.items()}


async def write_totals(
    conn: Any, doc_type: str, source_name: str, totals: dict[str, int] | None = None
) -> Any:
    """Write the source's ``total_docs``/``total_tokens`` (``totals``, else
    :func:`source_totals`) into its config, read and then written as a value, in the caller's
    transaction; returns the source's row, or None without one. The form a Citus cluster
    accepts (it refuses STABLE functions such as ``jsonb_build_object`` over columns in an
    UPDATE); also the compat layer's writes'."""
    if totals is None:
        totals = await source_totals(conn, doc_type, source_name)
    return await conn.fetchrow(
        "UPDATE document_sources SET config = config || $3::jsonb"
        f" WHERE doc_type = $1 AND source_name = $2 RETURNING {_COLUMNS}",
        doc_type,
        source_name,
        totals,
    )


_TIMESTAMPS = ("last_checked", "last_populated", "created_at", "updated_at")


def _to_source(record: Any) -> Source:
    """A :class:`Source` from a trusted row (``config`` decoded by the pool's jsonb codec).
    Its timestamps are aware UTC, ``infinity`` too (asyncpg reads it as a naive
    ``datetime.max``, which would not compare with the others)."""
    row = dict(record)
    for name in _TIMESTAMPS:
        row[name] = aware_utc(row.get(name))
    return Source.from_row(row)


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

        An identical source is not rewritten (``updated_at`` unchanged). A config edited in
        place since the source was made is checked again, and stored as the constructor would
        store it (a ``UserDict`` put into it becomes a JSON object).
        """
        self.store.ensure_writable()
        if isinstance(source, Source):
            source.check_in_place_edits()  # its config dict may have changed since
            src = source
        else:
            src = Source.model_validate(source)
        # what the check accepted, as the constructor stores it: a mapping that is not a dict
        # (UserDict, mappingproxy) put in place made a dict, which the jsonb codec can write
        config = json_object(src.config)
        values = (
            src.doc_type,
            src.source_name,
            config,  # jsonb: encoded by the pool's codec
            src.enabled,
            src.last_checked,
            src.last_populated,
        )

        async def work(conn: Any) -> Any:
            for _ in range(_UPSERT_ROUNDS):
                record = await conn.fetchrow(_UPSERT, *values)
                if record is None:  # unchanged: the guarded update returned nothing
                    record = await conn.fetchrow(_SELECT_BY_KEY, src.doc_type, src.source_name)
                if record is not None:  # else deleted meanwhile: the next round inserts it
                    return record
            raise QueryError(
                f"source {src.doc_type}/{src.source_name} was deleted by another writer each "
                f"time it was written ({_UPSERT_ROUNDS} times)"
            )

        # the same values written twice leave the same row: a lost COMMIT is simply redone
        return _to_source(await self.store.run_in_transaction(work, retry_in_doubt=True))

    @timed("sources.get")
    async def get(self, doc_type: str, source_name: str) -> Source | None:
        """The source, or None."""
        check_key(doc_type, source_name)
        record = await own_reads(self.store).fetchrow(_SELECT_BY_KEY, doc_type, source_name)
        return None if record is None else _to_source(record)

    @timed("sources.list")
    async def list(self, doc_type: str | None = None, enabled: bool | None = None) -> list[Source]:
        """Sources ordered by (doc_type, source_name), optionally filtered."""
        check_key(doc_type, None, optional=True)
        flag(enabled, "enabled", optional=True)
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
        return await self._set(doc_type, source_name, "enabled = $3", flag(enabled, "enabled"))

    @timed("sources.mark_checked")
    async def mark_checked(
        self, doc_type: str, source_name: str, at: datetime | None = None
    ) -> bool:
        """Record that the source was checked for updates (now, or ``at``: a naive datetime
        is UTC, as in :class:`Source`)."""
        if at is None:  # not coalesce($3, now()): Citus refuses now() inside COALESCE
            return await self._set(doc_type, source_name, "last_checked = now()")
        return await self._set(doc_type, source_name, "last_checked = $3", _timestamp(at))

    @timed("sources.mark_populated")
    async def mark_populated(
        self, doc_type: str, source_name: str, at: datetime | None = None
    ) -> bool:
        """Record that the source's documents were (re)populated (now, or ``at``: a naive
        datetime is UTC)."""
        if at is None:
            return await self._set(doc_type, source_name, "last_populated = now()")
        return await self._set(doc_type, source_name, "last_populated = $3", _timestamp(at))

    @timed("sources.needing_update")
    async def needing_update(self, older_than: timedelta) -> builtins.list[Source]:
        """Enabled sources never checked, or last checked longer than ``older_than`` ago
        (a timedelta of at most :data:`MAX_OLDER_THAN` either way)."""
        if not isinstance(older_than, timedelta):
            raise ValidationError(
                f"older_than must be a timedelta, got {type(older_than).__name__}",
                field="older_than",
            )
        if abs(older_than) > MAX_OLDER_THAN:
            raise ValidationError(
                f"older_than must be at most {MAX_OLDER_THAN.days:,} days (about 1,000 years)",
                field="older_than",
            )
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
        """Delete a source; False if it did not exist (then nothing is deleted, its documents
        neither: :meth:`DocumentRepository.delete_source` deletes documents without a source).

        A source that still has documents is refused with :class:`ValidationError` unless
        ``with_documents=True``, which deletes them in the same transaction. Its population
        jobs go with it (also on a Citus cluster, where no foreign key can cascade).
        """
        self.store.ensure_writable()
        check_key(doc_type, source_name)
        flag(with_documents, "with_documents")

        async def work(conn: Any) -> bool:
            await lock_sources(conn, [(doc_type, source_name)])  # no upsert adds documents now
            if await conn.fetchval(_SOURCE_ROW, doc_type, source_name) is None:
                return False  # no source: its documents (if any) are left alone
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
        sql = f"""UPDATE document_sources s
                   SET config = s.config || jsonb_build_object(
                           'total_docs', t.docs, 'total_tokens', t.tokens)
                  FROM (SELECT count(*) AS docs, coalesce(sum(token_count), 0) AS tokens
                          FROM documents WHERE doc_type = $1 AND source_name = $2) t
                 WHERE s.doc_type = $1 AND s.source_name = $2
             RETURNING {", ".join("s." + c.strip() for c in _COLUMNS.split(","))}"""
        record = await self.store.run(  # recounted and rewritten: safe to run again
            lambda conn: conn.fetchrow(sql, doc_type, source_name), retry_in_doubt=True
        )
        return None if record is None else _to_source(record)

    async def _refresh_stats_distributed(self, doc_type: str, source_name: str) -> Source | None:
        """:meth:`refresh_stats` on Citus, which refuses STABLE functions over columns
        (``jsonb_build_object``) in an UPDATE: the totals are read, then written as a value,
        in one transaction."""

        record = await self.store.run_in_transaction(
            lambda conn: write_totals(conn, doc_type, source_name), retry_in_doubt=True
        )
        return None if record is None else _to_source(record)
