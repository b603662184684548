"""What the scripts in bench/ share: a throwaway server, corpora, ground truth, timing, reports.

Each script imports it as ``import common``: ``python bench/<script>.py`` puts bench/ first
on ``sys.path``, so every script stays runnable on its own.

* servers — :func:`bench_server` starts a throwaway embedded PostgreSQL + pgvector in a
  temporary directory (deleted afterwards), or uses the server of a ``--url``; its
  :class:`BenchServer` creates and drops databases on it (a fresh database gets docstore's
  schema from its first ``docstore.connect()``, as ``docstore init`` would);
* corpora — :func:`clustered` (the shape of ``bench/search.py`` since issue 5, all in
  memory), :class:`ClusteredStream` (the same kind of data generated chunk by chunk, for
  corpora that should not sit in memory), :func:`near` / :func:`perturbed` (queries near
  stored vectors), :func:`filler_text`;
* ground truth — :func:`exact_neighbours` (exact cosine top-k with numpy, in chunks) and
  :func:`recalls` (recall@k that counts ties at the k-th similarity as correct);
* timing — :func:`clock`, :func:`interleave` (calls rotated query by query, so slow drifts of
  a shared machine hit every variant alike), :func:`percentile`, :func:`median_ratio`;
* load — :func:`closed_loop` (workers calling back to back for some seconds: a :class:`Cell`
  of latencies, throughput and the CPU a :class:`CpuMeter` saw a server use),
  :func:`closed_loop_rounds` (several such loads in turn, round after round),
  :func:`steady_load`;
* memory — :func:`peak_rss_mb`, :func:`child_peak_rss_mb` (a measured run in a fresh process);
* reports — :func:`machine_line`, :func:`load_line`, :func:`server_line`, :func:`human_bytes`,
  :func:`print_goals`, :func:`write_json`.

Scripts with parts of their own keep them in a package beside them (``bench/scaling/`` for
``bench/scale.py``, ``bench/searching/`` for ``bench/search.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np

import docstore
from docstore.embedded import EmbeddedServer

DIM = 3072
T = TypeVar("T")
K = TypeVar("K")
Goal = tuple[str, bool, str]
"""(what, met, the figure measured) — one line of a benchmark's verdict."""

# fmt: off
WORDS = [
    "async", "runtime", "task", "spawn", "future", "poll", "waker", "executor", "thread", "pool",
    "channel", "mutex", "lock", "stream", "sink", "buffer", "bytes", "serialize", "deserialize",
    "trait", "impl", "struct", "enum", "generic", "lifetime", "borrow", "reference", "ownership",
    "macro", "derive", "error", "result", "option", "iterator", "closure",
]
# fmt: on


# -- servers and databases ------------------------------------------------------------------------


