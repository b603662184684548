"""Whether a run may do to the target what it does, read from the catalog: preflight's half
of the checks that ``connect()`` and the copy make by trying (a dry run writes nothing).

A run first brings the target's schema up to date (:func:`docstore.schema.runner.
apply_migrations`: pgvector created, docstore's tables created in the first schema of the
search path, pending migrations applied, tables of docstore's names it did not create
refused), then writes ``documents``, ``document_sources``, ``source_population_jobs`` and
``docstore_migration_checkpoints`` (through a temporary staging table). :func:`problems`
names what of that this role could not do, each as the run says it (or, where the run fails
with PostgreSQL's bare ``permission denied``, with the GRANT that fixes it); nothing for a
target the run can migrate. With ``--build-index`` the run also builds the HNSW and full-text
indexes on ``documents`` (only its owner may, with CREATE on its schema) and stores the search
calibration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from docstore.errors import ReadOnlyError
from docstore.migrate.context import ensure_writable
from docstore.search import queries, text_sql
from docstore.store import Store

# What the copy, the delta pass, validation's repairs and the checkpoints do to each table
# (the staging upsert, the range deletes, sync_sources/sync_jobs with delete=True).
WRITTEN_TABLES = (
    "documents",
    "document_sources",
    "source_population_jobs",
    "docstore_migration_checkpoints",
)
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
# What ``build_index`` adds (Store.create_vector_index/create_text_index): the indexes, unless
# a valid one is there (CREATE INDEX: the table's owner, with CREATE on its schema); a fresh
# build deletes the dropped graph's calibration, and calibrating reads recent queries and
# upserts its result.
INDEX_TABLES = {
    "docstore_search_calibration": ("SELECT", "INSERT", "UPDATE", "DELETE"),
    "docstore_search_queries": ("SELECT",),
}
BUILT_INDEXES = (queries.vector_index_name("cosine"), text_sql.TEXT_INDEX_NAME)
# Tables whose rows the run inserts without an id: their id's sequence must give one.
_SERIAL_TABLES = ("documents", "document_sources", "source_population_jobs")


@dataclasses.dataclass(frozen=True)
class TargetUse:
    """What the run does to the target beyond what every run does: ``build_index`` (the
    indexes after the copy); ``keeps_schema``: why it will neither create nor upgrade
    docstore's schema there (None: it does, as ``docstore init``)."""

    build_index: bool = False
    keeps_schema: str | None = None


PLAIN_RUN = TargetUse()
"""A run that builds no index and creates or upgrades docstore's schema."""


_ROLE = """
SELECT quote_ident(current_user) AS role, r.rolsuper AS superuser,
       quote_ident(current_database()) AS database,
       (SELECT extversion FROM pg_extension WHERE extname = 'vector') AS pgvector,
       a.default_version IS NOT NULL AS pgvector_available,
       coalesce(v.trusted, false) AS pgvector_trusted,
       has_database_privilege(current_database(), 'CREATE') AS create_in_database,
       has_database_privilege(current_database(), 'TEMPORARY') AS temporary,
       quote_ident(current_schema()) AS schema,
       current_schema() IS NOT NULL
           AND has_schema_privilege(current_schema(), 'CREATE') AS create_in_schema,
       (SELECT array_agg(name ORDER BY name) FROM unnest(array['documents', 'document_sources'])
         name WHERE to_regclass(name) IS NOT NULL) AS named_tables
FROM pg_roles r
LEFT JOIN pg_available_extensions a ON a.name = 'vector'
LEFT JOIN pg_available_extension_versions v ON v.name = 'vector' AND v.version = a.default_version
WHERE r.rolname = current_user
"""

_TABLES = """
SELECT t.name,
       array(SELECT p FROM unnest($2::text[]) p WHERE NOT has_table_privilege(c.oid, p))
           AS missing,
       has_schema_privilege(c.relnamespace, 'USAGE') AS schema_usage,
       quote_ident(n.nspname) AS schema,
       pg_has_role(c.relowner, 'USAGE') AS owned,
       has_schema_privilege(c.relnamespace, 'CREATE') AS schema_create,
       quote_ident(pg_get_userbyid(c.relowner)) AS owner,
       CASE WHEN t.name = ANY($3::text[]) THEN pg_get_serial_sequence(t.name, 'id') END
           AS sequence
FROM unnest($1::text[]) WITH ORDINALITY t(name, i)
JOIN pg_class c ON c.oid = to_regclass(t.name)
JOIN pg_namespace n ON n.oid = c.relnamespace
ORDER BY t.i
"""

