"""``import docstore`` is light, its public names load on first use, and Ctrl-C while the
``docstore`` command line loads ends with one line and exit status 130 (no traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import docstore
from docstore import cli
from docstore.launch import EXIT_INTERRUPTED

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_import_docstore_loads_only_the_errors() -> None:
    r = _python(
        "import sys\n"
        "import docstore\n"
        "heavy = ('asyncpg', 'numpy', 'pydantic', 'rich', 'typer', 'docstore.store')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy))\n"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_every_public_name_resolves_and_is_listed() -> None:
    for name in docstore.__all__:
        assert getattr(docstore, name) is not None
        assert name in dir(docstore)
    assert docstore.connect is __import__("docstore.store", fromlist=["connect"]).connect
    namespace: dict[str, object] = {}
    exec("from docstore import *", namespace)  # the star import users write
    assert set(docstore.__all__) <= set(namespace)


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        docstore.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("docstore.no_such_thing did not raise")


def test_ctrl_c_while_the_command_line_loads_exits_130_with_one_line() -> None:
    # the interrupt arrives while docstore.cli is being imported (as Ctrl-C in the second
    # the imports take would): an import hook raises it there, deterministically
    r = _python(
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'docstore.cli.base':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "sys.argv = ['docstore', '--help']\n"
        "from docstore.launch import main\n"
        "main()\n"
    )
    # launch.py repeats the CLI's exit status (it must answer before the CLI is imported)
    assert r.returncode == EXIT_INTERRUPTED == cli.EXIT_INTERRUPTED
    assert r.stderr == "error: interrupted\n"
    assert r.stdout == ""


def test_the_console_script_runs_the_command_line() -> None:
    r = _python(
        "import sys\nsys.argv = ['docstore', '--help']\nfrom docstore.launch import main\nmain()\n"
    )
    assert r.returncode == 0, r.stderr
    assert "migrate" in r.stdout and "Usage" in r.stdout
