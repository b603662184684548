"""Passes of ``bench/search.py``: searches of one kind over a corpus's queries, with their
latency, recall@10 and modes (:class:`Pass`); default search() against today's defaults
interleaved (:func:`against_today`); the recall estimate a store reports."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import common
import numpy as np
from common import DIM, percentile

import docstore

from .corpora import LIMIT, Corpus

TODAY: dict[str, int] = {"ef_search": 200, "oversample": 4}
"""The defaults before issue 14 (DOCSTORE_HNSW_EF_SEARCH / DOCSTORE_SEARCH_OVERSAMPLE)."""


@dataclass
class Pass:
    """Searches of one kind over a corpus's queries: latency, recall, modes."""

    key: str
    """Its name in ``--json``."""
    name: str
    ms: list[float]
    recall: list[float]
    modes: Counter[str]

    @property
    def p50(self) -> float:
        return percentile(self.ms, 50)

    @property
    def mean(self) -> float:
        return float(np.mean(self.recall))

    @property
    def worst(self) -> float:
        return min(self.recall)

    @property
    def under(self) -> int:
        """Queries with recall under 0.7."""
        return sum(r < 0.7 for r in self.recall)

    def row(self) -> str:
        modes = ", ".join(f"{m} {c}" for m, c in self.modes.most_common())
        return (
            f"  {self.name:46} {len(self.ms):>5} {self.mean:>9.3f} {self.worst:>5.2f}"
            f" {self.under:>5} {self.p50:>8.2f} {percentile(self.ms, 95):>8.2f}  {modes}"
        )

    def figures(self) -> dict[str, Any]:
        return {
            "label": self.name,
            "n": len(self.ms),
            "recall": self.mean,
            "min_recall": self.worst,
            "under_0_7": self.under,
            "p50_ms": self.p50,
            "p95_ms": percentile(self.ms, 95),
            "modes": dict(self.modes),
        }


HEADER = (
    f"  {'pass':46} {'n':>5} {'recall@10':>9} {'min':>5} {'<0.7':>5} {'p50 ms':>8} {'p95 ms':>8}"
    "  modes"
)


def make_pass(
    key: str,
    name: str,
    corpus: Corpus,
    which: list[int],
    seconds: list[float],
    results: list[Any],
) -> Pass:
    found = [[corpus.row_of(h) for h in r] for r in results]
    truth = [corpus.truth[i] for i in which]
    return Pass(
        key,
        name,
        [s * 1000 for s in seconds],
        common.recalls(truth, found, LIMIT),
        Counter(r.mode for r in results),
    )


async def search_pass(
    store: docstore.Store, corpus: Corpus, key: str, name: str, n: int, **options: Any
) -> Pass:
    """The first ``n`` queries, one after another, through ``search(q, **options)``."""

    async def call(i: int) -> Any:
        return await store.search(corpus.queries[i], limit=LIMIT, **options)

    seconds, results = await common.interleave({key: call}, n)
    return make_pass(key, name, corpus, list(range(n)), seconds[key], results[key])


async def against_today(
    store: docstore.Store, corpus: Corpus, n: int, rounds: int
) -> tuple[Pass, Pass, float]:
    """Default search() and today's defaults, rotated query by query, ``rounds`` times."""

    async def default_call(i: int) -> Any:
        return await store.search(corpus.queries[i % n], limit=LIMIT)

    async def today_call(i: int) -> Any:
        return await todays_search(store, corpus.queries[i % n])

    calls = {"default": default_call, "today": today_call}
    seconds, results = await common.interleave(calls, n * rounds)
    which = [i % n for i in range(n * rounds)]
    default = make_pass(
        "default_interleaved",
        "default search()  } interleaved",
        corpus,
        which,
        seconds["default"],
        results["default"],
    )
    today = make_pass(
        "today_interleaved",
        f"before issue 14 (ef {TODAY['ef_search']}, 4 trips) }}",
        corpus,
        which,
        seconds["today"],
        results["today"],
    )
    return default, today, common.median_ratio(seconds["default"], seconds["today"])


async def todays_search(store: docstore.Store, q: np.ndarray) -> Any:
    """An unfiltered search() as docstore ran it before issue 14, on the same store: its
    defaults (``ef_search`` 200, 40 candidates) and its statements — BEGIN, the ``SET LOCAL``s
    of ``queries.ann_settings_sql``, the ANN query of ``queries.vector_search_sql``, COMMIT —
    and the same validation and hit building around them."""
    from docstore.models import query_vector
    from docstore.search import queries
    from docstore.search.api import _hit
    from docstore.search.results import SearchResults

    vector = query_vector(q, DIM)
    sql, params = queries.vector_search_sql(vector, dim=DIM, limit=LIMIT, candidates=40)
    settings = queries.ann_settings_sql(TODAY["ef_search"])

    async def work(conn: Any) -> list[Any]:
        async with conn.transaction():
            await conn.execute(settings)
            return list(await conn.fetch(sql, *params))

    records = await store.run(work, stateless=True, read=True)
    return SearchResults([_hit(r, similarity=1 - r["distance"]) for r in records], mode="ann")


def recall_fields(value: Any, path: str = "") -> dict[str, Any]:
    """Every field whose name mentions recall, anywhere in a (dumped) report."""
    found: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "recall" in str(key).lower():
                found[where] = item
            else:
                found.update(recall_fields(item, where))
    return found


async def recall_estimate(store: docstore.Store) -> dict[str, Any]:
    """What store.metrics() and store.health() say about recall (nothing before issue 14)."""
    out: dict[str, Any] = {}
    for name in ("metrics", "health"):
        report = await getattr(store, name)()
        dumped = report.model_dump(mode="json") if hasattr(report, "model_dump") else {}
        out.update({f"{name}().{k}": v for k, v in recall_fields(dumped).items()})
    return out
