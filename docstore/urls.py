"""Database URLs: read the way asyncpg reads them, checked, redacted.

URLs are read as asyncpg reads them (:func:`parse_url`), and refused before any connection
is tried when asyncpg would misread them: a password with an unencoded ``@``, ``/``, ``?`` or
``#`` (so that part of it lands in the host, the port or the database name), a port that is
not a number, an empty entry in a host list, a bad ``%`` escape, spaces or control
characters, an unknown scheme, an invalid ``sslmode``/``target_session_attrs``, a libpq
parameter asyncpg does not implement (``connect_timeout``, ``keepalives``, ...). The error
names where the URL came from (``DATABASE_URL``, ``connect(url=...)``, ``--url``, ...) and
says how to percent-encode the password, without quoting any of it (:func:`check_url`).
:func:`redact_url` hides the whole password, and when a URL is malformed everything between
``://`` and the last ``@``; :func:`url_secrets` lists what to scrub from messages.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, unquote, unquote_to_bytes, urlparse, urlsplit, urlunsplit

from docstore.errors import ConfigurationError
from docstore.http_urls import http_secrets, is_http, redact_http
from docstore.masking import MIN_SCRUBBED_SECRET as MIN_SCRUBBED_SECRET
from docstore.masking import REDACTED as REDACTED
from docstore.masking import mask_secrets as mask_secrets

_POSTGRES_SCHEMES = ("postgres", "postgresql")
_SECRET_QUERY_KEYS = frozenset({"password", "sslpassword", "passfile"})

PERCENT_ENCODE_HINT = (
    "percent-encode special characters in the user name and password, e.g. "
    "urllib.parse.quote(password, safe='') turns 'a@b:c/d' into 'a%40b%3Ac%2Fd' "
    "(@ is %40, : is %3A, / is %2F, ? is %3F, # is %23, % is %25, a space is %20)"
)
"""Appended to URL errors that an unencoded password can cause."""

_SSLMODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
_TARGET_SESSION_ATTRS = frozenset(
    {"any", "primary", "standby", "prefer-standby", "read-write", "read-only"}
)
_SHOWN = {
    "sslmode": _SSLMODES,
    "target_session_attrs": _TARGET_SESSION_ATTRS,
    "sslnegotiation": frozenset({"postgres", "direct"}),
    "gsslib": frozenset({"gssapi", "sspi"}),
}
"""Query parameters asyncpg checks when it connects, and their values."""
_KNOWN_PARAMS = frozenset(
    {"host", "port", "dbname", "database", "user", "password", "passfile", "sslpassword"}
    | {"sslcert", "sslkey", "sslrootcert", "sslcrl", "service", "krbsrvname", *_SHOWN}
)
_AS_WRITTEN = frozenset({"host", "port", *_SHOWN})
"""Query parameters redaction leaves alone: where the URL points, and values asyncpg checks
(masking a secret found in them would make the redacted URL one that cannot be read)."""
_CHOICES = {**_SHOWN, "sslmode": _SSLMODES | {m.replace("-", "_") for m in _SSLMODES}}
_UNSUPPORTED = (
    "keepalives keepalives_idle keepalives_interval keepalives_count tcp_user_timeout "
    "channel_binding require_auth requirepeer requiressl gssencmode gssdelegation "
    "sslcompression sslcertmode sslcrldir sslsni sslkeylogfile load_balance_hosts "
    "min_protocol_version max_protocol_version scram_client_key scram_server_key "
    "oauth_issuer oauth_client_id oauth_client_secret oauth_scope tty"
)
_LIBPQ_ONLY: dict[str, str] = {
    **dict.fromkeys(_UNSUPPORTED.split(), "remove it"),
    "connect_timeout": "set DOCSTORE_POOL_ACQUIRE_TIMEOUT (seconds) instead",
    "fallback_application_name": "set DOCSTORE_APPLICATION_NAME instead",
    "hostaddr": "put the address in the host part instead",
}
"""libpq connection parameters asyncpg does not implement: it would send them to the server
as settings, which refuses them (``unrecognized configuration parameter``)."""

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_CONNINFO = re.compile(r"\s*[A-Za-z_][A-Za-z0-9_]*\s*=")
_CONNINFO_SECRET = re.compile(r"(?i)\b((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s]*)")
_QUERY_SECRET = re.compile(r"(?i)((?:^|[?&;])(?:(?:ssl)?password|passfile)=)[^&#]*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PORT = re.compile(r"[0-9]{1,5}")
_IPV6_SPEC = re.compile(r"\[([^\]]*)\](?::(.*))?")


class UrlError(ValueError):
    """What is wrong with a database URL (never quotes any part of it)."""


def _problem(text: str, *, hint: bool = True) -> UrlError:
    return UrlError(f"{text}; {PERCENT_ENCODE_HINT}" if hint else text)


@dataclass(frozen=True)
class ParsedUrl:
    """A database URL as asyncpg reads it: decoded parts, plus the raw text for redaction."""

    scheme: str
    user: str | None
    """Decoded; None when the URL names none (asyncpg then uses PGUSER or the OS user)."""
    password: str | None
    """Decoded; None when the URL's userinfo has none (``?password=`` is in :attr:`query`)."""
    hosts: tuple[str, ...]
    """Hosts of the authority (decoded, IPv6 without brackets); empty means the defaults."""
    ports: tuple[int | None, ...]
    """One per host; None means the default port."""
    database: str | None
    query: tuple[tuple[str, str], ...]
    """Decoded query parameters, in order."""
    raw_user: str | None
    raw_password: str | None
    raw_hosts: str
    raw_path: str
    raw_query: str | None

    def param(self, key: str) -> str | None:
        """The last non-empty value of query parameter ``key`` (as asyncpg takes it)."""
        values = [v for k, v in self.query if k == key and v]
        return values[-1] if values else None

    def query_hosts(self) -> list[str]:
        """The ``?host=`` list (host names as given, ports stripped), or []."""
        given = self.param("host")
        return [] if not given else [_split_port(h)[0] for h in given.split(",")]


