"""The values a legacy crate config may hold, checked before they are written.

The legacy server kept crate configs in a table whose columns typed them; here they live in a
source's ``config`` JSON, so :class:`~docstore.compat.legacy_api.LegacyDatabase` checks them
the way the columns did (a name that can be a source, text, a list of text, a non-negative
count, a boolean, a timestamp) and raises :class:`~docstore.errors.ValidationError` before
anything is written. Timestamps are stored as ISO text in UTC; a naive one is taken as UTC
(docstore's convention for naive times), so comparisons never mix naive and aware values; they
come back as the legacy ``TIMESTAMPTZ`` columns did, aware datetimes in UTC (:func:`as_row`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from docstore.arguments import as_int, row_id
from docstore.errors import ValidationError
from docstore.models import MAX_SOURCE_NAME, aware_utc, key_text, parse_timestamp
from docstore.repositories.sources import MAX_OLDER_THAN
from docstore.storable import in_utc

MAX_VERSION = 50
"""``version_spec`` / ``current_version`` were ``VARCHAR(50)`` columns."""
COLUMNS = (
    "id",
    "name",
    "version_spec",
    "current_version",
    "features",
    "expected_docs",
    "enabled",
    "last_checked",
    "last_populated",
    "created_at",
    "updated_at",
)
"""The legacy ``crate_configs`` columns, in order: the keys of a config as returned."""
TIMESTAMPS = ("last_checked", "last_populated", "created_at", "updated_at")


def name(value: Any) -> str:
    key_text("name", value)
    if not 1 <= len(value) <= MAX_SOURCE_NAME:
        raise ValidationError(f"name must be 1 to {MAX_SOURCE_NAME} characters", field="name")
    return str(value)


def _text(field: str, value: Any, *, optional: bool = False) -> str | None:
    return key_text(field, value, optional=optional)  # type: ignore[no-any-return]


def version_text(field: str, value: Any, *, optional: bool = False) -> str | None:
    """A version (``crates.version``, ``version_spec``, ``current_version``): text that fits
    the legacy ``VARCHAR(50)`` (:class:`ValidationError` otherwise)."""
    text = _text(field, value, optional=optional)
    if text is not None and len(text) > MAX_VERSION:
        raise ValidationError(f"{field} is longer than {MAX_VERSION} characters", field=field)
    return text


def _features(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValidationError("features must be a list of strings", field="features")
    return [str(_text("features", item)) for item in value]


def _count(value: Any) -> int:
    count = as_int(value)  # numpy's integers too, never a bool
    if count is None or not 0 <= count < 2**31:
        raise ValidationError("expected_docs must be a non-negative integer", field="expected_docs")
    return count


def config_id(value: Any, field: str) -> int:
    """A crate config id (the legacy ``crate_configs.id``, an ``integer``) as an int: numpy's
    integers too, never a bool or a float — which would find config 1 by ``==`` and be
    stored as JSON ``true``/``1.0`` in a job (:class:`ValidationError` naming ``field``)."""
    try:
        return row_id(value)
    except ValidationError:
        raise ValidationError(
            f"{field} must be an integer within PostgreSQL's integer range", field=field
        ) from None


def max_age(value: Any) -> timedelta:
    """``get_crates_needing_update(max_age)``: a non-negative timedelta of at most
    :data:`~docstore.repositories.sources.MAX_OLDER_THAN` (about 1,000 years: ``now -
    max_age`` must stay a datetime), else :class:`ValidationError`."""
    if not isinstance(value, timedelta):
        raise ValidationError(
            f"max_age must be a timedelta, got {type(value).__name__}", field="max_age"
        )
    if not timedelta(0) <= value <= MAX_OLDER_THAN:
        raise ValidationError(
            f"max_age must be from 0 to {MAX_OLDER_THAN.days:,} days (about 1,000 years)",
            field="max_age",
        )
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValidationError("enabled must be true or false", field="enabled")
    return value


def _timestamp(field: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise ValidationError(f"{field} must be a datetime or None", field=field)
        try:  # a zone can move a time near year 1 or 9999 out of datetime's range
            return in_utc(aware_utc(value)).isoformat()
        except ValueError as exc:
            raise ValidationError(f"{field} {exc}", field=field) from None

    return check


def updates(fields: dict[str, Any]) -> dict[str, Any]:
    """The checked values of ``update_crate_config(**fields)`` (a column it cannot set: a
    :class:`ValidationError` naming it)."""
    for field in fields:
        if field not in UPDATABLE:
            raise ValidationError(
                f"cannot update {field[:40]!r} of a crate config: use one of"
                f" {', '.join(UPDATABLE)}",
                field=field[:40],
            )
    return {k: UPDATABLE[k](v) for k, v in fields.items()}


def as_row(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config as the legacy ``crate_configs`` row: its columns in order, the
    timestamps as aware datetimes in UTC."""
    row = {k: config.get(k) for k in COLUMNS}
    for k in TIMESTAMPS:
        stamp = aware_utc(parse_timestamp(row[k]))
        row[k] = None if stamp is None else stamp.astimezone(UTC)
    return row


# what update_crate_config() may set, and how each value is checked and stored
UPDATABLE: dict[str, Callable[[Any], Any]] = {
    "current_version": lambda v: version_text("current_version", v, optional=True),
    "features": _features,
    "expected_docs": _count,
    "enabled": _flag,
    "last_checked": _timestamp("last_checked"),
    "last_populated": _timestamp("last_populated"),
}


def new_config(
    version_spec: Any, current_version: Any, features: Any, expected_docs: Any, enabled: Any
) -> dict[str, Any]:
    """The checked values of a config created by ``create_crate_config``."""
    return {
        "version_spec": version_text("version_spec", version_spec),
        "current_version": version_text("current_version", current_version, optional=True),
        "features": _features(features),
        "expected_docs": _count(expected_docs),
        "enabled": _flag(enabled),
    }
