"""A plain TCP proxy in front of a server's Unix socket, and a network cut that drops packets.

:class:`Proxy` relays one database's connections over TCP on 127.0.0.1, so the tests can cut
them: all at once as a server restart would (:meth:`Proxy.down`), or the clients' side only,
as a middlebox resetting them would (:meth:`Proxy.cut`). Neither looks like a cut that drops
packets — the proxy's kernel still answers for the connections — so :func:`blackhole` drops
the packets the proxy's port sends, on the loopback device with ``tc``: the client's TCP
keepalive probes then go unanswered, as across a dead network.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from urllib.parse import parse_qs, urlsplit


class Proxy:
    """TCP → the server's Unix socket, for one database's connections; :meth:`down` cuts them
    all and refuses new ones for a while, as a restart of that server would; :meth:`cut`
    cuts the clients' side only and leaves the server's sessions running, as a middlebox
    resetting the connections would (the server notices hours later, by TCP keepalive)."""

    def __init__(self, url: str) -> None:
        query = parse_qs(urlsplit(url).query)
        self.sock = f"{query['host'][0]}/.s.PGSQL.{query.get('port', ['5432'])[0]}"
        self.user = query.get("user", ["postgres"])[0]
        self.database = urlsplit(url).path.lstrip("/")
        self.writers: list[asyncio.StreamWriter] = []
        self.clients: list[asyncio.StreamWriter] = []
        self.upstreams: list[asyncio.StreamWriter] = []
        self.cut_off: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_unix_connection(self.sock)
        self.writers += [w, uw]
        self.clients.append(w)
        self.upstreams.append(uw)

        async def pump(a: asyncio.StreamReader, b: asyncio.StreamWriter) -> None:
            try:
                while data := await a.read(65536):
                    b.write(data)
                    await b.drain()
            except OSError:
                pass
            finally:
                if b not in self.upstreams or w not in self.cut_off:
                    b.close()

        await asyncio.gather(pump(r, uw), pump(ur, w))

    def client_ports(self) -> list[int]:
        """The clients' own ports of the connections open now."""
        return [w.get_extra_info("peername")[1] for w in self.clients if not w.is_closing()]

    def cut(self) -> None:
        """Reset every client's connection; the server's sessions live on (see the class)."""
        self.cut_off = list(self.clients)
        for w in self.cut_off:
            w.transport.abort()
        self.clients.clear()

    def close_upstreams(self) -> None:
        for uw in self.upstreams:
            uw.close()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self, seconds: float) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()
        await asyncio.sleep(seconds)
        await self.up()


def _tc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tc", *args], capture_output=True, text=True, check=False)


def blackhole_available() -> str | None:
    """Why :func:`blackhole` cannot run here (None: it can): it needs ``tc``, the privilege to
    change the loopback device's queueing, the kernel's htb, pfifo and u32, and no queue of
    someone else's on the device (it is tried once, on an unused port)."""
    if shutil.which("tc") is None:
        return "tc (iproute2) is not installed"
    try:
        with blackhole(1):
            pass
    except RuntimeError as exc:
        return str(exc)
    return None


@contextlib.contextmanager
def blackhole(port: int, clients: Iterable[int] | None = None) -> Iterator[None]:
    """Drop every packet on the loopback device *from* TCP ``port`` — the server's side of its
    connections: its data, and its kernel's answers to keepalive probes and acknowledgements
    — while the block runs; only those to the ports ``clients`` if given (those connections
    alone, as a NAT or firewall that forgot them; new ones work).

    Only the way back: a packet the client's own kernel could not send (dropped by a queue on
    its way out) counts for TCP as local congestion, retried every half second for ever and
    never as a dead peer; a probe or segment that left and was never answered is what a dead
    network looks like. An ``htb`` root queue: other traffic goes to class 1:1 (100 Gbit/s, no
    limit in effect), and ``u32`` filters send the chosen packets to class 1:2, whose ``pfifo``
    holds none (``limit 0``: each is dropped). Built from what the smallest kernels have (no
    netem, no tc actions). Refused (``RuntimeError``) when the device already has a root queue
    (another test's cut, an administrator's); the one added is removed afterwards, which
    restores the device's default.
    """
    shown = _tc("qdisc", "show", "dev", "lo")
    if shown.returncode != 0:
        raise RuntimeError(f"tc cannot read the loopback device's queueing: {shown.stderr}")
    if not shown.stdout.startswith("qdisc noqueue 0: root"):
        raise RuntimeError("the loopback device already has a queue: " + shown.stdout[:80])
    lo = ("dev", "lo")
    band = ("filter", "add", *lo, "parent", "1:", "protocol", "ip", "prio", "1", "u32")
    source = ("match", "ip", "sport", str(port), "0xffff")
    matches = [(*source, "match", "ip", "dport", str(c), "0xffff") for c in clients or ()]
    steps = [
        ("class", "add", *lo, "parent", "1:", "classid", "1:1", "htb", "rate", "100gbit"),
        ("class", "add", *lo, "parent", "1:", "classid", "1:2", "htb", "rate", "100gbit"),
        ("qdisc", "add", *lo, "parent", "1:2", "handle", "20:", "pfifo", "limit", "0"),
        *((*band, *match, "flowid", "1:2") for match in (matches or [source])),
    ]
    root = _tc("qdisc", "add", *lo, "root", "handle", "1:", "htb", "default", "1")
    if root.returncode != 0:
        raise RuntimeError(f"tc qdisc add failed: {root.stderr.strip()}")
    try:
        for step in steps:
            done = _tc(*step)
            if done.returncode != 0:
                raise RuntimeError(f"tc {' '.join(step[:2])} failed: {done.stderr.strip()}")
        yield
    finally:
        _tc("qdisc", "del", "dev", "lo", "root")
