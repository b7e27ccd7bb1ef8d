"""Participant level with ``--nprocs 1`` against ``--nprocs 2``: wall time and peak memory.

    python benchmarks/bench_nprocs.py [--nprocs 1 2] [--participant-label 01 03] [--session-label trio sonata]

Runs ``bhd-app BIDS OUT participant --nprocs N -w WORK --skip-bids-validation`` on
``bids_examples/ds-travel`` (made by ``bids_examples/make_examples.py`` when missing) in fresh output and
work folders for each N, samples the summed resident memory of the whole process tree (nipype's MultiProc
workers included) from /proc every 0.2 s, checks that every job wrote its harmonized image, and compares the
harmonized images of the runs voxel by voxel. Linux only (/proc). The default subset is 4 jobs (T1w of
sub-01 and sub-03, sessions trio and sonata).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT / "bids_examples" / "ds-travel"
PAGE = os.sysconf("SC_PAGE_SIZE")


def children() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process in /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    tree, todo, total = children(), [pid], 0
    while todo:
        p = todo.pop()
        todo.extend(tree.get(p, []))
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
        except OSError:
            pass
    return total


def run(nprocs: int, root: Path, labels: list[str], sessions: list[str]) -> dict:
    out, work = root / f"out-n{nprocs}", root / f"work-n{nprocs}"
    for d in (out, work):
        shutil.rmtree(d, ignore_errors=True)
    cmd = ["bhd-app", str(DATASET), str(out), "participant", "--nprocs", str(nprocs), "-w", str(work),
           "--skip-bids-validation", "--participant-label", *labels, "--session-label", *sessions]
    print("$", " ".join(cmd), flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(root / f"log-n{nprocs}.txt", "w"))
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.2)
    wall = time.monotonic() - start
    print(f"--nprocs {nprocs}: {wall:.0f} s, load average over the last 5 min {os.getloadavg()[1]:.2f}", flush=True)
    if proc.returncode:
        sys.exit(f"--nprocs {nprocs} failed ({proc.returncode}); see {root / f'log-n{nprocs}.txt'}")
    images = sorted(out.glob("sub-*/ses-*/anat/*space-MNI152NLin2009aSym*desc-harmonized_T1w.nii.gz"))
    return {"nprocs": nprocs, "wall_s": wall, "peak_gib": peak / 2**30, "images": images, "out": out}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--participant-label", nargs="+", default=["01", "03"])
    p.add_argument("--session-label", nargs="+", default=["trio", "sonata"])
    p.add_argument("--root", type=Path, help="folder for the outputs (default: a temporary one, removed)")
    args = p.parse_args()
    if not DATASET.exists():
        subprocess.run([sys.executable, str(ROOT / "bids_examples" / "make_examples.py")], check=True)
    root = args.root or Path(tempfile.mkdtemp(prefix="bench_nprocs_"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"{datetime.now():%Y-%m-%d %H:%M}, {platform.node()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    results = [run(n, root, args.participant_label, args.session_label) for n in args.nprocs]
    jobs = len(results[0]["images"])
    print("\n| --nprocs | jobs | wall time | peak memory (process tree RSS) |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['nprocs']} | {len(r['images'])} | {r['wall_s']:.0f} s | {r['peak_gib']:.2f} GiB |")
    if len(results) > 1:
        print(f"\nspeed-up {results[0]['wall_s'] / results[-1]['wall_s']:.2f}x "
              f"(--nprocs {results[0]['nprocs']} vs {results[-1]['nprocs']})")
        names = [[im.relative_to(r["out"]) for im in r["images"]] for r in results]
        assert all(n == names[0] for n in names), "the runs wrote different files"
        diff = max(float(np.abs(nib.load(results[0]["out"] / n).get_fdata()
                                - nib.load(r["out"] / n).get_fdata()).max())
                   for r in results[1:] for n in names[0])
        print(f"{jobs} harmonized images, largest voxel difference between the runs: {diff:.3g}")
    if args.root is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
