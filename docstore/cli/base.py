"""What every ``docstore`` command shares: the typer app, error handling and exit statuses,
secret scrubbing, the ``--url`` option and the async-to-sync bridge.

The exit statuses and the error contract are described in :mod:`docstore.cli`; they are
implemented here, once, in :class:`_DocstoreGroup`, so no command handles errors itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import re
import signal
import threading
import traceback
import unicodedata
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from docstore.errors import DocstoreError
from docstore.masking import MIN_SCRUBBED_SECRET, REDACTED, mask_secrets
from docstore.migrate.context import DOC_TYPE_RULE, doc_type_ok
from docstore.urls import check_url, redact_url, url_secrets

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
EXIT_CODES = {
    0: "done",
    EXIT_ERROR: "failed: a docstore error, a file or address that can't be used, or "
    "differences found (one 'error:' line on stderr)",
    EXIT_USAGE: "usage error: unknown option, missing or out-of-range value",
    EXIT_INTERNAL: "internal error: a bug in docstore (traceback on stderr)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C or SIGTERM)",
}
"""Every exit status of every command, documented in ``docstore --help``."""

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"()]+")
_URL_VARIABLES = (
    "DATABASE_URL",
    "DATABASE_READ_URL",
    "MCPDOCS_DATABASE_URL",
    "LEGACY_DATABASE_URL",
)
_ARGV = "docstore.argv"


def _secrets(argv: list[str]) -> list[str]:
    """Secrets of the URLs on the command line and in the URL variables, longest first."""
    urls = [a.partition("=")[2] if a.startswith("--") else a for a in argv if "://" in a]
    urls += [v for v in (os.environ.get(n) for n in _URL_VARIABLES) if v]
    found = {s for s in url_secrets(*urls) if len(s) >= MIN_SCRUBBED_SECRET}
    return sorted(found, key=len, reverse=True)


def _control(char: str) -> bool:
    return unicodedata.category(char).startswith("C")  # control, format, unassigned, …


# what click escapes in a usage error's values (typer/_click/utils.py), as \xNN: C0 and C1
# controls only, while a format, private-use or unassigned character is printed as it is
_CLICK_ESCAPED = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _written(text: str) -> list[str]:
    """``text`` and the escaped forms click may print it in (a control character in an
    argument appears as ``\\x1f`` — a tab too, as ``\\x09`` in click's "unexpected extra
    argument" — other characters as they are), longest first."""
    forms = {
        text,
        text.encode("unicode_escape").decode("ascii"),
        repr(text)[1:-1],
        "".join(c.encode("unicode_escape").decode("ascii") if _control(c) else c for c in text),
        "".join(_hex_escape(c) if _control(c) else c for c in text),
        _CLICK_ESCAPED.sub(lambda m: _hex_escape(m[0]), text),
    }
    return sorted(forms, key=len, reverse=True)


def _hex_escape(char: str) -> str:
    """``char`` as a Python hex escape (``\\x09``, ``\\u200b``, ``\\U000e0001``)."""
    code = ord(char)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )


def _pieces(secret: str) -> list[str]:
    """The runs of ``secret`` between its control characters that are long enough to scrub:
    whatever form a printer escapes those characters in, these runs appear as they are."""
    runs = "".join("\0" if _control(c) else c for c in secret).split("\0")
    runs += _CLICK_ESCAPED.split(secret)
    return [r for r in dict.fromkeys(runs) if len(r) >= MIN_SCRUBBED_SECRET and r != secret]


def _redact_arguments(text: str, urls: list[str]) -> str:
    """``text`` with every form of every URL argument shown redacted, all found in the text as
    given first: a form that overlaps another's (an argument ending inside the next) is
    hidden together with it, as ``***``, so neither is left half shown."""
    shown = {form: redact_url(url) for url in urls for form in _written(url)}
    found = sorted(
        (m.start(), m.start() + len(form), form)
        for form in shown
        for m in re.finditer(f"(?={re.escape(form)})", text)
    )
    parts: list[str] = []
    group: list[tuple[int, int, str]] = []  # occurrences overlapping one another
    end = 0
    for occurrence in [*found, None]:
        if group and (occurrence is None or occurrence[0] >= max(o[1] for o in group)):
            start, stop = group[0][0], max(o[1] for o in group)
            widest = max(group, key=lambda o: o[1] - o[0])
            whole = all(widest[0] <= o[0] and o[1] <= widest[1] for o in group)
            parts += [text[end:start], shown[widest[2]] if whole else REDACTED]
            end, group = stop, []
        if occurrence is not None:
            group.append(occurrence)
    return "".join([*parts, text[end:]])


