"""``python -m bench.first_run``: how long a new user waits, from ``bin/dev up`` to a live dashboard with
alerts, on this machine.

It runs ``bin/dev up`` as a user would (the venv as it is, the models cache as it is unless ``--fresh-models``
points the run at an empty one, so the pinned wheels are downloaded and converted), with its own
``MASKWATCH_HOME`` and free ports, then polls until the dashboard answers and the store holds an alert, and
prints each milestone in seconds; ``maskwatch down`` ends the run. The tuned models are built in the
background meanwhile; how long that takes is printed too when ``--wait-tuned`` is given.

    .venv/bin/python -m bench.first_run
    .venv/bin/python -m bench.first_run --fresh-models --wait-tuned
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import click

REPO_ROOT = Path(__file__).resolve().parents[1]


def _since(t0: float) -> float:
    return round(time.monotonic() - t0, 1)


@click.command()
@click.option("--fresh-models", is_flag=True, help="Start from an empty models cache (downloads the wheels).")
@click.option("--wait-tuned", is_flag=True, help="Also wait until the flow serves the tuned models.")
@click.option("--timeout", "timeout_s", default=1800.0, show_default=True, help="Give up after this long.")
def main(fresh_models: bool, wait_tuned: bool, timeout_s: float) -> None:
    from maskwatch.config import Settings
    from maskwatch.ports import free_port

    home = Path(tempfile.mkdtemp(prefix="maskwatch-first-run-"))
    broker, store_port, dashboard = free_port(), free_port(), free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MASKWATCH_")},
           "MASKWATCH_HOME": str(home), "MASKWATCH_KAFKA_BOOTSTRAP": f"127.0.0.1:{broker}",
           "MASKWATCH_STORE_URL": f"http://127.0.0.1:{store_port}/?database=maskwatch",
           "MASKWATCH_DASHBOARD_PORT": str(dashboard)}
    if fresh_models:
        env["MASKWATCH_MODELS_DIR"] = str(home / "models")
    marks: dict[str, float] = {}
    t0 = time.monotonic()
    up = subprocess.run([str(REPO_ROOT / "bin" / "dev"), "up"], env=env, cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=timeout_s)
    marks["bin/dev up returned"] = _since(t0)
    if up.returncode != 0:
        subprocess.run([sys.executable, "-m", "maskwatch.cli", "down"], env=env, cwd=REPO_ROOT,
                       capture_output=True, timeout=120)
        raise click.ClickException(f"bin/dev up failed:\n{up.stdout[-2000:]}\n{up.stderr[-2000:]}")
    for key, value in env.items():
        os.environ[key] = value
    settings = Settings()
    from maskwatch import store

    def first(sql: str) -> dict[str, object] | None:
        try:
            rows = store.query_rows(sql, settings=settings)
        except Exception:
            return None
        return rows[0] if rows else None

    try:
        deadline = t0 + timeout_s
        while time.monotonic() < deadline and len(marks) < 4:
            if "dashboard answers" not in marks:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/_stcore/health", timeout=2):
                        marks["dashboard answers"] = _since(t0)
                except OSError:
                    pass
            if "first frame stored" not in marks and first("SELECT 1 FROM frames LIMIT 1"):
                marks["first frame stored"] = _since(t0)
            if "first alert stored" not in marks and first("SELECT 1 FROM alerts LIMIT 1"):
                marks["first alert stored"] = _since(t0)
            if len(marks) == 4 and wait_tuned:
                break
            time.sleep(1)
        while wait_tuned and time.monotonic() < deadline:
            row = first("SELECT detector_model AS d, classifier_model AS c FROM frames "
                        "ORDER BY processed_at DESC LIMIT 1")
            if row and str(row["d"]).endswith("-ft") and str(row["c"]).endswith("-ft"):
                marks["tuned models serving"] = _since(t0)
                break
            time.sleep(5)
    finally:
        store.close_clients()
        subprocess.run([sys.executable, "-m", "maskwatch.cli", "down"], env=env, cwd=REPO_ROOT,
                       capture_output=True, timeout=120)
    width = max(map(len, marks))
    for name, seconds in marks.items():
        click.echo(f"{name.ljust(width)}  {seconds:8.1f} s")
    click.echo(json.dumps({"first_run_s": marks, "fresh_models": fresh_models}))


if __name__ == "__main__":
    main()
