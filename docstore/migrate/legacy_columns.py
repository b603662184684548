"""Whether the legacy tables still have the columns the migration reads, of types it can read.

The tables being there is not enough: a column renamed or dropped fails the run's first
statement that names it (after the sources were written), and a column whose type changed
fails the documents' binary COPY (``22P03 incorrect binary data format``), which passes
``doc_path``, ``content``, ``embedding``, ``token_count`` and ``created_at`` to the target's
columns as they are stored. Read from the catalog (:data:`COLUMNS_FOUND`).

What each column may be (:data:`COLUMNS`) is what a migration was run with and validated,
not only the deployed type: an ``integer`` id widened to ``bigint``, a ``varchar`` of another
length or ``text`` for a string, a ``timestamptz`` for most timestamps all migrate as they
are. Extra columns are never read. Blocked: a column missing, of a type whose binary form is
not the target's (``bigint``/``smallint``/``numeric`` token counts, a ``date`` created_at, a
``halfvec`` embedding), that Python reads as something the sources' JSON cannot hold
(``numeric``, ``date``), or that validation then finds different (a population job's
timestamp without time zone); and names the target's ``source_name`` (``varchar(255)``)
cannot hold, when the column's type lets them be longer (:func:`long_names_query`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

_INT = ("int4", "int8")  # ids and counts read into Python or jsonb
_STRING = ("text", "varchar", "name")  # one binary form: the string's bytes (char(n): padded)
_STRINGS = ("_text", "_varchar")
_TIMESTAMP = ("timestamp", "timestamptz")

# table -> (column, the types it may have (pg_type.typname, a domain's base type), the
# deployed type, what reads it)
COLUMNS: dict[str, tuple[tuple[str, tuple[str, ...], str], ...]] = {
    "crates": (
        ("id", _INT, "integer"),
        ("name", _STRING, "character varying(255)"),
        ("version", _STRING, "character varying(50)"),
        ("last_updated", _TIMESTAMP, "timestamp without time zone"),
        ("total_docs", _INT, "integer"),
        ("total_tokens", _INT, "integer"),
    ),
    "doc_embeddings": (
        ("id", _INT, "integer"),
        ("crate_id", _INT, "integer"),
        ("crate_name", _STRING, "character varying(255)"),
        ("doc_path", _STRING, "text"),
        ("content", _STRING, "text"),
        ("embedding", ("vector",), "vector"),
        ("token_count", ("int4",), "integer"),
        ("created_at", _TIMESTAMP, "timestamp without time zone"),
    ),
    "crate_configs": (
        ("id", _INT, "integer"),
        ("name", _STRING, "character varying(255)"),
        ("version_spec", _STRING, "character varying(50)"),
        ("current_version", _STRING, "character varying(50)"),
        ("features", _STRINGS, "text[]"),
        ("expected_docs", _INT, "integer"),
        ("enabled", ("bool",), "boolean"),
        ("last_checked", _TIMESTAMP, "timestamp with time zone"),
        ("last_populated", _TIMESTAMP, "timestamp with time zone"),
        ("created_at", _TIMESTAMP, "timestamp with time zone"),
        ("updated_at", _TIMESTAMP, "timestamp with time zone"),
    ),
    "population_jobs": (
        ("id", _INT, "integer"),
        ("crate_config_id", _INT, "integer"),
        ("status", _STRING, "character varying(20)"),
        ("started_at", ("timestamptz",), "timestamp with time zone"),
        ("completed_at", ("timestamptz",), "timestamp with time zone"),
        ("error_message", _STRING, "text"),
        ("docs_populated", _INT, "integer"),
        ("created_at", ("timestamptz",), "timestamp with time zone"),
    ),
}
# The columns whose values become a source's name (the target's varchar(255)).
NAME_COLUMNS = {"crates": "name", "doc_embeddings": "crate_name", "crate_configs": "name"}
MAX_NAME_CHARS = 255

# The columns of tables $1 (as the migration's queries name them: resolved on the
# search_path), with their type (a domain's base type) and whether that string type may hold
# more than $2 characters (text, or a varchar or char longer or unbounded; a typmod counts
# 4 bytes of header).
COLUMNS_FOUND = """
SELECT c.relname AS tbl, a.attname AS col, b.base AS type,
       format_type(a.atttypid, a.atttypmod) AS shown,
       CASE b.base
         WHEN 'name' THEN false
         WHEN 'text' THEN true
         ELSE (CASE WHEN a.atttypmod >= 0 THEN a.atttypmod ELSE coalesce(b.mod, -1) END)
              NOT BETWEEN 0 AND $2 + 4 END AS long
  FROM unnest($1::text[]) AS n(name)
  JOIN pg_class c ON c.oid = to_regclass(quote_ident(n.name))
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  CROSS JOIN LATERAL (
      -- a domain (over a domain ...) is its base type; its length the nearest one declared
      WITH RECURSIVE chain AS (
          SELECT t.typname, t.typtype, t.typbasetype, t.typtypmod, 0 AS depth
            FROM pg_type t WHERE t.oid = a.atttypid
          UNION ALL
          SELECT p.typname, p.typtype, p.typbasetype, p.typtypmod, chain.depth + 1
            FROM chain JOIN pg_type p ON p.oid = chain.typbasetype
           WHERE chain.typtype = 'd'
      )
      SELECT (SELECT typname FROM chain WHERE typtype <> 'd' ORDER BY depth LIMIT 1) AS base,
             (SELECT typtypmod FROM chain WHERE typtypmod >= 0 ORDER BY depth LIMIT 1) AS mod
  ) b
