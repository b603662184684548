"""The server's read-only guarantee: a login role that cannot write.

:func:`create_reader_role` makes (or updates) a role that may read docstore's tables and
write nothing, setting its password as a SCRAM verifier (:func:`scram_verifier`) so the text
never reaches the server; :func:`write_capabilities` lists every way a role could still
write (what ``health()`` reports as ``read_only_guarantee: role`` when there is none), and
:func:`file_capabilities` every way it could write the server's files or run programs even
inside a read-only transaction (then the client guarantee cannot hold either).

The legacy compatibility views (:mod:`docstore.compat.views`, a layer above) are readable by
reader roles whichever comes first: :func:`create_reader_role` grants ``SELECT`` on the views
already installed, in any schema, and ``install_views`` grants it to the reader roles already
made (:func:`reader_roles`, :func:`grant_legacy_views`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
from collections.abc import Sequence

import asyncpg

from docstore.errors import ConfigurationError, SchemaError, ValidationError

logger = logging.getLogger("docstore")

DOCSTORE_TABLES = (
    "documents",
    "document_sources",
    "docstore_schema_version",
    "docstore_migration_checkpoints",
    "source_population_jobs",
    "docstore_search_calibration",
    "docstore_search_queries",
)
"""docstore's tables: a reader role may read them and must not be able to write any."""

LEGACY_VIEWS = ("crates", "doc_embeddings", "crate_stats")
"""The compatibility views (:mod:`docstore.compat.views`), which a reader role may read."""
LEGACY_VIEW_GUARD = "docstore_legacy_view_is_read_only"
"""The function every installation of the compatibility views has beside them (their write
guard): a schema holding it holds docstore's views, not someone else's ``crates``."""
LEGACY_FUNCTION = "search_similar_docs"

# Login roles that are docstore reader roles: made read-only by default (as
# create_reader_role makes them) and already able to read both tables the compatibility views
# show, so granting the views to one gives it nothing it could not read anyway.
_READER_ROLES = """
SELECT r.rolname FROM pg_catalog.pg_roles r
 WHERE r.rolcanlogin AND NOT r.rolsuper
   AND EXISTS (SELECT FROM unnest(r.rolconfig) c
                WHERE c ~* '^default_transaction_read_only=(on|true|yes|1)$')
   AND to_regclass('documents') IS NOT NULL AND to_regclass('document_sources') IS NOT NULL
   AND has_table_privilege(r.oid, to_regclass('documents'), 'SELECT')
   AND has_table_privilege(r.oid, to_regclass('document_sources'), 'SELECT')
 ORDER BY 1
"""

# The compatibility views installed in this database: (schema, view), in every schema that
# holds the views' write guard.
_LEGACY_VIEWS = """
SELECT n.nspname, c.relname FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'v' AND c.relname = ANY($1::text[])
   AND EXISTS (SELECT FROM pg_catalog.pg_proc p WHERE p.pronamespace = n.oid AND p.proname = $2)
 ORDER BY 1, 2
"""

# What a role still lacks to read the views of a schema, of what the connected role may grant
# ($1 role, $2 schema, $3 views, $4 the search function's name).
_MISSING_GRANTS = """
SELECT 'schema' AS kind, quote_ident(n.nspname) AS object FROM pg_catalog.pg_namespace n
 WHERE n.nspname = $2 AND NOT has_schema_privilege($1, n.oid, 'USAGE')
   AND has_schema_privilege(current_user, n.oid, 'USAGE WITH GRANT OPTION')
UNION ALL
SELECT 'table', c.oid::regclass::text FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $2 AND c.relkind = 'v' AND c.relname = ANY($3::text[])
   AND NOT has_table_privilege($1, c.oid, 'SELECT')
   AND has_table_privilege(current_user, c.oid, 'SELECT WITH GRANT OPTION')
UNION ALL
SELECT 'function', p.oid::regprocedure::text FROM pg_catalog.pg_proc p
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = $2 AND p.proname = $4 AND NOT has_function_privilege($1, p.oid, 'EXECUTE')
   AND has_function_privilege(current_user, p.oid, 'EXECUTE WITH GRANT OPTION')
"""


