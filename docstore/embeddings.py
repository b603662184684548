"""The embedding rule: which vectors docstore stores and searches, one rule for both.

:func:`embedding_array` turns what a caller gives (a list, a numpy array, pgvector's types,
anything with ``to_numpy()`` or ``__array__``) into the contiguous float32 array docstore
stores, or says why not without quoting a value; :func:`half_precision_problem` refuses a
vector its half-precision copy (``embedding_half``, the HNSW index) cannot stand for;
:func:`query_vector` applies the same rule to query embeddings, with the configured
dimension. :mod:`docstore.models` validates documents' embeddings through here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from docstore.codecs import FloatArray
from docstore.errors import ValidationError

MAX_EMBEDDING_VALUE = 65504.0
"""The largest magnitude half precision holds: every embedding is also stored as a halfvec."""

MAX_HALF_PRECISION_ERROR = 0.01
"""How far (relative to its length) an embedding's half-precision copy may be from it.

Every embedding is also searched as half precision: ``embedding_half`` (the scoped
``"halfvec"`` path), the HNSW index above 2,000 dimensions (``embedding::halfvec``) and the
query's own cast. Half precision keeps 11 significant bits, so for a vector whose values are
in its normal range (|x| ≥ 2⁻¹⁴ ≈ 6.1e-5) or zero, ``|half(v) − v| ≤ 2⁻¹¹ |v|`` (0.05 %; a
unit-length 3,072-dim vector measures 0.02 %). Smaller values lose bits, and below ~3e-8
they become 0: a vector made of them gets a copy that points elsewhere or is all zeros, and
the halfvec and ANN paths cannot find it (issue 13: a unit vector × 1e-9 was ranked first by
``exact=True`` and never returned by any default search).

