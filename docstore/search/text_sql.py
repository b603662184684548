"""Full-text search SQL builders: pure functions, like :mod:`docstore.search.queries`.

The tsvector expression shared by the GIN index and every text query, the query's checks,
``search_text``'s statement and the rank fusion of ``hybrid_search``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from docstore.errors import ValidationError
from docstore.models import as_int, unstorable
from docstore.search.filters import build_filter
from docstore.search.queries import check_limit, select_list

TEXT_CONFIG = "english"
# to_tsvector is bounded so no document can exceed PostgreSQL's 1 MB tsvector limit; the
# full-text index (create_text_index_sql) uses exactly this expression.
TEXT_PREFIX_CHARS = 100_000
MAX_TEXT_QUERY_WORDS = 256
"""Words (runs of letters and digits, stop words included) a text query may have.

Measured (``bench/limits.py text``: embedded PostgreSQL, 2,000 documents of 300 words, GIN
index; two runs). ``websearch_to_tsquery`` alone never fails: 2–7 ms at 1,000 words,
45–160 ms at 10,000, 1.1–3.3 s at 50,000. The whole search fails with "stack depth limit
exceeded" from 15,000 words (a phrase, hyphenated words), 20,000 (plain words) or 50,000
(OR-ed); 1,000 exclusions of absent words (``-w1 -w2 …``) ran past 30 s. Long before that,
ranking costs: ``ts_rank_cd``'s time per matching document grows with the query's terms —
0.2–0.4 s for one word (in ~500 of the documents), 0.8–1.6 s for 16 OR-ed words (in nearly
all), 6–12 s for 256, 18–22 s for 512, over 30 s for 1,000; one word repeated 256 / 512 /
1,000 times, 0.7–1.3 / 2.3–2.7 / 22–30+ s. 256 words is ~10x a long real question and ~60x
below the stack-depth failure, and bounds how much slower than a one-word query a query can
rank the same matches (~30x).
"""
MAX_TEXT_QUERY_CHARS = 4096
"""Characters a text query may have: 256 words of 16 characters, with room for punctuation;
checked first, so no huge string is scanned or sent."""
_WORD = re.compile(r"[^\W_]+")  # PostgreSQL's parser splits on "_" too


def text_vector_expression(column: str = "content") -> str:
    """The tsvector expression of the full-text index and of every text query."""
    return f"to_tsvector('{TEXT_CONFIG}'::regconfig, left({column}, {TEXT_PREFIX_CHARS}))"


def text_search_sql(
    text: str,
    *,
    limit: int = 10,
    filter: Mapping[str, Any] | None = None,
    include_embedding: bool = False,
) -> tuple[str, list[Any]]:
    """SQL for full-text search: ``websearch_to_tsquery`` syntax (quotes, ``or``, ``-word``),
    ranked by ``ts_rank_cd`` (best first, then id). ``text`` is checked by
    :func:`check_text_query`."""
    check_text_query(text)
    limit = check_limit(limit)
    where, filter_params = build_filter(filter, first_param=3)
    tsv = text_vector_expression("d.content")
    sql = (
        f"SELECT {select_list('d', include_embedding)}, ts_rank_cd({tsv}, q) AS rank"
        f" FROM documents d, websearch_to_tsquery('{TEXT_CONFIG}'::regconfig, $1) q"
        f" WHERE {tsv} @@ q AND {where}"
        " ORDER BY rank DESC, d.id LIMIT $2"
    )
    return sql, [text, limit, *filter_params]


def check_text_query(text: Any) -> str:
    """A text query as given, or :class:`ValidationError` (field ``"text"``) before anything
    is sent: a string without NUL bytes or lone surrogates, at most
    :data:`MAX_TEXT_QUERY_CHARS` characters and :data:`MAX_TEXT_QUERY_WORDS` words."""
    if not isinstance(text, str):
        raise ValidationError(
            "text must be a string without NUL bytes or lone surrogates", field="text"
        )
    if len(text) > MAX_TEXT_QUERY_CHARS:
        raise ValidationError(
            f"text query has {len(text):,} characters; at most {MAX_TEXT_QUERY_CHARS:,} (and"
            f" {MAX_TEXT_QUERY_WORDS} words) are searched: shorten it to its key words",
            field="text",
        )
    if unstorable(text):
        raise ValidationError(
            "text must be a string without NUL bytes or lone surrogates", field="text"
        )
    words = sum(1 for _ in _WORD.finditer(text))
    if words > MAX_TEXT_QUERY_WORDS:
        raise ValidationError(
            f"text query has {words} words; at most {MAX_TEXT_QUERY_WORDS} are searched"
            " (ranking time grows with every word): shorten it to its key words",
            field="text",
        )
    return text


def check_k(k: Any) -> int:
    """Reciprocal Rank Fusion's ``k`` as an int: a non-negative integer (numpy's too, not a
    bool), else :class:`ValidationError`."""
    number = as_int(k)
    if number is None or number < 0:
        raise ValidationError("k must be a non-negative integer", field="k")
    return number


def reciprocal_rank_fusion(
    rankings: Mapping[str, list[int]], *, k: int = 60
) -> list[tuple[int, float, dict[str, int]]]:
    """Fuse ranked id lists: score(id) = Σ 1 / (k + rank), rank counting from 1.

    Returns ``(id, score, {ranking name: rank})`` best first; ties break on the smaller id.
    """
    k = check_k(k)
    scores: dict[int, float] = {}
    ranks: dict[int, dict[str, int]] = {}
    for name, ids in rankings.items():
        for rank, id_ in enumerate(ids, start=1):
            if name in ranks.setdefault(id_, {}):
                continue  # an id counts once per ranking, at its best rank
            ranks[id_][name] = rank
            scores[id_] = scores.get(id_, 0.0) + 1.0 / (k + rank)
    order = sorted(scores, key=lambda i: (-scores[i], i))
    return [(i, scores[i], ranks[i]) for i in order]


TEXT_INDEX_NAME = "idx_documents_content_fts"


def create_text_index_sql(*, concurrently: bool) -> str:
    """``CREATE INDEX`` of the GIN full-text index ``search_text`` uses."""
    return (
        f"CREATE INDEX {'CONCURRENTLY ' if concurrently else ''}{TEXT_INDEX_NAME}"
        f" ON documents USING gin ({text_vector_expression()})"
    )
