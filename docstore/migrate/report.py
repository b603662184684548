"""What the Migrator reports: preflight findings, validation results, the run's report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult


class TableInfo(BaseModel):
    name: str
    rows: int
    bytes: int


class Preflight(BaseModel):
    """Read-only findings on the source and the target before anything is written."""

    tables: list[TableInfo]
    documents: int = 0
    null_embeddings: int = 0
    embedding_dims: dict[int, int] = Field(default_factory=dict)
    wrong_dimension: int = Field(
        default=0, description="embeddings whose dimension the target can't hold"
    )
    orphan_documents: int = Field(
        default=0, description="documents whose crate_name has no crates row"
    )
    orphan_crates: list[str] = Field(default_factory=list)
    crates_without_documents: list[str] = Field(default_factory=list)
    max_id: int = 0
    target_pgvector: str | None = None
    target_schema_version: int | None = None
    target_embedding_dim: int = 3072
    target_existing_documents: int = 0
    target_existing_sources: int = 0
    checkpoints: int = Field(default=0, description="chunks a previous run already committed")
    blocking: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.blocking

    def table(self) -> dict[str, int]:
        return {t.name: t.rows for t in self.tables}

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.table import Table
        from rich.text import Text

        table = Table(title="migration preflight", show_header=False, title_justify="left")
        for t in self.tables:
            table.add_row(f"legacy {t.name}", f"{t.rows:,} rows, {t.bytes / 2**20:.1f} MiB")
        dims = ", ".join(f"{d}: {n:,}" for d, n in sorted(self.embedding_dims.items())) or "none"
        table.add_row("embedding dimensions", dims)
        table.add_row("NULL embeddings", f"{self.null_embeddings:,}")
        table.add_row("documents without a crates row", f"{self.orphan_documents:,}")
        table.add_row("crates without documents", f"{len(self.crates_without_documents):,}")
        schema = (
            f"schema v{self.target_schema_version}"
            if self.target_schema_version
            else "no docstore schema yet"
        )
        table.add_row(
            "target",
            f"pgvector {self.target_pgvector or 'not installed'}, {schema}, "
            f"{self.target_existing_documents:,} documents of this doc_type, "
            f"{self.checkpoints} checkpoints",
        )
        for w in self.warnings:
            table.add_row("[yellow]warning[/]", Text(w))
        for b in self.blocking:
            table.add_row("[bold red]blocking[/]", Text(b))
        yield table


class Mismatch(BaseModel):
    """One document that differs between the legacy database and the target."""

    legacy_id: int
    source_name: str
    doc_path: str
    problem: str  # "missing in target" | "extra in target" | "differs"
    fields: list[str] = Field(
        default_factory=list,
        description="what differs, for 'differs': content, embedding, metadata.legacy_crate_id,"
        " … (names only, never values)",
    )


class SourceMismatch(BaseModel):
    """A source (legacy crate) whose target row, or whose documents' derived metadata, is not
    what the legacy ``crates``/``crate_configs``/``doc_embeddings`` rows give now."""

    source_name: str
    problem: str  # "missing in target" | "extra in target" | "differs"
    fields: list[str] = Field(
        default_factory=list,
        description="config.version, config.total_docs, last_populated, enabled, "
        "metadata.crate_version, …",
    )
    details: list[str] = Field(
        default_factory=list, description="legacy vs target value of each scalar field"
    )


class JobMismatch(BaseModel):
    """A population job that differs between legacy ``population_jobs`` and the target's
    ``source_population_jobs`` (``legacy_id`` None: a target job with no legacy row)."""

    legacy_id: int | None
    source_name: str
    problem: str  # "missing in target" | "extra in target" | "differs"
    fields: list[str] = Field(default_factory=list)
    details: list[str] = Field(default_factory=list)


# Distances this close are a tie (float32 rounding may order them either way); as in the
# benchmarks' recall, which counts ties at the k-th similarity within 1e-5 either way.
TIE_TOLERANCE = 1e-5


class ParityCheck(BaseModel):
    """One sampled search, legacy vs docstore: the top paths and their distances, best first.

    Rows at the same distance may come in any order (the legacy query breaks ties by legacy
    id, docstore by its own id), so ``same`` compares ``(distance, doc_path)`` with the paths
    of tied distances as sets; a tie at the last place may pick another of the tied rows,
    which the legacy side then lists in ``legacy_ties``."""

    source_name: str
    legacy_top: list[str]
    docstore_top: list[str]
    legacy_ms: float
    docstore_ms: float
    legacy_distances: list[float] = Field(default_factory=list)
    docstore_distances: list[float] = Field(default_factory=list)
    legacy_ties: list[str] = Field(
        default_factory=list,
        description="legacy paths beyond the top k at the k-th distance that docstore chose",
    )

    @property
    def same(self) -> bool:
        legacy, ours = self.legacy_top, self.docstore_top
        if len(self.legacy_distances) != len(legacy) or len(self.docstore_distances) != len(ours):
            return legacy == ours  # no distances (a report of an older version)
        if len(legacy) != len(ours) or any(
            abs(a - b) > TIE_TOLERANCE
            for a, b in zip(self.legacy_distances, self.docstore_distances, strict=True)
        ):
            return False
        for start, end in tie_groups(self.legacy_distances):
            allowed = set(legacy[start:end]) | (
                set(self.legacy_ties) if end == len(legacy) else set()
            )
            if not set(ours[start:end]) <= allowed:
                return False
        return True


def tie_groups(distances: list[float]) -> list[tuple[int, int]]:
    """The ``[start, end)`` runs of ascending ``distances`` within :data:`TIE_TOLERANCE` of
    their run's first."""
    groups: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(distances) + 1):
        if i == len(distances) or distances[i] - distances[start] > TIE_TOLERANCE:
            groups.append((start, i))
            start = i
    return groups


