"""The legacy document writes (``insert_embedding``, ``insert_embeddings_batch``) as one
transaction each: lock the crate, merge what the stored rows' metadata holds, upsert, and (for
a batch) recompute the crate's ``total_docs`` / ``total_tokens`` — refused first, as the
legacy ``crates`` columns (``integer``) refused them, when they would not fit.

Legacy writes carry no metadata, so the upsert keeps what a stored row has (a migrated row's
``legacy_id``, for one). Reading it under the crate's source lock, in the transaction that
writes, means no other docstore writer of the crate can change it in between (its change is
never lost), and the totals are the ones of the rows just committed: a failure anywhere
leaves neither the documents nor the totals half-written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import asyncpg

from docstore.compat.ids import INT_MAX  # crates.total_docs / total_tokens were integers
from docstore.errors import ValidationError
from docstore.models import MAX_SOURCE_NAME, Document, key_text
from docstore.repositories.documents import dedupe, lock_sources, validate, write_batch
from docstore.repositories.sources import source_totals, write_totals
from docstore.store import Store

_STORED_METADATA = (
    "SELECT doc_path, metadata FROM documents"
    " WHERE doc_type = $1 AND source_name = $2 AND doc_path = ANY($3::text[])"
)


async def upsert_crate_documents(
    store: Store, doc_type: str, crate_name: str, docs: list[Document], *, totals: bool
) -> None:
    """Upsert ``docs`` (all of crate ``crate_name``) keeping stored metadata, in one
    transaction (retried whole on transient failures); ``totals``: recompute the crate's
    totals in it too. A bad row raises :class:`~docstore.errors.ValidationError` before
    anything is written, and so do totals beyond the legacy ``integer`` (counted under the
    crate's lock once the batch is in; the refusal rolls the transaction back)."""
    store.ensure_writable()
    checked = [validate(doc, i, store.embedding_dim) for i, doc in enumerate(docs)]
    unique, _ = dedupe(checked)

    async def work(conn: asyncpg.Connection) -> None:
        await lock_sources(conn, [(doc_type, crate_name)])
        merged = await _keep_metadata(conn, doc_type, crate_name, unique, store.embedding_dim)
        await write_batch(conn, merged, distributed=store.distributed)
        if totals:
            counted = await source_totals(conn, doc_type, crate_name)  # under the lock: exact
            _check_totals(crate_name, counted)
            await write_totals(conn, doc_type, crate_name, counted)

    await store.run_in_transaction(work)


def _check_totals(crate_name: str, totals: dict[str, int]) -> None:
    """Refuse (:class:`~docstore.errors.ValidationError`) totals beyond the legacy
    ``integer``: the views and ``get_crate_stats`` could not show them, and the legacy
    ``UPDATE crates`` failed the batch's transaction — as raising here fails this one."""
    for field, value in totals.items():
        if value > INT_MAX:
            raise ValidationError(
                f"crate {crate_name[:100]}: this batch would make its {field} {value:,}, beyond"
                f" the legacy crates.{field} (an integer, at most {INT_MAX:,}); nothing was"
                " written",
                field=field,
            )


def batch_documents(crate_name: Any, docs: Any, build: Callable[..., Document]) -> list[Document]:
    """The rows of ``insert_embeddings_batch`` as documents of crate ``crate_name``
    (``build(crate_name, doc_path, content, embedding, token_count)``). The crate's name is
    checked first (its error names ``crate_name``); a row's bad value raises
    :class:`~docstore.errors.ValidationError` with that row's ``index``."""
    key_text("crate_name", crate_name)
    if not 1 <= len(crate_name) <= MAX_SOURCE_NAME:
        raise ValidationError(
            f"crate_name must be 1 to {MAX_SOURCE_NAME} characters", field="crate_name"
        )
    out = []
    for i, row in enumerate(legacy_rows(docs)):
        try:
            out.append(build(crate_name, *row))
        except ValidationError as exc:
            raise ValidationError(
                f"row {i}: {exc}", field=exc.field, index=i, key=exc.key
            ) from None
    return out


async def _keep_metadata(
    conn: asyncpg.Connection, doc_type: str, crate_name: str, docs: list[Document], dim: int
) -> list[Document]:
    """Each document with the stored row's metadata under its own keys (checked again: the
    merged metadata must still be storable)."""
    rows = await conn.fetch(_STORED_METADATA, doc_type, crate_name, [d.doc_path for d in docs])
    stored: dict[str, Any] = {r["doc_path"]: r["metadata"] for r in rows}  # the jsonb codec
    return [
        validate(d.model_copy(update={"metadata": {**stored[d.doc_path], **d.metadata}}), i, dim)
        if d.doc_path in stored
        else d
        for i, d in enumerate(docs)
    ]


def legacy_rows(docs: Any) -> list[tuple[Any, ...]]:
    """The rows of ``insert_embeddings_batch``, each ``(doc_path, content, embedding[,
    token_count])`` as a 4-tuple; a row of another shape raises
    :class:`~docstore.errors.ValidationError` naming its index, before anything is written."""
    if isinstance(docs, str | bytes) or not isinstance(docs, Iterable):
        raise ValidationError("docs must be an iterable of document rows", field="docs")
    rows = []
    for i, row in enumerate(docs):
        fields = None
        if isinstance(row, Iterable) and not isinstance(row, str | bytes | dict):
            fields = tuple(row)
        if fields is None or not 3 <= len(fields) <= 4:
            size = "" if fields is None else f", not {len(fields)} values"
            raise ValidationError(
                f"document row {i} must be (doc_path, content, embedding[, token_count]){size}",
                index=i,
            )
        rows.append(fields if len(fields) == 4 else (*fields, None))
    return rows