def with_database(url: str, database: str) -> str:
    """``url`` naming ``database`` instead of its own (user, host, options kept)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class BenchServer:
    """The server a benchmark runs on: a throwaway embedded one, or the one ``--url`` names.

    With ``--url``, :meth:`database` is that URL's own database (the benchmark empties it) and
    :meth:`create_database` creates new ones through it (the role needs CREATEDB).
    """

    def __init__(self, embedded: EmbeddedServer | None = None, url: str | None = None) -> None:
        if (embedded is None) == (url is None):
            raise ValueError("an embedded server or a URL")
        self.embedded = embedded
        self.given_url = url

    @property
    def admin_url(self) -> str:
        if self.embedded is not None:
            return self.embedded.url("postgres")
        assert self.given_url is not None
        return self.given_url

    def url(self, database: str) -> str:
        if self.embedded is not None:
            return self.embedded.url(database)
        assert self.given_url is not None
        return with_database(self.given_url, database)

    async def database(self, name: str = "docstore") -> str:
        """A database to run in: the ``--url`` one as given, else ``name`` (created unless
        it exists) on the embedded server."""
        if self.given_url is not None:
            return self.given_url
        return await self.create_database(name, replace=False)

    async def create_database(
        self, name: str, *, replace: bool = True, template: str | None = None
    ) -> str:
        """Create ``name`` (empty: no extension, no schema; or a file copy of ``template``)
        and return its URL; ``replace`` drops a database of that name first."""
        copy = f" TEMPLATE {_ident(template)} STRATEGY FILE_COPY" if template else ""
        conn = await asyncpg.connect(self.admin_url)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if exists and replace:
                await conn.execute(f"DROP DATABASE {_ident(name)} WITH (FORCE)")
            if not exists or replace:
                await conn.execute(f"CREATE DATABASE {_ident(name)}{copy}")
        finally:
            await conn.close()
        return self.url(name)

    async def drop_database(self, name: str) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def bench_server(
    url: str | None = None, *, prefix: str = "docstore-bench-"
) -> AsyncIterator[BenchServer]:
    """The server of ``url``, or a throwaway embedded PostgreSQL + pgvector whose data is
    deleted afterwards (docstore's own tuning: ``shared_buffers`` 1/8 of RAM, ≤ 1 GB)."""
    if url:
        yield BenchServer(url=url)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        server = EmbeddedServer(Path(tmp), cleanup="delete")
        await asyncio.to_thread(server.start)
        try:
            yield BenchServer(embedded=server)
        finally:
            await asyncio.to_thread(server.close)


# -- the shared folder ---------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """``../shared`` (the migration plan, the real-text corpus): ``DOCSTORE_SHARED_DIR`` if
    set, else the first that exists of ``shared`` beside this checkout, beside the repository
    it was cloned from (a clean clone in a scratch folder, as CI and reviewers run), and
    ``/work/shared`` — as ``scripts/citus-cluster`` finds the vendored sources."""
    if env := os.environ.get("DOCSTORE_SHARED_DIR"):
        return Path(env)
    candidates = [REPO.parent / "shared"]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        origin = (
            subprocess.run(
                ["git", "-C", str(REPO), "config", "--get", "remote.origin.url"],
                capture_output=True,
                text=True,
                check=False,
            )
            .stdout.strip()
            .removeprefix("file://")
        )
        if origin and (REPO / origin).is_dir():
            candidates.append((REPO / origin).resolve().parent / "shared")
    candidates.append(Path("/work/shared"))
    return next((c for c in candidates if c.is_dir()), candidates[0])


# -- corpora --------------------------------------------------------------------------------------


def unit(a: np.ndarray) -> np.ndarray:
    """Rows of ``a`` scaled to unit length."""
    result: np.ndarray = a / np.linalg.norm(a, axis=-1, keepdims=True)
    return result


def clustered(
    rows: int,
    clusters: int,
    sigma: float,
    seed: int,
    *,
    unit_centres: bool = True,
    assign: Callable[[np.random.Generator, np.ndarray], None] | None = None,
) -> np.ndarray:
    """``rows`` unit vectors, each a random one of ``clusters`` centres (random unit vectors
    unless ``unit_centres=False``: standard normal) plus N(0, ``sigma``²) per dimension.
    ``assign(rng, which)`` may change the centre of each row (``which``, in place) before
    the noise is drawn.

    One array in memory (rows × 3072 × 4 bytes, twice while generating); for large corpora
    use :class:`ClusteredStream`. The random draws are those of ``bench/search.py`` since
    issue 5: the same arguments give the same vectors.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, DIM)).astype(np.float32)
    if unit_centres:
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    which = rng.integers(0, clusters, size=rows)
    if assign is not None:
        assign(rng, which)
    noise = rng.normal(scale=sigma, size=(rows, DIM)).astype(np.float32)
    points = centres[which] + noise
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points


def near(
    points: np.ndarray, n: int, sigma: float, seed: int, rows: Sequence[int] | None = None
) -> np.ndarray:
    """``n`` queries, each a random row of ``points`` (one of ``rows``, if given) plus
    N(0, ``sigma``²) per dimension, normalised (``bench/search.py``'s draws since issue 5)."""
    rng = np.random.default_rng(seed)
    if rows is None:
        picked = points[rng.integers(0, len(points), size=n)]
    else:
        pool = np.asarray(rows)
        picked = points[pool[rng.integers(0, len(pool), size=n)]]
    q = picked + rng.normal(scale=sigma, size=picked.shape).astype(np.float32)
    return unit(q)


