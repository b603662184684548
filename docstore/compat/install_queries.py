"""The catalog queries :mod:`docstore.compat.installs` finds and checks installs with (pure SQL).

An install is *this store's* when its ``crates`` or ``doc_embeddings`` view reads this store's
``documents`` / ``document_sources`` (``pg_depend``: the tables the connection resolves), or,
its views gone, when its ``search_similar_docs()`` resolves names in the schema of this
store's ``documents`` (the function's ``SET search_path``) — beside the views' write guard,
which only an install of docstore makes, in both cases. Another tenant's install in the same
database, a lookalike of another role's, the legacy database's own function are not.

*Held*: what the database holds of an install, as text that does not depend on the session
(its ``search_path`` or ``standard_conforming_strings``): the function's source, settings,
security and volatility; the guard functions'; the views' parsed queries and options
(``pg_rewrite``, not ``pg_get_viewdef``, whose literals depend on the session), their write
rules and triggers. A missing piece is ``-``. The parsed queries hold OIDs and parse
positions: a restored database (``pg_dump``, ``pg_upgrade``) reads stale once and is
refreshed by its owner; so does a view re-created by hand with the same text.
"""

from __future__ import annotations

from docstore.compat import views

GUARDS = (views.GUARD_FUNCTION, views.RULE_FUNCTION)
_GUARD = views.GUARD_FUNCTION
_SIGNATURE = """p.pronargs = 3 AND p.proargtypes[1] = 'varchar'::regtype
       AND p.proargtypes[2] = 'int4'::regtype
       AND (SELECT t.typname FROM pg_type t WHERE t.oid = p.proargtypes[0]) = 'vector'"""

ANY_INSTALL = f"SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = '{_GUARD}')"
"""Whether the database may hold any install (~1 ms on a new session; :data:`INSTALLS` ~4)."""

_HELD = """md5(concat_ws(E'\\n;\\n',
         coalesce(f.prosrc, '-'), coalesce(f.proconfig::text, '-'),
         coalesce(f.prosecdef::text || f.provolatile::text || f.proisstrict::text
                  || f.proparallel::text, '-'),
         coalesce((SELECT string_agg(g.proname || ' ' || g.prosrc || ' '
                                     || coalesce(g.proconfig::text, '') || g.prosecdef::text,
                                     E'\\n' ORDER BY g.proname)
                     FROM pg_proc g
                    WHERE g.pronamespace = n.oid AND g.proname = ANY($3::text[])), '-'),
         array_to_string(ARRAY(
             SELECT coalesce((SELECT r.ev_action::text || ' ' || coalesce(c.reloptions::text, '')
                                FROM pg_class c
                                JOIN pg_rewrite r ON r.ev_class = c.oid AND r.rulename = '_RETURN'
                               WHERE c.oid = to_regclass(format('%I.%I', n.nspname, v.name))),
                             '-')
               FROM unnest($2::text[]) WITH ORDINALITY v(name, i) ORDER BY v.i), E'\\n'),
         coalesce((SELECT string_agg(c.relname || ' ' || r.rulename || ' ' || r.ev_type::text
                                     || r.is_instead::text || ' ' || r.ev_action::text,
                                     E'\\n' ORDER BY c.relname, r.rulename)
                     FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
                    WHERE c.relnamespace = n.oid AND c.relname = ANY($2::text[])
                      AND r.rulename <> '_RETURN'), '-'),
         coalesce((SELECT string_agg(c.relname || ' ' || t.tgname || ' ' || t.tgtype || ' '
                                     || t.tgenabled::text || ' ' || g.proname,
                                     E'\\n' ORDER BY c.relname, t.tgname)
                     FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                     JOIN pg_proc g ON g.oid = t.tgfoid
                    WHERE c.relnamespace = n.oid AND c.relname = ANY($2::text[])
                      AND NOT t.tgisinternal), '-')))"""

