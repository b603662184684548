"""What PostgreSQL can store: text without NUL bytes or lone surrogates, JSON objects
(``jsonb``) within docstore's limits, timestamps within the years 1–9999 in UTC. Used by the
models (:mod:`docstore.models`), filters and lookups, so one rule decides everywhere; every
check raises ``ValueError`` with a message that names the place but never echoes a large
value."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

MAX_METADATA_BYTES = 1_000_000
"""Bytes of a metadata object serialized as JSON, at most."""
MAX_METADATA_DEPTH = 100
"""Nesting levels of metadata: deeper JSON is refused before Python's own recursion limit
(about 1,000 frames) can turn validation or ``json.dumps`` into a RecursionError."""


def unstorable(text: str) -> str | None:
    """Why PostgreSQL can't store ``text`` (a NUL byte, a lone surrogate), or None."""
    if "\x00" in text:
        return "contains a NUL byte (\\x00), which PostgreSQL cannot store"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"contains a lone surrogate (U+{ord(text[exc.start]):04X} at position {exc.start}),"
            " which is not valid Unicode and cannot be stored"
        )
    return None


def check_json(value: Any, path: str = "metadata", depth: int = 0) -> Any:
    """``value`` checked as JSON ``jsonb`` can store, or ``ValueError`` naming the first
    problem. Returns ``value`` itself, or — when it holds a mapping that is not a dict
    (``UserDict``, ``mappingproxy``), which ``json.dumps`` cannot write — a copy with each
    such mapping made a dict (the containers on its way rebuilt, the rest shared)."""
    if isinstance(value, str):
        problem = unstorable(value)
        if problem:
            raise ValueError(f"{path} {problem}")
    elif isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path} is NaN or infinite, which JSON cannot represent")
    elif depth >= MAX_METADATA_DEPTH and isinstance(value, Mapping | list | tuple):
        raise ValueError(f"{path[:200]} is nested deeper than {MAX_METADATA_DEPTH} levels")
    elif isinstance(value, Mapping):
        return _json_mapping(value, path, depth)
    elif isinstance(value, list | tuple):
        items = [
            check_json(item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value)
        ]
        if any(new is not old for new, old in zip(items, value, strict=True)):
            return type(value)(items) if type(value) in (list, tuple) else items
    else:
        raise ValueError(f"{path} holds a {type(value).__name__}, which is not a JSON type")
    return value


def _json_mapping(value: Mapping[Any, Any], path: str, depth: int) -> Any:
    """:func:`check_json` of a mapping: its keys must be strings PostgreSQL can store."""
    copy: dict[str, Any] | None = None if isinstance(value, dict) else {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise ValueError(f"{path} has a non-string key")
        problem = unstorable(key)
        if problem:
            raise ValueError(f"{path} has a key that {problem}")
        checked = check_json(item, f"{path}.{printable(key[:40])}", depth + 1)
        if copy is None and checked is not item:
            copy = dict(value)  # the first change: from here on, a copy
        if copy is not None:
            copy[key] = checked
    return value if copy is None else copy


def in_utc(value: datetime) -> datetime:
    """An aware ``value`` in UTC — how PostgreSQL holds both timestamp types, and how the
    driver sends them — or ``ValueError`` when UTC moves it outside the years 1–9999 (an
    ``OverflowError`` in the driver, a failed write); a naive ``value`` as is."""
    if value.tzinfo is None:
        return value
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            "is out of range: in UTC it falls before year 1 or after year 9999, which"
            " cannot be sent as a PostgreSQL timestamp"
        ) from None


def naive_utc(value: Any) -> Any:
    """An aware datetime as naive UTC (how TIMESTAMP columns hold time); anything else as is.
    ``ValueError`` if UTC moves it outside the years 1–9999 (:func:`in_utc`)."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return in_utc(value).replace(tzinfo=None)
    return value


def parse_timestamp(value: Any) -> datetime | None:
    """None, a datetime, or an ISO-8601 string (as stored in JSON) → datetime or None."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


