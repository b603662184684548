"""CLI output read from a file or a pipe (80 columns, no terminal): names an operator copies
into SQL are never elided."""

from __future__ import annotations

import pytest
from rich.console import Console

from docstore import VectorIndex
from docstore.cli import index


def test_index_names_are_whole_in_a_narrow_non_terminal_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = "documents_embedding_hnsw_cosine_ccnew12"  # an interrupted build's leftover
    out = Console(width=80, force_terminal=False, record=True)
    monkeypatch.setattr(index, "console", out)
    index._print_indexes(
        [
            VectorIndex(
                name=name,
                metric="cosine",
                opclass="halfvec_cosine_ops",
                valid=False,
                usable=False,
                size_bytes=12 * 2**20,
                definition="CREATE INDEX ...",
            )
        ]
    )
    text = out.export_text()
    assert "…" not in text
    cells = "".join(line.split("│")[1].strip() for line in text.splitlines() if "│" in line)
    assert name in cells
