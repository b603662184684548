"""Model validation: pure, no database."""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from pgvector import HalfVector, SparseVector, Vector

from docstore import Document, Source
from docstore.errors import ValidationError
from docstore.models import MAX_HALF_PRECISION_ERROR, half_precision_problem, query_vector
from docstore.storable import indexed_text_bytes
from tests.conftest import unit_vector


def doc(**overrides: object) -> Document:
    fields: dict[str, object] = {"source_name": "tokio", "doc_path": "a.html", "content": "text"}
    fields.update(overrides)
    return Document(**fields)  # type: ignore[arg-type]


def test_embedding_becomes_contiguous_float32() -> None:
    d = doc(embedding=[1, 2.5, 3])
    assert d.embedding is not None and d.embedding.dtype == np.float32
    np.testing.assert_array_equal(d.embedding, [1, 2.5, 3])


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"doc_type": "x" * 51}, "doc_type"),
        ({"doc_type": ""}, "doc_type"),
        ({"source_name": "s" * 256}, "source_name"),
        ({"doc_path": ""}, "doc_path"),
        ({"content": ""}, "content"),
        ({"content": "bad\x00byte"}, "content"),
        ({"doc_path": "p\x00"}, "doc_path"),
        ({"source_name": "\x00"}, "source_name"),
        ({"doc_path": "é" * 1100}, "doc_path"),
        ({"embedding": [0.1, float("nan")]}, "embedding"),
        ({"embedding": [0.1, math.inf]}, "embedding"),
        ({"embedding": [1e39]}, "embedding"),  # overflows float32 to inf
        ({"embedding": [0.5, 65520.0]}, "embedding"),  # beyond half precision (embedding_half)
        ({"embedding": [[1.0, 2.0]]}, "embedding"),
        ({"embedding": "0.1,0.2"}, "embedding"),
        ({"embedding": []}, "embedding"),
        ({"metadata": {"x": float("nan")}}, "metadata"),
        ({"metadata": {"x": object()}}, "metadata"),
        ({"metadata": {"k\x00": 1}}, "metadata"),
        ({"metadata": {"nested": {"v": "a\x00b"}}}, "metadata"),
        ({"metadata": [1, 2]}, "metadata"),
        ({"token_count": -1}, "token_count"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_bad_input_raises_docstore_validation_error_naming_the_field(
    overrides: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        doc(**overrides)
    assert field in str(info.value)
    assert info.value.field is not None and info.value.field.startswith(field)


def test_messages_never_echo_vector_values() -> None:
    values = [0.123456789] * 10 + [float("nan")]
    with pytest.raises(ValidationError) as info:
        doc(embedding=values)
    assert "0.123456" not in str(info.value)
    assert "position 10" in str(info.value)


def test_embedding_values_up_to_the_half_precision_limit_are_accepted() -> None:
    d = doc(embedding=[65504.0, -65504.0, 1e-9])
    assert d.embedding is not None and d.embedding[0] == 65504.0
    with pytest.raises(ValidationError, match=r"beyond ±65504 at position 1, outside the half"):
        doc(embedding=[0.0, -70000.0])


def test_repr_summarizes_the_embedding() -> None:
    d = doc(embedding=np.full(3072, 0.123456, dtype=np.float32))
    assert "0.123456" not in repr(d)
    assert "<3072 dims>" in repr(d)


def test_equality_compares_embeddings_by_value() -> None:
    assert doc(embedding=[1.0, 2.0]) == doc(embedding=np.array([1.0, 2.0]))
    assert doc(embedding=[1.0, 2.0]) != doc(embedding=[1.0, 2.5])
    assert doc() != doc(embedding=[1.0])


def test_timezone_aware_timestamps_are_stored_as_utc() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    aware = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert doc(created_at=aware).created_at == datetime(2026, 1, 1, 10)
    assert doc(created_at=aware.astimezone(UTC)).created_at == datetime(2026, 1, 1, 10)


def test_json_round_trip_of_a_document() -> None:
    d = doc(embedding=[0.5, 0.25], metadata={"crate_version": "1.0"})
    again = Document.model_validate_json(d.model_dump_json())
    assert again == d


@pytest.mark.parametrize(
    "text",
    [
        '{"source_name": "s", "doc_path": "p", "embedding": [0.125, 1e6]}',
        '{"source_name": "s", "doc_path": "p", "embedding": [0.125, 0.5], "token_count": -1}',
        '{"source_name": "s", "doc_path": "p", "content": "a\\u0000b"}',
        '{"source_name": "s", "doc_path": "p"',
        "[0.125, 0.5]",
    ],
)
def test_a_document_from_json_fails_with_docstores_error_only(text: str) -> None:
    """Ground-rules audit (2026-12-07): ``model_validate_json`` raised pydantic's error,
    whose message quoted the input (an embedding's last value)."""
    with pytest.raises(ValidationError) as info:
        Document.model_validate_json(text)
    assert "0.125" not in str(info.value) and "input_value" not in str(info.value)
    with pytest.raises(ValidationError):
        Document.model_validate_strings(json.loads(text) if text.endswith("}") else text)


def test_source_validation() -> None:
    assert Source(source_name="tokio").doc_type == "rust"
    with pytest.raises(ValidationError, match="config"):
        Source(source_name="tokio", config={"x": float("inf")})


# -- embeddings: what is accepted, what is refused (issue 13, part 4) ------------------------

UNIT = unit_vector(7)


class _ExplodingArray:
    def __array__(self, *args: object, **kwargs: object) -> np.ndarray:
        raise RuntimeError("conversion failed")


REFUSED_EMBEDDINGS = {
    "an int beyond float64": ([10**400, 0.5], "beyond ±65504 at position 0"),
    "an int beyond half precision": ([0.5, 2**70], "beyond ±65504 at position 1"),
    "numbers as strings": (["0.5", "0.25"], "holds a str at position 0"),
    "booleans": ([True, False, True], "holds a bool at position 0"),
    "a bool among floats": ([0.5, True], "holds a bool at position 1"),
    "a numpy bool among floats": ([0.5, np.bool_(True)], "holds a bool at position 1"),
    "None": ([0.5, None], "holds None at position 1"),
    "a Decimal": ([Decimal("0.5")], "holds a Decimal at position 0"),
    "a complex number": ([0.5, 1j], "holds a complex number at position 1"),
    "nested lists": ([[0.5, 0.25]], "must be one-dimensional"),
    "a list of 0-d arrays": ([np.array(0.5)], "must be one-dimensional"),
    "a complex64 array": (np.ones(4, dtype=np.complex64), "not complex numbers"),
    "a bool array": (np.ones(4, dtype=bool), "not booleans"),
    "a string array": (np.array(["0.5", "1"]), "not strings"),
    "a datetime array": (np.array(["2026-01-01"], dtype="datetime64[D]"), "not datetimes"),
    "an object array holding None": (np.array([0.5, None], dtype=object), "holds None"),
    "a 0-d array": (np.array(0.5), "one-dimensional (got an array with 0 axes)"),
    "a 2-d array": (np.ones((2, 2)), "one-dimensional (got an array with 2 axes)"),
    "a masked array": (np.ma.masked_array([0.5, 1.0], mask=[0, 1]), "masked"),
    "an int64 array beyond half precision": (np.array([-(2**63), 1]), "beyond ±65504"),
    "a uint64 array beyond half precision": (np.array([2**64 - 1], np.uint64), "beyond"),
    "a float16 inf": (np.array([1.0, np.inf], dtype=np.float16), "NaN or inf at position 1"),
    "a generator": ((x for x in (0.5, 1.0)), "not a generator"),
    "a set": ({0.5}, "not a set"),
    "a scalar": (0.5, "not a float"),
    "bytes": (b"\x00\x01", "not a bytes"),
    "an array-like that fails": (_ExplodingArray(), "could not be read as an array"),
    "all zeros": (np.zeros(3072, dtype=np.float32), "zero norm"),
    "all zeros as ints": ([0, 0, 0], "zero norm"),
    "values that underflow half precision": (UNIT * 1e-9, "underflows half precision"),
    "values that mostly underflow half precision": (UNIT * 3e-5, "normalise it"),
}


@pytest.mark.parametrize(
    ("value", "message"), REFUSED_EMBEDDINGS.values(), ids=list(REFUSED_EMBEDDINGS)
)
def test_embeddings_that_are_not_finite_real_numbers_in_range_are_refused(
    value: object, message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)) as info:
        doc(embedding=value)
    assert info.value.field == "embedding"


@pytest.mark.parametrize(
    ("value", "message"), REFUSED_EMBEDDINGS.values(), ids=list(REFUSED_EMBEDDINGS)
)
def test_query_vectors_follow_the_same_rule(value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)) as info:
        query_vector(value, 3072)  # the type and value checks come before the dimension
    assert info.value.field == "embedding"
    assert str(info.value).startswith("query embedding ")


