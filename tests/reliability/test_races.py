"""Concurrent writers: every acknowledged write is there, every UpsertResult tells the truth.

The race that lost rows before (issue 13): 1,000 documents of ``("rust", "tokio")`` stored;
writer A runs ``upsert_many`` of 2,000 (the 1,000 old keys with new content + 1,000 new
keys) while writer B runs ``delete_source("rust", "tokio")``. A's key lookup ran before B's
delete committed, its guarded ``UPDATE`` then matched nothing and the 1,000 rows were counted
"unchanged" — and were gone.

Each round here starts B after a different delay, spread over the whole of A's call (key
lookup, COPY of the new rows, the UPDATE phase, commit), from another store (its own pool)
or another process, and then checks that the outcome is one of the serial outcomes:

- B then A: 2,000 rows, all with A's content; A says ``inserted=2000``; B deleted 1,000;
- A then B: 0 rows; A says ``inserted=1000 updated=1000``; B deleted 2,000.

Anything else (rows missing that A acknowledged, or counts that differ from what the
database holds) fails. The same for two upserts of overlapping keys with different content
(the final table is entirely one writer's, and each result counts against the state the
other left), for ``atomic=True`` calls of several batches, for non-atomic calls (each batch
is linearizable: the rows left are whole batches, a suffix of the call), and for a deleter
that does not take docstore's source lock (raw SQL): the rows it deleted between A's lookup
and A's UPDATE are inserted again and counted as inserted.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

import docstore
from docstore import Document, UpsertResult
from tests.reliability.conftest import Figures, random_docs

pytestmark = pytest.mark.timeout(300)

OLD = 1000
NEW = 1000
ROUNDS = 16


def _docs(content: str, *, start: int, n: int) -> list[Document]:
    docs = random_docs(n, source="tokio", seed=start + len(content), start=start)
    return [d.model_copy(update={"content": f"{content} {d.doc_path}"}) for d in docs]


async def _reset(store: docstore.Store) -> None:
    await store.execute("TRUNCATE documents")
    result = await store.documents.upsert_many(_docs("seed", start=0, n=OLD))
    assert result.inserted == OLD


async def _contents(store: docstore.Store) -> dict[str, str]:
    rows = await store.fetch("SELECT doc_path, content FROM documents")
    return {r["doc_path"]: r["content"] for r in rows}


def _counts(result: UpsertResult) -> tuple[int, int, int]:
    return result.inserted, result.updated, result.unchanged


async def _race(
    a: Callable[[], Awaitable[Any]], b: Callable[[], Awaitable[Any]], delay: float
) -> tuple[Any, Any]:
    """Start ``b`` ``delay`` seconds after ``a`` (``a`` after ``b`` if negative); both results."""

    async def after(seconds: float, work: Callable[[], Awaitable[Any]]) -> Any:
        await asyncio.sleep(seconds)
        return await work()

    first, second = await asyncio.gather(after(max(-delay, 0), a), after(max(delay, 0), b))
    return first, second


async def _duration(store: docstore.Store, docs: list[Document]) -> float:
    """How long A's call takes uncontended, so the delays cover all of it."""
    await _reset(store)
    started = time.perf_counter()
    await store.documents.upsert_many(docs)
    return time.perf_counter() - started


def _delays(duration: float, rounds: int, seed: int) -> list[float]:
    """Delays of B from -0.2 to 1.2 x A's duration: B first, B during every phase of A, B
    after A."""
    rng = random.Random(seed)
    return [duration * (1.4 * (i + rng.random()) / rounds - 0.2) for i in range(rounds)]


