"""The rows :class:`~docstore.compat.LegacyDatabase` returns and takes, shaped as the legacy
Doc Server's (tuples with the legacy field names); their reprs show an embedding's size, never
its values."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple


def _dims(embedding: Any) -> str:
    """An embedding in a repr: its size, never its values (as :class:`Document` shows it)."""
    if embedding is None:
        return "None"
    try:
        return f"<{len(embedding)} dims>" if not isinstance(embedding, str) else "<text>"
    except TypeError:
        return f"<{type(embedding).__name__}>"


class SimilarDoc(NamedTuple):
    doc_path: str
    content: str
    similarity: float


class CrateDocument(NamedTuple):
    doc_path: str
    content: str
    embedding: Any

    def __repr__(self) -> str:
        return (
            f"CrateDocument(doc_path={self.doc_path!r}, content={self.content!r},"
            f" embedding={_dims(self.embedding)})"
        )


class CrateStats(NamedTuple):
    name: str
    version: str | None
    last_updated: datetime | None
    total_docs: int | None  # None: recorded as null, or beyond the legacy integer (as the view)
    total_tokens: int | None


class LegacyDoc(NamedTuple):
    """One document of ``insert_embeddings_batch``: (doc_path, content, embedding, tokens)."""

    doc_path: str
    content: str
    embedding: Any
    token_count: int | None = None

    def __repr__(self) -> str:
        return (
            f"LegacyDoc(doc_path={self.doc_path!r}, content={self.content!r},"
            f" embedding={_dims(self.embedding)}, token_count={self.token_count!r})"
        )


__all__ = ["CrateDocument", "CrateStats", "LegacyDoc", "SimilarDoc"]
