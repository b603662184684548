"""Hostile input through every public entry point (hypothesis).

Entry points: ``Document``/``Source`` validation, ``store.documents.upsert_many``,
``get_by_key``, ``delete_source``, ``store.sources.upsert``, ``store.search(filter=...)``,
``store.search_text`` and the CLI (``docstore.cli.app`` through typer's ``CliRunner``).
Inputs: NUL bytes, lone surrogates, quotes and SQL, unicode, huge and deeply nested values,
odd filter keys/operators/values, wrong types, bad vectors.

What must hold, for every example:

- the only exceptions are docstore's typed errors, and the *right* ones: input that docstore
  validates (documents, sources, filters, query vectors, search text, and the keys given to
  lookups and deletes) is refused with ``ValidationError``/``FilterError`` before anything
  is sent;
- nothing is written when an error is raised (row count and newest ``xmin`` unchanged);
- what was written reads back the same;
- no message, no chained cause and no log record contains the URL's password or the text of
  a vector component (every generated vector carries the marker component
  :data:`MARK_VALUE`);
- the CLI exits 0, 1 with one clean ``error:`` line, or 2 with a usage message, and never
  shows a traceback.

The connection uses a role with a password checked by the server (scram-sha-256).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import traceback
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import docstore
from docstore import Document, FilterError, Source, ValidationError
from docstore.cli import app
from docstore.search.filters import OPERATORS
from tests.fuzzing import examples
from tests.reliability.conftest import DIM, PASSWORD, Figures, url_with_user

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning"),  # big reprs
]
OUTCOMES: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
"""Per entry point: how the examples ended (printed with the figures)."""


def outcome(entry: str, what: str) -> None:
    OUTCOMES[entry][what] += 1


MARK_VALUE = np.float32(1234.5678)
MARK_TEXT = "1234.567"
"""Every rendering of the marker component (``1234.5677``, ``1234.5677490234375``) has it."""

DB_SETTINGS = settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PURE_SETTINGS = settings(
    max_examples=examples(300),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


# -- strategies -------------------------------------------------------------------------------

NASTY = [
    "",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfff",
    "'; DROP TABLE documents; --",
    '"',
    "\\",
    "a\\",
    "%",
    "_",
    "$eq",
    "metadata.",
    "metadata..x",
    "closed",
    "e\u0301",
    "\u202e",
    "💥" * 10,
    "x" * 51,
    "y" * 256,
    "é" * 1100,
    "\U0001f600" * 255,
]
any_char = st.characters(exclude_categories=[])  # surrogates included
hostile_text = st.one_of(
    st.text(any_char, max_size=20),
    st.sampled_from(NASTY),
    st.tuples(st.sampled_from(NASTY), st.text(any_char, max_size=5)).map("".join),
)
scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    hostile_text,
)


class _Short:
    """A short repr for hypothesis' reports: a 5,000-level structure can't be printed."""

    depth = 0

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"<{type(self).__name__} {self.depth} levels deep>")


class NestedDict(_Short, dict[str, Any]):
    pass


class NestedList(_Short, list[Any]):
    pass


def _nest(depth: int, leaf: Any, as_list: bool) -> Any:
    value = leaf
    for _ in range(depth):
        value = NestedList([value]) if as_list else NestedDict(k=value)
    if isinstance(value, _Short):
        value.depth = depth
    return value


deep_json = st.builds(_nest, st.sampled_from([50, 600, 1500, 5000]), scalar, st.booleans())
json_like = st.one_of(
    st.recursive(
        scalar,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3)
        ),
        max_leaves=8,
    ),
    deep_json,
)
metadata = st.one_of(
    st.dictionaries(hostile_text, json_like, max_size=4),
    st.builds(lambda k, n: {k: "v" * n}, hostile_text, st.sampled_from([10, 100_000, 1_100_000])),
    st.builds(lambda k: {k * 1000: 1}, hostile_text),
    json_like,
    st.text(any_char, max_size=10),
)


def _vector(kind: str, seed: int) -> Any:
    gen = np.random.default_rng(seed)
    v = gen.standard_normal(DIM).astype(np.float32)
    v[seed % DIM] = MARK_VALUE
    if kind == "ok":
        return v
    if kind == "list":
        return v.tolist()
    if kind == "short":
        return v[: DIM - 1]
    if kind == "long":
        return np.append(v, MARK_VALUE)
    if kind == "nan":
        v[7] = np.nan
        return v
    if kind == "inf":
        return [*v.tolist()[:-1], 1e39]  # beyond float32
    if kind == "2d":
        return np.stack([v, v])
    if kind == "strings":
        return [str(x) for x in v.tolist()]
    if kind == "mixed":
        return [*v.tolist()[:-1], "x"]
    if kind == "empty":
        return []
    if kind == "text":
        return ",".join(str(x) for x in v.tolist())
    return None


VECTOR_KINDS = ["ok", "ok", "list", "short", "long", "nan", "inf", "2d", "strings", "mixed"]
vectors = st.builds(
    _vector, st.sampled_from([*VECTOR_KINDS, "empty", "text", "none"]), st.integers(0, 2**16)
)
good_vectors = st.builds(_vector, st.just("ok"), st.integers(0, 2**16))


def _one_bad_field(
    good: dict[str, st.SearchStrategy[Any]], bad: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    """A valid record, or (half the time) one whose one field is hostile: both paths,
    refusal and write, get tested, and each refusal is about one named field."""

    @st.composite
    def record(draw: st.DrawFn) -> dict[str, Any]:
        data = draw(st.fixed_dictionaries(good))
        field = draw(st.one_of(st.none(), st.sampled_from(sorted(bad))))
        if field is not None:
            data[field] = draw(bad[field])
        return data

    return record()


_names = {
    "doc_type": st.sampled_from(["rust", "solana"]),
    "source_name": st.text("abc-_.", min_size=1, max_size=12),
}
_bad_names = {"doc_type": hostile_text | scalar, "source_name": hostile_text | scalar}
_small_json = st.dictionaries(st.text(max_size=8), st.integers(), max_size=2)
documents = _one_bad_field(
    {
        **_names,
        "doc_path": st.text("abc/._-", min_size=1, max_size=30),
        "content": st.text(min_size=1, max_size=50),
        "metadata": _small_json,
        "embedding": good_vectors,
        "token_count": st.integers(0, 10_000),
    },
    {
        **_bad_names,
        "doc_path": hostile_text | scalar,
        "content": hostile_text | scalar,
        "metadata": metadata,
        "embedding": vectors,
        "token_count": scalar,
    },
)
sources = _one_bad_field(
    {**_names, "config": _small_json, "enabled": st.booleans()},
    {**_bad_names, "config": metadata, "enabled": scalar},
)

filter_fields = st.one_of(
    st.sampled_from(
        ["doc_type", "source_name", "doc_path", "token_count", "created_at", "updated_at"]
    ),
    st.sampled_from(["metadata.i", "metadata.crate_version", "metadata.a.b"]),
    hostile_text.map(lambda s: "metadata." + s),
    st.just("metadata." + ".".join(["p"] * 3000)),
    hostile_text,
)
filter_values = st.one_of(
    json_like,
    st.dates(),
    st.datetimes(timezones=st.none() | st.timezones()),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.lists(scalar, max_size=3),
)
filter_ops = st.sampled_from([*sorted(OPERATORS), "$regex", "$where", "$", "$EQ", "$and"])
condition = st.one_of(
    filter_values, st.dictionaries(filter_ops, filter_values, min_size=1, max_size=2)
)
hostile_filters = st.recursive(
    st.dictionaries(filter_fields, condition, min_size=1, max_size=2),
    lambda inner: st.one_of(
        st.builds(
            lambda op, items: {op: items},
            st.sampled_from(["$and", "$or"]),
            st.lists(inner, max_size=3),
        ),
        st.builds(lambda f: {"$not": f}, inner),
        st.dictionaries(
            st.sampled_from(["$and", "$or", "$not", "$nor", "$xor"]), inner, max_size=1
        ),
    ),
    max_leaves=5,
) | st.sampled_from([[], "source_name = 'x'", 5, {"": 1}, {"$or": {}}])


plausible_filters = st.one_of(
    st.builds(
        lambda field, op, value: {field: {op: value}},
        st.sampled_from(["metadata.i", "metadata.crate_version", "token_count"]),
        st.sampled_from(["$eq", "$ne", "$lt", "$lte", "$gt", "$gte"]),
        st.integers(-5, 30) | st.sampled_from(["1.0", "2.0"]),
    ),
    st.builds(
        lambda field, op, values: {field: {op: values}},
        st.sampled_from(["source_name", "metadata.i", "metadata.crate_version"]),
        st.sampled_from(["$in", "$nin"]),
        st.lists(st.sampled_from(["base", "other", "1.0"]) | st.integers(0, 30), min_size=1),
    ),
    st.builds(
        lambda op, pattern: {"doc_path": {op: pattern}},
        st.sampled_from(["$like", "$ilike"]),
        st.text("base/%_\\0123", max_size=8),
    ),
    st.builds(lambda lo, hi: {"token_count": {"$between": [lo, hi]}}, st.integers(), st.integers()),
    st.builds(lambda flag: {"metadata.i": {"$exists": flag}}, st.booleans()),
)
filters = st.one_of(
    plausible_filters,
    st.builds(lambda a, b: {"$or": [a, b]}, plausible_filters, plausible_filters),
    hostile_filters,
)


# -- the store the DB-backed examples share -------------------------------------------------


class Env:
    """One event loop and one store for all examples of the module (fast, and the same pool
    must keep working after every hostile call)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.runner = asyncio.Runner()

        async def connect() -> docstore.Store:
            return await docstore.connect(url, retry_attempts=2, application_name="fuzz")

        self.store = self.runner.run(connect())
        base = [
            Document(
                source_name="base",
                doc_path=f"base/{i}",
                content=f"base document {i} about async runtimes",
                metadata={"i": i, "crate_version": "1.0"},
                embedding=_vector("ok", i),
                token_count=i,
            )
            for i in range(20)
        ]
        self.run(self.store.documents.upsert_many(base))
        self.run(self.store.sources.upsert(Source(source_name="base")))
        self.query = _vector("ok", 999)

    def run(self, coro: Any) -> Any:
        return self.runner.run(asyncio.wait_for(coro, 60))

    def snapshot(self) -> tuple[Any, ...]:
        """Row counts and the newest row version of both tables: any write changes it."""
        row = self.run(
            self.store.fetchrow(
                "SELECT (SELECT count(*) FROM documents) AS docs,"
                " (SELECT max(xmin::text::bigint) FROM documents) AS docs_xmin,"
                " (SELECT count(*) FROM document_sources) AS sources,"
                " (SELECT max(xmin::text::bigint) FROM document_sources) AS sources_xmin"
            )
        )
        return tuple(row)

    def close(self) -> None:
        self.runner.run(self.store.close())
        self.runner.close()


