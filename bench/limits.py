"""Benchmark: where docstore's input limits come from (issue 13, parts 5 and 7).

    python bench/limits.py text       # MAX_TEXT_QUERY_WORDS: parse and ranking time by words
    python bench/limits.py halfvec    # MAX_HALF_PRECISION_ERROR: recall as vectors shrink

**text.** Queries of 1,000 .. 50,000 words of five shapes (plain words, one quoted phrase,
hyphenated, OR-ed, excluded with ``-``): the time of ``websearch_to_tsquery`` alone, then of
``search_text``'s SQL (bypassing docstore's limit) on 2,000 documents of 300 words from a
1,000-word vocabulary with the GIN index, or the error. Then that SQL with n distinct
vocabulary words AND-ed, n OR-ed, one matching word repeated n times, and n words excluded
(``-word``: a query of exclusions alone matches, and ranks, nearly every document), for n
from 1 to 1,000. A query is given up after 30 s.

**halfvec.** 1,000 uniformly random unit vectors (the hardest ranking: every neighbour almost
equally far) scaled by s are written by SQL, bypassing validation, beside 1,500 clustered
documents with the HNSW index. For each s: the relative error of the half-precision copy,
recall@10 of the default scoped search (halfvec path) and of the default unscoped search (ANN
path) against the exact scan, for 60 unit-length queries near stored vectors, and how often
both found the nearest first. (Beyond the nearest, a random vector's neighbours are all at
cosine ~0 from it, a spread HNSW cannot rank well at any scale: compare the ANN column with
its own s = 1 row.)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from typing import Any

import common
import numpy as np
from common import DIM

import docstore
from docstore import Document
from docstore.search import text_sql

SHAPES = {
    "words": lambda n: " ".join(f"word{i}" for i in range(n)),
    "phrase": lambda n: '"' + " ".join(f"w{i}" for i in range(n)) + '"',
    "hyphen": lambda n: "-".join(f"w{i}" for i in range(n)),
    "or": lambda n: " or ".join(f"w{i}" for i in range(n)),
    "exclude": lambda n: " ".join(f"-w{i}" for i in range(n)),
}


async def timed(store: docstore.Store, sql: str, *args: Any, limit_s: float = 30.0) -> str:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit_s):
            await store.fetch(sql, *args)
    except TimeoutError:
        return f">{limit_s:.0f} s"
    except docstore.DocstoreError as exc:
        return type(exc.__cause__ or exc).__name__
    return f"{(time.perf_counter() - started) * 1000:.1f} ms"


async def text(store: docstore.Store) -> None:
    vocabulary = [f"term{i}x" for i in range(1000)]
    pick = random.Random(1)
    await store.documents.upsert_many(
        Document(
            source_name="text",
            doc_path=f"text/{i}",
            content=" ".join(pick.choices(vocabulary, k=300)),
        )
        for i in range(2000)
    )
    await store.create_text_index()
    await store.execute("VACUUM ANALYZE documents")
    sql, _ = text_sql.text_search_sql("x", limit=10)  # the SQL: $1 the query, $2 the limit
    parse = "SELECT numnode(websearch_to_tsquery('english', $1))"
    print("by words: websearch_to_tsquery alone / the whole search_text query")
    for shape, make in SHAPES.items():
        cells = []
        for n in (1000, 5000, 10_000, 15_000, 20_000, 50_000):
            query = make(n)
            cells.append(
                f"{n}: {await timed(store, parse, query)} / {await timed(store, sql, query, 10)}"
            )
        print(f"  {shape:8} " + ", ".join(cells), flush=True)
    print("search_text on 2,000 documents of 300 words (GIN index), by words:")
    for n in (1, 16, 64, 256, 512, 1000):
        words = pick.sample(vocabulary, n)
        cells = [
            f"AND {await timed(store, sql, ' '.join(words), 10)}",
            f"OR {await timed(store, sql, ' or '.join(words), 10)}",
            f"one word x{n} {await timed(store, sql, ' '.join([words[0]] * n), 10)}",
            f"-word x{n} {await timed(store, sql, ' '.join('-' + w for w in words), 10)}",
        ]
        print(f"  {n:5} words: " + ", ".join(cells), flush=True)


def half_error(v: np.ndarray) -> float:
    exact = v.astype(np.float64)
    return float(
        np.linalg.norm(v.astype(np.float16).astype(np.float64) - exact) / np.linalg.norm(exact)
    )


async def halfvec(store: docstore.Store, queries_per_scale: int) -> None:
    await store.documents.upsert_many(
        Document(source_name=f"crate{i % 40}", doc_path=f"c/{i}", content="c", embedding=v)
        for i, v in enumerate(common.clustered(1500, 30, 1 / np.sqrt(DIM), 3))
    )
    await store.execute("ANALYZE documents")
    await store.create_vector_index()
    rng = np.random.default_rng(77)
    points = rng.normal(size=(1000, DIM))
    points = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    print("1,000 random unit vectors x s in one source, beside 1,500 clustered documents:")
    for s in (1, 1e-3, 3e-4, 1e-4, 5e-5, 3e-5, 1e-5, 3e-6, 1e-6):
        vectors = (points * s).astype(np.float32)
        await store.executemany(  # around docstore's validation, as a migration would write
            "INSERT INTO documents (doc_type, source_name, doc_path, content, embedding)"
            " VALUES ('rust', 'small', $1, 's', $2)",
            [(f"small/{j}", v) for j, v in enumerate(vectors)],
        )
        scoped = unscoped = first = 0
        for j in range(queries_per_scale):
            q = points[j] + rng.normal(scale=1 / np.sqrt(DIM), size=DIM)
            q = (q / np.linalg.norm(q)).astype(np.float32)
            truth = await store.search(q, source_name="small", limit=10, exact=True)
            half = await store.search(q, source_name="small", limit=10)
            truth_all = await store.search(q, limit=10, exact=True)
            ann = await store.search(q, limit=10, ef_search=200)  # the documented default
            assert half.mode == "halfvec" and ann.mode == "ann"
            scoped += len(set(truth.ids) & set(half.ids))
            unscoped += len(set(truth_all.ids) & set(ann.ids))
            first += truth_all.ids[0] == ann.ids[0] == half.ids[0]
        errors = [half_error(v) for v in vectors]
        n = 10 * queries_per_scale
        print(
            f"  s = {s:<6g} half copy off by {np.median(errors):7.2%} (median);"
            f" recall@10 scoped (halfvec) {scoped / n:.3f}, unscoped (ann) {unscoped / n:.3f};"
            f" nearest found first by both {first}/{queries_per_scale}",
            flush=True,
        )
        await store.execute("DELETE FROM documents WHERE source_name = 'small'")
        await store.execute("VACUUM documents")  # no dead tuples left in the HNSW graph


async def run(args: argparse.Namespace) -> None:
    async with common.bench_server(prefix="docstore-bench-limits-") as server:
        url = await server.create_database("bench")
        async with docstore.connect(url) as store:
            if args.what == "text":
                await text(store)
            else:
                await halfvec(store, args.queries)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["text", "halfvec"])
    parser.add_argument("--queries", type=int, default=60)
    asyncio.run(run(parser.parse_args()))
    sys.exit(0)
