"""Pydantic models of documents and sources, and the result types of the repositories.

Validation happens here, before anything reaches PostgreSQL, and fails with
:class:`docstore.errors.ValidationError` (never pydantic's own error) whose message names the
field and the document's key but never echoes a vector's values:

- ``doc_type`` 1-50 characters, ``source_name`` 1-255, ``doc_path`` and ``content`` non-empty;
  ``doc_path`` at most 2,048 UTF-8 bytes and the whole key (``doc_type`` + ``source_name`` +
  ``doc_path``) at most 2,600 (it is one row of a unique btree index, which holds at most
  2,704 bytes), ``content`` at most 10,000,000 characters;
- no NUL byte and no lone surrogate (``"\ud800"``: not encodable as UTF-8) in any text,
  metadata keys and string values included (PostgreSQL or the driver reject them); text given
  as bytes is decoded as UTF-8 first and checked the same;
- ``embedding``: None or a one-dimensional sequence of real numbers (see
  :func:`~docstore.embeddings.embedding_array` for exactly what is accepted), every value
  finite and within ±65,504 (the range of half precision, which the search index and
  ``embedding_half`` use), not all zero, and representable in half precision without losing
  more than 1 % of itself to underflow (:data:`MAX_HALF_PRECISION_ERROR`); kept as a
  read-only copy, so the vector checked is the vector written; the repository also checks
  the configured dimension. Query vectors follow the same rule (:func:`query_vector`);
- ``metadata``: a JSON object (no NaN/inf, only JSON types; a mapping that is not a dict is
  stored as one) nested at most 100 levels deep; ``token_count`` ≥ 0; timestamps within the
  years 1–9999 once in UTC (:func:`~docstore.storable.in_utc`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Annotated, Any, ClassVar, Self, cast

import numpy as np
import pydantic
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    StrictBool,
    WithJsonSchema,
    model_validator,
)

from docstore.arguments import (
    as_int,
    bounded_int,
    check_key,
    finite_number,
    flag,
    key_text,
    row_id,
)
from docstore.codecs import FloatArray
from docstore.embeddings import (
    MAX_EMBEDDING_VALUE,
    MAX_HALF_PRECISION_ERROR,
    embedding_array,
    half_precision_problem,
    query_vector,
)
from docstore.errors import ValidationError
from docstore.results import SourceStats, UpsertResult
from docstore.storable import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    aware_utc,
    in_utc,
    indexed_text_bytes,
    metadata_json,
    naive_utc,
    parse_timestamp,
    unstorable,
)
from docstore.storable import json_object as _metadata
from docstore.storable import printable as _safe

MAX_DOC_TYPE = 50
MAX_SOURCE_NAME = 255
MAX_DOC_PATH_BYTES = 2048
MAX_CONTENT_CHARS = 10_000_000
"""Characters of ``content`` at most; longer content is a :class:`ValidationError` before
anything is sent."""
MAX_KEY_BYTES = 2600
"""UTF-8 bytes of ``doc_type`` + ``source_name`` + ``doc_path`` together: one row of the
unique btree index on them, which PostgreSQL caps at 2,704 bytes including ~31 bytes of
tuple and column headers (so 2,600 leaves room; every ASCII key fits: 50 + 255 + 2,048)."""


# --- field validators ----------------------------------------------------------------------


# Text checks run after pydantic made the value a str (AfterValidator), so what it converts
# (bytes, bytearray: decoded as UTF-8) is checked like a str given as is.
def _no_nul(value: str) -> str:
    problem = unstorable(value)
    if problem:
        raise ValueError(problem)
    return value


def _doc_path(value: str) -> str:
    _no_nul(value)
    if len(value.encode("utf-8")) > MAX_DOC_PATH_BYTES:
        raise ValueError(f"longer than {MAX_DOC_PATH_BYTES} bytes")
    return value


NoNulStr = Annotated[str, AfterValidator(_no_nul)]
DocType = Annotated[NoNulStr, Field(min_length=1, max_length=MAX_DOC_TYPE)]
SourceName = Annotated[NoNulStr, Field(min_length=1, max_length=MAX_SOURCE_NAME)]
Content = Annotated[NoNulStr, Field(min_length=1, max_length=MAX_CONTENT_CHARS)]
Embedding = Annotated[
    FloatArray | None,
    BeforeValidator(lambda value: None if value is None else embedding_array(value)),
    PlainSerializer(lambda value: None if value is None else value.tolist(), when_used="json"),
    WithJsonSchema({"anyOf": [{"type": "array", "items": {"type": "number"}}, {"type": "null"}]}),
]
Metadata = Annotated[dict[str, Any], BeforeValidator(_metadata)]
NaiveTimestamp = Annotated[datetime | None, AfterValidator(naive_utc)]


def _integer(value: Any) -> Any:
    """An integer (numpy's too, :func:`as_int`) as an int, None as is; anything else is a
    ValueError: pydantic's lax mode would store ``True``, ``"7"`` or ``3.0`` as a number."""
    if value is None:
        return None
    number = as_int(value)
    if number is None:
        raise ValueError(f"must be an integer, not {type(value).__name__}")
    return number


Integer = Annotated[int | None, BeforeValidator(_integer)]


def _aware_timestamp(value: datetime | None) -> datetime | None:
    """A parsed datetime as :func:`aware_utc` reads it, in UTC (``ValueError`` past 9999)."""
    return None if value is None else in_utc(aware_utc(value))


AwareTimestamp = Annotated[datetime | None, AfterValidator(_aware_timestamp)]


# --- models ----------------------------------------------------------------------------------


_LENGTHS = {"too_long": "String should have at most {max_length} characters"}
_LENGTHS["too_short"] = "String should have at least {min_length} character"


def _describe(exc: pydantic.ValidationError) -> tuple[str, str | None]:
    problems = []
    first_field = None
    for error in exc.errors(include_input=False, include_url=False):
        field = ".".join(str(p) for p in error.get("loc", ())) or "document"
        first_field = first_field or field
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error["type"] in _LENGTHS and error.get("ctx", {}).get("field_type") == "Value":
            # text, length checked after _no_nul (so it names a lone surrogate): not "items"
            message = _LENGTHS[error["type"]].format(**error["ctx"])
        problems.append(f"{field}: {message}")
    return "; ".join(problems), first_field


class _Model(BaseModel):
    """Base: raise docstore's ValidationError (with the record's key) instead of pydantic's."""

    # validate_assignment: a field set after construction (doc.content = ...) is checked like
    # one given to the constructor, so a list validated whole is still whole when written
    model_config = ConfigDict(
        arbitrary_types_allowed=True, extra="forbid", validate_assignment=True
    )
    _key_fields: ClassVar[tuple[str, ...]] = ()
    _json_fields: ClassVar[tuple[str, ...]] = ()

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

    def _invalid(self, message: str, field: str | None) -> ValidationError:
        """docstore's error for this record: ``invalid Document (its/key): message``."""
        key = _key_of({f: getattr(self, f, None) for f in self._key_fields}, self._key_fields)
        where = f" ({'/'.join(key)})" if key else ""
        return ValidationError(
            f"invalid {type(self).__name__}{where}: {message}", field=field, key=key
        )

    @classmethod
    def from_row(cls, data: dict[str, Any]) -> Self:
        """An instance from a trusted database row, not validated: what ``model_construct``
        makes, cheaper when ``data`` holds exactly the model's fields (no per-field default
        lookups; a search builds one per hit, a read one per row)."""
        fields = cls.model_fields
        if data.keys() != fields.keys():
            return cls.model_construct(**data)
        made, _set = cls.__new__(cls), object.__setattr__  # past pydantic's __setattr__
        _set(made, "__dict__", {name: data[name] for name in fields})
        _set(made, "__pydantic_fields_set__", set(fields))
        _set(made, "__pydantic_extra__", None)
        _set(made, "__pydantic_private__", None)
        if cls.__pydantic_post_init__:  # private attributes at their defaults, as it does
            made.model_post_init(None)
        return made

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except pydantic.ValidationError as exc:
            raise self._invalid(*_describe(exc)) from None

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with ``update`` applied, each value validated as an assignment is
        (:class:`ValidationError`); pydantic's own ``model_copy`` validates nothing."""
        copy = super().model_copy(deep=deep)
        for name, value in (update or {}).items():
            setattr(copy, name, value)
        return copy

    def check_in_place_edits(self) -> None:
        """Check again what can change without an assignment: the JSON dict (``metadata``,
        ``config``) edited in place after construction (``doc.metadata["x"] = nan``).
        Raises :class:`ValidationError` as the constructor would."""
        for name in self._json_fields:
            try:
                _metadata(getattr(self, name))
            except (ValueError, RecursionError) as exc:
                raise self._invalid(f"{name}: {exc}", name) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Any:
        """``obj`` itself if it is one, else one from a mapping of its fields (or an object's
        attributes with ``from_attributes=True``); never pydantic's error, only ours."""
        if isinstance(obj, cls):
            return obj
        if isinstance(obj, Mapping) and all(isinstance(k, str) for k in obj):
            return cls(**obj)
        if kwargs.get("from_attributes") and not isinstance(obj, Mapping):
            try:
                return super().model_validate(obj, **kwargs)
            except pydantic.ValidationError as exc:
                raise ValidationError(f"invalid {cls.__name__}: {_describe(exc)[0]}") from None
        what = "a dict with a non-string key" if isinstance(obj, Mapping) else type(obj).__name__
        raise ValidationError(f"expected a {cls.__name__} or a dict, got {what}")

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Any:
        """One from a JSON object of its fields: :meth:`model_validate` of the parsed JSON
        (never pydantic's error, and no value of it in the message)."""
        try:
            data = json.loads(json_data)
        except (ValueError, TypeError) as exc:
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            raise ValidationError(f"invalid {cls.__name__} JSON: {why}") from None
        return cls.model_validate(data)

    @classmethod
    def model_validate_strings(cls, obj: Any, **kwargs: Any) -> Any:
        """:meth:`model_validate` of ``obj``: the constructor's rules (a string is not taken
        for a number); never pydantic's error."""
        return cls.model_validate(obj)


def _private(model: pydantic.BaseModel) -> dict[str, Any]:
    """``model``'s private attributes, read and written past pydantic's ``__getattr__`` and
    ``__setattr__`` (~1.7 and ~0.5 µs an access; a write validates four a document). Set
    to the defaults where pydantic left none: a subclass's ``model_post_init`` that does not
    call ``super()`` skips pydantic's, which fills them (on pydantic 2.4)."""
    if model.__pydantic_private__ is None:
        defaults = {n: a.get_default() for n, a in type(model).__private_attributes__.items()}
        object.__setattr__(model, "__pydantic_private__", defaults)
    return cast(dict[str, Any], model.__pydantic_private__)


def _key_of(data: Mapping[str, Any], fields: tuple[str, ...]) -> tuple[str, ...] | None:
    values = [data.get(f) for f in fields]
    if not fields or not all(isinstance(v, str) for v in values):
        return None
    return tuple(_safe(str(v)[:80]) for v in values)


class Document(_Model):
    """One document of any doc type, keyed by ``(doc_type, source_name, doc_path)``."""

    _key_fields: ClassVar[tuple[str, ...]] = ("doc_type", "source_name", "doc_path")
    _json_fields: ClassVar[tuple[str, ...]] = ("metadata",)

    id: Integer = None
    doc_type: DocType = "rust"
    source_name: SourceName
    doc_path: Annotated[str, AfterValidator(_doc_path), Field(min_length=1)]
    content: Content
    metadata: Metadata = Field(default_factory=dict)
    embedding: Embedding = Field(default=None, repr=False)
    token_count: Integer = Field(default=None, ge=0, le=2**31 - 1)
    created_at: NaiveTimestamp = None
    updated_at: NaiveTimestamp = None
    _metadata_json: str | None = PrivateAttr(default=None)
    """:attr:`metadata` as checked JSON text, from :meth:`seal` until the write takes it."""
    _embedding_checked: bool = PrivateAttr(default=False)
    """True once the embedding went through :func:`embedding_array` (the constructor, an
    assignment, ``model_copy(update=...)``); False for ``model_construct`` (rows read back)."""

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        _private(self)["_embedding_checked"] = True

    def seal(self) -> None:
        """Check :attr:`metadata` again (a dict may be edited in place after validation:
        ``doc.metadata["x"] = nan``) and keep its JSON text for the write that follows
        (:meth:`take_metadata_json`), so checking costs no second serialization. Raises
        :class:`ValidationError` as the constructor would."""
        try:
            if not isinstance(self.metadata, Mapping):  # a row another writer stored
                raise ValueError(f"must be a JSON object, not {type(self.metadata).__name__}")
            try:
                text = metadata_json(self.metadata)
            except ValueError:  # a mapping other than a dict put in place (a UserDict)?
                text = metadata_json(_metadata(self.metadata))
            _private(self)["_metadata_json"] = text
            if problem := self._legacy_id_problem():
                raise ValueError(problem)
        except ValueError as exc:
            raise self._invalid(f"metadata {exc}", "metadata") from None

    def take_metadata_json(self) -> str | dict[str, Any]:
        """What to send for :attr:`metadata`: the text :meth:`seal` kept (once), else the
        dict (the codec serializes it)."""
        private = _private(self)
        text, private["_metadata_json"] = private["_metadata_json"], None
        return text if text is not None else self.metadata

    @property
    def embedding_checked(self) -> bool:
        """Whether :attr:`embedding` is known to satisfy the embedding rule: it went through
        :func:`embedding_array` and is still the read-only array that returned (a deep copy or
        an unpickled Document holds a writable one, which may have been edited since)."""
        array = self.embedding
        return _private(self)["_embedding_checked"] and (array is None or not array.flags.writeable)

    @model_validator(mode="after")
    def _key_fits_the_index(self) -> Document:
        size = sum(len(part.encode("utf-8")) for part in self.key)
        if size > MAX_KEY_BYTES:
            raise ValueError(
                f"doc_type + source_name + doc_path take {size} bytes in UTF-8; at most "
                f"{MAX_KEY_BYTES} fit one row of PostgreSQL's unique index on them"
            )
        if problem := self._legacy_id_problem():
            raise ValueError(f"metadata {problem}")
        return self

    def _legacy_id_problem(self) -> str | None:  # index (doc_type, metadata->>'legacy_id')
        metadata = self.metadata if isinstance(self.metadata, Mapping) else {}  # seal() says
        size = len(self.doc_type.encode()) + indexed_text_bytes(metadata.get("legacy_id"))
        if size <= MAX_KEY_BYTES:
            return None
        return (
            f"legacy_id takes {size} bytes with the doc_type; at most {MAX_KEY_BYTES} fit one"
            " row of the index the legacy API looks documents up by"
        )

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

    # An embedding assigned (or given to model_copy(update=...), which assigns) is checked
    # by the embedding rule here, so no unchecked vector reaches upsert_many.
    def __setattr__(self, name: str, value: Any) -> None:
        if name == "embedding":
            value = self._checked_embedding(value)
        super().__setattr__(name, value)
        if name == "embedding":
            _private(self)["_embedding_checked"] = True

    def _checked_embedding(self, value: Any) -> FloatArray | None:
        try:
            return None if value is None else embedding_array(value)
        except ValueError as exc:
            raise self._invalid(f"embedding: {exc}", "embedding") from None


class Source(_Model):
    """A documentation source (crate, API, repository), keyed by ``(doc_type, source_name)``."""

    _key_fields: ClassVar[tuple[str, ...]] = ("doc_type", "source_name")
    _json_fields: ClassVar[tuple[str, ...]] = ("config",)

    id: Integer = None
    doc_type: DocType = "rust"
    source_name: SourceName
    config: Metadata = Field(default_factory=dict)
    enabled: StrictBool = True
    """True or False only: ``"no"`` or ``0`` are refused, as by ``sources.set_enabled``."""
    last_checked: AwareTimestamp = None
    last_populated: AwareTimestamp = None
    created_at: AwareTimestamp = None
    updated_at: AwareTimestamp = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.doc_type, self.source_name)


__all__ = [
    "MAX_CONTENT_CHARS",
    "MAX_DOC_PATH_BYTES",
    "MAX_DOC_TYPE",
    "MAX_EMBEDDING_VALUE",
    "MAX_HALF_PRECISION_ERROR",
    "MAX_KEY_BYTES",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "MAX_SOURCE_NAME",
    "AwareTimestamp",
    "Document",
    "Embedding",
    "Metadata",
    "NaiveTimestamp",
    "NoNulStr",
    "Source",
    "SourceStats",
    "UpsertResult",
    "as_int",
    "aware_utc",
    "bounded_int",
    "check_key",
    "embedding_array",
    "finite_number",
    "flag",
    "half_precision_problem",
    "key_text",
    "naive_utc",
    "parse_timestamp",
    "query_vector",
    "row_id",
    "unstorable",
]
