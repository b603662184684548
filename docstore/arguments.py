"""Checks of the plain arguments docstore's APIs take besides models — keys given to a
lookup, row ids, counts, flags — each failing with :class:`~docstore.errors.ValidationError`
naming the argument (re-exported by :mod:`docstore.models`)."""

from __future__ import annotations

import contextlib
import decimal
import math
import numbers
import operator
from typing import Any

from docstore.errors import ValidationError
from docstore.storable import unstorable


def key_text(field: str, value: Any, *, optional: bool = False) -> Any:
    """A ``doc_type``/``source_name``/``doc_path`` given to a lookup or delete: a string
    PostgreSQL can store (None too when ``optional``), else :class:`ValidationError`."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string", field=field)
    problem = unstorable(value)
    if problem:
        raise ValidationError(f"{field} {problem}", field=field)
    return value


def check_key(
    doc_type: Any, source_name: Any, doc_path: Any = ..., *, optional: bool = False
) -> None:
    """Validate the parts of a natural key given to a lookup (``doc_path`` when given, None
    refused; ``optional``: None means "any" for doc_type/source_name)."""
    key_text("doc_type", doc_type, optional=optional)
    key_text("source_name", source_name, optional=optional)
    if doc_path is not ...:
        key_text("doc_path", doc_path)


def timeout_seconds(value: Any) -> None:
    """A ``timeout`` argument: None (the default) or a number of seconds ≥ 0 (numpy's and
    ``Decimal`` too; not a bool, not NaN, not a string), else :class:`ValidationError`. A
    NaN given to asyncpg would send the statement and cancel it at once; zero is refused by
    asyncpg itself for a statement (a :class:`ValidationError` too, see
    :func:`docstore.failures.translate`)."""
    if value is None:
        return
    number = math.nan
    if isinstance(value, numbers.Real | decimal.Decimal) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):  # Decimal("sNaN")
            number = float(value)
    if not number >= 0:  # NaN too
        raise ValidationError("timeout must be a number of seconds >= 0, or None", field="timeout")


def finite_number(
    value: Any,
    field: str,
    *,
    bounds: tuple[float, float] | None = None,
    open_low: bool = False,
    name: str | None = None,
) -> float:
    """``value`` as a float if it is a finite real number (an int or float, numpy's too, not
    a bool) within ``bounds`` (inclusive; the lower one excluded with ``open_low``), else a
    :class:`ValidationError` naming ``field`` (its message says ``name``, default ``field``)."""
    number = (
        None if isinstance(value, bool) or not isinstance(value, numbers.Real) else float(value)
    )
    fits = number is not None and math.isfinite(number)
    if fits and bounds is not None:
        low, high = bounds
        assert number is not None
        fits = (low < number if open_low else low <= number) and number <= high
    if not fits:
        where = ""
        if bounds is not None:
            where = f" in {'(' if open_low else '['}{bounds[0]:g}, {bounds[1]:g}]"
        raise ValidationError(f"{name or field} must be a finite number{where}", field=field)
    assert number is not None
    return number


def as_int(value: Any) -> int | None:
    """``value`` as a Python int if it is an integer — an int or any other
    ``numbers.Integral`` (numpy's integers) — but not a bool (``True`` is no count); else
    None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return operator.index(value)


def row_id(value: Any, *, bigint: bool = False) -> int:
    """A row id given to a lookup or delete, as an int: an integer (:func:`as_int`) in
    PostgreSQL's ``integer`` range, or ``bigint``'s with ``bigint=True`` (a distributed
    database's ids, which a worker allocates from 2^48 up: :mod:`docstore.schema.citus`)."""
    bits, kind = (63, "bigint") if bigint else (31, "integer")
    number = as_int(value)
    if number is None or not -(2**bits) <= number < 2**bits:
        raise ValidationError(f"id must be an integer within PostgreSQL's {kind} range", field="id")
    return number


def bounded_int(value: Any, field: str, upper: int) -> int:
    """``value`` as an int if it is an integer (:func:`as_int`: numpy's too, not a bool) from
    1 to ``upper``, else a :class:`ValidationError` naming ``field`` (a float batch size or
    limit would otherwise be truncated, or fail in the driver with a database error)."""
    number = as_int(value)
    if number is None or not 1 <= number <= upper:
        raise ValidationError(f"{field} must be an integer from 1 to {upper}", field=field)
    return number


def flag(value: Any, field: str, *, optional: bool = False) -> Any:
    """``value`` if it is True or False (or None when ``optional``: "decide for me"), else
    :class:`ValidationError`: a string such as ``"false"`` is truthy, never a flag."""
    if not (isinstance(value, bool) or (optional and value is None)):
        allowed = "True, False or None" if optional else "True or False"
        raise ValidationError(f"{field} must be {allowed}, got {type(value).__name__}", field=field)
    return value
