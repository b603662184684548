"""Where the legacy crate configs live: every config of a crate in its source's
``config["crate_configs"]`` (the lowest id's fields mirrored at the top level, its
``enabled``/``last_checked`` in the source's columns), as the Migrator maps them. Each function
runs inside the caller's transaction, which holds the ``crate_configs`` advisory lock."""

from __future__ import annotations

from typing import Any

from docstore.models import aware_utc, parse_timestamp


async def source_configs(conn: Any, doc_type: str, name: str) -> tuple[int, dict[str, Any]]:
    """The id and config of crate ``name``'s source, locked (FOR UPDATE); the source is
    created (an orphan: a configured crate without a crates row yet, as legacy allowed) when
    there is none. An ``upsert_crate`` creating it meanwhile wins: the insert does nothing
    (after waiting for it) and the row is read again."""
    select = (
        "SELECT id, config FROM document_sources WHERE doc_type = $1 AND source_name = $2"
        " FOR UPDATE"
    )
    row = await conn.fetchrow(select, doc_type, name)
    if row is None:
        await conn.execute(
            "INSERT INTO document_sources (doc_type, source_name, config)"
            " VALUES ($1, $2, '{\"orphan\": true}')"
            " ON CONFLICT (doc_type, source_name) DO NOTHING",
            doc_type,
            name,
        )
        row = await conn.fetchrow(select, doc_type, name)
    return row["id"], dict(row["config"])


async def save_configs(
    conn: Any, source_id: int, config: dict[str, Any], configs: list[dict[str, Any]]
) -> None:
    """Write ``configs`` (sorted by id) into the source's ``config``, mirroring the first."""
    configs.sort(key=lambda c: c["id"])
    config["crate_configs"] = configs
    if configs:
        first = configs[0]
        for key in ("version_spec", "current_version", "features", "expected_docs"):
            config[key] = first[key]
    enabled = configs[0]["enabled"] if configs else True
    last_checked = aware_utc(parse_timestamp(configs[0]["last_checked"])) if configs else None
    await conn.execute(
        "UPDATE document_sources SET config = $2::jsonb, enabled = $3, last_checked = $4"
        " WHERE id = $1",
        source_id,
        config,
        enabled,
        last_checked,
    )


async def all_configs(conn: Any, doc_type: str) -> list[dict[str, Any]]:
    """Every stored config of ``doc_type``'s sources, as stored (timestamps as ISO text)."""
    rows = await conn.fetch(
        "SELECT config->'crate_configs' AS c FROM document_sources"
        " WHERE doc_type = $1 AND config ? 'crate_configs'",
        doc_type,
    )
    out: list[dict[str, Any]] = []
    for r in rows:
        out.extend(r["c"])
    return out