def perturbed(vectors: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Each row of ``vectors`` plus N(0, ``sigma``²) per dimension, normalised."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(size=vectors.shape, dtype=np.float32)
    return unit(vectors + noise * np.float32(sigma))


class ClusteredStream:
    """A clustered corpus generated chunk by chunk, the same every time it is read.

    Row ``i`` is the unit vector of ``centres[which[i]]`` + N(0, ``sigma``²) per dimension;
    the centres are random unit vectors (``unit_centres=False``: N(0, 1) per dimension, so a
    per-dimension ``sigma`` is relative to each centre's coordinates). Only the centres and
    the cluster of every row are
    kept (a few MB); a chunk's noise comes from its own seed, so :meth:`chunks` can be read
    again (to load, then for the ground truth) and :meth:`take` picks rows without the rest.
    """

    def __init__(
        self,
        rows: int,
        clusters: int,
        sigma: float,
        seed: int,
        chunk: int = 4096,
        *,
        unit_centres: bool = True,
    ):
        self.rows, self.clusters, self.sigma, self.seed, self.chunk = (
            rows,
            clusters,
            sigma,
            seed,
            chunk,
        )
        rng = np.random.default_rng([seed, 0])
        centres = rng.standard_normal(size=(clusters, DIM), dtype=np.float32)
        self.centres = unit(centres) if unit_centres else centres
        self.which = rng.integers(0, clusters, size=rows)

    def __len__(self) -> int:
        return self.rows

    def block(self, k: int) -> np.ndarray:
        """Rows ``k * chunk`` to ``(k + 1) * chunk`` (fewer at the end)."""
        start = k * self.chunk
        stop = min(start + self.chunk, self.rows)
        rng = np.random.default_rng([self.seed, 1, k])
        noise = rng.standard_normal(size=(stop - start, DIM), dtype=np.float32)
        noise *= np.float32(self.sigma)
        noise += self.centres[self.which[start:stop]]
        return unit(noise)

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, vectors) of every chunk, in order."""
        for k in range(math.ceil(self.rows / self.chunk)):
            yield k * self.chunk, self.block(k)

    def vectors(self) -> Iterator[np.ndarray]:
        """Every row, one after another (for a streamed load)."""
        for _, block in self.chunks():
            yield from block

    def take(self, rows: Sequence[int]) -> np.ndarray:
        """The vectors of ``rows`` (generating only their chunks)."""
        wanted = np.asarray(rows)
        out = np.empty((len(wanted), DIM), dtype=np.float32)
        for k in np.unique(wanted // self.chunk):
            block = self.block(int(k))
            here = np.flatnonzero(wanted // self.chunk == k)
            out[here] = block[wanted[here] - int(k) * self.chunk]
        return out

    def array(self) -> np.ndarray:
        return np.concatenate([block for _, block in self.chunks()])


def filler_text(i: int, words: int = 40) -> str:
    """``words`` words of Rust-docs vocabulary, different for each ``i``."""
    return " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(words))


# -- ground truth ---------------------------------------------------------------------------------


def exact_neighbours(
    queries: np.ndarray, chunks: Iterable[tuple[int, np.ndarray]], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The exact top ``k`` rows by cosine (inner product of unit vectors) for every query:
    (row numbers, similarities), both (queries × k), best first.

    ``chunks`` yields (first row, vectors) — one chunk ``[(0, X)]`` or a
    :meth:`ClusteredStream.chunks` — so memory stays at queries × chunk similarities.
    """
    nq = len(queries)
    best_ids = np.zeros((nq, 0), dtype=np.int64)
    best_sims = np.zeros((nq, 0), dtype=np.float32)
    for start, block in chunks:
        sims = queries @ block.T
        ids = np.broadcast_to(np.arange(start, start + len(block)), sims.shape)
        all_sims = np.concatenate([best_sims, sims], axis=1)
        all_ids = np.concatenate([best_ids, ids], axis=1)
        keep = min(k, all_sims.shape[1])
        part = np.argpartition(-all_sims, keep - 1, axis=1)[:, :keep]
        best_sims = np.take_along_axis(all_sims, part, axis=1)
        best_ids = np.take_along_axis(all_ids, part, axis=1)
    order = np.argsort(-best_sims, axis=1, kind="stable")
    return np.take_along_axis(best_ids, order, axis=1), np.take_along_axis(best_sims, order, axis=1)


