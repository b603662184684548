"""Pydantic models of documents and sources, and the result types of the repositories.

Validation happens here, before anything reaches PostgreSQL, and fails with
:class:`docstore.errors.ValidationError` (never pydantic's own error) whose message names the
field and the document's key but never echoes a vector's values:

- ``doc_type`` 1-50 characters, ``source_name`` 1-255, ``doc_path`` and ``content`` non-empty;
  ``doc_path`` at most 2,048 UTF-8 bytes and the whole key (``doc_type`` + ``source_name`` +
  ``doc_path``) at most 2,600 (it is one row of a unique btree index, which holds at most
  2,704 bytes), ``content`` at most 10 MB;
- no NUL byte and no lone surrogate (``"\ud800"``: not encodable as UTF-8) in any text,
  metadata keys and string values included (PostgreSQL or the driver reject them);
- ``embedding``: None or a one-dimensional sequence of real numbers (see
  :func:`embedding_array` for exactly what is accepted), every value finite and within
  ±65,504 (the range of half precision, which the search index and ``embedding_half`` use),
  not all zero, and representable in half precision without losing more than 1 % of itself
  to underflow (:data:`MAX_HALF_PRECISION_ERROR`); the repository also checks the configured
  dimension. Query vectors follow the same rule (:func:`query_vector`);
- ``metadata``: a JSON object (no NaN/inf, only JSON types) nested at most 100 levels deep;
  ``token_count`` ≥ 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
import pydantic
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    model_validator,
)

from docstore.codecs import FloatArray
from docstore.errors import ValidationError

MAX_DOC_TYPE = 50
MAX_SOURCE_NAME = 255
MAX_DOC_PATH_BYTES = 2048
MAX_CONTENT_CHARS = 10_000_000
MAX_METADATA_BYTES = 1_000_000
MAX_EMBEDDING_VALUE = 65504.0
"""The largest magnitude half precision holds: every embedding is also stored as a halfvec."""
MAX_METADATA_DEPTH = 100
"""Nesting levels of metadata: deeper JSON is refused before Python's own recursion limit
(about 1,000 frames) can turn validation or ``json.dumps`` into a RecursionError."""
MAX_KEY_BYTES = 2600
"""UTF-8 bytes of ``doc_type`` + ``source_name`` + ``doc_path`` together: one row of the
unique btree index on them, which PostgreSQL caps at 2,704 bytes including ~31 bytes of
tuple and column headers (so 2,600 leaves room; every ASCII key fits: 50 + 255 + 2,048)."""


# --- field validators ----------------------------------------------------------------------


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


def _no_nul(value: Any) -> Any:
    if isinstance(value, str):
        problem = unstorable(value)
        if problem:
            raise ValueError(problem)
    return value


def _doc_path(value: Any) -> Any:
    _no_nul(value)
    if isinstance(value, str) and len(value.encode("utf-8")) > MAX_DOC_PATH_BYTES:
        raise ValueError(f"longer than {MAX_DOC_PATH_BYTES} bytes")
    return value


def _to_embedding(value: Any) -> FloatArray | None:
    if value is None:
        return None
    return embedding_array(value)


# -- embeddings -------------------------------------------------------------------------------

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
    return np.ascontiguousarray(np.asarray(array), dtype=np.float32)


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
    return array


def _check_json(value: Any, path: str = "metadata", depth: int = 0) -> None:
    if isinstance(value, str):
        problem = unstorable(value)
        if problem:
            raise ValueError(f"{path} {problem}")
    elif isinstance(value, bool) or value is None or isinstance(value, int):
        return
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path} is NaN or infinite, which JSON cannot represent")
    elif depth >= MAX_METADATA_DEPTH and isinstance(value, Mapping | list | tuple):
        raise ValueError(f"{path[:200]} is nested deeper than {MAX_METADATA_DEPTH} levels")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path} has a non-string key")
            problem = unstorable(key)
            if problem:
                raise ValueError(f"{path} has a key that {problem}")
            _check_json(item, f"{path}.{_safe(key[:40])}", depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]", depth + 1)
    else:
        raise ValueError(f"{path} holds a {type(value).__name__}, which is not a JSON type")


def _safe(text: str) -> str:
    """``text`` for an error message: NUL bytes and lone surrogates escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _metadata(value: Any) -> Any:
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
    _check_json(value)
    if len(json.dumps(value)) > MAX_METADATA_BYTES:
        raise ValueError(f"serializes to more than {MAX_METADATA_BYTES} bytes")
    return dict(value)


