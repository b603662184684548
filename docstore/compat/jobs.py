"""The legacy population-job operations on ``source_population_jobs``: their SQL, the values
the legacy ``population_jobs`` columns accepted, and the legacy job ids
(:mod:`docstore.compat.ids`: a migrated job keeps its ``legacy_id``, a job created after the
cutover is its own id + 1,000,000,000)."""

from __future__ import annotations

from typing import Any

import asyncpg

from docstore.arguments import as_int
from docstore.compat import ids
from docstore.errors import ValidationError
from docstore.models import key_text

STATUSES = ("pending", "running", "completed", "failed")
"""``population_jobs.status``'s CHECK constraint."""
INT_MAX = ids.INT_MAX

CREATE = """INSERT INTO source_population_jobs
       (source_id, doc_type, source_name, status, metadata)
SELECT s.id, $1::text, $2::text, 'pending', $3::jsonb
  FROM document_sources s
 WHERE s.doc_type = $1::text AND s.source_name = $2::text
RETURNING id, legacy_id"""

# {where}: "id = $1" or "legacy_id = $1" (ids.job_lookup); both columns are indexed
_UPDATE = """UPDATE source_population_jobs
   SET status = $2::text,
       started_at = CASE WHEN $2::text = 'running' THEN now() ELSE started_at END,
       completed_at = CASE WHEN $2::text IN ('completed', 'failed') THEN now()
                           ELSE completed_at END,
       error_message = coalesce($3, error_message),
       docs_populated = coalesce($4, docs_populated)
 WHERE {where} AND doc_type = $5"""
_GET = """SELECT id AS own_id, legacy_id,
       (metadata->>'crate_config_id')::integer AS crate_config_id, status,
       started_at, completed_at, error_message, docs_populated, created_at
  FROM source_population_jobs WHERE {where} AND doc_type = $2"""


def _where(job_id: Any) -> tuple[str, int]:
    column, value = ids.job_lookup(job_id)
    return f"{column} = $1", value  # column: one of two names, never input


def update_statement(
    job_id: Any, status: Any, error_message: Any, docs_populated: Any
) -> tuple[str, int, int | None]:
    """The checked ``UPDATE`` of ``update_population_job``, its job key (``$1``) and
    ``docs_populated`` as an int (numpy's integers accepted, a bool refused) or None; values
    of the wrong type raise :class:`ValidationError` before anything is written."""
    if not isinstance(status, str) or status not in STATUSES:
        raise ValidationError(f"status must be one of {', '.join(STATUSES)}", field="status")
    key_text("error_message", error_message, optional=True)
    count = as_int(docs_populated)
    if docs_populated is not None and (count is None or not -INT_MAX - 1 <= count <= INT_MAX):
        raise ValidationError("docs_populated must be an integer or None", field="docs_populated")
    where, key = _where(job_id)
    return _UPDATE.format(where=where), key, count


def get_statement(job_id: Any) -> tuple[str, int]:
    """The ``SELECT`` of ``get_population_job`` and its job key (``$1``)."""
    where, key = _where(job_id)
    return _GET.format(where=where), key


def as_row(record: asyncpg.Record) -> dict[str, Any]:
    """A job as the legacy ``population_jobs`` row, with its legacy id."""
    row = dict(record)
    row = {"id": ids.job_id(row.pop("own_id"), row.pop("legacy_id")), **row}
    return row
