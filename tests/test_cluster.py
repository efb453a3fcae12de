"""The flow reads a Bytewax cluster the way Bytewax does: its variables (as its Helm chart sets them) and,
under ``python -m bytewax.run``, that runner's own command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from maskwatch.flows.cluster import Cluster, ClusterError, from_environ

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_bytewax_variables_as_the_helm_chart_sets_them(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("flow-0.flow:9999\n\nflow-1.flow:9999\nflow-2.flow:9999\n")
    env = {"BYTEWAX_WORKERS_PER_PROCESS": "2", "BYTEWAX_POD_NAME": "flow-2",
           "BYTEWAX_STATEFULSET_NAME": "flow", "BYTEWAX_HOSTFILE_PATH": str(hosts)}
    cluster = from_environ(env)
    assert cluster == Cluster(2, 2, ("flow-0.flow:9999", "flow-1.flow:9999", "flow-2.flow:9999"))
    assert (cluster.total_workers, cluster.workers_on_this_host) == (6, 2)
    explicit = from_environ({"BYTEWAX_PROCESS_ID": "0", "BYTEWAX_ADDRESSES": "a:1;a:2"})
    assert explicit == Cluster(1, 0, ("a:1", "a:2")) and explicit.workers_on_this_host == 2
    assert from_environ({}) == Cluster()


@pytest.mark.parametrize("env", [
    {"BYTEWAX_WORKERS_PER_PROCESS": "many"},
    {"BYTEWAX_PROCESS_ID": "5", "BYTEWAX_ADDRESSES": "a:1;a:2"},
    {"BYTEWAX_ADDRESSES": "a:1", "BYTEWAX_POD_NAME": "flow-x", "BYTEWAX_STATEFULSET_NAME": "flow"},
    {"BYTEWAX_ADDRESSES": "a:1"},
])
def test_variables_that_describe_no_cluster_are_named(env: dict[str, str]) -> None:
    with pytest.raises(ClusterError, match=r"BYTEWAX|process id|together"):
        from_environ(env)


PROBE = '''
import json, sys
from bytewax.dataflow import Dataflow
import bytewax.operators as op
from bytewax.testing import TestingSource

from maskwatch.flows.cluster import running


def probe(out):
    cluster = running()
    with open(out, "w") as f:
        json.dump([cluster.workers_per_process, cluster.total_workers], f)
    flow = Dataflow("probe")
    op.inspect("seen", op.input("in", flow, TestingSource([1])))
    return flow
'''


def test_under_bytewax_run_the_factory_sees_its_workers(tmp_path: Path) -> None:
    (tmp_path / "probe_flow.py").write_text(PROBE)
    out = tmp_path / "cluster.json"
    done = subprocess.run([sys.executable, "-m", "bytewax.run", f"probe_flow:probe({str(out)!r})", "-w", "3"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text()) == [3, 3]


def test_build_flow_under_bytewax_run_takes_one_shard_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    from maskwatch.flows import dataflow

    monkeypatch.setattr(dataflow, "running", lambda: Cluster(4))
    from maskwatch.config import Settings
    from maskwatch.flows.options import FlowOptions
    from maskwatch.flows.runtime import FlowRuntime

    seen: dict[str, FlowOptions] = {}

    def spy(settings: Settings, opts: FlowOptions) -> FlowRuntime:
        seen["opts"] = opts
        return FlowRuntime(settings, opts)

    monkeypatch.setattr(dataflow, "FlowRuntime", spy)
    dataflow.build_flow()
    assert seen["opts"].shards == 4 and seen["opts"].workers == 4
