"""``maskwatch services``: real Tansu broker, store server and SeaweedFS, on ports picked at run time."""

from __future__ import annotations

import logging
import os
import random
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from maskwatch.config import Settings
from maskwatch.devservices import manager
from maskwatch.devservices.broker import Broker
from maskwatch.devservices.cli import services
from maskwatch.devservices.process import ManagedProcess, pid_alive
from maskwatch.ports import free_port, port_in_use
from maskwatch.topics import ensure_topics

pytestmark = pytest.mark.without_models


@pytest.fixture
def home_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """An isolated MASKWATCH_HOME with free broker/store ports; whatever the test started is stopped."""
    home = tmp_path / "home"
    monkeypatch.setenv("MASKWATCH_HOME", str(home))
    broker_port, store_port = free_port(), free_port()
    # The same ports both ways: from the clients' settings and as MASKWATCH_{BROKER,STORE}_PORT.
    monkeypatch.setenv("MASKWATCH_KAFKA_BOOTSTRAP", f"127.0.0.1:{broker_port}")
    monkeypatch.setenv("MASKWATCH_STORE_URL", f"http://127.0.0.1:{store_port}/?database=services_test")
    monkeypatch.setenv("MASKWATCH_BROKER_PORT", str(broker_port))
    monkeypatch.setenv("MASKWATCH_STORE_PORT", str(store_port))
    monkeypatch.setenv("MASKWATCH_TICK_PARTITIONS", "3")
    suffix = uuid.uuid4().hex[:8]
    monkeypatch.setenv("MASKWATCH_TOPIC_TICKS", f"ticks.{suffix}")
    monkeypatch.setenv("MASKWATCH_TOPIC_ALERTS", f"alerts.{suffix}")
    monkeypatch.setenv("MASKWATCH_TOPIC_DEAD_LETTER", f"dead.{suffix}")
    monkeypatch.setenv("MASKWATCH_TOPIC_CAMERA_HEALTH", f"health.{suffix}")
    yield home
    manager.down(Settings())


def cli(*args: str) -> Result:
    return CliRunner().invoke(services, list(args), catch_exceptions=False)


def pids_from_pidfiles(run: Path) -> dict[str, int]:
    return {f.stem: int(f.read_text()) for f in run.glob("*.pid")}


def pids(output: str) -> dict[str, int]:
    return {m["name"]: int(m["pid"]) for m in re.finditer(r"(?P<name>\w+)\s+\w+\s+pid (?P<pid>\d+)", output)}


def test_up_twice_status_down_twice(home_env: Path) -> None:
    settings = Settings()
    first = cli("up")
    assert first.exit_code == 0, first.output
    assert "broker: started" in first.output and "store: started" in first.output
    assert f"{settings.topic_ticks} (3 partitions)" in first.output
    assert "note:" not in first.output  # services on the ports the clients' settings name

    status = cli("status")
    assert status.exit_code == 0, status.output
    running = pids(status.output)
    assert set(running) == {"broker", "store"} and all(pid_alive(p) for p in running.values())
    broker_port = os.environ["MASKWATCH_BROKER_PORT"]
    assert re.search(rf"broker\s+up\s+pid {running['broker']}\s+127\.0\.0\.1:{broker_port}", status.output)
    assert f"http://127.0.0.1:{os.environ['MASKWATCH_STORE_PORT']}" in status.output

    again = cli("up")
    assert again.exit_code == 0, again.output
    assert f"broker: already running (pid {running['broker']})" in again.output
    assert f"store: already running (pid {running['store']})" in again.output
    assert pids(cli("status").output) == running

    topics = AdminClient({"bootstrap.servers": f"127.0.0.1:{os.environ['MASKWATCH_BROKER_PORT']}"}) \
        .list_topics(timeout=10).topics
    assert len(topics[settings.topic_ticks].partitions) == 3
    assert len(topics[settings.topic_alerts].partitions) == 1
    assert settings.topic_dead_letter in topics

    down = cli("down")
    assert "store: stopped" in down.output and "broker: stopped" in down.output
    assert not any(pid_alive(p) for p in running.values())
    assert not list((home_env / "run").glob("*.pid"))
    down_again = cli("down")
    assert down_again.exit_code == 0
    assert "broker: not running" in down_again.output and "store: not running" in down_again.output
    after = cli("status")
    assert after.exit_code == 1
    assert re.search(r"broker\s+down\s+pid -", after.output)
    assert re.search(r"store\s+down\s+pid -", after.output)


def test_stale_pid_files_are_replaced(home_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = home_env / "run"
    run.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / "broker.pid").write_text(f"{dead.pid}\n")  # process gone
    (run / "store.pid").write_text(f"{os.getpid()}\n")  # alive, but not a store server (reused pid)
    monkeypatch.delenv("MASKWATCH_BROKER_PORT")
    monkeypatch.delenv("MASKWATCH_STORE_PORT")
    assert "down" in cli("status").output
    result = cli("up", "--no-topics")
    assert result.exit_code == 0, result.output
    assert "broker: started" in result.output and "store: started" in result.output
    # Ports from the settings alone (no MASKWATCH_*_PORT): what the clients will dial.
    broker_pid = pids_from_pidfiles(run)["broker"]
    assert f"broker: started (pid {broker_pid}) on {os.environ['MASKWATCH_KAFKA_BOOTSTRAP']}" in result.output
    new = pids(cli("status").output)
    assert new["broker"] != dead.pid and new["store"] != os.getpid()
    assert int((run / "broker.pid").read_text()) == new["broker"]


