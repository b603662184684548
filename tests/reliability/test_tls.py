"""TLS to PostgreSQL through docstore's public API: sslmode, sslrootcert, certificate failures.

The embedded PostgreSQL has no OpenSSL, so a real TLS endpoint is put in front of it: the
proxy of ``tls_proxy.py`` answers the SSLRequest, completes the handshake with a certificate
made here by ``trustme``, and relays to the real server; it refuses plaintext clients, so
whatever works through it went over TLS (and the proxy records each completed handshake).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import asyncpg
import numpy as np
import pytest
import trustme

import docstore
from docstore import Document, Migrator
from docstore.errors import DatabaseUnavailableError, MigrationError
from docstore.failures import is_transient
from tests.conftest import PgCluster, error_texts
from tests.legacy_db import build_legacy
from tests.reliability.tls_proxy import TlsProxy, Upstream, running_proxy

BOUND = 60.0  # seconds any one test may take before it fails instead of hanging CI
TLS_ROLE = "docstore_tls"
TLS_PASSWORD = "tls-S3cret-b9f1"  # a real scram password (embedded server)
LIBPQ_TLS_VARIABLES = ("PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY", "PGSSLCRL")


@dataclass(frozen=True)
class Login:
    user: str
    password: str


@dataclass(frozen=True)
class Certs:
    ca: trustme.CA
    right_ca: Path
    other_ca: Path
    server: trustme.LeafCert  # for 127.0.0.1 and localhost, issued by right_ca
    elsewhere: trustme.LeafCert  # for db.example.internal only, issued by right_ca


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    directory = tmp_path_factory.mktemp("tls")
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "root.crt"))
    other.cert_pem.write_to_path(str(directory / "other-root.crt"))
    return Certs(
        ca=ca,
        right_ca=directory / "root.crt",
        other_ca=directory / "other-root.crt",
        server=ca.issue_cert("127.0.0.1", "localhost"),
        elsewhere=ca.issue_cert("db.example.internal"),
    )


@pytest.fixture(scope="module")
def login(pg: PgCluster) -> Iterator[Login]:
    """A role that authenticates with a scram password, so the password really travels."""
    if pg.embedded is None:  # an external server: its own credentials, whatever they are
        parts = urlsplit(pg.admin_url)
        yield Login(parts.username or "postgres", parts.password or "")
        return
    hba = pg.embedded.pgdata / "pg_hba.conf"
    original = hba.read_text()
    pg.run(f"CREATE ROLE {TLS_ROLE} LOGIN SUPERUSER PASSWORD '{TLS_PASSWORD}'")
    hba.write_text(f"local all {TLS_ROLE} scram-sha-256\n" + original)
    pg.run("SELECT pg_reload_conf()")
    try:
        yield Login(TLS_ROLE, TLS_PASSWORD)
    finally:
        hba.write_text(original)
        pg.run("SELECT pg_reload_conf()", f"DROP ROLE IF EXISTS {TLS_ROLE}")


@pytest.fixture(autouse=True)
def no_ambient_tls_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """asyncpg reads PGSSL* and ~/.postgresql/{root.crt,postgresql.crt}: neither may leak in."""
    for name in LIBPQ_TLS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    return context


@pytest.fixture
async def proxy(pg: PgCluster, certs: Certs) -> AsyncIterator[TlsProxy]:
    async with running_proxy(Upstream.from_url(pg.admin_url), server_context(certs.server)) as p:
        yield p


def tls_url(
    proxy: TlsProxy, login: Login, database: str, *, host: str = "127.0.0.1", **params: str
) -> str:
    userinfo = f"{quote(login.user, safe='')}:{quote(login.password, safe='')}"
    query = urlencode(params, safe="/")
    return f"postgresql://{userinfo}@{host}:{proxy.port}/{database}?{query}"


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def retries(caplog: pytest.LogCaptureFixture) -> int:
    return sum("transient failure" in r.getMessage() for r in caplog.records)


def assert_no_password(
    login: Login, error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    if login.password:  # an external test server may have none
        assert login.password not in error_texts(error)
        assert login.password not in caplog.text


def assert_all_tls(proxy: TlsProxy) -> None:
    assert proxy.connections, "nothing connected through the proxy"
    assert all(c.tls and c.tls_version for c in proxy.connections), proxy.connections


async def fails_fast(
    url: str, caplog: pytest.LogCaptureFixture
) -> tuple[DatabaseUnavailableError, float]:
    """connect(url) with retries allowed; returns its error and how long it took."""
    started = time.perf_counter()
    with caplog.at_level(logging.DEBUG), pytest.raises(DatabaseUnavailableError) as info:
        async with asyncio.timeout(BOUND):
            await docstore.connect(url, retry_attempts=10, migrate=False)
    return info.value, time.perf_counter() - started


async def test_sslmode_require_connects_queries_and_searches_over_tls(
    proxy: TlsProxy, login: Login, database_url: str
) -> None:
    url = tls_url(proxy, login, database_name(database_url), sslmode="require")
    embedding = np.zeros(3072, dtype=np.float32)
    embedding[7] = 1.0
    async with asyncio.timeout(BOUND), docstore.connect(url) as store:
        assert await store.fetchval("select current_user") == login.user
        await store.documents.upsert(
            Document(
                doc_type="rust",
                source_name="tls",
                doc_path="tls/index.html",
                content="encrypted all the way",
                embedding=embedding,
            )
        )
        hits = await store.search(embedding, limit=1, doc_type="rust")
        assert [h.doc_path for h in hits] == ["tls/index.html"]
        assert hits[0].similarity == pytest.approx(1.0)
        async with store.acquire() as conn:  # the client side of a pooled connection
            assert conn._transport.get_extra_info("ssl_object") is not None
    assert_all_tls(proxy)
    assert not any(c.refused for c in proxy.connections)
    assert {c.startup.get("user") for c in proxy.connections} == {login.user}


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_verify_full_with_the_right_ca_connects(
    proxy: TlsProxy, login: Login, certs: Certs, database_url: str, host: str
) -> None:
    url = tls_url(
        proxy,
        login,
        database_name(database_url),
        host=host,
        sslmode="verify-full",
        sslrootcert=str(certs.right_ca),
    )
    async with asyncio.timeout(BOUND), docstore.connect(url) as store:
        assert await store.fetchval("select count(*) from documents") == 0
    assert_all_tls(proxy)


async def test_verify_full_with_another_ca_fails_at_once_saying_why(
    proxy: TlsProxy, login: Login, certs: Certs, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = tls_url(
        proxy,
        login,
        database_name(database_url),
        sslmode="verify-full",
        sslrootcert=str(certs.other_ca),
    )
    error, elapsed = await fails_fast(url, caplog)
    message = str(error)
    assert "server certificate could not be verified" in message, message
    assert "sslrootcert" in message and "CA certificate" in message, message
    assert "127.0.0.1" in message  # which server
    assert retries(caplog) == 0 and elapsed < 5, (retries(caplog), elapsed)
    assert_no_password(login, error, caplog)
    assert not proxy.handshakes  # the client walked away before any byte of PostgreSQL
    assert len(proxy.connections) == 1  # one attempt, no retry


async def test_verify_full_refuses_a_certificate_for_another_host_name(
    pg: PgCluster, login: Login, certs: Certs, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The right CA, but the certificate names db.example.internal, not 127.0.0.1."""
    upstream = Upstream.from_url(pg.admin_url)
    async with running_proxy(upstream, server_context(certs.elsewhere)) as proxy:
        database = database_name(database_url)
        url = tls_url(
            proxy, login, database, sslmode="verify-full", sslrootcert=str(certs.right_ca)
        )
        error, elapsed = await fails_fast(url, caplog)
        message = str(error)
        assert "server certificate could not be verified" in message, message
        assert "not valid for '127.0.0.1'" in message and "subjectAltName" in message, message
        assert retries(caplog) == 0 and elapsed < 5
        assert_no_password(login, error, caplog)
        # verify-ca checks the issuer, not the name: the same server is then accepted
        url = tls_url(proxy, login, database, sslmode="verify-ca", sslrootcert=str(certs.right_ca))
        async with asyncio.timeout(BOUND), docstore.connect(url) as store:
            assert await store.fetchval("select 1") == 1
        assert proxy.handshakes