def _decode(raw: str, what: str) -> str:
    """``raw`` percent-decoded, strictly: every ``%`` starts an escape, the bytes are UTF-8,
    no NUL (libpq refuses all three; asyncpg would quietly use something else)."""
    if _BAD_ESCAPE.search(raw):
        raise _problem(
            f"{what} has a '%' that is not followed by two hex digits (write '%' as %25)"
        )
    data = unquote_to_bytes(raw)
    if b"\x00" in data:
        raise _problem(f"{what} contains %00 (a NUL byte, which PostgreSQL refuses)", hint=False)
    text = data.decode("utf-8", "replace")
    if "\ufffd" in text and text.encode("utf-8") != data:
        # Not raised from a UnicodeDecodeError: its context would hold the bytes.
        raise _problem(f"{what} has percent-escapes that are not UTF-8")
    return text


def _split_port(spec: str) -> tuple[str, str | None]:
    if spec.startswith("["):
        m = _IPV6_SPEC.fullmatch(spec)
        return (m[1], m[2]) if m else (spec, None)
    host, sep, port = spec.partition(":")
    return host, port if sep else None


def _check_port(port: str, where: str) -> int | None:
    if port == "":
        return None
    if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise _problem(f"the port of {where} is not a number from 1 to 65535")
    return int(port)


def _parse_hosts(hostlist: str, *, decode: bool, what: str) -> list[tuple[str, int | None]]:
    """A comma-separated host list as asyncpg's ``_parse_hostlist`` reads it, refusing empty
    entries, ports that are not numbers, and broken IPv6 brackets."""
    specs = hostlist.split(",")
    many = len(specs) > 1
    out: list[tuple[str, int | None]] = []
    for i, spec in enumerate(specs, 1):
        where = f"host #{i} in {what}" if many else "the host"
        if spec == "":
            raise _problem(f"{what} has an empty entry (a stray ',')")
        if spec.startswith("/"):  # a Unix socket directory (only in ?host=)
            out.append((spec, None))
            continue
        if spec.startswith("["):
            m = _IPV6_SPEC.fullmatch(spec)
            if not m:
                raise _problem(f"{where} has an invalid IPv6 address in brackets")
            addr = _decode(m[1], where) if decode else m[1]
            try:
                is_v6 = isinstance(ipaddress.ip_address(addr), ipaddress.IPv6Address)
            except ValueError:
                is_v6 = False
            if not is_v6:
                raise _problem(f"{where} has something other than an IPv6 address in brackets")
            port = m[2]
        else:
            raw_addr, sep, raw_port = spec.partition(":")
            if "[" in raw_addr or "]" in raw_addr:
                raise _problem(f"{where} has a '[' or ']' outside an IPv6 address")
            addr = _decode(raw_addr, where) if decode else raw_addr
            if not addr:
                raise _problem(f"{where} has a port but no host name")
            port = raw_port if sep else None
        out.append((addr, None if port is None else _check_port(port, where)))
    return out


