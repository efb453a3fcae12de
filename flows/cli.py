"""``maskwatch flow``: run the detection dataflow (a thin wrapper over ``python -m bytewax.run``)."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path

import click

log = logging.getLogger(__name__)


def processes_on_host(addresses: list[str] | None, process_id: int | None) -> int:
    """Processes of the cluster listed with the same host as this one (1 without a cluster)."""
    if not addresses or process_id is None:
        return 1
    host = addresses[process_id].rsplit(":", 1)[0]
    return sum(1 for a in addresses if a.rsplit(":", 1)[0] == host)


@click.group()
def flow() -> None:
    """The Bytewax detection dataflow: ticks -> frames -> inference -> rules -> store and alerts."""


@flow.command()
@click.option("-w", "--workers", "workers", default=1, show_default=True, type=click.IntRange(1),
              envvar="BYTEWAX_WORKERS_PER_PROCESS", help="Worker threads in this process.")
@click.option("-i", "--process-id", type=click.IntRange(0), default=None, envvar="BYTEWAX_PROCESS_ID",
              help="This process's index in a cluster (with -a).")
@click.option("-a", "--addresses", default=None, envvar="BYTEWAX_ADDRESSES",
              help="host:port of every process of the cluster, ';'-separated, same order on all hosts.")
@click.option("-r", "--recovery-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="BYTEWAX_RECOVERY_DIRECTORY",
              help="Bytewax recovery directory (default $MASKWATCH_HOME/recovery); created with "
                   "--recovery-parts partitions if missing. On several hosts give each process its own.")
@click.option("--no-recovery", is_flag=True,
              help="Run without recovery (a restart re-reads ticks from the start).")
@click.option("--recovery-parts", default=1, show_default=True, type=click.IntRange(1),
              help="Partitions to create in a new recovery directory.")
@click.option("-s", "--snapshot-interval", default=5.0, show_default=True, type=click.FloatRange(0.1),
              envvar="BYTEWAX_SNAPSHOT_INTERVAL", help="Seconds between state snapshots (the epoch length).")
@click.option("-b", "--backup-interval", default=0.0, show_default=True, type=click.FloatRange(0),
              envvar="BYTEWAX_RECOVERY_BACKUP_INTERVAL",
              help="Seconds to keep superseded snapshots (set to your recovery-dir backup period).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=0, envvar="MASKWATCH_METRICS_PORT",
              help="Serve Prometheus metrics (/metrics) on this port (0: off).")
@click.option("--metrics-addr", default=None, envvar="MASKWATCH_METRICS_ADDR",
              help="Address the metrics server binds (default MASKWATCH_METRICS_HOST, else 127.0.0.1).")
def run(workers: int, process_id: int | None, addresses: str | None, recovery_dir: Path | None,
        no_recovery: bool, recovery_parts: int, snapshot_interval: float, backup_interval: float,
        metrics_port: int, metrics_addr: str | None) -> None:
    """Run the flow until interrupted. All other settings come from MASKWATCH_* variables."""
    from bytewax.recovery import RecoveryConfig, init_db_dir
    from bytewax.run import cli_main

    from maskwatch.config import Settings
    from maskwatch.flows.dataflow import build_flow

    if (process_id is None) != (addresses is None):
        raise click.UsageError("-i/--process-id and -a/--addresses go together")
    hosts = addresses.split(";") if addresses else None
    if hosts and process_id is not None and process_id >= len(hosts):
        raise click.UsageError(f"-i {process_id}: only {len(hosts)} addresses in -a")
    # Micro-batch shards default to one per worker of the whole cluster.
    os.environ.setdefault("MASKWATCH_FLOW_SHARDS", str(workers * (len(hosts) if hosts else 1)))
    # Engines that share this host's cores: several processes of one cluster on one host (a big GPU host,
    # the bench) would otherwise each start a thread per core in every ONNX Runtime session.
    os.environ["MASKWATCH_FLOW_WORKERS"] = str(workers * processes_on_host(hosts, process_id))
    recovery = None
    if not no_recovery:
        recovery_dir = recovery_dir or Settings().home / "recovery"
        if not recovery_dir.exists() or not any(recovery_dir.iterdir()):
            recovery_dir.mkdir(parents=True, exist_ok=True)
            init_db_dir(recovery_dir, recovery_parts)
            log.info("created recovery directory %s with %d partition(s)", recovery_dir, recovery_parts)
        recovery = RecoveryConfig(recovery_dir, timedelta(seconds=backup_interval))
    # Fail now, not at the first tick, when the models were never pulled.
    from maskwatch.inference.models.manifest import (
        DEFAULT_CLASSIFIER,
        DEFAULT_DETECTOR,
        ModelNotPulledError,
        get_spec,
    )

    try:
        get_spec(DEFAULT_DETECTOR)
        get_spec(DEFAULT_CLASSIFIER)
    except ModelNotPulledError as exc:
        raise click.ClickException(str(exc)) from None
    dataflow = build_flow()
    if metrics_port:
        from maskwatch.metrics import serve_metrics

        if metrics_addr:
            os.environ["MASKWATCH_METRICS_HOST"] = metrics_addr
        serve_metrics(metrics_port)
    log.info("flow starting: %d worker(s)%s%s", workers,
             f", process {process_id} of {len(hosts)}" if hosts else "",
             f", recovery in {recovery_dir}" if recovery else ", no recovery")
    cli_main(dataflow, workers_per_process=workers, process_id=process_id, addresses=hosts,
             epoch_interval=timedelta(seconds=snapshot_interval), recovery_config=recovery)
