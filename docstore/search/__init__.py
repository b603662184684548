"""Search: pure query builders (filters) — the search API itself arrives with issue 5."""

from docstore.search.filters import OPERATORS, build_filter

__all__ = ["OPERATORS", "build_filter"]
