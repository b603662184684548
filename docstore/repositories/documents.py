"""``store.documents``: typed access to the ``documents`` table, with COPY-speed batch upsert.

How :meth:`DocumentRepository.upsert_many` writes a batch (chosen by measurement, see
``bench/upsert.py`` and ``bench/RESULTS.md``), all in one transaction:

1. every row is validated before anything is sent (a whole list up front);
2. the batch takes the **source lock** of each ``(doc_type, source_name)`` it writes
   (:func:`lock_sources`, a transaction-level advisory lock);
3. one query finds which of the batch's keys already exist (keys only, no vectors);
4. new rows go straight into ``documents`` with binary ``COPY`` (the fastest way in);
5. existing rows are compared with what is stored by a pipelined ``fetchmany`` of one
   ``SELECT … IS DISTINCT FROM`` per row, so an identical row is not rewritten: no new tuple,
   no TOAST rewrite of its 12 KB vector, ``updated_at`` unchanged (an ``UPDATE`` guarded the
   same way measured ~1.5x slower on re-upserts of unchanged rows, and could not tell an
   identical row from a deleted one without a second query);
6. the rows that differ go through a pipelined ``UPDATE … RETURNING`` guarded by ``IS
   DISTINCT FROM`` (one ``UPDATE … FROM unnest(…)`` measured 10x slower than the pipelined
   statements). A row the comparison or the ``UPDATE`` no longer finds was deleted since step
   3 by a writer that does not take the source lock (raw SQL, another application): it is
   inserted again, never counted as unchanged.

Rows are turned into wire values lazily, while asyncpg streams them, so client-side encoding
overlaps the server's work.

Why this is long: the write path above is one algorithm (lock, probe, COPY, compare, guarded
update, re-insert) whose steps, and the races each one closes, read best in one file beside
the repository that runs it.

**Concurrency.** Every docstore write to a source — a batch of ``upsert_many``,
``delete_source``, ``sources.delete(with_documents=True)`` — holds that source's lock for
its transaction, so docstore's writers of one source run one after the other (writers of
different sources wait for each other only when their sources share one of the 256 lock
buckets). Each batch is therefore linearizable: its
:class:`UpsertResult` describes what is in the database when its transaction commits, and no
concurrent ``delete_source`` can interleave with it. Row locks are not needed for that, so
re-upserting unchanged rows still writes nothing (a row lock would dirty every page and, after
a checkpoint, log a full-page image of each). If a writer that does not take the lock inserts
one of the "new" keys first, the COPY fails with a unique violation inside a savepoint and
those rows go through ``INSERT … ON CONFLICT DO UPDATE`` instead, so overlapping writers
never fail.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from docstore.codecs import EncodedVector, encode_vector, keys_param
from docstore.core.surface import own_reads
from docstore.errors import QueryError, ValidationError
from docstore.failures import is_unique_violation
from docstore.metrics import Metrics, timed
from docstore.models import (
    Document,
    SourceStats,
    UpsertResult,
    bounded_int,
    check_key,
    flag,
    row_id,
)

if TYPE_CHECKING:
    from docstore.core.surface import Queries

DEFAULT_BATCH_SIZE = 2000
MAX_BATCH_SIZE = 1_000_000  # rows a batch of upsert_many/iter may hold in memory
_COLUMNS = (
    "id, doc_type, source_name, doc_path, content, metadata, embedding, token_count, "
    "created_at, updated_at"
)
# A row's bytes as stored: each column's stored size (an out-of-line value's TOAST size, read
# from its pointer) plus the tuple header. pg_column_size(d.*) would build the whole row as a
# value, fetching and decompressing every out-of-line embedding from TOAST to do so.
_STORED_ROW_BYTES = " + ".join(
    ["24"]
    + [
        f"coalesce(pg_column_size(d.{c}), 0)"
        for c in (*_COLUMNS.replace(" ", "").split(","), "embedding_half")
    ]
)
STATS = f"""
SELECT doc_type, source_name, count(*) AS documents, count(embedding) AS with_embedding,
       count(*) - count(embedding) AS without_embedding,
       coalesce(sum(token_count), 0) AS tokens,
       coalesce(sum(octet_length(content)), 0) AS content_bytes,
       coalesce(sum({_STORED_ROW_BYTES}), 0) AS stored_bytes
  FROM documents d GROUP BY doc_type, source_name ORDER BY doc_type, source_name
