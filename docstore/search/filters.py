"""Mongo-style search filters → a SQL ``WHERE`` clause with bound parameters (pure functions).

Fields are the columns ``doc_type, source_name, doc_path, token_count, created_at,
updated_at`` and metadata paths ``"metadata.crate_version"`` / ``"metadata.a.b"``.
Operators: ``$eq $ne $lt $lte $gt $gte $in $nin $between $exists $like $ilike $contains``,
combined with ``$and $or $not``; a plain value means ``$eq`` and several keys in one object
mean AND. A list (a tuple is one), or an object, given to ``$eq``/``$ne`` is compared for
equality with the stored JSON, never containment (``["a"]`` does not equal ``["a", "b"]``: use
``$contains`` for that). ``$contains`` is a substring test on the text columns; on a metadata
field its operand decides: a string is found as an element of an array or within a string
value (``"tok"`` matches ``["tok", "x"]`` and ``"tokio"``), a list or an object by JSON
containment (``["a", "b"]``: an array holding both, in any order), a number, boolean or None
as an array element. At a path of object keys each but the substring test is served by the
GIN index on ``metadata`` (``{"$contains": ["tok"]}`` asks for an element alone). On a metadata
field ``None`` is JSON's null: ``{"metadata.k": None}`` matches an explicit null, not a
missing key, and ``$ne``/``$nin`` match documents without the key (``$exists`` tests
presence); on a column ``None`` is SQL's NULL (``IS NULL``, and ``$ne`` ``IS NOT NULL``).
A metadata path segment PostgreSQL reads as an integer (``tags.0``,
``tags.-1``: the last element) indexes an array, for every operator. A timestamp column takes
a plain date or datetime too (an aware one as naive UTC). Every value *and every metadata key*
is a bound parameter: nothing from the filter enters the SQL text except the fixed column names
of the whitelist. numpy's integers and floats count as the Python numbers they hold. Anything
unknown or mis-shaped raises :class:`~docstore.errors.FilterError`, as does a filter needing
more bound values than a statement can take (:data:`MAX_PARAMETER`) or a datetime UTC moves
out of range.

    >>> build_filter({"source_name": "tokio", "metadata.crate_version": {"$in": ["1.0"]}})
    ('(d.source_name = $1 AND (d.metadata #> $2::text[]) = ANY($3::jsonb[]))', ['tokio', ['crate_version'], ['"1.0"']])
"""  # noqa: E501

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import numpy as np

from docstore.errors import FilterError
from docstore.models import as_int, naive_utc, unstorable

# column name -> PostgreSQL type used for parameter casts
COLUMNS: dict[str, str] = {
    "doc_type": "text",
    "source_name": "text",
    "doc_path": "text",
    "token_count": "integer",
    "created_at": "timestamp",
    "updated_at": "timestamp",
}
METADATA_PREFIX = "metadata."
MAX_DEPTH = 32
MAX_INT_DIGITS = 1_000
"""Decimal digits of an integer compared with a metadata number, at most."""
_INT_BOUND = 10**MAX_INT_DIGITS
MAX_VALUE_CONTAINERS = 1_000_000
"""Objects and lists in one filter value, at most (each is looked at for its keys)."""
_CONTAINERS = (dict, list, tuple, Mapping)
_PLAIN = frozenset({str, int, float, bool, type(None)})
MAX_LIST = 100_000
"""Values an ``$in``/``$nin`` list may hold (a million took 2 s to check, blocking the loop)."""
_INT4 = (-(2**31), 2**31 - 1)
MAX_PARAMETER = 32_767 - 16
"""The highest placeholder a filter may use: PostgreSQL binds at most 32,767 parameters per
statement, and the statement the filter goes into has a few of its own after it."""

LIST_OPERAND = " = ANY("
"""How ``$in`` and ``$nin`` compare with their bound list (:func:`binds_a_long_list`)."""
HASHED_LIST = 9
"""The shortest list PostgreSQL hashes for ``x = ANY(list)`` (``MIN_ARRAY_SIZE_FOR_HASHED_SAOP``);
it does so only in a plan made with the list's values."""


def binds_a_long_list(sql: str, params: Sequence[Any]) -> bool:
    """Whether a statement holding a filter of :func:`build_filter` compares with a bound list
    (``$in``, ``$nin``) long enough for PostgreSQL to hash: one to plan with its values every
    time (:mod:`docstore.search.statements`). A metadata path is a list too, so a long one
    counts here as well (it costs those round trips, nothing else)."""
    return LIST_OPERAND in sql and any(
        isinstance(p, list) and len(p) >= HASHED_LIST for p in params
    )