_CAPABILITIES = """
WITH base AS (SELECT oid FROM pg_roles WHERE rolname = coalesce($1, session_user)),
roles AS (SELECT r.oid, r.rolname, r.rolsuper FROM pg_roles r, base
           WHERE pg_has_role(base.oid, r.oid, 'MEMBER')),
tables AS (SELECT name, to_regclass(name) AS rel FROM unnest($2::text[]) AS t(name)),
ns AS (SELECT coalesce((SELECT relnamespace FROM pg_class WHERE oid = to_regclass('documents')),
                       (SELECT oid FROM pg_namespace WHERE nspname = current_schema())) AS oid)
SELECT r.rolname, 'is a superuser' AS what FROM roles r WHERE r.rolsuper
UNION ALL
SELECT r.rolname, 'may write to ' || t.name FROM roles r, tables t
 WHERE t.rel IS NOT NULL
   AND has_table_privilege(r.oid, t.rel, 'INSERT, UPDATE, DELETE, TRUNCATE, TRIGGER')
UNION ALL
SELECT r.rolname, 'may create objects in schema ' || n.nspname
  FROM roles r, ns JOIN pg_namespace n ON n.oid = ns.oid
 WHERE has_schema_privilege(r.oid, ns.oid, 'CREATE')
UNION ALL
SELECT r.rolname, 'may create schemas in database ' || current_database() FROM roles r
 WHERE has_database_privilege(r.oid, current_database(), 'CREATE')
UNION ALL
SELECT r.rolname, 'may use sequence ' || c.relname FROM roles r, ns
  JOIN pg_class c ON c.relnamespace = ns.oid AND c.relkind = 'S'
 WHERE has_sequence_privilege(r.oid, c.oid, 'USAGE, UPDATE')
UNION ALL
SELECT r.rolname, 'may run SECURITY DEFINER function ' || p.proname FROM roles r, ns
  JOIN pg_proc p ON p.pronamespace = ns.oid AND p.prosecdef
 WHERE has_function_privilege(r.oid, p.oid, 'EXECUTE')
 ORDER BY 1, 2
"""


async def write_capabilities(conn: asyncpg.Connection, role: str | None = None) -> list[str]:
    """How ``role`` (default: the session's user) could write to docstore's database, through
    itself or a role it is a member of (``SET ROLE``): superuser, write privileges on
    docstore's tables, ``CREATE`` on docstore's schema or the database, sequences, SECURITY
    DEFINER functions. ``[]``: the server refuses its writes (temporary tables and large
    objects aside, which any role may create outside a read-only transaction).
    """
    rows = await conn.fetch(_CAPABILITIES, role, list(DOCSTORE_TABLES))
    return [f"role {r['rolname']} {r['what']}" for r in rows]


# Functions that write server files, gated by EXECUTE (revoked from PUBLIC; a grant gives it).
_FILE_WRITERS = ("lo_export", "pg_file_write", "pg_file_rename", "pg_file_unlink")

# The session's login role (pg_stat_activity keeps it through SET SESSION AUTHORIZATION,
# which that role could undo), and every role it is a member of (SET ROLE).
_FILE_CAPABILITIES = """
WITH base AS (
  SELECT r.oid, r.rolname FROM pg_catalog.pg_roles r
   WHERE r.rolname = coalesce($1, (SELECT a.usename::text FROM pg_catalog.pg_stat_activity a
                                    WHERE a.pid = pg_catalog.pg_backend_pid()), session_user)),
roles AS (SELECT r.oid, r.rolname, r.rolsuper, r.rolreplication
            FROM pg_catalog.pg_roles r, base
           WHERE pg_catalog.pg_has_role(base.oid, r.oid, 'MEMBER')),
super AS (SELECT rolname FROM roles WHERE rolsuper)
SELECT rolname, 'is a superuser' AS what FROM super
UNION ALL
SELECT b.rolname, 'has the privileges of ' || p.rolname FROM base b, pg_catalog.pg_roles p
 WHERE NOT EXISTS (SELECT FROM super)
   AND p.rolname IN ('pg_write_server_files', 'pg_execute_server_program')
   AND pg_catalog.pg_has_role(b.oid, p.oid, 'MEMBER')
UNION ALL
SELECT r.rolname, 'may create replication slots' FROM roles r
 WHERE NOT EXISTS (SELECT FROM super) AND r.rolreplication
UNION ALL
SELECT r.rolname, 'may run ' || p.oid::regprocedure::text FROM roles r, pg_catalog.pg_proc p
 WHERE NOT EXISTS (SELECT FROM super) AND p.proname = ANY($2::text[])
   AND pg_catalog.has_function_privilege(r.oid, p.oid, 'EXECUTE')
 ORDER BY 1, 2
"""


async def file_capabilities(conn: asyncpg.Connection, role: str | None = None) -> list[str]:
    """How ``role`` (default: the session's login role) could write the server's files or run
    programs on it, through itself or a role it is a member of — which PostgreSQL allows inside
    a read-only transaction: superuser, ``pg_write_server_files`` / ``pg_execute_server_program``
    (``COPY … TO '/path'`` / ``TO PROGRAM``), ``REPLICATION`` (replication slots), ``EXECUTE`` on
    ``lo_export`` or adminpack's file functions. ``[]``: the server refuses all of that, and a
    read-only store's client guarantee (:class:`~docstore.readonly.ReadOnlyConnection`) holds.
    """
    rows = await conn.fetch(_FILE_CAPABILITIES, role, list(_FILE_WRITERS))
    return [f"role {r['rolname']} {r['what']}" for r in rows]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def reader_roles(conn: asyncpg.Connection) -> list[str]:
    """The reader roles of this database: login roles (not superusers) that are read-only by
    default (``default_transaction_read_only``, as :func:`create_reader_role` sets it) and may
    read ``documents`` and ``document_sources``."""
    return [r[0] for r in await conn.fetch(_READER_ROLES)]