"""
_CUSTOM_PLAN = "SET LOCAL plan_cache_mode = force_custom_plan"
_DEFAULT_PLAN = "SET LOCAL plan_cache_mode TO DEFAULT"
_DATA_COLUMNS = (
    "doc_type",
    "source_name",
    "doc_path",
    "content",
    "metadata",
    "embedding",
    "token_count",
)

# Positions (1-based) of the batch's keys that exist / do not exist. Each key is one probe of the
# unique index: a LATERAL sub-select with LIMIT is never turned into a join, so the plan cannot
# become a hash join over a sequential scan of the whole table — a plan a pooled connection
# would otherwise keep (as a generic plan) from when the table was small.
_PROBE = """
SELECT k.ord
  FROM unnest($1::text[], $2::text[], $3::text[])
       WITH ORDINALITY AS k(doc_type, source_name, doc_path, ord)
  LEFT JOIN LATERAL (
       SELECT true AS found FROM documents d
        WHERE d.doc_type = k.doc_type AND d.source_name = k.source_name
          AND d.doc_path = k.doc_path
        LIMIT 1) AS p ON true
 WHERE p.found IS {}
"""
_SELECT_EXISTING = _PROBE.format("NOT NULL")
_SELECT_MISSING = _PROBE.format("NULL")

# On a Citus cluster (documents distributed by source_name) the probe above is refused ("Limit
# clause is currently unsupported when a lateral subquery references a column from a table
# function"): there the batch's keys are joined with documents on the shards, and the keys
# the join does not return are the missing ones. Shards are hash partitions, so each shard's
# join reads only its own sources' rows through the unique index.
_SELECT_EXISTING_DISTRIBUTED = """
SELECT k.ord
  FROM unnest($1::text[], $2::text[], $3::text[])
       WITH ORDINALITY AS k(doc_type, source_name, doc_path, ord)
  JOIN documents d
    ON d.source_name = k.source_name AND d.doc_type = k.doc_type AND d.doc_path = k.doc_path
"""

# Source locks are transaction-level advisory locks in the two-key form (the namespace
# SOURCE_LOCK_SPACE, a bucket): taken in ascending order (the sub-select with OFFSET 0 fixes the
# order the function is called in), so two batches never wait for each other in a cycle.
# Sources share SOURCE_LOCK_BUCKETS buckets, so a transaction holds at most that many locks
# however many sources it writes: one lock per source filled PostgreSQL's shared lock table
# (max_locks_per_transaction x max_connections, 6,400 by default) at ~15,000 sources in one
# atomic upsert_many, failing it and every other session's locks ("out of shared memory").
# Two sources in one bucket only make their writers take turns.
SOURCE_LOCK_SPACE = 0x646F6373  # "docs"
SOURCE_LOCK_BUCKETS = 256
_LOCK_SOURCES = f"""
SELECT count(pg_advisory_xact_lock({SOURCE_LOCK_SPACE}, k))
  FROM (SELECT k FROM unnest($1::text[]::int[]) AS k ORDER BY k OFFSET 0) AS s
"""  # the buckets as text[]: asyncpg would look int[] up in the catalog on each new connection


# One statement per existing row, pipelined: is the stored row different? (Reading it costs the
# same as an UPDATE that finds nothing to do, and an absent row returns nothing.) metadata is
# compared as jsonb's text: jsonb's own equality takes 1 and 1.0 for the same number, so a
# change from one to the other was reported unchanged and never written.
_COMPARE = """
SELECT d.doc_type, d.source_name, d.doc_path,
       (d.content, d.metadata::text, d.embedding, d.token_count)
       IS DISTINCT FROM ($4, $5::jsonb::text, $6::vector, $7::integer) AS changed
  FROM documents d
 WHERE d.doc_type = $1 AND d.source_name = $2 AND d.doc_path = $3
"""

_GUARDED_UPDATE = """
UPDATE documents AS d
   SET content = $4, metadata = $5::jsonb, embedding = $6, token_count = $7
 WHERE d.doc_type = $1 AND d.source_name = $2 AND d.doc_path = $3
   AND (d.content, d.metadata::text, d.embedding, d.token_count)
       IS DISTINCT FROM ($4, $5::jsonb::text, $6::vector, $7::integer)
