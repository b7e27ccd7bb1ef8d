#!/usr/bin/env python
"""The README's two SLURM recipes, run against a real SLURM and checked against a local MultiProc run.

    sudo cluster/slurm_local.sh /tmp/slurm-state python benchmarks/slurm_recipes.py ROOT

(``cluster/slurm_local.sh`` starts a single-node SLURM and sets SLURM_CONF.) In ROOT:

- ``good/``: a copy of ``bids_examples/ds-travel`` with one session per participant (sub-01 sonata, sub-02
  vida). The README's array script and submission commands run there verbatim, except that the app runs from
  this Python (the README's line for a virtual environment) instead of ``singularity run``. Then the README's
  ``--plugin SLURM`` command runs on the same dataset, and finally a local MultiProc run: all three must give
  the same derivatives (same seed, one thread per image), and the group job must start after the array ends.
- ``broken/``: sub-03 with a truncated NIfTI, through the same array script: its task must be FAILED with exit
  code 1 in SLURM's records, leave a crash file in ``out/logs``, and hold the group job back
  (DependencyNeverSatisfied).

It writes ROOT/results.json (job states, times, the array tasks' peak RSS and CPU time as sampled by ``sstat``)
and exits 1 with one line per failed check.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "bids_examples" / "ds-travel"
PYTHON_APP = f"{sys.executable} -m bhd_app.cli.run"
# Sidecar fields that hold run times, hosts or paths of the run rather than results.
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING")
TIMINGS = "TimingsSeconds"  # the preprocessing sidecar's run times: the one field that differs between runs
VOLATILE = {"Timings", "timings", "seconds", "wall_s", "WorkDir", "Host", "host", "DateCreated", "date"}


def readme_blocks() -> list[str]:
    """The bash blocks of README.md's "Clusters" section, in order."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Clusters\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


def replace_command(text: str, start: str, new: str) -> str:
    """``text`` with the command that begins a line with ``start`` (and its continuation lines) replaced."""
    pattern = rf"^{re.escape(start)}(?:.*\\\n)*.*$"
    assert re.search(pattern, text, re.M), f"no command starting with {start!r}"
    return re.sub(pattern, lambda _: new, text, flags=re.M)


def venv_recipes() -> tuple[str, str, str]:
    """The README's array script, submission commands and --plugin SLURM command, for an app run by this Python.

    The README gives the script and submission with ``singularity run``, then the same two commands for an app
    in a virtual environment; those replace the ``singularity run`` and group ``sbatch`` commands.
    """
    script, submit, venv, plugin = (block.replace("/shared/venvs/bhd/bin/bhd-app", PYTHON_APP)
                                    for block in readme_blocks()[:4])
    venv_participant, venv_group = venv.strip().splitlines()
    script = replace_command(script, "singularity run", venv_participant)
    submit = replace_command(submit, "sbatch --dependency", venv_group)
    assert "singularity" not in script + submit, "could not replace the singularity commands"
    return script, submit, plugin.strip().replace("bhd-app", PYTHON_APP)


def copy_dataset(dest: Path, jobs: list[tuple[str, str]]) -> Path:
    """ds-travel with only the T1w images of the given (subject, session) pairs, and their participants rows."""
    dest.mkdir(parents=True)
    for name in ("dataset_description.json", "README", "participants.json"):
        shutil.copy(EXAMPLES / name, dest / name)
    rows = (EXAMPLES / "participants.tsv").read_text().splitlines()
    subjects = [f"sub-{sub}" for sub, _ in jobs]
    (dest / "participants.tsv").write_text("\n".join([rows[0]] + [r for r in rows[1:] if r.split("\t")[0] in subjects])
                                           + "\n")
    for sub, ses in jobs:
        anat = Path(f"sub-{sub}", f"ses-{ses}", "anat")
        (dest / anat).mkdir(parents=True)
        for f in (EXAMPLES / anat).glob("*_T1w.*"):
            shutil.copy(f, dest / anat / f.name)
    return dest


def submit(cwd: Path, script: str, commands: str) -> None:
    """Run the README's submission commands in ``cwd`` with the array script saved as participants.sbatch."""
    (cwd / "participants.sbatch").write_text(script)
    subprocess.run(["bash", "-euc", commands], cwd=cwd, check=True)


def jobs(top_ids: set[str] | None = None) -> dict[str, dict]:
    """The jobs SLURM knows (``scontrol show job``) by id, array tasks as ``ARRAY_TASK``; with ``top_ids``, only
    those jobs and the tasks of those arrays."""
    out = subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobId" not in fields:  # "No jobs in the system"
            continue
        if top_ids is None or fields.get("ArrayJobId", fields["JobId"]) in top_ids:
            key = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}" if "ArrayTaskId" in fields else fields["JobId"]
            found[key] = fields
    return found


