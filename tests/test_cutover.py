"""The cutover runbook (docs/cutover.md) and its rehearsal (examples/cutover.py).

The rehearsal runs end to end on its own two embedded servers; the runbook's command lines
must parse against the real CLI, and the rehearsal may only run command lines the runbook
shows, so neither can drift from the CLI or from each other.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main

from docstore.cli import app

ROOT = Path(__file__).parent.parent
RUNBOOK = ROOT / "docs" / "cutover.md"
EXAMPLE = ROOT / "examples" / "cutover.py"
ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def _usage_problem() -> type[Exception]:
    """The base of click's usage errors: recent typer vendors click (``TyperException``),
    older typer used click itself."""
    vendored: type[Exception] | None = getattr(typer, "TyperException", None)
    if vendored is not None:
        return vendored
    base: type[Exception] = importlib.import_module("click").ClickException
    return base


UsageProblem = _usage_problem()

# Step titles of the rehearsal, in order: the runbook's timeline.
STEPS = (
    "T-7d  prepare the new database",
    "T-1d  preflight: docstore migrate --dry-run",
    "T-1d  warm copy and index",
    "T+0   freeze the legacy database",
    "T+5   final copy: docstore migrate --report cutover-report.json",
    "T+10  docstore validate",
    "T+12  legacy SQL on the new database",
    "T+15  switch the app to the new database, still READ_ONLY=true",
    "T+20  GO: READ_ONLY removed",
    "R+0   ROLLBACK: READ_ONLY=true on the app again",
    "R+2   docstore rollback",
    "R+5   the same legacy SQL on both databases",
    "R+10  unfreeze the legacy database",
    "later: retry the cutover",
)


def docstore_args(line: str) -> list[str] | None:
    """The arguments after ``docstore`` in a shell line (``VAR=x docstore a --b c  # note``),
    or None when the line runs something else."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return None
    while tokens and ASSIGNMENT.match(tokens[0]):
        tokens.pop(0)
    return tokens[1:] if tokens and tokens[0] == "docstore" else None


def runbook_commands() -> list[list[str]]:
    """Every ``docstore …`` command line of the runbook: in code blocks and in `inline code`."""
    commands: list[list[str]] = []
    in_block = False
    for line in RUNBOOK.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        for candidate in [line] if in_block else re.findall(r"`([^`]+)`", line):
            args = docstore_args(candidate)
            if args:  # not a bare mention of `docstore`
                commands.append(args)
    return commands


def parse(args: list[str]) -> Any:
    """Resolve ``docstore ARGS`` against the real CLI and parse (and convert) every option
    and value, without running the command. Raises click's usage errors (UsageProblem)."""
    command: Any = typer.main.get_command(app)
    path = ["docstore"]
    rest = list(args)
    while isinstance(getattr(command, "commands", None), dict):  # a group
        if not rest:
            raise typer.BadParameter(f"`{' '.join(path)}` needs a subcommand")
        name = rest.pop(0)
        sub = command.get_command(typer.Context(command), name)
        if sub is None:
            raise typer.BadParameter(f"`{' '.join(path)}` has no command {name!r}")
        path.append(name)
        command = sub
    return command.make_context(" ".join(path), rest)


def test_every_docstore_command_in_the_runbook_parses() -> None:
    commands = runbook_commands()
    shown = {" ".join(c) for c in commands}
    # the runbook's backbone is there
    for expected in (
        "init",
        "health --json",
        "migrate --dry-run",
        "migrate --report cutover-report.json",
        "validate",
        "compat install-views",
        "index create",
        "rollback",
    ):
        assert expected in shown, expected
    for args in commands:
        try:
            parse(args)
        except UsageProblem as exc:
            pytest.fail(f"`docstore {shlex.join(args)}` in docs/cutover.md: {exc}")


def test_the_parser_catches_what_the_cli_would_refuse() -> None:
    parse(["migrate", "--report", "r.json", "--chunk-rows", "500"])
    for bad in (
        ["migrate", "--no-such-option"],
        ["index", "recall", "--sample", "many"],
        ["migrate", "--report"],
        ["health", "--json", "extra"],
        ["compat"],
        ["cutover"],
    ):
        with pytest.raises(UsageProblem):
            parse(bad)
    assert docstore_args('DATABASE_URL="$X" READ_ONLY=true docstore health --json  # x') == [
        "health",
        "--json",
    ]
    assert docstore_args("kubectl rollout undo deployment/doc-server") is None


@pytest.fixture(scope="module")
def rehearsal() -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DOCSTORE_") and k not in ("DATABASE_URL", "LEGACY_DATABASE_URL")
    }
    return subprocess.run(
        [sys.executable, str(EXAMPLE)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_the_cutover_example_runs_end_to_end(
    rehearsal: subprocess.CompletedProcess[str],
) -> None:
    """Acceptance: migrate, validate, switch and rollback, with every check passing."""
    out = rehearsal.stdout
    assert rehearsal.returncode == 0, out[-4000:] + rehearsal.stderr[-4000:]
    titles = re.findall(r"^== step \d+: (.*)$", out, flags=re.MULTILINE)
    assert len(titles) == len(STEPS) + 1  # + the stand-in databases
    for title, expected in zip(titles[1:], STEPS, strict=True):
        assert title.startswith(expected), (title, expected)
    assert "   FAILED:" not in out and "Traceback" not in rehearsal.stderr
    assert re.search(r"^cutover rehearsal passed: \d+ checks in [\d.]+ s$", out, re.MULTILINE)
    for check in (
        "ok: preflight passes and writes nothing",
        "ok: writes raise docstore.ReadOnlyError",
        "ok: legacy SQL on doc_embeddings: the same",
        "ok: docstore rollback: exit status 0",
        "ok: the 4 documents written after the switch have new ids",
        "ok: the edit made after the switch is back",
        "ok: the document deleted after the switch is deleted",
    ):
        assert check in out, check


@pytest.mark.slow
def test_the_example_runs_only_command_lines_the_runbook_shows(
    rehearsal: subprocess.CompletedProcess[str],
) -> None:
    ran = [
        args
        for line in re.findall(r"^   \$ (.*)$", rehearsal.stdout, flags=re.MULTILINE)
        if (args := docstore_args(line)) is not None
    ]
    assert len(ran) >= 15
    shown = {tuple(c) for c in runbook_commands()}
    for args in ran:
        assert tuple(args) in shown, f"`docstore {shlex.join(args)}` is not in docs/cutover.md"
