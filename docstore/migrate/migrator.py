"""``Migrator``: legacy ``rust_docs_vectors`` → docstore, as a sequence of stages.

    report = await Migrator(legacy_url, target_url).run()

:meth:`Migrator.run` opens the connections, takes the advisory lock and runs the stages, each
its own module (``docs/migration.md`` has the column mapping and the guarantees):

1. :mod:`~docstore.migrate.preflight` — read-only findings; blocking problems stop here.
2. A PostgreSQL **advisory lock** on the target: a second migrator fails at once.
3. :mod:`~docstore.migrate.copy` — sources, documents in id-ranged chunks (binary COPY, each
   committed with its :mod:`~docstore.migrate.checkpoints` row), population jobs, all from one
   ``REPEATABLE READ`` snapshot. Each chunk's stream is hashed as it passes; a
   :class:`~docstore.migrate.verify.StreamVerifier` reads the committed chunk back from the
   target on another connection and compares, while later chunks copy.
4. :mod:`~docstore.migrate.delta` — what the legacy application changed meanwhile, re-copied
   (and verified the same way) in fresh snapshots.
5. :mod:`~docstore.migrate.finish` — ``ANALYZE``, optionally the HNSW and full-text indexes.
6. :mod:`~docstore.migrate.validate` — in one legacy snapshot: counts, sources, jobs, derived
   metadata, search parity, and the document rows: ranges verified while streaming whose
   stamps held are accepted, every other range is read again on both sides. What differs is
   copied again and validated once more, fully.

:meth:`validate` alone re-reads both databases in full; :meth:`rollback` runs
:mod:`~docstore.migrate.rollback`. :meth:`run` and :meth:`rollback` refuse a read-only target
with :class:`~docstore.ReadOnlyError` before writing anything anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Mapping
from pathlib import Path
from typing import Any

import asyncpg

from docstore.config import redact_url, url_secrets
from docstore.errors import MigrationError, ReadOnlyError
from docstore.failures import describe
from docstore.migrate import checkpoints, claims
from docstore.migrate import copy as copy_stage
from docstore.migrate import delta as delta_stage
from docstore.migrate import preflight as preflight_stage
from docstore.migrate import rollback as rollback_stage
from docstore.migrate import validate as validate_stage
from docstore.migrate.context import (
    DEFAULT_CHUNK_ROWS,
    DEFAULT_COPY_STREAMS,
    DOC_TYPE_RULE,
    LONG_TIMEOUT,
    Progress,
    StageContext,
    cancellation_wins,
    doc_type_ok,
    ensure_writable,
    now,
    open_legacy,
    run_id,
)
from docstore.migrate.digest import target_folds
from docstore.migrate.finish import analyze, build_indexes
from docstore.migrate.lock import (
    MIGRATION_LOCK_KEY,
    Orphans,
    migration_lock,
    refuse_while_running,
)
from docstore.migrate.pipe import transaction
from docstore.migrate.report import MigrationReport, Preflight, RollbackReport, Validation
from docstore.migrate.resume import DEFAULT_RECONNECT_ATTEMPTS, resumed_run
from docstore.migrate.target_access import TargetUse
from docstore.migrate.verify import StreamVerifier, VerifiedRange
from docstore.store import Store, connect
from docstore.transient import is_out_of_range_date
from docstore.urls import check_url

logger = logging.getLogger("docstore")

__all__ = ["DEFAULT_CHUNK_ROWS", "LONG_TIMEOUT", "MIGRATION_LOCK_KEY", "Migrator", "Progress"]


class Migrator:
    """Copies a legacy ``rust_docs_vectors`` database into docstore; see the module docs.

    ``source`` and ``target`` are URLs or open :class:`~docstore.Store` objects (a Store
    given as source is only read through its pool's connections). ``doc_type`` is what the
    legacy documents become. ``restart`` forgets earlier checkpoints (rows are then upserted,
    never doubled). ``build_index`` builds the HNSW and full-text indexes after the copy.
    ``validate`` runs validation at the end of :meth:`run` (streaming with the copy).
    ``copy_streams`` chunks are copied at once (each on its own pair of connections, all in
    one legacy snapshot; 1 copies them one after the other).
    ``reconnect_attempts``: how often :meth:`run` resumes after a lost connection
    (:mod:`~docstore.migrate.resume`). ``report_path`` saves the report as JSON.
    ``progress(stage, done, total, nbytes)`` is called after every committed chunk (stage
    ``"documents"``) and every chunk verified while streaming (``"verified"``).
    """

    def __init__(
        self,
        source: str | Store,
        target: str | Store,
        *,
        doc_type: str = "rust",
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        copy_streams: int = DEFAULT_COPY_STREAMS,
        restart: bool = False,
        build_index: bool = False,
        validate: bool = True,
        parity_queries: int = 5,
        reconnect_attempts: int = DEFAULT_RECONNECT_ATTEMPTS,
        report_path: str | Path | None = None,
        progress: Progress | None = None,
    ) -> None:
        _check_arguments(doc_type, chunk_rows, copy_streams, reconnect_attempts)
        if isinstance(source, str):  # refused as connect() refuses its url= (the CLI did)
            source = check_url(source, "Migrator(source=...)")
        self._source_arg = source
        self._target_arg = target
        self.doc_type = doc_type
        self.chunk_rows = chunk_rows
        self.copy_streams = copy_streams
        self.restart = restart
        self.build_index = build_index
        self.run_validation = validate
        self.parity_queries = parity_queries
        self.reconnect_attempts = reconnect_attempts
        self.report_path = Path(report_path) if report_path else None
        self._progress = progress
        self._target: Store | None = None
        self._owns_target = False
        self._target_schema = False
        self._forgot = False  # run(): restart's checkpoints forgotten (once a call)
        self._orphans = Orphans()  # run(): target sessions its attempts lost (new each call)
        self._secrets = url_secrets(*(a for a in (source, target) if isinstance(a, str)))

    def __repr__(self) -> str:
        return f"<Migrator {_show(self._source_arg)} -> {_show(self._target_arg)} {self.doc_type}>"

    # -- connections, lock ------------------------------------------------------------------
    async def _target_store(self, *, schema: bool | None = None) -> Store:
        """The target store; from a URL opened without applying the schema for what only
        reads (``schema=False``), reopened with it when a write needs it (``True``)."""
        url = self._target_arg
        if isinstance(url, Store):
            self._target = url
            return url
        if self._target is not None and schema and not self._target_schema:
            await self._target.close()  # opened without the schema: reopen with it
            self._target = None
        if self._target is None:
            want = schema is not False
            self._target = await connect(url, migrate=None if want else False)
            self._owns_target = True
            self._target_schema = want
        return self._target

    def _source(self, *, writable: bool = False) -> contextlib.AbstractAsyncContextManager[Any]:
        """A connection to the legacy database; read-only unless ``writable`` (rollback)."""
        return open_legacy(self._source_arg, self._secrets, writable=writable, target=self._target)

    async def _context(self, src: asyncpg.Connection, store: Store) -> StageContext:
        return StageContext(
            doc_type=self.doc_type,
            run_id=await run_id(src, self.doc_type),
            embedding_dim=store.embedding_dim,
            chunk_rows=self.chunk_rows,
            copy_streams=self.copy_streams,
            progress=self._progress,
            fold_embeddings=self.run_validation and await target_folds(store),
            secrets=self._secrets,
        )

    async def close(self) -> None:
        """Close the target store if this Migrator opened it."""
        if self._owns_target and self._target is not None:
            await self._target.close()
            self._target = None

    async def __aenter__(self) -> Migrator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- stages ------------------------------------------------------------------------------
    async def preflight(self, *, thorough: bool = False) -> Preflight:
        """Read-only checks of source and target; ``.blocking`` lists what stops a run.
        ``thorough`` (as a dry run does) also reads every embedding for values beyond
        half precision's ±65,504, which docstore cannot store."""
        store = await self._target_store(schema=False)
        async with self._source() as src:
            return await self._preflight(src, store, thorough)

    async def _preflight(self, src: asyncpg.Connection, store: Store, thorough: bool) -> Preflight:
        use = TargetUse(self.build_index, _keeps_schema(self._target_arg, store))
        return await preflight_stage.preflight(
            src, store, self.doc_type, thorough=thorough, use=use
        )

    @cancellation_wins
    async def run(self, *, dry_run: bool = False) -> MigrationReport:
        """Preflight, copy, delta pass, ANALYZE, (index), validate; see the module docs.

        ``dry_run`` stops after a thorough preflight and writes nothing. Raises
        :class:`~docstore.ReadOnlyError` before reading or writing anything when the target is
        read-only (``READ_ONLY``, ``connect(read_only=True)``, a standby or a database with
        ``default_transaction_read_only``), :class:`MigrationError` on a blocking preflight
        problem or when another migrator holds the lock, and when a statement fails: what
        committed stays, and a re-run resumes after it (a lost connection does so within the
        call, ``reconnect_attempts`` times).

        With validation on, ``report.ok`` means the target equals the legacy database as of
        the validation's snapshot, taken at the end of the run: documents, sources and their
        configs, derived document metadata and population jobs. ``report.verified_chunks``
        lists the id ranges whose stored rows were verified while the copy streamed.
        """
        started, self._forgot, self._orphans = now(), False, Orphans()
        try:
            attempt = functools.partial(self._run, dry_run, started)  # attempt(reports)
            report = await resumed_run(attempt, self.reconnect_attempts, self._secrets)
        except _FAILURES as exc:
            resumes = "; the chunks committed before stay, and a re-run resumes after them"
            raise _failure("migration failed", exc, self._secrets, resumes) from None
        if self.report_path is not None:
            self.report_path.write_text(report.model_dump_json(indent=2))
        return report

    async def _run(
        self, dry_run: bool, started: float, reports: list[MigrationReport]
    ) -> MigrationReport:
        """One attempt of :meth:`run`: its report is added to ``reports`` as it starts."""
        t0 = now()
        store = await self._target_store(schema=not dry_run)
        if not dry_run:
            await ensure_writable(store, "migrate")
        validation: Validation | None = None
        async with self._source() as src:
            ctx = await self._context(src, store)
            pre = await self._preflight(src, store, dry_run)
            report = MigrationReport(
                run_id=ctx.run_id, doc_type=self.doc_type, dry_run=dry_run, preflight=pre
            )
            report.warnings.extend(pre.warnings)
            report.timings["preflight"] = now() - t0
            reports.append(report)
            if dry_run:
                return report
            if pre.blocking:
                raise MigrationError("cannot migrate: " + "; ".join(pre.blocking))
            async with store.acquire() as tgt, migration_lock(tgt, self._orphans):
                # restart: once a call (an attempt after a lost connection keeps what it copied)
                await _claim_doc_type(tgt, ctx, src, restart=self.restart and not self._forgot)
                self._forgot = self._forgot or self.restart
                verifying = _verifier(ctx, store, report) if self.run_validation else None
                async with verifying or contextlib.nullcontext():
                    streams = functools.partial(_stream, self)
                    snapshot = await copy_stage.copy(ctx, src, tgt, report, verifying, streams)
                    t0 = now()
                    await delta_stage.delta(ctx, src, tgt, snapshot, report, verifying)
                    report.timings["delta"] = now() - t0
                    await copy_stage.warn_wrong_dimension(ctx, src, report)
                    # Validation starts while the last ranges are still read back (it checks
                    # everything else first and waits for them at its end); the report's counts
                    # and ANALYZE (on a pooled connection) overlap it: validation reads through
                    # the legacy-id index and the stamps whatever the statistics say.
                    readback = None
                    if verifying is not None:
                        readback = asyncio.create_task(_drained(verifying, report))
                    analyzing = asyncio.create_task(analyze(store, ctx, report, readback is None))
                    try:
                        if self.build_index:
                            await build_indexes(store, report, readback, analyzing)
                        if readback is not None:
                            validation = await self._validate(src, ctx, readback, tgt)
                            report.verified_chunks = sorted(
                                (v.first, v.last) for v in (await readback).values() if v.same
                            )
                    finally:
                        if readback is not None:  # done unless something failed first
                            readback.cancel()
                            await asyncio.gather(readback, return_exceptions=True)
                        await analyzing
        if validation is not None:
            report.validation = validation
            report.timings["validate"] = validation.seconds
            if _repairable(validation):
                await _repair(self, report, validation)  # validates again
            report.per_source = dict((report.validation or validation).target_per_source)
        report.timings["total"] = now() - started
        return report

    @cancellation_wins
    async def validate(self) -> Validation:
        """Compare the target with the legacy database as it is now (one legacy snapshot),
        re-reading both: counts; every document row through chunked checksums, drilled down to
        the differing documents and fields; sources' derived config, columns and documents'
        ``metadata.crate_version``; population jobs; exact top-k search parity
        (:mod:`~docstore.migrate.validate`). ``.ok`` is False on any mismatch
        (:meth:`Validation.problems` names each). Reads only (a read-only store will do);
        raises :class:`MigrationError` while a migration or rollback runs (half a copy)."""
        store = await self._target_store(schema=False)
        await refuse_while_running(store, "validate")
        async with self._source() as src:
            return await self._validate(src, await self._context(src, store))

    async def _validate(
        self,
        src: asyncpg.Connection,
        ctx: StageContext,
        streamed: Awaitable[Mapping[int, VerifiedRange]] | None = None,
        target: asyncpg.Connection | None = None,
    ) -> Validation:
        """:meth:`validate` on the legacy connection ``src`` (outside any transaction) and
        ``target`` (one of the pool's otherwise); ``streamed``: what the copy verified while
        streaming (see ``validate_stage``)."""
        started = now()
        store = await self._target_store()
        async with contextlib.AsyncExitStack() as stack:
            tgt = target if target is not None else await stack.enter_async_context(store.acquire())
            try:
                # one legacy snapshot: every check compares the target with the same moment
                async with transaction(src, isolation="repeatable_read", readonly=True):
                    result = await validate_stage.validate(
                        ctx, src, tgt, store, streamed=streamed, parity_queries=self.parity_queries
                    )
            except _FAILURES as exc:
                raise _failure("validation failed", exc, self._secrets) from exc
        result.seconds = now() - started
        return result

    @cancellation_wins
    async def rollback(self, *, force: bool = False, dry_run: bool = False) -> RollbackReport:
        """Copy the target's ``doc_type`` documents, sources and population jobs back into the
        legacy-shaped ``source`` database (created if empty), so switching ``DATABASE_URL``
        back (the plan's Phase 7) loses nothing written after the cutover: one legacy
        transaction that makes the legacy tables mirror the target, then the target records
        the legacy ids it was given, so :meth:`validate` passes right after
        (:mod:`~docstore.migrate.rollback`; ``docs/migration.md``, Rollback).

        Under the migration lock (:class:`MigrationError` while a migrator holds it). Refused,
        changing nothing, when it would delete legacy documents the target never received
        (outside every id range its migration from this legacy database copied: a migration
        that never finished, rows written to the legacy database since, a mistyped
        ``doc_type`` or the wrong target), unless ``force=True``. ``dry_run=True`` does the
        work in the legacy transaction and rolls it back: the report says what a rollback
        would write and delete. Raises :class:`~docstore.ReadOnlyError` before writing
        anything when the target (or a :class:`~docstore.Store` given as source) is
        read-only: a rollback writes both databases.
        """
        started = now()
        store = await self._target_store(schema=False)  # a rollback reads an existing one
        if not dry_run:  # a dry run writes only inside the legacy transaction it rolls back
            await ensure_writable(store, "roll back")
        if isinstance(self._source_arg, Store) and self._source_arg.read_only:
            raise ReadOnlyError(
                "the legacy store given as source is read-only: a rollback writes it; "
                "nothing was written"
            )
        report = RollbackReport(dry_run=dry_run)
        async with self._source(writable=True) as leg, store.acquire() as tgt:
            await rollback_stage.run(
                self.doc_type, store.embedding_dim, leg, tgt, report, self._secrets, force=force
            )
        report.seconds = now() - started
        return report


def _check_arguments(
    doc_type: str, chunk_rows: int, copy_streams: int, reconnect_attempts: int
) -> None:
    """:class:`MigrationError` for a Migrator argument out of its range."""
    if chunk_rows < 1:
        raise MigrationError("chunk_rows must be at least 1")
    if not 1 <= copy_streams <= 16:
        raise MigrationError("copy_streams must be from 1 to 16")
    if not doc_type_ok(doc_type):
        raise MigrationError(f"doc_type must be {DOC_TYPE_RULE}")
    if reconnect_attempts < 0:
        raise MigrationError("reconnect_attempts must be 0 or more")


@contextlib.asynccontextmanager
async def _stream(m: Migrator, snapshot: str) -> AsyncIterator[tuple[Any, Any]]:
    """Another copy stream of ``m``'s run: legacy and target connections, the legacy one in
    ``snapshot``."""
    store = await m._target_store()
    async with (
        m._source() as src,
        store.acquire(timeout=5) as tgt,
        transaction(src, isolation="repeatable_read", readonly=True),
    ):
        await m._orphans.mark(tgt)
        await src.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        yield src, tgt


async def _repair(m: Migrator, report: MigrationReport, validation: Validation) -> None:
    """What the stamps and the delta pass can't see (rows edited in the target, legacy
    changes after the delta pass): copied again under the lock, then validated again."""
    t0 = now()
    store = await m._target_store()  # copied again under the lock (copy.repair)
    async with (
        m._source() as src,
        store.acquire() as tgt,
        migration_lock(tgt, m._orphans),
    ):
        ctx = await m._context(src, store)
        report.repaired_documents = await copy_stage.repair(ctx, src, tgt, validation)
        report.validation = await m._validate(src, ctx, target=tgt)  # still ours
    report.timings["repair"] = now() - t0
    report.warnings.append(_repaired(validation.problems()))


def _keeps_schema(target: str | Store, store: Store) -> str | None:
    """Why a run into the URL ``target`` (opened as ``store``) neither creates nor upgrades
    docstore's schema there, or None: it does, as ``connect()`` does by default. A Store is
    the caller's: the CLI's dry run connects without the schema, its run with it."""
    if isinstance(target, str) and not store.settings.auto_migrate:
        return "DOCSTORE_AUTO_MIGRATE is false"
    return None


def _show(x: str | Store) -> str:
    return redact_url(x) if isinstance(x, str) else repr(x)


async def _claim_doc_type(
    tgt: asyncpg.Connection, ctx: StageContext, src: asyncpg.Connection, *, restart: bool
) -> None:
    """Under the migration lock, before the copy: preflight's check that the doc_type holds no
    other legacy database's documents, again (another migrator may have run since), then the
    other runs' checkpoints forgotten (their documents are gone) and, with ``restart``, this
    run's too."""
    if problem := await claims.other_legacy_database(tgt, ctx.doc_type, ctx.run_id, src):
        raise MigrationError("cannot migrate: " + problem)
    await checkpoints.forget_others(tgt, ctx.doc_type, ctx.run_id)
    if restart:
        await checkpoints.forget(tgt, ctx.run_id)


async def _drained(verifier: StreamVerifier, report: MigrationReport) -> dict[int, VerifiedRange]:
    """The verifier's results once every submitted range is read back (timed into the
    report: ``verify_wait`` is how long the read-back went on after the delta pass, while
    validation checked everything else)."""
    t0 = now()
    await verifier.drain()
    report.timings["verify_wait"] = now() - t0
    report.timings["verify_streaming"] = verifier.seconds
    await verifier.stop()  # nothing more comes: the readers' connections go back to the pool
    return dict(verifier.verified)


def _verifier(ctx: StageContext, store: Store, report: MigrationReport) -> StreamVerifier:
    """The run's streaming verifier; the report says how it compares embeddings."""
    report.embeddings_checked_by = "crc32c" if ctx.fold_embeddings else "bytes"
    return StreamVerifier(ctx, store)


# What a run or a validation reports as a MigrationError: the databases' and the network's
# failures, and asyncpg reading a date Python cannot hold (a legacy value changed since
# preflight looked) — an OverflowError or ValueError of any other kind is a bug, raised as is.
_FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, OverflowError, ValueError)


def _failure(what: str, exc: Exception, secrets: tuple[str, ...], more: str = "") -> Exception:
    """The MigrationError to raise for ``exc`` (``exc`` itself when it is a bug)."""
    if isinstance(exc, OverflowError | ValueError) and not is_out_of_range_date(exc):
        return exc
    return MigrationError(f"{what}: {describe(exc, secrets)}{more}")


def _repaired(found: list[str]) -> str:
    """The report's warning after a repair of what validation ``found``."""
    return (
        f"validation found {len(found)} differences from the legacy database after the copy "
        "(edited in the target, or changed in the legacy database after the delta pass), "
        f"copied again: {'; '.join(found[:10])}"
        + (f"; and {len(found) - 10} more" if len(found) > 10 else "")
    )


def _repairable(v: Validation) -> bool:
    """Whether a re-copy can fix what ``v`` found (search parity alone can't be)."""
    return bool(
        v.mismatched_chunks
        or v.per_source_mismatch
        or v.legacy_documents != v.target_documents
        or v.missing_sources
        or v.source_mismatches
        or v.job_mismatches
    )
