"""Harness of the fault, load and fuzz tests: private servers, a password role, figures.

Every test here is bounded in time (``pytest.mark.timeout`` plus ``asyncio.wait_for`` around
the work), so a hang fails the run instead of stalling CI.

**Figures.** A test records what it measured with the ``figures`` fixture; the
``pytest_terminal_summary`` hook below prints every recorded line at the end of the run, so
``python -m pytest`` (no ``-s``) shows them in CI even when the tests pass.

**Passwords.** Tests that check "no password in any message or log" connect with a URL that
carries a real password, checked by the server (scram-sha-256 in ``pg_hba.conf``), so the
password goes through every code path a production URL does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import numpy as np
import psutil
import pytest

from docstore import Document
from docstore.embedded import EmbeddedServer, ensure_database, ensure_vector_extension
from tests.conftest import PgCluster, add_scram_role, with_database
from tests.processes import wait_gone

DIM = 3072
_FIGURES = pytest.StashKey[list[tuple[str, list[str]]]]()


# -- figures --------------------------------------------------------------------------------


@dataclass
class Figures:
    """Lines a test wants in the run's summary (latencies, counts, RSS, ...)."""

    nodeid: str
    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    recorded = Figures(request.node.nodeid)
    yield recorded
    if recorded.lines:
        request.config.stash.setdefault(_FIGURES, []).append((recorded.nodeid, recorded.lines))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    recorded = config.stash.get(_FIGURES, [])
    if not recorded:
        return
    terminalreporter.section("docstore reliability figures")
    for nodeid, lines in recorded:
        terminalreporter.write_line(nodeid)
        for line in lines:
            terminalreporter.write_line(f"    {line}")


# -- data -----------------------------------------------------------------------------------


def random_docs(
    n: int,
    *,
    source: str,
    seed: int,
    doc_type: str = "rust",
    start: int = 0,
    metadata: dict[str, Any] | None = None,
) -> list[Document]:
    """``n`` documents of one source with seeded random 3,072-dim float32 embeddings."""
    gen = np.random.default_rng(seed)
    vectors = gen.standard_normal((n, DIM), dtype=np.float32)
    return [
        Document(
            doc_type=doc_type,
            source_name=source,
            doc_path=f"{source}/page{start + i}.html",
            content=f"page {start + i} of {source}: spawn tasks, async runtime, channel {i % 7}",
            metadata={"i": start + i, **(metadata or {})},
            embedding=vectors[i],
            token_count=start + i,
        )
        for i in range(n)
    ]


# -- servers and roles ----------------------------------------------------------------------

PASSWORD = "Rl1ab" + uuid.uuid4().hex[:16]
"""The password of the test role: distinctive, so finding it anywhere is never a fluke."""


def url_with_user(url: str, user: str, password: str) -> str:
    """``url`` with its userinfo replaced by ``user:password``."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def create_password_database(
    admin_url: str, pgdata: Path | None, *, role: str, database: str
) -> str:
    """A database owned by a LOGIN role with :data:`PASSWORD`, with pgvector enabled.

    On an embedded server (``pgdata`` given) the role must authenticate with scram-sha-256:
    a wrong password is refused, so the password really travels through docstore.
    Returns the role's URL of the new database (with the password in it).
    """
    await add_scram_role(admin_url, pgdata, role, PASSWORD)
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"CREATE DATABASE {database} OWNER {role}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(with_database(admin_url, database))
    try:
        await ensure_vector_extension(conn)
    finally:
        await conn.close()
    return url_with_user(with_database(admin_url, database), role, PASSWORD)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A private embedded server the test may stop, restart or kill."""
    server = EmbeddedServer(tmp_path / "private-pg", cleanup="delete").start()
    yield server
    if not _postmaster_alive(server):  # a test failed between kill and restart
        _remove_stale_pid_file(server)
        server.restart_server()
    server.close()


MIGRATION_DOCS = 300