"""


def read_tables(present: Mapping[str, Any]) -> list[str]:
    """The legacy tables of ``present`` (by name) that a migration reads: ``crates`` and
    ``doc_embeddings``, ``crate_configs`` when there, ``population_jobs`` when both are."""
    read = [t for t in ("crates", "doc_embeddings", "crate_configs") if t in present]
    if "crate_configs" in present and "population_jobs" in present:
        read.append("population_jobs")
    return read


def long_names_query(tables: Sequence[str]) -> str:
    """Of ``tables`` (of :data:`NAME_COLUMNS`), those holding a name longer than
    :data:`MAX_NAME_CHARS` characters (``tbl``) and how many such rows (``rows``): a scan of
    the name column, run only when its type lets it be longer."""
    return " UNION ALL ".join(
        f"SELECT '{t}' AS tbl, count(*) AS rows FROM {t}"
        f" WHERE char_length({NAME_COLUMNS[t]}) > {MAX_NAME_CHARS} HAVING count(*) > 0"
        for t in tables
    )


async def problems(src: asyncpg.Connection, present: Mapping[str, Any]) -> list[str]:
    """Why the legacy tables the migration reads (of ``present``, by name) can't be read as
    they are, one problem per column (naming the table, the column, the type expected and the
    type found), or []. The catalog only, unless a name column may hold longer names than the
    target's: then that column is scanned."""
    tables = read_tables(present)
    found: dict[str, dict[str, asyncpg.Record]] = {t: {} for t in tables}
    for r in await src.fetch(COLUMNS_FOUND, tables, MAX_NAME_CHARS):
        found.setdefault(r["tbl"], {})[r["col"]] = r
    out, long = [], []
    for table in tables:
        for column, types, expected in COLUMNS[table]:
            have = found[table].get(column)
            if have is None:
                out.append(
                    f"legacy {table} has no column {column} ({expected}), which the migration"
                    f" reads: restore it as the deployed schema has it (a renamed one: ALTER"
                    f" TABLE {table} RENAME COLUMN … TO {column}) and run again"
                )
            elif have["type"] not in types:
                out.append(
                    f"legacy {table}.{column} is {have['shown']}, the migration expects"
                    f" {expected}: it cannot read the column as it is (the documents' binary"
                    " COPY fails, or the copied value would differ); ALTER TABLE"
                    f" {table} ALTER COLUMN {column} TYPE {expected} and run again"
                )
            elif column == NAME_COLUMNS.get(table) and have["long"]:
                long.append(table)
    if long and not out:  # (the scan needs the columns it names)
        for r in await src.fetch(long_names_query(long)):
            column = f"{r['tbl']}.{NAME_COLUMNS[r['tbl']]}"
            out.append(
                f"legacy {column} is {found[r['tbl']][NAME_COLUMNS[r['tbl']]]['shown']} and"
                f" {r['rows']:,} of its rows hold a name longer than {MAX_NAME_CHARS}"
                f" characters, which the target's source_name (varchar({MAX_NAME_CHARS}))"
                " cannot hold: shorten them and run again"
            )
    return out
