"""CPU seconds each PostgreSQL server of the cluster (and the single node's) uses per call.

Read from ``/proc`` for each server's postmaster and its backends, exited ones included (the
postmaster's reaped-children times), minus each server's idle rate measured beforehand: CPU
time is what other jobs on a shared machine disturb least.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import asyncpg


class ServerCpu:
    """CPU seconds a PostgreSQL server has used: its postmaster's and live processes' run
    time in nanoseconds (``/proc/PID/schedstat``; ``/proc/PID/stat`` counts in 10 ms ticks,
    too coarse for 1 ms searches), plus its exited backends' (the postmaster's reaped-children
    times, in ticks), so that connections Citus opens and closes within a measurement count."""

    TICK = 1 / os.sysconf("SC_CLK_TCK")

    def __init__(self, postmaster_pid: int) -> None:
        self.pid = postmaster_pid
        self.idle = 0.0
        """CPU seconds a wall second the server uses with nothing to do (subtracted)."""

    def seconds(self) -> float:
        import psutil  # type: ignore[import-untyped]  # (docstore[test]) only where measured

        stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = (int(stat[14]) + int(stat[15])) * self.TICK  # cutime + cstime
        for pid in [self.pid, *(c.pid for c in psutil.Process(self.pid).children())]:
            with contextlib.suppress(OSError):
                total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
        return total


async def server_cpu(url: str) -> ServerCpu:
    """The :class:`ServerCpu` of ``url``'s server (the postmaster of a backend of it)."""
    import psutil

    conn = await asyncpg.connect(url)
    try:
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        return ServerCpu(psutil.Process(backend).ppid())
    finally:
        await conn.close()


async def sessions(url: str) -> int:
    """Connections ever made to ``url``'s database (``pg_stat_database.sessions``)."""
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval(
                "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
            )
        )
    finally:
        await conn.close()


async def calibrate_idle(meters: Mapping[str, ServerCpu], seconds: float = 3.0) -> None:
    """Each meter's idle rate, measured over ``seconds`` of nothing."""
    before = {k: m.seconds() for k, m in meters.items()}
    await asyncio.sleep(seconds)
    for k, m in meters.items():
        m.idle = max(0.0, (m.seconds() - before[k]) / seconds)


async def cpu_per_call(
    call: Callable[[int], Awaitable[object]], n: int, meters: Mapping[str, ServerCpu]
) -> dict[str, float]:
    """Seconds a call, one call at a time: each server's CPU (idle rate subtracted),
    ``client`` (this process's CPU) and ``wall``."""
    before = {k: m.seconds() for k, m in meters.items()}
    proc0, wall0 = time.process_time(), time.perf_counter()
    for i in range(n):
        await call(i)
    wall = time.perf_counter() - wall0
    out = {k: (m.seconds() - before[k] - m.idle * wall) / n for k, m in meters.items()}
    out["client"] = (time.process_time() - proc0) / n
    out["wall"] = wall / n
    return out


async def cpu_rounds(
    shapes: Mapping[str, Callable[[int], Awaitable[object]]],
    n: int,
    rounds: int,
    meters: Mapping[str, ServerCpu],
) -> dict[str, dict[str, float]]:
    """:func:`cpu_per_call` of every shape in turn, ``rounds`` times over; per shape, the
    round with the median total server CPU."""
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in shapes}
    for _ in range(rounds):
        for name, call in shapes.items():
            runs[name].append(await cpu_per_call(call, n, meters))
    return {
        name: sorted(rs, key=lambda r: sum(r[k] for k in meters))[len(rs) // 2]
        for name, rs in runs.items()
    }


def cpu_line(name: str, cpu: Mapping[str, float], nodes: Sequence[str]) -> str:
    """``  name: CPU ms a call: coordinator …, worker1 …, client …; wall … ms``."""
    parts = ", ".join(f"{node} {cpu[node] * 1000:.3f}" for node in nodes)
    return (
        f"  {name}: CPU ms a call: {parts}, client {cpu['client'] * 1000:.3f};"
        f" wall {cpu['wall'] * 1000:.2f} ms"
    )