_UNBUILT = """
SELECT array_agg(name ORDER BY name) FROM unnest($1::text[]) name
WHERE NOT EXISTS (SELECT FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                  WHERE c.relname = name AND i.indrelid = 'documents'::regclass AND i.indisvalid)
"""

_SEQUENCES_UNUSABLE = """
SELECT array_agg(s ORDER BY s) FROM unnest($1::text[]) s
WHERE NOT (has_sequence_privilege(s, 'USAGE') OR has_sequence_privilege(s, 'UPDATE'))
"""


async def problems(
    store: Store, schema_version: int | None, latest: int, use: TargetUse = PLAIN_RUN
) -> list[str]:
    """What stops a run on ``store``'s target with this role (blocking, one line each, what
    to do in it); ``schema_version``: docstore's schema there (None: not created yet),
    ``latest``: this docstore's; ``use``: what else the run does there. The catalog only."""
    if schema_version is None and use.keeps_schema:
        return [
            f"the target has no docstore schema, and the run does not create it "
            f"({use.keeps_schema}): run `docstore init --url ...` and run again"
        ]
    role: Any = await store.fetchrow(_ROLE)
    if role is None:  # current_user is always a role: pg_roles has it
        return []
    found = []
    if role["pgvector"] is None and (problem := _pgvector(role)):
        found.append(problem)
    if schema_version is None:
        found += _schema_to_create(role)  # the role then owns docstore's tables
        if problem := _grants(role, [], [], not role["temporary"]):
            found.append(problem)
        return found
    tables = await store.fetch(
        _TABLES, list(WRITTEN_TABLES), list(TABLE_PRIVILEGES), list(_SERIAL_TABLES)
    )
    if schema_version < latest and use.keeps_schema:
        found.append(
            f"the target's docstore schema is at version {schema_version} and this docstore's "
            f"at {latest}, and the run does not apply the migrations in between "
            f"({use.keeps_schema}): run `docstore init --url ...` and run again"
        )
    elif schema_version < latest and (problem := _pending(role, tables, schema_version, latest)):
        found.append(problem)
    if use.build_index:
        if problem := await _index_owner(store, role, tables):
            found.append(problem)
        for name, privileges in INDEX_TABLES.items():
            tables += await store.fetch(_TABLES, [name], list(privileges), [])
    sequences = [t["sequence"] for t in tables if t["sequence"]]
    unusable = (await store.fetchval(_SEQUENCES_UNUSABLE, sequences)) if sequences else None
    if problem := _grants(role, tables, unusable or [], not role["temporary"]):
        found.append(problem)
    return found


def _pgvector(role: Any) -> str | None:
    """Why the run can't create pgvector here (as :func:`docstore.embedded.
    ensure_vector_extension` says it), or None. A superuser creates any extension; another
    role a trusted one, given CREATE on the database."""
    if not role["pgvector_available"]:
        return (
            "the pgvector extension is not installed on this PostgreSQL server: install "
            "pgvector (https://github.com/pgvector/pgvector#installation) or use the embedded "
            "database (`pip install docstore[embedded]` and unset DATABASE_URL)"
        )
    if role["superuser"] or (role["pgvector_trusted"] and role["create_in_database"]):
        return None
    return (
        "the pgvector extension is not enabled in this database and this role may not "
        "create it: ask an administrator to run `CREATE EXTENSION vector;` in it"
    )


def _schema_to_create(role: Any) -> list[str]:
    """Why the run can't create docstore's schema here (it owns the tables it creates)."""
    found = []
    if named := role["named_tables"]:  # as docstore.schema.runner._refuse_foreign_tables
        found.append(
            f"this database already has {' and '.join(named)} but no docstore_schema_version:"
            " they were not created by docstore (e.g. by the migration plan's Phase 1.1 SQL)."
            " docstore creates its own tables: use another database, or drop these tables if"
            " they hold nothing you need (`docstore migrate` copies the legacy data into"
            " docstore's)"
        )
    if not role["create_in_schema"]:
        where = (
            f"schema {role['schema']}"
            if role["schema"]
            else "any schema (none on its search_path exists)"
        )
        found.append(
            f"the target has no docstore schema yet and its role {role['role']} may not create "
            f"tables in {where}, which the run does (as `docstore init`): run `docstore init "
            "--url ...` as the database's owner"
            + (
                f", or GRANT CREATE ON SCHEMA {role['schema']} TO {role['role']}"
                if role["schema"]
                else ""
            )
            + ", and run again"
        )
    return found


