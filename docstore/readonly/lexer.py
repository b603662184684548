"""A lexer of PostgreSQL's SQL, for the boundaries of its tokens: what the read-only guard
(:mod:`docstore.readonly.server_files`) and the in-doubt rules
(:func:`docstore.readonly.statements.may_commit_partway`) read a statement's text with.

Pure functions over text. :func:`tokens` delimits tokens as PostgreSQL's lexer does
(comments, quoted names, ``E''``/``U&''``/``$tag$`` strings, with or without
``standard_conforming_strings``) and raises :class:`Unreadable` for text it cannot delimit
with certainty, which every caller treats as the unsafe answer.
"""

from __future__ import annotations

import re


def comment_end(sql: str, i: int) -> int | None:
    """The end of the (nested) ``/* */`` comment starting at ``i``; None if unterminated."""
    depth, i, n = 1, i + 2, len(sql)
    while depth:
        if i >= n:
            return None
        if sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
        else:
            i += 1
    return i


def blank_end(sql: str, i: int, also: str = "") -> int | None:
    """Where what starts at ``i`` stops being whitespace, ``--`` and (nested) ``/* */``
    comments (and characters of ``also``); None if a comment never closes."""
    n = len(sql)
    while i < n:
        if sql[i] in _SPACE or sql[i] in also:
            i += 1
        elif sql.startswith("--", i):
            while i < n and sql[i] not in "\r\n":
                i += 1
        elif sql.startswith("/*", i):
            end = comment_end(sql, i)
            if end is None:
                return None
            i = end
        else:
            break
    return i


_SPACE = " \t\n\r\f\v"
_IDENT_RE = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9$\x80-\U0010ffff]*")
_DOLLAR_RE = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9\x80-\U0010ffff]*)?\$")
_PARAM_RE = re.compile(r"\$[0-9]+")

Token = tuple[str, str]
"""``(kind, text)``: ``word`` (an unquoted name or keyword, ASCII lower case), ``name`` (a
quoted one), ``string``, ``param``, ``punct`` (one character)."""


class Unreadable(Exception):
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
        raise Unreadable("a string continued over a line break")


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
    raise Unreadable("an unterminated string")


def tokens(sql: str, *, standard_strings: bool = True) -> list[Token]:
    """The tokens of ``sql`` as PostgreSQL's lexer delimits them (comments dropped), with
    ``standard_conforming_strings`` as given. Raises :class:`Unreadable` for text it cannot
    delimit with certainty (unterminated tokens, a string continued over a line break, a NUL,
    a bit string followed by a quote)."""
    if "\x00" in sql:
        raise Unreadable("a NUL character")
    out: list[Token] = []
    i, n = 0, len(sql)
    while i < n:
        blank = blank_end(sql, i)
        if blank is None:
            raise Unreadable("an unterminated comment")
        if blank > i:
            i = blank
            continue
        c = sql[i]
        if c == "'":
            i = _string_end(sql, i, not standard_strings)
            out.append(("string", ""))
            _check_not_continued(sql, i)
        elif c == '"':
            j = i + 1
            while True:
                j = sql.find('"', j)
                if j < 0:
                    raise Unreadable("an unterminated quoted name")
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
                    raise Unreadable("an unterminated dollar-quoted string")
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
                    raise Unreadable("a bit string followed by a quote")
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
