"""Peak memory of one participant job on a large input (512 x 512 x 400 float32, about 400 MB in memory).

    python benchmarks/bench_memory.py [--shape 512 512 400] [--data ../shared/data]

The input is the real 1 mm head of ``VolumeRenderingData/seg3D/MR.nii.gz`` (MIT) resampled (trilinear) onto the
requested matrix over the same field of view, saved as float32 in a one-image BIDS dataset. ``bhd-app ...
participant --nprocs 1`` runs on it; the resident memory of its whole process tree (``/proc``, every 0.1 s) gives
the peak, also per input voxel, and per workflow node: each sample is counted to the node whose folder in the
work directory appeared last (``startup`` before the first).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

NODES = ("preprocess", "harmonize", "to_native", "derivatives")  # the job workflow's nodes (workflows.init_job_wf)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the repository


def make_input(head: Path, shape: tuple[int, int, int], bids: Path) -> int:
    """A one-image BIDS dataset whose T1w is ``head`` resampled onto ``shape``; returns the input's voxel count."""
    img = nib.load(head)
    data = img.get_fdata(dtype=np.float32)
    factors = np.asarray(shape) / np.asarray(data.shape)
    big = ndimage.zoom(data, factors, order=1).astype(np.float32)
    affine = img.affine.copy()
    affine[:3, :3] = affine[:3, :3] / factors  # the same field of view in smaller voxels
    anat = bids / "sub-01" / "anat"
    anat.mkdir(parents=True)
    nib.save(nib.Nifti1Image(big, affine), anat / "sub-01_T1w.nii.gz")
    (anat / "sub-01_T1w.json").write_text(json.dumps({"MagneticFieldStrength": 3, "Manufacturer": "unknown"}))
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "large input", "BIDSVersion": "1.9.0"}))
    return int(big.size)


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            rss[int(entry.name)] = int((entry / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 400])
    parser.add_argument("--data", type=Path, default=SHARED)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bids, out, work = Path(tmp) / "bids", Path(tmp) / "out", Path(tmp) / "work"
        voxels = make_input(args.data / "VolumeRenderingData" / "seg3D" / "MR.nii.gz", tuple(args.shape), bids)
        command = [str(Path(sys.executable).parent / "bhd-app"), str(bids), str(out), "participant", "-w", str(work),
                   "--nprocs", "1", "--skip-bids-validation"]
        started, peak = time.monotonic(), 0
        seen: list[str] = []  # workflow nodes in the order their folders appeared
        by_node: dict[str, int] = {}
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while process.poll() is None:
            rss = tree_rss(process.pid)
            peak = max(peak, rss)
            seen += [n for n in NODES if n not in seen and any(work.rglob(n))]
            node = seen[-1] if seen else "startup"
            by_node[node] = max(by_node.get(node, 0), rss)
            time.sleep(0.1)
        wall = time.monotonic() - started
        if process.returncode != 0:
            sys.exit(f"bhd-app failed ({process.returncode}): {process.stderr.read()[-2000:]}")
        timings = {}
        for sidecar in out.rglob("*desc-preproc_T1w.json"):
            timings = json.loads(sidecar.read_text()).get("TimingsSeconds", {})
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} CPU cores")
    print(f"input {' x '.join(map(str, args.shape))} float32 ({voxels * 4 / 2**20:.0f} MiB); job wall {wall:.0f} s; "
          f"peak RSS of the process tree {peak / 2**30:.2f} GiB = {peak / voxels:.1f} bytes per input voxel")
    print("peak RSS while each node ran (GiB):", {n: round(v / 2**30, 2) for n, v in by_node.items()})
    if timings:
        print("preprocessing steps (s):", timings)


if __name__ == "__main__":
    main()
