"""Compatibility with the legacy Doc Server: its data operations on docstore's schema."""

from docstore.compat.installs import LegacyViews, LegacyViewsState
from docstore.compat.legacy_api import LegacyDatabase
from docstore.compat.rows import CrateDocument, CrateStats, LegacyDoc, SimilarDoc

__all__ = [
    "CrateDocument",
    "CrateStats",
    "LegacyDatabase",
    "LegacyDoc",
    "LegacyViews",
    "LegacyViewsState",
    "SimilarDoc",
]
