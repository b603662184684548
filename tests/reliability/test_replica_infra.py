"""The streaming-replica test infrastructure, proven with plain asyncpg (no docstore code path).

A real primary and a real hot standby made by ``pg_basebackup`` (``tests/replica.py``): rows
written on the primary reach the replica, the replica refuses writes, and it catches up again
after being stopped, or killed, and started. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import numpy as np
import pytest
from pgvector.asyncpg import register_vector

from docstore.embedded import EmbeddedServer
from docstore.errors import ConfigurationError
from docstore.testing import start_replica, wait_for_replay
from tests.replica import ReplicaPair, replica_pair_fixture, replica_primary_fixture  # noqa: F401

BOUND = 30.0  # seconds any one step may take before the test fails instead of hanging


async def _connect(url: str, *, vector: bool = False) -> asyncpg.Connection:
    conn = await asyncpg.connect(url, timeout=BOUND)
    if vector:
        await register_vector(conn)
    return conn


async def _fetchval(url: str, query: str) -> object:
    conn = await _connect(url)
    try:
        return await conn.fetchval(query, timeout=BOUND)
    finally:
        await conn.close()


async def _execute(url: str, *statements: str) -> None:
    conn = await _connect(url)
    try:
        for statement in statements:
            await conn.execute(statement, timeout=BOUND)
    finally:
        await conn.close()


async def _refused(url: str) -> None:
    """Connecting to ``url`` fails at once: nothing listens there."""
    with pytest.raises(OSError):
        await asyncpg.connect(url, timeout=5)


async def _slot(pair: ReplicaPair) -> asyncpg.Record | None:
    conn = await _connect(pair.primary.url("postgres"))
    try:
        return await conn.fetchrow(
            "select s.active, r.state from pg_replication_slots s"
            " left join pg_stat_replication r on r.pid = s.active_pid where s.slot_name = $1",
            pair.replica.slot,
        )
    finally:
        await conn.close()


async def test_a_vector_row_written_on_the_primary_is_read_on_the_replica(
    replica_pair: ReplicaPair,
) -> None:
    pair = replica_pair
    assert pair.replica.socket_dir != pair.primary.socket_dir
    primary = await _connect(pair.primary_url, vector=True)
    try:
        await primary.execute("create table items (id int primary key, embedding vector(3))")
        await primary.execute(
            "insert into items values (1, $1)", np.array([0.5, -1.0, 2.0], dtype=np.float32)
        )
    finally:
        await primary.close()

    await asyncio.wait_for(pair.sync(), BOUND)

    replica = await _connect(pair.replica_url, vector=True)
    try:
        row = await replica.fetchrow(
            "select id, embedding from items order by embedding <-> '[0.5,-1,2]' limit 1"
        )
        assert row is not None and row["id"] == 1
        np.testing.assert_array_equal(
            row["embedding"].to_numpy(), np.array([0.5, -1.0, 2.0], np.float32)
        )
        assert await replica.fetchval("select pg_is_in_recovery()") is True
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await replica.execute("insert into items values (2, '[1,1,1]')")
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await replica.execute("create table other (x int)")
    finally:
        await replica.close()

    # one multi-host URL reaches either server, as target_session_attrs asks
    for attrs, standby in (("standby", True), ("prefer-standby", True), ("primary", False)):
        assert await _fetchval(pair.multi_host_url(attrs), "select pg_is_in_recovery()") is standby

    slot = await _slot(pair)  # it streams from its own slot on the primary
    assert slot is not None and slot["active"] is True and slot["state"] == "streaming"


async def test_a_stopped_replica_refuses_connections_then_catches_up_after_start(
    replica_pair: ReplicaPair,
) -> None:
    pair = replica_pair
    await _execute(pair.primary_url, "create table t (x int)", "insert into t values (1)")
    await asyncio.to_thread(pair.replica.stop)
    assert not pair.replica.running
    await _refused(pair.replica_url)

    # Written while the replica is down, then the primary moves on to a new WAL segment and
    # checkpoints: the replica's slot must keep the WAL it has not received yet.
    await _execute(
        pair.primary_url,
        "insert into t values (2)",
        "select pg_switch_wal()",
        "checkpoint",
    )
    with pytest.raises(TimeoutError, match="unreachable"):
        await pair.sync(timeout=0.5)

    await asyncio.wait_for(asyncio.to_thread(pair.replica.start), BOUND)
    await asyncio.wait_for(pair.sync(), BOUND)
    assert await _fetchval(pair.replica_url, "select array_agg(x order by x) from t") == [1, 2]


async def test_a_killed_replica_recovers_and_catches_up_after_start(
    replica_pair: ReplicaPair,
) -> None:
    pair = replica_pair
    await _execute(pair.primary_url, "create table t (x int)", "insert into t values (1)")
    await asyncio.wait_for(pair.sync(), BOUND)
    killed = pair.replica.pid
    await asyncio.wait_for(asyncio.to_thread(pair.replica.kill), BOUND)
    assert pair.replica.pid is None
    await _refused(pair.replica_url)
    await _execute(pair.primary_url, "insert into t values (2)")

    await asyncio.wait_for(asyncio.to_thread(pair.replica.start), BOUND)
    assert pair.replica.pid not in (None, killed)
    await asyncio.wait_for(pair.sync(), BOUND)
    assert await _fetchval(pair.replica_url, "select array_agg(x order by x) from t") == [1, 2]
    assert "was interrupted" in pair.replica.log.read_text()  # it did recover from a crash


async def test_a_second_replica_with_a_long_path_is_promoted_and_closed_without_trace(
    replica_pair: ReplicaPair, tmp_path: Path
) -> None:
    primary = replica_pair.primary
    directory = tmp_path / ("long-" * 12) / "second"  # too long a path for a Unix socket
    second = await asyncio.to_thread(start_replica, primary, directory)
    try:
        assert second.socket_dir != second.pgdata  # it fell back to a short socket directory
        await _execute(
            replica_pair.primary_url, "create table t (x int)", "insert into t values (7)"
        )
        await asyncio.wait_for(
            wait_for_replay(replica_pair.primary_url, second.url(replica_pair.database)), BOUND
        )
        assert await _fetchval(second.url(replica_pair.database), "select x from t") == 7

        await asyncio.wait_for(asyncio.to_thread(second.promote), BOUND)
        assert await _fetchval(second.url("postgres"), "select pg_is_in_recovery()") is False
        await _execute(second.url(replica_pair.database), "insert into t values (8)")
        with pytest.raises(ConfigurationError, match="not a standby"):
            await second.wait_for_replay(timeout=5)
    finally:
        await asyncio.to_thread(second.close)
    assert not second.socket_dir.exists()
    assert not directory.exists()
    await _refused(second.url("postgres"))
    slots = await _fetchval(
        primary.url("postgres"),
        f"select count(*) from pg_replication_slots where slot_name = '{second.slot}'",
    )
    assert slots == 0
    # the first replica was not disturbed
    await asyncio.wait_for(replica_pair.sync(), BOUND)


async def test_a_replica_that_cannot_start_leaves_nothing_behind(
    replica_primary: EmbeddedServer, tmp_path: Path
) -> None:
    primary = replica_primary

    async def slots() -> object:
        return await _fetchval(primary.url("postgres"), "select count(*) from pg_replication_slots")

    before = await slots()
    directory = tmp_path / "broken"
    with pytest.raises(ConfigurationError, match="did not start") as info:
        await asyncio.to_thread(start_replica, primary, directory, port=70000)
    assert "70000" in str(info.value)  # the end of its log says why
    assert not directory.exists()
    assert await slots() == before

    occupied = tmp_path / "occupied"
    (occupied / "pgdata").mkdir(parents=True)
    (occupied / "pgdata" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigurationError, match="not empty"):
        await asyncio.to_thread(start_replica, primary, occupied)
    assert (occupied / "pgdata" / "keep.txt").read_text() == "mine"
    assert await slots() == before
