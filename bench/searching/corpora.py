"""The corpora of ``bench/search.py`` (``--corpus``): the documents to load, the queries to
run and each query's true top 10 from numpy (a tie at the 10th similarity, within 1e-5,
counted either way)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
import numpy as np
from common import DIM

from docstore import Document

LIMIT = 10
CORPORA = ("clustered", "dev", "noisy", "near300")
DEFAULTS: dict[str, dict[str, Any]] = {
    "clustered": {"rows": 20_000, "queries": 200, "clusters": 100, "spread": 1.0, "jitter": 0.3},
    "dev": {"rows": None, "queries": None},
    "noisy": {
        "rows": 20_000,
        "queries": 100,
        "clusters": 150,
        "spread": 0.35 * np.sqrt(DIM),
        "jitter": 0.05 * np.sqrt(DIM),
    },
    "near300": {"rows": 100_000, "clusters": 300, "spread": 1.0, "jitter": 0.3},
}
SHARED_CORPORA = common.shared_dir() / "corpora"


@dataclass
class Corpus:
    """Documents to load, queries to run and each query's true top 10."""

    name: str
    about: str
    rows: int
    documents: Callable[[], Iterator[Document]]
    row_of: Callable[[Any], int]
    """The corpus row of a search hit."""
    queries: np.ndarray
    truth: list[set[int]]
    warmup: np.ndarray = field(default_factory=lambda: np.empty((0, DIM), np.float32))
    exact_queries: int | None = None
    vacuum: bool = False
    labels: list[str] | None = None
    """The text of each query, where there is one (dev)."""


def option(args: argparse.Namespace, corpus: str, name: str) -> Any:
    given = getattr(args, name)
    return DEFAULTS[corpus].get(name) if given is None else given


def synthetic(vectors: Iterable[np.ndarray]) -> Iterator[Document]:
    for i, vector in enumerate(vectors):
        yield Document(
            source_name=f"crate{i % 50}",
            doc_path=f"crate{i % 50}/doc{i}",
            content=common.filler_text(i),
            metadata={"crate_version": f"{i % 3}.0"},
            embedding=vector,
            token_count=40,
        )


def synthetic_row(hit: Any) -> int:
    return int(hit.doc_path.rsplit("/doc", 1)[1])


def truth(queries: np.ndarray, chunks: Iterable[tuple[int, np.ndarray]]) -> list[set[int]]:
    ids, sims = common.exact_neighbours(queries, chunks, LIMIT + 5)
    return common.truth_sets(ids, sims, LIMIT)


def clustered_corpus(args: argparse.Namespace) -> Corpus:
    rows, n = option(args, "clustered", "rows"), option(args, "clustered", "queries")
    clusters = option(args, "clustered", "clusters")
    spread, jitter = option(args, "clustered", "spread"), option(args, "clustered", "jitter")
    points = common.clustered(rows, clusters, spread / np.sqrt(DIM), args.seed)
    qs = common.near(points, n, jitter / np.sqrt(DIM), args.seed + 1)
    return Corpus(
        name="clustered",
        about=f"{rows:,} x {DIM} in {clusters} clusters (spread {spread:g}), {n} queries near"
        f" stored documents (jitter {jitter:g})",
        rows=rows,
        documents=lambda: synthetic(points),
        row_of=synthetic_row,
        queries=qs,
        truth=truth(qs, [(0, points)]),
        vacuum=True,
    )