def truth_sets(
    ids: np.ndarray, sims: np.ndarray, k: int, tolerance: float = 1e-5
) -> list[set[int]]:
    """For each query, the rows that belong in its top ``k``: the first ``k`` and any other
    row of ``ids`` within ``tolerance`` of the ``k``-th similarity (a tie, which float32
    rounding in the server may order either way). ``ids``/``sims`` hold more than ``k``
    columns for the ties to be seen."""
    out = []
    for row_ids, row_sims in zip(ids, sims, strict=True):
        kth = row_sims[min(k, len(row_sims)) - 1]
        out.append({int(i) for i, s in zip(row_ids, row_sims, strict=True) if s >= kth - tolerance})
    return out


def recalls(truth: Sequence[set[int]], found: Sequence[Sequence[int]], k: int) -> list[float]:
    """recall@``k`` of each query: the share of its top ``k`` that was found (a tie at the
    k-th place counts either way; see :func:`truth_sets`)."""
    return [
        min(len(t & set(f[:k])), k) / k if t else 1.0 for t, f in zip(truth, found, strict=True)
    ]


# -- timing ---------------------------------------------------------------------------------------


async def clock(work: Awaitable[T]) -> tuple[T, float]:
    """(what ``work`` returned, seconds it took)."""
    started = time.perf_counter()
    result = await work
    return result, time.perf_counter() - started


async def timed(work: Callable[[], Awaitable[Any]]) -> float:
    """Seconds ``work()`` took."""
    _, seconds = await clock(work())
    return seconds


async def interleave(
    calls: Mapping[str, Callable[[int], Awaitable[T]]], n: int
) -> tuple[dict[str, list[float]], dict[str, list[T]]]:
    """Call every ``calls[name](i)`` for i in 0..n-1, rotating which goes first query by query.

    Returns (seconds, results), each by name in call order: ``seconds[name][i]`` and
    ``results[name][i]`` belong to ``i``, so per-query ratios (:func:`median_ratio`) compare
    calls made a moment apart.
    """
    names = list(calls)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, list[T]] = {name: [] for name in names}
    for i in range(n):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            result, took = await clock(calls[name](i))
            seconds[name].append(took)
            results[name].append(result)
    return seconds, results


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (NaN for none)."""
    return float(np.percentile(values, q)) if len(values) else float("nan")


def median_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median of ``a[i] / b[i]``: pairs measured together cancel a shared machine's drifts."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def spread(values: Sequence[float]) -> str:
    """``median (min–max)`` of ``values``, 3 decimals."""
    return f"{statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f})"


# -- load -----------------------------------------------------------------------------------------

Call = Callable[[int], Awaitable[object]]
"""One request of a load: ``call(i)`` for the ``i``-th request, counted over all workers."""


class CpuMeter:
    """CPU seconds (user + system) used by a PostgreSQL server's processes, read from /proc:
    unaffected by other load on the machine, unlike throughput. Backends that ended between
    two readings count too: the postmaster reaps them, so their CPU moves into its
    children's times (key ``-pid``)."""

    def __init__(self, postmaster_pid: int) -> None:
        self.pid = postmaster_pid

    def seconds(self) -> dict[int, float]:
        import psutil  # type: ignore[import-untyped]  # (docstore[test]) only where measured

        postmaster = psutil.Process(self.pid)
        procs = [postmaster]
        with contextlib.suppress(psutil.Error):
            procs += postmaster.children(recursive=True)
        out: dict[int, float] = {}
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                out[proc.pid] = t.user + t.system
        with contextlib.suppress(psutil.Error):
            t = postmaster.cpu_times()
            out[-self.pid] = t.children_user + t.children_system
        return out

    @staticmethod
    def used(before: dict[int, float], after: dict[int, float]) -> float:
        """CPU seconds between two :meth:`seconds` readings. A process that ended in between
        brought all its CPU into the postmaster's children times: what it had used by
        ``before`` is taken off again."""
        gone = sum(v for pid, v in before.items() if pid >= 0 and pid not in after)
        return sum(v - before.get(pid, 0.0) for pid, v in after.items()) - gone


