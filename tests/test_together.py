"""``core.together``: awaitables side by side, the first failure cancelling the others and
raised as it is — and ``hybrid_search`` built on it, on a real database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

import docstore
from docstore.core.together import together
from docstore.errors import QueryError, SchemaError
from docstore.search.text import TextSearch
from tests.test_integrator_review_1207 import still_running


async def test_results_come_back_in_order() -> None:
    async def after(seconds: float, value: int) -> int:
        await asyncio.sleep(seconds)
        return value

    assert await together(after(0.02, 1), after(0.0, 2), after(0.01, 3)) == [1, 2, 3]
    assert await together() == []


def _slow(ended: list[str]) -> Callable[[], Awaitable[None]]:
    async def slow() -> None:
        try:
            await asyncio.sleep(5)
        finally:
            ended.append("slow")

    return slow


async def test_a_failure_cancels_the_others_and_is_raised_as_it_is() -> None:
    ended: list[str] = []
    slow = _slow(ended)

    async def fails() -> None:
        await asyncio.sleep(0.01)
        raise QueryError("bad")

    with pytest.raises(QueryError, match="bad"):  # not an ExceptionGroup
        await asyncio.wait_for(together(slow(), fails(), slow()), 2)
    assert ended == ["slow", "slow"]  # both ended before the failure was raised


async def test_cancelling_the_caller_cancels_them_all() -> None:
    ended: list[str] = []
    slow = _slow(ended)

    task = asyncio.create_task(together(slow(), slow()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ended == ["slow", "slow"]


async def test_hybrid_search_stops_its_text_half_when_the_vector_half_fails(
    store: docstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: ``asyncio.gather`` raised the vector half's failure and left the text half's
    statement running on the server, holding a pool connection for an answer nobody read."""
    tag = "hybrid_text_half_9d1"

    async def slow_text(self: TextSearch, text: str, **options: Any) -> Any:
        await self._db.fetch(f"SELECT pg_sleep(3) /* {tag} */")
        raise AssertionError("the text half should have been cancelled")

    monkeypatch.setattr(TextSearch, "search_text", slow_text)
    vector = np.ones(store.embedding_dim, dtype=np.float32)
    with pytest.raises(SchemaError, match="create_vector_index"):  # no l2 index: exact=False
        await store.hybrid_search("spawn", vector, metric="l2", exact=False)
    await asyncio.sleep(0.3)  # a text half left running has sent its statement by now
    assert await still_running(store, tag, within=1.0) == 0


async def test_a_failure_leaves_the_caller_free_to_time_out() -> None:
    """Review 94: with asyncio.TaskGroup, a child's failure left the caller marked as being
    cancelled on Python 3.11, so an ``asyncio.timeout()`` around it later raised
    CancelledError instead of TimeoutError."""

    async def fails() -> None:
        raise QueryError("bad")

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            with pytest.raises(QueryError):
                await together(fails(), asyncio.sleep(1))
            task = asyncio.current_task()
            assert task is not None and task.cancelling() == 0
            await asyncio.sleep(1)
