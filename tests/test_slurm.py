"""The README's SLURM recipes against a real single-node SLURM (``cluster/slurm_local.sh``).

Runs ``benchmarks/slurm_recipes.py`` (about 15 minutes on 2 cores): the array script with its dependent group job
and ``--plugin SLURM`` must give the derivatives of a local MultiProc run, and a participant with a truncated
image must end as a FAILED SLURM job with exit code 1 and a crash file. Needs root (it installs slurm-wlm and
munge with apt-get when they are missing and starts the daemons).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_slurm_recipes(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld and slurmd needs root")
    result = subprocess.run([str(REPO / "cluster" / "slurm_local.sh"), str(tmp_path / "slurm"), sys.executable,
                             str(REPO / "benchmarks" / "slurm_recipes.py"), str(tmp_path / "runs")],
                            capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert results["problems"] == []
    states = {k: (v["JobState"], v["ExitCode"]) for k, v in results["jobs"].items()}
    assert sorted(states.values()).count(("COMPLETED", "0:0")) == 3  # two array tasks and the group job
    assert ("FAILED", "1:0") in states.values()  # the truncated image
    assert list((tmp_path / "runs" / "broken" / "out" / "logs").glob("crash-*.txt"))
    # Nothing of the cluster is left running.
    assert subprocess.run(["pgrep", "-f", str(tmp_path / "slurm")], capture_output=True).stdout == b""
