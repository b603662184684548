"""Model validation: pure, no database."""

from __future__ import annotations

import math

import numpy as np
import pytest

from docstore import Document, Source
from docstore.errors import ValidationError


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


def test_source_validation() -> None:
    assert Source(source_name="tokio").doc_type == "rust"
    with pytest.raises(ValidationError, match="config"):
        Source(source_name="tokio", config={"x": float("inf")})