The bound is 1 %: 20× the rounding error of any normal-range vector, and 10× below where
search was measured to degrade (``bench/limits.py halfvec``: 1,000 uniformly random
3,072-dim vectors scaled down, written around validation, queried at unit length; recall@10
against the exact scan of the scoped halfvec path 1.000 and of the unscoped ANN path
0.96–0.99, as for unit vectors, up to a 9.5 % error; then 0.985 / 0.955 at 32 % and
0.563 / 0.757 at 85 %; at 100 %, all zeros, nothing is found). By length: a 3,072-dim
vector is refused below a norm of about 1e-4 (its values below ~2e-6); unit-length
embeddings are at 0.02 %, so no embedding model's output comes near the bound, and
normalising fixes any vector that does.
"""
_HALF_ROUNDING = 2.0**-22  # (2^-11)^2: a normal value's largest relative rounding error, squared
_HALF_UNDERFLOW = 2.0**-50  # (2^-25)^2: the largest absolute error below 2^-14, squared

_NUMBER_TYPES = (int, float, np.integer, np.floating)
_BOOL_TYPES = (bool, np.bool_)
_DTYPE_KINDS = {
    "b": "booleans",
    "c": "complex numbers",
    "U": "strings",
    "S": "bytes",
    "M": "datetimes",
    "m": "timedeltas",
    "V": "structured records",
}


def _is_number_type(kind: type) -> bool:
    return issubclass(kind, _NUMBER_TYPES) and not issubclass(kind, _BOOL_TYPES)


def _type_name(value: Any) -> str:
    return type(value).__name__[:40]


def _not_a_number(value: Any, position: int) -> str:
    """Why the element at ``position`` is not accepted (never its value)."""
    if isinstance(value, _BOOL_TYPES):
        return f"holds a bool at position {position}: booleans are not numbers here"
    if isinstance(value, list | tuple | np.ndarray):
        return (
            f"must be one-dimensional: a flat list of numbers (position {position} holds a"
            f" {_type_name(value)})"
        )
    if value is None:
        return f"holds None at position {position}: every value must be a number"
    if isinstance(value, str | bytes):
        return (
            f"holds a {_type_name(value)} at position {position}: values must be numbers,"
            " not text (parse them first)"
        )
    if isinstance(value, complex | np.complexfloating):
        return f"holds a complex number at position {position}: values must be real"
    return (
        f"holds a {_type_name(value)} at position {position}: values must be ints or floats"
        " (Python or numpy)"
    )


def _out_of_range(array: npt.NDArray[Any]) -> str | None:
    """Why a real (float or int) 1-D array is out of range, or None."""
    with np.errstate(invalid="ignore"):
        if array.min() >= -MAX_EMBEDDING_VALUE and array.max() <= MAX_EMBEDDING_VALUE:
            return None  # False for NaN too; only now find which value it was
        bad = int(
            np.flatnonzero(~((array >= -MAX_EMBEDDING_VALUE) & (array <= MAX_EMBEDDING_VALUE)))[0]
        )
    if array.dtype.kind == "f" and not np.isfinite(array[bad]):
        return f"must contain only finite values (NaN or inf at position {bad})"
    return (
        f"has a value beyond ±{MAX_EMBEDDING_VALUE:g} at position {bad}, outside the half"
        " precision that docstore's search index and embedding_half store"
    )


def _from_array(array: npt.NDArray[Any]) -> FloatArray:
    if isinstance(array, np.ma.MaskedArray) and np.ma.is_masked(array):
        raise ValueError("has masked (missing) values")
    if array.ndim != 1:
        raise ValueError(f"must be one-dimensional (got an array with {array.ndim} axes)")
    kind = array.dtype.kind
    if kind == "O":  # Python objects: checked one by one, like a list
        return _from_sequence(list(array))
    if kind not in "fiu":
        what = _DTYPE_KINDS.get(kind, f"dtype {array.dtype}")
        raise ValueError(f"must hold real numbers, not {what} (a numpy array of {array.dtype})")
    if array.size == 0:
        raise ValueError("must not be empty")
    problem = _out_of_range(array)
    if problem:
        raise ValueError(problem)
    # always a copy (np.array copies; a float32 input too): what was checked is docstore's
    # own array, which the caller's later edits to theirs cannot reach
    return np.array(array, dtype=np.float32, order="C")


def _from_sequence(values: list[Any] | tuple[Any, ...]) -> FloatArray:
    if not values:
        raise ValueError("must not be empty")
    if not set(map(type, values)) <= {float, int}:  # the common case needs no per-item loop
        for position, item in enumerate(values):
            if not _is_number_type(type(item)):
                raise ValueError(_not_a_number(item, position))
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            array = np.array(values, dtype=np.float64)
    except OverflowError:  # an int beyond float64 (10**400)
        huge = [i for i, x in enumerate(values) if isinstance(x, int) and not -1e308 < x < 1e308]
        where = f" at position {huge[0]}" if huge else ""
        raise ValueError(
            f"has a value beyond ±{MAX_EMBEDDING_VALUE:g}{where}, outside the half precision"
            " that docstore's search index and embedding_half store"
        ) from None
    except (TypeError, ValueError):  # a number type whose conversion to float fails
        raise ValueError("could not be read as numbers") from None
    return _from_array(array)


def _convert(value: Any) -> Any:
    """An array-like's numpy form: ``to_numpy()`` (pgvector's Vector/HalfVector/SparseVector,
    pandas) or ``__array__`` (torch, jax, …); any failure there is a ValueError."""
    try:
        if hasattr(value, "to_numpy"):
            return value.to_numpy()
        return np.asarray(value)
    except Exception as exc:  # third-party conversions may raise anything
        raise ValueError(f"could not be read as an array ({type(exc).__name__})") from None


def half_precision_problem(array: FloatArray) -> str | None:
    """Why ``array`` (finite, within ±65,504) cannot be searched through its half-precision
    copy — zero norm, underflow to zeros, or a copy more than
    :data:`MAX_HALF_PRECISION_ERROR` of its length away from it — or None.

    The copy is computed as PostgreSQL computes ``embedding::halfvec`` (round to nearest
    even, which numpy's float16 cast also does).
    """
    exact = array.astype(np.float64)
    norm2 = float(exact @ exact)
    if norm2 == 0.0:
        return (
            "has zero norm (every value is 0): cosine similarity is undefined for it, so"
            " no search could rank it"
        )
    # Rounding moves a value by at most 2^-11 of itself, or by 2^-25 below half's normal
    # range, so |half(v) - v|^2 <= 2^-22 |v|^2 + n 2^-50: when that bound is within the
    # limit (any vector of norm above ~2e-4 at 3,072 dimensions), skip the 20 us conversion.
    if _HALF_ROUNDING + array.size * _HALF_UNDERFLOW / norm2 <= MAX_HALF_PRECISION_ERROR**2:
        return None
    half = array.astype(np.float16).astype(np.float64)
    if not half.any():
        return (
            "underflows half precision: every value is below 3e-8 in magnitude, so the"
            " half-precision copy docstore's searches rank by (embedding_half, the HNSW index)"
            " is all zeros; normalise it (scale it to unit length)"
        )
    diff = half - exact
    error = math.sqrt(float(diff @ diff) / norm2)
    if error > MAX_HALF_PRECISION_ERROR:
        return (
            f"loses {error:.1%} of itself to underflow in half precision (at most"
            f" {MAX_HALF_PRECISION_ERROR:.0%}): its values are too small for the half-precision"
            " copy docstore's searches rank by (embedding_half, the HNSW index); normalise it"
            " (scale it to unit length)"
        )
    return None


def embedding_array(value: Any) -> FloatArray:
    """``value`` as the contiguous float32 array docstore stores, or ValueError saying why not
    (never quoting a value). One rule for stored and query embeddings.

    Accepted: a list or tuple of Python or numpy ints and floats; a one-dimensional numpy
    array of a float, signed or unsigned int dtype (an object array is checked element by
    element like a list); anything with ``to_numpy()`` (pgvector's ``Vector``/``HalfVector``/
    ``SparseVector``, a pandas Series) or ``__array__`` (torch, jax) that gives one of those.

    Refused: booleans (``True`` is not 1.0 here), strings (no parsing), None, ``Decimal``,
    complex numbers, nested lists and arrays of more or fewer than one axis (0-d included),
    empty vectors, masked values, NaN/inf, values beyond ±65,504 (half precision's range,
    ints of any size included), and vectors the half-precision search paths cannot see
    (:func:`half_precision_problem`: zero norm, underflow). ``-0.0`` comes back as ``0.0``
    (the same number; one stored form, so re-upserting it compares equal to what is stored).

    The array returned is always a new one (never ``value`` itself, nor a view of it) and
    read-only: the checked vector cannot change afterwards, whether the caller edits the array
    they passed (a reused buffer) or the one returned (``ValueError: assignment destination is
    read-only``; assign a new array instead, which is checked again).
    """
    if isinstance(value, str | bytes | Mapping):
        raise ValueError(f"must be a list or numpy array of numbers, not a {_type_name(value)}")
    if not isinstance(value, np.ndarray) and (
        hasattr(value, "to_numpy") or hasattr(value, "__array__")
    ):
        value = _convert(value)
    if isinstance(value, np.ndarray):
        array = _from_array(value)
    elif isinstance(value, list | tuple):
        array = _from_sequence(value)
    else:
        raise ValueError(f"must be a list or numpy array of numbers, not a {_type_name(value)}")
    problem = half_precision_problem(array)
    if problem:
        raise ValueError(problem)
    zeros = array == 0
    if zeros.any() and np.signbit(array[zeros]).any():
        # -0.0 and 0.0 are the same number but not the same bytes; PostgreSQL's comparison
        # (the upsert's "unchanged" check) cannot tell them apart, so docstore stores one form
        array = np.where(zeros, np.float32(0.0), array).astype(np.float32)
    array.flags.writeable = False  # checked once: an in-place edit would bypass the check
    return array


def query_vector(value: Any, dim: int) -> FloatArray:
    """Validate a query embedding exactly like a stored one (:func:`embedding_array`): real
    numbers, finite, within ±65,504, not all zero, searchable in half precision
    (:func:`half_precision_problem`), and ``dim`` of them.

    Every search path takes its query through here (``search``, ``hybrid_search``,
    ``evaluate_recall(query_vectors=...)``, the legacy ``search_similar_docs``), so none of
    them can compute a NaN similarity (a zero-norm query) or rank by an all-zero half copy.
    Raises :class:`ValidationError` (field ``"embedding"``); the message never contains the
    vector.
    """
    if value is None:
        raise ValidationError("a query embedding is required", field="embedding")
    try:
        array = embedding_array(value)
    except ValueError as exc:
        raise ValidationError(f"query embedding {exc}", field="embedding") from None
    if array.shape[0] != dim:
        raise ValidationError(
            f"query embedding has {array.shape[0]} dimensions, expected {dim}"
            " (DOCSTORE_EMBEDDING_DIM)",
            field="embedding",
        )
    return array
