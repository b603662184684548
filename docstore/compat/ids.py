"""The ids legacy code sees for crates and population jobs (and documents, in the views).

A row that came from the legacy database keeps its legacy id: a source's
``config["legacy_id"]`` (its ``crates.id``), a job's ``legacy_id`` column, a document's
``metadata["legacy_id"]``. A row created after the cutover shows its docstore id plus
:data:`NEW_ID_OFFSET`, so the two never collide (legacy ids stay below it) and the id a
caller got back (``upsert_crate``, ``create_population_job``) keeps finding the row — also
after ``docstore rollback`` has given the row a legacy id, which the row shows from then on.

The tables are not renumbered: sources and jobs of other doc_types share them. The SQL
builders here and the Python functions give the same ids (the views and
:class:`~docstore.compat.LegacyDatabase` agree).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from docstore.models import row_id

NEW_ID_OFFSET = 1_000_000_000
INT_MAX = 2**31 - 1  # the legacy ids' type, integer
MIGRATED_FROM = "rust_docs_vectors"  # docstore.migrate.legacy.MIGRATED_FROM (a layer above)
_LEGACY_DIGITS = "^[0-9]{1,9}$"  # a legacy id below NEW_ID_OFFSET


def crate_id(source_id: int, config: Mapping[str, Any] | None) -> int | None:
    """The crate id of the source ``source_id`` with ``config``; None when its own id plus
    :data:`NEW_ID_OFFSET` is past the legacy ``integer`` (the views show NULL)."""
    config = config or {}
    legacy = config.get("legacy_id")
    if (
        config.get("migrated_from") == MIGRATED_FROM
        and isinstance(legacy, int)
        and _is_legacy(legacy)
    ):
        return legacy
    return _offset(source_id)


def job_id(own_id: int, legacy_id: int | None) -> int | None:
    """The id of the population job ``own_id`` (``source_population_jobs.id``); None past the
    legacy ``integer``, as :func:`crate_id`."""
    if isinstance(legacy_id, int) and _is_legacy(legacy_id):
        return legacy_id
    return _offset(own_id)


def _offset(own_id: int) -> int | None:
    shown = int(own_id) + NEW_ID_OFFSET
    return shown if shown <= INT_MAX else None


def job_lookup(value: Any) -> tuple[str, int]:
    """``(column, value)`` that finds the job a legacy job id names: ``legacy_id`` below
    :data:`NEW_ID_OFFSET`, else ``id`` (:class:`~docstore.errors.ValidationError` for
    anything but an integer in the legacy ``integer`` range)."""
    wanted = row_id(value)
    if wanted >= NEW_ID_OFFSET:
        return "id", wanted - NEW_ID_OFFSET
    return "legacy_id", wanted


def _is_legacy(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < NEW_ID_OFFSET


def crate_id_sql(alias: str, new_id: str) -> str:
    """SQL for :func:`crate_id` of source row ``alias`` (``new_id``: its own id as the
    legacy ``integer`` plus the offset)."""
    return (
        f"CASE WHEN {alias}.config->>'migrated_from' = '{MIGRATED_FROM}'"
        f" AND {alias}.config->>'legacy_id' ~ '{_LEGACY_DIGITS}'"
        f" THEN ({alias}.config->>'legacy_id')::integer ELSE {new_id} END"
    )


def integer_sql(text: str) -> str:
    """SQL for the text value ``text`` (a ``->>`` of a config or metadata key) as the legacy
    ``integer`` it holds, or NULL when it holds none: a decimal of at most 10 digits, optionally
    negative, within ``integer``'s range (the nested CASE keeps the casts from seeing anything
    else: one value beyond ``integer`` must not fail a whole view)."""
    return (
        f"CASE WHEN {text} ~ '^-?[0-9]{{1,10}}$' THEN"
        f" CASE WHEN ({text})::bigint BETWEEN {-INT_MAX - 1} AND {INT_MAX}"
        f" THEN ({text})::integer END END"
    )


def document_id_sql(alias: str, new_id: str) -> str:
    """SQL for a document's legacy id (``metadata.legacy_id`` of a migrated row, else
    ``new_id``)."""
    return (
        f"CASE WHEN {alias}.metadata->>'migrated_from' = '{MIGRATED_FROM}'"
        f" AND {alias}.metadata->>'legacy_id' ~ '{_LEGACY_DIGITS}'"
        f" THEN ({alias}.metadata->>'legacy_id')::integer ELSE {new_id} END"
    )


def document_crate_id_sql(alias: str, source_id: str) -> str:
    """SQL for a document's ``crate_id`` (``source_id``: its crate's id, :func:`crate_id_sql`).
    A migrated row shows the legacy row's ``crate_id``, which the legacy schema let name
    another crate than its ``crate_name`` (a loose foreign key): its ``metadata.legacy_crate_id``
    when that is a legacy id (below :data:`NEW_ID_OFFSET`, as :func:`crate_id_sql` shows one),
    NULL when the legacy row had none (a ``legacy_id`` without a ``legacy_crate_id``). Any
    other row shows its crate's id."""
    meta = f"{alias}.metadata"
    return (
        f"CASE WHEN {meta} ? 'legacy_id' AND NOT {meta} ? 'legacy_crate_id' THEN NULL"
        f" WHEN {meta}->>'migrated_from' = '{MIGRATED_FROM}'"
        f" AND {meta}->>'legacy_crate_id' ~ '{_LEGACY_DIGITS}'"
        f" THEN ({meta}->>'legacy_crate_id')::integer ELSE {source_id} END"
    )
