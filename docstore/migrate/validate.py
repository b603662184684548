"""Stage 4, validation: the target against the legacy database as it is now (the caller holds
one ``REPEATABLE READ`` snapshot of it).

Everything but the document rows is checked the same way in both modes: counts (total, per
crate, NULL embeddings), every source's derived config and columns, the documents'
``metadata.crate_version`` (one aggregate per source), every population job, and exact top-k
search parity. The document rows:

* **full** (:func:`validate` without ``streamed``; ``Migrator.validate()``): both databases
  re-read, every row digested (columns, embedding bytes, ``metadata.legacy_id`` /
  ``legacy_crate_id`` / ``crate_name``), checksummed per key range, and differing ranges
  drilled down to the documents and fields;
* **streamed** (at the end of ``Migrator.run()``): a range the copy or the delta pass
  verified while streaming (:mod:`docstore.migrate.verify`) is accepted when its legacy
  ``(id, xmin)`` stamp is still its checkpoint's and the target rows in it are still the
  very row versions that were read back (same ``(id, xmin)`` stamp, nothing extra): what
  the stream proved still holds, byte for byte. Every other range (skipped as unchanged,
  changed since, never verified, rows outside every range) is re-read on both sides exactly
  as in the full mode.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np

from docstore.codecs import keys_param
from docstore.errors import MigrationError
from docstore.migrate import checkpoints, legacy, state
from docstore.migrate.compare import LegacyState
from docstore.migrate.context import (
    LONG_TIMEOUT,
    StageContext,
    now,
    side_by_side,
)
from docstore.migrate.report import (
    TIE_TOLERANCE,
    JobMismatch,
    Mismatch,
    ParityCheck,
    SourceMismatch,
    Validation,
)
from docstore.migrate.verify import VerifiedRange
from docstore.store import Store

_LOWEST, _HIGHEST = -(2**63), 2**63 - 1
PARITY_TOP = 5  # the legacy search_similar_docs default


async def _twice(search: Callable[[], Awaitable[Any]]) -> tuple[Any, float]:
    """The first answer of ``search`` and how long a second, warm, took (ms)."""
    answer = await search()
    started = now()
    await search()
    return answer, (now() - started) * 1000


Checksums = dict[int, tuple[int, str]]


async def validate(
    ctx: StageContext,
    src: asyncpg.Connection,
    tgt: asyncpg.Connection,
    store: Store,
    *,
    streamed: Mapping[int, VerifiedRange] | Awaitable[Mapping[int, VerifiedRange]] | None = None,
    parity_queries: int = 5,
) -> Validation:
    """Compare the target with the legacy database in the caller's legacy snapshot; with
    ``streamed`` (the verifier's results by first key), ranges verified while streaming are
    not read again (see the module docs). ``streamed`` may be an awaitable of them (the
    verifier still reading back the last ranges): the document rows are checked last, so
    everything else is checked while it finishes."""
    started = now()
    present = {
        r["name"] for r in await src.fetch(legacy.TABLES_PRESENT, list(legacy.LEGACY_TABLES))
    }
    missing = [t for t in legacy.REQUIRED_TABLES if t not in present]
    if missing:
        raise MigrationError(
            f"cannot validate: the source has no {', '.join(missing)} table: is it the "
            "legacy rust_docs_vectors database? (check --source / LEGACY_DATABASE_URL)"
        )
    cheap = legacy.sizes_vectors(src)
    # What each side's checks depend on: the legacy state and this run's checkpoint ranges.
    snapshot, cps = await side_by_side(
        state.read_legacy_state(src),
        checkpoints.load(tgt, ctx.run_id) if streamed is not None else _no_checkpoints(),
    )
    bounds = _bounds(cps)
    # Then the two databases side by side: each connection runs its own checks in turn
    # (the legacy ones in the caller's snapshot), the document rows last.
    target, old = await side_by_side(
        _target_side(ctx, snapshot, tgt, bounds),
        _legacy_side(ctx, src, store, parity_queries, bounds),
    )
    version_diffs, target_counts, target_nulls, target_own = target.versions
    per_source = {
        name: (old.counts.get(name, 0), target_counts.get(name, 0))
        for name in set(old.counts) | set(target_counts)
        if old.counts.get(name, 0) != target_counts.get(name, 0)
    }
    if cps:
        assert streamed is not None
        chunks, bad, streamed_chunks = await _streamed_rows(
            ctx, src, tgt, cps, streamed, cheap, (old.stamps, target.stamps)
        )
        reread_chunks = chunks - streamed_chunks
    else:
        chunks, bad = await _reread_rows(ctx, src, tgt, streamed, cheap)
        streamed_chunks = reread_chunks = 0
    return Validation(
        legacy_documents=sum(old.counts.values()),
        target_documents=sum(target_counts.values()),
        per_source_mismatch=per_source,
        target_per_source=target_counts,
        target_own_documents=target_own,
        legacy_null_embeddings=old.nulls,
        target_null_embeddings=target_nulls,
        checksum_chunks=chunks,
        mismatched_chunks=len(bad),
        streamed_chunks=streamed_chunks,
        reread_chunks=reread_chunks,
        mismatches=await drill_down(ctx, src, tgt, bad, cheap),
        missing_sources=sorted(old.names - set(target.sources)),
        source_mismatches=target.source_diffs + version_diffs,
        population_jobs=(old.jobs, target.jobs) if old.jobs is not None else (0, 0),
        job_mismatches=target.job_diffs,
        parity=old.parity,
        seconds=now() - started,
    )


async def _no_checkpoints() -> list[checkpoints.Checkpoint]:
    return []


def _bounds(cps: Sequence[checkpoints.Checkpoint]) -> list[int]:
    """The thresholds whose ``width_bucket`` is the checkpoint range (see
    :func:`_streamed_rows`); none without checkpoints."""
    return [c.first_key + 1 for c in cps] + [cps[-1].last_key + 1] if cps else []


@dataclass
class _TargetSide:
    versions: state.TargetCounts
    source_diffs: list[SourceMismatch]
    sources: dict[str, Any]  # the target's sources by name
    job_diffs: list[JobMismatch]
    jobs: int
    stamps: Checksums  # state.TARGET_RANGE_STAMPS over the checkpoint ranges (none without)


@dataclass
class _LegacySide:
    counts: dict[str, int]  # documents per crate
    nulls: int  # NULL (or unusable) embeddings
    names: set[str]  # every crate
    jobs: int | None  # population jobs (None: no such table)
    parity: list[ParityCheck]
    stamps: Checksums  # legacy.RANGE_STAMPS over the checkpoint ranges (none without)


async def _target_side(
    ctx: StageContext, snapshot: LegacyState, tgt: asyncpg.Connection, bounds: list[int]
) -> _TargetSide:
    """The target's checks, on its one connection in turn."""
    versions = await state.version_diffs(ctx.doc_type, snapshot, tgt)
    source_diffs, sources = await state.source_diffs(ctx.doc_type, snapshot, tgt)
    job_diffs = await state.job_diffs(ctx.doc_type, snapshot, tgt)
    jobs = await tgt.fetchval(
        "SELECT count(*) FROM source_population_jobs WHERE doc_type = $1", ctx.doc_type
    )
    stamps: Checksums = {}
    if bounds:
        stamps = _by_chunk(
            await tgt.fetch(
                state.TARGET_RANGE_STAMPS,
                ctx.doc_type,
                keys_param(bounds),
                timeout=LONG_TIMEOUT,
            )
        )
    return _TargetSide(versions, source_diffs, sources, job_diffs, jobs, stamps)


async def _legacy_side(
    ctx: StageContext, src: asyncpg.Connection, store: Store, queries: int, bounds: list[int]
) -> _LegacySide:
    """The legacy database's checks, on its one connection in turn (in the caller's
    snapshot); the search parity's docstore side on the store's pool."""
    # counts, unusable embeddings and parity's samples: one scan
    per_crate = await src.fetch(
        legacy.per_crate_sql(ctx.embedding_dim, legacy.sizes_vectors(src)), timeout=LONG_TIMEOUT
    )
    counts = {r["source_name"]: r["documents"] for r in per_crate}
    nulls = sum(r["unusable"] for r in per_crate)
    samples = [(r["source_name"], r["sample"]) for r in per_crate if r["sample"] is not None]
    names = set(counts) | {r[0] for r in await src.fetch("SELECT name FROM crates")}
    jobs = None
    if await src.fetchval("SELECT to_regclass('population_jobs') IS NOT NULL"):
        jobs = await src.fetchval("SELECT count(*) FROM population_jobs")
    stamps: Checksums = {}
    if bounds:
        stamps = _by_chunk(
            await src.fetch(legacy.RANGE_STAMPS, keys_param(bounds), timeout=LONG_TIMEOUT)
        )
    checks = await parity(ctx, src, store, queries, samples)
    return _LegacySide(counts, nulls, names, jobs, checks, stamps)


def _by_chunk(rows: Sequence[asyncpg.Record]) -> Checksums:
    return {r["chunk"]: (r["rows"], r["checksum"]) for r in rows}


async def _reread_rows(
    ctx: StageContext,
    src: asyncpg.Connection,
    tgt: asyncpg.Connection,
    streamed: Mapping[int, VerifiedRange] | Awaitable[Mapping[int, VerifiedRange]] | None,
    cheap: bool,
) -> tuple[int, list[tuple[int, int]]]:
    """The document rows re-read on both sides (no checkpoint ranges: the full mode, or a run
    that copied nothing): the ranges checked and the key ranges ``[low, high)`` that differ."""
    if streamed is not None and not isinstance(streamed, Mapping):
        await streamed  # nothing to accept from it, but the verifier is done
    legacy_sums, target_sums = await _checksums(
        src,
        tgt,
        legacy.chunked_checksums_sql(
            legacy.legacy_digest_sql(ctx.embedding_dim, cheap), ctx.chunk_rows
        ),
        legacy.chunked_checksums_sql(legacy.target_digest_sql(), ctx.chunk_rows),
        (),
        (ctx.doc_type,),
    )
    differ = set(legacy_sums) | set(target_sums)
    wrong = sorted(c for c in differ if legacy_sums.get(c) != target_sums.get(c))
    return len(differ), [(c * ctx.chunk_rows, (c + 1) * ctx.chunk_rows) for c in wrong]


async def _checksums(
    src: asyncpg.Connection,
    tgt: asyncpg.Connection,
    legacy_sql: str,
    target_sql: str,
    legacy_args: Sequence[object],
    target_args: Sequence[object],
) -> tuple[Checksums, Checksums]:
    """Both sides' ``(chunk, rows, checksum)`` at once: they are different servers (or at
    least different backends)."""
    legacy_rows, target_rows = await side_by_side(
        src.fetch(legacy_sql, *legacy_args, timeout=LONG_TIMEOUT),
        tgt.fetch(target_sql, *target_args, timeout=LONG_TIMEOUT),
    )
    return _by_chunk(legacy_rows), _by_chunk(target_rows)


async def _streamed_rows(
    ctx: StageContext,
    src: asyncpg.Connection,
    tgt: asyncpg.Connection,
    cps: Sequence[checkpoints.Checkpoint],
    streamed: Mapping[int, VerifiedRange] | Awaitable[Mapping[int, VerifiedRange]],
    cheap: bool,
    stamps: tuple[Checksums, Checksums],
) -> tuple[int, list[tuple[int, int]], int]:
    """Row check of the streamed mode over the checkpoint ranges: returns the ranges checked,
    the key ranges ``[low, high)`` that differ, and how many ranges the stream proved.
    ``stamps``: both sides' range stamps (legacy, target), read before waiting for
    ``streamed`` (the verifier's last ranges)."""
    bounds = _bounds(cps)
    # bucket i (1..n) is checkpoint i; 0 and n + 1 hold rows before / after every range
    spans = {0: (_LOWEST, bounds[0]), len(cps) + 1: (bounds[-1], _HIGHEST)}
    spans.update({i + 1: (bounds[i], bounds[i + 1]) for i in range(len(cps))})
    legacy_now, target_now = stamps
    if not isinstance(streamed, Mapping):
        streamed = await streamed
    unproven = sorted(b for b in (0, len(cps) + 1) if b in legacy_now or b in target_now)
    for i, c in enumerate(cps, start=1):
        v = streamed.get(c.first_key)
        rows, stamp = legacy_now.get(i, (0, ""))
        if not (
            v is not None
            and v.same
            and v.last == c.last_key
            and v.legacy_stamp == c.stamp == (stamp or "")
            and v.rows == v.target_rows == rows
            and target_now.get(i, (0, "")) == (v.target_rows, v.target_stamp)
        ):
            unproven.append(i)
    if not unproven:
        return len(cps), [], len(cps)
    unproven.sort()
    # re-read both sides of the ranges the stream did not prove: per-range checksums of the
    # row digests (server-side aggregates), then the differing ranges row by row
    ranges = (keys_param(bounds), keys_param(unproven))
    legacy_sums, target_sums = await _checksums(
        src,
        tgt,
        _bucketed(legacy.legacy_digest_sql(ctx.embedding_dim, cheap), "$1", "$2"),
        _bucketed(legacy.target_digest_sql(), "$2", "$3"),
        ranges,
        (ctx.doc_type, *ranges),
    )
    bad = [spans[b] for b in unproven if legacy_sums.get(b) != target_sums.get(b)]
    checked = len(cps) + sum(1 for b in (0, len(cps) + 1) if b in unproven)
    return checked, bad, checked - len(unproven)


def _bucketed(digest_query: str, bounds: str, buckets: str) -> str:
    """md5 over the rows of a digest query in each of the checkpoint ranges ``buckets``
    (``width_bucket`` over the thresholds ``bounds``), in key order."""
    bucket = f"width_bucket(key, {bounds}::text[]::bigint[])"
    return (
        f"SELECT {bucket} AS chunk, count(*) AS rows,"
        " md5(string_agg(digest, ',' ORDER BY key)) AS checksum"
        f" FROM ({digest_query}) r WHERE {bucket} = ANY({buckets}::text[]::int[]) GROUP BY 1"
    )


async def drill_down(
    ctx: StageContext,
    src: asyncpg.Connection,
    tgt: asyncpg.Connection,
    ranges: Sequence[tuple[int, int]],
    cheap: bool,
) -> list[Mismatch]:
    """The documents (and the fields of each) that differ in the key ranges ``[low, high)``.

    Every target row counts: a legacy id the target holds twice (an old key next to the
    renamed one) is its matching row plus an ``extra in target``, which repair deletes."""
    mismatches = []
    for low, high in ranges:
        rows_l = {
            r["key"]: r
            for r in await src.fetch(
                f"SELECT * FROM ({legacy.legacy_digest_sql(ctx.embedding_dim, cheap)}) r"
                " WHERE key >= $1::bigint AND key < $2::bigint",  # legacy ids are int4
                low,
                high,
                timeout=LONG_TIMEOUT,
            )
        }
        rows_t: dict[int, list[asyncpg.Record]] = {}
        for r in await tgt.fetch(
            f"SELECT * FROM ({legacy.target_digest_sql()}) r"
            " WHERE key >= $2::bigint AND key < $3::bigint ORDER BY key, source_name, doc_path",
            ctx.doc_type,
            low,
            high,
            timeout=LONG_TIMEOUT,
        ):
            rows_t.setdefault(r["key"], []).append(r)
        for key in sorted(set(rows_l) | set(rows_t)):
            mismatches += _key_mismatches(key, rows_l.get(key), rows_t.get(key, []))
    return mismatches


def _key_mismatches(
    key: int, want: asyncpg.Record | None, have: Sequence[asyncpg.Record]
) -> list[Mismatch]:
    """The mismatches of one legacy id: the legacy row ``want`` (None: gone) against the target
    rows ``have`` with that legacy id. The target row paired with the legacy row is the equal
    one, else the one with its key, else the first; every other target row is extra."""
    if want is None:
        return [_mismatch(key, row, "extra in target") for row in have]
    if not have:
        return [_mismatch(key, want, "missing in target")]
    key_of = ("source_name", "doc_path")
    same = [r for r in have if r["digest"] == want["digest"]]
    named = [r for r in have if all(r[k] == want[k] for k in key_of)]
    pair = (same or named or list(have))[0]
    out = []
    if pair["digest"] != want["digest"]:
        out.append(
            _mismatch(
                key, want, "differs", legacy.digest_differences(want["digest"], pair["digest"])
            )
        )
    return out + [_mismatch(key, row, "extra in target") for row in have if row is not pair]


def _mismatch(
    key: int, row: asyncpg.Record, problem: str, fields: list[str] | None = None
) -> Mismatch:
    return Mismatch(
        legacy_id=key,
        source_name=row["source_name"],
        doc_path=row["doc_path"],
        problem=problem,
        fields=fields or [],
    )


async def parity(
    ctx: StageContext,
    src: asyncpg.Connection,
    store: Store,
    queries: int,
    samples: Sequence[tuple[str, int]],
) -> list[ParityCheck]:
    """Exact top-5 per sampled crate: the legacy search_similar_docs query vs docstore, with
    their distances (ties may come in either order: :class:`ParityCheck`). ``samples``: per
    crate in name order, its lowest id with a usable embedding (``legacy.per_crate_sql``);
    ``queries`` of them, evenly spaced, are searched."""
    if queries < 1:
        return []
    dim = ctx.embedding_dim
    step = max(1, len(samples) // queries)
    checks = []
    for crate, first in samples[::step][:queries]:
        q = await _query_vector(src, first, crate, dim)
        if q is None:
            continue  # every embedding of the crate is all zeros: no search can use one
        # the legacy search_similar_docs query, over the rows that have an embedding
        # (legacy sorted NULL-embedding rows last; docstore never returns them)
        legacy_search = functools.partial(
            src.fetch, legacy.PARITY_SEARCH, q, crate, dim, PARITY_TOP
        )
        docstore_search = functools.partial(
            store.search,
            q,
            doc_type=ctx.doc_type,
            source_name=crate,
            limit=PARITY_TOP,
            exact=True,
            metric="cosine",  # the legacy <=>
        )
        # Each side answers twice and the second is timed: a first search pays one-time costs
        # (docstore's scope size, plans; the first call showed 6-11 ms against 1 ms warm).
        legacy_rows, legacy_ms = await _twice(legacy_search)
        hits, docstore_ms = await _twice(docstore_search)
        # an all-zero stored vector has no cosine distance (NaN, sorted last); docstore never
        # returns it
        legacy_rows = [r for r in legacy_rows if not math.isnan(r["distance"])]
        check = ParityCheck(
            source_name=crate,
            legacy_top=[r["doc_path"] for r in legacy_rows],
            docstore_top=[h.doc_path for h in hits],
            legacy_ms=legacy_ms,
            docstore_ms=docstore_ms,
            legacy_distances=[r["distance"] for r in legacy_rows],
            docstore_distances=[h.distance for h in hits if h.distance is not None],
        )
        if not check.same and len(legacy_rows) == PARITY_TOP:
            check.legacy_ties = await _tied_beyond(src, q, crate, dim, check)
        checks.append(check)
    return checks


async def _query_vector(src: asyncpg.Connection, first: int, crate: str, dim: int) -> Any:
    """The embedding of legacy row ``first`` as a parity query, or — when it is all zeros (a
    query docstore refuses: it has no direction) — the crate's next one that is not; None if
    there is none."""
    q = await src.fetchval("SELECT embedding FROM doc_embeddings WHERE id = $1", first)
    if np.any(np.asarray(q, dtype=np.float32)):
        return q
    return await src.fetchval(
        """SELECT embedding FROM doc_embeddings
            WHERE crate_name = $1 AND id > $2 AND vector_dims(embedding) = $3
              AND vector_norm(embedding) > 0
            ORDER BY id LIMIT 1""",
        crate,
        first,
        dim,
    )


async def _tied_beyond(
    src: asyncpg.Connection, q: object, crate: str, dim: int, check: ParityCheck
) -> list[str]:
    """Which of docstore's paths the legacy query left out at a tie at its last place: legacy
    rows of those paths within the tie tolerance of the last distance."""
    last = check.legacy_distances[-1]
    wanted = [p for p in check.docstore_top if p not in check.legacy_top]
    rows = await src.fetch(
        """SELECT d.doc_path FROM doc_embeddings d
            WHERE d.crate_name = $2 AND vector_dims(d.embedding) = $3
              AND d.doc_path = ANY($4::text[])
              AND abs((d.embedding <=> $1::vector) - $5::float8) <= $6::float8""",
        q,
        crate,
        dim,
        wanted,
        last,
        TIE_TOLERANCE,
    )
    return sorted(r["doc_path"] for r in rows)