def _clean(text: str, argv: list[str]) -> str:
    """``text`` safe to print: URL arguments redacted, every known secret scrubbed."""
    text = _redact_arguments(text, [arg for arg in argv if "://" in arg])
    # every form of every secret found in the text first: replacing one secret's form before
    # looking for the next could break the other's (a URL's "user:pw" and its "pw")
    text = mask_secrets(text, [f for s in _secrets(argv) for f in (*_written(s), *_pieces(s))])
    return _URL.sub(lambda m: redact_url(m[0]), text)


def _error_line(kind: str, message: str, argv: list[str]) -> None:
    text = re.sub(r"\s*\n\s*", " ", _clean(message, argv)).strip()
    err_console.print(
        f"[bold red]error:[/] {escape(kind)}{': ' if text else ''}{escape(text)}",
        highlight=False,
        soft_wrap=True,
    )


class _DocstoreGroup(TyperGroup):
    """Every command's errors, handled once: docstore errors and other user errors become one
    ``error:`` line and a documented exit status (see :mod:`docstore.cli`), usage errors
    keep click's message with URL passwords redacted, bugs show a (scrubbed) traceback."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> Any:
        argv = list(args)
        try:
            ctx = super().make_context(info_name, args, parent, **extra)
        except typer.TyperException as exc:
            exc.message = _clean(exc.message, argv)
            raise
        ctx.meta[_ARGV] = argv
        return ctx

    def invoke(self, ctx: Any) -> Any:
        argv: list[str] = ctx.meta.get(_ARGV, [])
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except typer.TyperException as exc:  # click's usage errors: it prints them, exit 2
            exc.message = _clean(exc.message, argv)
            raise
        except DocstoreError as exc:
            _error_line(type(exc).__name__, str(exc), argv)
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            # the interrupted work may leave asyncio futures nobody awaits (a connection the
            # driver was opening); asyncio would log them at exit, after this one line
            logging.getLogger("asyncio").setLevel(logging.CRITICAL)
            _error_line("interrupted", "", argv)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except OSError as exc:  # a file, directory or address that can't be used
            if exc.errno == errno.EPIPE:
                raise  # stdout closed early (docstore stats | head): typer exits quietly
            _error_line(type(exc).__name__, str(exc), argv)
            raise typer.Exit(EXIT_ERROR) from None
        except Exception as exc:
            trace = "".join(traceback.format_exception(exc))
            err_console.print(_clean(trace, argv), markup=False, highlight=False, soft_wrap=True)
            err_console.print(
                f"[bold red]internal error:[/] {escape(type(exc).__name__)}: this is a bug in "
                "docstore, not in your input or setup; please report it with the traceback "
                "above",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(EXIT_INTERNAL) from None


app = typer.Typer(
    cls=_DocstoreGroup,
    help="docstore: the Doc Server's data layer on PostgreSQL + pgvector.",
    epilog="Exit status: " + "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items()) + ".",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

T = TypeVar("T")


def checked_url(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    """Refuse a malformed database URL option before anything connects, naming the option
    (an empty value means "not given", as in :func:`docstore.connect`)."""
    if value and not ctx.resilient_parsing:
        check_url(value, param.opts[0] if param.opts else str(param.name))
    return value


UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Database URL (default: DATABASE_URL, MCPDOCS_DATABASE_URL, else embedded).",
        show_default=False,
        callback=checked_url,
    ),
]


def run_async(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work()`` to completion on a new event loop (one per command): uvloop's where it
    is installed (a dependency on Linux and macOS), asyncio's own otherwise.

    uvloop reads the sockets into reused buffers: a ``docstore migrate`` relays every byte of
    the legacy database through this process and reads every stored byte back, and spent
    25 % less CPU doing it (bench/RESULTS.md, issue 15).

    Ctrl-C and SIGTERM cancel the command (:class:`_Stop`); it then raises
    ``KeyboardInterrupt`` (one ``error: interrupted`` line, exit 130)."""
    stop = _Stop()
    with _stopped_by_signals(stop), asyncio.Runner(loop_factory=loop_factory()) as runner:
        try:
            result = runner.run(stop.run(work))
        except (Exception, asyncio.CancelledError) as exc:
            if stop.requested or _interrupted(exc):
                raise KeyboardInterrupt from exc  # one 'error: interrupted' line, exit 130
            raise
    if stop.requested:  # during the loop's shutdown, or the command swallowed the cancel
        raise KeyboardInterrupt
    return result


