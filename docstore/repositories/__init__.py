"""Typed repositories over docstore's tables: ``store.documents`` and ``store.sources``."""

from docstore.repositories.documents import DocumentRepository
from docstore.repositories.sources import SourceRepository

__all__ = ["DocumentRepository", "SourceRepository"]