def _pending(role: Any, tables: Sequence[Any], version: int, latest: int) -> str | None:
    """Why the run can't apply the schema migrations the target lacks, or None: they alter
    docstore's tables (only their owner may) and create tables."""
    foreign = [t for t in tables if not t["owned"]]
    if role["superuser"] or (not foreign and role["create_in_schema"]):
        return None
    owner = foreign[0]["owner"] if foreign else "the tables' owner"
    return (
        f"the target's docstore schema is at version {version} and this docstore's at "
        f"{latest}: the run applies the migrations in between, which only {owner} (the owner "
        f"of docstore's tables, with CREATE on their schema) or a superuser may, not "
        f"{role['role']}: run `docstore init --url ...` as {owner} and run again"
    )


async def _index_owner(store: Store, role: Any, tables: Sequence[Any]) -> str | None:
    """Why this role can't build the indexes ``build_index`` builds, or None: CREATE INDEX is
    the table owner's (the run would fail on it after the whole copy); none is built where a
    valid one is there already."""
    documents = next((t for t in tables if t["name"] == "documents"), None)
    if documents is None or (documents["owned"] and documents["schema_create"]):
        return None
    unbuilt = await store.fetchval(_UNBUILT, list(BUILT_INDEXES))
    if not unbuilt:
        return None
    owner, schema = documents["owner"], documents["schema"]
    instead = (
        f"migrate without --build-index, then as {owner} run `docstore index create --url ...`"
        " and `docstore index create --text --url ...`, which build the same indexes"
    )
    if not documents["owned"]:
        return (
            f"--build-index builds indexes on documents ({', '.join(unbuilt)}), which only its "
            f"owner {owner} (or a superuser) may, not {role['role']}: {instead}"
        )
    return (
        f"--build-index builds indexes on documents ({', '.join(unbuilt)}), which needs CREATE"
        f" on schema {schema}, which {role['role']} lacks: GRANT CREATE ON SCHEMA {schema} TO"
        f" {role['role']}, or {instead}"
    )


def _grants(
    role: Any, tables: Sequence[Any], sequences: Sequence[str], temporary: bool
) -> str | None:
    """Why this role can't write what the run writes, naming the GRANTs that fix it."""
    lacking = [t for t in tables if t["missing"] or not t["schema_usage"]]
    schemas = sorted({t["schema"] for t in tables if not t["schema_usage"]})
    if not (lacking or sequences or temporary):
        return None
    grouped: dict[tuple[str, ...], list[str]] = {}  # the same privileges missing on tables
    for t in lacking:
        if t["missing"]:
            grouped.setdefault(tuple(t["missing"]), []).append(t["name"])
    what = [f"{', '.join(p)} on {', '.join(names)}" for p, names in grouped.items()]
    what += [f"USAGE on schema {s}" for s in schemas]
    fixes = [f"GRANT USAGE ON SCHEMA {s} TO {role['role']}" for s in schemas]
    fixes += [
        f"GRANT {', '.join(p)} ON {', '.join(n)} TO {role['role']}" for p, n in grouped.items()
    ]
    if sequences:
        what.append(f"USAGE on sequence {', '.join(sequences)}")
        fixes.append(f"GRANT USAGE ON SEQUENCE {', '.join(sequences)} TO {role['role']}")
    if temporary:
        what.append(f"TEMPORARY on database {role['database']}")
        fixes.append(f"GRANT TEMPORARY ON DATABASE {role['database']} TO {role['role']}")
    return (
        f"the target's role {role['role']} lacks privileges the migration needs ("
        f"{'; '.join(what)}): as their owner (or a superuser), {'; '.join(fixes)}; then run again"
    )


async def read_only(store: Store) -> str | None:
    """Why the run refuses this target as read-only (:func:`~docstore.migrate.context.
    ensure_writable`: ``READ_ONLY``, a standby, ``default_transaction_read_only``), or None."""
    if store.read_only:
        return "the target store is read-only: unset READ_ONLY to migrate"
    try:
        await ensure_writable(store, "migrate")
    except ReadOnlyError as exc:
        return str(exc)
    return None