def submitted_since(before: set[str]) -> set[str]:
    """The ids of the jobs and arrays submitted since ``before`` (a former value of this function's set)."""
    return {f.get("ArrayJobId", f["JobId"]) for f in jobs().values()} - before


def wait_and_sample(top_ids: set[str], timeout_s: float = 3600) -> dict[str, dict]:
    """Wait until the given jobs and arrays have ended (or wait for a dependency that failed), sampling each
    running job's batch step with ``sstat`` every 5 s.

    Returns each job's last sample: MaxRSS (its processes together, the peak so far) and AveCPU (CPU time).
    """
    samples = {}
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        state = jobs(top_ids)
        for key, fields in state.items():
            if fields["JobState"] != "RUNNING":
                continue
            out = subprocess.run(["sstat", "-n", "-P", "-j", f"{fields['JobId']}.batch", "-o", "MaxRSS,AveCPU"],
                                 capture_output=True, text=True).stdout.split()
            if out:
                max_rss, ave_cpu = out[0].split("|")
                samples[key] = {"MaxRSS": max_rss, "AveCPU": ave_cpu}
        if all(f["JobState"] not in ACTIVE or f["Reason"] == "DependencyNeverSatisfied" for f in state.values()):
            return samples
        time.sleep(5)
    raise TimeoutError(f"jobs {top_ids} still running after {timeout_s} s")


def derivative_files(out: Path) -> dict[str, Path]:
    """A run's files per subject, by relative path, without the reports (they hold the run times)."""
    return {str(p.relative_to(out)): p for p in sorted(out.glob("sub-*/**/*")) if p.is_file() and p.suffix != ".html"}


def differences(reference: Path, other: Path) -> list[str]:
    """How ``other``'s derivatives differ from ``reference``'s: images voxel by voxel, sidecars as JSON apart
    from run times, other files byte by byte."""
    ref, oth = derivative_files(reference), derivative_files(other)
    problems = [f"{other}: missing {name}" for name in ref if name not in oth]
    problems += [f"{other}: extra {name}" for name in oth if name not in ref]
    for name in sorted(ref.keys() & oth.keys()):
        a, b = ref[name], oth[name]
        if name.endswith(".nii.gz"):
            ia, ib = nib.load(a), nib.load(b)
            if not (np.array_equal(ia.affine, ib.affine) and np.array_equal(np.asarray(ia.dataobj), np.asarray(ib.dataobj))):
                problems.append(f"{other}: {name} differs from the reference")
        elif name.endswith(".json"):
            sidecar_a, sidecar_b = json.loads(a.read_text()), json.loads(b.read_text())
            sidecar_a.pop(TIMINGS, None)
            sidecar_b.pop(TIMINGS, None)
            if sidecar_a != sidecar_b:
                problems.append(f"{other}: {name} differs from the reference (apart from {TIMINGS})")
        elif a.read_bytes() != b.read_bytes():
            problems.append(f"{other}: {name} differs from the reference")
    return problems