ACCEPTED_EMBEDDINGS = {
    "Python floats": [0.5, -0.25, 3.0],
    "Python ints": [1, -2, 3],
    "a tuple": (0.5, -0.25, 3.0),
    "numpy scalars": [np.float32(0.5), np.float16(-0.25), np.int64(3)],
    "float16": np.array([0.5, -0.25, 3.0], dtype=np.float16),
    "float64": np.array([0.5, -0.25, 3.0]),
    "longdouble": np.array([0.5, -0.25, 3.0], dtype=np.longdouble),
    "int8": np.array([1, -2, 3], dtype=np.int8),
    "uint64": np.array([1, 2, 3], dtype=np.uint64),
    "an object array of numbers": np.array([0.5, -0.25, 3], dtype=object),
    "a non-contiguous view": np.array([0.5, 9.0, -0.25, 9.0, 3.0, 9.0])[::2],
    "big-endian": np.array([0.5, -0.25, 3.0], dtype=">f4"),
    "pgvector Vector": Vector([0.5, -0.25, 3.0]),
    "pgvector HalfVector": HalfVector([0.5, -0.25, 3.0]),
    "pgvector SparseVector": SparseVector([0.5, 0.0, 3.0]),
}


@pytest.mark.parametrize("value", ACCEPTED_EMBEDDINGS.values(), ids=list(ACCEPTED_EMBEDDINGS))
def test_real_numbers_of_any_numpy_or_python_type_are_accepted_as_float32(value: object) -> None:
    expected = np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, np.float64)
    embedding = doc(embedding=value).embedding
    assert embedding is not None and embedding.dtype == np.float32
    assert embedding.flags.c_contiguous and embedding.ndim == 1
    np.testing.assert_array_equal(embedding, expected.astype(np.float32))