@dataclass
class _Params:
    values: list[Any] = field(default_factory=list)
    first: int = 1

    def add(self, value: Any) -> str:
        number = self.first + len(self.values)
        if number > MAX_PARAMETER:
            raise FilterError(
                f"filter too large: it needs more than {MAX_PARAMETER:,} bound values"
                " (PostgreSQL's limit per statement); use $in with a list instead of many $or"
            )
        self.values.append(value)
        return f"${number}"


@dataclass(frozen=True)
class _Target:
    """What a condition applies to: a whitelisted column, or a metadata path."""

    name: str
    column: str | None = None
    path: tuple[str, ...] = ()

    def sql(self, alias: str, params: _Params, *, as_text: bool = False) -> str:
        if self.column is not None:
            return f"{alias}.{self.column}"
        op = "#>>" if as_text else "#>"
        return f"({alias}.metadata {op} {params.add(list(self.path))}::text[])"


def _target(name: str) -> _Target:
    if name in COLUMNS:
        return _Target(name, column=name)
    if name.startswith(METADATA_PREFIX) and len(name) > len(METADATA_PREFIX):
        path = tuple(name[len(METADATA_PREFIX) :].split("."))
        if any(part == "" for part in path):
            raise FilterError(f"empty segment in metadata path {name[:80]!r}")
        problem = unstorable(name)
        if problem:
            raise FilterError(f"metadata path {problem}")
        return _Target(name, path=path)
    raise FilterError(
        f"unknown filter field {name[:80]!r}: use one of {', '.join(COLUMNS)} or 'metadata.<key>'"
    )


# -- value checks -----------------------------------------------------------------------------

# a plain value a column compares with (bool and numpy's numbers too; dates and datetimes for
# the timestamp columns): anything else needs an operator object
_SCALARS = (str, numbers.Number, date, type(None))


def _timestamp(value: Any) -> Any:
    # timestamp columns hold naive UTC (as Document stores them); asyncpg can't compare an
    # aware datetime with them
    return naive_utc(value) if isinstance(value, datetime | date) else None


# a column's kind -> the value it takes as sent (None: refused)
_COLUMN_VALUE: dict[str, Callable[[Any], Any]] = {
    "text": lambda value: value if isinstance(value, str) else None,
    "integer": as_int,  # an int or numpy integer, not a bool
    "timestamp": _timestamp,
}


def _column_value(target: _Target, value: Any, op: str) -> Any:
    kind = COLUMNS[target.column or ""]
    try:
        sent = _COLUMN_VALUE[kind](value)
    except ValueError as exc:  # an aware datetime out of range in UTC
        raise FilterError(f"{op} on {target.name}: the datetime {exc}") from None
    if sent is None:
        raise FilterError(f"{op} on {target.name} needs a {kind} value, got {type(value).__name__}")
    if kind == "integer" and not _INT4[0] <= sent <= _INT4[1]:
        raise FilterError(f"{op} on {target.name}: {sent} is out of the integer column's range")
    if isinstance(sent, str):
        _text_value(target, sent, op)
    return sent


def _text_value(target: _Target, value: Any, op: str) -> str:
    """A string operand (patterns, metadata string comparisons), checked for NUL bytes and
    lone surrogates (neither can be sent to PostgreSQL)."""
    if not isinstance(value, str):
        raise FilterError(f"{op} on {target.name} needs a string, got {type(value).__name__}")
    problem = unstorable(value)
    if problem:
        raise FilterError(f"{op} on {target.name}: value {problem}")
    return value


def _plain_number(value: Any) -> Any:
    """``json.dumps``' fallback: numpy's integers and floats as Python numbers."""
    if isinstance(value, np.integer | np.floating):
        return value.item()
    raise TypeError(type(value).__name__)


def _json(value: Any, target: _Target, op: str, *, keys_checked: bool = False) -> str:
    """``value`` as JSON text, or a FilterError (``keys_checked``: its keys were)."""
    if not keys_checked and isinstance(value, _CONTAINERS) and _nonstring_key(value, target, op):
        raise FilterError(f"{op} on {target.name}: an object in the value has a non-string key")
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False, default=_plain_number)
    except (TypeError, ValueError):
        raise FilterError(f"{op} on {target.name}: value is not JSON-serializable") from None
    except RecursionError:
        raise FilterError(f"{op} on {target.name}: value is nested too deeply") from None
    if "\\u0000" in text:
        raise FilterError(f"{op} on {target.name}: value contains a NUL byte")
    problem = unstorable(text)  # a lone surrogate in a string or key
    if problem:
        raise FilterError(f"{op} on {target.name}: value {problem}")
    return text


