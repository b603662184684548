"""How a read-only connection reads SQL before sending it: the statement's first keyword
(:func:`leading_keyword`, a small lexer) and what an argument-less ``execute()`` string is
(:func:`classify`: one of asyncpg's own statements, a ``BEGIN``, or a statement to guard).

Pure functions over text, no connection: the guard in :mod:`docstore.readonly.guard` trusts
the answers only to skip work (a read needs no ``BEGIN READ ONLY`` of its own), so anything
they cannot read is treated as a statement that might write.
"""

from __future__ import annotations

import functools
import re
from typing import Literal

from docstore.readonly.lexer import Token, Unreadable, blank_end, tokens

# Statements that cannot commit, begin or end a transaction, so one of them may run on its
# own (an implicit transaction under the session's read-only default). CALL and DO can commit
# outside a transaction block; every other statement that can is a transaction statement.
READ_KEYWORDS = frozenset({"select", "with", "values", "table", "show", "explain"})

# Exact statements asyncpg itself sends (Transaction, Connection._reset): one statement each,
# run as asyncpg would run them (simple protocol).
_ASYNCPG_STATEMENTS = frozenset({"COMMIT;", "ROLLBACK;", "COMMIT", "ROLLBACK"})
_SAVEPOINT_RE = re.compile(
    r"(?:SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO) __asyncpg_savepoint_\d+__;"
)
# BEGIN / START TRANSACTION with its modes, as asyncpg's Transaction.start() writes it (and as
# people type it): started here as BEGIN … READ ONLY plus its snapshot, in one round trip.
_ISOLATION = r"READ\s+COMMITTED|READ\s+UNCOMMITTED|REPEATABLE\s+READ|SERIALIZABLE"
_MODE = rf"ISOLATION\s+LEVEL\s+(?:{_ISOLATION})|READ\s+ONLY|READ\s+WRITE|(?:NOT\s+)?DEFERRABLE"
_BEGIN_RE = re.compile(
    rf"\s*(?:BEGIN(?:\s+(?:TRANSACTION|WORK))?|START\s+TRANSACTION)"
    rf"(?P<modes>(?:(?:\s*,\s*|\s+)(?:{_MODE}))*)\s*;?\s*",
    re.IGNORECASE | re.ASCII,
)
_MODE_RE = re.compile(_MODE, re.IGNORECASE | re.ASCII)
# A string of nothing but SET LOCAL name = plain-value statements (docstore's search settings):
# no quotes, comments or other statements can hide in it, so it may use the simple protocol.
_SET_LOCAL = (
    r"SET\s+LOCAL\s+[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?"
    r"\s*(?:=|\s+TO\s)\s*-?[A-Za-z0-9_.]+"
)
_SET_LOCALS_RE = re.compile(
    rf"\s*{_SET_LOCAL}(?:\s*;\s*{_SET_LOCAL})*\s*;?\s*", re.IGNORECASE | re.ASCII
)
_WORD_RE = re.compile(r"[A-Za-z]+")


def leading_keyword(sql: str) -> str | None:
    """The first keyword of ``sql`` in lower case, past whitespace, ``--`` and (nested)
    ``/* */`` comments and opening parentheses, as PostgreSQL's lexer reads them; None when
    the statement does not start with a plain keyword (a quoted name, an unclosed comment...).

    The guard only trusts the answer to let a statement skip its ``BEGIN READ ONLY`` wrapper,
    so anything it cannot read is treated as a statement that might write.
    """
    n = len(sql)
    i = blank_end(sql, 0, "(")
    if i is None:
        return None
    match = _WORD_RE.match(sql, i)
    if match is None:
        return None
    end = match.end()
    if end < n and (sql[end].isalnum() or sql[end] in "_$" or ord(sql[end]) >= 0x80):
        return None  # an identifier such as select_x: not a keyword
    return match.group().lower()


TRANSACTION_KEYWORDS = frozenset(
    {"commit", "end", "rollback", "abort", "begin", "start", "prepare", "call", "do"}
)
"""Statements that end, begin or may commit a transaction inside a string of several
(``CALL`` and ``DO`` may ``COMMIT``): without one, PostgreSQL runs the whole string as one
implicit transaction."""


def may_commit_partway(sql: str) -> bool:
    """Whether ``sql``, sent as one ``execute()`` string, may commit part of itself before a
    later statement fails: it holds several statements and one of them is a
    :data:`TRANSACTION_KEYWORDS` statement (``INSERT …; COMMIT; SELECT …``). Read by
    :func:`~docstore.readonly.lexer.tokens` with and without ``standard_conforming_strings``
    (a database or role may turn it off); text it cannot delimit, or a statement whose first
    word it cannot read, counts as "may": the answer only ever makes a failure count as in
    doubt (:mod:`docstore.core.doubt`)."""
    for standard_strings in (True, False):
        try:
            found = tokens(sql, standard_strings=standard_strings)
        except Unreadable:
            return True
        firsts: list[Token] = []
        starting = True
        for token in found:
            if token == ("punct", ";"):
                starting = True
            elif starting and token != ("punct", "("):
                firsts.append(token)
                starting = False
        if len(firsts) > 1 and any(
            kind != "word" or word in TRANSACTION_KEYWORDS for kind, word in firsts
        ):
            return True
    return False


_CACHEABLE = 4096  # characters: docstore's own statements are shorter, and few


@functools.lru_cache(maxsize=512)
def _cached_keyword(sql: str) -> str | None:
    return leading_keyword(sql)


def cached_leading_keyword(sql: str) -> str | None:
    """:func:`leading_keyword`, remembered for the short statements a store repeats."""
    return _cached_keyword(sql) if len(sql) <= _CACHEABLE else leading_keyword(sql)


Classified = tuple[Literal["simple", "begin", "statement"], str]


def _classify(sql: str) -> Classified:
    """How ``execute(sql)`` without arguments runs: ``("simple", sql)`` one of asyncpg's own
    statements or plain ``SET LOCAL``s, ``("begin", "BEGIN … READ ONLY")`` (``""``: it asked
    for READ WRITE), ``("statement", sql)`` one statement, guarded."""
    if sql in _ASYNCPG_STATEMENTS or _SAVEPOINT_RE.fullmatch(sql):
        return "simple", sql
    if _SET_LOCALS_RE.fullmatch(sql) and "read_only" not in sql.lower():
        return "simple", sql
    begin = _BEGIN_RE.fullmatch(sql)
    if begin is None:
        return "statement", sql
    modes = [" ".join(m.upper().split()) for m in _MODE_RE.findall(begin["modes"])]
    if "READ WRITE" in modes:
        return "begin", ""
    start = "BEGIN"
    for mode in modes:
        if mode.startswith("ISOLATION"):
            start = "BEGIN " + mode  # the last one, as PostgreSQL takes it
    return "begin", start + " READ ONLY" + (" DEFERRABLE" if "DEFERRABLE" in modes else "")


_classify_cached = functools.lru_cache(maxsize=512)(_classify)
_partway_cached = functools.lru_cache(maxsize=512)(may_commit_partway)


def cached_may_commit_partway(sql: str) -> bool:
    """:func:`may_commit_partway`, remembered for the short strings a store repeats."""
    return _partway_cached(sql) if len(sql) <= _CACHEABLE else may_commit_partway(sql)


def classify(sql: str) -> Classified:
    """How ``execute(sql)`` without arguments runs (see :func:`_classify`), remembered for the
    short statements a store repeats."""
    return _classify_cached(sql) if len(sql) <= _CACHEABLE else _classify(sql)