@pytest.mark.parametrize("atomic", [False, True], ids=["one-batch", "atomic-4-batches"])
async def test_upsert_against_delete_source_is_linearizable(
    database_url: str, figures: Figures, atomic: bool
) -> None:
    batch_size = 500 if atomic else 2000
    a_docs = _docs("A", start=0, n=OLD + NEW)  # the old keys with new content + new keys
    outcomes = {"B then A": 0, "A then B": 0}
    async with docstore.connect(database_url) as a, docstore.connect(database_url) as b:
        duration = await _duration(a, a_docs)
        for delay in _delays(duration, ROUNDS, seed=13):
            await _reset(a)
            result, deleted = await _race(
                lambda: a.documents.upsert_many(a_docs, batch_size=batch_size, atomic=atomic),
                lambda: b.documents.delete_source("rust", "tokio"),
                delay,
            )
            rows = await _contents(a)
            if rows:
                assert _counts(result) == (OLD + NEW, 0, 0), (delay, result, deleted)
                assert deleted == OLD
                assert rows == {d.doc_path: d.content for d in a_docs}
                outcomes["B then A"] += 1
            else:
                assert _counts(result) == (NEW, OLD, 0), (delay, result, deleted)
                assert deleted == OLD + NEW
                outcomes["A then B"] += 1
    figures.add(f"A {duration * 1000:.0f} ms uncontended; {ROUNDS} rounds: {outcomes}")
    assert all(outcomes.values()), f"the delays did not hit both orders: {outcomes}"


async def test_non_atomic_call_is_a_sequence_of_linearizable_batches(
    database_url: str, figures: Figures
) -> None:
    """Without ``atomic=True`` each batch is its own transaction: a ``delete_source`` may
    land between two batches, and then exactly the batches before it are gone."""
    batch = 500
    a_docs = _docs("A", start=0, n=OLD + NEW)
    batches = [a_docs[i : i + batch] for i in range(0, len(a_docs), batch)]
    between = 0
    async with docstore.connect(database_url) as a, docstore.connect(database_url) as b:
        duration = await _duration(a, a_docs)
        for delay in _delays(duration, ROUNDS, seed=7):
            await _reset(a)
            result, deleted = await _race(
                lambda: a.documents.upsert_many(a_docs, batch_size=batch),
                lambda: b.documents.delete_source("rust", "tokio"),
                delay,
            )
            rows = await _contents(a)
            # B fell before batch k: batches k.. are present, whole, with A's content.
            k = len(batches) - len(rows) // batch
            assert len(rows) % batch == 0, (delay, len(rows))
            assert rows == {d.doc_path: d.content for b_ in batches[k:] for d in b_}
            # Batches before B met the seeded rows (old keys updated, new keys inserted);
            # batches after B found an empty source.
            before = [d for b_ in batches[:k] for d in b_]
            old_before = sum(1 for d in before if int(d.doc_path.split("page")[1][:-5]) < OLD)
            assert _counts(result) == (OLD + NEW - old_before, old_before, 0), (delay, result)
            assert deleted == len(before) + (OLD - old_before)
            between += 0 < k < len(batches)
    figures.add(f"{ROUNDS} rounds, delete_source between two batches in {between}")


async def test_overlapping_upserts_leave_one_writers_table(
    database_url: str, figures: Figures
) -> None:
    """Two upserts of the same 1,500 keys (1,000 old ones, 500 new) with different content:
    the table ends entirely as one of them wrote it, and each result counts against the
    state the other left."""
    keys = OLD + NEW // 2
    a_docs = _docs("A", start=0, n=keys)
    b_docs = _docs("B", start=0, n=keys)
    orders = {"A then B": 0, "B then A": 0}
    async with docstore.connect(database_url) as a, docstore.connect(database_url) as b:
        duration = await _duration(a, a_docs)
        for delay in _delays(duration, ROUNDS, seed=3):
            await _reset(a)
            ra, rb = await _race(
                lambda: a.documents.upsert_many(a_docs),
                lambda: b.documents.upsert_many(b_docs),
                delay,
            )
            rows = await _contents(a)
            first, second = (ra, rb) if rows[b_docs[0].doc_path].startswith("B") else (rb, ra)
            winner = b_docs if first is ra else a_docs
            assert rows == {d.doc_path: d.content for d in winner}, delay
            assert _counts(first) == (keys - OLD, OLD, 0), (delay, ra, rb)
            assert _counts(second) == (0, keys, 0), (delay, ra, rb)
            orders["A then B" if first is ra else "B then A"] += 1
    figures.add(f"{ROUNDS} rounds: {orders}")


