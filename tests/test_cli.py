"""The docstore CLI, run in-process against real databases."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from docstore import cli
from docstore.cli import EXIT_ERROR, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, app
from docstore.schema.runner import LATEST_VERSION

runner = CliRunner()


def test_init_then_init_again_is_a_no_op(empty_database_url: str) -> None:
    first = runner.invoke(app, ["init", "--url", empty_database_url])
    assert first.exit_code == 0, first.output
    assert f"now at version {LATEST_VERSION}" in first.output
    second = runner.invoke(app, ["init", "--url", empty_database_url])
    assert second.exit_code == 0 and "nothing to do" in second.output


def test_health_json_reports_versions_and_source(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    result = runner.invoke(app, ["health", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] and report["schema_version"] == LATEST_VERSION
    assert report["url_source"] == "DATABASE_URL"
    assert report["pgvector_version"] >= "0.8"


def test_health_failure_is_one_clean_line_without_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCSTORE_RETRY_ATTEMPTS", "1")
    result = runner.invoke(app, ["health", "--url", "postgresql://u:hunter2@127.0.0.1:1/x"])
    assert result.exit_code == 1
    assert "DatabaseUnavailableError" in result.output
    assert "hunter2" not in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "password",
    ["\u3000@@@\x1f", "ab\u3000cd\x1fefgh ijkl", "s\u00e9cret\x7fpart", "\x1b[31mredrum9"],
)
def test_a_stray_url_argument_prints_no_piece_of_its_password(
    password: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Click prints a stray argument with its control characters escaped (``\\x1f``) and
    everything else as it is (found by tests/reliability/test_fuzz_urls.py: the password
    ``"\\u3000@@@\\x1f"`` of a query string was printed)."""
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapped line hides a leak
    url = f"postgresql://127.0.0.1:1/db?password={password}"
    result = runner.invoke(app, ["health", url])
    assert result.exit_code == EXIT_USAGE and "Usage:" in result.output
    pieces = {password[i : i + 4] for i in range(len(password) - 3)}
    assert not [p for p in pieces if p in result.output], result.output


