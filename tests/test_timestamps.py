"""Timestamps Python cannot hold (outside the years 1-9999) stay out, and say what they are.

PostgreSQL stores 4713 BC-294276 AD; asyncpg decodes to ``datetime``, which cannot hold a BC
date, so a row holding one could be written by raw SQL but never read back. Schema migration 7
checks every row written; rows written before it get an error naming the cause.
"""

from __future__ import annotations

import pytest

import docstore
from docstore.errors import QueryError
from tests.conftest import unit_vector


def _doc(path: str) -> docstore.Document:
    return docstore.Document(
        source_name="dates", doc_path=path, content="text", embedding=unit_vector(7)
    )


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("created_at", "0044-03-15 BC"),
        ("updated_at", "10000-01-01"),
        ("created_at", "0001-01-01 BC"),
    ],
)
async def test_raw_sql_cannot_store_an_unreadable_document_timestamp(
    store: docstore.Store, column: str, value: str
) -> None:
    doc = await store.documents.upsert(_doc("a"))
    with pytest.raises(QueryError) as info:
        if column == "updated_at":  # the trigger sets updated_at on UPDATE
            await store.execute(
                "insert into documents (source_name, doc_path, content, updated_at)"
                " values ('dates', 'raw', 'text', $1::text::timestamp)",
                value,
            )
        else:
            await store.execute(
                "update documents set created_at = $1::text::timestamp where id = $2", value, doc.id
            )
    message = str(info.value)
    assert info.value.sqlstate == "23514" and f"documents_{column}_readable" in message
    assert "0." not in message.split("DETAIL", 1)[-1]  # the row's values (a vector) not shown
    got = await store.documents.get(doc.id)
    assert got is not None and got.created_at is not None and got.created_at.year > 2000


@pytest.mark.parametrize(
    "value", ["infinity", "-infinity", "0001-01-01", "9999-12-31 23:59:59.999999"]
)
async def test_timestamps_python_can_hold_are_still_accepted(
    store: docstore.Store, value: str
) -> None:
    doc = await store.documents.upsert(_doc("b"))
    await store.execute(
        "update documents set created_at = $1::text::timestamp where id = $2", value, doc.id
    )
    got = await store.documents.get(doc.id)
    assert got is not None and got.created_at is not None


@pytest.mark.parametrize("column", ["last_checked", "last_populated", "created_at", "updated_at"])
async def test_raw_sql_cannot_store_an_unreadable_source_timestamp(
    store: docstore.Store, column: str
) -> None:
    await store.documents.upsert(_doc("c"))
    with pytest.raises(QueryError) as info:
        await store.execute(
            f"insert into document_sources (source_name, {column})"
            " values ('bc', $1::text::timestamptz)",
            "0044-03-15 00:00:00+00 BC",
        )
    assert f"document_sources_{column}_readable" in str(info.value)
    # 00:30 on 1 January of year 1 at +01:00 is still year 0 in UTC, where asyncpg reads it
    with pytest.raises(QueryError):
        await store.execute(
            f"insert into document_sources (source_name, {column})"
            " values ('bc', $1::text::timestamptz)",
            "0001-01-01 00:30:00+01",
        )


async def test_a_row_written_before_the_constraint_names_the_cause(store: docstore.Store) -> None:
    doc = await store.documents.upsert(_doc("d"))
    # what a database from before migration 7 could hold (each test has its own database)
    await store.execute("alter table documents drop constraint documents_created_at_readable")
    await store.execute("update documents set created_at = '0044-03-15 BC' where id = $1", doc.id)
    with pytest.raises(QueryError) as info:
        await store.documents.get(doc.id)
    message = str(info.value)
    assert "outside the years 1-9999" in message and "isfinite(col)" in message
    assert isinstance(info.value.__cause__, OverflowError)