@pytest.mark.parametrize("old_content", ["seed", "A"], ids=["identical", "changed"])
async def test_rows_deleted_under_the_update_are_inserted_not_unchanged(
    database_url: str, old_content: str
) -> None:
    """A deleter that bypasses docstore (raw SQL, no source lock) deletes the old rows after
    A's key lookup saw them; its commit lands while A is blocked: on the deleter's row locks
    in the UPDATE (old rows with changed content), or in the COPY on a new key the deleter
    also inserted (old rows identical to what is stored). Either way A's UPDATE then finds
    nothing, and those rows must be inserted again and counted as inserted, not "unchanged".
    """
    a_docs = _docs(old_content, start=0, n=OLD) + _docs("A", start=OLD, n=NEW)
    blocker = a_docs[-1]
    async with docstore.connect(database_url) as a:
        await _reset(a)
        raw = await asyncpg.connect(database_url)
        try:
            tx = raw.transaction()
            await tx.start()
            await raw.execute("DELETE FROM documents WHERE source_name = 'tokio'")
            await raw.execute(
                "INSERT INTO documents (doc_type, source_name, doc_path, content)"
                " VALUES ('rust', 'tokio', $1, 'raw')",
                blocker.doc_path,
            )
            upsert = asyncio.create_task(a.documents.upsert_many(a_docs))
            await _wait_for_lock_wait(raw)  # A is blocked on the deleter's row or key
            await tx.commit()
            result = await asyncio.wait_for(upsert, 60)
        finally:
            await raw.close()
        rows = await _contents(a)
    assert _counts(result) == (OLD + NEW - 1, 1, 0)  # the deleter's new row was updated
    assert rows == {d.doc_path: d.content for d in a_docs}


async def _wait_for_lock_wait(conn: asyncpg.Connection) -> None:
    for _ in range(600):
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND datname = current_database()"
        )
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the upsert never waited for the deleter's row locks")


# -- another process --------------------------------------------------------------------------


def _deleter(url: str, jobs: Any, results: Any) -> None:
    """Child process: for each delay received, sleep it, delete the source, report the count."""

    async def main() -> None:
        async with docstore.connect(url) as store:
            await store.documents.count()  # connected and warm before the first job
            results.put("ready")
            while (delay := jobs.get()) is not None:
                await asyncio.sleep(delay)
                results.put(await store.documents.delete_source("rust", "tokio"))

    asyncio.run(main())


async def test_delete_source_from_another_process(database_url: str, figures: Figures) -> None:
    a_docs = _docs("A", start=0, n=OLD + NEW)
    ctx = multiprocessing.get_context("spawn")
    jobs, results = ctx.Queue(), ctx.Queue()
    child = ctx.Process(target=_deleter, args=(database_url, jobs, results), daemon=True)
    child.start()
    loop = asyncio.get_running_loop()
    orders = {"B then A": 0, "A then B": 0}
    try:
        assert await loop.run_in_executor(None, results.get, True, 60) == "ready"
        async with docstore.connect(database_url) as a:
            duration = await _duration(a, a_docs)
            for delay in _delays(duration, ROUNDS // 2, seed=5):
                await _reset(a)
                jobs.put(max(delay, 0))
                await asyncio.sleep(max(-delay, 0))
                result = await a.documents.upsert_many(a_docs)
                deleted = await loop.run_in_executor(None, results.get, True, 60)
                rows = await _contents(a)
                if rows:
                    assert (_counts(result), deleted, len(rows)) == ((OLD + NEW, 0, 0), OLD, 2000)
                    orders["B then A"] += 1
                else:
                    assert (_counts(result), deleted) == ((NEW, OLD, 0), OLD + NEW), delay
                    orders["A then B"] += 1
    finally:
        jobs.put(None)
        child.join(30)
        if child.is_alive():
            child.kill()
    figures.add(f"{ROUNDS // 2} rounds across processes: {orders}")
