"""The Citus test group (marker ``citus``): docstore on a real Citus cluster.

The session's cluster — a coordinator and two workers — is made by ``scripts/citus-cluster up``
in a directory under the session's base temporary directory (building Citus and pgvector from
``../shared/vendor`` the first time on a machine) and stopped at the end; with
``DOCSTORE_TEST_CITUS_URL`` set, that coordinator is used instead. Every test starts from a
database without docstore's tables (they are dropped before each test), so tests are
independent; one database per session, because on Citus each database needs the extensions
and the node list on every node.

The group is **not** part of a plain ``pytest`` run: it needs root (apt, the ``postgres`` OS
user) and about two minutes to build Citus on a fresh machine. Run it with
``pytest -m citus`` (or by naming ``tests/citus``). When the cluster cannot start, every test
of the group **fails** with the script's output; nothing is skipped.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

import docstore
from tests.conftest import PgCluster

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "citus-cluster"
UP_TIMEOUT = 1800  # apt + a Citus build on a busy 2-core machine

RESET_SQL = """
DROP TABLE IF EXISTS documents, document_sources, source_population_jobs,
    docstore_migration_checkpoints, docstore_search_calibration, docstore_search_queries,
    docstore_schema_version CASCADE;
DROP FUNCTION IF EXISTS update_updated_at_column() CASCADE;
"""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (never skip) the citus group unless the run asks for it: ``-m`` naming
    ``citus``, or a path argument inside ``tests/citus``."""
    markexpr = config.option.markexpr or ""
    here = Path(__file__).parent.resolve()
    named = any(
        here == p or here in p.parents
        for p in (Path(a.split("::")[0]).resolve() for a in config.args)
    )
    if "citus" in markexpr or named:
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("citus") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _free_base_port() -> int:
    """A port p with p, p+1, p+2 free on localhost (coordinator and two workers)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + 2 > 65535:
            continue
        free = True
        for port in (base, base + 1, base + 2):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    free = False
                    break
        if free:
            return base
    raise RuntimeError("no three consecutive free ports on localhost")


def _reachable_by_others(directory: Path) -> None:
    """Let the ``postgres`` OS user reach ``directory``: search permission (x, not read) on
    each ancestor that lacks it (the session's base directory is 0700)."""
    for parent in [directory, *directory.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=UP_TIMEOUT, env=env
    )


@pytest.fixture(scope="session")
def citus_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path | None]]:
    """``(coordinator URL, cluster directory)``; the directory is None for an external one."""
    external = os.environ.get("DOCSTORE_TEST_CITUS_URL")
    if external:
        yield external, None
        return
    directory = tmp_path_factory.mktemp("citus")
    _reachable_by_others(directory)
    env = {**os.environ, "CITUS_BASE_PORT": str(_free_base_port())}
    up = _run("up", str(directory), env=env)
    if up.returncode != 0:
        _run("down", str(directory), env=env)
        pytest.fail(
            f"scripts/citus-cluster up failed (exit {up.returncode}); its output:\n"
            f"{up.stderr[-6000:]}\n{up.stdout[-2000:]}",
            pytrace=False,
        )
    url = up.stdout.strip().splitlines()[-1]
    try:
        yield url, directory
    finally:
        _run("down", str(directory), env=env)


@pytest.fixture(scope="session")
def citus_base_url(citus_cluster: tuple[str, Path | None]) -> str:
    return citus_cluster[0]


@pytest.fixture
async def citus_url(citus_base_url: str) -> AsyncIterator[str]:
    """The coordinator's URL, its database without docstore's tables (dropped first)."""
    conn = await asyncpg.connect(citus_base_url)
    try:
        await conn.execute(RESET_SQL)
    finally:
        await conn.close()
    yield citus_base_url


@pytest.fixture
def single_url(pg: PgCluster) -> Iterator[str]:
    """A fresh single-node database with docstore's schema (the main suite's
    ``database_url``, which tests here name the cluster)."""
    name = pg.create_database(template=pg.template)
    yield pg.url(name)
    pg.drop_database(name)


@pytest.fixture
async def database_url(citus_url: str) -> str:
    """For the core suites run on the cluster (``test_core_suites.py``): the coordinator's
    database with docstore's schema, distributed."""
    async with docstore.connect(citus_url) as store:
        await store.migrate(distributed=True)
    return citus_url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[docstore.Store]:
    async with docstore.connect(database_url) as s:
        assert s.distributed
        yield s


@pytest.fixture
async def dstore(citus_url: str) -> AsyncIterator[docstore.Store]:
    """A store on the cluster, after ``migrate(distributed=True)``."""
    async with docstore.connect(citus_url) as store:
        await store.migrate(distributed=True)
        assert store.distributed
        yield store


@pytest.fixture
async def citus_worker_urls(citus_url: str) -> list[str]:
    """The workers' URLs (the coordinator's user, password and database on each worker's
    host and port, as ``pg_dist_node`` lists them), in group order."""
    conn = await asyncpg.connect(citus_url)
    try:
        rows = await conn.fetch(
            "SELECT nodename, nodeport FROM pg_dist_node"
            " WHERE noderole = 'primary' AND groupid <> 0 ORDER BY groupid"
        )
    finally:
        await conn.close()
    parts = urlsplit(citus_url)
    credentials = parts.netloc.rpartition("@")[0]
    at = f"{credentials}@" if credentials else ""
    return [urlunsplit(parts._replace(netloc=f"{at}{r['nodename']}:{r['nodeport']}")) for r in rows]