def truncate(path: Path) -> None:
    """Keep the first half of a .nii.gz: a broken download."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    try:
        gzip.decompress(path.read_bytes())
        raise AssertionError(f"{path} still decompresses")
    except EOFError:
        pass


def main(root: Path) -> int:
    if "SLURM_CONF" not in os.environ and shutil.which("sinfo") is None:
        print("slurm_recipes: no SLURM here; run under cluster/slurm_local.sh", file=sys.stderr)
        return 2
    root.mkdir(parents=True, exist_ok=True)
    if not EXAMPLES.exists():
        subprocess.run([sys.executable, str(REPO / "bids_examples" / "make_examples.py")], check=True)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    os.environ["OMP_NUM_THREADS"] = "1"
    script, commands, plugin_cmd = venv_recipes()
    good = root / "good"
    broken = root / "broken"
    copy_dataset(good / "bids", [("01", "sonata"), ("02", "vida")])
    copy_dataset(broken / "bids", [("03", "trio")])
    truncate(broken / "bids" / "sub-03" / "ses-trio" / "anat" / "sub-03_ses-trio_T1w.nii.gz")
    problems, results = [], {"date": time.strftime("%Y-%m-%d %H:%M"), "host": os.uname().nodename,
                             "cpus": os.cpu_count()}

    # (a) the array script and the dependent group job, in good/ and broken/
    start = time.monotonic()
    submit(good, script, commands)
    good_top = submitted_since(set())
    submit(broken, script, commands)
    broken_top = submitted_since(good_top)
    samples = wait_and_sample(good_top | broken_top)
    results["array_wall_s"] = round(time.monotonic() - start)
    state = jobs()
    good_ids, broken_ids = sorted(jobs(good_top)), sorted(jobs(broken_top))
    results["jobs"] = {k: {f: state[k].get(f) for f in ("JobName", "JobState", "ExitCode", "Reason", "StartTime",
                                                          "EndTime", "RunTime", "NumCPUs", "MinMemoryNode")}
                       for k in good_ids + broken_ids}
    results["sstat"] = samples
    tasks = [k for k in good_ids if "_" in k]
    groups = [k for k in good_ids if "_" not in k]
    if len(tasks) != 2 or len(groups) != 1:
        problems.append(f"good/: expected 2 array tasks and 1 group job, got {good_ids}")
    for k in good_ids:
        if (state[k]["JobState"], state[k]["ExitCode"]) != ("COMPLETED", "0:0"):
            problems.append(f"good/: job {k} {state[k]['JobState']} exit {state[k]['ExitCode']}")
    if groups and tasks and state[groups[0]]["StartTime"] < max(state[k]["EndTime"] for k in tasks):
        problems.append(f"good/: the group job started at {state[groups[0]]['StartTime']}, before the array ended")
    if not (good / "out" / "group_bhd.tsv").exists():
        problems.append("good/: the group job wrote no out/group_bhd.tsv")
    broken_task = [k for k in broken_ids if "_" in k]
    broken_group = [k for k in broken_ids if "_" not in k]
    if broken_task and (state[broken_task[0]]["JobState"], state[broken_task[0]]["ExitCode"]) != ("FAILED", "1:0"):
        problems.append(f"broken/: task {broken_task[0]} is {state[broken_task[0]]['JobState']} exit "
                        f"{state[broken_task[0]]['ExitCode']}, not FAILED with exit code 1")
    jobcomp = (Path(os.environ["SLURM_CONF"]).parent / "jobcomp.txt").read_text() if "SLURM_CONF" in os.environ else ""
    if broken_task and not re.search(rf"JobId={state[broken_task[0]]['JobId']} .*JobState=FAILED .*ExitCode=1:0",
                                     jobcomp):
        problems.append("broken/: the failed task is not in the job completion log with ExitCode=1:0")
    if not list((broken / "out" / "logs").glob("crash-*sub_03*.txt")):
        problems.append("broken/: no crash file for sub-03 in out/logs")
    if broken_group and (state[broken_group[0]]["JobState"], state[broken_group[0]]["Reason"]) != (
            "PENDING", "DependencyNeverSatisfied"):
        problems.append(f"broken/: the group job is {state[broken_group[0]]['JobState']} "
                        f"({state[broken_group[0]]['Reason']}), not held back by the failed task")
    subprocess.run(["scancel", *[state[k]["JobId"] for k in broken_group]], check=False)

    # (b) nipype submits the jobs itself (README: --plugin SLURM), on the same dataset
    plugin_cmd = plugin_cmd.replace(" out ", " out-plugin ").replace("-w work ", "-w work-plugin ")
    start = time.monotonic()
    before = set(jobs())
    no_logname = {k: v for k, v in os.environ.items() if k != "LOGNAME"}  # as in a container or CI
    run = subprocess.run(["bash", "-euc", plugin_cmd], cwd=good, env=no_logname, capture_output=True, text=True)
    results["plugin_wall_s"] = round(time.monotonic() - start)
    results["plugin_jobs"] = {k: f["JobState"] for k, f in sorted(jobs().items()) if k not in before}
    if run.returncode != 0:
        problems.append(f"--plugin SLURM: exit {run.returncode}: {run.stderr.strip()[-500:]}")
    if len(results["plugin_jobs"]) < 8 or set(results["plugin_jobs"].values()) != {"COMPLETED"}:
        problems.append(f"--plugin SLURM: expected 4 COMPLETED SLURM jobs per image, got {results['plugin_jobs']}")

    # the same participants with MultiProc on this machine
    start = time.monotonic()
    local = subprocess.run([*PYTHON_APP.split(), "bids", "out-local", "participant", "-w", "work-local",
                            "--nprocs", "2"], cwd=good, capture_output=True, text=True)
    results["local_wall_s"] = round(time.monotonic() - start)
    if local.returncode != 0:
        problems.append(f"MultiProc: exit {local.returncode}: {local.stderr.strip()[-500:]}")
    for other in ("out", "out-plugin"):
        problems += differences(good / "out-local", good / other)

    results["problems"] = problems
    (root / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    for problem in problems:
        print(f"slurm_recipes: FAILED {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1]).resolve()))