@pytest.fixture
def migration_urls(own_server: EmbeddedServer) -> tuple[str, str]:
    """(legacy, target) databases on the test's own server: a legacy database of
    :data:`MIGRATION_DOCS` documents of 5 crates, and an empty target."""
    from tests.legacy_db import build_legacy

    async def make() -> tuple[str, str]:
        admin = own_server.url("postgres")
        for name in ("legacy", "target"):
            await ensure_database(admin, name)
        await build_legacy(own_server.url("legacy"), crates=5, docs=MIGRATION_DOCS)
        return own_server.url("legacy"), own_server.url("target")

    return asyncio.run(make())


async def assert_same_rows(legacy_url: str, target_url: str) -> None:
    """The target holds the legacy database's :data:`MIGRATION_DOCS` documents, each once
    and field by field the same (nothing lost, doubled or changed)."""
    from tests.legacy_db import ROWS_LEGACY, ROWS_TARGET, legacy_fetch

    legacy = await legacy_fetch(legacy_url, ROWS_LEGACY)
    target = await legacy_fetch(target_url, ROWS_TARGET)
    assert len(target) == len(set(target)) == MIGRATION_DOCS  # nothing doubled
    assert target == legacy  # nothing lost or changed


@pytest.fixture
def own_server_url(own_server: EmbeddedServer) -> str:
    """The password URL of a fresh database ``app`` on :func:`own_server`."""
    return asyncio.run(
        create_password_database(
            own_server.url("postgres"), own_server.pgdata, role="app_user", database="app"
        )
    )


def _postmaster_pid(server: EmbeddedServer) -> int | None:
    pid_file = server.pgdata / "postmaster.pid"
    if not pid_file.exists():
        return None
    return int(pid_file.read_text().splitlines()[0])


def _postmaster_alive(server: EmbeddedServer) -> bool:
    pid = _postmaster_pid(server)
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _remove_stale_pid_file(server: EmbeddedServer) -> None:
    """Remove ``postmaster.pid`` and the socket's lock file (both name the dead postmaster)."""
    pid_file = server.pgdata / "postmaster.pid"
    if pid_file.exists():
        lines = pid_file.read_text().splitlines()
        if len(lines) >= 5 and lines[4]:  # port, then the socket directory
            Path(lines[4], f".s.PGSQL.{lines[3]}.lock").unlink(missing_ok=True)
    pid_file.unlink(missing_ok=True)


def kill_server(server: EmbeddedServer) -> int:
    """SIGKILL the postmaster and every process of the server, as a crash or the OOM killer
    would; returns how many processes were killed.

    The postmaster goes first, so no survivor can run a clean crash-restart cycle; then every
    backend and auxiliary process, so no orphan keeps the shared memory attached. The data
    directory is left as the crash left it: the next start runs crash recovery from the WAL.

    One artifact of this sandbox is cleaned up: PID 1 here does not reap orphans, so the killed
    postmaster lingers as a zombie whose pid still "exists" and makes ``postmaster.pid`` look
    live to PostgreSQL and to pgserver. Removing that stale file is what a reaping init makes
    unnecessary (with the socket's lock file, which names the same pid); nothing else is
    touched.
    """
    pid = _postmaster_pid(server)
    assert pid is not None, "the server is not running"
    postmaster = psutil.Process(pid)
    children = postmaster.children(recursive=True)
    os.kill(pid, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    wait_gone([postmaster, *children], timeout=10, poll=0.01)
    _remove_stale_pid_file(server)
    return 1 + len(children)


# -- the session server with a password role ------------------------------------------------


@pytest.fixture(scope="module")
def password_database(pg: PgCluster) -> Iterator[str]:
    """Password URL of a module-wide database (schema applied on first connect) on the
    session server. Its role authenticates with scram-sha-256 on the embedded server."""
    suffix = uuid.uuid4().hex[:10]
    role, database = f"pw_{suffix}", f"pwdb_{suffix}"
    pgdata = pg.embedded.pgdata if pg.embedded is not None else None
    url = asyncio.run(create_password_database(pg.admin_url, pgdata, role=role, database=database))
    yield url
    pg.drop_database(database)
    pg.run(f"DROP ROLE IF EXISTS {role}")
    if pgdata is not None:
        hba = pgdata / "pg_hba.conf"
        hba.write_text(
            "".join(
                line
                for line in hba.read_text().splitlines(keepends=True)
                if line != f"local all {role} scram-sha-256\n"
            )
        )
        pg.run("SELECT pg_reload_conf()")