def _json_list(items: list[Any], target: _Target, op: str) -> list[str]:
    """Each of ``items`` as JSON text, their keys checked in one walk of the list."""
    if _nonstring_key(items, target, op):
        raise FilterError(f"{op} on {target.name}: an object in the value has a non-string key")
    return [_json(i, target, op, keys_checked=True) for i in items]


def _nonstring_key(value: Any, target: _Target, op: str) -> bool:
    """Whether a mapping in ``value`` has a key that is not a string (json.dumps would make
    it one: ``{1: "a", "1": "b"}`` a duplicate). Each container once (a cycle, which
    json.dumps then refuses, ends the walk); more than :data:`MAX_VALUE_CONTAINERS` is a
    :class:`FilterError`."""
    stack, seen = [value], {id(value)}
    while stack:
        one = stack.pop()
        if isinstance(one, Mapping):
            if not all(isinstance(k, str) for k in one):
                return True
            one = one.values()
        for item in one:
            if type(item) not in _PLAIN and isinstance(item, _CONTAINERS) and id(item) not in seen:
                seen.add(id(item))
                stack.append(item)
        if len(seen) > MAX_VALUE_CONTAINERS:
            raise FilterError(
                f"{op} on {target.name}: the value holds more than"
                f" {MAX_VALUE_CONTAINERS:,} objects and lists"
            )
    return False


# a path segment PostgreSQL's #> reads as an array subscript (strtol: leading blanks and a
# sign allowed, "-1" is the last element); containment would only match it as an object key
_ARRAY_INDEX = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+")


def _nested(path: tuple[str, ...], value: Any) -> Any:
    for key in reversed(path):
        value = {key: value}
    return value


# -- operator builders: (target, value, params, alias) -> sql ---------------------------------

Builder = Callable[[_Target, Any, _Params, str], str]


def _eq(t: _Target, v: Any, p: _Params, a: str) -> str:
    if t.column is not None:
        if v is None:
            return f"{t.sql(a, p)} IS NULL"
        return f"{t.sql(a, p)} = {p.add(_column_value(t, v, '$eq'))}"
    if any(_ARRAY_INDEX.fullmatch(part) for part in t.path):
        # nested objects cannot reach into an array (metadata.tags.0, .-1): the path operator can
        return f"coalesce({t.sql(a, p)} = {p.add(_json(v, t, '$eq'))}::jsonb, false)"
    # containment uses the GIN index on metadata; it is equality for a scalar at an object path
    contained = f"{a}.metadata @> {p.add(_json(_nested(t.path, v), t, '$eq'))}::jsonb"
    if isinstance(v, list | tuple | dict):
        # a list or object contains its supersets (["a"] is in ["a", "b"]): the index narrows,
        # equality decides (as $in does)
        same = _json(v, t, "$eq", keys_checked=True)  # checked in the nested value just now
        return f"({contained} AND {t.sql(a, p)} = {p.add(same)}::jsonb)"
    return contained


def _ne(t: _Target, v: Any, p: _Params, a: str) -> str:
    if t.column is not None and v is not None:
        return f"{t.sql(a, p)} IS DISTINCT FROM {p.add(_column_value(t, v, '$ne'))}"
    return f"NOT ({_eq(t, v, p, a)})"


def _comparison(sql_op: str, name: str) -> Builder:
    def build(t: _Target, v: Any, p: _Params, a: str) -> str:
        if t.column is not None:
            return f"{t.sql(a, p)} {sql_op} {p.add(_column_value(t, v, name))}"
        if isinstance(v, np.integer | np.floating):
            v = v.item()  # numpy's numbers compare as the Python int or float they hold
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise FilterError(f"{name} on {t.name} needs a number or a string")
        if isinstance(v, str):
            value = _text_value(t, v, name)
            return (
                f"(CASE WHEN jsonb_typeof({t.sql(a, p)}) = 'string' "
                f"THEN {t.sql(a, p, as_text=True)} END) {sql_op} {p.add(value)}"
            )
        if v != v or v in (float("inf"), float("-inf")):
            raise FilterError(f"{name} on {t.name} needs a finite number")
        if isinstance(v, int) and not -_INT_BOUND < v < _INT_BOUND:  # the driver sent some as 0
            raise FilterError(f"{name} on {t.name}: the number has more than 1,000 digits")
        # a float bound as is would be sent as its exact binary expansion (0.1 as
        # 0.1000000000000000055…) while the stored JSON holds the shortest form (0.1): bind that
        number = Decimal(repr(float(v))) if isinstance(v, float) else int(v)
        return (
            f"(CASE WHEN jsonb_typeof({t.sql(a, p)}) = 'number' "
            f"THEN {t.sql(a, p, as_text=True)}::numeric END) {sql_op} {p.add(number)}::numeric"
        )

    return build