RETURNING d.doc_type, d.source_name, d.doc_path
"""

_SELECT_BY_KEY = (
    f"SELECT {_COLUMNS} FROM documents WHERE doc_type = $1 AND source_name = $2 AND doc_path = $3"
)
_UPSERT_ROUNDS = 3  # upsert(): write-and-read rounds before a vanishing row is an error

DELETE_SOURCE_DOCUMENTS = "DELETE FROM documents WHERE doc_type = $1 AND source_name = $2"

# The rows of a batch whose COPY met a racing inserter's key: inserted as _copy_new would
# have (a created_at/updated_at the caller gave is kept, NULL means the column's default),
# and a row that now exists is updated like _GUARDED_UPDATE does (timestamps left to the
# trigger, created_at never rewritten).
_GUARDED_UPSERT = """
INSERT INTO documents AS d (doc_type, source_name, doc_path, content, metadata, embedding,
                            token_count, created_at, updated_at)
SELECT doc_type, source_name, doc_path, content, metadata, embedding, token_count,
       coalesce(created_at, CURRENT_TIMESTAMP), coalesce(updated_at, CURRENT_TIMESTAMP)
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::vector[],
              $7::int[], $8::timestamp[], $9::timestamp[])
       AS s(doc_type, source_name, doc_path, content, metadata, embedding, token_count,
            created_at, updated_at)
ON CONFLICT (doc_type, source_name, doc_path) DO UPDATE
   SET content = excluded.content, metadata = excluded.metadata,
       embedding = excluded.embedding, token_count = excluded.token_count
 WHERE (d.content, d.metadata::text, d.embedding, d.token_count)
       IS DISTINCT FROM (excluded.content, excluded.metadata::text, excluded.embedding,
                         excluded.token_count)
