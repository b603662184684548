"""A TLS-terminating proxy in front of a real PostgreSQL, for the TLS tests.

The embedded PostgreSQL builds have no OpenSSL, so the tests put TLS in front of them: the
proxy listens on 127.0.0.1 (an ephemeral port), answers the client's SSLRequest with ``S``,
completes a server-side TLS handshake with a test certificate, and then relays bytes both ways
to the server (its Unix socket, or host and port). A client that does not start with an
SSLRequest is refused (closed), so a query that works through the proxy went over TLS.

With ``accept_tls=False`` it plays a server with ``ssl = off``: it answers ``N`` and relays
the plaintext connection.

Every connection is recorded (:attr:`TlsProxy.connections`): whether the TLS handshake
completed, the TLS version, the client certificate's common name (when the context asks for one)
and the user and database of the startup message that followed.
The proxy runs in the caller's event loop; :meth:`TlsProxy.close` cancels every relay task
and closes every socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

SSL_REQUEST = struct.pack("!ii", 8, 80877103)
HANDSHAKE_TIMEOUT = 10.0
_CHUNK = 65536


@dataclass(frozen=True)
class Upstream:
    """Where the proxy forwards to: a Unix socket path, or a TCP host and port."""

    socket_path: str | None = None
    host: str | None = None
    port: int = 5432

    @classmethod
    def from_url(cls, url: str) -> Upstream:
        """The server of a libpq-style URL (``?host=/socket/dir`` means its Unix socket)."""
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        host = query.get("host", [parts.hostname or ""])[0]
        port = int(query.get("port", [str(parts.port or 5432)])[0])
        if not host or host.startswith("/"):
            return cls(socket_path=f"{unquote(host or '/tmp')}/.s.PGSQL.{port}")
        return cls(host=host, port=port)

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.socket_path is not None:
            return await asyncio.open_unix_connection(self.socket_path)
        assert self.host is not None
        return await asyncio.open_connection(self.host, self.port)


@dataclass
class ProxiedConnection:
    """One client connection as the proxy saw it."""

    tls: bool = False
    tls_version: str | None = None
    client_cert_cn: str | None = None
    refused: bool = False
    handshake_error: str | None = None
    startup: dict[str, str] = field(default_factory=dict)


class TlsProxy:
    """See the module docstring. Use :func:`running_proxy` to start and stop one."""

    def __init__(
        self, upstream: Upstream, context: ssl.SSLContext, *, accept_tls: bool = True
    ) -> None:
        self.upstream = upstream
        self.context = context
        self.accept_tls = accept_tls
        self.connections: list[ProxiedConnection] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "proxy not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def handshakes(self) -> list[ProxiedConnection]:
        """Connections whose TLS handshake completed."""
        return [c for c in self.connections if c.tls]

    def databases(self) -> set[str]:
        """Databases named in the startup messages relayed so far."""
        return {c.startup["database"] for c in self.connections if "database" in c.startup}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        record = ProxiedConnection()
        self.connections.append(record)
        try:
            await self._serve(reader, writer, record)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client or the server went away: nothing to relay any more
        finally:
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: ProxiedConnection
    ) -> None:
        first = await asyncio.wait_for(reader.readexactly(8), HANDSHAKE_TIMEOUT)
        if first != SSL_REQUEST:
            record.refused = True  # plaintext startup, CancelRequest, GSSENCRequest: refused
            return
        if not self.accept_tls:
            writer.write(b"N")
            await writer.drain()
        else:
            writer.write(b"S")
            await writer.drain()
            try:
                await writer.start_tls(self.context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
            except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
                record.handshake_error = f"{type(exc).__name__}: {exc}"
                return
            ssl_object = writer.get_extra_info("ssl_object")
            record.tls = ssl_object is not None
            if ssl_object is not None:
                record.tls_version = ssl_object.version()
                peer = ssl_object.getpeercert()  # only when the context asks for one
                for rdn in peer.get("subject", ()) if peer else ():
                    for key, value in rdn:
                        if key == "commonName":
                            record.client_cert_cn = value
        startup = await _read_startup(reader, record)
        up_reader, up_writer = await self.upstream.open()
        self._writers.add(up_writer)
        try:
            up_writer.write(startup)
            await up_writer.drain()
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            up_writer.close()
            self._writers.discard(up_writer)


async def _read_startup(reader: asyncio.StreamReader, record: ProxiedConnection) -> bytes:
    """Read the StartupMessage (int32 length, int32 protocol, key\\0value\\0 ... \\0)."""
    header = await asyncio.wait_for(reader.readexactly(4), HANDSHAKE_TIMEOUT)
    (length,) = struct.unpack("!i", header)
    body = await asyncio.wait_for(reader.readexactly(length - 4), HANDSHAKE_TIMEOUT)
    fields = body[4:].split(b"\0")
    record.startup = {
        k.decode(errors="replace"): v.decode(errors="replace")
        for k, v in zip(fields[0::2], fields[1::2], strict=False)
        if k
    }
    return header + body


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until EOF, then close ``writer`` (ending the other way)."""
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def running_proxy(
    upstream: Upstream, context: ssl.SSLContext, *, accept_tls: bool = True
) -> AsyncIterator[TlsProxy]:
    """Start a :class:`TlsProxy` in the running event loop; close it (and every connection)
    on exit."""
    proxy = TlsProxy(upstream, context, accept_tls=accept_tls)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
