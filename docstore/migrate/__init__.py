"""Legacy ``rust_docs_vectors`` → docstore: :class:`Migrator` and its reports."""

from docstore.migrate.migrator import Migrator
from docstore.migrate.report import MigrationReport, Mismatch, ParityCheck, Preflight, Validation

__all__ = ["MigrationReport", "Migrator", "Mismatch", "ParityCheck", "Preflight", "Validation"]
