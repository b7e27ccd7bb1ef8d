#!/usr/bin/env python
"""bhd on real MRI through the real command line: contrast conversion scored against real T1w, two real sites.

    python benchmarks/real_data.py OUT_DIR [--shared ../shared/data] [--nprocs 1]

Real images (../shared/data, see the SOURCE.md files there; IXI is CC BY-SA 3.0, VolumeRenderingData MIT):

* IXI002 (Guy's Hospital, Philips 1.5T): a T1w/T2w pair of one subject, brain-extracted;
* the stroke patient (3T): a T1w/T2w pair on one grid, brain-extracted, chronic lesion;
* IXI012-015 (Hammersmith Hospital, Philips 3T): four whole-head T1w at 2 mm.

They are written as a BIDS dataset and run through ``bhd-app ... participant --contrasts T1w T2w`` with
``--method none``, ``histmatch`` and ``bhd`` (one work folder, so preprocessing runs once), then ``group``.
Scores:

* contrast conversion (paper 4.8): each T2w's harmonized image is registered (antspyx, affine) to the
  same subject's preprocessed real T1w and scored inside the brain (PSNR, SSIM). The real T1w comes from
  another scanner than the model's target, so this measures T1w-likeness, not harmonization;
* real T1w inputs: no target-scanner image exists, so the script reports how far each method moves the
  input (SSIM to the source) and the group level's site separability (Guy's 1.5T vs Hammersmith 3T, with
  the stroke 3T as a third site) before and after;
* the real lesion (Fig. 6): the stroke's chronic lesion, masked from its T2w (see ``stroke_lesion``) and
  carried to the grid with the T1w job's own transform; its contrast against the surrounding tissue (mean
  lesion / mean of a 2-voxel ring around it) in the input and in each method's harmonized T1w.

Writes ``results.json``, ``tables.md`` and ``mosaic.png`` (axial slices of every method's output; the
stroke row through the lesion) in OUT_DIR; ``--figure-only`` redraws the mosaic from an earlier run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

import ants
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib
import numpy as np
from scipy import ndimage

from bhd_app.method.metrics import fidelity, lesion_contrast, ssim
from bhd_app.pipeline.group import collect_results, site_separability
from bhd_app.pipeline.templates import GRID_SPACING

METHODS = ("none", "histmatch", "bhd")
T2W_SUBJECTS = (("ixi002", "guys"), ("stroke", "mri"))  # (subject, session) with a T1w/T2w pair
PHILIPS = {"Manufacturer": "Philips"}
# (subject, session, suffix) -> (file under shared data, sidecar)
IMAGES = {
    ("ixi002", "guys", "T1w"): ("IXI/hd_bet_IXI002-Guys-0828-T1.nii.gz", {**PHILIPS, "MagneticFieldStrength": 1.5}),
    ("ixi002", "guys", "T2w"): ("IXI/hd_bet_IXI002-Guys-0828-T2.nii.gz", {**PHILIPS, "MagneticFieldStrength": 1.5}),
    ("stroke", "mri", "T1w"): ("VolumeRenderingData/stroke/T1.nii.gz", {"MagneticFieldStrength": 3}),
    ("stroke", "mri", "T2w"): ("VolumeRenderingData/stroke/T2.nii.gz", {"MagneticFieldStrength": 3}),
    **{(f"ixi0{k}", "hh", "T1w"): (f"IXI/IXI0{k}-HH-{n}-T1_ds.nii.gz", {**PHILIPS, "MagneticFieldStrength": 3})
       for k, n in (("12", 1211), ("13", 1212), ("14", 1236), ("15", 1258))},
}


def write_dataset(shared: Path, ds: Path) -> None:
    ds.mkdir(parents=True, exist_ok=True)
    (ds / "dataset_description.json").write_text(json.dumps(
        {"Name": "bhd real-data benchmark (IXI CC BY-SA 3.0; VolumeRenderingData MIT)", "BIDSVersion": "1.10.0",
         "DatasetType": "raw", "License": "CC BY-SA 3.0 (IXI), MIT (stroke)"}, indent=2))
    (ds / "README").write_text("Real MRI copied from ../shared/data by benchmarks/real_data.py; see SOURCE.md there.\n")
    for (sub, ses, suffix), (rel, meta) in IMAGES.items():
        anat = ds / f"sub-{sub}" / f"ses-{ses}" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        name = f"sub-{sub}_ses-{ses}_{suffix}"
        shutil.copy(shared / rel, anat / f"{name}.nii.gz")
        (anat / f"{name}.json").write_text(json.dumps(meta, indent=2))


def run_app(ds: Path, out: Path, work: Path, level: str, *extra: str) -> float:
    start = time.monotonic()
    subprocess.run(["bhd-app", str(ds), str(out), level, "-w", str(work), "--skip-bids-validation", *extra],
                   check=True)
    return time.monotonic() - start


def grid_image(out: Path, sub: str, ses: str, pattern: str) -> ants.ANTsImage:
    hits = sorted((out / f"sub-{sub}" / f"ses-{ses}" / "anat").glob(pattern))
    if len(hits) != 1:
        raise RuntimeError(f"{out}: expected one {pattern} for sub-{sub} ses-{ses}, found {len(hits)}")
    return ants.image_read(str(hits[0]))


def t1w_scorer(root: Path, sub: str, ses: str):
    """Score an image on the grid of the subject's preprocessed T2w against its preprocessed real T1w.

    The T2w is registered (antspyx, affine) to the T1w once; the returned function carries an image through
    that transform and gives (PSNR, SSIM) inside both brain masks.
    """
    t1 = grid_image(root / "out-none", sub, ses, "*desc-preproc_T1w.nii.gz")
    t1_mask = grid_image(root / "out-none", sub, ses, "*space-*desc-brain_mask.nii.gz").numpy() > 0
    t2 = grid_image(root / "out-none", sub, ses, "*desc-preproc_T2w.nii.gz")
    reg = ants.registration(t1, t2, type_of_transform="Affine", random_seed=1)
    t2_mask = grid_image(root / "out-none", sub, ses, "*space-*desc-brainT2w_mask.nii.gz")
    mask = t1_mask & (ants.apply_transforms(t1, t2_mask, reg["fwdtransforms"]).numpy() > 0.5)

    def score(image: np.ndarray) -> tuple[float, float]:
        moved = ants.apply_transforms(t1, t2.new_image_like(image.astype(np.float32)), reg["fwdtransforms"]).numpy()
        return fidelity(moved, t1.numpy(), mask)

    return score


def stroke_lesion(stroke: Path) -> nib.Nifti1Image:
    """A mask of the stroke's chronic lesion on its native grid (no expert mask ships with the data).

    The lesion is bright on T2w and lies in one hemisphere: voxels whose smoothed T2w exceeds the mirror
    image's (flipped about the brain's centre along x, the left-right axis of this RAS image) by 0.25 of the
    99th percentile, away from the brain's edge and from the mirrored CSF (so the enlarged ventricle on the
    lesion's side is left out); the largest connected component, closed.
    """
    t1 = nib.load(stroke / "T1.nii.gz")
    brain = ndimage.binary_fill_holes(np.asarray(t1.dataobj) > 0)
    t2 = np.asarray(nib.load(stroke / "T2.nii.gz").dataobj, dtype=np.float64)
    t2 = ndimage.gaussian_filter(t2 / np.percentile(t2[brain], 99), 1.5)
    xs = np.flatnonzero(brain.any(axis=(1, 2)))
    mirror = ndimage.shift(np.flip(t2, 0), (xs[0] + xs[-1] - (brain.shape[0] - 1), 0, 0), order=1)
    candidate = ((t2 - mirror > 0.25) & (t2 > 0.35) & ndimage.binary_erosion(brain, iterations=4)
                 & ~ndimage.binary_dilation(mirror > 0.45, iterations=3))
    labels, n = ndimage.label(ndimage.binary_opening(candidate))
    largest = 1 + int(np.argmax(ndimage.sum_labels(np.ones_like(t2), labels, range(1, n + 1))))
    lesion = ndimage.binary_closing(labels == largest, iterations=2) & brain
    return nib.Nifti1Image(lesion.astype(np.uint8), t1.affine)


def stroke_lesion_on_grid(root: Path, shared: Path) -> np.ndarray:
    """The stroke lesion mask carried to the template grid with the T1w job's own transform."""
    grid = grid_image(root / "out-none", "stroke", "mri", "*desc-preproc_T1w.nii.gz")
    xfm = sorted((root / "out-none" / "sub-stroke" / "ses-mri" / "anat").glob("*from-T1w_to-*_xfm.mat"))[0]
    native = root / "stroke_lesion_mask.nii.gz"
    nib.save(stroke_lesion(shared / "VolumeRenderingData" / "stroke"), native)
    return ants.apply_transforms(grid, ants.image_read(str(native)), [str(xfm)]).numpy() > 0.5


