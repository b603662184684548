"""What the repositories report: :class:`UpsertResult` and :class:`SourceStats` (also
importable from :mod:`docstore.models` and :mod:`docstore`)."""

from __future__ import annotations

from pydantic import BaseModel


class UpsertResult(BaseModel):
    """What :meth:`DocumentRepository.upsert_many` did, row by row."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    """Input rows superseded by a later row with the same key: in the same call (a list) or
    the same batch (a stream, which keeps no more than a batch in memory)."""

    @property
    def written(self) -> int:
        return self.inserted + self.updated

    @property
    def total(self) -> int:
        """Distinct keys processed (inserted + updated + unchanged)."""
        return self.inserted + self.updated + self.unchanged

    def __iadd__(self, other: UpsertResult) -> UpsertResult:
        self.inserted += other.inserted
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.duplicates += other.duplicates
        return self


class SourceStats(BaseModel):
    """Per ``(doc_type, source_name)`` figures from :meth:`DocumentRepository.stats`."""

    doc_type: str
    source_name: str
    documents: int
    with_embedding: int
    without_embedding: int
    tokens: int
    content_bytes: int
    """UTF-8 bytes of content."""
    stored_bytes: int
    """Bytes the rows occupy as stored (after TOAST compression)."""


__all__ = ["SourceStats", "UpsertResult"]
