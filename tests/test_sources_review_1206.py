"""Source findings of the 2026-12-06 review: ``infinity`` timestamps read back naive, loose
``enabled`` values accepted by the model but refused by ``set_enabled``."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import docstore
from docstore import Source
from docstore.errors import ValidationError


async def test_infinite_source_timestamps_read_back_aware(store: docstore.Store) -> None:
    await store.sources.upsert(Source(source_name="forever", last_checked=datetime.max))
    await store.execute(
        "update document_sources set last_populated = '-infinity' where source_name = 'forever'"
    )
    assert (
        await store.fetchval(
            "select last_checked::text from document_sources where source_name = 'forever'"
        )
        == "infinity"
    )
    for source in [await store.sources.get("rust", "forever"), *(await store.sources.list())]:
        assert source is not None
        assert source.last_checked == datetime.max.replace(tzinfo=UTC)
        assert source.last_populated == datetime.min.replace(tzinfo=UTC)
        assert source.last_checked > datetime.now(UTC)  # comparable with aware times


@pytest.mark.parametrize("value", ["no", "0", "off", 1, 1.0, 0, None])
def test_source_enabled_is_a_flag_not_a_truthy_value(value: object) -> None:
    with pytest.raises(ValidationError, match="enabled"):
        Source(source_name="s", enabled=value)