def naive_utc(value: Any) -> Any:
    """An aware datetime as naive UTC (how TIMESTAMP columns hold time); anything else as is."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def parse_timestamp(value: Any) -> datetime | None:
    """None, a datetime, or an ISO-8601 string (as stored in JSON) → datetime or None."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


def _embedding_json(value: FloatArray | None) -> list[float] | None:
    return None if value is None else value.tolist()


NoNulStr = Annotated[str, BeforeValidator(_no_nul)]
Embedding = Annotated[
    FloatArray | None,
    BeforeValidator(_to_embedding),
    PlainSerializer(_embedding_json, when_used="json"),
]
Metadata = Annotated[dict[str, Any], BeforeValidator(_metadata)]
NaiveTimestamp = Annotated[datetime | None, BeforeValidator(naive_utc)]


# --- models ----------------------------------------------------------------------------------


def _describe(exc: pydantic.ValidationError) -> tuple[str, str | None]:
    problems = []
    first_field = None
    for error in exc.errors(include_input=False, include_url=False):
        field = ".".join(str(p) for p in error.get("loc", ())) or "document"
        first_field = first_field or field
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append(f"{field}: {message}")
    return "; ".join(problems), first_field


class _Model(BaseModel):
    """Base: raise docstore's ValidationError (with the record's key) instead of pydantic's."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")
    _key_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **data: Any) -> None:
        message = None
        try:
            super().__init__(**data)
        except pydantic.ValidationError as exc:
            message, field = _describe(exc)
        if message is not None:
            defaults = {name: type(self).model_fields[name].default for name in self._key_fields}
            key = _key_of({**defaults, **data}, self._key_fields)  # doc_type "rust" if not given
            where = f" ({'/'.join(key)})" if key else ""
            raise ValidationError(
                f"invalid {type(self).__name__}{where}: {message}", field=field, key=key
            )

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Any:
        if isinstance(obj, cls):
            return obj
        if isinstance(obj, Mapping):
            return cls(**obj)
        return super().model_validate(obj, **kwargs)


def _key_of(data: Mapping[str, Any], fields: tuple[str, ...]) -> tuple[str, ...] | None:
    values = [data.get(f) for f in fields]
    if not fields or not all(isinstance(v, str) for v in values):
        return None
    return tuple(_safe(str(v)[:80]) for v in values)


class Document(_Model):
    """One document of any doc type, keyed by ``(doc_type, source_name, doc_path)``."""

    _key_fields: ClassVar[tuple[str, ...]] = ("doc_type", "source_name", "doc_path")

    id: int | None = None
    doc_type: Annotated[NoNulStr, Field(min_length=1, max_length=MAX_DOC_TYPE)] = "rust"
    source_name: Annotated[NoNulStr, Field(min_length=1, max_length=MAX_SOURCE_NAME)]
    doc_path: Annotated[str, BeforeValidator(_doc_path), Field(min_length=1)]
    content: Annotated[NoNulStr, Field(min_length=1, max_length=MAX_CONTENT_CHARS)]
    metadata: Metadata = Field(default_factory=dict)
    embedding: Embedding = Field(default=None, repr=False)
    token_count: int | None = Field(default=None, ge=0, le=2**31 - 1)
    created_at: NaiveTimestamp = None
    updated_at: NaiveTimestamp = None
    _embedding_checked: bool = PrivateAttr(default=False)
    """True once the embedding went through :func:`embedding_array` (the constructor, an
    assignment, ``model_copy(update=...)``); False for ``model_construct`` (rows read back)."""

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        self._embedding_checked = True

    @property
    def embedding_checked(self) -> bool:
        """Whether :attr:`embedding` is known to satisfy the embedding rule."""
        return self._embedding_checked

    @model_validator(mode="after")
    def _key_fits_the_index(self) -> Document:
        size = sum(len(part.encode("utf-8")) for part in self.key)
        if size > MAX_KEY_BYTES:
            raise ValueError(
                f"doc_type + source_name + doc_path take {size} bytes in UTF-8; at most "
                f"{MAX_KEY_BYTES} fit one row of PostgreSQL's unique index on them"
            )
        return self

    @property
    def key(self) -> tuple[str, str, str]:
        """The natural key ``(doc_type, source_name, doc_path)``."""
        return (self.doc_type, self.source_name, self.doc_path)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield from super().__repr_args__()
        if self.embedding is not None:
            yield "embedding", f"<{self.embedding.shape[0]} dims>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Document):
            return NotImplemented
        mine = self.model_dump(exclude={"embedding"})
        theirs = other.model_dump(exclude={"embedding"})
        if mine != theirs:
            return False
        if self.embedding is None or other.embedding is None:
            return self.embedding is None and other.embedding is None
        return bool(np.array_equal(self.embedding, other.embedding))

    __hash__ = None  # type: ignore[assignment]  # mutable model with array field

    # pydantic validates neither assignment nor model_copy(update=...): an embedding given
    # either way is checked here, so no unchecked vector reaches upsert_many.
    def __setattr__(self, name: str, value: Any) -> None:
        if name == "embedding":
            value = self._checked_embedding(value)
        super().__setattr__(name, value)
        if name == "embedding":
            super().__setattr__("_embedding_checked", True)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with ``update`` applied; an ``embedding`` in it is validated like one given
        to the constructor (:class:`ValidationError`)."""
        checked = self._embedding_checked
        if update and "embedding" in update:
            update = {**update, "embedding": self._checked_embedding(update["embedding"])}
            checked = True
        copy = super().model_copy(update=update, deep=deep)
        copy._embedding_checked = checked
        return copy

    def _checked_embedding(self, value: Any) -> FloatArray | None:
        try:
            return _to_embedding(value)
        except ValueError as exc:
            key = tuple(_safe(part[:80]) for part in self.key)
            raise ValidationError(
                f"invalid {type(self).__name__} ({'/'.join(key)}): embedding: {exc}",
                field="embedding",
                key=key,
            ) from None


