"""Awaitables run side by side, as :func:`asyncio.gather` runs them, except that the first
failure cancels the others, and waits for them to end, before it is raised as it is.

``gather`` raises the first failure at once and leaves the other awaitables running: their
statements go on holding pool connections for answers nobody reads (a hybrid search whose
vector half failed kept its text half running). Not an :class:`asyncio.TaskGroup` either: it
raises an :class:`ExceptionGroup`, which no caller catching docstore's errors expects, and on
Python 3.11 a child's failure leaves the awaiting task marked as being cancelled
(``Task.cancelling()`` stays 1), so an ``asyncio.timeout()`` around the caller later raised
``CancelledError`` instead of ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


async def together(*aws: Awaitable[T]) -> list[T]:
    """The results of ``aws``, in order. When one fails, the others are cancelled and have
    ended before its exception is raised as it is (when several have failed by then, one of
    them). Cancelling the caller cancels them all, and waits for them."""
    tasks: list[asyncio.Future[T]] = [asyncio.ensure_future(a) for a in aws]
    if not tasks:
        return []
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:  # one failed, or the caller was cancelled: the others stop too
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
    ended: list[asyncio.Future[Any]] = [*done, *tasks]  # what failed first, then the rest
    for task in ended:
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error
    return [task.result() for task in tasks]