class Validation(BaseModel):
    """Legacy vs target, row by row (through chunked checksums) and search by search."""

    legacy_documents: int
    target_documents: int
    per_source_mismatch: dict[str, tuple[int, int]] = Field(default_factory=dict)
    target_per_source: dict[str, int] = Field(
        default_factory=dict, description="the target's migrated documents per source"
    )
    target_own_documents: int = Field(
        default=0,
        description="documents of the doc_type written in docstore, not migrated (the app's "
        "after the cutover; before it, a stray write): counted, not compared",
    )
    legacy_null_embeddings: int
    target_null_embeddings: int
    checksum_chunks: int
    mismatched_chunks: int
    streamed_chunks: int = Field(
        default=0,
        description="id ranges whose stored rows were verified while the copy streamed (and "
        "unchanged on both sides since), not read again",
    )
    reread_chunks: int = Field(
        default=0,
        description="id ranges of a streamed validation read again on both sides (skipped as "
        "unchanged, changed since, or never verified while streaming)",
    )
    mismatches: list[Mismatch] = Field(default_factory=list)
    missing_sources: list[str] = Field(default_factory=list)
    source_mismatches: list[SourceMismatch] = Field(
        default_factory=list,
        description="sources whose config/columns or documents' derived metadata are stale",
    )
    population_jobs: tuple[int, int] = (0, 0)
    job_mismatches: list[JobMismatch] = Field(default_factory=list)
    parity: list[ParityCheck] = Field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.legacy_documents == self.target_documents
            and not self.per_source_mismatch
            and self.legacy_null_embeddings == self.target_null_embeddings
            and self.mismatched_chunks == 0
            and not self.mismatches
            and not self.missing_sources
            and not self.source_mismatches
            and self.population_jobs[0] == self.population_jobs[1]
            and not self.job_mismatches
            and all(p.same for p in self.parity)
        )

    def problems(self) -> list[str]:
        """One line per difference, naming what differs (never a vector value): ``[]``
        exactly when :attr:`ok`."""
        lines = self._count_problems()
        lines += [
            f"source {m.source_name}: {m.problem}"
            + (f" ({'; '.join(m.details or m.fields)})" if m.details or m.fields else "")
            for m in self.source_mismatches
        ]
        lines += [
            f"population job {j.legacy_id if j.legacy_id is not None else '(no legacy id)'}"
            f" of {j.source_name or '-'}: {j.problem}"
            + (f" ({'; '.join(j.details or j.fields)})" if j.details or j.fields else "")
            for j in self.job_mismatches
        ]
        lines += [
            f"document {m.source_name}/{m.doc_path} (legacy id {m.legacy_id}): {m.problem}"
            + (f" ({', '.join(m.fields)})" if m.fields else "")
            for m in self.mismatches
        ]
        if self.mismatched_chunks and not self.mismatches:
            lines.append(f"{self.mismatched_chunks} id ranges differ")
        lines += [
            f"search parity in source {p.source_name}: legacy top {p.legacy_top},"
            f" docstore top {p.docstore_top}"
            for p in self.parity
            if not p.same
        ]
        return lines

    def _count_problems(self) -> list[str]:
        counts = [
            ("documents", (self.legacy_documents, self.target_documents)),
            (
                "documents without an embedding",
                (self.legacy_null_embeddings, self.target_null_embeddings),
            ),
            ("population jobs", self.population_jobs),
            *(
                (f"documents of source {name}", pair)
                for name, pair in sorted(self.per_source_mismatch.items())
            ),
        ]
        lines = [f"{what}: legacy {a:,}, target {b:,}" for what, (a, b) in counts if a != b]
        return lines + [f"source {name}: missing in the target" for name in self.missing_sources]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.table import Table
        from rich.text import Text

        status = "[green]OK[/]" if self.ok else "[bold red]FAILED[/]"
        table = Table(title=f"validation: {status}", title_justify="left")
        for column in ("check", "legacy", "target", "result"):
            table.add_column(column)

        def row(name: str, legacy: object, target: object, good: bool) -> None:
            table.add_row(name, str(legacy), str(target), "ok" if good else "[red]MISMATCH[/]")

        row(
            "documents",
            self.legacy_documents,
            self.target_documents,
            self.legacy_documents == self.target_documents,
        )
        if self.target_own_documents:  # not migrated: counted here, compared nowhere
            table.add_row(
                "documents written in docstore (not compared)",
                "-",
                f"{self.target_own_documents:,}",
                "[yellow]note[/]",
            )
        row(
            "NULL embeddings",
            self.legacy_null_embeddings,
            self.target_null_embeddings,
            self.legacy_null_embeddings == self.target_null_embeddings,
        )
        row(
            "row checksums (chunks)"
            + (
                f", {self.streamed_chunks} verified while streaming"
                if self.streamed_chunks or self.reread_chunks
                else ""
            ),
            self.checksum_chunks,
            self.checksum_chunks - self.mismatched_chunks,
            not self.mismatched_chunks,
        )
        row(
            "per-source counts",
            "",
            f"{len(self.per_source_mismatch)} differ",
            not self.per_source_mismatch,
        )
        row("sources", "", f"{len(self.missing_sources)} missing", not self.missing_sources)
        row(
            "sources: config, columns, derived metadata",
            "",
            f"{len(self.source_mismatches)} differ",
            not self.source_mismatches,
        )
        row(
            "population jobs",
            *self.population_jobs,
            self.population_jobs[0] == self.population_jobs[1] and not self.job_mismatches,
        )
        if self.parity:
            same = sum(p.same for p in self.parity)
            legacy_ms = sum(p.legacy_ms for p in self.parity) / len(self.parity)
            ours_ms = sum(p.docstore_ms for p in self.parity) / len(self.parity)
            row(
                "search parity (exact top-k)",
                f"{legacy_ms:.1f} ms avg",
                f"{ours_ms:.1f} ms avg",
                same == len(self.parity),
            )
        for s in self.source_mismatches[:20]:
            table.add_row(
                f"[red]source {s.problem}[/]",
                Text(s.source_name),
                Text("; ".join(s.details or s.fields)),
                "",
            )
        for j in self.job_mismatches[:20]:
            table.add_row(
                f"[red]job {j.problem}[/]",
                f"legacy id {j.legacy_id}" if j.legacy_id is not None else "no legacy id",
                Text("; ".join(j.details or j.fields)),
                "",
            )
        for m in self.mismatches[:20]:
            table.add_row(
                f"[red]{m.problem}[/]",
                f"legacy id {m.legacy_id}",
                Text(f"{m.source_name}/{m.doc_path}"),
                Text(", ".join(m.fields)),
            )
        yield table


