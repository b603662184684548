"""Values kept out of docstore's errors *and their causes* (the ground-rules audit of
2026-12-07): the server's "invalid input syntax for type vector" quoted the literal, and the
asyncpg error every ``QueryError`` keeps as its ``__cause__`` still carried the failing row
(a document's embedding) or the start of an argument's ``repr`` — which any traceback prints
(a logged exception, an unhandled one)."""

from __future__ import annotations

import logging
import traceback

import numpy as np
import pytest

import docstore
from docstore.errors import QueryError
from tests.conftest import unit_vector

DIM = 3072


def _printed(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def _vector(seed: int) -> np.ndarray:
    """A vector whose first values print the same in numpy's repr and the server's text."""
    v = unit_vector(seed) * 0.5
    v[:6] = [0.0123456, -0.0234567, 0.0345678, -0.0456789, 0.0567891, -0.0678912]
    return v


def _marks(v: np.ndarray) -> list[str]:
    """How the vector's first values look when printed (numpy's repr, str, the server's)."""
    return [f"{x:.7f}"[:7] for x in v[:6]]


@pytest.mark.parametrize("cast", ["vector", "halfvec"])
async def test_a_vector_literal_the_server_cannot_parse_is_not_quoted(
    store: docstore.Store, cast: str
) -> None:
    v = _vector(5)
    literal = "[" + ",".join(f"{x:.7f}" for x in v) + ",]"  # a stray comma
    with pytest.raises(QueryError) as info:
        await store.fetchval(f"SELECT $1::text::{cast}", literal)
    assert f"invalid input syntax for type {cast}" in str(info.value)
    for mark in _marks(v):
        assert mark not in _printed(info.value), mark


async def test_a_failing_rows_values_are_not_in_the_errors_cause(
    store: docstore.Store, caplog: pytest.LogCaptureFixture
) -> None:
    v = _vector(6)
    with pytest.raises(QueryError) as info:
        await store.execute(
            "INSERT INTO documents (source_name, doc_path, content, embedding)"
            " VALUES ('cause', 'p', NULL, $1)",
            v,
        )
    assert info.value.sqlstate == "23502" and info.value.__cause__ is not None
    assert "Failing row contains (the row's values are not shown)" in str(info.value.__cause__)
    with caplog.at_level(logging.ERROR):
        logging.getLogger("app").error("write failed", exc_info=info.value)
    for mark in _marks(v):
        assert mark not in _printed(info.value) and mark not in caplog.text, mark


async def test_an_argument_the_driver_cannot_encode_is_not_in_the_errors_cause(
    store: docstore.Store,
) -> None:
    v = _vector(7)
    with pytest.raises(QueryError) as info:
        await store.fetchval("SELECT $1::vector", v.reshape(2, -1))
    assert str(info.value.__cause__).startswith("invalid input for query argument $1")
    for mark in _marks(v):
        assert mark not in _printed(info.value), mark
    assert await store.fetchval("SELECT count(*) FROM documents") == 0