async def test_server_without_tls_fails_at_once_under_require_but_prefer_connects(
    pg: PgCluster, login: Login, certs: Certs, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = Upstream.from_url(pg.admin_url)
    context = server_context(certs.server)
    async with running_proxy(upstream, context, accept_tls=False) as proxy:
        database = database_name(database_url)
        error, elapsed = await fails_fast(
            tls_url(proxy, login, database, sslmode="require"), caplog
        )
        assert "does not accept TLS" in str(error), str(error)
        assert retries(caplog) == 0 and elapsed < 5
        assert_no_password(login, error, caplog)
        async with (
            asyncio.timeout(BOUND),
            docstore.connect(tls_url(proxy, login, database, sslmode="prefer")) as store,
        ):
            assert await store.fetchval("select 1") == 1
        assert not proxy.handshakes


async def test_client_certificate_from_sslcert_and_sslkey(
    pg: PgCluster,
    login: Login,
    certs: Certs,
    database_url: str,
    tmp_path: Path,
) -> None:
    """A server that asks for a client certificate receives the one sslcert/sslkey name.

    Only the positive case: asyncio's server side drops its TLS alert when it rejects a
    client, so a refusal here would look like a dropped connection. Real PostgreSQL checks
    the client certificate at authentication and refuses with 28000 (the pg_hba test).
    """
    client = certs.ca.issue_cert("docstore-client", common_name="docstore_tls")
    cert_file, key_file = tmp_path / "client.crt", tmp_path / "client.key"
    client.cert_chain_pems[0].write_to_path(str(cert_file))
    client.private_key_pem.write_to_path(str(key_file))
    key_file.chmod(0o600)
    context = server_context(certs.server)
    certs.ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    async with running_proxy(Upstream.from_url(pg.admin_url), context) as proxy:
        database = database_name(database_url)
        verify = {"sslmode": "verify-full", "sslrootcert": str(certs.right_ca)}
        url = tls_url(
            proxy, login, database, sslcert=str(cert_file), sslkey=str(key_file), **verify
        )
        async with asyncio.timeout(BOUND), docstore.connect(url) as store:
            assert await store.fetchval("select 1") == 1
        assert_all_tls(proxy)
        assert {c.client_cert_cn for c in proxy.connections} == {"docstore_tls"}


async def test_a_pg_hba_refusal_names_the_rule_and_the_tls_settings(
    pg: PgCluster,
    proxy: TlsProxy,
    login: Login,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """28000 is how PostgreSQL refuses a hostssl/clientcert mismatch: not retried, not a
    "wrong password", and the server's reason is kept."""
    if pg.embedded is None:
        pytest.skip("needs the embedded server's pg_hba.conf")
    database = database_name(database_url)
    hba = pg.embedded.pgdata / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f"local {database} {login.user} reject\n" + original)
    await pg.execute("SELECT pg_reload_conf()")
    try:
        error, elapsed = await fails_fast(
            tls_url(proxy, login, database, sslmode="require"), caplog
        )
    finally:
        hba.write_text(original)
        await pg.execute("SELECT pg_reload_conf()")
    message = str(error)
    assert error.sqlstate == "28000"
    assert "pg_hba.conf rejects connection" in message and "hostssl" in message, message
    assert retries(caplog) == 0 and elapsed < 5
    assert_no_password(login, error, caplog)
    assert_all_tls(proxy)


@pytest.mark.parametrize("problem", ["missing", "not-pem"])
async def test_unreadable_sslrootcert_fails_at_once_naming_it(
    proxy: TlsProxy,
    login: Login,
    database_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    problem: str,
) -> None:
    root = tmp_path / "root.crt"
    if problem == "not-pem":
        root.write_text("not a certificate\n")
    url = tls_url(
        proxy, login, database_name(database_url), sslmode="verify-full", sslrootcert=str(root)
    )
    error, elapsed = await fails_fast(url, caplog)
    assert "could not load a TLS file named in the URL" in str(error), str(error)
    assert retries(caplog) == 0 and elapsed < 5
    assert not proxy.connections  # failed before dialling


async def test_proxy_refuses_plaintext_so_the_other_tests_prove_tls(
    proxy: TlsProxy, login: Login, database_url: str
) -> None:
    url = tls_url(proxy, login, database_name(database_url), sslmode="disable")
    with pytest.raises(DatabaseUnavailableError):
        async with asyncio.timeout(BOUND):
            await docstore.connect(url, retry_attempts=1, migrate=False)
    assert proxy.connections and all(c.refused for c in proxy.connections)


@pytest.fixture
def legacy_database(pg: PgCluster) -> Iterator[str]:
    """Name of a small legacy ``rust_docs_vectors`` database (built over the Unix socket)."""
    name = pg.create_database(prefix="legacy")
    asyncio.run(build_legacy(pg.url(name), crates=3, docs=30))
    yield name
    pg.drop_database(name)


async def test_migrator_reads_and_writes_over_tls(
    proxy: TlsProxy, login: Login, certs: Certs, legacy_database: str, database_url: str
) -> None:
    tls = {"sslmode": "verify-full", "sslrootcert": str(certs.right_ca)}
    source = tls_url(proxy, login, legacy_database, **tls)
    target = tls_url(proxy, login, database_name(database_url), **tls)
    async with asyncio.timeout(BOUND), Migrator(source, target, chunk_rows=10) as migrator:
        report = await migrator.run()
    assert report.ok, report.validation
    assert report.copied_documents == 30
    assert_all_tls(proxy)
    assert proxy.databases() == {legacy_database, database_name(database_url)}


async def test_migrator_reports_a_legacy_certificate_failure(
    proxy: TlsProxy, login: Login, certs: Certs, legacy_database: str, database_url: str
) -> None:
    source = tls_url(
        proxy, login, legacy_database, sslmode="verify-full", sslrootcert=str(certs.other_ca)
    )
    target = tls_url(
        proxy,
        login,
        database_name(database_url),
        sslmode="verify-full",
        sslrootcert=str(certs.right_ca),
    )
    with pytest.raises(MigrationError) as info:
        async with asyncio.timeout(BOUND), Migrator(source, target) as migrator:
            await migrator.run()
    message = str(info.value)
    assert "legacy database" in message and "certificate" in message and "verif" in message
    if login.password:
        assert login.password not in error_texts(info.value)


def test_tls_failures_that_retrying_cannot_fix_are_not_transient() -> None:
    """A dropped TLS connection stays transient; certificate and refusal errors do not."""
    assert not is_transient(ssl.SSLCertVerificationError("certificate verify failed"))
    assert not is_transient(ssl.SSLError("TLSV1_ALERT_UNKNOWN_CA"))
    assert not is_transient(ConnectionError('PostgreSQL server at "h:1" rejected SSL upgrade'))
    assert not is_transient(asyncpg.ClientConfigurationError("`sslmode` parameter must be"))
    assert is_transient(ssl.SSLEOFError("EOF occurred in violation of protocol"))
    assert is_transient(ConnectionError("unexpected connection_lost() call"))
    assert is_transient(FileNotFoundError(2, "No such file or directory"))  # a Unix socket