async def legacy_views(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    """The compatibility views installed in this database, as ``(schema, view)``."""
    rows = await conn.fetch(_LEGACY_VIEWS, list(LEGACY_VIEWS), LEGACY_VIEW_GUARD)
    return [(r[0], r[1]) for r in rows]


async def grant_legacy_views(
    conn: asyncpg.Connection, schema: str, views: Sequence[str], roles: Sequence[str]
) -> None:
    """Let each of ``roles`` read the compatibility ``views`` of ``schema``: ``USAGE`` on the
    schema, ``SELECT`` on the views, ``EXECUTE`` on the schema's ``search_similar_docs`` —
    what a role lacks of what the connected role may grant (the views run with their owner's
    privileges, so a role gets no more than the tables it can already read: give it only to
    reader roles, :func:`reader_roles`). Runs in the caller's transaction."""
    for role in roles:
        missing = await conn.fetch(_MISSING_GRANTS, role, schema, list(views), LEGACY_FUNCTION)
        for kind, obj in missing:
            privilege = {"schema": "USAGE", "table": "SELECT", "function": "EXECUTE"}[kind]
            target = "" if kind == "table" else f"{kind.upper()} "
            await conn.execute(f"GRANT {privilege} ON {target}{obj} TO {_ident(role)}")


def scram_verifier(password: str, *, iterations: int = 4096, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (printable ASCII), so a
    password can be set without its text reaching the server or its logs."""
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


async def create_reader_role(conn: asyncpg.Connection, name: str, password: str) -> None:
    """Create (or, if it exists and cannot write, update) the login role ``name`` that may read
    docstore's tables and write nothing: the server-side read-only guarantee.

    Grants ``CONNECT`` on the database, ``USAGE`` on docstore's schema, ``SELECT`` on
    docstore's tables, ``EXECUTE`` on the schema's functions, and default privileges so tables
    the connected role creates in that schema later are readable too; and ``SELECT`` on the
    legacy compatibility views already installed, in any schema (with ``USAGE`` on it:
    :func:`grant_legacy_views`; ``install_views`` grants views installed later). The role also
    gets ``default_transaction_read_only = on``. A printable-ASCII password is sent as a
    SCRAM-SHA-256 verifier, never as text.

    Run it connected as the role that owns docstore's tables (it needs to grant on them and
    to create roles). Raises :class:`SchemaError` when docstore's schema is not applied,
    :class:`ConfigurationError` when the role would still be able to write (an existing
    writer, or grants to ``PUBLIC``: nothing is changed then), :class:`ValidationError` for an
    unusable name or password.
    """
    if not name or len(name.encode()) > 63 or "\x00" in name:
        raise ValidationError("a role name is 1 to 63 bytes", field="name")
    if not password or "\x00" in password:
        raise ValidationError("the reader role needs a password", field="password")
    schema: str | None = await conn.fetchval(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = to_regclass('documents')"
    )
    if schema is None:
        raise SchemaError("docstore's schema is not applied here: run `docstore init` first")
    if all(32 <= ord(c) < 127 for c in password):
        secret = "'" + scram_verifier(password) + "'"
    else:  # SASLprep would apply: let the server hash it
        secret = str(await conn.fetchval("SELECT quote_literal($1)", password))
    role, s = _ident(name), _ident(schema)
    database = _ident(str(await conn.fetchval("SELECT current_database()")))
    tables = [
        r["name"]
        for r in await conn.fetch(
            "SELECT name FROM unnest($1::text[]) AS t(name) WHERE to_regclass(name) IS NOT NULL",
            list(DOCSTORE_TABLES),
        )
    ]
    async with conn.transaction():
        if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name):
            if await write_capabilities(conn, name):
                raise ConfigurationError(
                    f"role {name} exists and can write: pick another name for the reader role"
                )
            await conn.execute(f"ALTER ROLE {role} WITH LOGIN PASSWORD {secret}")
        else:
            await conn.execute(
                f"CREATE ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
                f" NOREPLICATION NOBYPASSRLS PASSWORD {secret}"
            )
        await conn.execute(f"ALTER ROLE {role} SET default_transaction_read_only = on")
        await conn.execute(f"GRANT CONNECT ON DATABASE {database} TO {role}")
        await conn.execute(f"GRANT USAGE ON SCHEMA {s} TO {role}")
        await conn.execute(
            f"GRANT SELECT ON {', '.join(f'{s}.{_ident(t)}' for t in tables)} TO {role}"
        )
        await conn.execute(f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {s} TO {role}")
        await conn.execute(
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT ON TABLES TO {role}"
        )
        installed: dict[str, list[str]] = {}
        for view_schema, view in await legacy_views(conn):
            installed.setdefault(view_schema, []).append(view)
        for view_schema, views in installed.items():
            await grant_legacy_views(conn, view_schema, views, [name])
        problems = await write_capabilities(conn, name)
        if problems:
            raise ConfigurationError(
                f"role {name} would still be able to write ({'; '.join(problems)}): revoke "
                "those privileges (from PUBLIC too) and try again"
            )
    logger.info("reader role %s can read docstore's tables in schema %s", name, schema)