@dataclass
class Cell:
    """One closed-loop measurement, or several added up: ``count`` calls in ``wall`` seconds."""

    count: int = 0
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    server_cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds of each server (by the name of its :class:`CpuMeter`)."""
    client_cpu: float = 0.0
    rates: list[float] = field(default_factory=list)
    """Calls a second of each measurement added (:meth:`add`)."""

    def add(self, other: Cell) -> None:
        self.count += other.count
        self.wall += other.wall
        self.latencies += other.latencies
        for k, v in other.server_cpu.items():
            self.server_cpu[k] = self.server_cpu.get(k, 0.0) + v
        self.client_cpu += other.client_cpu
        self.rates.append(other.count / other.wall)

    @property
    def rate(self) -> float:
        return self.count / self.wall if self.wall else 0.0

    def pct(self, q: float) -> float:
        """The ``q``-th percentile latency in ms (0 for none)."""
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else 0.0

    def server_ms(self, role: str | None = None) -> float:
        """Server CPU ms a call: of every server, or of the one named ``role``."""
        cpu = sum(self.server_cpu.values()) if role is None else self.server_cpu.get(role, 0.0)
        return cpu / self.count * 1000 if self.count else 0.0

    def client_ms(self) -> float:
        return self.client_cpu / self.count * 1000 if self.count else 0.0


async def closed_loop(
    calls: Sequence[tuple[Call, int]],
    duration: float,
    meters: Mapping[str, CpuMeter] | None = None,
) -> Cell:
    """For every ``(call, concurrency)``, ``concurrency`` workers calling it back to back for
    ``duration`` seconds (each waits for its call before the next); the server CPU each of
    ``meters`` saw and this process's CPU are in the :class:`Cell`."""
    meters = meters or {}
    counter = itertools.count()
    cell = Cell()
    deadline = time.perf_counter() + duration

    async def worker(call: Call) -> None:
        while time.perf_counter() < deadline:
            i = next(counter)
            t = time.perf_counter()
            await call(i)
            cell.latencies.append(time.perf_counter() - t)

    before = {k: m.seconds() for k, m in meters.items()}
    proc0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(call) for call, n in calls for _ in range(n)))
    cell.wall = time.perf_counter() - wall0
    cell.client_cpu = time.process_time() - proc0
    cell.server_cpu = {k: CpuMeter.used(before[k], m.seconds()) for k, m in meters.items()}
    cell.count = len(cell.latencies)
    return cell


async def closed_loop_rounds(
    plans: Mapping[K, Sequence[tuple[Call, int]]],
    rounds: int,
    duration: float,
    meters: Mapping[str, CpuMeter] | None = None,
) -> dict[K, Cell]:
    """Every plan's :func:`closed_loop` in turn, ``rounds`` times over (so a shared machine's
    drifts hit each alike): one :class:`Cell` a plan, its rounds added up."""
    cells = {key: Cell() for key in plans}
    for _ in range(rounds):
        for key, plan in plans.items():
            cells[key].add(await closed_loop(plan, duration, meters))
    return cells


