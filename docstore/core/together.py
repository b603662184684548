"""Awaitables run side by side, as :func:`asyncio.gather` runs them, except that the first
failure cancels the others before it is raised.

``gather`` raises the first failure at once and leaves the other awaitables running: their
statements go on holding pool connections for answers nobody reads (a hybrid search whose
vector half failed kept its text half running). :class:`asyncio.TaskGroup` cancels them, but
raises an :class:`ExceptionGroup`, which no caller catching docstore's errors expects; this
raises the failure itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def together(*aws: Awaitable[T]) -> list[T]:
    """The results of ``aws``, in order. When one fails, the others are cancelled (and have
    ended) before its exception is raised as it is; when several fail before they are
    cancelled, the first in ``aws``'s order. Cancelling the caller cancels them all."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_awaited(a)) for a in aws]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


async def _awaited(aw: Awaitable[T]) -> T:
    return await aw