def parse_url(url: str) -> ParsedUrl:
    """Read a ``postgresql://`` URL as asyncpg will, refusing what it would misread.

    asyncpg splits the authority at its first ``@`` and the userinfo at its first ``:``, and
    ``urllib`` ends the authority at the first ``/`` or ``?``: a password with an unencoded
    ``@``, ``/``, ``?`` or ``#`` therefore spills into the host, port, database name or query,
    and used to surface as a puzzling error (``invalid literal for int()``) or a connection
    to the wrong place. Raises :class:`UrlError` (a ``ValueError``) with a message that
    quotes no part of ``url``.
    """
    if not isinstance(url, str):
        raise _problem("it is not a string", hint=False)
    if "://" not in url and _CONNINFO.match(url):
        raise _problem(
            "it is a libpq key=value connection string; docstore takes a URL: "
            "postgresql://user:password@host:port/dbname",
        )
    if any("\ud800" <= ch <= "\udfff" for ch in url):
        raise _problem("it contains characters that are not valid Unicode (lone surrogates)")
    if url != url.strip():
        raise _problem("it has leading or trailing whitespace", hint=False)
    m = _SCHEME.match(url)
    if not m or m[1].lower() not in _POSTGRES_SCHEMES:
        raise _problem("it must be a postgresql:// or postgres:// URL", hint=False)
    scheme, rest = m[1].lower(), url[m.end() :]
    if not rest.startswith("//"):
        raise _problem("it must start with postgresql:// or postgres://", hint=False)
    if any(ch == " " or ch < " " or "\x7f" <= ch <= "\x9f" for ch in url):
        raise _problem("it contains a space or a control character")
    if "#" in url:
        raise _problem("it contains '#', which starts a URL fragment and cuts off what follows")
    try:
        parsed = urlparse(url)
    except ValueError:  # urllib's message quotes the authority, password included
        parsed = None
    if parsed is None:
        raise _problem(
            "urllib cannot read its host part (a '[' or ']', or a character that normalizes "
            "to '@', ':', '/', '?' or '#')"
        )
    body = rest[2:]
    end = min((i for i in (body.find("/"), body.find("?")) if i >= 0), default=len(body))
    authority, after = body[:end], body[end:]
    path, qmark, query = after.partition("?")
    if authority != parsed.netloc:  # pragma: no cover - defensive: urllib disagrees
        raise _problem("it cannot be split into user, host and database unambiguously")

    if authority.count("@") > 1:
        raise _problem("it has more than one '@' before the host (write '@' as %40)")
    userinfo, at, hostpart = authority.rpartition("@")
    raw_user = raw_password = None
    user = password = None
    if at:
        raw_user, colon, pw = userinfo.partition(":")
        raw_password = pw if colon else None
        user = _decode(raw_user, "the user name") or None
        if raw_password is not None:
            password = _decode(raw_password, "the password") or None
    hosts = _parse_hosts(hostpart, decode=True, what="the host list") if hostpart else []

    if "@" in path:
        raise _problem(
            "it has an '@' after the host, in the database name: a '/' in the password ends the "
            "host part early"
        )
    if ";" in path:
        raise _problem("it has a ';' in the database name (write it as %3B)", hint=False)
    database = None
    if len(path) > 1:
        database = _decode(path[1:], "the database name") or None

    pairs: list[tuple[str, str]] = []
    if qmark and query:
        if "@" in query:
            raise _problem(
                "it has an '@' in the query string: a '?' in the password starts the query "
                "string early"
            )
        for field in query.split("&"):
            key_raw, eq, value_raw = field.partition("=")
            if not eq:
                raise _problem("it has a query parameter that is not key=value")
            key = _decode(key_raw.replace("+", " "), "a query parameter name")
            if not key:
                raise _problem("it has a query parameter without a name")
            named = key if key in _KNOWN_PARAMS else "a query parameter"  # not a password's
            value = _decode(value_raw.replace("+", " "), f"the value of {named}")
            pairs.append((key, value))
    result = ParsedUrl(
        scheme=scheme,
        user=user,
        password=password,
        hosts=tuple(h for h, _ in hosts),
        ports=tuple(p for _, p in hosts),
        database=database,
        query=tuple(pairs),
        raw_user=raw_user,
        raw_password=raw_password,
        raw_hosts=hostpart,
        raw_path=path,
        raw_query=query if qmark else None,
    )
    _check_params(result)
    return result


