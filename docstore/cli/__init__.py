"""The ``docstore`` command line (typer + rich).

Every command resolves its database like :func:`docstore.connect` (``--url``, then
``DATABASE_URL``, ``MCPDOCS_DATABASE_URL``, the embedded server); a malformed ``--url``,
``--source`` or ``--target`` is refused before anything connects, naming the option.

No command shows a traceback for a user error. Exit status, the same for every command
(:data:`EXIT_CODES`):

- 0: done.
- 1: the command failed: a docstore error (the database is unreachable, a setting or URL is
  invalid, the schema is missing, ...), a file or address that can't be used, or
  ``validate``/``migrate`` found differences. One line on stderr:
  ``error: <ErrorClass>: <message>``.
- 2: usage error: an unknown option, a missing or out-of-range option value (click's message).
- 70: internal error, a bug in docstore: the traceback, then an ``internal error:`` line.
- 130: interrupted (Ctrl-C or SIGTERM; the command cleans up first, and further Ctrl-Cs or
  SIGTERMs while it does are ignored).

Passwords are never printed: URLs in messages are redacted, and the secrets of every URL on
the command line or in the URL variables are scrubbed from whatever is printed, usage
errors and tracebacks included (tracebacks show no local variables).

Layout: :mod:`docstore.cli.base` holds the app, the error handling and the options every
command shares; one module per command group (:mod:`~docstore.cli.database`: init, health;
:mod:`~docstore.cli.metrics`: stats, metrics; :mod:`~docstore.cli.index`;
:mod:`~docstore.cli.migration`: migrate, validate, rollback; :mod:`~docstore.cli.compat`;
:mod:`~docstore.cli.demo_command`: demo), registered below (``--help`` lists the commands,
then the groups, each in the order registered).
Commands reach the database through ``docstore.cli.connect`` and ``docstore.cli.embedded_url``
(looked up on this package when they run), so substituting them here reaches every command.
"""

from __future__ import annotations

from docstore.cli.base import (
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    DocTypeOption,
    UrlOption,
    app,
    console,
    err_console,
)
from docstore.cli.compat import SchemaOption, compat_app, compat_install, compat_uninstall
from docstore.cli.database import health, init
from docstore.cli.demo_command import demo
from docstore.cli.index import (
    MetricOption,
    index_app,
    index_calibrate,
    index_create,
    index_drop,
    index_list,
    index_recall,
)
from docstore.cli.metrics import metrics_app, metrics_serve, print_metrics, stats
from docstore.cli.migration import (
    NEXT_STEPS,
    SourceOption,
    TargetOption,
    migrate,
    rollback,
    validate,
)
from docstore.embedded import embedded_url, release_embedded
from docstore.store import connect

app.command()(init)
app.command()(health)
app.command()(stats)
app.add_typer(metrics_app, name="metrics")
app.add_typer(index_app, name="index")
app.command()(migrate)
app.command()(validate)
app.command()(rollback)
app.add_typer(compat_app, name="compat")
app.command()(demo)


def main() -> None:  # pragma: no cover - console entry point
    app()


__all__ = [
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "NEXT_STEPS",
    "DocTypeOption",
    "MetricOption",
    "SchemaOption",
    "SourceOption",
    "TargetOption",
    "UrlOption",
    "app",
    "compat_app",
    "compat_install",
    "compat_uninstall",
    "connect",
    "console",
    "demo",
    "embedded_url",
    "err_console",
    "health",
    "index_app",
    "index_calibrate",
    "index_create",
    "index_drop",
    "index_list",
    "index_recall",
    "init",
    "main",
    "metrics_app",
    "metrics_serve",
    "migrate",
    "print_metrics",
    "release_embedded",
    "rollback",
    "stats",
    "validate",
]
