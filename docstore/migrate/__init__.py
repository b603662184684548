"""Legacy ``rust_docs_vectors`` → docstore: :class:`Migrator` and its reports."""

from docstore.migrate.migrator import Migrator
from docstore.migrate.report import (
    JobMismatch,
    MigrationReport,
    Mismatch,
    ParityCheck,
    Preflight,
    SourceMismatch,
    Validation,
)

__all__ = [
    "JobMismatch",
    "MigrationReport",
    "Migrator",
    "Mismatch",
    "ParityCheck",
    "Preflight",
    "SourceMismatch",
    "Validation",
]
