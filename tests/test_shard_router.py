"""The Citus router's placement cache (docstore.core.shards.ShardRouter.node), driven with
look-ups the test controls: which answers are shared, cached, or refused. The routing itself
is tested on a real cluster in tests/citus."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import docstore
from docstore.core.shards import NotRouted, ShardRouter

W1, W2 = ("w1", 5432), ("w2", 5432)


class Lookups:
    """Look-ups that wait until released, answering ``node`` for every source."""

    def __init__(self, node: tuple[str, int]) -> None:
        self.node = node
        self.calls = 0
        self.release = asyncio.Event()

    async def __call__(self, source: str) -> dict[str, Any]:
        self.calls += 1
        await self.release.wait()
        return {"groupid": 1, "nodename": self.node[0], "nodeport": self.node[1]}


@pytest.fixture
def router(store: docstore.Store) -> ShardRouter:
    db = store._db
    return ShardRouter(db._pool_set, db.settings, db._metrics)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_concurrent_callers_share_one_look_up_and_it_is_cached(router: ShardRouter) -> None:
    lookup = Lookups(W1)
    waiting = [asyncio.create_task(router.node("tokio", lookup)) for _ in range(5)]
    await settle()
    lookup.release.set()
    assert await asyncio.gather(*waiting) == [W1] * 5
    assert lookup.calls == 1 and router.lookups == 1
    assert await router.node("tokio", lookup) == W1 and lookup.calls == 1  # cached


async def test_a_cancelled_caller_leaves_the_look_up_to_the_others(router: ShardRouter) -> None:
    lookup = Lookups(W1)
    first = asyncio.create_task(router.node("tokio", lookup))
    second = asyncio.create_task(router.node("tokio", lookup))
    await settle()
    first.cancel()
    lookup.release.set()
    assert await second == W1
    with pytest.raises(asyncio.CancelledError):
        await first
    assert lookup.calls == 1


async def test_a_pin_or_a_forgotten_node_is_not_overwritten_by_a_look_up_begun_before(
    router: ShardRouter,
) -> None:
    lookup = Lookups(W1)
    pending = asyncio.create_task(router.node("tokio", lookup))
    await settle()
    router.remember("tokio", W2)  # pinned while the look-up runs
    lookup.release.set()
    assert await pending == W1  # its caller gets the answer ...
    assert await router.node("tokio", lookup) == W2  # ... the cache keeps the pin
    # a failed node forgotten meanwhile: not cached, looked up again next time
    lookup = Lookups(W1)
    pending = asyncio.create_task(router.node("serde", lookup))
    await settle()
    router.forget(W1)
    lookup.release.set()
    assert await pending == W1
    lookup.release.clear()
    again = asyncio.create_task(router.node("serde", lookup))
    await settle()
    assert lookup.calls == 2
    # forgetting another node does not stop a look-up's answer being cached
    router.forget(W2)
    lookup.release.set()
    assert await again == W1
    assert await router.node("serde", lookup) == W1 and lookup.calls == 2


async def test_close_stops_look_ups_and_their_callers_go_to_the_coordinator(
    router: ShardRouter,
) -> None:
    lookup = Lookups(W1)
    waiting = [asyncio.create_task(router.node("tokio", lookup)) for _ in range(3)]
    await settle()
    await router.close()
    for task in waiting:
        with pytest.raises(NotRouted):
            await asyncio.wait_for(task, 10)  # a look-up left waiting: TimeoutError


async def test_a_statement_timeout_on_a_routed_read_is_the_statements_not_an_outage(
    store: docstore.Store,
) -> None:
    """A read routed to a Citus worker never told the runner its work had the connection, so
    a statement's ``timeout=`` there came out as ``DatabaseUnavailableError`` (an outage),
    where the same work on the coordinator is ``QueryError`` 57014. The "worker" here is the
    store's own server, pinned for the source (helper-64's review)."""
    row = await store.fetchrow(
        "select coalesce(host(inet_server_addr()),"
        " split_part(current_setting('unix_socket_directories'), ',', 1)) as host,"
        " current_setting('port')::int as port"
    )
    assert row is not None
    store._db._shards.remember("crate1", (row["host"].strip(), row["port"]))

    async def fast(conn: Any) -> int:
        return int(await conn.fetchval("select 1"))

    async def slow(conn: Any) -> None:
        await conn.fetch("select pg_sleep(2)", timeout=0.2)

    assert await store.run(fast, read=True, shard="crate1") == 1
    assert (await store.metrics()).routed_searches == 1  # it did go through the router
    for shard in (None, "crate1"):
        with pytest.raises(docstore.QueryError) as info:
            await store.run(slow, read=True, shard=shard)
        assert info.value.sqlstate == "57014", (shard, info.value)


async def _route_to_own_server(store: docstore.Store) -> tuple[str, int]:
    """The "worker" of source crate1 is the store's own server; returns it."""
    row = await store.fetchrow(
        "select coalesce(host(inet_server_addr()),"
        " split_part(current_setting('unix_socket_directories'), ',', 1)) as host,"
        " current_setting('port')::int as port"
    )
    assert row is not None
    node = (row["host"].strip(), row["port"])
    store._db._shards.remember("crate1", node)
    return node


async def _vector(conn: Any) -> Any:
    return await conn.fetchval("select '[1,2,3]'::vector")


async def test_a_worker_pool_has_its_own_codec_init(store: docstore.Store) -> None:
    """A worker pool shared the coordinator's ``CodecInit``: a worker connection set up
    without pgvector marked the coordinator's pool stale. Each worker pool has its own, set
    up like the coordinator's; routed reads still decode vectors."""
    node = await _route_to_own_server(store)

    async def vector(conn: Any) -> Any:
        return await conn.fetchval("select '[1,2,3]'::vector")

    assert list(await store.run(vector, read=True, shard="crate1")) == [1, 2, 3]
    primary = store._db._pool_set.primary.init
    worker = store._db._shards._workers[node]._init  # asyncpg.Pool keeps its init there
    assert worker is not primary and worker is not None
    assert (worker.schema, worker.remember, worker.tcp_timeout) == (
        primary.schema,
        primary.remember,
        primary.tcp_timeout,
    )


async def test_a_reload_repoints_the_worker_pools_codecs(
    store: docstore.Store, ext_schema_url: str
) -> None:
    """After ``store.reload`` to a database whose pgvector lives in another schema, a worker
    pool's own ``CodecInit`` follows the coordinator's (it kept the old schema: "unknown
    type: public.vector", the worker marked down, every routed search on the coordinator)."""
    node = await _route_to_own_server(store)
    assert list(await store.run(_vector, read=True, shard="crate1")) == [1, 2, 3]
    await store.reload(ext_schema_url)
    node = await _route_to_own_server(store)
    fallbacks = (await store.metrics()).routing_fallbacks
    assert list(await store.run(_vector, read=True, shard="crate1")) == [1, 2, 3]
    assert (await store.metrics()).routing_fallbacks == fallbacks
    assert store._db._shards._inits[node].schema == store._db._pool_set.primary.init.schema == "ext"