def aware_utc(value: Any) -> Any:
    """A naive datetime as UTC (docstore's convention for naive times; asyncpg would read it
    in the Python process's local zone when it fills a TIMESTAMPTZ column)."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def printable(text: str) -> str:
    """``text`` for an error message: NUL bytes and lone surrogates escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def json_object(value: Any) -> dict[str, Any]:
    """``value`` (a mapping, JSON text or None) as a dict that can be stored as ``jsonb``, or
    ``ValueError`` naming the first problem (the constructor's full check)."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError("must be a JSON object") from None
        except RecursionError:
            raise ValueError(f"is nested deeper than {MAX_METADATA_DEPTH} levels") from None
    if not isinstance(value, Mapping):
        raise ValueError("must be a JSON object (a dict)")
    value = check_json(value)
    try:
        # UTF-8 bytes: json.dumps' default \uXXXX escapes counted a CJK character as 6
        size = _utf8_size(value)
    except (TypeError, ValueError) as exc:  # e.g. an int past Python's 4,300-digit limit
        raise ValueError(f"is not storable as JSON ({exc})") from None
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"serializes to more than {MAX_METADATA_BYTES} bytes")
    return dict(value)


_STORED_JSON = json.JSONEncoder(allow_nan=False)  # json.dumps' text, NaN refused
# a \u0000 escape that is not itself an escaped backslash followed by "u0000"
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
# JSON escapes, left to right: an escaped backslash (skipped), a high surrogate and the low one
# that must follow it, or a low surrogate alone
_SURROGATE_ESCAPES = re.compile(
    r"\\\\|\\u(d[89ab][0-9a-f]{2})(\\ud[c-f][0-9a-f]{2})?|\\u(d[c-f][0-9a-f]{2})"
)


def _lone_surrogate(text: str) -> bool:
    return any(
        m.group(3) or (m.group(1) and not m.group(2)) for m in _SURROGATE_ESCAPES.finditer(text)
    )


def metadata_json(value: Mapping[str, Any]) -> str:
    """``value`` as the JSON text the ``jsonb`` codec sends for it (``json.dumps``), or
    ``ValueError`` for what PostgreSQL would refuse in the middle of a write: a non-JSON
    value, NaN or infinity, a NUL byte, a lone surrogate, more than
    :data:`MAX_METADATA_BYTES`. The cheap re-check of a dict that may have been edited in
    place since it was validated (the constructor's check walks it: 3x the cost)."""
    try:
        text = _STORED_JSON.encode(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"is not storable as JSON ({exc})") from None
    except RecursionError:
        raise ValueError(f"is nested deeper than {MAX_METADATA_DEPTH} levels") from None
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise ValueError("holds a NUL byte, which PostgreSQL cannot store")
    if "\\ud" in text and _lone_surrogate(text):
        raise ValueError("holds a lone surrogate, which UTF-8 cannot encode")
    # the limit is on UTF-8 bytes, as the constructor counts them: the text sent escapes every
    # non-ASCII character (an emoji is 12 characters of it, 4 bytes of UTF-8), so its length
    # is an upper bound, and only text past the limit is measured again
    if len(text) > MAX_METADATA_BYTES and _utf8_size(value) > MAX_METADATA_BYTES:
        raise ValueError(f"serializes to more than {MAX_METADATA_BYTES} bytes")
    return text


def _utf8_size(value: Mapping[str, Any]) -> int:
    return len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8"))


def indexed_text_bytes(value: Any) -> int:
    """UTF-8 bytes of ``metadata->>'key'`` for a metadata value (what an expression index on
    it holds): a string as is, a number as jsonb prints it (``1e300`` in full), anything
    else as JSON text; 0 for None (SQL NULL)."""
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    return _jsonb_text_bytes(value)


def _jsonb_text_bytes(value: Any) -> int:
    """UTF-8 bytes of ``value`` as jsonb prints it: ``", "`` and ``": "`` between items, and
    every number in full — a float nested in a list or object too (``1e300`` is 301 digits
    there, where ``json.dumps`` writes 6)."""
    if isinstance(value, float) and math.isfinite(value):
        return len(format(Decimal(repr(value)), "f"))
    if type(value) is int:  # as json.dumps writes it (a bool is no int here): 6x cheaper
        return len(str(value))
    if isinstance(value, Mapping):
        items = [_jsonb_text_bytes(str(k)) + 2 + _jsonb_text_bytes(v) for k, v in value.items()]
        return 2 + sum(items) + 2 * max(len(items) - 1, 0)
    if isinstance(value, list | tuple):
        parts = [_jsonb_text_bytes(v) for v in value]
        return 2 + sum(parts) + 2 * max(len(parts) - 1, 0)
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
