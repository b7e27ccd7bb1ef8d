"""Group-level benchmark: its wall time for 8, 32 and 128 images, and its segmentation against Atropos.

    python bids_examples/make_examples.py
    bhd-app bids_examples/ds-travel out participant -w work        # the README demo
    python benchmarks/bench_group.py out [--sizes 8 32 128] [--nprocs 2] [--atropos] [--rigid]

Scaling: the example dataset's complete jobs are copied under new subject labels (sub-01 -> sub-01c00, ...;
images linked, sidecars copied) until a dataset holds the requested number of images, and the group level
runs on it (``run_group_level``, as ``bhd-app ... group --nprocs N``), timed from start to written report.

``--atropos``: every version of every example image (before, the method run, histogram matching) is also
segmented by ``ants.atropos`` with the model and schedule that ``site_effects.segment`` reproduces; the table
gives the voxel agreement, the volume differences per tissue, and the traveling pairs' volume differences
with each segmentation (the group report's downstream numbers).

``--rigid``: each traveling pair of the example dataset is aligned with ANTs' short rigid schedule
(``QuickRigid``, the group level's) and with its full one (``Rigid``); the table gives each pair's PSNR per
version (before, the method run, histogram matching) and the seconds per pair with each.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EXAMPLES = Path(__file__).resolve().parents[1] / "bids_examples" / "ds-travel"


def copy_with_labels(src: Path, dest: Path, copies: int) -> None:
    """``src`` (a BIDS dataset or its derivatives) into ``dest`` with each subject repeated ``copies`` times under
    new labels; NIfTI files are linked, text files copied with the labels replaced."""
    dest.mkdir(parents=True)
    subjects = sorted(p.name for p in src.glob("sub-*") if p.is_dir())
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_dir() or rel.parts[0] == "logs" or rel.parts[0].startswith("group_"):
            continue
        owner = next((s for s in subjects if rel.parts[0] == s or rel.parts[0].startswith(s + "_")), None)
        if owner is None:  # dataset-level files
            if path.name == "participants.tsv":
                lines = path.read_text().splitlines()
                rows = [line.replace(s, f"{s}c{c:02d}", 1) for c in range(copies) for line in lines[1:]
                        for s in subjects if line.startswith(s + "\t")]
                (dest / rel).write_text("\n".join([lines[0], *rows]) + "\n")
            elif not path.name.endswith(".html"):
                shutil.copy(path, dest / rel)
            continue
        for c in range(copies):
            target = dest / str(rel).replace(owner, f"{owner}c{c:02d}")
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.name.endswith((".nii.gz", ".nii", ".mat", ".h5")):
                target.symlink_to(path.resolve())
            elif path.suffix in (".json", ".tsv", ".html", ".md"):
                target.write_text(path.read_text().replace(owner, f"{owner}c{c:02d}"))


def scaling(derivatives: Path, sizes: list[int], nprocs: int) -> list[dict]:
    from bhd_app.pipeline.group import collect_results, run_group_level, traveling_pairs

    jobs = len(collect_results(EXAMPLES, derivatives))
    rows = []
    for size in sizes:
        copies = -(-size // jobs)
        with tempfile.TemporaryDirectory() as tmp:
            bids, out = Path(tmp) / "bids", Path(tmp) / "out"
            copy_with_labels(EXAMPLES, bids, copies)
            copy_with_labels(derivatives, out, copies)
            started = time.monotonic()
            run_group_level(bids, out, nprocs=nprocs)
            wall = time.monotonic() - started
            records = collect_results(bids, out)
            rows.append({"images": len(records), "pairs": len(traveling_pairs(records)), "wall_s": wall,
                         "s_per_image": wall / len(records)})
            print(rows[-1], flush=True)
    return rows


def atropos_labels(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """ants.atropos with the model and schedule of ``site_effects.segment``, labels ordered by mean intensity."""
    import ants

    brain = mask > 0
    labels = ants.atropos(a=ants.from_numpy(image), x=ants.from_numpy(brain.astype(np.float32)), i="kmeans[3]",
                          m="[0.1,1x1x1]", c="[5,0]", verbose=0)["segmentation"].numpy().astype(np.uint8)
    labels[~brain] = 0
    return labels


def against_atropos(derivatives: Path) -> dict:
    from bhd_app.pipeline.group import _target_quantiles, collect_results, image_versions, traveling_pairs
    from bhd_app.pipeline.site_effects import TISSUES, segment, tissue_volumes

    records = collect_results(EXAMPLES, derivatives)
    quantiles = _target_quantiles(records, None)
    volumes: dict[str, list[dict]] = {"numpy": [], "atropos": []}
    agreement, seconds = [], {"numpy": 0.0, "atropos": 0.0}
    for r in records:
        images, mask = image_versions(r, quantiles[r["suffix"]])
        for condition, image in images.items():
            started = time.monotonic()
            ours = segment(image, mask)
            seconds["numpy"] += time.monotonic() - started
            started = time.monotonic()
            theirs = atropos_labels(image, mask)
            seconds["atropos"] += time.monotonic() - started
            agreement.append(float((ours == theirs)[mask].mean()))
            volumes["numpy"].append({"job": r["job"], "condition": condition, **tissue_volumes(ours)})
            volumes["atropos"].append({"job": r["job"], "condition": condition, **tissue_volumes(theirs)})
            print(r["job"], condition, f"agreement {agreement[-1]:.4f}", flush=True)
    diffs = {t: [abs(a[t] - b[t]) for a, b in zip(volumes["numpy"], volumes["atropos"])] for t in TISSUES}
    travel = {}
    for how, rows in volumes.items():
        by = {(v["job"], v["condition"]): v for v in rows}
        for condition in {v["condition"] for v in rows}:
            d = [abs(by[(records[i]["job"], condition)][t] - by[(records[j]["job"], condition)][t])
                 for i, j in traveling_pairs(records) for t in ("GM", "WM")]
            travel[(how, condition)] = (np.mean(d[0::2]), np.mean(d[1::2]))
    return {"versions": len(agreement), "agreement_min": min(agreement), "agreement_mean": float(np.mean(agreement)),
            "abs_diff_mL": {t: (float(np.mean(v)), float(np.max(v))) for t, v in diffs.items()},
            "seconds_per_version": {k: v / len(agreement) for k, v in seconds.items()}, "traveling": travel}


def rigid_schedules(derivatives: Path) -> list[dict]:
    """Each example traveling pair's agreement per version and seconds, with QuickRigid and with Rigid."""
    from bhd_app.pipeline.group import _target_quantiles, collect_results, pair_agreement, traveling_pairs

    records = collect_results(EXAMPLES, derivatives)
    quantiles = _target_quantiles(records, None)
    rows = []
    for i, j in traveling_pairs(records):
        a, b = records[i], records[j]
        for schedule in ("QuickRigid", "Rigid"):
            started = time.monotonic()
            scores = pair_agreement(a, b, quantiles[a["suffix"]], quantiles[b["suffix"]], schedule=schedule)
            rows.append({"pair": f"{a['job']} / {b['job']}", "schedule": schedule,
                         "seconds": time.monotonic() - started, **{c: psnr for c, (psnr, _) in scores.items()}})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("derivatives", type=Path, help="the README demo's participant outputs (out/)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[8, 32, 128])
    parser.add_argument("--nprocs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--atropos", action="store_true", help="also compare the segmentation with ants.atropos")
    parser.add_argument("--rigid", action="store_true", help="also compare QuickRigid with Rigid on traveling pairs")
    args = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} CPU cores, --nprocs {args.nprocs}")
    if args.atropos:
        result = against_atropos(args.derivatives)
        print(f"\nSegmentation against Atropos over {result['versions']} image versions: voxel agreement mean "
              f"{result['agreement_mean']:.4f}, min {result['agreement_min']:.4f}; seconds per version "
              + ", ".join(f"{k} {v:.1f}" for k, v in result["seconds_per_version"].items()))
        print("| tissue | mean abs. volume difference (mL) | max (mL) |\n|---|---|---|")
        for t, (mean, top) in result["abs_diff_mL"].items():
            print(f"| {t} | {mean:.2f} | {top:.2f} |")
        print("\n| segmentation | version | traveling pairs' mean abs. dGM (mL) | dWM (mL) |\n|---|---|---|---|")
        for (how, condition), (gm, wm) in sorted(result["traveling"].items()):
            print(f"| {how} | {condition} | {gm:.1f} | {wm:.1f} |")
    if args.rigid:
        rows = rigid_schedules(args.derivatives)
        versions = [k for k in rows[0] if k not in ("pair", "schedule", "seconds")]
        print("\n| pair | schedule | seconds | " + " | ".join(f"PSNR {v}" for v in versions) + " |")
        print("|" + "---|" * (3 + len(versions)))
        for r in rows:
            scores = " | ".join(f"{r[v]:.2f}" for v in versions)
            print(f"| {r['pair']} | {r['schedule']} | {r['seconds']:.1f} | {scores} |")
        for schedule in ("QuickRigid", "Rigid"):
            mine = [r for r in rows if r["schedule"] == schedule]
            print(f"{schedule}: mean " + ", ".join(f"{v} {np.mean([r[v] for r in mine]):.2f} dB" for v in versions)
                  + f"; {np.mean([r['seconds'] for r in mine]):.1f} s a pair")
    if args.sizes:
        rows = scaling(args.derivatives, args.sizes, args.nprocs)
        print("\n| images | traveling pairs | wall time | seconds per image |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['images']} | {r['pairs']} | {r['wall_s'] / 60:.1f} min | {r['s_per_image']:.1f} |")


if __name__ == "__main__":
    main()