RETURNING (xmax = 0) AS inserted
"""


def source_lock_key(doc_type: str, source_name: str) -> int:
    """The lock bucket of one source (0 to ``SOURCE_LOCK_BUCKETS - 1``): a stable hash of its
    key, taken as ``pg_advisory_xact_lock(SOURCE_LOCK_SPACE, bucket)``.

    Stable across processes and versions (not Python's salted ``hash``); two sources in one
    bucket only make their writers wait for each other.
    """
    digest = hashlib.blake2b(
        f"{doc_type}\x1f{source_name}".encode(), digest_size=8, person=b"docstore.src"
    ).digest()
    return int.from_bytes(digest, "big") % SOURCE_LOCK_BUCKETS


async def lock_sources(conn: asyncpg.Connection, sources: Iterable[tuple[str, str]]) -> None:
    """Take the source lock of each ``(doc_type, source_name)`` for the current transaction.

    Every docstore write to a source holds its lock until commit, which serializes writers of
    the same source (see the module docstring). Must run inside a transaction.
    """
    keys = sorted({source_lock_key(*source) for source in sources})
    if keys:
        await conn.fetchval(_LOCK_SOURCES, keys_param(keys))


def validate(item: Document | dict[str, Any], index: int, dim: int) -> Document:
    """Validate one input row (a Document or a dict) against the configured dimension.

    Raises :class:`ValidationError` naming the row's index and key.
    """
    try:
        doc = item if isinstance(item, Document) else Document.model_validate(item)
    except ValidationError as exc:
        raise ValidationError(
            f"row {index}: {exc}", field=exc.field, index=index, key=exc.key
        ) from None
    if not doc.embedding_checked:
        # A Document made with model_construct (read back from the database, or built so by a
        # caller) skipped every rule: a vector stored before them (a migrated zero vector), a
        # negative token_count, an empty doc_path must not slip in. A deep copy's or an
        # unpickled Document's array is writable again, so maybe edited. Validated again whole.
        given = doc.__dict__
        fields = {name: given[name] for name in Document.model_fields if name in given}
        try:
            doc = Document(**fields)
        except ValidationError as exc:
            raise ValidationError(
                f"row {index}: {exc}",
                field=exc.field,
                index=index,
                key=exc.key,
            ) from None
    if doc.embedding is not None and doc.embedding.shape[0] != dim:
        raise ValidationError(
            f"row {index} ({'/'.join(doc.key)}): embedding has {doc.embedding.shape[0]} "
            f"dimensions, expected {dim} (DOCSTORE_EMBEDDING_DIM)",
            field="embedding",
            index=index,
            key=doc.key,
        )
    try:
        doc.seal()  # its metadata dict may have been edited in place since it was checked
    except ValidationError as exc:
        raise ValidationError(
            f"row {index}: {exc}", field=exc.field, index=index, key=exc.key
        ) from None
    return doc


def _many(docs: Any) -> None:
    """``upsert_many``'s ``docs``: an (async) iterable of rows, not one row nor anything else."""
    one = isinstance(docs, str | bytes | Mapping | Document)  # iterable, but not rows
    if one or not isinstance(docs, Iterable | AsyncIterable):
        raise ValidationError(
            "docs must be a list, iterable or async iterable of Documents or dicts (one"
            f" document: upsert()), got {type(docs).__name__}",
            field="docs",
        )


def _values(doc: Document) -> tuple[Any, ...]:
    """The seven data columns of a validated document, in ``_DATA_COLUMNS`` order.

    The embedding stays a numpy array and the metadata the JSON text :meth:`Document.seal`
    checked (or the dict): the connection's codecs (:mod:`docstore.codecs`) encode them as
    asyncpg sends the row, exactly as for a hand-written COPY.
    """
    return (
        doc.doc_type,
        doc.source_name,
        doc.doc_path,
        doc.content,
        doc.take_metadata_json(),  # the text seal() checked, or the dict
        doc.embedding,
        doc.token_count,
    )


def dedupe(docs: Iterable[Document]) -> tuple[list[Document], int]:
    """Keep the last document of each key (in input order of those last documents)."""
    latest: dict[tuple[str, str, str], Document] = {}
    count = 0
    for doc in docs:
        count += 1
        latest.pop(doc.key, None)
        latest[doc.key] = doc
    return list(latest.values()), count - len(latest)


def _first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def _columns(docs: Sequence[Document]) -> list[list[Any]]:
    """Column arrays for ``_GUARDED_UPSERT``'s ``unnest``: the data columns, then created_at
    and updated_at (None: the default); embeddings pre-encoded so asyncpg binds them as
    scalars."""
    columns = [list(col) for col in zip(*map(_values, docs), strict=True)]
    columns[5] = [None if e is None else EncodedVector(encode_vector(e)) for e in columns[5]]
    return [*columns, [d.created_at for d in docs], [d.updated_at for d in docs]]


async def _copy_new(conn: asyncpg.Connection, docs: list[Document]) -> None:
    """Binary COPY of brand-new rows, grouped by which timestamps the caller supplied.

    Rows are encoded lazily while asyncpg streams them, so encoding overlaps server work.
    """
    groups: dict[tuple[bool, bool], list[Document]] = {}
    for doc in docs:
        groups.setdefault((doc.created_at is not None, doc.updated_at is not None), []).append(doc)
    for (has_created, has_updated), group in groups.items():
        columns = list(_DATA_COLUMNS)
        columns += ["created_at"] if has_created else []
        columns += ["updated_at"] if has_updated else []
        records = (
            _values(doc)
            + ((doc.created_at,) if has_created else ())
            + ((doc.updated_at,) if has_updated else ())
            for doc in group
        )
        await conn.copy_records_to_table("documents", records=records, columns=columns)


async def _positions(
    conn: asyncpg.Connection,
    keyed: Sequence[tuple[tuple[str, str, str], Any]],
    *,
    present: bool,
    distributed: bool,
) -> list[int]:
    """0-based positions in ``keyed`` of the keys that are (``present``) or are not in
    ``documents``."""
    columns = _key_columns(keyed)
    if not distributed:
        # Planned for the table as it is now, every batch: a generic plan (a prepared
        # statement's after five runs on a pooled connection) made while the table was empty
        # — a load's first batch after a TRUNCATE, or on a new table analyzed empty — probes
        # each key with a sequential scan, and the connection kept it while the load filled
        # the table: every later batch scanned the whole table once per key (5,000 documents
        # into an emptied table: 2.2 s instead of 0.5 s). Only the probe: the per-row
        # statements after it keep their cached plans (a plan a row would cost more).
        await conn.execute(_CUSTOM_PLAN)
        rows = await conn.fetch(_SELECT_EXISTING if present else _SELECT_MISSING, *columns)
        await conn.execute(_DEFAULT_PLAN)
        return [r[0] - 1 for r in rows]
    found = {r[0] - 1 for r in await conn.fetch(_SELECT_EXISTING_DISTRIBUTED, *columns)}
    return sorted(found) if present else [i for i in range(len(keyed)) if i not in found]


async def write_batch(
    conn: asyncpg.Connection, docs: list[Document], *, distributed: bool = False
) -> UpsertResult:
    """Upsert validated, de-duplicated documents on ``conn`` inside the caller's transaction
    (``distributed``: ``documents`` is a Citus distributed table)."""
    if not docs:
        return UpsertResult()
    keyed = sorted(((d.key, d) for d in docs), key=_first)  # one row-lock order for all callers
    await lock_sources(conn, {key[:2] for key, _ in keyed})
    existing = set(await _positions(conn, keyed, present=True, distributed=distributed))
    new = [d for i, (_, d) in enumerate(keyed) if i not in existing]
    old = [(k, d) for i, (k, d) in enumerate(keyed) if i in existing]
    result = UpsertResult()
    if new:
        result += await _insert_new(conn, new)
    if old:
        result += await _update_existing(conn, old, distributed)
    return result


async def _update_existing(
    conn: asyncpg.Connection,
    old: list[tuple[tuple[str, str, str], Document]],
    distributed: bool,
) -> UpsertResult:
    """Rows the lookup found: compare each with what is stored, rewrite only those that
    differ, and insert again any a writer without the source lock deleted meanwhile."""
    result = UpsertResult()
    stored = {
        (r["doc_type"], r["source_name"], r["doc_path"]): r["changed"]
        for r in await conn.fetchmany(_COMPARE, (_values(d) for _, d in old))
    }
    result.unchanged += sum(1 for changed in stored.values() if not changed)
    changed = [(k, d) for k, d in old if stored.get(k)]
    gone = [d for k, d in old if k not in stored]
    if changed:
        rows = await conn.fetchmany(_GUARDED_UPDATE, (_values(d) for _, d in changed))
        updated = {tuple(r) for r in rows}
        result.updated += len(updated)
        rest = [(k, d) for k, d in changed if k not in updated]
        if rest:  # changed by another writer meanwhile: to these values, or deleted
            missing = await _positions(conn, rest, present=False, distributed=distributed)
            vanished = [rest[i][1] for i in missing]
            result.unchanged += len(rest) - len(vanished)
            gone += vanished
    if gone:  # deleted since the lookup by a writer without the source lock
        result += await _insert_new(conn, gone)
    return result


def _key_columns(keyed: Sequence[tuple[tuple[str, str, str], Any]]) -> list[list[str]]:
    """The three key columns of ``(key, doc)`` pairs, as arrays for ``unnest``."""
    return [list(c) for c in zip(*(key for key, _ in keyed), strict=True)]


async def _insert_new(conn: asyncpg.Connection, new: list[Document]) -> UpsertResult:
    """COPY rows the lookup did not find; ``ON CONFLICT`` if a writer got there first."""
    try:
        async with conn.transaction():  # savepoint: a racing inserter can't abort the batch
            await _copy_new(conn, new)
    except asyncpg.PostgresError as exc:
        if not is_unique_violation(exc):
            raise
        return _upsert_counts(await conn.fetch(_GUARDED_UPSERT, *_columns(new)), len(new))
    return UpsertResult(inserted=len(new))


def _upsert_counts(flags: list[Any], sent: int) -> UpsertResult:
    """Counts of a ``_GUARDED_UPSERT`` that sent ``sent`` rows and returned ``flags``."""
    inserted = sum(1 for f in flags if f["inserted"])
    return UpsertResult(
        inserted=inserted, updated=len(flags) - inserted, unchanged=sent - len(flags)
    )


async def delete_source_documents(conn: asyncpg.Connection, doc_type: str, source_name: str) -> int:
    """Delete one source's documents under its source lock (inside the caller's transaction),
    so no batch of a concurrent upsert interleaves with it; returns how many."""
    await lock_sources(conn, [(doc_type, source_name)])
    status = await conn.execute(DELETE_SOURCE_DOCUMENTS, doc_type, source_name)
    return int(status.rsplit(" ", 1)[1])


def _record_to_document(record: Any) -> Document:
    """A :class:`Document` from a trusted row (``metadata`` decoded by the pool's codec; SQL
    NULL, which only another writer stores, as the model's default ``{}``)."""
    fields = dict(record)
    if fields.get("metadata", {}) is None:
        fields["metadata"] = {}
    return Document.from_row(fields)


def _scope(doc_type: str | None, source_name: str | None, first: int = 1) -> tuple[str, list[Any]]:
    clauses, params = [], []
    for column, value in (("doc_type", doc_type), ("source_name", source_name)):
        if value is not None:
            params.append(value)
            clauses.append(f"{column} = ${first + len(params) - 1}")
    return (" AND ".join(clauses) or "TRUE"), params


@dataclass
class DocumentRepository:
    """Documents keyed by ``(doc_type, source_name, doc_path)``. Reached as ``store.documents``."""

    store: Queries

    @property
    def _dim(self) -> int:
        return self.store.embedding_dim

    @property
    def _metrics(self) -> Metrics:
        return self.store._metrics

    # -- reads -----------------------------------------------------------------------------
    @timed("documents.get")
    async def get(self, id: int) -> Document | None:
        """The document with this id, or None."""
        id = row_id(id, bigint=self.store.distributed)
        record = await own_reads(self.store).fetchrow(
            f"SELECT {_COLUMNS} FROM documents WHERE id = $1", id
        )
        return None if record is None else _record_to_document(record)

    @timed("documents.get_by_key")
    async def get_by_key(self, doc_type: str, source_name: str, doc_path: str) -> Document | None:
        """The document with this natural key, or None."""
        check_key(doc_type, source_name, doc_path)
        record = await own_reads(self.store).fetchrow(
            _SELECT_BY_KEY, doc_type, source_name, doc_path
        )
        return None if record is None else _record_to_document(record)

    @timed("documents.count")
    async def count(self, doc_type: str | None = None, source_name: str | None = None) -> int:
        """Number of documents, optionally of one doc_type and/or source."""
        check_key(doc_type, source_name, optional=True)
        where, params = _scope(doc_type, source_name)
        return int(
            await own_reads(self.store).fetchval(
                f"SELECT count(*) FROM documents WHERE {where}", *params
            )
        )

    async def iter(
        self,
        doc_type: str | None = None,
        source_name: str | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> AsyncIterator[Document]:
        """Every matching document in id order, fetched ``batch_size`` at a time.

        Keyset pagination (``WHERE id > last``): constant memory and no long-held cursor or
        transaction, whatever the table size.
        """
        batch_size = bounded_int(batch_size, "batch_size", MAX_BATCH_SIZE)
        check_key(doc_type, source_name, optional=True)
        where, params = _scope(doc_type, source_name, first=2)
        n = len(params) + 2
        query = (
            f"SELECT {_COLUMNS} FROM documents WHERE id > $1::bigint AND {where}"
            f" ORDER BY id LIMIT ${n}"
        )
        last = -(2**63)  # ids a caller's SQL set to 0 or below are documents too

        async def page(conn: asyncpg.Connection) -> list[Any]:
            if not params:  # the primary key's order is the plan, whatever the table holds
                return await conn.fetch(query, last, batch_size)
            # A scoped page's plan depends on the scope's size: a small source's rows through
            # the key index and a sort, a large one's in primary-key order. A generic plan (a
            # prepared statement's after five runs on a pooled connection) takes one of them
            # for every source, and so walked the whole table for each page of a small one.
            async with conn.transaction(readonly=True):
                await conn.execute(_CUSTOM_PLAN)
                return await conn.fetch(query, last, *params, batch_size)

        while True:
            records = await self.store.run(page, stateless=True, read=True)
            for record in records:
                yield _record_to_document(record)
            if len(records) < batch_size:
                return
            last = records[-1]["id"]

    @timed("documents.stats")
    async def stats(self) -> list[SourceStats]:
        """Per (doc_type, source_name): documents, with/without embedding, tokens, bytes."""
        records = await own_reads(self.store).fetch(STATS)
        return [SourceStats(**dict(r)) for r in records]

    # -- writes ----------------------------------------------------------------------------
    @timed("documents.upsert")
    async def upsert(self, doc: Document | dict[str, Any]) -> Document:
        """Insert or update one document; returns it as stored (id and timestamps filled)."""
        self.store.ensure_writable()
        checked = validate(doc, 0, self._dim)
        distributed = self.store.distributed

        async def work(conn: asyncpg.Connection) -> Any:
            # written and read back in one transaction; a writer that deletes the row in
            # between (documents.delete takes no source lock) makes the next round insert it
            for _ in range(_UPSERT_ROUNDS):
                await write_batch(conn, [checked], distributed=distributed)
                record = await conn.fetchrow(_SELECT_BY_KEY, *checked.key)
                if record is not None:
                    return record
            raise QueryError(
                f"document {'/'.join(checked.key)} was deleted by another writer each time it "
                f"was written ({_UPSERT_ROUNDS} times)"
            )

        # the same values written twice leave the same row: a lost COMMIT is simply redone
        return _record_to_document(await self.store.run_in_transaction(work, retry_in_doubt=True))

    @timed("documents.upsert_many")
    async def upsert_many(
        self,
        docs: Iterable[Document | dict[str, Any]] | AsyncIterable[Document | dict[str, Any]],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        atomic: bool = False,
    ) -> UpsertResult:
        """Insert new documents and update changed ones; identical rows are left untouched.

        ``docs`` is a list, any iterable, or an async iterable of :class:`Document` or dicts,
        streamed in batches of ``batch_size``. A list is validated whole before anything is
        written; a stream is validated batch by batch. The same key twice: the last one wins
        and the result counts the others as ``duplicates`` — in the whole call for a list,
        within each batch for a stream (it keeps no more than a batch in memory: a key
        repeated in a later batch is written again, as an update or unchanged). Each batch is
        one transaction (retried whole on transient failures); with ``atomic=True`` the whole
        call is one transaction. ``created_at`` given for a new row is kept (migrations); on an
        existing row it is ignored.

        Raises :class:`ValidationError` naming the bad row (nothing of its batch is written;
        of a list, nothing at all) or the bad argument, and :class:`ReadOnlyError` in
        read-only mode.
        """
        self.store.ensure_writable()
        batch_size = bounded_int(batch_size, "batch_size", MAX_BATCH_SIZE)
        atomic = flag(atomic, "atomic")
        _many(docs)
        if isinstance(docs, Sequence):
            checked = [validate(doc, i, self._dim) for i, doc in enumerate(docs)]
            unique, dupes = dedupe(checked)
            batches = _sequence_batches(unique, dupes, batch_size)
        else:
            batches = _stream_batches(docs, self._dim, batch_size)
        if atomic:
            async with self.store.transaction() as conn:
                return await _write_all(conn, batches, self.store.distributed)
        total = UpsertResult()
        async for batch, dupes in batches:
            result = await self.store.run_in_transaction(
                functools.partial(write_batch, docs=batch, distributed=self.store.distributed)
            )
            result.duplicates = dupes
            total += result
        return total

    @timed("documents.delete")
    async def delete(self, id: int) -> bool:
        """Delete one document by id; True if it existed."""
        self.store.ensure_writable()
        id = row_id(id, bigint=self.store.distributed)
        status = await self.store.execute("DELETE FROM documents WHERE id = $1", id)
        return status == "DELETE 1"

    @timed("documents.delete_source")
    async def delete_source(self, doc_type: str, source_name: str) -> int:
        """Delete every document of one source of one doc_type; returns how many.

        Scoped by both: ``("rust", "tokio")`` never touches ``("solana", "tokio")``.
        """
        self.store.ensure_writable()
        check_key(doc_type, source_name)
        return await self.store.run_in_transaction(
            functools.partial(delete_source_documents, doc_type=doc_type, source_name=source_name)
        )


Batches = AsyncIterator[tuple[list[Document], int]]


async def _write_all(
    conn: asyncpg.Connection, batches: Batches, distributed: bool = False
) -> UpsertResult:
    total = UpsertResult()
    async for batch, dupes in batches:
        result = await write_batch(conn, batch, distributed=distributed)
        result.duplicates = dupes
        total += result
    return total


async def _sequence_batches(docs: list[Document], dupes: int, batch_size: int) -> Batches:
    for start in range(0, len(docs), batch_size):
        yield docs[start : start + batch_size], dupes if start == 0 else 0


async def _stream_batches(
    docs: Iterable[Any] | AsyncIterable[Any], dim: int, batch_size: int
) -> Batches:
    batch: list[Document] = []
    index = 0

    async def items() -> AsyncIterator[Any]:
        if isinstance(docs, AsyncIterable):
            async for doc in docs:
                yield doc
        else:
            for doc in docs:
                yield doc

    async for doc in items():
        batch.append(validate(doc, index, dim))
        index += 1
        if len(batch) >= batch_size:
            yield dedupe(batch)
            batch = []
    if batch:
        yield dedupe(batch)