def dev_corpus(args: argparse.Namespace) -> Corpus:
    folder = Path(args.corpora)
    sys.path.insert(0, str(folder))
    try:
        loader = importlib.import_module("corpus")
    finally:
        sys.path.remove(str(folder))
    texts, paths, x, query_texts, q = loader.load(str(folder / "rustdocs-dev.npz"))
    rows = option(args, "dev", "rows") or len(paths)
    n = option(args, "dev", "queries") or len(q)
    texts, paths, x, q = texts[:rows], paths[:rows], x[:rows], q[:n]
    row = {path: i for i, path in enumerate(paths)}

    def documents() -> Iterator[Document]:
        for i, (text, path) in enumerate(zip(texts, paths, strict=True)):
            yield Document(
                doc_type="rust",
                source_name=path.split("/", 1)[0],
                doc_path=path,
                content=text,
                embedding=x[i],
                token_count=len(text.split()),
            )

    return Corpus(
        name="dev",
        about=f"{rows:,} x {DIM} passages of Rust std docs (rustdocs-dev: real text,"
        f" all-MiniLM-L6-v2 lifted to {DIM}), {n} real queries that are not stored documents",
        rows=rows,
        documents=documents,
        row_of=lambda hit: row[hit.doc_path],
        queries=q,
        truth=truth(q, [(0, x)]),
        labels=query_texts[:n],
    )


def noisy_corpus(args: argparse.Namespace) -> Corpus:
    rows, n = option(args, "noisy", "rows"), option(args, "noisy", "queries")
    clusters = option(args, "noisy", "clusters")
    sigma = option(args, "noisy", "spread") / np.sqrt(DIM)
    q_sigma = option(args, "noisy", "jitter") / np.sqrt(DIM)
    # centres N(0, 1) per dimension: "centroid + N(0, 0.35²) per dimension" keeps clusters
    # (with unit centres that noise would be 19x the centre and the data uniform noise)
    stream = common.ClusteredStream(rows, clusters, sigma, args.seed, unit_centres=False)
    picks = np.random.default_rng([args.seed, 5]).integers(0, rows, size=args.warmup + n)
    qs = common.perturbed(stream.take(picks), q_sigma, args.seed + 6)
    measured = qs[args.warmup :]
    sources = stream.take(picks[args.warmup :])
    best = float(np.median(np.einsum("ij,ij->i", measured, sources)))
    return Corpus(
        name="noisy",
        about=f"{rows:,} x {DIM} in {clusters} clusters (centre N(0, 1) + N(0, {sigma:.3f}²) per"
        f" dimension), queries = stored vector + N(0, {q_sigma:.3f}²) per dimension"
        f" (cosine to it ~{best:.2f}); {args.warmup} warm-up searches, then {n} fresh queries",
        rows=rows,
        documents=lambda: synthetic(stream.vectors()),
        row_of=synthetic_row,
        queries=measured,
        warmup=qs[: args.warmup],
        truth=truth(measured, stream.chunks()),
    )


def near300_corpus(args: argparse.Namespace) -> Corpus:
    rows, clusters = option(args, "near300", "rows"), option(args, "near300", "clusters")
    spread, jitter = option(args, "near300", "spread"), option(args, "near300", "jitter")
    stream = common.ClusteredStream(rows, clusters, spread / np.sqrt(DIM), args.seed)
    rng = np.random.default_rng([args.seed, 7])
    picks: list[int] = []
    for c in range(clusters):
        members = np.flatnonzero(stream.which == c)
        if len(members):
            size = args.per_cluster
            picks += rng.choice(members, size=size, replace=len(members) < size).tolist()
    picks = rng.permutation(picks).tolist()  # any first n queries span the clusters
    qs = common.perturbed(stream.take(picks), jitter / np.sqrt(DIM), args.seed + 8)
    return Corpus(
        name="near300",
        about=f"{rows:,} x {DIM} in {clusters} clusters (spread {spread:g}), {len(qs)} queries"
        f" ({args.per_cluster} a cluster) near stored documents (jitter {jitter:g})",
        rows=rows,
        documents=lambda: synthetic(stream.vectors()),
        row_of=synthetic_row,
        queries=qs,
        truth=truth(qs, stream.chunks()),
        exact_queries=20,
    )


BUILDERS: dict[str, Callable[[argparse.Namespace], Corpus]] = {
    "clustered": clustered_corpus,
    "dev": dev_corpus,
    "noisy": noisy_corpus,
    "near300": near300_corpus,
}