async def steady_load(
    call: Callable[[Any], Awaitable[Any]],
    inputs: Sequence[Any],
    *,
    concurrency: int,
    seconds: float,
) -> list[float]:
    """``concurrency`` tasks calling ``call(input)`` back to back (inputs in turn) for
    ``seconds``; the seconds each call took."""

    def one(i: int) -> Awaitable[Any]:
        return call(inputs[i % len(inputs)])

    return (await closed_loop([(one, concurrency)], seconds)).latencies


# -- reports --------------------------------------------------------------------------------------


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def ram_bytes() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def peak_rss_mb() -> float:
    """This process image's peak resident set size so far, in MB: ``VmHWM``, not ``ru_maxrss``,
    which Linux carries over from the parent across fork + exec (a benchmark parent holding its
    corpora made every child report the parent's 525 MB)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_peak_rss_mb(script: str, *args: str) -> float:
    """Run ``python script *args`` in a fresh process and return the number on the last line
    it prints (its :func:`peak_rss_mb`, so one run's memory does not hide another's)."""
    out = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def human_bytes(n: float) -> str:
    """``1.5 GiB`` from 1 GiB up, else ``12 MiB``."""
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.0f} MiB"


def vector_literal(q: np.ndarray) -> str:
    """``'[0.1,…]'``: ``q`` as a quoted pgvector literal, for EXPLAIN of a prepared statement."""
    return "'[" + ",".join(f"{x:.7g}" for x in q) + "]'"


def table_parser(doc: str, *, rows: int) -> argparse.ArgumentParser:
    """The options of a benchmark that fills a table of its own: ``--rows`` (default ``rows``)
    and ``--url`` (a database it empties; default a throwaway embedded server)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--rows", type=int, default=rows)
    parser.add_argument("--url", help="a database to empty and use (default: embedded)")
    return parser


@contextlib.asynccontextmanager
async def emptied_documents(
    args: argparse.Namespace, script: str, name: str
) -> AsyncIterator[tuple[str, docstore.Store]]:
    """For a benchmark of :func:`table_parser`'s options: its machine line printed, then the
    URL of database ``name`` (``--url``'s own, else on a throwaway embedded server) and a
    store on it whose ``documents`` table was just emptied."""
    print(machine_line(script))
    async with bench_server(args.url) as server:
        url = await server.database(name)
        async with docstore.connect(url) as store:
            await store.execute("TRUNCATE documents")
            yield url, store


def machine_line(script: str) -> str:
    """``bench/x.py  date  cores, RAM, load average``: the first line of every report (other
    people's work on this machine shows in the load average)."""
    return (
        f"{script}  {dt.datetime.now().isoformat(timespec='minutes')}  {os.cpu_count()} cores,"
        f" {ram_bytes() / 2**30:.1f} GiB RAM, {load_line()}, python {sys.version.split()[0]}"
    )


async def server_line(store: docstore.Store) -> str:
    """PostgreSQL and pgvector versions and ``shared_buffers`` of ``store``'s server."""
    row = await store.fetchrow(
        "SELECT version() AS v, current_setting('shared_buffers') AS sb,"
        " (SELECT extversion FROM pg_extension WHERE extname = 'vector') AS pgv"
    )
    assert row is not None
    return f"{row['v'].split(' on ')[0]}, pgvector {row['pgv']}, shared_buffers {row['sb']}"


def print_goals(goals: Sequence[Goal]) -> bool:
    """One ``PASS``/``FAIL`` line a goal; whether all were met."""
    for name, ok, figure in goals:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {figure}")
    return all(ok for _, ok, _ in goals)


def goals_json(goals: Sequence[Goal]) -> list[dict[str, Any]]:
    return [{"goal": name, "met": ok, "figure": figure} for name, ok, figure in goals]


def write_json(path: str | Path, figures: Mapping[str, Any]) -> None:
    """``figures`` as indented JSON (NaN and infinities as null)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float | np.floating):
            return float(value) if math.isfinite(value) else None
        if isinstance(value, np.integer):
            return int(value)
        if isinstance(value, Mapping):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    Path(path).write_text(json.dumps(clean(figures), indent=2) + "\n")
