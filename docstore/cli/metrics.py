"""``docstore stats`` and ``docstore metrics serve``: metrics as tables, JSON or Prometheus."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from docstore import cli
from docstore.cli.base import UrlOption, async_command, console
from docstore.errors import ConfigurationError, DatabaseUnavailableError
from docstore.metrics import MetricsSnapshot
from docstore.urls import redact_url


def _ms(value: float) -> str:
    return f"{value:.2f}"


def _mb(value: int | None) -> str:
    return "" if value is None else f"{value / 2**20:,.1f} MB"


def print_metrics(snapshot: MetricsSnapshot, title: str) -> None:
    """Render a metrics snapshot as rich tables (``docstore stats``). Names and the title (a
    URL) are data, never markup: a snapshot read with ``--from`` holds whatever the endpoint
    sent."""
    title = escape(title)
    for heading, group in (
        ("operations", snapshot.operations),
        ("vector search by mode", snapshot.vector_search),
    ):
        table = Table(title=f"{title}: {heading}")
        for column in ("name", "calls", "errors", "mean ms", "p50 ms", "p95 ms", "p99 ms"):
            table.add_column(column, justify="left" if column == "name" else "right")
        for name, stats in group.items():
            table.add_row(
                Text(name),
                str(stats.count),
                str(stats.errors),
                *(_ms(v) for v in (stats.mean_ms, stats.p50_ms, stats.p95_ms, stats.p99_ms)),
            )
        if group:
            console.print(table)
    pools = Table(title=f"{title}: connection pools")
    for column in ("role", "in use", "idle", "max", "waiting", "timeouts", "acquire p99 ms"):
        pools.add_column(column, justify="left" if column == "role" else "right")
    for pool in snapshot.pools:
        pools.add_row(
            Text(pool.role),
            str(pool.in_use),
            str(pool.idle),
            str(pool.max_size),
            str(pool.waiting),
            str(pool.acquire_timeouts),
            _ms(pool.acquire.p99_ms),
        )
    console.print(pools)
    if snapshot.server_connections:
        states = ", ".join(f"{k} {v}" for k, v in sorted(snapshot.server_connections.items()))
        console.print(f"server connections with this application_name: {escape(states)}")
    if snapshot.errors:
        errors = Table(title=f"{title}: errors")
        for column in ("error", "sqlstate", "count"):
            errors.add_column(column)
        for e in snapshot.errors:
            errors.add_row(Text(e.error), Text(e.sqlstate or ""), str(e.count))
        console.print(errors)
    retries = escape(", ".join(f"{k} {v}" for k, v in snapshot.retries.items()) or "none")
    console.print(f"retries: {retries}; replica fallbacks: {snapshot.replica_fallbacks}")
    if snapshot.routed_searches or snapshot.routing_fallbacks:
        console.print(
            f"Citus: searches run on their shard's worker {snapshot.routed_searches},"
            f" through the coordinator instead {snapshot.routing_fallbacks}"
        )
    if snapshot.disk is not None:
        disk = snapshot.disk
        growth = "" if disk.growth_bytes is None else f", growth {_mb(disk.growth_bytes)}"
        console.print(
            f"disk: database {_mb(disk.database_bytes)}, documents table"
            f" {_mb(disk.documents_table_bytes)}, its indexes {_mb(disk.documents_indexes_bytes)}"
            f"{growth}"
        )
        for name, size in sorted(disk.indexes.items(), key=lambda kv: -kv[1]):
            console.print(f"  {escape(name)}: {_mb(size)}")
    recall = snapshot.search_recall
    if recall is not None:
        measured = (
            "no sampled searches yet"
            if recall.estimate is None
            else f"{recall.estimate:.3f} over {recall.samples} sampled searches"
            + (" [red](under the target)[/red]" if recall.below_target else "")
        )
        settings = (
            f"calibrated ef_search {recall.ef_search}"
            + (f" / {recall.escalation_ef_search}" if recall.escalation_ef_search else "")
            + f" on {escape(str(recall.calibration_source))}"
            if recall.ef_search is not None
            else "not calibrated"
        )
        console.print(f"search recall: {measured}; target {recall.target:.2f}; {settings}")


@async_command
async def stats(
    url: UrlOption = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Read a running process's metrics endpoint (http://host:port/metrics) "
            "instead of connecting.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Print metrics: operation latencies, pools, errors, retries and disk usage.

    Without --from, this process's own view: the database's disk usage and the server's count
    of connections with docstore's application_name (the Doc Server's too, when it uses the
    same name). With --from, what a running Doc Server or `docstore metrics serve` exports.
    """
    if source is not None and url:
        raise typer.BadParameter("give --url or --from, not both", param_hint="--from")
    if source is not None:
        from docstore.prometheus import snapshot_from_text

        text = await asyncio.to_thread(_http_get, source)
        try:
            snapshot = snapshot_from_text(text)
        except (ValueError, KeyError, IndexError, TypeError):
            snapshot = None  # raised below, outside the parser's exception
        if snapshot is None:
            raise ConfigurationError(
                f"--from {redact_url(source)}: the response is not Prometheus metrics text "
                "(point --from at the /metrics endpoint of docstore's exporter)"
            )
        title = redact_url(source)
    else:
        async with cli.connect(url, migrate=False) as store:
            snapshot = await store.metrics()
            title = store.url
    if as_json:
        console.print_json(snapshot.model_dump_json())
    else:
        print_metrics(snapshot, title)


def _http_get(url: str) -> str:
    import http.client
    import urllib.error
    import urllib.request

    if not url.startswith(("http://", "https://")):
        raise ConfigurationError("--from must be an http:// or https:// URL")
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body: bytes = response.read()
    except (ValueError, http.client.InvalidURL) as exc:  # a bad port or IPv6 literal
        raise ConfigurationError(
            f"--from is not a valid URL ({type(exc).__name__}): give the exporter's address, "
            "e.g. http://127.0.0.1:9108/metrics"
        ) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise DatabaseUnavailableError(
            f"could not read {redact_url(url)}: {type(exc).__name__}"
        ) from None
    return body.decode("utf-8", "replace")


metrics_app = typer.Typer(help="Prometheus export of docstore's metrics.")
"""``docstore metrics``: mounted on the app by :mod:`docstore.cli`."""


@metrics_app.command("serve")
@async_command
async def metrics_serve(
    url: UrlOption = None,
    port: Annotated[int, typer.Option("--port", help="Port of /metrics.", min=1, max=65535)] = 9108,
    addr: Annotated[str, typer.Option("--addr", help="Address to listen on.")] = "127.0.0.1",
    disk_interval: Annotated[
        float,
        typer.Option("--disk-interval", help="Seconds between disk usage readings.", min=0),
    ] = 60.0,
    probe_interval: Annotated[
        float,
        typer.Option("--probe-interval", help="Seconds between health probes.", min=0.1),
    ] = 15.0,
) -> None:
    """Serve Prometheus metrics for a database: pools, disk usage, health-probe latency.

    The Doc Server exports its own operations by mounting
    docstore.prometheus.DocstoreCollector; this command is the standalone exporter.
    """
    from docstore.prometheus import serve

    async with cli.connect(url, migrate=False) as store:
        host = f"[{addr}]" if ":" in addr else addr  # an IPv6 address in a URL
        console.print(escape(f"serving metrics of {store.url} on http://{host}:{port}/metrics"))
        await serve(
            store,
            port,
            addr=addr,
            disk_refresh_seconds=disk_interval,
            probe_seconds=probe_interval,
        )