class MigrationReport(BaseModel):
    """The outcome of :meth:`Migrator.run`."""

    run_id: str
    doc_type: str
    dry_run: bool = False
    preflight: Preflight
    copied_documents: int = 0
    copied_chunks: int = Field(default=0, description="chunks this call copied and committed")
    skipped_chunks: int = Field(default=0, description="chunks already committed by an earlier run")
    sources: int = 0
    population_jobs: int = 0
    per_source: dict[str, int] = Field(default_factory=dict)
    refreshed_documents: int = Field(
        default=0,
        description="documents of chunks skipped as unchanged whose metadata.crate_version was "
        "rewritten because their crate's version changed since an earlier run",
    )
    delta_documents: int = Field(
        default=0,
        description="documents re-copied, or whose derived metadata was rewritten, because the "
        "legacy database changed during the copy",
    )
    repaired_documents: int = Field(
        default=0,
        description="documents validation found different (edited in the target, or changed "
        "in the legacy database after the delta pass), copied again before re-validating",
    )
    delta_sources: int = Field(
        default=0, description="sources re-copied because crates/crate_configs changed meanwhile"
    )
    delta_population_jobs: int = Field(
        default=0, description="population jobs re-copied or removed because they changed meanwhile"
    )
    verified_chunks: list[tuple[int, int]] = Field(
        default_factory=list,
        description="the id ranges (first, last] whose stored rows were read back and matched "
        "the copy's stream while later ranges were still copying",
    )
    embeddings_checked_by: Literal["bytes", "crc32c"] | None = Field(
        default=None,
        description="how the streaming validation compared each embedding of the ranges it "
        "verified: every byte, or the CRC-32C the target computed of the stored value "
        "(docstore.migrate.digest); ranges it did not verify are re-read by validation, every "
        "byte. None without validation",
    )
    resumed: int = Field(
        default=0,
        description="times a connection was lost and the run resumed after its committed "
        "chunks (Migrator reconnect_attempts)",
    )
    timings: dict[str, float] = Field(
        default_factory=dict,
        description="seconds per stage (summed over the attempts of a resumed call; a stage "
        "an attempt did not finish is not counted) and in all ('total', the whole call)",
    )
    warnings: list[str] = Field(default_factory=list)
    validation: Validation | None = None

    @property
    def ok(self) -> bool:
        return self.preflight.ok and (self.validation is None or self.validation.ok)


class RollbackReport(BaseModel):
    """The outcome of :meth:`Migrator.rollback`: what the legacy database now holds."""

    crates: int = 0
    documents: int = 0
    deleted_documents: int = Field(default=0, description="legacy rows not in the target")
    crate_configs: int = 0
    population_jobs: int = 0
    recorded_legacy_ids: int = Field(
        default=0,
        description="target documents written after the cutover, now marked with the legacy "
        "ids the rollback gave them (so validate pairs them)",
    )
    recorded_job_ids: int = Field(
        default=0,
        description="target population jobs written after the cutover, now marked with the "
        "legacy ids the rollback gave them",
    )
    dry_run: bool = Field(
        default=False,
        description="the figures are what a rollback would write; nothing was changed",
    )
    seconds: float = 0.0