def lesion_rows(root: Path, lesion: np.ndarray) -> list[dict]:
    """The stroke lesion's contrast in the preprocessed input and in each method's harmonized T1w."""
    brain = grid_image(root / "out-none", "stroke", "mri", "*space-*desc-brain_mask.nii.gz").numpy() > 0
    ring = ndimage.binary_dilation(lesion, iterations=3) & ~ndimage.binary_dilation(lesion, iterations=1) & brain
    images = {"T1w (input)": grid_image(root / "out-none", "stroke", "mri", "*desc-preproc_T1w.nii.gz").numpy()}
    for method in ("histmatch", "bhd"):
        images[method] = grid_image(root / f"out-{method}", "stroke", "mri",
                                    "*space-*desc-harmonized_T1w.nii.gz").numpy()
    task = f"lesion contrast ({lesion.sum() * np.prod(GRID_SPACING) / 1000:.1f} ml on the grid)"
    return [{"subject": "stroke", "task": task, "method": method,
             "lesion_contrast": round(lesion_contrast(image, lesion, ring), 3)} for method, image in images.items()]


def mosaic(root: Path, lesion: np.ndarray, path: Path) -> None:
    """Axial slices on the template grid: T1w input, histogram matching, bhd; T2w input, its conversion by
    histogram matching and by bhd (the T2w subjects only). The stroke row is cut through the lesion."""
    columns = [("T1w input", "none", "desc-preproc_T1w"), ("T1w histmatch", "histmatch", "desc-harmonized_T1w"),
               ("T1w bhd", "bhd", "desc-harmonized_T1w"), ("T2w input", "none", "desc-preproc_T2w"),
               ("T2w histmatch", "histmatch", "desc-harmonizedT2w_T1w"),
               ("T2w to T1w bhd", "bhd", "desc-harmonizedT2w_T1w")]
    rows = [("ixi002", "guys"), ("stroke", "mri"), ("ixi012", "hh")]
    lesion_z = int(np.argmax(lesion.sum(axis=(0, 1))))
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(2.0 * len(columns), 2.4 * len(rows)))
    for i, (sub, ses) in enumerate(rows):
        for j, (title, method, desc) in enumerate(columns):
            ax = axes[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            hits = sorted((root / f"out-{method}" / f"sub-{sub}" / f"ses-{ses}" / "anat").glob(
                f"*space-*{desc}.nii.gz"))
            if hits:
                volume = np.asarray(nib.load(hits[0]).dataobj, dtype=np.float32)
                z = lesion_z if sub == "stroke" else volume.shape[2] // 2
                ax.imshow(np.rot90(volume[:, :, z]), cmap="gray", vmin=0, vmax=np.percentile(volume, 99.5))
            else:
                ax.axis("off")
            if i == 0:
                ax.set_title(title, fontsize=9)
            if j == 0:
                ax.set_ylabel(sub, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    p.add_argument("--nprocs", type=int, default=1)
    p.add_argument("--figure-only", action="store_true", help="redraw mosaic.png from an earlier run")
    p.add_argument("--score-only", action="store_true", help="score an earlier run's derivatives (no bhd-app runs)")
    args = p.parse_args()
    root = args.out_dir.absolute()
    if args.figure_only:
        return mosaic(root, stroke_lesion_on_grid(root, args.shared), root / "mosaic.png")
    ds, work = root / "ds", root / "work"
    if not (ds / "dataset_description.json").exists():
        write_dataset(args.shared, ds)
    seconds, separability = {}, {}
    for method in METHODS:
        out = root / f"out-{method}"
        if not args.score_only:
            seconds[method] = round(run_app(ds, out, work, "participant", "--method", method, "--contrasts",
                                            "T1w", "T2w", "--nprocs", str(args.nprocs)), 1)
            run_app(ds, out, work, "group")
        t1w = [r for r in collect_results(ds, out) if r["suffix"] == "T1w"]
        separability[method] = {"before": round(site_separability(t1w, "before"), 4),
                                "after": round(site_separability(t1w, "after"), 4)}
        print(f"{method}: " + (f"{seconds[method]} s" if method in seconds else "not run (--score-only)"), flush=True)
    rows = []
    for sub, ses in T2W_SUBJECTS:
        score = t1w_scorer(root, sub, ses)
        candidates = {"T2w (unconverted)": grid_image(root / "out-none", sub, ses, "*desc-preproc_T2w.nii.gz")}
        for method in ("histmatch", "bhd"):
            candidates[method] = grid_image(root / f"out-{method}", sub, ses,
                                            "*space-*desc-harmonizedT2w_T1w.nii.gz")
        for label, image in candidates.items():
            psnr_db, ssim_value = score(image.numpy())
            row = {"subject": sub, "task": "T2w to T1w", "method": label,
                   "psnr": round(psnr_db, 2), "ssim": round(ssim_value, 3)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    for (sub, ses, suffix) in IMAGES:
        if suffix != "T1w":
            continue
        source = grid_image(root / "out-none", sub, ses, "*desc-preproc_T1w.nii.gz").numpy()
        mask = grid_image(root / "out-none", sub, ses, "*space-*desc-brain_mask.nii.gz").numpy() > 0
        for method in ("histmatch", "bhd"):
            image = grid_image(root / f"out-{method}", sub, ses, "*space-*desc-harmonized_T1w.nii.gz").numpy()
            rows.append({"subject": sub, "task": "T1w: SSIM to the source", "method": method,
                         "ssim": round(ssim(image, source, mask), 3)})
            print(json.dumps(rows[-1]), flush=True)
    lesion = stroke_lesion_on_grid(root, args.shared)
    for row in lesion_rows(root, lesion):
        rows.append(row)
        print(json.dumps(row), flush=True)
    (root / "results.json").write_text(json.dumps({"rows": rows, "cli_seconds": seconds,
                                                   "group": separability}, indent=1))
    lines = ["| subject | task | method | PSNR | SSIM | lesion contrast |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['subject']} | {r['task']} | {r['method']} | {r.get('psnr', '')} | {r.get('ssim', '')} | "
              f"{r.get('lesion_contrast', '')} |" for r in rows]
    (root / "tables.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    mosaic(root, lesion, root / "mosaic.png")
    print("CLI seconds:", seconds, "\nT1w site separability (mean pairwise W1):", separability)


if __name__ == "__main__":
    main()
