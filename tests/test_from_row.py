"""Models built from trusted rows (``from_row``): the same objects ``model_construct`` makes,
built without its per-field default lookups (a search builds one per hit)."""

from __future__ import annotations

import copy
import json
import pickle
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

import docstore
from docstore.errors import ValidationError
from docstore.models import Document, Source
from docstore.repositories.documents import validate
from docstore.search.results import Hit
from tests.conftest import sample_documents


def _hit_row() -> dict[str, Any]:
    now = datetime(2026, 12, 6, 10, 0)
    row = dict(
        id=7,
        doc_type="rust",
        source_name="tokio",
        doc_path="tokio/sync/index.html",
        content="Synchronization primitives",
        metadata={"kind": "module", "n": [1, 2]},
        embedding=None,
        token_count=3,
        created_at=now,
        updated_at=now,
        similarity=0.9,
        distance=0.1,
        text_rank=None,
        score=None,
        ranks=None,
    )
    assert row.keys() == Hit.model_fields.keys()
    return row


def _same(a: Any, b: Any) -> None:
    assert type(a) is type(b)
    assert a == b
    assert list(a.__dict__.items()) == list(b.__dict__.items())  # the order repr shows
    assert a.model_fields_set == b.model_fields_set
    assert a.__pydantic_private__ == b.__pydantic_private__
    assert a.__pydantic_extra__ == b.__pydantic_extra__
    assert a.model_dump() == b.model_dump()
    assert repr(a) == repr(b)


def test_a_hit_from_a_row_is_what_model_construct_makes() -> None:
    fast, slow = Hit.from_row(_hit_row()), Hit.model_construct(**_hit_row())
    _same(fast, slow)
    shuffled = dict(reversed(_hit_row().items()))  # a row's columns in another order
    fast = Hit.from_row(shuffled)
    _same(fast, slow)
    assert not fast.embedding_checked or fast.embedding is None
    _same(copy.deepcopy(fast), copy.deepcopy(slow))
    _same(pickle.loads(pickle.dumps(fast)), pickle.loads(pickle.dumps(slow)))
    assert fast.model_dump_json() == slow.model_dump_json()


def test_a_row_built_model_still_validates_what_is_assigned_to_it() -> None:
    hit = Hit.from_row(_hit_row())
    with pytest.raises(ValidationError, match="content"):
        hit.content = "a\x00b"
    with pytest.raises(ValidationError, match="embedding"):
        hit.model_copy(update={"embedding": [float("nan")] * 3072})
    hit.content = "fine"
    assert hit.content == "fine" and "content" in hit.model_fields_set


def test_private_attributes_are_fresh_for_every_instance() -> None:
    a, b = Document.from_row(_document_row()), Document.from_row(_document_row())
    assert a.__pydantic_private__ is not b.__pydantic_private__
    a.seal()
    assert json.loads(str(a.take_metadata_json())) == {"kind": "module"}
    assert b.__pydantic_private__ == {"_metadata_json": None, "_embedding_checked": False}


def test_a_subclass_whose_model_post_init_skips_pydantics_still_validates() -> None:
    """A subclass's ``model_post_init`` without ``super()`` leaves the private attributes
    unset on pydantic 2.4 (pydantic fills them only there): a Document of it is still
    checked, sealed and written like any other (the models set the defaults themselves)."""

    class Tagged(Document):
        def model_post_init(self, context: Any, /) -> None:
            pass

    doc = Tagged(source_name="s", doc_path="p", content="c", metadata={"legacy_id": 3})
    assert doc.embedding_checked
    checked = validate(doc, 0, 3)
    assert checked.take_metadata_json() == '{"legacy_id": 3}'
    assert checked.__pydantic_private__ == {"_metadata_json": None, "_embedding_checked": True}


def _document_row() -> dict[str, Any]:
    row = {k: v for k, v in _hit_row().items() if k in Document.model_fields}
    row["metadata"] = {"kind": "module"}
    return row


def test_a_row_missing_fields_gets_their_defaults_as_model_construct_gives_them() -> None:
    row = _document_row()
    del row["embedding"], row["token_count"]
    _same(Document.from_row(dict(row)), Document.model_construct(**row))
    assert Document.from_row(dict(row)).embedding is None


def test_a_row_with_unknown_columns_is_what_model_construct_makes_of_it() -> None:
    row = {**_document_row(), "rank": 3}  # (pydantic 2.4 keeps "rank", later ones drop it)
    _same(Document.from_row(dict(row)), Document.model_construct(**row))


def test_a_source_from_a_row() -> None:
    now = datetime(2026, 12, 6, tzinfo=UTC)
    row = {name: None for name in Source.model_fields}
    row.update(doc_type="rust", source_name="tokio", config={"a": 1}, enabled=True)
    row.update(created_at=now, updated_at=now)
    _same(Source.from_row(dict(row)), Source.model_construct(**row))


async def test_hits_and_reads_from_a_real_database_are_whole_models(
    store: docstore.Store,
) -> None:
    docs = sample_documents(5)
    await store.documents.upsert_many(docs)
    hits = await store.search(np.asarray(docs[0].embedding), source_name="tokio", limit=3)
    assert hits[0].doc_path == docs[0].doc_path
    for hit in hits:
        assert hit.model_fields_set == set(Hit.model_fields)
        assert isinstance(hit.model_dump(), dict) and hit.similarity is not None
    read = await store.documents.get_by_key("rust", "tokio", docs[1].doc_path)
    assert read is not None and read.content == docs[1].content
    assert read.model_dump(exclude={"embedding"})["metadata"] == docs[1].metadata
    made = await store.sources.upsert({"source_name": "tokio", "config": {"a": 1}})
    listed = await store.sources.list()
    assert listed == [made] and listed[0].model_fields_set == set(Source.model_fields)
