"""Review 2026-12-07 (cutover rehearsal): `docstore migrate --dry-run` said GO (exit 0) for
targets the real run then refused at once. Every case is driven through both the dry run and
the real run: the dry run blocks exactly when the run refuses, with the run's message."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from typer.testing import CliRunner

import docstore
from docstore.cli import app
from docstore.errors import DocstoreError, MigrationError, ReadOnlyError, SchemaError
from docstore.migrate import Migrator, state
from docstore.migrate.lock import MIGRATION_LOCK_KEY
from docstore.models import MAX_CONTENT_CHARS
from docstore.schema.runner import LATEST_VERSION
from docstore.testing.plan import PLAN_SCHEMA  # the plan's Phase 1.1, run by hand
from tests.conftest import PgCluster
from tests.legacy_db import legacy_database, legacy_execute

DOCS = 30
PASSWORD = "Pf-1207-pw"


@pytest.fixture
def legacy_url(pg: PgCluster) -> Iterator[str]:
    yield from legacy_database(pg, crates=4, docs=DOCS)


class Role:
    """A LOGIN role with a password, and the databases a test made for it (dropped with it)."""

    def __init__(self, pg: PgCluster) -> None:
        self.pg = pg
        self.name = "pf_" + uuid.uuid4().hex[:8]
        self.databases: list[str] = []
        pg.run(f"CREATE ROLE {self.name} LOGIN PASSWORD '{PASSWORD}'")

    async def database(self, *, template: bool = False, owned: bool = False) -> str:
        """A new database (docstore's schema in it with ``template``), owned by the role with
        ``owned``; returns its admin URL."""
        name = f"pf_{uuid.uuid4().hex[:12]}"
        self.databases.append(name)
        copy = f' TEMPLATE "{self.pg.template}" STRATEGY FILE_COPY' if template else ""
        owner = f" OWNER {self.name}" if owned else ""
        await self.pg.execute(f'CREATE DATABASE "{name}"{copy}{owner}')
        return self.pg.url(name)

    def url(self, admin_url: str) -> str:
        """``admin_url``'s database as this role."""
        parts = urlsplit(admin_url)
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{self.name}:{PASSWORD}@{host}"))

    def drop(self) -> None:
        for name in self.databases:
            self.pg.drop_database(name)
        self.pg.run(f"DROP ROLE {self.name}")


@pytest.fixture
def role(pg: PgCluster) -> Iterator[Role]:
    made = Role(pg)
    yield made
    made.drop()


async def admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def fetchval(url: str, sql: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def dry_run(legacy_url: str, target: str, **options: Any) -> list[str]:
    """The blocking lines of a dry run (``Migrator.run(dry_run=True)``) into ``target``."""
    async with Migrator(legacy_url, target, **options) as m:
        report = await m.run(dry_run=True)
    assert report.dry_run
    return report.preflight.blocking


async def real_run(legacy_url: str, target: str, **options: Any) -> DocstoreError | None:
    """What the real run into ``target`` raised (None: it migrated and validated)."""
    try:
        async with Migrator(legacy_url, target, **options) as m:
            report = await m.run()
    except DocstoreError as exc:
        return exc
    assert report.ok and report.copied_documents == DOCS, report
    return None


async def refused_alike(legacy_url: str, target: str, **options: Any) -> list[str]:
    """The dry run's blocking lines, once the real run refused with exactly them (nothing
    copied: MigrationError before the copy)."""
    blocking = await dry_run(legacy_url, target, **options)
    refused = await real_run(legacy_url, target, **options)
    assert isinstance(refused, MigrationError)
    assert str(refused) == "cannot migrate: " + "; ".join(blocking)
    return blocking


GRANTS = re.compile(r"as their owner \(or a superuser\), (.*); then run again")


# -- a: pgvector missing, and this role may not create it ------------------------------------


async def test_pgvector_this_role_may_not_create_blocks_the_dry_run_as_the_run(
    legacy_url: str, role: Role
) -> None:
    """Was: the dry run warned "the run creates it" and exited 0; the run then failed with
    SchemaError. Now the dry run blocks with the run's SchemaError message; once an
    administrator created pgvector, the database's owner (no superuser) migrates, and the
    dry run says so first."""
    owned = await role.database(owned=True)
    target = role.url(owned)
    blocking = await dry_run(legacy_url, target)
    refused = await real_run(legacy_url, target)
    assert isinstance(refused, SchemaError)
    assert blocking == [str(refused)], blocking
    assert (
        "may not create it: ask an administrator to run `CREATE EXTENSION vector;`" in (blocking[0])
    )
    assert await fetchval(owned, "select to_regclass('docstore_schema_version')") is None

    await admin(owned, "CREATE EXTENSION vector")
    assert await dry_run(legacy_url, target) == []
    assert await real_run(legacy_url, target) is None


# -- b: documents / document_sources made by hand (the plan's Phase 1.1) ----------------------


async def test_tables_of_docstores_names_it_did_not_create_block_the_dry_run_as_the_run(
    legacy_url: str, role: Role
) -> None:
    """Was: GO, then the run's SchemaError (tables not created by docstore). A second run
    (the first left an empty docstore_schema_version behind) is refused the same way."""
    target = await role.database()
    await admin(target, PLAN_SCHEMA)
    for _ in range(2):
        blocking = await dry_run(legacy_url, target)
        refused = await real_run(legacy_url, target)
        assert isinstance(refused, SchemaError)
        assert blocking == [str(refused)], blocking
        assert "already has document_sources and documents" in blocking[0]
        assert "not created by docstore" in blocking[0]
    await admin(target, "DROP TABLE documents, document_sources")
    assert await dry_run(legacy_url, target) == []
    assert await real_run(legacy_url, target) is None


# -- c: a role that may only read docstore's tables ------------------------------------------


async def test_a_select_only_role_blocks_the_dry_run_and_the_grants_it_names_suffice(
    legacy_url: str, role: Role
) -> None:
    """Was: GO, then the run failed on `permission denied for table
    docstore_migration_checkpoints`. Now both name the missing privileges and the GRANTs;
    run as the owner, those GRANTs are all a non-owner role needs to migrate."""
    owner_url = await role.database(template=True)
    await admin(owner_url, f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role.name}")
    target = role.url(owner_url)
    blocking = await refused_alike(legacy_url, target)
    (problem,) = blocking
    assert f"the target's role {role.name} lacks privileges the migration needs" in problem
    assert (
        "INSERT, UPDATE, DELETE on documents, document_sources, source_population_jobs,"
        " docstore_migration_checkpoints; USAGE on sequence public." in problem
    )
    found = GRANTS.search(problem)
    assert found is not None, problem
    assert await fetchval(owner_url, "select count(*) from documents") == 0

    for grant in found[1].split("; "):
        await admin(owner_url, grant)
    assert await dry_run(legacy_url, target) == []
    assert await real_run(legacy_url, target) is None


# -- the other ways connect() or the copy refuse a target -------------------------------------


async def test_no_create_on_the_schema_blocks_a_target_docstore_must_initialise(
    legacy_url: str, role: Role
) -> None:
    """A role that may not create tables (PostgreSQL 15+ grants no CREATE on public) in a
    database with pgvector but no docstore schema: the run fails creating it."""
    owner_url = await role.database()
    await admin(owner_url, "CREATE EXTENSION vector")
    target = role.url(owner_url)
    blocking = await dry_run(legacy_url, target)
    assert await real_run(legacy_url, target) is not None
    (problem,) = blocking
    assert "may not create tables in schema public, which the run does" in problem
    assert f"GRANT CREATE ON SCHEMA public TO {role.name}" in problem

    await admin(owner_url, f"GRANT CREATE ON SCHEMA public TO {role.name}")
    assert await dry_run(legacy_url, target) == []
    assert await real_run(legacy_url, target) is None


async def test_pending_schema_migrations_a_non_owner_may_not_apply_block(
    legacy_url: str, role: Role
) -> None:
    """A target one schema version behind, migrated by a role with every DML grant but not
    the tables' owner: the run fails applying the migration; `docstore init` as the owner
    first, and it migrates."""
    owner_url = await role.database(template=True)
    await admin(
        owner_url,
        f"DELETE FROM docstore_schema_version WHERE version = {LATEST_VERSION};"
        f" GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role.name};"
        f" GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role.name}",
    )
    target = role.url(owner_url)
    blocking = await dry_run(legacy_url, target)
    assert await real_run(legacy_url, target) is not None
    (problem,) = blocking
    assert f"schema is at version {LATEST_VERSION - 1} and this docstore's at" in problem
    assert "run `docstore init --url ...` as postgres" in problem

    async with docstore.connect(owner_url):  # `docstore init` as the owner
        pass
    assert await dry_run(legacy_url, target) == []
    assert await real_run(legacy_url, target) is None


async def test_a_read_only_target_database_blocks_the_dry_run_as_the_run(
    legacy_url: str, role: Role
) -> None:
    """default_transaction_read_only on the target database (READ_ONLY unset): the run
    raised ReadOnlyError while the dry run said GO."""
    target = await role.database(template=True)
    name = urlsplit(target).path.lstrip("/")
    await role.pg.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    blocking = await dry_run(legacy_url, target)
    refused = await real_run(legacy_url, target)
    assert isinstance(refused, ReadOnlyError)
    assert blocking == [str(refused)], blocking


async def test_build_index_by_a_role_not_owning_documents_blocks_the_dry_run_as_the_run(
    legacy_url: str, role: Role
) -> None:
    """Was: GO, then `--build-index` copied and verified every document and failed at the
    end on `must be owner of table documents` (CREATE INDEX is the owner's), validation not
    run. Now both refuse before copying, naming the indexes and their owner; without
    `--build-index` the same role migrates, and once the owner built the indexes (valid:
    nothing left to build) `--build-index` does too."""
    owner_url = await role.database(template=True)
    await admin(
        owner_url,
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role.name};"
        f" GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role.name}",
    )
    target = role.url(owner_url)
    blocking = await refused_alike(legacy_url, target, build_index=True)
    (problem,) = blocking
    assert problem.startswith(
        "--build-index builds indexes on documents (documents_embedding_hnsw_cosine,"
        " idx_documents_content_fts), which only its owner postgres (or a superuser)"
        f" may, not {role.name}: migrate without --build-index, then as postgres run"
    ), problem
    assert await fetchval(owner_url, "select count(*) from documents") == 0
    assert await dry_run(legacy_url, target) == []  # only --build-index needs the owner

    async with docstore.connect(owner_url) as owner:  # `docstore index create [--text]`
        await owner.create_vector_index()
        await owner.create_text_index()
    await admin(owner_url, f"REVOKE INSERT ON docstore_search_calibration FROM {role.name}")
    (problem,) = await dry_run(legacy_url, target, build_index=True)
    assert "(INSERT on docstore_search_calibration)" in problem, problem
    assert f"GRANT INSERT ON docstore_search_calibration TO {role.name}" in problem, problem
    await admin(owner_url, f"GRANT INSERT ON docstore_search_calibration TO {role.name}")
    assert await dry_run(legacy_url, target, build_index=True) == []
    assert await real_run(legacy_url, target, build_index=True) is None


async def test_build_index_by_the_owner_of_documents_without_create_on_its_schema_blocks(
    legacy_url: str, role: Role
) -> None:
    """Review 91: a role owning documents but without CREATE on its schema (PostgreSQL 15+
    grants none on public) passed the dry run, then failed after the copy on `permission
    denied for schema public` (CREATE INDEX needs it). Also: a fresh build deletes the old
    graph's calibration, and the calibration reads recent queries (DELETE on
    docstore_search_calibration, SELECT on docstore_search_queries)."""
    owner_url = await role.database(template=True)
    await admin(
        owner_url,
        f"ALTER TABLE documents OWNER TO {role.name};"
        " REVOKE CREATE ON SCHEMA public FROM PUBLIC;"
        f" GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role.name};"
        f" GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role.name};"
        f" REVOKE DELETE ON docstore_search_calibration FROM {role.name};"
        f" REVOKE SELECT ON docstore_search_queries FROM {role.name}",
    )
    target = role.url(owner_url)
    blocking = await refused_alike(legacy_url, target, build_index=True)
    assert any(
        f"which needs CREATE on schema public, which {role.name} lacks: GRANT CREATE ON SCHEMA"
        f" public TO {role.name}" in problem
        for problem in blocking
    ), blocking
    assert any(
        "DELETE on docstore_search_calibration" in p and "SELECT on docstore_search_queries" in p
        for p in blocking
    ), blocking
    assert await fetchval(owner_url, "select count(*) from documents") == 0
    await admin(
        owner_url,
        f"GRANT CREATE ON SCHEMA public TO {role.name};"
        f" GRANT DELETE ON docstore_search_calibration TO {role.name};"
        f" GRANT SELECT ON docstore_search_queries TO {role.name}",
    )
    assert await dry_run(legacy_url, target, build_index=True) == []
    assert await real_run(legacy_url, target, build_index=True) is None


@pytest.mark.parametrize("schema", ["none", "behind"])
async def test_a_run_that_applies_no_schema_blocks_where_the_target_lacks_it(
    schema: str, legacy_url: str, role: Role, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With DOCSTORE_AUTO_MIGRATE=false the run neither creates nor upgrades docstore's
    schema. Was, without one: the dry run said "the run creates it" (exit 0) and the run
    failed on `relation "docstore_migration_checkpoints" does not exist`; one version behind,
    both went ahead on the old schema. Now both stop before writing anything and say to run
    `docstore init`; after it, both pass."""
    monkeypatch.setenv("DOCSTORE_AUTO_MIGRATE", "false")
    target = await role.database(template=schema == "behind")
    if schema == "behind":
        await admin(target, f"DELETE FROM docstore_schema_version WHERE version = {LATEST_VERSION}")
    blocking = await refused_alike(legacy_url, target)
    (problem,) = blocking
    if schema == "none":
        assert problem == (
            "the target has no docstore schema, and the run does not create it"
            " (DOCSTORE_AUTO_MIGRATE is false): run `docstore init --url ...` and run again"
        )
        assert await fetchval(target, "select to_regclass('docstore_schema_version')") is None
    else:
        assert problem.startswith(
            f"the target's docstore schema is at version {LATEST_VERSION - 1} and this"
            f" docstore's at {LATEST_VERSION}, and the run does not apply the migrations in"
            " between (DOCSTORE_AUTO_MIGRATE is false): run `docstore init"
        ), problem
        assert await fetchval(target, "select count(*) from documents") == 0
    async with docstore.connect(target, migrate=True):  # `docstore init`
        pass
    assert await dry_run(legacy_url, target) == []
    assert await real_run(legacy_url, target) is None


@pytest.mark.parametrize("schema", ["none", "behind"])
def test_the_cli_dry_run_passes_where_its_run_creates_the_schema(
    schema: str, legacy_url: str, role: Role, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 91: the CLI's dry run passes the Migrator a Store it connected without the
    schema, and its run connects with it (``migrate=True``, DOCSTORE_AUTO_MIGRATE or not): a
    dry run that refused such a target said NO-GO where the run migrates."""
    monkeypatch.setenv("DOCSTORE_AUTO_MIGRATE", "false")
    monkeypatch.setenv("COLUMNS", "200")

    async def target() -> str:
        url = await role.database(template=schema == "behind")
        if schema == "behind":
            await admin(
                url, f"DELETE FROM docstore_schema_version WHERE version = {LATEST_VERSION}"
            )
        return url

    args = ["migrate", "--source", legacy_url, "--target", asyncio.run(target())]
    dry = CliRunner().invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output


async def test_targets_the_run_migrates_into_pass_the_dry_run(legacy_url: str, role: Role) -> None:
    """No false NO-GO: an empty database as a superuser (pgvector and the schema created),
    an initialised one as its owner."""
    empty = await role.database()
    initialised = await role.database(template=True)
    for target in (empty, initialised):
        assert await dry_run(legacy_url, target) == []
        assert await real_run(legacy_url, target) is None
    # and again, into what the first run left
    assert await dry_run(legacy_url, empty) == []


# -- d: content over docstore's own limit ------------------------------------------------------


async def test_content_over_docstores_limit_is_copied(legacy_url: str, role: Role) -> None:
    """Legacy content over MAX_CONTENT_CHARS: the copy takes it as it is (binary COPY, no
    model), validation passes; nothing blocks it, and the dry run warns that docstore's own
    writes refuse such a document (the rehearsal: it said nothing)."""
    target = await role.database(template=True)
    await legacy_execute(
        legacy_url,
        f"UPDATE doc_embeddings SET content = repeat('x', {MAX_CONTENT_CHARS + 1}) WHERE id = 2",
    )
    async with Migrator(legacy_url, target) as m:
        report = await m.run(dry_run=True)
    assert report.preflight.blocking == []
    assert [w for w in report.preflight.warnings if "characters" in w] == [
        f"1 legacy document with a content over {MAX_CONTENT_CHARS:,} characters (doc_embeddings"
        " ids 2): copied as they are, but docstore's own writes refuse such a document"
        " (re-writing it unchanged raises ValidationError); fix it in the legacy database if"
        " that matters"
    ]
    assert await real_run(legacy_url, target) is None
    length = await fetchval(
        target, "select max(char_length(content)) from documents where metadata->>'legacy_id' = '2'"
    )
    assert length == MAX_CONTENT_CHARS + 1


# -- the CLI: exit 1 on both sides -------------------------------------------------------------


@pytest.mark.parametrize("case", ["pgvector", "plan-tables", "select-only"])
def test_cli_dry_run_exits_1_where_the_run_does(
    case: str, legacy_url: str, role: Role, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from docstore.cli import app

    monkeypatch.setenv("COLUMNS", "200")

    async def target() -> str:
        if case == "pgvector":
            return role.url(await role.database(owned=True))
        if case == "plan-tables":
            url = await role.database()
            await admin(url, PLAN_SCHEMA)
            return url
        url = await role.database(template=True)
        await admin(url, f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role.name}")
        return role.url(url)

    args = ["migrate", "--source", legacy_url, "--target", asyncio.run(target())]
    dry = CliRunner().invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 1, dry.output
    assert "blocking" in dry.output and "preflight found what blocks" in dry.output
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 1, run.output
    assert "error:" in run.output and "Traceback" not in run.output


async def test_the_dry_run_names_documents_written_in_docstore_the_run_replaces(
    legacy_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rehearsal: a document written in docstore before the migration, at the key of a
    legacy document, was replaced by the legacy row without a word; the dry run only said
    "2 documents of this doc_type". It names the documents the run replaces now (those at
    keys the legacy database does not hold are kept, and not named), however many there are
    (their keys go to the legacy database a page at a time: review 89)."""
    monkeypatch.setattr(state, "REPLACED_PAGE", 2)
    async with docstore.connect(database_url) as store:
        await store.documents.upsert_many(
            docstore.Document(source_name=source, doc_path=path, content="written in docstore")
            for source, path in (
                ("crate1", "crate1/module1/index.html"),
                ("crate1", "mine"),
                ("crate2", "crate2/module2/index.html"),
                ("crate0", "crate0/module3/index.html"),
                ("crate0", "mine too"),
            )
        )
    async with Migrator(legacy_url, database_url) as m:
        report = await m.run(dry_run=True)
    replaced = [w for w in report.preflight.warnings if "written in docstore" in w]
    assert replaced == [
        "3 documents written in docstore (not migrated) have the key of a legacy document"
        " (crate0/crate0/module3/index.html, crate1/crate1/module1/index.html,"
        " crate2/crate2/module2/index.html): the run replaces them with the legacy rows; keep a"
        " copy, or move them to another path, if that matters"
    ]
    legacy = await asyncpg.connect(legacy_url)
    try:
        async with docstore.connect(database_url) as store:
            found = await state.replaced_documents(legacy, store, "rust", shown=1)
        assert found == (3, ["crate0/crate0/module3/index.html"])
    finally:
        await legacy.close()
    async with Migrator(legacy_url, database_url) as m:
        assert (await m.run()).ok
    async with docstore.connect(database_url) as store:
        mine = await store.documents.get_by_key("rust", "crate1", "mine")
        assert mine is not None and mine.content == "written in docstore"


async def test_validate_says_a_migration_is_running_instead_of_listing_mismatches(
    legacy_url: str, database_url: str, empty_database_url: str
) -> None:
    """The rehearsal: `docstore validate` while a migration ran printed "validation: FAILED"
    and a long list of mismatches (half a copy). It says a migration is running now."""
    async with Migrator(legacy_url, database_url) as m:
        assert (await m.run()).ok
    running = await asyncpg.connect(database_url)
    try:
        assert await running.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_KEY)
        pid = await running.fetchval("SELECT pg_backend_pid()")
        async with Migrator(legacy_url, database_url) as m:
            with pytest.raises(MigrationError, match=f"running .* server process {pid}"):
                await m.validate()
    finally:
        await running.close()
    async with Migrator(legacy_url, database_url) as m:
        assert (await m.validate()).ok
    # review 89: a migration into another database on the same server is not one into this
    # target (an advisory lock belongs to its database; pg_locks lists the server's)
    elsewhere = await asyncpg.connect(empty_database_url)
    try:
        assert await elsewhere.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_KEY)
        async with Migrator(legacy_url, database_url) as m:
            assert (await m.validate()).ok
    finally:
        await elsewhere.close()


async def test_a_dry_run_into_a_new_database_warns_of_no_unreadable_calibration(
    legacy_url: str, empty_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The rehearsal: a dry run against a database docstore had not initialised yet logged
    "search calibration unreadable … run `docstore init`" — its health check read a table
    the run was about to create. ``store.health()`` reads no calibration there now."""
    async with Migrator(legacy_url, empty_database_url) as m:
        report = await m.run(dry_run=True)
    assert report.preflight.target_schema_version is None
    assert not [r for r in caplog.records if "calibration unreadable" in r.getMessage()]
