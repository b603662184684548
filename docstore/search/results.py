"""What searches return: :class:`Hit`, :class:`SearchResults`, :class:`VectorIndex`,
:class:`RecallReport` — with notebook-friendly reprs (rich, HTML, pandas)."""

from __future__ import annotations

import html
import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

from pydantic import BaseModel, Field

from docstore.models import Document

if TYPE_CHECKING:
    import pandas
    from rich.console import Console, ConsoleOptions, RenderResult

SearchMode = Literal["exact", "ann", "halfvec", "text", "hybrid"]
_PREVIEW = 80


class Hit(Document):
    """A document found by a search, with its scores.

    ``similarity`` is higher-is-better (cosine: ``1 - distance``; l2: ``1 / (1 + distance)``;
    inner product: the inner product) and ``distance`` is pgvector's operator value. Text and
    hybrid searches fill ``text_rank`` (``ts_rank_cd``) and ``score`` (the fused RRF score).
    ``embedding`` is only loaded with ``include_embedding=True``.
    """

    similarity: float | None = None
    distance: float | None = None
    text_rank: float | None = None
    score: float | None = None
    ranks: dict[str, int] | None = Field(default=None, repr=False)


def _preview(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _PREVIEW else flat[: _PREVIEW - 1] + "…"


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


class SearchResults(Sequence[Hit]):
    """The hits of one search, best first: a read-only sequence of :class:`Hit`.

    ``mode`` says how they were found (``"exact"`` scan, ``"ann"`` index + exact re-rank,
    ``"halfvec"`` half-precision scan of a small scope (a source, a ``doc_type``, a
    selective filter) + exact re-rank, ``"text"``, ``"hybrid"``).
    In Jupyter the results render as a table; in a terminal, ``rich.print(results)`` does.
    :meth:`to_pandas` gives a DataFrame.
    """

    def __init__(
        self,
        hits: list[Hit],
        *,
        mode: SearchMode,
        metric: str | None = None,
        index_name: str | None = None,
        elapsed_ms: float | None = None,
        ef_search: int | None = None,
        escalated: bool = False,
    ) -> None:
        self._hits = hits
        self.mode = mode
        self.metric = metric
        self.index_name = index_name
        self.elapsed_ms = elapsed_ms
        self.ef_search = ef_search
        """``hnsw.ef_search`` of the (first) ANN pass; None for other modes."""
        self.escalated = escalated
        """True when the ANN search ran its second, wider pass (its candidates were flat)."""

    @overload
    def __getitem__(self, i: int) -> Hit: ...
    @overload
    def __getitem__(self, i: slice) -> list[Hit]: ...
    def __getitem__(self, i: int | slice) -> Hit | list[Hit]:
        return self._hits[i]

    def __len__(self) -> int:
        return len(self._hits)

    def __iter__(self) -> Iterator[Hit]:
        return iter(self._hits)

    @property
    def ids(self) -> list[int]:
        """The hits' document ids, best first."""
        return [h.id for h in self._hits if h.id is not None]

    def __repr__(self) -> str:
        via = f" via {self.index_name}" if self.index_name else ""
        return f"<SearchResults {len(self)} hits, {self.mode}{via}>"

    # -- rendering --------------------------------------------------------------------------
    def _columns(self) -> list[str]:
        cols = ["#", "source_name", "doc_path"]
        if len({h.doc_type for h in self._hits}) > 1:
            cols.insert(1, "doc_type")
        for name in ("similarity", "text_rank", "score"):
            if any(getattr(h, name) is not None for h in self._hits):
                cols.append(name)
        return [*cols, "content"]

    def _cells(self, rank: int, hit: Hit, columns: list[str]) -> list[str]:
        values = {
            "#": str(rank),
            "doc_type": hit.doc_type,
            "source_name": hit.source_name,
            "doc_path": hit.doc_path,
            "similarity": _fmt(hit.similarity),
            "text_rank": _fmt(hit.text_rank),
            "score": _fmt(hit.score),
            "content": _preview(hit.content),
        }
        return [values[c] for c in columns]

    def _title(self) -> str:
        parts = [f"{len(self)} hits", self.mode]
        doc_types = {h.doc_type for h in self._hits}
        if len(doc_types) == 1:
            parts.append(f"doc_type {doc_types.pop()}")
        if self.metric:
            parts.append(self.metric)
        if self.elapsed_ms is not None:
            parts.append(f"{self.elapsed_ms:.1f} ms")
        return " · ".join(parts)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.table import Table
        from rich.text import Text

        columns = self._columns()
        table = Table(title=Text(self._title()), title_justify="left")  # a doc_type "x[/y]"
        for c in columns:
            if c in ("doc_path", "content"):  # these give way when the terminal is narrow
                table.add_column(c, ratio=2 if c == "content" else 1, overflow="fold")
            else:
                table.add_column(c, no_wrap=True, justify="right" if c == "#" else "left")
        for rank, hit in enumerate(self._hits, start=1):
            # Text, not markup: docs are full of "[u8]" and "[dependencies]"
            table.add_row(*(Text(cell) for cell in self._cells(rank, hit, columns)))
        yield table

    def _repr_html_(self) -> str:
        columns = self._columns()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        rows = "".join(
            "<tr>"
            + "".join(f"<td>{html.escape(v)}</td>" for v in self._cells(r, h, columns))
            + "</tr>"
            for r, h in enumerate(self._hits, start=1)
        )
        return (
            f"<table><caption>{html.escape(self._title())}</caption>"
            f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
        )

    def to_records(self) -> list[dict[str, Any]]:
        """One plain dict per hit (``embedding`` as the hit's ``numpy.ndarray`` when it was
        loaded: ``.tolist()`` it for JSON)."""
        records = []
        for hit in self._hits:
            record = hit.model_dump(exclude={"embedding", "ranks"})
            record["metadata"] = json.loads(json.dumps(record["metadata"]))
            if hit.embedding is not None:
                record["embedding"] = hit.embedding
            records.append(record)
        return records

    def to_pandas(self) -> pandas.DataFrame:
        """The hits as a pandas DataFrame, one row per hit (needs ``pandas`` installed)."""
        try:
            import pandas
        except ImportError:  # pragma: no cover - exercised only without pandas
            raise ImportError("to_pandas() needs pandas: pip install pandas") from None
        return pandas.DataFrame.from_records(self.to_records())


class VectorIndex(BaseModel):
    """An HNSW index on ``documents`` and what docstore makes of it."""

    name: str
    metric: str | None
    opclass: str
    valid: bool
    usable: bool = Field(description="valid, and on the expression docstore's queries use")
    size_bytes: int
    definition: str


class Latency(BaseModel):
    """Latency percentiles in milliseconds."""

    p50: float
    p95: float
    p99: float
    mean: float


class RecallReport(BaseModel):
    """ANN vs exact on sampled stored vectors: recall@k and the latency of both paths."""

    sample: int
    limit: int
    metric: str
    index: str | None
    ef_search: int
    candidates: int
    escalated: float = Field(0.0, description="share of ANN searches that ran a second pass")
    recall: float = Field(description="mean fraction of the exact top-k the ANN search returned")
    min_recall: float
    perfect: float = Field(description="fraction of queries whose ANN top-k equals the exact one")
    ann: Latency
    exact: Latency
    speedup: float = Field(description="exact p50 ÷ ANN p50")

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.table import Table
        from rich.text import Text

        table = Table(
            title=Text(  # text, not markup: an index may be named "x[/y]"
                f"recall@{self.limit} = {self.recall:.3f} over {self.sample} queries"
                f" ({self.index or 'no index'}, ef_search {self.ef_search},"
                f" {self.candidates} candidates)"
            ),
            title_justify="left",
        )
        for c in ("path", "p50 ms", "p95 ms", "p99 ms", "mean ms"):
            table.add_column(c, justify="left" if c == "path" else "right")
        for name, lat in (("ann", self.ann), ("exact", self.exact)):
            table.add_row(name, *(f"{v:.2f}" for v in (lat.p50, lat.p95, lat.p99, lat.mean)))
        yield table
