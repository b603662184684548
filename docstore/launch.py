"""The ``docstore`` console script's entry point.

Loading the command line takes about a second (pydantic, asyncpg, numpy, rich, the
migrator). Ctrl-C during that second used to print a Python traceback; here it ends like
Ctrl-C during a command: one ``error: interrupted`` line, exit status 130.
"""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130  # as docstore.cli.EXIT_INTERRUPTED, which this must not import first


def main() -> None:
    """Load the command line and run it (``[project.scripts] docstore``)."""
    try:
        from docstore.cli import app
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(EXIT_INTERRUPTED) from None
    app()
