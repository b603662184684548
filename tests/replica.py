"""A primary with a streaming replica, for read-replica tests (real servers, no mocks).

Fixtures (import them into the test module, they are not in conftest.py)::

    from tests.replica import ReplicaPair
    from tests.replica import replica_pair_fixture, replica_primary_fixture  # noqa: F401

    async def test_reads_go_to_the_replica(replica_pair: ReplicaPair) -> None:
        ...  # write on replica_pair.primary_url
        await replica_pair.sync()  # the replica has replayed it
        ...  # read on replica_pair.replica_url

* ``replica_primary`` (module scope): an embedded primary shared by the module's tests.
* ``replica_pair``: a fresh database (with pgvector) on that primary and a fresh replica of
  it, for one test, which may stop, kill, start or promote the replica (never the primary).
* ``private_replica_pair`` (import ``private_replica_pair_fixture``): a primary of its own as
  well, for tests that stop or restart the primary; slower (a new server).

``primary_with_replica(directory)`` is the context manager behind the private pair. Every
pair is removed at the end, also when the test failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest

from docstore.embedded import (
    DATABASE_NAME,
    EmbeddedServer,
    ensure_database,
    ensure_vector_extension,
)
from docstore.testing import EmbeddedReplica, start_replica

SYNC_TIMEOUT = 30.0  # seconds a replica may take to replay what the primary wrote


@dataclass
class ReplicaPair:
    """A running primary, its streaming replica, and a database (with pgvector) on both."""

    primary: EmbeddedServer
    replica: EmbeddedReplica
    database: str = DATABASE_NAME

    @property
    def primary_url(self) -> str:
        return self.primary.url(self.database)

    @property
    def replica_url(self) -> str:
        return self.replica.url(self.database)

    def multi_host_url(self, target_session_attrs: str = "prefer-standby") -> str:
        """One URL naming both servers (primary first), as libpq and asyncpg accept it."""
        servers = (self.primary, self.replica)
        hosts = ",".join(quote(str(server.socket_dir), safe="/") for server in servers)
        ports = ",".join(str(server.port) for server in servers)
        return (
            f"postgresql://postgres@/{quote(self.database, safe='')}?host={hosts}&port={ports}"
            f"&target_session_attrs={target_session_attrs}"
        )

    async def sync(self, timeout: float = SYNC_TIMEOUT) -> str:
        """Wait until the replica has replayed everything committed on the primary so far."""
        return await self.replica.wait_for_replay(timeout=timeout)


async def _create_database(primary: EmbeddedServer, database: str) -> None:
    await ensure_database(primary.url("postgres"), database)
    conn = await asyncpg.connect(primary.url(database))
    try:
        await ensure_vector_extension(conn)
    finally:
        await conn.close()


async def _drop_database(primary: EmbeddedServer, database: str) -> None:
    conn = await asyncpg.connect(primary.url("postgres"))
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {_ident(database)} WITH (FORCE)")
    finally:
        await conn.close()


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@contextlib.contextmanager
def replica_of(primary: EmbeddedServer, directory: Path, *, database: str) -> Iterator[ReplicaPair]:
    """``database`` (created, with pgvector) on a running ``primary`` and a new replica of it.

    Synchronous (use it outside an event loop, as fixtures are). On exit the replica is
    removed and the database dropped.
    """
    with contextlib.ExitStack() as cleanup:
        asyncio.run(_create_database(primary, database))
        cleanup.callback(lambda: asyncio.run(_drop_database(primary, database)))
        replica = cleanup.enter_context(start_replica(primary, directory))
        pair = ReplicaPair(primary, replica, database)
        asyncio.run(pair.sync())  # it really streams from the primary
        yield pair


@contextlib.contextmanager
def primary_with_replica(
    directory: Path, *, database: str = DATABASE_NAME
) -> Iterator[ReplicaPair]:
    """A new primary in ``directory/primary`` and its replica in ``directory/replica``."""
    with contextlib.ExitStack() as cleanup:
        primary = EmbeddedServer(directory / "primary", cleanup="delete")
        cleanup.callback(primary.close)
        primary.start()
        yield cleanup.enter_context(replica_of(primary, directory / "replica", database=database))


@pytest.fixture(scope="module", name="replica_primary")
def replica_primary_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """An embedded primary for the module's replica tests (they must leave it running)."""
    primary = EmbeddedServer(tmp_path_factory.mktemp("replica-primary"), cleanup="delete")
    try:
        yield primary.start()
    finally:
        primary.close()


@pytest.fixture(name="replica_pair")
def replica_pair_fixture(replica_primary: EmbeddedServer, tmp_path: Path) -> Iterator[ReplicaPair]:
    """A fresh database on the module's primary and a fresh replica, for one test."""
    database = f"replica_{uuid.uuid4().hex[:12]}"
    with replica_of(replica_primary, tmp_path / "replica", database=database) as pair:
        yield pair


@pytest.fixture(name="private_replica_pair")
def private_replica_pair_fixture(tmp_path: Path) -> Iterator[ReplicaPair]:
    """A primary and replica of this test's own (it may stop or restart either)."""
    with primary_with_replica(tmp_path) as pair:
        yield pair