@pytest.mark.parametrize("password", ["\t00", "a\tb\x1fcd", "\x0bsecret"])
def test_a_stray_url_argument_prints_no_escaped_piece_of_its_userinfo_password(
    password: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Click prints a tab in a stray argument as ``\\x09`` (not ``\\t``): the password
    ``"\\t00"`` came out as ``***\\x0900`` (found by tests/reliability/test_fuzz_urls.py)."""
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapped line hides a leak
    result = runner.invoke(app, ["health", f"postgresql://000:{password}@127.0.0.1:1/db"])
    assert result.exit_code == EXIT_USAGE and "Usage:" in result.output
    escaped = "".join(f"\\x{ord(c):02x}" if ord(c) < 32 else c for c in password)
    for form in (password, escaped):
        pieces = {form[i : i + 4] for i in range(len(form) - 3)}
        assert not [p for p in pieces if p in result.output], result.output


def test_demo_runs_a_similarity_query_on_an_embedded_database(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)  # the demo must not touch it
    monkeypatch.setenv("COLUMNS", "160")  # rich tables: no doc_path folded across lines
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert "tokio/runtime/index.html" in result.output
    assert "pgvector 0.8" in result.output
    assert "7 inserted" in result.output
    assert "hybrid search for 'async task'" in result.output


def test_quickstart_example_runs(database_url: str) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).parent.parent / "examples" / "quickstart.py"
    env = {**os.environ, "DATABASE_URL": database_url}
    out = subprocess.run(
        [sys.executable, str(example)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "documents: 0" in out.stdout and "pgvector 0.8" in out.stdout


def test_index_commands_build_list_measure_and_drop(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    import numpy as np

    import docstore

    async def load() -> None:
        rng = np.random.default_rng(0)
        async with docstore.connect(database_url) as store:
            await store.documents.upsert_many(
                docstore.Document(
                    source_name="s", doc_path=f"p{i}", content="c", embedding=rng.normal(size=3072)
                )
                for i in range(40)
            )

    asyncio.run(load())
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("COLUMNS", "200")
    created = runner.invoke(app, ["index", "create"])
    assert created.exit_code == 0, created.output
    assert "documents_embedding_hnsw_cosine" in created.output
    listed = runner.invoke(app, ["index", "list"])
    assert "halfvec_cosine_ops" in listed.output and "True" in listed.output
    recall = runner.invoke(app, ["index", "recall", "--sample", "5", "--limit", "3"])
    assert recall.exit_code == 0, recall.output
    assert "recall@3 = 1.000 over 5 queries" in recall.output
    assert "ann" in recall.output and "exact" in recall.output
    bad = runner.invoke(app, ["index", "create", "--metric", "hamming"])
    assert bad.exit_code == 1 and "ValidationError" in bad.output
    dropped = runner.invoke(app, ["index", "drop"])
    assert dropped.exit_code == 0 and "dropped the cosine index" in dropped.output
    text = runner.invoke(app, ["index", "create", "--text"])
    assert text.exit_code == 0 and "full-text index" in text.output
    gone = runner.invoke(app, ["index", "drop", "--text"])
    assert gone.exit_code == 0 and "dropped the full-text index" in gone.output


# -- errors: one line, a documented exit status, never a traceback (issue 13) ----------------

UNENCODED = "postgresql://app:P@ss:w/0rd@/db"
FRAGMENTS = ("P@ss", "ss:w", "w/0rd", "0rd@")
"""Pieces of the unencoded password that must never be printed."""


def one_error_line(result: Any, kind: str, exit_code: int = EXIT_ERROR) -> str:
    """The single ``error: <kind>: ...`` line on stderr, after checking the exit status."""
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {kind}"), result.stderr
    for fragment in FRAGMENTS:
        assert fragment not in result.output
    return str(lines[0])


URL_COMMANDS = [
    ["init"],
    ["health"],
    ["health", "--json"],
    ["stats"],
    ["metrics", "serve"],
    ["index", "create"],
    ["index", "drop"],
    ["index", "list"],
    ["index", "recall"],
    ["compat", "install-views"],
    ["compat", "uninstall-views"],
]


@pytest.mark.parametrize("command", URL_COMMANDS, ids=" ".join)
def test_every_command_refuses_a_malformed_url_naming_the_option(command: list[str]) -> None:
    line = one_error_line(runner.invoke(app, [*command, "--url", UNENCODED]), "ConfigurationError")
    assert "--url: not a valid database URL" in line and "urllib.parse.quote" in line


@pytest.mark.parametrize("command", ["migrate", "validate", "rollback"])
@pytest.mark.parametrize("option", ["--source", "--target"])
def test_migration_commands_name_the_malformed_option(command: str, option: str) -> None:
    result = runner.invoke(app, [command, option, UNENCODED])
    assert f"{option}: not a valid database URL" in one_error_line(result, "ConfigurationError")


@pytest.mark.parametrize(
    ("variable", "args"),
    [
        ("DATABASE_URL", ["validate"]),
        ("DATABASE_READ_URL", ["health"]),
        ("MCPDOCS_DATABASE_URL", ["index", "list"]),
        ("LEGACY_DATABASE_URL", ["validate", "--target", "postgresql://u@127.0.0.1:1/x"]),
    ],
)
def test_malformed_url_variables_are_one_clean_line(
    variable: str, args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's `docstore validate` with the unencoded password crashed with a traceback."""
    monkeypatch.setenv(variable, UNENCODED)
    line = one_error_line(runner.invoke(app, args), "ConfigurationError")
    assert f"{variable}: not a valid database URL" in line


def test_validate_with_the_issue_url_in_a_real_process_prints_no_traceback(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    env |= {"DATABASE_URL": UNENCODED, "COLUMNS": "80", "DOCSTORE_EMBEDDED_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "docstore", "validate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == EXIT_ERROR, out.stderr
    assert out.stdout == "" and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "ConfigurationError: invalid configuration: DATABASE_URL" in lines[0]
    assert not any(fragment in out.stderr for fragment in FRAGMENTS)


def test_usage_errors_exit_2_with_clicks_message() -> None:
    for args in (
        ["metrics", "serve", "--port", "99999"],
        ["metrics", "serve", "--probe-interval", "0"],
        ["index", "recall", "--sample", "many"],
        ["health", "--bogus"],
        ["health", UNENCODED],  # a forgotten --url: click quotes it, redacted
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == EXIT_USAGE, (args, result.output)
        assert "Traceback" not in result.output and "Usage:" in result.output
        assert not any(fragment in result.output for fragment in FRAGMENTS), result.output


def test_a_database_error_is_one_line_even_when_long(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCSTORE_RETRY_ATTEMPTS", "1")
    url = "postgresql://u:hunter2@127.0.0.1:1/" + "x" * 200  # wider than the terminal
    line = one_error_line(runner.invoke(app, ["index", "list", "--url", url]), "Database")
    assert "hunter2" not in line and "u:***@127.0.0.1:1/" in line


def _fail_with(exc: BaseException) -> Any:
    async def fail(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return fail


def test_ctrl_c_exits_130_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "embedded_url", _fail_with(KeyboardInterrupt()))
    result = runner.invoke(app, ["demo"])
    one_error_line(result, "interrupted", EXIT_INTERRUPTED)


def test_an_unusable_file_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    error = PermissionError(13, "Permission denied", "/data/docstore")
    monkeypatch.setattr(cli, "embedded_url", _fail_with(error))
    line = one_error_line(runner.invoke(app, ["demo"]), "PermissionError")
    assert "/data/docstore" in line


def test_a_bug_shows_a_scrubbed_traceback_and_exits_70(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:hunter2@127.0.0.1:1/x")
    bug = RuntimeError("unexpected state for postgresql://u:hunter2@127.0.0.1:1/x (hunter2)")

    class Broken:
        async def __aenter__(self) -> None:
            raise bug

        async def __aexit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(cli, "connect", lambda *a, **k: Broken())
    result = runner.invoke(app, ["health"])
    assert result.exit_code == EXIT_INTERNAL, result.output
    assert "Traceback" in result.stderr and "RuntimeError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("internal error: RuntimeError")
    assert "hunter2" not in result.output


def test_stats_from_a_page_that_is_not_metrics_is_one_line() -> None:
    import http.server
    import threading

    class NotMetrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>{{{ not prometheus\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotMetrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        line = one_error_line(runner.invoke(app, ["stats", "--from", url]), "ConfigurationError")
        assert "not Prometheus metrics text" in line
    finally:
        server.shutdown()
        server.server_close()


def test_help_documents_the_exit_statuses() -> None:
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for code in (EXIT_ERROR, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED):
        assert f"{code} " in result.output


@pytest.mark.parametrize(
    ("signum", "sigint"),
    [
        (signal.SIGINT, signal.SIG_DFL),
        (signal.SIGTERM, signal.SIG_DFL),
        (signal.SIGTERM, signal.SIG_IGN),
    ],
    ids=["ctrl-c", "sigterm", "sigterm-sigint-ignored"],
)
def test_ctrl_c_or_sigterm_in_a_real_process_is_one_line_and_exit_130(
    signum: signal.Signals, sigint: signal.Handlers
) -> None:
    """SIGINT while connecting (to a port that accepts and never answers): asyncio.run
    cancels the command and re-raises KeyboardInterrupt, which becomes one line. SIGTERM
    (docker stop, timeout, systemd) the same way — it killed the process outright, with no
    clean-up — also when SIGINT is ignored (a background job)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(60)
        url = f"postgresql://u:hunter2@127.0.0.1:{server.getsockname()[1]}/x"
        env = {**os.environ, "DOCSTORE_RETRY_ATTEMPTS": "1", "COLUMNS": "80"}
        process = subprocess.Popen(
            [sys.executable, "-m", "docstore", "health", "--url", url],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # SIGINT as a terminal's Ctrl-C finds it: a test run started in the background of
            # a shell without job control inherits SIGINT ignored (then Python never raises
            # KeyboardInterrupt and the command runs into its connect timeout instead)
            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
        )
        conn, _ = server.accept()  # the command is inside asyncpg's connect now
        with conn:
            process.send_signal(signum)
            out, err = process.communicate(timeout=60)
    assert process.returncode == EXIT_INTERRUPTED, err
    assert err.strip() == "error: interrupted" and out == ""


def test_a_data_dir_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").touch()
    result = runner.invoke(app, ["demo", "--data-dir", str(tmp_path / "file" / "sub")])
    line = one_error_line(result, "ConfigurationError")
    assert "Not a directory" in line and "--data-dir" in line


def test_migration_bars_do_not_go_back_when_a_run_resumes() -> None:
    """A resumed run reports its rows from 0 again (its committed chunks come back as
    skipped); the bar kept jumping back to them."""
    from docstore.cli.progress import MigrationBars

    bars = MigrationBars()
    bars("documents", 120, 300, 10_000)
    bars("documents", 20, 300, 12_000)  # the resumed attempt's first skipped chunk
    task = bars.progress.tasks[bars.tasks["documents"]]
    assert task.completed == 120
    bars("documents", 300, 300, 30_000)
    assert task.completed == 300
