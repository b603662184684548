"""Statements that reach the server's filesystem: a read-only transaction does not stop them.

PostgreSQL's ``READ ONLY`` flag keeps writes out of the *database*; a role with the right
privileges (a superuser, ``pg_write_server_files``, ``pg_execute_server_program``, ``EXECUTE``
on ``lo_export``) still writes the *server's files* or runs programs inside a read-only
transaction: ``COPY … TO '/path'``, ``COPY … TO PROGRAM 'cmd'``, ``lo_export(oid, '/path')``,
adminpack's ``pg_file_write``, replication slots (files under ``pg_replslot``), a ``DO`` block
building such a ``COPY`` dynamically. :func:`statement_refusal` is the client's check of a
statement's text, before it is sent:

* a ``COPY`` runs only when it reads as ``COPY … TO STDOUT`` (what ``copy_from_query`` and
  ``copy_from_table`` send) under every reading PostgreSQL could give it: its text is lexed
  as PostgreSQL's lexer does (comments, quoted names, ``E''``/``U&''``/``$tag$`` strings) with
  and without backslash escapes in plain strings, and a ``COPY`` with something the lexer
  could read two ways (string continuation across a newline, an unterminated token, a NUL)
  is refused;
* a statement that names one of :data:`FILE_FUNCTIONS` anywhere in its text (in any case,
  quoted or not, ``U&"…"`` and backslash escapes decoded; in a string literal too, since
  functions such as ``query_to_xml`` run SQL given as text) is refused.

Both hold for every role (for one without those privileges the server would refuse anyway:
the error is :class:`~docstore.errors.ReadOnlyError` rather than a permission error).

What it cannot see: SQL built at run time inside the server (a ``DO`` block, a function that
runs ``EXECUTE`` on text it assembles, ``dblink``). So a read-only store also refuses ``DO``
and ``LOAD`` (:data:`CODE_KEYWORDS`) on a connection whose role can write the server's files
(:func:`~docstore.readonly.file_capabilities`), and ``health()`` does not report the client
guarantee for such a role: only a role without those privileges, or a standby, makes the
server itself refuse.
"""

from __future__ import annotations

import functools
import re

from docstore.readonly.lexer import Unreadable, tokens

FILE_FUNCTIONS = frozenset(
    {
        "lo_export",  # a large object to a server file
        "pg_file_write",  # adminpack
        "pg_file_rename",
        "pg_file_unlink",
        "pg_create_physical_replication_slot",  # files under pg_replslot, WAL kept for them
        "pg_create_logical_replication_slot",
        "pg_copy_physical_replication_slot",
        "pg_copy_logical_replication_slot",
        "pg_drop_replication_slot",
        "pg_replication_slot_advance",
    }
)
"""Functions that write the server's files even inside a read-only transaction: a read-only
store refuses any statement whose text names one."""

CODE_KEYWORDS = frozenset({"do", "load"})
"""Statements that run code the client cannot read (a ``DO`` block's dynamic SQL or untrusted
language, the library ``LOAD`` loads): refused when the role can write the server's files."""

# searched in lower-cased text, as whole identifiers (hello_export names no function)
_NAMES_RE = re.compile(
    r"(?<![a-z0-9_$\x80-\U0010ffff])(?:"
    + "|".join(sorted(FILE_FUNCTIONS))
    + r")(?![a-z0-9_$\x80-\U0010ffff])"
)
# Anywhere, in text with a backslash: in an E'' string "\nlo_export(" names the function,
# though the escape's letter reads as part of a longer word.
_NAMES_ANYWHERE_RE = re.compile("|".join(sorted(FILE_FUNCTIONS)))
# Cheap substring tests first: a statement with none of these needs no closer look.
_SUSPECT = ("copy", "u&", "lo_export", "pg_file_", "replication_slot")
_UNICODE_RE = re.compile(r"""u&(["'])((?:(?!\1).|\1\1)*)\1""", re.IGNORECASE | re.DOTALL)
_UESCAPE_RE = re.compile(r"uescape\s*'([^'])'", re.IGNORECASE)

# -- the checks ---------------------------------------------------------------------------


