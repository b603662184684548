"""What the Migrator compares: the target's sources, population jobs and per-crate document
metadata as the legacy tables give them, and the differences (pure functions, no I/O).

Used three ways: the copy writes what differs, the delta pass writes what the legacy
application changed meanwhile, and validation reports it (names and scalar values, never
vectors).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from docstore.migrate import legacy
from docstore.migrate.report import JobMismatch, SourceMismatch


@dataclass(frozen=True)
class LegacySource:
    """A target source as the legacy tables give it."""

    config: dict[str, Any]
    enabled: bool
    last_checked: datetime | None
    last_populated: datetime | None
    version: str | None  # crates.version: every document's metadata.crate_version


@dataclass(frozen=True)
class LegacyState:
    """Sources by name and population jobs by legacy id, from one legacy snapshot."""

    sources: dict[str, LegacySource]
    jobs: dict[int, dict[str, Any]]


def config_dict(value: Any) -> dict[str, Any]:
    """A jsonb value of a target row (decoded by the pools' jsonb codec; NULL is None) as a
    dict."""
    return dict(value or {})


_ABSENT = object()


def _show(value: Any) -> str:
    """A scalar for a mismatch message: short, and never a vector (none reach here)."""
    if value is _ABSENT:
        return "absent"
    if isinstance(value, datetime):
        return value.isoformat()
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def diff_sources(want: Mapping[str, LegacySource], have: Mapping[str, Any]) -> list[SourceMismatch]:
    """Legacy-derived sources vs the target's rows: the derived config keys (exactly; keys
    others added are ignored), ``enabled``, ``last_checked``, ``last_populated``. Target
    sources that were not migrated (no ``config.migrated_from``) and have no legacy
    counterpart are not the Migrator's and are ignored."""
    out = []
    for name in sorted(set(want) | set(have)):
        w, h = want.get(name), have.get(name)
        if h is None:
            out.append(SourceMismatch(source_name=name, problem="missing in target"))
            continue
        config = config_dict(h["config"])
        if w is None:
            if config.get("migrated_from") == legacy.MIGRATED_FROM:
                out.append(SourceMismatch(source_name=name, problem="extra in target"))
            continue
        fields, details = [], []
        for key in legacy.SOURCE_CONFIG_KEYS:
            a, b = w.config.get(key, _ABSENT), config.get(key, _ABSENT)
            if a == b:
                continue
            fields.append(f"config.{key}")
            if key == "crate_configs":
                count_a = len(a) if isinstance(a, list) else 0
                count_b = len(b) if isinstance(b, list) else 0
                details.append(
                    f"config.crate_configs: legacy {count_a} rows, target {count_b}"
                    + (" (contents differ)" if count_a == count_b else "")
                )
            else:
                details.append(f"config.{key}: legacy {_show(a)}, target {_show(b)}")
        for key, a in (
            ("enabled", w.enabled),
            ("last_checked", w.last_checked),
            ("last_populated", w.last_populated),
        ):
            if a != h[key]:
                fields.append(key)
                details.append(f"{key}: legacy {_show(a)}, target {_show(h[key])}")
        if fields:
            out.append(
                SourceMismatch(source_name=name, problem="differs", fields=fields, details=details)
            )
    return out


_JOB_FIELDS = (
    "source_name",
    "status",
    "started_at",
    "completed_at",
    "error_message",
    "docs_populated",
    "created_at",
)


def diff_jobs(want: Mapping[int, dict[str, Any]], have: Sequence[Any]) -> list[JobMismatch]:
    """Legacy population jobs vs the target's: every column, ``metadata.crate_config_id`` /
    ``version_spec``, and ``source_id`` pointing at the job's source. A target job without a
    legacy id (written in docstore) is reported as extra."""
    out = []
    seen: set[int] = set()
    for h in sorted(have, key=lambda r: (r["legacy_id"] is None, r["legacy_id"] or 0, r["id"])):
        key = h["legacy_id"]
        w = want.get(key) if key is not None else None
        if w is None:
            out.append(
                JobMismatch(legacy_id=key, source_name=h["source_name"], problem="extra in target")
            )
            continue
        seen.add(key)
        fields, details = [], []
        for name in _JOB_FIELDS:
            if w[name] != h[name]:
                fields.append(name)
                details.append(f"{name}: legacy {_show(w[name])}, target {_show(h[name])}")
        metadata = config_dict(h["metadata"])
        for name, a in w["metadata"].items():
            b = metadata.get(name, _ABSENT)
            if a != b:
                fields.append(f"metadata.{name}")
                details.append(f"metadata.{name}: legacy {_show(a)}, target {_show(b)}")
        if h["source_id"] != h["linked_id"]:
            fields.append("source_id")
            details.append("source_id: not the id of the job's source")
        if fields:
            out.append(
                JobMismatch(
                    legacy_id=key,
                    source_name=w["source_name"],
                    problem="differs",
                    fields=fields,
                    details=details,
                )
            )
    out.extend(
        JobMismatch(legacy_id=key, source_name=w["source_name"], problem="missing in target")
        for key, w in sorted(want.items())
        if key not in seen
    )
    return out


def diff_versions(
    want: Mapping[str, LegacySource], per_source: Sequence[Any]
) -> list[SourceMismatch]:
    """Sources whose migrated documents do not all carry their crate's version as
    ``metadata.crate_version`` (``per_source``: rows of source_name, documents and the
    distinct ``versions`` among them, from the target)."""
    out = []
    for r in sorted(per_source, key=lambda r: r["source_name"]):
        source = want.get(r["source_name"])
        if source is None:
            continue  # documents of a crate the legacy database no longer has: counted apart
        versions = list(r["versions"])
        if versions == [source.version]:
            continue
        shown = ", ".join("absent" if v is None else repr(v)[:40] for v in versions[:5])
        wanted = source.version if source.version is not None else _ABSENT
        out.append(
            SourceMismatch(
                source_name=r["source_name"],
                problem="differs",
                fields=["metadata.crate_version"],
                details=[
                    f"metadata.crate_version of its {r['documents']} documents: legacy "
                    f"crates.version {_show(wanted)}"
                    f", target {shown}"
                ],
            )
        )
    return out