def _check_params(url: ParsedUrl) -> None:
    for k, value in url.query:
        if value and k in _LIBPQ_ONLY:
            raise _problem(
                f"its {k} parameter is a libpq option asyncpg does not support (the server "
                f"would refuse it as an unknown setting): {_LIBPQ_ONLY[k]}",
                hint=False,
            )
    for key, choices in _CHOICES.items():
        for k, value in url.query:
            if k == key and value and value not in choices:
                raise _problem(
                    f"its {key} must be one of {', '.join(sorted(_SHOWN[key]))}", hint=False
                )
    ports: list[int] = []
    for k, value in url.query:
        if k == "port" and value:
            ports = [
                p
                for p in (_check_port(p, "the port parameter") for p in value.split(","))
                if p is not None
            ]
            if len(ports) != len(value.split(",")):
                raise _problem("the port parameter has an empty entry (a stray ',')")
    for k, value in url.query:
        if k == "host" and value:
            _parse_hosts(value, decode=False, what="the host parameter")
    if url.hosts or len(ports) < 2:
        return  # asyncpg ignores ?port= when the authority names hosts
    hosts = url.query_hosts()
    if not hosts:
        raise _problem(
            f"its port parameter lists {len(ports)} ports but it names no hosts", hint=False
        )
    if len(ports) != len(hosts):
        raise _problem(
            f"its port parameter lists {len(ports)} ports for {len(hosts)} hosts", hint=False
        )


def check_url(url: str, name: str) -> str:
    """``url`` if asyncpg will read it as written, else :class:`ConfigurationError`.

    ``name`` says where the URL came from (``DATABASE_URL``, ``connect(url=...)``,
    ``--url``); the message names it and the problem, with the percent-encoding hint when
    an unencoded password can be the cause, and quotes no part of the URL.
    """
    try:
        parse_url(url)
    except UrlError as exc:
        problem = str(exc)
    else:
        return url
    raise ConfigurationError(f"{name}: not a valid database URL: {problem}")


def redact_url(url: str) -> str:
    """``url`` without its secrets: the password (however it is written) becomes ``***``, and
    so do ``password``/``sslpassword``/``passfile`` query values.

    A URL :func:`parse_url` refuses is redacted conservatively: everything between ``://``
    and the last ``@`` (or, without an ``@``, after the first ``:`` of the host part) is
    hidden, since nobody can tell where its password ends. A libpq ``key=value`` string keeps
    its keys with ``password=***``.
    """
    if not isinstance(url, str):
        return "<not a string>"
    if is_http(url):
        return redact_http(url, lambda u: _malformed(u)[0])
    try:
        parsed = parse_url(url)
    except UrlError:
        return _malformed(url)[0]
    # A secret also written elsewhere (as the user name, say) is hidden there too; scheme and
    # hosts stay as written: the redacted URL still says where it points.
    secrets = [s for s in url_secrets(url) if len(s) >= MIN_SCRUBBED_SECRET]
    scrub = functools.partial(mask_secrets, secrets=secrets, whole_escapes=True)
    userinfo = ""
    if parsed.raw_user is not None:
        userinfo = scrub(parsed.raw_user) + (f":{REDACTED}" if parsed.raw_password else "") + "@"
    query = ""
    if parsed.raw_query is not None:
        fields = _query_fields(parsed)
        query = "?" + "&".join(_redact_field(raw, key, scrub) for raw, key, _ in fields)
    scheme = url[: url.index("://") + 3]
    return f"{scheme}{userinfo}{parsed.raw_hosts}{scrub(parsed.raw_path)}{query}"


