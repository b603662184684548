"""The embedded server's directory, its lock and its creation, for :mod:`docstore.embedded`.

pgserver locks every server of a machine with one file, ``<runtime dir>/.lockfile`` (``/tmp``
when ``XDG_RUNTIME_DIR`` is unset): the first user to create it owns it and every other user's
start fails. docstore locks each data directory with a file of its own instead
(:func:`directory_lock`). pgserver also runs initdb in place, and initdb writes
``PG_VERSION`` first: a start killed during initdb left a directory every later start took
for a finished one. docstore runs initdb in a scratch sibling and renames it into place once
complete and tuned (:func:`init_pgdata`).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from docstore import embedded_pids
from docstore.errors import ConfigurationError

logger = logging.getLogger("docstore")

TUNING_FILE = "docstore.conf"
"""What docstore writes into a new data directory (see ``docstore.embedded``)."""
LOCK_FILE = ".docstore.lock"
"""The inter-process lock of one embedded directory (in it, next to ``pgdata``)."""
INIT_PREFIX = ".pgdata-init-"
"""Scratch directories initdb runs in, renamed to ``pgdata`` once complete."""
POSTGRES_DB_DIR = ("base", "5")
"""The ``postgres`` database's directory, initdb's last creation (its OID is fixed)."""

_locks: dict[Path, Any] = {}


def prepare_directory(directory: Path) -> None:
    """Create ``directory`` (and its parents), or say why it cannot be one, naming
    ``DOCSTORE_EMBEDDED_DIR``: an existing file, a path under a file, no permission, or (as
    root) an ancestor pgserver would open to every user (:func:`_check_ancestors`)."""
    if os.name != "nt" and os.geteuid() == 0:
        _check_ancestors(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / LOCK_FILE).touch(exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigurationError(
            f"cannot use {directory} as the embedded PostgreSQL's directory ({reason}): set "
            "DOCSTORE_EMBEDDED_DIR (docstore demo: --data-dir) to a directory this user may "
            "create and write"
        ) from exc


_OPEN = 0o055  # g+rx,o+rx: what pgserver adds to every ancestor of the data, as root


def _check_ancestors(directory: Path) -> None:
    """As root the server runs as pgserver's user, and pgserver makes every ancestor of its
    data readable and traversable by everyone (``/root`` 0700 became 0755). docstore refuses
    a directory for which that would change an existing ancestor's mode, except below the
    temp directory (scratch made by ``mkdtemp``: the demo's, the tests'), rather than widen a
    home or system directory silently."""
    scratch = Path(tempfile.gettempdir()).resolve()
    path = directory.resolve()
    for ancestor in (path, *path.parents):
        try:
            mode = stat.S_IMODE(ancestor.stat().st_mode)
        except OSError:
            continue  # does not exist yet: docstore creates it
        if mode & _OPEN == _OPEN or scratch in ancestor.parents:
            continue
        raise ConfigurationError(
            f"DOCSTORE_EMBEDDED_DIR: as root the embedded PostgreSQL runs as the user "
            f"'pgserver', which cannot reach {directory}: {ancestor} (mode {mode:04o}) is "
            "closed to other users, and docstore will not open it to everyone; set "
            "DOCSTORE_EMBEDDED_DIR to a directory whose parents others may read and traverse "
            "(e.g. /var/lib/docstore), or run as a non-root user"
        )


def directory_lock(directory: Path) -> Any:
    """The inter-process lock of ``directory`` (file :data:`LOCK_FILE`; fasteners, as
    pgserver). One object per directory and process: POSIX record locks belong to the
    process, and closing any descriptor of the file would drop one held through another."""
    lock = _locks.get(directory)
    if lock is None:
        import fasteners  # type: ignore[import-untyped]  # pgserver's dependency; no stubs

        lock = _locks[directory] = fasteners.InterProcessLock(str(directory / LOCK_FILE))
    return lock


def init_pgdata(pgserver: Any, server: Any, directory: Path, tune: Callable[[Path], None]) -> None:
    """Create ``server``'s data directory unless it has one; under :func:`directory_lock`.

    initdb runs in a scratch sibling which is tuned (``tune``) and then renamed onto the
    empty ``pgdata``: a start killed on the way leaves only scratch, removed by the next one.
    A ``pgdata`` that an earlier docstore's killed initdb left is moved aside (never
    deleted) when it is clearly that (:func:`_incomplete_initdb`).
    """
    pgdata = Path(server.pgdata)
    if _incomplete_initdb(pgdata):
        aside = Path(tempfile.mkdtemp(prefix="pgdata.incomplete-", dir=directory))
        logger.warning(
            "embedded PostgreSQL: %s was left by an initdb that did not finish; moving it to "
            "%s and creating the server again",
            pgdata,
            aside,
        )
        pgdata.rename(aside / "pgdata")
        pgdata.mkdir()
    if (pgdata / "PG_VERSION").exists():
        return
    for scratch in directory.glob(INIT_PREFIX + "*"):  # a start killed during initdb
        shutil.rmtree(scratch, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=INIT_PREFIX, dir=directory))
    try:
        # as root: chowns scratch to pgserver's user, makes the binaries reachable
        pgserver.PostgresServer(scratch, cleanup_mode=None).ensure_pgdata_inited()
        tune(scratch)
        try:
            scratch.rename(pgdata)  # replaces the empty directory pgserver's get_server made
        except OSError as exc:
            raise ConfigurationError(
                f"{pgdata} exists, is not empty and holds no PostgreSQL data (no PG_VERSION): "
                "move it away, or set DOCSTORE_EMBEDDED_DIR to another directory"
            ) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _incomplete_initdb(pgdata: Path) -> bool:
    """Whether ``pgdata`` is surely what an initdb killed in place left: ``PG_VERSION`` but
    no ``postgres`` database (initdb's last step), never started (no ``log``, no users list)
    nor tuned (docstore's ``docstore.conf``) — nothing anyone could have stored data in."""
    if not (pgdata / "PG_VERSION").exists():
        return False
    traces = ("log", ".handle_pids.json", TUNING_FILE, os.path.join(*POSTGRES_DB_DIR))
    if any((pgdata / trace).exists() for trace in traces):
        return False
    found = embedded_pids.read_pid_file(pgdata)  # initdb's bootstrap leaves its own
    return found is None or not embedded_pids.live(found[0])


def forked() -> None:
    """In a forked child: forget the parent's lock objects (their open descriptor and state
    describe the parent's holding; POSIX record locks are not inherited)."""
    _locks.clear()