@pytest.fixture(scope="module")
def env(password_database: str) -> Iterator[Env]:
    environment = Env(password_database)
    yield environment
    environment.close()


def assert_clean(exc: BaseException | None, caplog: pytest.LogCaptureFixture) -> None:
    """No password and no vector component in the error (with its causes) or any log."""
    texts = [caplog.text, *(r.getMessage() for r in caplog.records)]
    if exc is not None:
        texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    for text in texts:
        assert PASSWORD not in text, f"password leaked: {text[:300]}"
        assert MARK_TEXT not in text, f"vector text leaked: {text[:300]}"


def as_jsonb(value: Any) -> Any:
    """``value`` as jsonb gives it back: jsonb keeps numbers as ``numeric``, so a float
    written in exponent form (``6.124461697115434e+16``) is read back as the integer with the
    same decimal digits (``61244616971154340``); compare those as Decimals."""
    return json.loads(json.dumps(value), parse_float=Decimal, parse_int=Decimal)


# -- pure validation ------------------------------------------------------------------------


@PURE_SETTINGS
@given(data=documents)
def test_document_validation_raises_only_validation_error(
    data: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.clear()  # one example's records
    try:
        doc = Document(**data)
    except ValidationError as exc:
        assert_clean(exc, caplog)
        outcome("Document(...)", f"ValidationError on {exc.field}")
        return
    outcome("Document(...)", "valid")
    assert doc.embedding is None or doc.embedding.shape == (len(doc.embedding),)
    json.dumps(doc.metadata)  # storable as JSON


@PURE_SETTINGS
@given(data=sources)
def test_source_validation_raises_only_validation_error(
    data: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.clear()  # one example's records
    try:
        Source(**data)
    except ValidationError as exc:
        assert_clean(exc, caplog)
        outcome("Source(...)", f"ValidationError on {exc.field}")
        return
    outcome("Source(...)", "valid")


# -- through the database -------------------------------------------------------------------


@DB_SETTINGS
@given(rows=st.lists(documents, min_size=1, max_size=3), atomic=st.booleans())
def test_upsert_many_refuses_hostile_documents_before_writing_anything(
    env: Env, rows: list[dict[str, Any]], atomic: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.clear()  # one example's records
    before = env.snapshot()
    try:
        env.run(env.store.documents.upsert_many(rows, atomic=atomic))
    except ValidationError as exc:
        assert env.snapshot() == before, "a refused batch wrote something"
        assert_clean(exc, caplog)
        outcome("documents.upsert_many", "ValidationError, nothing written")
        return
    assert_clean(None, caplog)
    outcome("documents.upsert_many", "written, reads back equal")
    latest = {Document(**row).key: Document(**row) for row in rows}
    for key, doc in latest.items():
        stored = env.run(env.store.documents.get_by_key(*key))
        assert stored is not None
        assert (stored.content, as_jsonb(stored.metadata), stored.token_count) == (
            doc.content,
            as_jsonb(doc.metadata),
            doc.token_count,
        )
        assert doc.embedding is None or np.array_equal(stored.embedding, doc.embedding)


@DB_SETTINGS
@given(doc_type=hostile_text, source_name=hostile_text, doc_path=hostile_text)
def test_lookups_and_deletes_with_hostile_keys_touch_only_their_key(
    env: Env, doc_type: str, source_name: str, doc_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Lookups find only their own key, and ``delete_source`` deletes exactly the documents
    ``count`` saw (other examples may have stored hostile-but-valid names such as
    ``"'; DROP TABLE documents; --"``: a bound parameter like any other)."""
    caplog.set_level(logging.DEBUG)
    caplog.clear()  # one example's records
    entry = "get_by_key/get/count/delete_source"
    before = env.snapshot()
    base = env.run(env.store.documents.count("rust", "base"))
    try:
        doc = env.run(env.store.documents.get_by_key(doc_type, source_name, doc_path))
        source = env.run(env.store.sources.get(doc_type, source_name))
        matching = env.run(env.store.documents.count(doc_type, source_name))
        deleted = env.run(env.store.documents.delete_source(doc_type, source_name))
    except ValidationError as exc:  # a key PostgreSQL can't store: refused before it is sent
        assert exc.field in ("doc_type", "source_name", "doc_path"), exc.field
        assert_clean(exc, caplog)
        assert env.snapshot() == before
        outcome(entry, f"ValidationError on {exc.field}, nothing touched")
        return
    assert doc is None or doc.key == (doc_type, source_name, doc_path)
    assert source is None or source.key == (doc_type, source_name)
    assert deleted == matching
    after = env.snapshot()
    assert after[0] == before[0] - deleted
    if deleted == 0:
        assert after == before
    if (doc_type, source_name) != ("rust", "base"):
        assert env.run(env.store.documents.count("rust", "base")) == base
    assert_clean(None, caplog)
    outcome(entry, f"deleted exactly its own {deleted}" if deleted else "nothing matched")


@DB_SETTINGS
@given(data=sources)
def test_sources_upsert_refuses_hostile_sources_before_writing_anything(
    env: Env, data: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.clear()  # one example's records
    before = env.snapshot()
    try:
        stored = env.run(env.store.sources.upsert(data))
    except ValidationError as exc:
        assert env.snapshot() == before
        assert_clean(exc, caplog)
        outcome("sources.upsert", "ValidationError, nothing written")
        return
    outcome("sources.upsert", "written, reads back equal")
    expected = Source(**data)
    assert (stored.key, as_jsonb(stored.config), stored.enabled) == (
        expected.key,
        as_jsonb(expected.config),
        expected.enabled,
    )
    assert_clean(None, caplog)


@DB_SETTINGS
@given(
    flt=filters,
    doc_type=st.none() | hostile_text,
    vector=st.one_of(good_vectors, good_vectors, good_vectors, vectors),
)
def test_search_with_hostile_filters_raises_only_filter_or_validation_errors(
    env: Env, flt: Any, doc_type: str | None, vector: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.clear()  # one example's records
    before = env.snapshot()
    try:
        hits = env.run(env.store.search(vector, filter=flt, doc_type=doc_type, limit=5))
    except (FilterError, ValidationError) as exc:
        assert_clean(exc, caplog)
        outcome("search(filter=...)", type(exc).__name__)
    else:
        assert len(hits) <= 5
        assert_clean(None, caplog)
        outcome("search(filter=...)", f"searched ({'hits' if hits else 'no hits'})")
    assert env.snapshot() == before


@DB_SETTINGS
@given(text=hostile_text, flt=st.none() | filters)
def test_search_text_with_hostile_text_raises_only_typed_input_errors(
    env: Env, text: str, flt: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.clear()  # one example's records
    try:
        env.run(env.store.search_text(text, filter=flt, limit=5))
    except (FilterError, ValidationError) as exc:
        assert_clean(exc, caplog)
        outcome("search_text", type(exc).__name__)
    else:
        assert_clean(None, caplog)
        outcome("search_text", "searched")


# -- the command line -----------------------------------------------------------------------

CLI = {
    ("health",): {"--url": "url", "--json": None},
    ("init",): {"--url": "url"},
    ("index", "list"): {"--url": "url"},
    ("index", "create"): {
        "--url": "url",
        "--metric": "metric",
        "--m": "int",
        "--ef-construction": "int",
        "--no-concurrently": None,
        "--text": None,
    },
    ("index", "drop"): {"--url": "url", "--metric": "metric", "--text": None},
    ("index", "recall"): {
        "--url": "url",
        "--metric": "metric",
        "--sample": "int",
        "--limit": "int",
        "--ef-search": "int",
        "--oversample": "int",
        "--doc-type": "text",
    },
    ("compat", "install-views"): {"--url": "url", "--schema": "text"},
    ("compat", "uninstall-views"): {"--url": "url", "--schema": "text"},
    ("migrate", "--dry-run"): {
        "--source": "url",
        "--target": "url",
        "--doc-type": "text",
        "--chunk-rows": "int",
    },
    ("validate",): {"--source": "url", "--target": "url", "--doc-type": "text"},
}
"""Commands and their options (value kind, None for a flag). Not here: ``demo`` (starts an
embedded server), ``rollback`` (writes the legacy database), ``--report`` (writes a file)."""


def _urls(good: str) -> list[str]:
    """URLs to feed the CLI: ours, a wrong password, a refused local port, wrong schemes.
    Only this machine's addresses: no name is ever resolved."""
    return [
        good,
        url_with_user(good, "nobody", PASSWORD),
        f"postgresql://u:{PASSWORD}@127.0.0.1:1/x",
        f"mysql://u:{PASSWORD}@127.0.0.1/x",
        f"postgresql://u:{PASSWORD}@[::1]:1/x?sslmode=require",
        "not a url",
        "",
    ]


def _cli_args(good_url: str) -> st.SearchStrategy[list[str]]:
    """A command and up to three of its options with values of the right kind (mostly
    plausible, sometimes hostile), and now and then a stray token (a usage error)."""
    cli_text = hostile_text.filter(lambda s: "\x00" not in s and not s.startswith("--rep"))
    values = {
        "url": st.sampled_from(_urls(good_url)),
        "int": st.one_of(
            st.integers(-5, 3000), st.integers(min_value=-(2**40), max_value=2**40)
        ).map(str),
        "metric": st.sampled_from(["cosine", "l2", "inner_product", "hamming", "COSINE", ""]),
        "text": st.one_of(st.sampled_from(["rust", "public", "pg_catalog"]), cli_text),
    }

    @st.composite
    def args(draw: st.DrawFn) -> list[str]:
        command = draw(st.sampled_from(sorted(CLI)))
        options = CLI[command]
        out = list(command)
        for name in draw(st.lists(st.sampled_from(sorted(options)), max_size=3)):
            kind = options[name]
            out += [name] if kind is None else [name, draw(values[kind])]
        if draw(st.integers(0, 9)) == 0:
            stray = draw(st.one_of(values["url"], cli_text, st.just("--bogus")))
            out.insert(draw(st.integers(0, len(out))), stray)
        return out

    return args()


def test_a_misplaced_url_in_a_usage_error_is_shown_without_its_password() -> None:
    """click's usage errors quote the arguments they could not place, so `docstore health
    postgresql://app:secret@db/x` (a forgotten --url) printed the password."""
    result = CliRunner().invoke(app, ["health", f"postgresql://u:{PASSWORD}@127.0.0.1:1/x"])
    assert result.exit_code == 2 and PASSWORD not in result.output
    assert "u:***@127.0.0.1:1/x" in result.output


def _catalog(env: Env) -> tuple[Any, ...]:
    row = env.run(
        env.store.fetchrow(
            "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n"
            "        ON n.oid = c.relnamespace WHERE n.nspname NOT LIKE 'pg\\_%'"
            "        AND n.nspname <> 'information_schema') AS relations,"
            " (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            "        WHERE n.nspname = 'public') AS functions"
        )
    )
    return (*env.snapshot(), *row)


@settings(
    max_examples=examples(100),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_cli_with_hostile_arguments_exits_cleanly_without_secrets(
    env: Env,
    data: st.DataObject,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.clear()  # one example's records
    monkeypatch.setenv("DATABASE_URL", env.url)  # never the embedded server
    monkeypatch.setenv("DOCSTORE_RETRY_ATTEMPTS", "1")
    monkeypatch.setenv("COLUMNS", "200")
    args = data.draw(_cli_args(env.url), label="args")
    before = _catalog(env)
    result = CliRunner().invoke(app, args)
    output = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{args!r} raised {type(result.exception).__name__}: {result.exception}"
    )
    assert "Traceback" not in output, output[-2000:]
    assert PASSWORD not in output, output[-2000:]
    assert_clean(None, caplog)
    assert result.exit_code in (0, 1, 2), (result.exit_code, output[-2000:])
    if result.exit_code == 2:
        assert "Usage:" in output or "Error" in output, output[-2000:]
    if result.exit_code != 0:
        assert _catalog(env) == before, f"{args!r} failed but changed the database"
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    kind = lines[0].split(":")[1].strip() if lines else ""
    outcome(
        "CLI", {0: "exit 0", 1: f"exit 1 {kind}".strip(), 2: "exit 2 (usage)"}[result.exit_code]
    )


def test_date_and_datetime_filters_are_accepted(env: Env) -> None:
    """Sanity for the filter strategy: typed timestamp values reach the server fine."""
    hits = env.run(
        env.store.search(
            env.query,
            filter={"created_at": {"$between": [date(2000, 1, 1), datetime(2100, 1, 1)]}},
        )
    )
    assert len(hits) == 10


def test_the_store_still_works_after_the_fuzz(env: Env, figures: Figures) -> None:
    """The same pool served every hostile call; it must still be whole and answer."""
    assert env.run(env.store.fetchval("SELECT 1")) == 1
    assert env.run(env.store.documents.count("rust", "base")) == 20
    pool = env.store.pool

    async def in_use() -> int:
        """Connections still checked out once background work (a live-recall re-run of a
        sampled search) had 5 s to end: a leaked one stays out."""
        for _ in range(50):
            if pool.get_size() == pool.get_idle_size():
                break
            await asyncio.sleep(0.1)
        return int(pool.get_size() - pool.get_idle_size())

    assert env.run(in_use()) == 0
    docs = env.run(env.store.documents.count())
    for entry, counts in OUTCOMES.items():
        total = sum(counts.values())
        figures.add(
            f"{entry} ({total} examples): "
            + ", ".join(f"{what} {n}" for what, n in counts.most_common())
        )
    figures.add(f"after the fuzz: {docs} documents stored, base intact, pool whole")
