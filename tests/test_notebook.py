"""examples/notebook.ipynb runs top to bottom in a real Jupyter kernel."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parent.parent / "examples" / "notebook.ipynb"


def test_notebook_executes_against_a_real_database(
    database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)  # the kernel inherits the environment
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    html = "\n".join(out.get("data", {}).get("text/html", "") for out in outputs)
    assert "<table>" in html and "tokio/runtime/index.html" in html  # SearchResults' HTML repr
    text = "\n".join(out.get("text", "") for out in outputs)
    assert "documents_embedding_hnsw_cosine 1.0" in text  # the recall cell
    assert "tokio/runtime/index.html" in text  # the docstore.sync cell