def _copies_to_stdout(sql: str, standard_strings: bool) -> bool:
    """Whether ``sql`` (a COPY) reads as ``COPY <table or (query)> TO STDOUT …``."""
    try:
        found = tokens(sql, standard_strings=standard_strings)
    except Unreadable:
        return False
    depth = 0
    for k, (kind, text) in enumerate(found):
        if kind == "punct" and text in "([":
            depth += 1
        elif kind == "punct" and text in ")]":
            depth -= 1
            if depth < 0:
                return False
        elif depth == 0 and kind == "word" and text in ("to", "from"):
            # the first TO/FROM outside parentheses is COPY's direction (both are reserved
            # words, so no table or column name is spelled so unquoted)
            after = found[k + 1] if k + 1 < len(found) else None
            return text == "to" and after == ("word", "stdout")
    return False


def _unicode_decoded(sql: str) -> str:
    """The bodies of ``U&"…"`` names and ``U&'…'`` strings with their escapes decoded, under
    ``\\`` and under every ``UESCAPE`` character the text declares."""
    escapes = {"\\", *(m.group(1) for m in _UESCAPE_RE.finditer(sql))}
    decoded = []
    for match in _UNICODE_RE.finditer(sql):
        for escape in escapes:
            e = re.escape(escape)
            decoded.append(
                re.sub(
                    rf"{e}(?:\+([0-9A-Fa-f]{{6}})|([0-9A-Fa-f]{{4}})|{e})",
                    lambda m, esc=escape: _code_point(m.group(1) or m.group(2), esc),
                    match.group(2),
                )
            )
    return "\n".join(decoded)


_BACKSLASH_RE = re.compile(r"\\(x[0-9A-Fa-f]{1,2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|[0-7]{1,3}|.)")
_BACKSLASH_LETTERS = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _backslash_decoded(sql: str) -> str:
    """``sql`` with every backslash escape decoded as in an ``E''`` string (``\\x6c`` is
    ``l``): what a string PostgreSQL reads with escapes may spell. Applied to the whole text
    (which parts are such strings depends on ``standard_conforming_strings``)."""

    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code[0] in "xuU" and len(code) > 1:
            value = int(code[1:], 16)
        elif code[0] in "01234567":
            value = int(code, 8)
        else:
            return _BACKSLASH_LETTERS.get(code, code)
        return chr(value) if value < 0x110000 else ""

    return _BACKSLASH_RE.sub(one, sql)


def _code_point(hex_digits: str | None, escape: str) -> str:
    if hex_digits is None:
        return escape
    value = int(hex_digits, 16)
    return chr(value) if value < 0x110000 else ""


def _statement_refusal(sql: str, keyword: str | None) -> str | None:
    low = sql.lower()
    if not any(suspect in low for suspect in _SUSPECT) and "\\" not in low:
        return None  # (a backslash escape may spell a name: E'\\x6co_export(…)')
    # a COPY whose first keyword the guard could not read is checked as a COPY all the same
    copy = keyword == "copy" or (keyword is None and "copy" in low)
    if copy and not all(_copies_to_stdout(sql, s) for s in (True, False)):
        return (
            "COPY to or from a file or program reaches the server's filesystem; only "
            "COPY … TO STDOUT (copy_from_query, copy_from_table) runs"
        )
    names = _NAMES_RE.search(low)
    if names is None and "\\" in low:  # E'' strings (or plain ones, escapes on)
        names = _NAMES_ANYWHERE_RE.search(low + "\n" + _backslash_decoded(sql).lower())
    if names is None and "u&" in low:
        names = _NAMES_RE.search(_unicode_decoded(sql).lower())
    if names is not None:
        return f"{names.group()}() writes to the server's filesystem"
    return None


_CACHEABLE = 4096
_cached_refusal = functools.lru_cache(maxsize=512)(_statement_refusal)


def statement_refusal(sql: str, keyword: str | None) -> str | None:
    """Why a read-only store refuses ``sql`` (whose leading keyword is ``keyword``, see
    :func:`~docstore.readonly.leading_keyword`) before sending it — a ``COPY`` other than
    ``TO STDOUT``, a function of :data:`FILE_FUNCTIONS` — or None."""
    if len(sql) <= _CACHEABLE:
        return _cached_refusal(sql, keyword)
    return _statement_refusal(sql, keyword)
