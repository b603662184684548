"""Second review of 2026-12-06: a replica that keeps pgvector in another schema than the
primary, and what the later reviews found. Real PostgreSQL throughout."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import numpy as np
import psutil
import pytest
from typer.testing import CliRunner

import docstore
from docstore.cli import EXIT_INTERRUPTED, EXIT_USAGE, app
from docstore.config import redact_url
from docstore.errors import QueryError, ReadOnlyError, ValidationError
from docstore.models import finite_number
from docstore.readonly.server_files import statement_refusal
from docstore.readonly.statements import may_commit_partway
from tests.conftest import PgCluster


def _database(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


async def test_a_replica_with_pgvector_in_another_schema_decodes_vectors(
    database_url: str, ext_schema_url: str
) -> None:
    replica_db = _database(ext_schema_url)
    async with docstore.connect(database_url, database_read_url=ext_schema_url) as store:
        row = await store.replica.fetchrow("select current_database() db, '[1,2,3]'::vector v")
        assert row is not None
        assert row["db"] == replica_db  # read on the replica, not a fallback to the primary
        assert isinstance(row["v"], np.ndarray)
        assert row["v"].tolist() == [1.0, 2.0, 3.0]
        # and the primary still decodes with its own schema
        assert isinstance(await store.fetchval("select '[1,2]'::vector"), np.ndarray)


async def test_reload_to_a_replica_with_pgvector_elsewhere_looks_it_up_again(
    database_url: str, pg: PgCluster, ext_schema_url: str
) -> None:
    other = f"other_{_database(ext_schema_url)}"
    await pg.execute(f'create database "{other}" template "{pg.template}"')
    try:
        async with docstore.connect(database_url, database_read_url=pg.url(other)) as store:
            assert isinstance(await store.replica.fetchval("select '[1]'::vector"), np.ndarray)
            await store.reload(database_url, database_read_url=ext_schema_url)
            row = await store.replica.fetchrow("select current_database() db, '[4]'::vector v")
            assert row is not None and row["db"] == _database(ext_schema_url)
            assert row["v"].tolist() == [4.0]
    finally:
        await pg.execute(f'drop database "{other}" with (force)')


# -- may_commit_partway: can one execute() string commit part of itself? (pure) ----------
@pytest.mark.parametrize(
    "sql",
    [
        "select 1",
        "commit",
        "select 1; ; -- done",
        "select 1; /* a; commit */",
        "select ';commit'",
        "select 'a'';commit'",
        'select "a;commit"',
        "select $$ ; commit $$",
        "select $t$ ; $x$ ; commit; $t$",
        "select E'a\\';commit'",
        "insert into t values (1); insert into t values (2)",  # one implicit transaction
        "select 1; select $1",
    ],
)
def test_a_string_that_cannot_commit_partway(sql: str) -> None:
    assert not may_commit_partway(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "insert into t values ('x'); commit; select 1",
        "begin; select 1; end",
        "select 1; call p()",
        "select 1; do $$ begin commit; end $$",
        "select 1; ROLLBACK",
        # an identifier ending in e before a quote is no E'' prefix (PostgreSQL: name, '\')
        "select name'\\'; insert into t values (1); commit; select 2",
        "select 'a' like 'b' escape'\\'; commit; select 1",
        # standard_conforming_strings off (a database or role may say so): '\'' continues
        "select 'x\\' -- '; commit; select 1",
        "select 1; (commit)",  # unreadable first word: may
        "select 'unclosed; commit",
        "select /* unclosed; commit",
    ],
)
def test_a_string_that_may_commit_partway(sql: str) -> None:
    assert may_commit_partway(sql)


# -- index options out of pgvector's (or the API's) range are usage errors (exit 2) --------
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["index", "create", "--m", "1"], "--m"),
        (["index", "create", "--m", "101"], "--m"),
        (["index", "create", "--ef-construction", "3"], "--ef-construction"),
        (["index", "create", "--m", "16", "--ef-construction", "20"], "--ef-construction"),
        (["index", "calibrate", "--target", "0"], "--target"),
        (["index", "calibrate", "--target", "1.5"], "--target"),
        (["index", "calibrate", "--target", "nan"], "--target"),
        (["index", "calibrate", "--sample", "0"], "--sample"),
        (["index", "recall", "--limit", "1001"], "--limit"),
        (["index", "recall", "--ef-search", "0"], "--ef-search"),
        (["index", "recall", "--oversample", "101"], "--oversample"),
        (["index", "recall", "--sample", "0"], "--sample"),
    ],
)
def test_out_of_range_index_options_are_usage_errors(args: list[str], named: str) -> None:
    """They reached the library and came back as ValidationError, exit 1 ("a docstore
    error"), though the CLI documents exit 2 for an out-of-range value; nothing connects."""
    url = "postgresql://app:hunter2secret@127.0.0.1:1/docs"
    result = CliRunner().invoke(app, [*args, "--url", url])
    assert result.exit_code == EXIT_USAGE, result.output
    assert named in result.output
    assert "hunter2secret" not in result.output


# -- read-only store: whole function names only; cursors' refusals typed -------------------
async def test_a_read_only_store_reads_names_that_merely_contain_a_file_function(
    database_url: str,
) -> None:
    """``hello_export`` or ``'Buffalo_Exports'`` contain ``lo_export`` as a substring and were
    refused as if they called it."""
    async with docstore.connect(database_url, read_only=True) as store:
        assert await store.fetchval("select 1 as hello_export") == 1
        assert await store.fetchval("select 'Buffalo_Exports'") == "Buffalo_Exports"
        with pytest.raises(ReadOnlyError, match="lo_export"):
            await store.fetchval("select pg_catalog.lo_export(0, '/tmp/x')")
        with pytest.raises(ReadOnlyError, match="lo_export"):
            await store.fetchval("select \"lo_export\"(0, '/tmp/x')")


@pytest.mark.parametrize("how", ["iterate", "await-fetch", "await-fetchrow", "await-forward"])
@pytest.mark.parametrize(
    "query",
    [
        "with x as (insert into canary values ('c') returning v) select * from x",
        "select nextval('canary_seq') from generate_series(1, 3)",
    ],
)
async def test_a_write_inside_a_read_only_cursor_is_a_read_only_error(
    database_url: str, how: str, query: str
) -> None:
    """The server refused it, and the refusal escaped as a raw asyncpg error (fetch() on the
    same connection gave ReadOnlyError)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("create table canary (v text); create sequence canary_seq")
    finally:
        await conn.close()
    async with docstore.connect(database_url, read_only=True) as store, store.acquire() as c:
        with pytest.raises(ReadOnlyError, match="read-only"):
            async with c.transaction():
                if how == "iterate":
                    [row async for row in c.cursor(query)]
                else:
                    cursor = await c.cursor(query)
                    await getattr(cursor, how.split("-")[1])(
                        *([1] if "fetchrow" not in how else [])
                    )
        assert await c.fetchval("select count(*) from canary") == 0


def test_a_value_less_query_item_of_a_metrics_url_is_hidden() -> None:
    """``?s3cr3tt0ken`` (a token without ``=``) was printed whole as ``?s3cr3tt0ken=***``."""
    assert redact_url("http://host/metrics?s3cr3tt0ken") == "http://host/metrics?***"
    assert redact_url("http://host/m?a=1&tok&b=") == "http://host/m?a=***&***&b=***"


# -- timeouts: a bad value is refused before anything is sent; running out is a QueryError --
@pytest.mark.parametrize("bad", [float("nan"), -1, "1", True])
@pytest.mark.parametrize("call", ["execute", "fetch", "fetchrow", "fetchval", "replica"])
async def test_a_bad_statement_timeout_is_refused_before_it_is_sent(
    store: docstore.Store, bad: object, call: str
) -> None:
    """``timeout=nan`` sent the statement and cancelled it at once ("database ...
    unavailable: TimeoutError"); a string was taken by asyncpg's float()."""
    await store.execute("create table t (v int)")
    sql = "insert into t values (1)" if call != "replica" else "select 1"
    method = store.replica.fetchval if call == "replica" else getattr(store, call)
    with pytest.raises(ValidationError, match="timeout") as info:
        await method(sql, timeout=bad)
    assert info.value.field == "timeout"
    assert await store.fetchval("select count(*) from t") == 0


async def test_a_statement_that_outruns_its_timeout_is_a_query_error_everywhere(
    store: docstore.Store,
) -> None:
    """It was DatabaseUnavailableError ("database at ... unavailable: TimeoutError"), which
    reads as an outage; the server's own statement_timeout gives QueryError 57014."""
    slow = "select pg_sleep(2)"
    calls = [
        store.fetchval(slow, timeout=0.05),
        store.replica.fetchval(slow, timeout=0.05),
        store.run_in_transaction(lambda c: c.fetchval(slow, timeout=0.05)),
    ]
    for call in calls:
        with pytest.raises(QueryError, match="ran longer than its timeout") as info:
            await call
        assert info.value.sqlstate == "57014"
    with pytest.raises(QueryError, match="ran longer than its timeout"):
        async with store.transaction() as conn:
            await conn.fetchval(slow, timeout=0.05)
    assert await store.fetchval("select 1") == 1  # the pool is fine afterwards


# -- SIGTERM stops a command as Ctrl-C does: its clean-up runs ----------------------------
def _docstore(args: list[str], env: dict[str, str], sigint: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "docstore", *args],
        env={**os.environ, "COLUMNS": "80", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
    )


def _postgres_under(directory: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if "postgres" in (proc.info["name"] or "") and str(directory) in " ".join(
                proc.info["cmdline"] or []
            ):
                found.append(proc)
    return found


def test_a_demo_stopped_by_sigterm_stops_its_server_and_deletes_its_directory() -> None:
    """``timeout -s TERM 4 docstore demo`` left the embedded server running and ~130 MB in
    the throwaway directory: neither the ``finally`` nor atexit ran."""
    process = _docstore(["demo"], {"COLUMNS": "500"}, signal.SIG_DFL)
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if "starting embedded PostgreSQL in " in line:
                break
        directory = Path(line.split("starting embedded PostgreSQL in ", 1)[1].split(" ...")[0])
        assert directory.name.startswith("docstore-demo-"), line
        deadline = time.monotonic() + 60
        while not _postgres_under(directory):  # the server is up: the demo is under way
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.1)
        time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == EXIT_INTERRUPTED, err
    assert "error: interrupted" in err
    assert not directory.exists()
    deadline = time.monotonic() + 20
    while _postgres_under(directory):
        assert time.monotonic() < deadline, "the demo's server is still running"
        time.sleep(0.1)


# -- finite_number: the one check of a bounded real argument (pure) -----------------------
def test_finite_number_accepts_real_numbers_within_bounds() -> None:
    assert finite_number(np.float32(0.5), "x", bounds=(0, 1), open_low=True) == 0.5
    assert finite_number(-1, "seed", bounds=(-1, 1)) == -1.0
    assert finite_number(1e300, "x") == 1e300


@pytest.mark.parametrize(
    ("value", "bounds", "open_low", "message"),
    [
        (True, None, False, "x must be a finite number"),
        ("0.5", None, False, "x must be a finite number"),
        (float("nan"), (0, 1), False, r"x must be a finite number in \[0, 1\]"),
        (float("inf"), None, False, "x must be a finite number"),
        (0, (0, 1), True, r"x must be a finite number in \(0, 1\]"),
        (1.5, (-1, 1), False, r"in \[-1, 1\]"),
    ],
)
def test_finite_number_refuses_what_is_not(
    value: object, bounds: tuple[float, float] | None, open_low: bool, message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        finite_number(value, "x", bounds=bounds, open_low=open_low)
    assert info.value.field == "x"


# -- root's default embedded directory ------------------------------------------------------
@pytest.mark.skipif(os.name == "nt" or os.geteuid() != 0, reason="root's default")
def test_roots_default_embedded_dir_is_outside_a_closed_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As root the server runs as ``pgserver``, which cannot reach ``~/.local/share`` under a
    0700 home (docstore refuses to open it): a new root set-up uses /var/lib/docstore, an
    existing home one is kept (its data stays found)."""
    from docstore import config

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert config._default_embedded_dir() == config.ROOT_EMBEDDED_DIR
    existing = tmp_path / ".local" / "share" / "docstore"
    existing.mkdir(parents=True)
    assert config._default_embedded_dir() == existing


# -- review of this session's change (helper-61) ------------------------------------------
async def test_a_string_without_transaction_statements_is_retried_when_the_session_ends(
    database_url: str,
) -> None:
    """Several statements without COMMIT/BEGIN/CALL… run as one implicit transaction: a
    session the server ended mid-way applied nothing, and the string is run again (the
    first version of the in-doubt rule for strings refused it as "may or may not")."""
    async with docstore.connect(
        database_url, pool_min_size=1, pool_max_size=1, retry_initial_delay=0.01
    ) as store:
        await store.execute("create table ledger (id serial, note text)")
        pid = await store.fetchval("select pg_backend_pid()")

        async def terminate_once_sleeping() -> None:
            admin = await asyncpg.connect(database_url)
            try:
                deadline = time.monotonic() + 20
                while (
                    await admin.fetchval(
                        "select wait_event from pg_stat_activity where pid = $1", pid
                    )
                    != "PgSleep"
                ):
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                await admin.execute("select pg_terminate_backend($1)", pid)
            finally:
                await admin.close()

        killer = asyncio.create_task(terminate_once_sleeping())
        await store.execute(
            "insert into ledger (note) values ('a'); insert into ledger (note) values ('b');"
            " select case when (select count(*) from pg_stat_activity where pid = "
            f"{pid}) > 0 then pg_sleep(30) end"
        )
        await killer
        assert await store.fetchval("select count(*) from ledger") == 2


@pytest.mark.parametrize(
    "sql",
    [
        "select query_to_xml(E'select\\nlo_export(1, ''/tmp/x'')', true, true, '')",
        "select query_to_xml(E'select \\x6co_export(1, ''/tmp/x'')', true, true, '')",
        "select query_to_xml(E'select \\154o_export(1, ''/tmp/x'')', true, true, '')",
        "select query_to_xml('select \\u006co_export(1, ''/tmp/x'')', true, true, '')",
    ],
)
def test_a_file_function_spelled_with_backslash_escapes_is_refused(sql: str) -> None:
    """Whole-identifier matching let ``E'select\\nlo_export(…)'`` through (the escape's
    letter read as part of a longer name); an escape may also spell the name itself."""
    assert statement_refusal(sql, "select") == "lo_export() writes to the server's filesystem"


async def test_a_timeout_of_the_callers_own_is_not_a_statement_timeout(
    store: docstore.Store,
) -> None:
    """An ``asyncio.timeout`` of the caller's around its own work was reported as the
    statement running past its timeout (QueryError 57014)."""

    async def work(conn: asyncpg.Connection) -> None:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)

    with pytest.raises(docstore.QueryError) as info:
        await store.run(work)
    assert getattr(info.value, "sqlstate", None) != "57014"
    assert "ran longer than its timeout" not in str(info.value)
    assert "TimeoutError of its own" in str(info.value)
    assert isinstance(info.value.__cause__, TimeoutError)


async def test_a_timeout_of_the_callers_own_around_a_statement_is_not_an_outage(
    store: docstore.Store,
) -> None:
    """The caller's ``asyncio.timeout`` cancelling its own statement was reported as the
    database being unavailable (``DatabaseUnavailableError``), the error an outage raises;
    the store stays usable afterwards."""

    async def work(conn: asyncpg.Connection) -> None:
        async with asyncio.timeout(0.05):
            await conn.execute("select pg_sleep(5)")

    with pytest.raises(docstore.QueryError) as info:
        await store.run(work)
    assert not isinstance(info.value, docstore.DatabaseUnavailableError)
    assert "TimeoutError of its own" in str(info.value)
    assert await store.fetchval("select 1") == 1


@pytest.mark.parametrize("timeout", [np.int64(5), np.float32(5.0), Decimal("5")])
async def test_numeric_timeouts_of_any_real_type_are_taken(
    store: docstore.Store, timeout: object
) -> None:
    assert await store.fetchval("select 1", timeout=timeout) == 1  # type: ignore[arg-type]


def test_a_sync_pools_acquire_used_without_with_gives_a_connection(database_url: str) -> None:
    """``conn = store.pool.acquire()`` (asyncpg's ``await pool.acquire()``) gave a context
    object: ``conn.fetchval`` was an AttributeError and ``release(conn)`` refused it."""
    import docstore.sync

    store = docstore.sync.connect(database_url)
    try:
        conn = store.pool.acquire()
        assert conn.fetchval("select 1") == 1
        store.pool.release(conn)
        assert store.pool_stats()[0].in_use == 0
        with store.pool.acquire() as other:
            assert other.fetchval("select 2") == 2
    finally:
        store.close()


def test_index_create_text_ignores_the_hnsw_options() -> None:
    """``--text`` builds the full-text index, which takes no --m: checking 2 x --m against
    --ef-construction made ``index create --text --m 40`` a usage error."""
    url = "postgresql://app:secret@127.0.0.1:1/docs?connect_timeout=1"
    result = CliRunner().invoke(
        app,
        ["index", "create", "--text", "--m", "40", "--url", url],
        env={"DOCSTORE_RETRY_ATTEMPTS": "1"},
    )
    assert result.exit_code != EXIT_USAGE, result.output


def test_a_sigterm_during_a_commands_clean_up_does_not_cut_it_short() -> None:
    """The demo's clean-up (release its server, delete its directory) ran after the
    SIGTERM handler was restored: a second SIGTERM then killed it half-way."""
    script = (
        "import os, signal\n"
        "from docstore.cli.base import sigterm_ignored\n"
        "with sigterm_ignored():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    print('cleaned up', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGTERM)  # afterwards: the previous disposition again\n"
        "print('not reached', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout == "cleaned up\n", done.stderr
    assert done.returncode == -signal.SIGTERM
