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
  quoted or not, ``U&"…"`` escapes decoded; in a string literal too, since functions such as
  ``query_to_xml`` run SQL given as text) is refused.

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

from docstore.readonly.statements import comment_end

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
# Cheap substring tests first: a statement with none of these needs no closer look.
_SUSPECT = ("copy", "u&", "lo_export", "pg_file_", "replication_slot")
_UNICODE_RE = re.compile(r"""u&(["'])((?:(?!\1).|\1\1)*)\1""", re.IGNORECASE | re.DOTALL)
_UESCAPE_RE = re.compile(r"uescape\s*'([^'])'", re.IGNORECASE)

# -- a lexer of PostgreSQL's SQL, for the boundaries of its tokens ----------------------------

_SPACE = " \t\n\r\f\v"
_IDENT_RE = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9$\x80-\U0010ffff]*")
_DOLLAR_RE = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9\x80-\U0010ffff]*)?\$")
_PARAM_RE = re.compile(r"\$[0-9]+")

Token = tuple[str, str]
"""``(kind, text)``: ``word`` (an unquoted name or keyword, ASCII lower case), ``name`` (a
quoted one), ``string``, ``param``, ``punct`` (one character)."""


class _Unreadable(Exception):
    """Text whose tokens the lexer cannot be sure of."""


def _check_not_continued(sql: str, i: int) -> None:
    """After a string ending at ``i``: blanks and ``--`` comments holding a line break, then a
    quote, which PostgreSQL reads as the same string continued (in the first one's mode). This
    is a superset of its rule; such text is refused rather than read one way."""
    n, newline = len(sql), False
    while i < n:
        if sql[i] in _SPACE:
            newline = newline or sql[i] in "\r\n"
            i += 1
        elif sql.startswith("--", i):
            while i < n and sql[i] not in "\r\n":
                i += 1
        else:
            break
    if newline and sql.startswith("'", i):
        raise _Unreadable("a string continued over a line break")


def _comment_end(sql: str, i: int) -> int:
    """The end of the (nested) ``/* */`` comment starting at ``i``."""
    end = comment_end(sql, i)
    if end is None:
        raise _Unreadable("an unterminated comment")
    return end


def _string_end(sql: str, i: int, backslashes: bool, doubling: bool = True) -> int:
    """The end of the string whose opening quote is at ``i``."""
    n = len(sql)
    i += 1
    while i < n:
        c = sql[i]
        if backslashes and c == "\\":
            i += 2
        elif c == "'":
            if doubling and sql.startswith("''", i):
                i += 2
            else:
                return i + 1
        else:
            i += 1
    raise _Unreadable("an unterminated string")


def _tokens(sql: str, *, standard_strings: bool = True) -> list[Token]:
    """The tokens of ``sql`` as PostgreSQL's lexer delimits them (comments dropped), with
    ``standard_conforming_strings`` as given. Raises :class:`_Unreadable` for text it cannot
    delimit with certainty (unterminated tokens, a string continued over a line break, a NUL,
    a bit string followed by a quote)."""
    if "\x00" in sql:
        raise _Unreadable("a NUL character")
    out: list[Token] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in _SPACE:
            i += 1
        elif sql.startswith("--", i):
            while i < n and sql[i] not in "\r\n":
                i += 1
        elif sql.startswith("/*", i):
            i = _comment_end(sql, i)
        elif c == "'":
            i = _string_end(sql, i, not standard_strings)
            out.append(("string", ""))
            _check_not_continued(sql, i)
        elif c == '"':
            j = i + 1
            while True:
                j = sql.find('"', j)
                if j < 0:
                    raise _Unreadable("an unterminated quoted name")
                if not sql.startswith('""', j):
                    break
                j += 2
            out.append(("name", sql[i + 1 : j].replace('""', '"')))
            i = j + 1
        elif c == "$":
            if param := _PARAM_RE.match(sql, i):
                out.append(("param", param.group()))
                i = param.end()
            elif tag := _DOLLAR_RE.match(sql, i):
                end = sql.find(tag.group(), tag.end())
                if end < 0:
                    raise _Unreadable("an unterminated dollar-quoted string")
                out.append(("string", ""))
                i = end + len(tag.group())
            else:
                out.append(("punct", c))
                i += 1
        elif word := _IDENT_RE.match(sql, i):
            text, i = word.group(), word.end()
            prefix = text.lower() if len(text) == 1 else ""
            if prefix and sql.startswith("'", i):  # E'…', B'…', X'…', N'…'
                escapes = prefix == "e" or (prefix == "n" and not standard_strings)
                bits = prefix in "bx"
                i = _string_end(sql, i, escapes, doubling=not bits)
                if bits and sql.startswith("'", i):
                    raise _Unreadable("a bit string followed by a quote")
                out.append(("string", ""))
                _check_not_continued(sql, i)
            elif prefix == "u" and sql.startswith("&'", i):
                i = _string_end(sql, i + 1, False)
                out.append(("string", ""))
                _check_not_continued(sql, i)
            elif prefix == "u" and sql.startswith('&"', i):
                out.append(("punct", "&"))  # the quoted name follows, read on the next turn
                i += 1
            else:
                out.append(("word", text.translate(_ASCII_LOWER)))
        else:
            out.append(("punct", c))
            i += 1
    return out


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# -- the checks ---------------------------------------------------------------------------


def _copies_to_stdout(sql: str, standard_strings: bool) -> bool:
    """Whether ``sql`` (a COPY) reads as ``COPY <table or (query)> TO STDOUT …``."""
    try:
        found = _tokens(sql, standard_strings=standard_strings)
    except _Unreadable:
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


def _code_point(hex_digits: str | None, escape: str) -> str:
    if hex_digits is None:
        return escape
    value = int(hex_digits, 16)
    return chr(value) if value < 0x110000 else ""


def _statement_refusal(sql: str, keyword: str | None) -> str | None:
    low = sql.lower()
    if not any(suspect in low for suspect in _SUSPECT):
        return None
    # a COPY whose first keyword the guard could not read is checked as a COPY all the same
    copy = keyword == "copy" or (keyword is None and "copy" in low)
    if copy and not all(_copies_to_stdout(sql, s) for s in (True, False)):
        return (
            "COPY to or from a file or program reaches the server's filesystem; only "
            "COPY … TO STDOUT (copy_from_query, copy_from_table) runs"
        )
    names = _NAMES_RE.search(low)
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
