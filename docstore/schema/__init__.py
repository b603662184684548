"""Versioned SQL migrations and the runner that applies them (see :mod:`docstore.schema.runner`)."""

from docstore.schema.runner import (
    MIGRATIONS,
    Migration,
    SchemaStatus,
    apply_migrations,
    schema_status,
)

__all__ = ["MIGRATIONS", "Migration", "SchemaStatus", "apply_migrations", "schema_status"]
