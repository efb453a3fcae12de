"""``maskwatch flow run``: the detection dataflow on this process, alone or as one process of a cluster.

A thin wrapper over what ``python -m bytewax.run "maskwatch.flows.dataflow:build_flow()"`` does, reading the
same Bytewax variables, plus recovery set-up, a model check and maskwatch's metrics."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path

import click

log = logging.getLogger(__name__)


@click.group()
def flow() -> None:
    """The Bytewax detection dataflow: ticks -> frames -> inference -> rules -> store and alerts."""


@flow.command()
@click.option("-w", "--workers", "workers", default=None, type=click.IntRange(1),
              help="Worker threads in this process [env BYTEWAX_WORKERS_PER_PROCESS, default 1].")
@click.option("-i", "--process-id", type=click.IntRange(0), default=None,
              help="This process's index in a cluster, with -a [env BYTEWAX_PROCESS_ID, or the ordinal of "
                   "BYTEWAX_POD_NAME in BYTEWAX_STATEFULSET_NAME].")
@click.option("-a", "--addresses", default=None,
              help="host:port of every process of the cluster, ';'-separated, same order on all hosts "
                   "[env BYTEWAX_ADDRESSES, or the lines of BYTEWAX_HOSTFILE_PATH].")
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
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics (/metrics) on this port (0: off) [env MASKWATCH_METRICS_PORT].")
@click.option("--dataflow-api-port", type=click.IntRange(1, 65535), default=None,
              help="Also run Bytewax's dataflow API (/dataflow, and /metrics with Bytewax's own metrics) on "
                   "this port. It binds every interface without authentication: keep it behind a network "
                   "policy [env BYTEWAX_DATAFLOW_API_PORT with BYTEWAX_DATAFLOW_API_ENABLED].")
def run(workers: int | None, process_id: int | None, addresses: str | None, recovery_dir: Path | None,
        no_recovery: bool, recovery_parts: int, snapshot_interval: float, backup_interval: float,
        metrics_port: int | None, dataflow_api_port: int | None) -> None:
    """Run the flow until interrupted. All other settings come from MASKWATCH_* variables."""
    from bytewax.recovery import RecoveryConfig, init_db_dir
    from bytewax.run import cli_main

    from maskwatch import metrics
    from maskwatch.config import Settings
    from maskwatch.flows.cluster import Cluster, ClusterError, from_environ
    from maskwatch.flows.dataflow import build_flow
    from maskwatch.flows.options import FlowOptions
    from maskwatch.inference.models.manifest import (
        DEFAULT_CLASSIFIER,
        DEFAULT_DETECTOR,
        ModelNotPulledError,
        get_spec,
    )

    try:
        env = from_environ()
        hosts = tuple(addresses.split(";")) if addresses else env.addresses
        pid = process_id if process_id is not None else env.process_id if hosts == env.addresses else None
        cluster = Cluster(workers or env.workers_per_process, pid, hosts)
    except ClusterError as exc:
        raise click.UsageError(str(exc)) from None
    settings = Settings()
    # Engines that share this host's cores: several processes of one cluster on one host (a big GPU host,
    # the bench) would otherwise each start a thread per core in every ONNX Runtime session.
    opts = FlowOptions.from_settings(workers=cluster.workers_on_this_host,
                                     cluster_workers=cluster.total_workers)
    recovery = None
    if not no_recovery:
        recovery_dir = recovery_dir or settings.home / "recovery"
        if not recovery_dir.exists() or not any(recovery_dir.iterdir()):
            recovery_dir.mkdir(parents=True, exist_ok=True)
            init_db_dir(recovery_dir, recovery_parts)
            log.info("created recovery directory %s with %d partition(s)", recovery_dir, recovery_parts)
        recovery = RecoveryConfig(recovery_dir, timedelta(seconds=backup_interval))
    # Fail now, not at the first tick, when the models were never pulled.
    try:
        get_spec(DEFAULT_DETECTOR)
        get_spec(DEFAULT_CLASSIFIER)
    except ModelNotPulledError as exc:
        raise click.ClickException(str(exc)) from None
    dataflow = build_flow(settings, opts)
    metrics.serve_metrics(metrics_port)
    if dataflow_api_port is not None:
        # Read by Bytewax's runtime when cli_main starts (it serves the API from Rust).
        os.environ["BYTEWAX_DATAFLOW_API_ENABLED"] = "1"
        os.environ["BYTEWAX_DATAFLOW_API_PORT"] = str(dataflow_api_port)
        os.environ.setdefault("BYTEWAX_DATAFLOW_API_CACHE_PATH", str(settings.home))
    log.info("flow starting: %d worker(s)%s%s", cluster.workers_per_process,
             f", process {cluster.process_id} of {len(cluster.addresses)}" if cluster.addresses else "",
             f", recovery in {recovery_dir}" if recovery else ", no recovery")
    cli_main(dataflow, workers_per_process=cluster.workers_per_process, process_id=cluster.process_id,
             addresses=list(cluster.addresses) or None, epoch_interval=timedelta(seconds=snapshot_interval),
             recovery_config=recovery)