class Source(_Model):
    """A documentation source (crate, API, repository), keyed by ``(doc_type, source_name)``."""

    _key_fields: ClassVar[tuple[str, ...]] = ("doc_type", "source_name")

    id: int | None = None
    doc_type: Annotated[NoNulStr, Field(min_length=1, max_length=MAX_DOC_TYPE)] = "rust"
    source_name: Annotated[NoNulStr, Field(min_length=1, max_length=MAX_SOURCE_NAME)]
    config: Metadata = Field(default_factory=dict)
    enabled: bool = True
    last_checked: datetime | None = None
    last_populated: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.doc_type, self.source_name)


class UpsertResult(BaseModel):
    """What :meth:`DocumentRepository.upsert_many` did, row by row."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    """Input rows superseded by a later row with the same key in the same call."""

    @property
    def written(self) -> int:
        return self.inserted + self.updated

    @property
    def total(self) -> int:
        """Distinct keys processed (inserted + updated + unchanged)."""
        return self.inserted + self.updated + self.unchanged

    def __iadd__(self, other: UpsertResult) -> UpsertResult:
        self.inserted += other.inserted
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.duplicates += other.duplicates
        return self


class SourceStats(BaseModel):
    """Per ``(doc_type, source_name)`` figures from :meth:`DocumentRepository.stats`."""

    doc_type: str
    source_name: str
    documents: int
    with_embedding: int
    without_embedding: int
    tokens: int
    content_bytes: int
    """UTF-8 bytes of content."""
    stored_bytes: int
    """Bytes the rows occupy as stored (after TOAST compression)."""


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
    doc_type: Any, source_name: Any, doc_path: Any = None, *, optional: bool = False
) -> None:
    """Validate the parts of a natural key given to a lookup (``doc_path`` when not None;
    ``optional``: None means "any" for doc_type/source_name)."""
    key_text("doc_type", doc_type, optional=optional)
    key_text("source_name", source_name, optional=optional)
    if doc_path is not None:
        key_text("doc_path", doc_path)


def row_id(value: Any) -> int:
    """A row id given to a lookup or delete: an integer in PostgreSQL's ``integer`` range."""
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
        raise ValidationError("id must be an integer within PostgreSQL's integer range", field="id")
    return value


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
