"""The corpus of ``bench/scale.py``: documents spread over doc_types and sources, clustered by
topic, and the Doc Server's searches over them (:func:`workloads`, measured by
:func:`in_rounds`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import common
import numpy as np
from common import DIM, WORDS, Call, Cell, CpuMeter, load_line

import docstore
from docstore import Document

SCOPED_LIMIT = 5  # the Doc Server's per-crate query (legacy search_similar_docs default)
LIMIT = 10  # unscoped and doc_type-scoped searches
K = TypeVar("K")


@dataclass
class Corpus:
    """Generated documents: vectors, their doc_type and source, and the scopes to query."""

    vectors: np.ndarray
    doc_types: list[str]
    sources: list[str]
    shares: dict[str, float]
    rows_by_type: dict[str, list[int]] = field(default_factory=dict)
    rows_by_source: dict[str, list[int]] = field(default_factory=dict)
    big_sources: list[str] = field(default_factory=list)
    small_sources: list[str] = field(default_factory=list)
    jitter: float = 0.3
    """Noise norm of a query around the stored vector it is drawn near (:meth:`near`)."""

    def near(self, rows: Sequence[int], n: int, seed: int) -> np.ndarray:
        """``n`` queries, each a stored vector of ``rows`` plus noise (normalised)."""
        return common.near(self.vectors, n, self.jitter / np.sqrt(DIM), seed, rows=rows)

    def of_first_type(self, sources: list[str]) -> list[str]:
        """``sources`` of the first doc_type of ``--shares``."""
        first = next(iter(self.shares))
        return [s for s in sources if s.startswith(f"{first}-")]


def make_corpus(args: argparse.Namespace) -> Corpus:
    """``args.rows`` documents over ``args.shares``; in each doc_type, half of its rows in
    sources of ``args.big_source`` documents, the rest in sources of ``args.small_source``."""
    shares = dict(args.shares)
    total = sum(shares.values())
    names = list(shares)
    counts = [round(args.rows * shares[n] / total) for n in names]
    counts[-1] = args.rows - sum(counts[:-1])
    doc_types: list[str] = []
    sources: list[str] = []
    fractions = {n: shares[n] / total for n in names}
    corpus = Corpus(np.empty(0), doc_types, sources, fractions, jitter=args.jitter)
    for name, count in zip(names, counts, strict=True):
        big = (count // 2) // args.big_source
        sizes = [args.big_source] * big
        rest = count - big * args.big_source
        sizes += [args.small_source] * (rest // args.small_source)
        if rest % args.small_source:
            sizes.append(rest % args.small_source)
        for k, size in enumerate(sizes):
            kind = "big" if k < big else "crate"
            source = f"{name}-{kind}-{k}"
            (corpus.big_sources if kind == "big" else corpus.small_sources).append(source)
            doc_types += [name] * size
            sources += [source] * size

    def affinity(rng: np.random.Generator, which: np.ndarray) -> None:
        """--affinity: that share of a doc_type's rows drawn from its own topics."""
        own = rng.random(args.rows) < args.affinity
        type_index = {n: i for i, n in enumerate(names)}
        per_type = max(args.clusters // len(names), 1)
        for row in np.flatnonzero(own):
            base = type_index[doc_types[row]] * per_type
            which[row] = (base + rng.integers(0, per_type)) % args.clusters

    corpus.vectors = common.clustered(
        args.rows,
        args.clusters,
        args.spread / np.sqrt(DIM),
        args.seed,
        assign=affinity if args.affinity > 0 else None,
    )
    for i, (t, s) in enumerate(zip(doc_types, sources, strict=True)):
        corpus.rows_by_type.setdefault(t, []).append(i)
        corpus.rows_by_source.setdefault(s, []).append(i)
    return corpus


def content(i: int, chars: int) -> str:
    """``chars`` characters of Rust-docs vocabulary, different for each ``i``."""
    words: list[str] = []
    n = 0
    k = i
    while n < chars:
        word = WORDS[(k * 7919 + n) % len(WORDS)]
        words.append(word)
        n += len(word) + 1
        k += 1
    return " ".join(words)[:chars]


def documents(corpus: Corpus, chars: int) -> Iterator[Document]:
    for i in range(len(corpus.vectors)):
        yield Document(
            doc_type=corpus.doc_types[i],
            source_name=corpus.sources[i],
            doc_path=f"{corpus.sources[i]}/doc{i}.html",
            content=content(i, chars),
            metadata={"crate_version": f"{i % 3}.0"},
            embedding=corpus.vectors[i],
            token_count=chars // 4,
        )


@dataclass
class Workload:
    """One of the Doc Server's searches: ``make(store)`` is its call on that store."""

    name: str
    expect: str
    """The mode docstore should pick for it."""
    make: Callable[[docstore.Store], Call]
    custom: bool = False  # run on the store whose connections use force_custom_plan


def workloads(corpus: Corpus, seed: int) -> list[Workload]:
    """One source of ~100 and of ~1,000 documents (halfvec), the latter scanned exactly too,
    and unscoped ANN."""

    def per_source(sources: list[str], exact: bool | None, seed: int) -> Callable[..., Call]:
        qs = [
            (s, corpus.near(corpus.rows_by_source[s], 1, seed + k)[0])
            for k, s in enumerate(sources)
        ]

        def make(store: docstore.Store) -> Call:
            async def call(i: int) -> object:
                source, q = qs[i % len(qs)]
                return await store.search(
                    q,
                    doc_type=source.split("-")[0],
                    source_name=source,
                    limit=SCOPED_LIMIT,
                    exact=exact,
                )

            return call

        return make

    unscoped = corpus.near(range(len(corpus.vectors)), 200, seed + 99)

    def ann(store: docstore.Store) -> Call:
        async def call(i: int) -> object:
            return await store.search(unscoped[i % len(unscoped)], limit=LIMIT)

        return call

    small = corpus.of_first_type(corpus.small_sources)
    big = corpus.of_first_type(corpus.big_sources)
    small_n = len(corpus.rows_by_source[small[0]])
    big_n = len(corpus.rows_by_source[big[0]]) if big else 0
    out = [Workload(f"halfvec, 1 source of {small_n}", "halfvec", per_source(small, None, 1000))]
    if big:
        out += [
            Workload(f"halfvec, 1 source of {big_n}", "halfvec", per_source(big, None, 2000)),
            Workload(f"exact, 1 source of {big_n}", "exact", per_source(big, True, 2000)),
        ]
    out.append(Workload(f"ann, unscoped ({len(corpus.vectors):,})", "ann", ann))
    return out


async def in_rounds(
    plans: Mapping[K, Sequence[tuple[Call, int]]],
    args: argparse.Namespace,
    meters: Mapping[str, CpuMeter],
) -> dict[K, Cell]:
    """Every plan's closed loop for ``--duration`` seconds, in turn, ``--rounds`` times; the
    load average is printed when done."""
    cells = await common.closed_loop_rounds(plans, args.rounds, args.duration, meters)
    print(f"    {load_line()} after\n")
    return cells
