"""Preprocessing benchmark: wall time per step and brain-extraction Dice on real images.

    python benchmarks/bench_preprocessing.py [--data ../shared/data] [--png DIR] [--threads 1]
    python benchmarks/bench_preprocessing.py --compare [--threads 1]

--compare runs each T1w head of COMPARE twice, with the settings of BEFORE (those up to commit 462b6c2) and
with today's, and gives each step's time for both with the accuracy checks of issue 33 beside them: the native
brain masks' Dice, the mean (max) distance in mm between where the two affine transforms put the template
brain's points, the native (N4) images' difference in the brain (RMS after the best linear map between them,
in units of the normalized range) and the grid images' PSNR (today's against before's, in both brain masks).

Whole heads (IXI HH, 2 mm; seg3D MR, 1 mm) have no reference mask: deepbet and the template method
are compared with each other, and each registered mask with the template brain on the grid.
Skull-stripped inputs (IXI002 T1w/T2w from HD-BET, stroke T1w/T2w) run the "nonzero" default and
both extraction methods, scored against the HD-BET mask (IXI002 T1w) or the input's own nonzero
voxels. Also checks determinism (one image twice) and that nothing is left in the temp dir.
Results and their discussion: benchmarks/RESULTS_preprocessing.md.
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HEADS = [
    "IXI/IXI012-HH-1211-T1_ds.nii.gz",
    "IXI/IXI013-HH-1212-T1_ds.nii.gz",
    "IXI/IXI014-HH-1236-T1_ds.nii.gz",
    "IXI/IXI015-HH-1258-T1_ds.nii.gz",
    "VolumeRenderingData/seg3D/MR.nii.gz",
]
# (image, contrast, reference mask: a file, or None for the image's own nonzero voxels)
STRIPPED = [
    ("IXI/hd_bet_IXI002-Guys-0828-T1.nii.gz", "T1w", "IXI/hd_bet_mask_IXI002-Guys-0828-T1.nii.gz"),
    ("IXI/hd_bet_IXI002-Guys-0828-T2.nii.gz", "T2w", None),
    ("VolumeRenderingData/stroke/T1.nii.gz", "T1w", None),
    ("VolumeRenderingData/stroke/T2.nii.gz", "T2w", None),
]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the repository
# Real and example T1w heads for --compare: the README demo's heads (1 mm, simulated scanners), a real 1 mm head
# (seg3D), real 2 mm IXI Hammersmith heads and a skull-stripped real 1 mm head with a stroke.
REPO = Path(__file__).resolve().parents[1]
COMPARE_EXAMPLES = [REPO / f"bids_examples/ds-travel/{s}/anat/{s.replace('/', '_')}_T1w.nii.gz"
                    for s in ("sub-01/ses-sonata", "sub-02/ses-vida", "sub-03/ses-trio")]
COMPARE_SHARED = ["VolumeRenderingData/seg3D/MR.nii.gz", *HEADS[:4], "VolumeRenderingData/stroke/T1.nii.gz"]


# Preprocessing before issue 33's speed-up: the 2 mm registration level run to convergence, deepbet on a 256^3 box.
BEFORE = {"registration.AFFINE": {"iterations": (1000, 500, 250)}, "brain.DEEPBET_SHAPE": (256, 256, 256)}
STEPS = ("load", "n4", "brain_extraction", "registration", "resample", "normalize", "total")


def dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return float(2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def mosaic(image: np.ndarray, masks: list[np.ndarray], colors: list[str], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 4, figsize=(12, 9))
    for axis in range(3):
        for col in range(4):
            index = [slice(None)] * 3
            index[axis] = int(image.shape[axis] * (col + 1) / 5)
            sl = tuple(index)
            ax = axes[axis, col]
            ax.imshow(np.rot90(image[sl]), cmap="gray")
            for mask, color in zip(masks, colors):
                if mask[sl].any():
                    ax.contour(np.rot90(mask[sl].astype(float)), [0.5], colors=color, linewidths=0.8)
            ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=60)
    plt.close(fig)


def run(path: Path, work: Path, method: str, contrast: str, threads: int):
    from bhd_app.pipeline.preprocessing import preprocess

    cpu = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pre = preprocess(path, work, brain_extraction=method, contrast=contrast, seed=0, n_threads=threads)
    return pre, time.process_time() - cpu


def row(name: str, method: str, pre, cpu: float, ref_dice: float | str) -> str:
    t = pre.timings
    ref = f"{ref_dice:.3f}" if isinstance(ref_dice, float) else ref_dice
    return (f"| {name} | {method} | " + " | ".join(f"{t[s]:.1f}" for s in STEPS) + f" | {cpu:.1f} | "
            f"{pre.qc['brain_volume_ml']:.0f} | {pre.qc['template_dice']:.3f} | {ref} |")


@contextmanager
def settings(changes: dict):
    """Preprocessing with some settings ("module.NAME" in bhd_app.pipeline.preprocessing) changed, then restored;
    dicts are updated key by key."""
    from importlib import import_module

    where = {key: (import_module(f"bhd_app.pipeline.preprocessing.{key.split('.')[0]}"), key.split(".")[1])
             for key in changes}
    saved = {key: getattr(module, name) for key, (module, name) in where.items()}
    try:
        for key, (module, name) in where.items():
            value = changes[key]
            setattr(module, name, {**saved[key], **value} if isinstance(value, dict) else value)
        yield
    finally:
        for key, (module, name) in where.items():
            setattr(module, name, saved[key])


def transform_distance(first: Path, second: Path) -> tuple[float, float]:
    """Mean and max distance (mm) between where two affine transforms put the template brain's points."""
    import ants

    from bhd_app.pipeline.preprocessing.registration import template_ants

    _, mask, _ = template_ants()
    points = [ants.transform_index_to_physical_point(mask, [int(i) for i in ijk])
              for ijk in np.argwhere(mask.numpy() > 0)[::50]]
    a, b = (ants.read_transform(str(t)) for t in (first, second))
    distance = np.linalg.norm(np.array([a.apply_to_point(p) for p in points]) -
                              np.array([b.apply_to_point(p) for p in points]), axis=1)
    return float(distance.mean()), float(distance.max())


