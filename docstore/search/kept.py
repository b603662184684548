"""A small store of answers that go stale: kept a while, and only so many of them.

The search side measures things about the database once and reuses the answer briefly: a
scope's size (:mod:`~docstore.search.vector`), a filter's size
(:mod:`~docstore.search.filter_size`), whether PostgreSQL takes the HNSW index by itself
(:mod:`~docstore.search.ann_plans`). Each answer is kept for ``seconds`` (the table changes
under a long-lived store) and at most ``entries`` of them (a process searching many sources or
filters must not grow without bound); the oldest goes first.
"""

from __future__ import annotations

import time
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Kept(Generic[K, V]):
    """Answers by key, each for ``seconds``, at most ``entries`` (values are never None)."""

    def __init__(self, entries: int, seconds: float) -> None:
        self._entries = entries
        self._seconds = seconds
        self._items: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> V | None:
        """The answer kept for ``key``, or None when there is none or it is stale."""
        kept = self._items.get(key)
        if kept is None or time.monotonic() - kept[0] >= self._seconds:
            return None
        return kept[1]

    def put(self, key: K, value: V) -> V:
        """Keep ``value`` for ``key`` (a fresh entry: the oldest ones go to make room)."""
        self._items.pop(key, None)
        while self._items and len(self._items) >= self._entries:
            del self._items[next(iter(self._items))]
        self._items[key] = (time.monotonic(), value)
        return value

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items
