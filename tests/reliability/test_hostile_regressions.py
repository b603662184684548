"""One deterministic test per hostile input the fuzz found getting past docstore's checks.

Each of these used to end in an untyped exception (``RecursionError``, a raw asyncpg error
with a traceback from the CLI) or in a ``QueryError`` from the server after validation had
passed (no row index, the batch half-sent); each is now refused up front with the typed
error that names the field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from typer.testing import CliRunner

import docstore
from docstore import Document, FilterError, Source, ValidationError
from docstore.cli import app
from docstore.models import MAX_KEY_BYTES, MAX_METADATA_DEPTH
from docstore.search.filters import build_filter
from tests.reliability.conftest import random_docs


def _nested(depth: int, as_list: bool = False) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value] if as_list else {"k": value}
    return value


def _doc(**fields: Any) -> Document:
    return Document(**{"source_name": "s", "doc_path": "p", "content": "c", **fields})


@pytest.mark.parametrize("as_list", [False, True])
def test_metadata_nested_past_the_recursion_limit_is_a_validation_error(as_list: bool) -> None:
    with pytest.raises(ValidationError, match="nested deeper"):
        _doc(metadata={"a": _nested(5000, as_list)})
    with pytest.raises(ValidationError, match="nested deeper"):
        Source(source_name="s", config={"a": _nested(MAX_METADATA_DEPTH + 1, as_list)})
    assert _doc(metadata={"a": _nested(MAX_METADATA_DEPTH - 1, as_list)})


def test_metadata_given_as_deeply_nested_json_text_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="nested deeper"):
        _doc(metadata='{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")


@pytest.mark.parametrize(
    "fields",
    [
        {"source_name": "tokio\ud800"},
        {"doc_type": "\udfff"},
        {"doc_path": "a/\ud83d.html"},
        {"content": "text \udc80"},
        {"metadata": {"k": "v\ud800"}},
        {"metadata": {"k\ud800": 1}},
        {"metadata": {"a": [{"b": "\ud800"}]}},
    ],
)
def test_lone_surrogates_are_refused_before_anything_is_sent(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="lone surrogate"):
        _doc(**fields)


def test_a_key_too_big_for_the_unique_index_is_a_validation_error() -> None:
    # random CJK text does not compress: 50 + 255 four-byte emoji + 682 three-byte characters
    big = {"doc_type": "é" * 50, "source_name": "\U0001f600" * 255, "doc_path": "\u4e00" * 682}
    with pytest.raises(ValidationError, match="unique index"):
        _doc(**big)
    # every ASCII key fits
    ascii_key = {"doc_type": "d" * 50, "source_name": "s" * 255, "doc_path": "p" * 2048}
    assert sum(map(len, ascii_key.values())) < MAX_KEY_BYTES
    assert _doc(**ascii_key)


async def test_a_batch_with_one_unstorable_row_names_it_and_writes_nothing(
    store: docstore.Store,
) -> None:
    rows: list[Any] = [d.model_dump() for d in random_docs(3, source="ok", seed=1)]
    rows[2]["metadata"] = {"k": "\ud800"}
    with pytest.raises(ValidationError, match="row 2") as info:
        await store.documents.upsert_many(rows)
    assert info.value.index == 2
    assert await store.documents.count() == 0


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        ({"metadata.x": {"$contains": _nested(5000, as_list=True)}}, "nested too deeply"),
        ({"metadata." + ".".join(["p"] * 3000): 1}, "nested too deeply"),
        ({"source_name": "\ud800"}, "lone surrogate"),
        ({"metadata.k": "\ud800"}, "lone surrogate"),
        ({"metadata.k\ud800": {"$exists": True}}, "lone surrogate"),
        ({"doc_path": {"$like": "a%\\"}}, "escape"),
        ({"token_count": {"$gt": 2**40}}, "out of the integer"),
        ({"token_count": {"$in": [1, -(2**31) - 1]}}, "out of the integer"),
    ],
)
def test_filters_the_server_would_reject_are_filter_errors(flt: Any, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        build_filter(flt)


def test_an_escaped_backslash_at_the_end_of_a_pattern_is_fine() -> None:
    _sql, params = build_filter({"doc_path": {"$like": "a\\\\"}})
    assert params == ["a\\\\"]


async def test_an_aware_datetime_filter_compares_as_utc(store: docstore.Store) -> None:
    await store.documents.upsert_many(random_docs(2, source="s", seed=1))
    now = datetime.now(UTC)
    hits = await store.search(
        random_docs(1, source="q", seed=2)[0].embedding, filter={"created_at": {"$lte": now}}
    )
    assert len(hits) == 2


async def test_search_text_with_a_lone_surrogate_is_a_validation_error(
    store: docstore.Store,
) -> None:
    with pytest.raises(ValidationError, match="surrogate"):
        await store.search_text("tokio \ud800")


def test_validate_against_a_database_that_is_not_legacy_exits_cleanly(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    result = CliRunner().invoke(app, ["validate", "--source", database_url])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "MigrationError" in result.output and "doc_embeddings" in result.output


@pytest.mark.parametrize("bad", ["nul\x00byte", "lone\ud800surrogate", 42, b"bytes"])
async def test_lookups_and_deletes_refuse_unstorable_keys_before_the_server(
    store: docstore.Store, bad: Any
) -> None:
    """A NUL byte or lone surrogate in a lookup key used to reach PostgreSQL (QueryError
    22021 / 22000); it is a ValidationError naming the field, like on writes."""
    from docstore.compat import LegacyDatabase

    calls = [
        ("doc_path", store.documents.get_by_key("rust", "tokio", bad)),
        ("source_name", store.documents.count(source_name=bad)),
        ("doc_type", store.documents.delete_source(bad, "tokio")),
        ("source_name", store.sources.get("rust", bad)),
        ("source_name", store.sources.set_enabled("rust", bad, False)),
        ("crate_name", LegacyDatabase(store).has_embeddings(bad)),
        ("source_name", LegacyDatabase(store).upsert_crate(bad, "1.0")),
    ]
    for field, call in calls:
        with pytest.raises(docstore.ValidationError) as info:
            await call
        assert info.value.field == field
    with pytest.raises(docstore.ValidationError, match="integer range"):
        await store.documents.get(2**40)
