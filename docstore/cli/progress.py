"""rich progress bars of the long commands (index builds and calibration, migrations)."""

from __future__ import annotations

import time

from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from docstore.cli.base import console


class PhaseBars:
    """rich progress for long index work: one bar per phase (index build phases from
    pg_stat_progress_create_index, calibration steps), with counts and ETA."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> PhaseBars:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(escape(phase), total=total or None)
        self.progress.update(self.tasks[phase], completed=done, total=total or None)


class MigrationBars:
    """rich progress bars fed by Migrator's progress callback: rows, MB/s, ETA."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            TextColumn("{task.fields[mbps]:.1f} MB/s"),
            TimeRemainingColumn(),
            console=console,
        )
        self.tasks: dict[str, TaskID] = {}
        self.done: dict[str, int] = {}
        self.started = time.monotonic()

    def __call__(self, stage: str, done: int, total: int, nbytes: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(escape(stage), total=total, mbps=0.0)
        task = self.tasks[stage]
        elapsed = max(time.monotonic() - self.started, 1e-6)
        # a run that resumed after a lost connection counts its rows again from 0 (the chunks
        # it committed come back as skipped): the bar stays where it was until they pass it
        done = self.done[stage] = max(done, self.done.get(stage, 0))
        self.progress.update(task, completed=done, total=total, mbps=nbytes / elapsed / 1e6)