def test_port_taken_is_a_clear_error_and_nothing_is_left_running(home_env: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(services, ["up", "--broker-port", str(port)])
        assert result.exit_code == 1
        assert f"broker: port {port} on 127.0.0.1 is already in use" in result.output
        # The store is started after the broker; with its port taken, the broker just started is stopped.
        result = CliRunner().invoke(services, ["up", "--store-port", str(port)])
        assert result.exit_code == 1
        assert f"store: port {port} on 127.0.0.1 is already in use" in result.output
    assert not list((home_env / "run").glob("*.pid"))
    assert not port_in_use("127.0.0.1", int(os.environ["MASKWATCH_BROKER_PORT"]))


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    proc = ManagedProcess("stubborn", tmp_path / "run", tmp_path / "logs", marker="ignore-sigterm")
    script = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "print('ready', flush=True); time.sleep(60)  # ignore-sigterm")
    pid = proc.start([sys.executable, "-c", script])
    assert proc.pid() == pid
    deadline = time.monotonic() + 10
    while "ready" not in proc.log_file.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    assert proc.stop(timeout=0.5)
    assert time.monotonic() - started < 5
    assert not pid_alive(pid) and not proc.pid_file.exists()
    assert not proc.stop()


def test_attached_broker_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """What keeps a killed test run from leaving brokers behind (the fixtures start them attached)."""
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from maskwatch.devservices.broker import Broker\n"
        f"b = Broker(home=Path({str(tmp_path)!r}), port=int(sys.argv[1]), attached=True)\n"
        "print(b.start(), flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(free_port())], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == -9, out.stderr
    broker_pid = int(out.stdout.strip())
    deadline = time.monotonic() + 10
    while pid_alive(broker_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(broker_pid)


def test_ensure_topics_is_idempotent_and_warns_on_too_few_partitions(
    broker: Broker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    suffix = uuid.uuid4().hex[:8]
    monkeypatch.setenv("MASKWATCH_KAFKA_BOOTSTRAP", broker.bootstrap)
    monkeypatch.setenv("MASKWATCH_TOPIC_TICKS", f"t.{suffix}")
    monkeypatch.setenv("MASKWATCH_TOPIC_ALERTS", f"a.{suffix}")
    monkeypatch.setenv("MASKWATCH_TOPIC_DEAD_LETTER", f"d.{suffix}")
    monkeypatch.setenv("MASKWATCH_TOPIC_CAMERA_HEALTH", f"h.{suffix}")
    monkeypatch.setenv("MASKWATCH_TICK_PARTITIONS", "4")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(f"a.{suffix}", 1, 1)])[f"a.{suffix}"].result(10)  # one exists already
    wanted = {f"t.{suffix}": 4, f"a.{suffix}": 1, f"d.{suffix}": 1, f"h.{suffix}": 1}
    assert ensure_topics(Settings()) == wanted
    assert ensure_topics(Settings()) == wanted
    monkeypatch.setenv("MASKWATCH_TICK_PARTITIONS", "6")
    with caplog.at_level(logging.WARNING, logger="maskwatch.topics"):
        assert ensure_topics(Settings())[f"t.{suffix}"] == 4
    assert f"topic t.{suffix} has 4 partitions, 6 wanted" in caplog.text


def _free_s3_base() -> int:
    """A base port whose 5 ports and their +10000 gRPC twins are all free, all below the ephemeral range
    (32768+) so no client connection can be holding one when seaweed restarts."""
    for _ in range(100):
        base = random.randrange(10000, 22000)
        if not any(
            port_in_use("127.0.0.1", p) for i in range(5) for p in (base + i, base + 10000 + i)
        ):
            return base
    raise RuntimeError("no free port range for seaweed")


def _consume_all(bootstrap: str, topic: str, partitions: int, expected: int) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "session.timeout.ms": 6000})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    try:
        while len(got) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            value = message.value() if message is not None and message.error() is None else None
            if value is not None:
                got.append(value)
    finally:
        consumer.close()
    return got


def test_durable_broker_keeps_messages_across_restarts(
    home_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MASKWATCH_S3_PORT", str(_free_s3_base()))
    settings = Settings()
    result = cli("up", "--durable")
    assert result.exit_code == 0, result.output
    assert "seaweed: started" in result.output and "storage s3://tansu/" in result.output
    bootstrap = f"127.0.0.1:{os.environ['MASKWATCH_BROKER_PORT']}"
    producer = Producer({"bootstrap.servers": bootstrap})
    sent = [f"tick-{i}".encode() for i in range(30)]
    for i, value in enumerate(sent):
        producer.produce(settings.topic_ticks, key=f"cam-{i % 5}", value=value)
    assert producer.flush(20) == 0
    del producer  # closes its connections before the broker goes away

    status = cli("status")
    assert status.exit_code == 0 and re.search(r"seaweed\s+up", status.output), status.output
    # Credentials reach the broker through its environment only, never the command line or the logs.
    secret = (home_env / "seaweed" / "credentials.json").read_text()
    assert (home_env / "seaweed" / "credentials.json").stat().st_mode & 0o077 == 0
    key = __import__("json").loads(secret)["secret_key"]
    for log_file in (home_env / "logs").glob("*.log"):
        assert key not in log_file.read_text(errors="replace")

    down = cli("down")
    assert "seaweed: stopped" in down.output and "broker: stopped" in down.output
    again = cli("up", "--durable")
    assert again.exit_code == 0, again.output
    assert "broker: started" in again.output and "seaweed: started" in again.output
    got = _consume_all(bootstrap, settings.topic_ticks, settings.tick_partitions, len(sent))
    assert sorted(got) == sorted(sent)