INSTALLS = f"""
WITH docs AS MATERIALIZED (
  SELECT quote_ident(n.nspname) AS ident
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.oid = 'documents'::regclass
), fns AS (
  SELECT p.oid, p.pronamespace, p.prosrc, p.proconfig, p.prosecdef, p.provolatile,
         p.proisstrict, p.proparallel
    FROM pg_proc p
   WHERE p.proname = 'search_similar_docs' AND {_SIGNATURE}
), guarded AS (
  SELECT DISTINCT pronamespace AS nsp FROM pg_proc WHERE proname = '{_GUARD}'
), mine AS (
  -- from the dependencies on this store's two tables (indexed): the cost follows this
  -- store's installs, not every tenant's in the database
  SELECT c.relnamespace AS nsp FROM pg_depend d
    JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
    JOIN pg_class c ON c.oid = r.ev_class
    JOIN guarded ON guarded.nsp = c.relnamespace
   WHERE d.refclassid = 'pg_class'::regclass
     AND d.refobjid IN ('documents'::regclass, 'document_sources'::regclass)
     AND c.relkind = 'v' AND c.relname IN ('crates', 'doc_embeddings')
  UNION
  SELECT f.pronamespace FROM fns f JOIN guarded ON guarded.nsp = f.pronamespace, docs
   WHERE EXISTS (SELECT 1 FROM unnest(f.proconfig) cfg
                  WHERE starts_with(cfg, 'search_path=' || docs.ident || ','))
)
SELECT n.nspname AS schema,
       ARRAY[obj_description(f.oid, 'pg_proc'),
             obj_description(to_regclass(format('%I.doc_embeddings', n.nspname)), 'pg_class'),
             obj_description(to_regclass(format('%I.crates', n.nspname)), 'pg_class')]
         AS stamps,
       f.prosrc AS source,
       ARRAY({views.FUNCTION_SEARCH_PATH})::text[] AS path,
       {_HELD} AS held
  FROM mine m
  JOIN pg_namespace n ON n.oid = m.nsp
  LEFT JOIN fns f ON f.pronamespace = m.nsp
 WHERE $1::text IS NULL OR n.nspname = $1
 ORDER BY n.nspname
"""
"""This store's installs (``$1``: one schema, or NULL for all; ``$2``: the view names,
``$3``: the guard functions'): schema, the comments that may hold its stamp (the
function's, the two views'; a DBA's own comment is not a stamp), the
function's source, the function's search path as this docstore would set it, and an md5 of
what the database holds (:data:`_HELD`: the parsed queries' text runs to ~100 KB an install,
not worth sending; md5 detects a change, it guards nothing). Its path is text[]: asyncpg
would look ``name[]`` up on every new connection (~6 ms)."""

_GRANTEE = "CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END"
_OPTION = "CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END"
# An install's views and function ($1 its schema, $2 the view names): kind as acldefault()
# takes it, the object as GRANT names it, its ACL (NULL: the built-in default) and owner.
_OBJECTS = """
SELECT c.oid, 'r'::"char" AS kind, format('TABLE %I.%I', n.nspname, c.relname) AS obj,
       c.relacl AS acl, c.relowner AS owner
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relname = ANY($2::text[])
UNION ALL
SELECT p.oid, 'f', format('FUNCTION %I.%I(%s)', n.nspname, p.proname,
                          pg_get_function_identity_arguments(p.oid)), p.proacl, p.proowner
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = $1 AND p.proname = 'search_similar_docs'
"""
GRANTS = f"""
SELECT o.obj, quote_ident(pg_get_userbyid(o.owner)) AS owner,
       ARRAY(SELECT format('GRANT %s ON %s TO %s%s', a.privilege_type, o.obj, {_GRANTEE},
                           {_OPTION})
               FROM aclexplode(coalesce(o.acl, acldefault(o.kind, o.owner))) a
              WHERE a.grantee <> o.owner) AS grants,
       ARRAY(SELECT format('GRANT %s (%I) ON %s TO %s%s', a.privilege_type, t.attname, o.obj,
                           {_GRANTEE}, {_OPTION})
               FROM pg_attribute t, aclexplode(t.attacl) a
              WHERE o.kind = 'r' AND t.attrelid = o.oid AND t.attnum > 0
                AND NOT t.attisdropped AND a.grantee <> o.owner) AS column_grants
  FROM ({_OBJECTS}) o
"""
"""What a drop and re-create of an install must give back (``$1`` its schema, ``$2`` the view
names), per view and the function: its owner, the grants of its ACL — the built-in default's
where it has none of its own (a function's ``EXECUTE`` for ``PUBLIC``) — and its columns'
grants. The grantor becomes the role that re-creates (a grant chain is flattened)."""
REVOKES = f"""
SELECT o.obj,
       ARRAY(SELECT DISTINCT format('REVOKE ALL ON %s FROM %s', o.obj, {_GRANTEE})
               FROM aclexplode(coalesce(o.acl, acldefault(o.kind, o.owner))) a
              WHERE a.grantee <> o.owner) AS revokes
  FROM ({_OBJECTS}) o
"""
"""Per re-created view and function, what clears every privilege its owner's default
privileges (``ALTER DEFAULT PRIVILEGES``) or the built-in default gave, before
:data:`GRANTS`' are given back."""