def test_a_pandas_series_is_accepted_and_its_missing_values_are_refused() -> None:
    pandas = pytest.importorskip("pandas")
    embedding = doc(embedding=pandas.Series([0.5, 1.0])).embedding
    assert embedding is not None and embedding.tolist() == [0.5, 1.0]
    with pytest.raises(ValidationError, match="NaN or inf at position 1"):
        doc(embedding=pandas.Series([0.5, None]))


@pytest.mark.parametrize("scale", [1e3, 1.0, 1e-2, 1e-3, 2e-4])
def test_vectors_whose_half_precision_copy_is_faithful_are_accepted(scale: float) -> None:
    """Down to a norm of ~1e-4 (3,072 dims) the half copy stays within 1 % of the vector."""
    assert half_precision_problem((UNIT * scale).astype(np.float32)) is None


def test_the_half_precision_rule_measures_the_copy_not_the_smallest_value() -> None:
    """Tiny values beside large ones underflow harmlessly: the copy is still the vector."""
    mixed = UNIT.copy()
    mixed[:100] = 1e-12  # far below half precision's smallest subnormal
    assert half_precision_problem(mixed) is None
    assert half_precision_problem(np.array([1.0] + [1e-9] * 3071, dtype=np.float32)) is None


def test_the_fast_path_of_the_half_precision_rule_agrees_with_measuring_the_copy() -> None:
    """Vectors of every scale (1e-9..1e4), shape and length: accepted exactly when the
    half-precision copy is within MAX_HALF_PRECISION_ERROR of the vector."""
    rng = np.random.default_rng(1)
    for i in range(1500):
        dim = int(rng.integers(1, 4000))
        raw = [rng.normal(size=dim), rng.uniform(-1, 1, dim), rng.standard_cauchy(dim)][i % 3]
        scale = 10 ** rng.uniform(-9, 4)
        v = np.clip(raw / np.abs(raw).max() * scale, -65504, 65504).astype(np.float32)
        if not v.any():
            continue
        exact = v.astype(np.float64)
        error = np.linalg.norm(v.astype(np.float16).astype(np.float64) - exact) / np.linalg.norm(
            exact
        )
        assert (half_precision_problem(v) is None) == (error <= MAX_HALF_PRECISION_ERROR)