def _redact_field(raw: str, key: str, scrub: Callable[[str], str]) -> str:
    """One ``key=value`` of the query string redacted: a secret's value hidden whole; key and
    value scrubbed apart (the ``=`` kept), except the :data:`_AS_WRITTEN` ones."""
    name, equals, value = raw.partition("=")
    if key.lower() in _SECRET_QUERY_KEYS:
        return f"{name}={REDACTED}"
    return raw if key in _AS_WRITTEN else scrub(name) + equals + scrub(value)


def _query_fields(parsed: ParsedUrl) -> list[tuple[str, str, str]]:
    """``(field as written, decoded key, decoded value)`` for each query parameter."""
    fields = parsed.raw_query.split("&") if parsed.raw_query else []
    return [(raw, k, v) for raw, (k, v) in zip(fields, parsed.query, strict=True)]


def _malformed(url: str) -> tuple[str, list[str]]:
    """A URL :func:`parse_url` refuses, conservatively redacted, and what may be its secrets:
    everything after the first ``password=``/``sslpassword=`` parameter, everything before the
    last ``@`` in front of it, or without an ``@`` what follows a ``:`` in the host part."""
    if "://" not in url and _CONNINFO.match(url):
        values = [m[2].strip("'") for m in _CONNINFO_SECRET.finditer(url)]
        return _CONNINFO_SECRET.sub(rf"\1{REDACTED}", url), _with_decoded(values)
    prefix, sep, rest = url.partition("://")
    if not sep:
        prefix, rest = "", url
    else:
        prefix += sep
    found: list[str] = []
    tail = ""
    secret_param = _QUERY_SECRET.search(rest)
    if secret_param:
        start = secret_param.start() + secret_param[0].index("=") + 1
        found += [rest[start:], rest[start:].partition("&")[0]]
        rest, tail = rest[:start], REDACTED
    if "@" in rest:
        userinfo, _, after = rest.rpartition("@")
        found += [userinfo, userinfo.partition(":")[2]]
        rest = f"{REDACTED}@{after}"
    elif sep:
        end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
        if ":" in rest[:end]:  # "user:password" without "@host"? or a port that is not one
            found.append(rest[:end].partition(":")[2])
            rest = f"{rest[:end].partition(':')[0]}:{REDACTED}{rest[end:]}"
    return prefix + rest + tail, _with_decoded(found)


def _with_decoded(found: list[str]) -> list[str]:
    decoded = [unquote(secret) for secret in found]  # (errors="replace"; lone surrogates kept)
    return [s for s in dict.fromkeys((*found, *decoded)) if s]


def url_password(url: str) -> str | None:
    """The password embedded in ``url`` (userinfo or ``?password=``, decoded), for scrubbing
    messages. For a URL :func:`parse_url` refuses, the text that may hold one, or None."""
    try:
        parsed = parse_url(url)
    except UrlError:
        found = _malformed(url)[1] if isinstance(url, str) else []
        return found[0] if found else None
    return parsed.password or parsed.param("password")


def url_secrets(*urls: str | None) -> tuple[str, ...]:
    """Every secret in ``urls`` (passwords, ``sslpassword``), decoded and as written, to
    scrub from messages. For a URL :func:`parse_url` refuses, everything that may hold one."""
    found: list[str] = []
    for url in urls:
        if not url or not isinstance(url, str):
            continue
        if is_http(url):  # a metrics endpoint (docstore stats --from)
            found += http_secrets(url)
            continue
        try:
            parsed = parse_url(url)
        except UrlError:
            found += _malformed(url)[1]
            continue
        found += [parsed.password or "", parsed.raw_password or ""]
        for raw, key, value in _query_fields(parsed):
            if key.lower() in ("password", "sslpassword"):
                found += [value, raw.partition("=")[2]]
    return tuple(dict.fromkeys(s for s in found if s))


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server (query string kept)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(database, safe=""), parts.query, ""))