class _Stop:
    """How a command stops on Ctrl-C or SIGTERM (``docker stop``, ``timeout``, systemd,
    ``kill``): the first cancels its task, as asyncio.Runner's Ctrl-C does, so its clean-up
    runs — connections cancel their statements and close, the store closes, the embedded
    server is released, a demo's throwaway directory is deleted. Every later one finds it
    stopping already and changes nothing: asyncio.Runner's second Ctrl-C raised
    ``KeyboardInterrupt`` wherever the clean-up was (a connection never given back, a pool
    close waiting 30 s for it, asyncio's warnings), and a SIGTERM once the handler was
    restored killed the process half-way (status -15)."""

    def __init__(self) -> None:
        self.requested = False
        self._task: asyncio.Task[Any] | None = None

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            return  # stopping already
        self.requested = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            # wake the loop if it sleeps in select() (as asyncio.Runner's handler does)
            task.get_loop().call_soon_threadsafe(lambda: None)

    async def run(self, work: Callable[[], Awaitable[T]]) -> T:
        """``work()`` as the task a signal cancels (at once if one came before it began)."""
        self._task = asyncio.current_task()
        if self.requested:
            raise asyncio.CancelledError
        return await work()


@contextlib.contextmanager
def _stopped_by_signals(stop: _Stop) -> Iterator[None]:
    """SIGTERM, and SIGINT unless it is ignored (a background job: ``nohup … &``, a shell
    without job control) or handled by someone else, go to ``stop``. Once one came, both are
    ignored from then on: nothing may interrupt the rest of the process's way out — not even
    the interpreter's shutdown, which puts its default back for a signal Python handles
    (a SIGTERM then ended the process with status -15 instead of 130). Only in the main
    thread (where signals are handled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handled = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        handled.append(signal.SIGINT)
    previous = {signum: signal.signal(signum, stop.on_signal) for signum in handled}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_IGN if stop.requested else handler)


@contextlib.contextmanager
def sigterm_ignored() -> Iterator[None]:
    """SIGTERM ignored while a command cleans up on its way out (its first SIGTERM already
    stopped it, see :func:`run_async`): a second one would kill the clean-up half-way. Only
    in the main thread (where signals are handled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is what an interruption left behind: its cause/context chain holds a
    ``KeyboardInterrupt`` (raised by code the command ran, not by a signal: :class:`_Stop`
    handles those)."""
    seen: set[int] = set()
    chain: list[BaseException | None] = [exc]
    while chain:
        current = chain.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, KeyboardInterrupt):
            return True
        chain += [current.__cause__, current.__context__]
    return False


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loops the CLI runs on: uvloop's where installed, else None (asyncio's)."""
    try:
        import uvloop
    except ImportError:  # Windows, or uninstalled: asyncio's default loop
        return None
    return uvloop.new_event_loop


def async_command(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    """Turn an async command body into a sync typer command (errors: :class:`_DocstoreGroup`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return run_async(lambda: fn(*args, **kwargs))

    return wrapper


def checked_doc_type(ctx: typer.Context, value: str) -> str:
    """A doc_type docstore can store, or a usage error before anything connects."""
    if not ctx.resilient_parsing and not doc_type_ok(value):
        raise typer.BadParameter(f"must be {DOC_TYPE_RULE}")
    return value


DocTypeOption = Annotated[
    str,
    typer.Option("--doc-type", help="doc_type of the legacy docs.", callback=checked_doc_type),
]