def intensity_residual(first: nib.Nifti1Image, second: nib.Nifti1Image, mask: np.ndarray) -> float:
    """RMS of ``second`` minus its best linear fit from ``first`` in the mask, leaving out voxels clipped at 0
    or 1: what bias correction changed, in units of the normalized intensity range (the two images may be
    normalized with different 1st/99th percentiles, a linear map)."""
    a, b = (np.asarray(image.dataobj, np.float64)[mask] for image in (first, second))
    keep = (a > 0) & (a < 1) & (b > 0) & (b < 1)
    design = np.stack([a[keep], np.ones(keep.sum())], axis=1)
    coef, *_ = np.linalg.lstsq(design, b[keep], rcond=None)
    return float(np.sqrt(np.mean((b[keep] - design @ coef) ** 2)))


def compare(args) -> int:
    """Before (BEFORE) against today's settings on the COMPARE heads: time per step and accuracy."""
    from bhd_app.method.metrics import psnr

    paths = COMPARE_EXAMPLES + [args.data / rel for rel in COMPARE_SHARED]
    main_steps = ("n4", "brain_extraction", "registration", "total")
    print(f"# bench_preprocessing --compare: {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, "
          f"{os.cpu_count()} CPUs, threads={args.threads}, load average {os.getloadavg()[0]:.1f}")
    print(f"Before: {BEFORE}. Seconds are wall time per step, before -> today.\n")
    print("| image | " + " | ".join(main_steps) + " | mask Dice | transform distance mm, mean (max) | "
          "native intensity residual | grid PSNR dB | template Dice before / today |")
    print("|" + "---|" * (len(main_steps) + 6))
    totals = {"before": [], "today": []}
    with tempfile.TemporaryDirectory(prefix="bench_pre_") as tmp:
        for path in paths:
            name = path.name.removesuffix(".nii.gz")
            if "stroke" in str(path):
                name = f"stroke-{name}"
            runs = {}
            for label, changes in (("before", BEFORE), ("today", {})):
                with settings(changes):
                    runs[label], _ = run(path, Path(tmp) / f"{name}_{label}", "auto", "T1w", args.threads)
                totals[label].append(runs[label].timings["total"])
            old, new = runs["before"], runs["today"]
            masks = [np.asarray(p.native_brain_mask.dataobj) > 0 for p in (old, new)]
            residual = intensity_residual(old.native_image, new.native_image, masks[0] & masks[1])
            mean_mm, max_mm = transform_distance(old.transform_path, new.transform_path)
            both = (old.brain_mask > 0) & (new.brain_mask > 0)
            times = " | ".join(f"{old.timings[s]:.1f} -> {new.timings[s]:.1f}" for s in main_steps)
            print(f"| {name} | {times} | {dice(*masks):.4f} | {mean_mm:.2f} ({max_mm:.2f}) | {residual:.4f} | "
                  f"{psnr(new.image, old.image, both):.1f} | {old.qc['template_dice']:.3f} / "
                  f"{new.qc['template_dice']:.3f} |", flush=True)
    print(f"\nMean total: before {np.mean(totals['before']):.1f} s, today {np.mean(totals['today']):.1f} s; "
          f"max today {np.max(totals['today']):.1f} s. Load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED, help=f"the shared example data (default {SHARED})")
    parser.add_argument("--png", type=Path, help="write mask mosaics (PNG) here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compare", action="store_true", help="today's settings against BEFORE, with accuracy")
    args = parser.parse_args()
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)  # before ITK's first use
    if args.compare:
        return compare(args)
    if args.png:
        args.png.mkdir(parents=True, exist_ok=True)
    tmp_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "tmp*GenericAffine.mat")))

    print(f"# bench_preprocessing: {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, "
          f"{os.cpu_count()} CPUs, threads={args.threads}, load average {os.getloadavg()[0]:.1f}")
    print("Seconds are wall time per step; cpu = process CPU seconds; vol = native brain mask (mL);")
    print("tmpl = Dice of the grid mask vs the template brain; ref = Dice vs the reference (see header).\n")
    print("| image | method | " + " | ".join(STEPS) + " | cpu | vol | tmpl | ref |")
    print("|" + "---|" * (len(STEPS) + 6))
    with tempfile.TemporaryDirectory(prefix="bench_pre_") as tmp:
        tmp = Path(tmp)
        for rel in HEADS:
            path, name = args.data / rel, Path(rel).name.split("_ds")[0].removesuffix(".nii.gz")
            results = {m: run(path, tmp / f"{name}_{m}", m, "T1w", args.threads) for m in ("deepbet", "template")}
            masks = {m: np.asarray(pre.native_brain_mask.dataobj) for m, (pre, _) in results.items()}
            between = dice(masks["deepbet"], masks["template"])
            for m, (pre, cpu) in results.items():
                print(row(name, m, pre, cpu, f"{between:.3f} (other)"), flush=True)
            if args.png:
                image = np.asarray(nib.load(path).dataobj, dtype=np.float32)
                mosaic(image, [masks["deepbet"], masks["template"]], ["c", "r"], args.png / f"{name}_bet.png",
                       f"{name}: deepbet (cyan) vs template (red), Dice {between:.3f}")
        for rel, contrast, ref_rel in STRIPPED:
            path = args.data / rel
            name = Path(rel).name.removesuffix(".nii.gz").replace("hd_bet_", "")
            name = name if "IXI" in name else f"stroke-{name}"
            ref = nib.load(args.data / ref_rel if ref_rel else path).dataobj
            for m in ("auto", "deepbet", "template"):
                pre, cpu = run(path, tmp / f"{name}_{m}", m, contrast, args.threads)
                label = f"{m} ({pre.settings['brain_extraction']['method']})" if m == "auto" else m
                print(row(name, label, pre, cpu, dice(pre.native_brain_mask.dataobj, ref)), flush=True)

        # Determinism: the same image twice, same seed and threads.
        path = args.data / HEADS[2]
        first, _ = run(path, tmp / "repeat1", "auto", "T1w", args.threads)
        second, _ = run(path, tmp / "repeat2", "auto", "T1w", args.threads)
        same = np.array_equal(first.image, second.image) and np.array_equal(first.brain_mask, second.brain_mask)
        verdict = "bit-identical" if same else f"DIFFERENT, max abs diff {np.abs(first.image - second.image).max():.3g}"
        print(f"\nDeterminism ({Path(HEADS[2]).name}, twice, seed 0, {args.threads} thread(s)): {verdict}")
    left = set(glob.glob(os.path.join(tempfile.gettempdir(), "tmp*GenericAffine.mat"))) - tmp_before
    print(f"New tmp*GenericAffine.mat files in {tempfile.gettempdir()}: {len(left)}")
    print(f"Load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
