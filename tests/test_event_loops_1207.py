"""A store used from another event loop than its own: a typed error before any connection is
touched, and the store keeps working on its loop (a notebook's ``asyncio.run()`` per cell)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

import docstore
from docstore import EventLoopError


def in_thread(job: Callable[[], Any]) -> Any:
    """``job()`` on a thread of its own (where ``asyncio.run`` makes new loops)."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = job()
        except BaseException as exc:  # handed back to the test
            out["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out.get("value")


async def test_another_running_loop_gets_a_typed_error_and_the_store_goes_on(
    database_url: str,
) -> None:
    async with docstore.connect(database_url) as store:
        for call in (
            lambda: store.fetchval("SELECT 1"),
            lambda: store.documents.count(),
            lambda: store.search([0.5] * store.embedding_dim),
            lambda: store.close(),
        ):
            with pytest.raises(EventLoopError, match="another event loop") as caught:
                in_thread(lambda call=call: asyncio.run(call()))
            assert isinstance(caught.value, RuntimeError)  # as asyncio's own error was
        for entered in (lambda: _locked(store), lambda: store.reload(database_url)):
            with pytest.raises(EventLoopError):
                in_thread(lambda entered=entered: asyncio.run(entered()))
        assert await store.fetchval("SELECT 2") == 2
        assert await store.documents.count() == 0


def test_a_closed_loops_store_says_so_and_closes(database_url: str) -> None:
    """``store = await docstore.connect()`` in one ``asyncio.run()``, used in the next."""

    def cells() -> None:
        store = asyncio.run(_open(database_url))
        with pytest.raises(EventLoopError, match=r"docstore\.sync\.connect"):
            asyncio.run(store.fetchval("SELECT 1"))
        asyncio.run(store.close())  # its loop is gone: the connections are let go

    in_thread(cells)


async def _locked(store: docstore.Store) -> None:
    async with store.try_lock(4242):
        pass


async def _open(url: str) -> docstore.Store:
    return await docstore.connect(url)