def _list(v: Any, t: _Target, op: str) -> list[Any]:
    if not isinstance(v, list | tuple) or not v:
        raise FilterError(f"{op} on {t.name} needs a non-empty list")
    if len(v) > MAX_LIST:  # each value is checked in Python, on the event loop: ~2 us each
        raise FilterError(
            f"{op} on {t.name} takes at most {MAX_LIST:,} values, not {len(v):,}: filter on "
            "what those documents share (a metadata key, a source), or split the search"
        )
    return list(v)


def _in(t: _Target, v: Any, p: _Params, a: str) -> str:
    items = _list(v, t, "$in")
    if t.column is not None:
        values = [_column_value(t, item, "$in") for item in items]
        return f"{t.sql(a, p)}{LIST_OPERAND}{p.add(values)}::{COLUMNS[t.column]}[])"
    return f"{t.sql(a, p)}{LIST_OPERAND}{p.add(_json_list(items, t, '$in'))}::jsonb[])"


def _nin(t: _Target, v: Any, p: _Params, a: str) -> str:
    return f"NOT coalesce({_in(t, v, p, a)}, false)"


def _between(t: _Target, v: Any, p: _Params, a: str) -> str:
    bounds = _list(v, t, "$between")
    if len(bounds) != 2:
        raise FilterError(f"$between on {t.name} needs [low, high]")
    return f"({_OPS['$gte'](t, bounds[0], p, a)} AND {_OPS['$lte'](t, bounds[1], p, a)})"


def _exists(t: _Target, v: Any, p: _Params, a: str) -> str:
    if not isinstance(v, bool):
        raise FilterError(f"$exists on {t.name} needs true or false")
    return f"{t.sql(a, p)} IS {'NOT ' if v else ''}NULL"


def _like(sql_op: str, name: str) -> Builder:
    def build(t: _Target, v: Any, p: _Params, a: str) -> str:
        if t.column is not None and COLUMNS[t.column] != "text":
            raise FilterError(f"{name} applies to text fields, not {t.name}")
        value = _text_value(t, v, name)
        if (len(value) - len(value.rstrip("\\"))) % 2:
            raise FilterError(f"{name} on {t.name}: the pattern ends with an escape (\\)")
        return f"{t.sql(a, p, as_text=True)} {sql_op} {p.add(value)}"

    return build


def _contained(t: _Target, value: Any, p: _Params, a: str) -> str:
    """The metadata value at ``t`` contains the JSON ``value`` (jsonb ``@>``): as the whole
    document's containment (the GIN index on ``metadata`` serves it) unless a path segment
    indexes an array, which only the path operator can follow."""
    if any(_ARRAY_INDEX.fullmatch(part) for part in t.path):
        return f"coalesce({t.sql(a, p)} @> {p.add(_json(value, t, '$contains'))}::jsonb, false)"
    return f"{a}.metadata @> {p.add(_json(_nested(t.path, value), t, '$contains'))}::jsonb"


def _contains_json(t: _Target, v: Any, p: _Params, a: str) -> str:
    # a list or object: JSON containment (["a", "b"] is in ["b", "c", "a"]; a tuple is a list)
    return _contained(t, list(v) if isinstance(v, tuple) else v, p, a)


def _contains_element(t: _Target, v: Any, p: _Params, a: str) -> str:
    # a number, true/false or null: an array holding it
    return _contained(t, [v], p, a)


def _contains_text(t: _Target, v: Any, p: _Params, a: str) -> str:
    # a string: an array holding it, or a string value holding it (as on the text columns)
    text = _text_value(t, v, "$contains")
    element = _contained(t, [text], p, a)
    substring = (
        f"strpos(CASE WHEN jsonb_typeof({t.sql(a, p)}) = 'string'"
        f" THEN {t.sql(a, p, as_text=True)} END, {p.add(text)}) > 0"
    )
    return f"({element} OR coalesce({substring}, false))"