def test_an_embedding_given_by_assignment_or_model_copy_is_validated_too() -> None:
    d = doc(embedding=[0.5, 0.25])
    with pytest.raises(ValidationError, match="zero norm") as info:
        d.model_copy(update={"embedding": np.zeros(2)})
    assert info.value.field == "embedding" and info.value.key == ("rust", "tokio", "a.html")
    with pytest.raises(ValidationError, match="holds a bool"):
        d.embedding = [True, 1.0]
    d.embedding = [1, 2]
    assert d.embedding is not None and d.embedding.dtype == np.float32
    copied = d.model_copy(update={"embedding": (3, 4)})
    assert copied.embedding is not None and copied.embedding.tolist() == [3.0, 4.0]
    assert d.model_copy(update={"embedding": None}).embedding is None


def test_embedding_messages_never_contain_a_value() -> None:
    marked = UNIT.copy()
    marked[0] = 1234.5678
    for bad in ([*marked.tolist(), True], [*marked.tolist(), "x"], marked * 1e-12):
        with pytest.raises(ValidationError) as info:
            doc(embedding=bad)
        assert "1234" not in str(info.value)


@pytest.mark.parametrize(
    "legacy_id",
    ["x" * 2600, "é" * 1300, ["y" * 1300, "z" * 1300]],
    ids=["ascii", "utf8", "list"],
)
def test_a_legacy_id_too_long_for_its_index_is_refused_before_the_database_sees_it(
    legacy_id: object,
) -> None:
    """Review of 2026-12-05: it passed validation and failed on the btree index of
    ``(doc_type, metadata->>'legacy_id')`` with an untyped QueryError."""
    with pytest.raises(ValidationError, match="metadata legacy_id takes"):
        Document(source_name="s", doc_path="p", content="c", metadata={"legacy_id": legacy_id})
    doc = Document(source_name="s", doc_path="p", content="c", metadata={"legacy_id": 7})
    doc.metadata["legacy_id"] = legacy_id  # edited in place: caught before the write
    with pytest.raises(ValidationError, match="metadata legacy_id takes"):
        doc.seal()
    short = Document(source_name="s", doc_path="p", content="c", metadata={"legacy_id": "x" * 2500})
    assert short.metadata["legacy_id"] == "x" * 2500
    assert indexed_text_bytes(1e300) == 301  # as jsonb prints it: every digit


@pytest.mark.parametrize("value", [0, 7, -12, 10**40, -(10**40), True, False, [1, -2], {"a": 3}])
def test_indexed_text_bytes_of_integers_is_what_json_writes(value: object) -> None:
    """The integer fast path counts what ``json.dumps`` writes (and jsonb prints) for every
    int, and a bool is not taken for one (``true``, not ``1``)."""
    assert indexed_text_bytes(value) == len(json.dumps(value, separators=(", ", ": ")))


@pytest.mark.parametrize("mode", ["validation", "serialization"])
def test_the_models_have_a_json_schema_for_request_bodies_and_tool_schemas(mode: Any) -> None:
    """Review 68: a validation-mode schema (FastAPI request bodies, MCP tool inputs) raised
    PydanticInvalidForJsonSchema on the numpy embedding field."""
    from docstore.search.results import Hit

    for model in (Document, Hit, Source):
        assert model.model_json_schema(mode=mode)["title"] == model.__name__
    embedding = Document.model_json_schema(mode=mode)["properties"]["embedding"]
    assert {"type": "array", "items": {"type": "number"}} in embedding["anyOf"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("doc_type", "t" * 51, "doc_type: String should have at most 50 characters"),
        ("source_name", "s" * 256, "source_name: String should have at most 255 characters"),
        ("doc_type", "", "doc_type: String should have at least 1 character"),
    ],
)
def test_length_errors_speak_of_characters(field: str, value: str, message: str) -> None:
    """They read "Value should have at most 50 items after validation, not 51": the length
    was checked after the NUL check, as pydantic checks a sequence."""
    fields = {"source_name": "s", "doc_path": "p", "content": "c", field: value}
    with pytest.raises(ValidationError, match=message):
        Document(**fields)
    with pytest.raises(ValidationError, match=message.split(":")[1].strip()):
        Source(**{k: v for k, v in fields.items() if k in ("doc_type", "source_name")})
