"""``python -m bench.first_test``: how long ``.ci/run`` takes on a fresh machine, as CI runs it.

It clones this repository's HEAD into a temporary folder beside a link to ``../shared`` (as CI has it),
and runs its ``.ci/run`` with an empty home folder (no venv, no pip or models cache; the pip settings of
this machine are copied, since they say where its package indexes are), then prints when each of
``bin/dev``'s steps began and each pytest phase ended, in seconds from the start, and the exit code.
Debian packages already installed stay installed: their install is not timed.

    .venv/bin/python -m bench.first_test
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import click

REPO_ROOT = Path(__file__).resolve().parents[1]
# What is timed: bin/dev's own steps, and the summary line each pytest run ends with.
MILESTONE = re.compile(r"^(dev: .*|=+ .*(passed|failed|error).* in [0-9.]+s.* =+)$")


@click.command()
@click.option("--keep", is_flag=True, help="Keep the clone and its home folder (printed) after the run.")
def main(keep: bool) -> None:
    work = Path(tempfile.mkdtemp(prefix="maskwatch-first-test-"))
    clone, home = work / "main", work / "home"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(clone)], check=True)
    (work / "shared").symlink_to(REPO_ROOT.parent / "shared")
    pip_config = Path.home() / ".config" / "pip"
    if pip_config.is_dir():
        shutil.copytree(pip_config, home / ".config" / "pip")
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASKWATCH_")} | {"HOME": str(home)}
    marks: list[tuple[float, str]] = []
    t0 = time.monotonic()
    with subprocess.Popen([str(clone / ".ci" / "run")], cwd=clone, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as run:
        assert run.stdout is not None
        for line in run.stdout:
            line = line.rstrip()
            if MILESTONE.match(line):
                marks.append((round(time.monotonic() - t0, 1), line.strip("= ")))
                click.echo(f"{marks[-1][0]:8.1f} s  {marks[-1][1]}", err=True)
    total = round(time.monotonic() - t0, 1)
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    click.echo(json.dumps({"ci_run_s": total, "exit_code": run.returncode, "milestones": marks,
                           "kept": str(work) if keep else None}))


if __name__ == "__main__":
    main()