# what $contains means on a metadata field, by the operand's kind (:func:`_operand_kind`)
_CONTAINS: dict[str, Builder] = {
    "text": _contains_text,
    "json": _contains_json,
    "scalar": _contains_element,
}


def _operand_kind(value: Any) -> str:
    if isinstance(value, str):
        return "text"
    return "json" if isinstance(value, list | tuple | dict) else "scalar"


def _contains(t: _Target, v: Any, p: _Params, a: str) -> str:
    if t.column is not None:
        if COLUMNS[t.column] != "text":
            raise FilterError(f"$contains applies to text or metadata fields, not {t.name}")
        return f"strpos({t.sql(a, p)}, {p.add(_column_value(t, v, '$contains'))}) > 0"
    return _CONTAINS[_operand_kind(v)](t, v, p, a)


_OPS: dict[str, Builder] = {
    "$eq": _eq,
    "$ne": _ne,
    "$lt": _comparison("<", "$lt"),
    "$lte": _comparison("<=", "$lte"),
    "$gt": _comparison(">", "$gt"),
    "$gte": _comparison(">=", "$gte"),
    "$in": _in,
    "$nin": _nin,
    "$between": _between,
    "$exists": _exists,
    "$like": _like("LIKE", "$like"),
    "$ilike": _like("ILIKE", "$ilike"),
    "$contains": _contains,
}
OPERATORS = frozenset(_OPS)
LOGICAL = frozenset({"$and", "$or", "$not"})


# -- the tree ---------------------------------------------------------------------------------


def _node(node: Any, p: _Params, alias: str, depth: int) -> str:
    if depth > MAX_DEPTH:
        raise FilterError(f"filter nested deeper than {MAX_DEPTH} levels")
    if not isinstance(node, Mapping) or not node:
        raise FilterError("a filter must be a non-empty object")
    parts = []
    for key, value in node.items():
        if not isinstance(key, str):
            raise FilterError("filter keys must be strings")
        if key in ("$and", "$or"):
            if not isinstance(value, list | tuple) or not value:
                raise FilterError(f"{key} needs a non-empty list of filters")
            joiner = " AND " if key == "$and" else " OR "
            parts.append("(" + joiner.join(_node(v, p, alias, depth + 1) for v in value) + ")")
        elif key == "$not":
            parts.append(f"NOT coalesce({_node(value, p, alias, depth + 1)}, false)")
        elif key.startswith("$"):
            raise FilterError(f"unknown logical operator {key[:40]!r}: use $and, $or or $not")
        else:
            parts.append(_condition(_target(key), value, p, alias))
    return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"


def _condition(target: _Target, spec: Any, p: _Params, alias: str) -> str:
    if isinstance(spec, Mapping) and not all(isinstance(k, str) for k in spec):
        # json.dumps would make them strings: an operator object taken for a value to equal
        raise FilterError(
            f"{target.name[:80]}: an operator object's (or a value's) keys must be strings"
        )
    if isinstance(spec, Mapping) and any(k.startswith("$") for k in spec):
        parts = []
        for op, value in spec.items():
            builder = _OPS.get(op)
            if builder is None:
                raise FilterError(
                    f"unknown operator {op[:40]!r} on {target.name[:80]!r}: "
                    f"use one of {', '.join(sorted(_OPS))}"
                )
            parts.append(builder(target, value, p, alias))
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"
    if not isinstance(spec, _SCALARS) and target.column is not None:
        raise FilterError(f"{target.name} needs a value or an operator object")
    return _eq(target, spec, p, alias)


def build_filter(
    filter: Mapping[str, Any] | None, *, first_param: int = 1, alias: str = "d"
) -> tuple[str, list[Any]]:
    """Translate ``filter`` into ``(sql, params)`` for a ``WHERE`` clause on ``documents``.

    Placeholders start at ``$first_param``; columns are qualified with ``alias``. ``None`` or
    ``{}`` gives ``("TRUE", [])``. Raises :class:`FilterError` for unknown fields or
    operators and for values of the wrong shape.
    """
    if filter is None or (isinstance(filter, Mapping) and not filter):
        return "TRUE", []
    if not alias.isidentifier():
        raise FilterError("alias must be an identifier")
    params = _Params(first=first_param)
    return _node(filter, params, alias, 0), params.values
