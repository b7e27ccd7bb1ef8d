#!/usr/bin/env python
"""End to end: raw held-out heads re-rendered by another scanner, run through the participant level, scored
in native space and downstream.

    python benchmarks/end_to_end.py OUT_DIR --heads choice [--variants NAME:FIELD=VALUE,...]   # choose on these
    python benchmarks/end_to_end.py OUT_DIR --heads test                                       # score once
    python benchmarks/end_to_end.py OUT_DIR --heads test --against EARLIER.json   # what a pipeline change moved

Heads: held-out subjects of the real target scanner (IXI Hammersmith, Philips Intera 3T; IXI dataset,
brain-development.org, CC BY-SA 3.0; ``training/ixi_hh_bids.py``'s draw, never trained on). ``choice`` is
held-out subjects 1-3 (where earlier defaults were chosen too), ``test`` subjects 7-11 (never used for a choice).

Per head: the raw head (with skull) is preprocessed once to place three T1-hypointense white-matter lesions and
to segment it (the group level's segmentation, ``site_effects.segment``); the raw head with lesions is the truth.
Each change of ``evaluation.head_changes.CHANGES`` (a family held out from training's altered starts; see that
module) re-renders the raw truth head; truth and changes each go through the participant level's own node
functions (``pipeline.workflows``: preprocessing in a fresh process per image, as bhd-app's jobs run; the
method's harmonization, ``method.harmonize.apply_method``; the native-space image as the preset makes it).
Every output is scored against the truth's ``--method none`` output on the same native grid: PSNR and SSIM
after normalizing each image 1-99 % in the truth's brain (``metrics.fidelity``, the paper's scoring), the lesion
contrast error, and downstream the CSF/GM/WM volumes of the group level's segmentation of the native output
against those of the truth, in mL.

Rows: the no-model controls (none, histmatch, SSIMH, Nyul from intensity-normalization fitted on the other
heads' truths, histogram matching + the paper's NCC step towards the source), the participant defaults (bhd),
the defaults fed random edges, and ``--variants`` (T1w settings of ``config.HarmonizationSettings``).
Rows go to OUT_DIR/results.json, the means per change and method to OUT_DIR/table.md (``--table`` rewrites it
from the rows).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
import ixi_hh_bids  # noqa: E402

from bhd_app.config import DEFAULT_MODELS, preset, shipped_model_path  # noqa: E402
from bhd_app.evaluation.alterations import draw_lesions  # noqa: E402
from bhd_app.evaluation.head_changes import CHANGES, apply_change, deep_region, memberships  # noqa: E402
from bhd_app.method.metrics import fidelity, lesion_contrast  # noqa: E402

HEADS = {"choice": slice(0, 3), "test": slice(6, 11)}
CONTROLS = ("none", "histmatch", "ssimh", "nyul", "histmatch + NCC")
TISSUES = ("csf", "gm", "wm")


def preprocess_in(args: tuple[str, str, str]) -> str:
    """Pool task: ``workflows.run_preprocessing`` of one image in its own folder (cached by preprocessing.json)."""
    in_file, contrast, folder = args
    done = Path(folder) / "preprocessing.json"
    if not done.exists():
        from bhd_app.pipeline.workflows import run_preprocessing

        Path(folder).mkdir(parents=True, exist_ok=True)
        os.chdir(folder)
        try:
            run_preprocessing(in_file, contrast, "auto", 0, 1)
        except Exception as exc:  # a refused image is a result too
            (Path(folder) / "failed.txt").write_text(f"{type(exc).__name__}: {exc}\n")
    return folder


def preprocess_all(tasks: list[tuple[str, str, str]], nprocs: int) -> None:
    """Each image in a fresh process (ITK fixes its thread count at first use, as in bhd-app's jobs)."""
    with mp.get_context("spawn").Pool(nprocs, maxtasksperchild=1) as pool:
        for folder in pool.imap_unordered(preprocess_in, tasks):
            print(f"  preprocessed {Path(folder).parent.name}/{Path(folder).name}", flush=True)


def load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


def prepare_head(label: str, raw_file: Path, out: Path, changes: list[str], nprocs: int) -> dict:
    """The truth (raw head + lesions) and each change as NIfTI under OUT/heads/LABEL, preprocessed."""
    folder = out / "heads" / label
    folder.mkdir(parents=True, exist_ok=True)
    preprocess_all([(str(raw_file), "T1w", str(folder / "raw_prep"))], 1)
    img = nib.load(str(raw_file))
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    if not (folder / "truth.nii.gz").exists():
        from bhd_app.pipeline.site_effects import segment

        brain = load(folder / "raw_prep" / "native_brain_mask.nii.gz") > 0
        labels = segment(load(folder / "raw_prep" / "native_preproc.nii.gz"), brain)
        truth, lesion, shell = draw_lesions(img.get_fdata(dtype=np.float32), brain, count=3, radius=2.5,
                                            seed=int(label[3:]))
        np.savez_compressed(folder / "lesions.npz", lesion=lesion, shell=shell, labels=labels, brain=brain)
        nib.save(nib.Nifti1Image(truth, img.affine), str(folder / "truth.nii.gz"))
    truth = load(folder / "truth.nii.gz")
    saved = np.load(folder / "lesions.npz")
    weights = memberships(saved["labels"], deep_region(saved["brain"], zooms))
    suffixes = {}
    for k, name in enumerate(CHANGES):
        if name not in changes:
            continue
        suffixes[name], changed = apply_change(name, truth, weights, zooms, seed=int(label[3:]) * 10 + k)
        if not (folder / f"{name}.nii.gz").exists():
            nib.save(nib.Nifti1Image(changed, img.affine), str(folder / f"{name}.nii.gz"))
    tasks = [(str(folder / "truth.nii.gz"), "T1w", str(folder / "truth_prep"))]
    tasks += [(str(folder / f"{n}.nii.gz"), suffixes[n], str(folder / f"{n}_prep")) for n in changes]
    preprocess_all(tasks, nprocs)
    return suffixes


def nyul_outputs(truths: dict[str, tuple[np.ndarray, np.ndarray]]):
    """Per head, a Nyul normalizer (intensity-normalization) fitted on the other heads' truths (grid, brain)."""
    from intensity_normalization.normalizers.population.nyul import NyulNormalizer

    fitted = {}
    for label in truths:
        others = [v for k, v in truths.items() if k != label] or [truths[label]]  # one head (--limit 1): itself
        n = NyulNormalizer(output_min_value=0.0, output_max_value=1.0)
        n.fit_population([Array(i) for i, _ in others], [Array(m.astype(np.float32)) for _, m in others])
        fitted[label] = n
    return fitted


class Array:
    """The smallest image for intensity-normalization's protocol: a numpy array."""

    def __init__(self, data: np.ndarray):
        self.data = data

    def get_data(self) -> np.ndarray:
        return self.data

    def with_data(self, data: np.ndarray) -> "Array":
        return Array(np.asarray(data))


def grid_outputs(models: dict, suffix: str, source: np.ndarray, mask: np.ndarray, nyul, variants: dict,
                 seed: int) -> dict[str, np.ndarray]:
    """Each method's harmonized image on the grid (D, H, W) for one preprocessed image."""
    from bhd_app.method.baselines import random_edges
    from bhd_app.method.harmonize import apply_method, model_grid, refined_start

    model = models[suffix]
    settings = preset(suffix)
    out = {}
    for method in ("none", "histmatch", "ssimh", "bhd"):
        out[method] = apply_method(model, source, mask, replace(settings, method=method, seed=seed))["harmonized"]
    voi = mask > 0
    out["nyul"] = np.where(voi, np.clip(nyul.transform(Array(source), Array(voi.astype(np.float32))).get_data(),
                                        0, 1), 0).astype(np.float32)
    out["histmatch + NCC"] = refined_start(out["histmatch"], source, mask, preset("T1w"))
    if suffix == "T1w":  # T2w: conversion from noise with random edges has nothing to convert (not run: 90 s)
        edges = random_edges(*model_grid(model, source, mask), seed)
        out["random edges"] = apply_method(model, source, mask, replace(settings, seed=seed),
                                           edge_map=edges)["harmonized"]
        for name, fields in variants.items():
            out[name] = apply_method(model, source, mask, replace(settings, seed=seed, **fields))["harmonized"]
    return out


def native_output(grid: np.ndarray, prep: Path, in_file: Path, native: str) -> np.ndarray:
    """The native-grid image exactly as the participant level's ``to_native`` node makes it."""
    from bhd_app.pipeline.preprocessing import carry_change_to_native, to_native

    xfm = next(prep.glob("*_native-to-template_0GenericAffine.mat"))
    if native == "change":
        image = carry_change_to_native(grid, load(prep / "preproc.nii.gz"), prep / "native_preproc.nii.gz",
                                       nib.load(str(prep / "native_brain_mask.nii.gz")), xfm)
    else:
        image = to_native(grid, xfm, in_file)
    return np.asarray(image.dataobj, dtype=np.float32)


def volumes(image: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """CSF/GM/WM volumes (voxels) of the group level's segmentation of a native image in its brain mask.

    NaN where the image cannot be segmented (a rendering with no tissue contrast left); the tables
    count such rows as missing volumes and say how many there were.
    """
    from bhd_app.pipeline.site_effects import segment

    try:
        labels = segment(image, mask)
    except ValueError as error:  # a tissue class came out empty
        print(f"  segmentation failed ({error}); volumes recorded as missing", flush=True)
        return {t: float("nan") for t in TISSUES}
    return {t: float((labels == k + 1).sum()) for k, t in enumerate(TISSUES)}


def score_task(args: tuple) -> list[dict]:
    """Pool task: one head's rows for one change (the models loaded in this process, one thread)."""
    import torch

    from bhd_app.modelfile import load_model

    torch.set_num_threads(1)
    label, folder, change, suffixes, nyul, variants, voxel_ml = args
    key = {"variants": variants, "defaults": {s: preset(s).to_dict() for s in ("T1w", "T2w")},
           "models": dict(DEFAULT_MODELS)}
    cached = Path(folder) / f"{change}_rows.json"
    if cached.exists() and json.loads(cached.read_text())["key"] == json.loads(json.dumps(key)):
        return json.loads(cached.read_text())["rows"]
    models = {s: load_model(shipped_model_path(DEFAULT_MODELS[s])) for s in ("T1w", "T2w")}
    rows = score_head(label, folder, [change], suffixes, models, nyul, variants, voxel_ml)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "rows": rows}, indent=1))
    tmp.replace(cached)
    return rows


def score_head(label: str, folder: Path, changes: list[str], suffixes: dict, models: dict, nyul, variants: dict,
               voxel_ml: float) -> list[dict]:
    truth_prep = folder / "truth_prep"
    truth = load(truth_prep / "native_preproc.nii.gz")
    brain = load(truth_prep / "native_brain_mask.nii.gz") > 0
    les = np.load(folder / "lesions.npz")
    lesion, shell = les["lesion"] & brain, les["shell"] & brain
    truth_contrast = lesion_contrast(truth, lesion, shell)
    truth_volumes = volumes(truth, brain)
    rows = []
    for name in changes:
        prep = folder / f"{name}_prep"
        if (prep / "failed.txt").exists():
            rows.append({"head": label, "change": name, "suffix": suffixes[name], "method": "all",
                         "failed": "refused by the pipeline: " + (prep / "failed.txt").read_text().strip()})
            continue
        suffix = suffixes[name]
        source, mask = load(prep / "preproc.nii.gz"), load(prep / "brain_mask.nii.gz")
        its_brain = load(prep / "native_brain_mask.nii.gz") > 0
        seed = int(label[3:])
        for method, grid in grid_outputs(models, suffix, source, mask, nyul, variants, seed).items():
            image = native_output(grid, prep, folder / f"{name}.nii.gz", preset(suffix).native)
            p, s = fidelity(image, truth, brain)
            v = volumes(image, its_brain)
            row = {"head": label, "change": name, "suffix": suffix, "method": method, "psnr": round(p, 3),
                   "ssim": round(s, 4),
                   "lesion_error": round(abs(lesion_contrast(image, lesion, shell) - truth_contrast), 4)}
            for t in TISSUES:
                error = (v[t] - truth_volumes[t]) * voxel_ml
                row[f"{t}_error_ml"] = None if np.isnan(error) else round(error, 1)
            rows.append(row)
            gm, wm = (f"{row[k]:+7.1f}" if row[k] is not None else "missing" for k in ("gm_error_ml", "wm_error_ml"))
            print(f"  {label} {name:10s} {method:22s} {p:6.2f} dB  SSIM {s:.4f}  GM {gm} mL  WM {wm} mL", flush=True)
    return rows


def magnitude(row: dict, key: str) -> float:
    """|row[key]| for an error (``*_error*``), row[key] for a score (PSNR, SSIM); NaN for a missing volume."""
    if row[key] is None:
        return float("nan")
    return abs(row[key]) if "error" in key else row[key]


def table(rows: list[dict]) -> str:
    """Markdown: per change, each method's mean PSNR, SSIM, lesion error and mean |volume error| (mL)."""
    ok = [r for r in rows if "psnr" in r]
    changes = list(dict.fromkeys(r["change"] for r in ok))
    methods = list(dict.fromkeys(r["method"] for r in ok))
    lines = ["| change | method | PSNR (dB) | SSIM | lesion error | |CSF| mL | |GM| mL | |WM| mL |",
             "|---|---|---|---|---|---|---|---|"]
    for c in changes:
        for m in methods:
            sel = [r for r in ok if r["change"] == c and r["method"] == m]
            if not sel:
                continue
            mean = {k: float(np.nanmean([magnitude(r, k) for r in sel])) for k in
                    ("psnr", "ssim", "lesion_error", "csf_error_ml", "gm_error_ml", "wm_error_ml")}
            lines.append(f"| {c} | {m} | {mean['psnr']:.2f} | {mean['ssim']:.4f} | {mean['lesion_error']:.3f} | "
                         f"{mean['csf_error_ml']:.1f} | {mean['gm_error_ml']:.1f} | {mean['wm_error_ml']:.1f} |")
    lines += ["", "Over the T1w changes (means of the per-change means): PSNR, SSIM, lesion error, mean |volume error| of "
              "CSF, GM and WM (mL); and bhd's margin over the best control, per change (dB).", "",
              "| method | PSNR (dB) | SSIM | lesion error | |volume| mL |", "|---|---|---|---|---|"]
    t1w = [c for c in changes if any(r["suffix"] == "T1w" for r in ok if r["change"] == c)]

    def mean_of(m: str, key: str) -> float:
        return float(np.mean([np.nanmean([magnitude(r, key) for r in ok if r["change"] == c and r["method"] == m])
                              for c in t1w]))

    for m in methods:
        if not all(any(r["change"] == c and r["method"] == m for r in ok) for c in t1w):
            continue
        volume = np.mean([mean_of(m, f"{t}_error_ml") for t in TISSUES])
        lines.append(f"| {m} | {mean_of(m, 'psnr'):.2f} | {mean_of(m, 'ssim'):.4f} | {mean_of(m, 'lesion_error'):.3f} "
                     f"| {volume:.1f} |")
    margins = []
    for c in changes:
        best = max(np.mean([r["psnr"] for r in ok if r["change"] == c and r["method"] == m])
                   for m in CONTROLS + ("random edges",) if any(r["change"] == c and r["method"] == m for r in ok))
        margins.append(f"{c} {np.mean([r['psnr'] for r in ok if r['change'] == c and r['method'] == 'bhd']) - best:+.2f}")
    lines += ["", "bhd minus the best control (PSNR, dB): " + ", ".join(margins)]
    unsegmented = [r for r in ok if r["gm_error_ml"] is None]
    if unsegmented:
        lines += ["", f"Volumes missing where the output could not be segmented ({len(unsegmented)} rows, left out of "
                  "the volume means): " + ", ".join(f"{r['head']} {r['change']} {r['method']}" for r in unsegmented)]
    failed = [r for r in rows if "failed" in r]
    lines += [f"\nNot scored: {r['head']} {r['change']}: {r['failed']}" for r in failed]
    return "\n".join(lines) + "\n"


def figure(out: Path, label: str, change: str, png: Path) -> None:
    """One axial slice of a head: the truth, the changed head after preprocessing, histogram matching and bhd
    at the participant defaults, each in native space as the user receives it (normalized 1-99 % in the brain)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from bhd_app.method.metrics import percentile_normalized
    from bhd_app.method.harmonize import apply_method
    from bhd_app.modelfile import load_model

    torch.set_num_threads(1)
    folder = out / "heads" / label
    prep = folder / f"{change}_prep"
    truth = load(folder / "truth_prep" / "native_preproc.nii.gz")
    brain = load(folder / "truth_prep" / "native_brain_mask.nii.gz") > 0
    source, mask = load(prep / "preproc.nii.gz"), load(prep / "brain_mask.nii.gz")
    model = load_model(shipped_model_path(DEFAULT_MODELS["T1w"]))
    panels = {"target scanner (truth)": truth}
    for title, method in ((f"changed ({change})", "none"), ("histogram matching", "histmatch"), ("bhd", "bhd")):
        grid = apply_method(model, source, mask, replace(preset("T1w"), method=method))["harmonized"]
        panels[title] = native_output(grid, prep, folder / f"{change}.nii.gz", preset("T1w").native)
    centre = int(np.argwhere(brain).mean(axis=0)[1])
    rows, cols = np.nonzero(brain[:, centre, :])
    box = (slice(max(rows.min() - 4, 0), rows.max() + 5), slice(max(cols.min() - 4, 0), cols.max() + 5))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.4))
    for ax, (title, image) in zip(axes, panels.items()):
        p = fidelity(image, truth, brain)[0] if "truth" not in title else None
        ax.imshow(percentile_normalized(image, brain)[:, centre, :][box], cmap="gray", vmin=0, vmax=1)
        ax.set_title(title + (f"\n{p:.2f} dB PSNR" if p else "\n"), fontsize=9)
        ax.axis("off")
    fig.suptitle(f"IXI Hammersmith head {label} (IXI dataset, brain-development.org, CC BY-SA 3.0)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(png, dpi=110)


def parse_variants(specs: list[str]) -> dict[str, dict]:
    """``NAME:FIELD=VALUE,FIELD=VALUE`` -> {NAME: {FIELD: value}} (values as the field's type in the T1w preset)."""
    t1w = preset("T1w").to_dict()
    out = {}
    for spec in specs:
        name, _, body = spec.partition(":")
        fields = {}
        for item in filter(None, body.split(",")):
            key, _, value = item.partition("=")
            fields[key] = type(t1w[key])(value)
        out[name] = fields
    return out


def against(rows: list[dict], earlier: list[dict]) -> str:
    """Markdown: per method, the mean PSNR and mean |volume error| (mL, CSF/GM/WM) of ``rows`` and of ``earlier``
    over the (head, change) pairs both scored: what a change to the pipeline moved."""
    def by_key(table_rows: list[dict]) -> dict:
        return {(r["head"], r["change"], r["method"]): r for r in table_rows if "psnr" in r}

    now, then = by_key(rows), by_key(earlier)
    both = [k for k in now if k in then]
    lines = [f"Over {len({k[:2] for k in both})} (head, change) pairs scored in both:", "",
             "| method | PSNR earlier | PSNR now | |volume| mL earlier | |volume| mL now |", "|---|---|---|---|---|"]
    for method in dict.fromkeys(k[2] for k in both):
        keys = [k for k in both if k[2] == method]
        psnr = [np.mean([table_rows[k]["psnr"] for k in keys]) for table_rows in (then, now)]
        volume = [np.mean([np.mean([magnitude(table_rows[k], f"{t}_error_ml") for t in TISSUES]) for k in keys])
                  for table_rows in (then, now)]
        lines.append(f"| {method} | {psnr[0]:.2f} | {psnr[1]:.2f} | {volume[0]:.1f} | {volume[1]:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--heads", choices=tuple(HEADS), required=True)
    p.add_argument("--changes", nargs="+", default=list(CHANGES), choices=tuple(CHANGES))
    p.add_argument("--variants", nargs="+", default=[], metavar="NAME:FIELD=VALUE,...")
    p.add_argument("--nprocs", type=int, default=2)
    p.add_argument("--limit", type=int, help="only the first N heads of the set (a quick look)")
    p.add_argument("--table", action="store_true", help="only rewrite OUT_DIR/table.md from OUT_DIR/results.json")
    p.add_argument("--against", type=Path, metavar="RESULTS_JSON",
                   help="only compare OUT_DIR/results.json with earlier rows (e.g. benchmarks/figures/*.json)")
    p.add_argument("--figure", nargs=3, metavar=("HEAD", "CHANGE", "PNG"),
                   help="only draw one prepared head and change (truth, changed, histmatch, bhd) into PNG")
    args = p.parse_args(argv)
    if args.table:
        rows = json.loads((args.out_dir / "results.json").read_text())["rows"]
        (args.out_dir / "table.md").write_text(table(rows))
        print(table(rows))
        return 0
    if args.against:
        rows, earlier = (json.loads(path.read_text())["rows"] for path in (args.out_dir / "results.json", args.against))
        print(against(rows, earlier))
        return 0
    if args.figure:
        figure(args.out_dir.absolute(), args.figure[0], args.figure[1], Path(args.figure[2]))
        return 0
    files = ixi_hh_bids.subjects()
    if not files:
        print(f"end_to_end: no IXI-HH heads under {ixi_hh_bids.SOURCE}; put ../shared beside the repository")
        return 2
    heldout = ixi_hh_bids.split(list(files))[1][HEADS[args.heads]][:args.limit]
    out = args.out_dir.absolute()
    start = time.time()
    suffixes = {}
    for label in heldout:
        print(f"{label}: preparing ({time.time() - start:.0f} s)", flush=True)
        suffixes[label] = prepare_head(label, files[label], out, args.changes, args.nprocs)
    truths = {label: (load(out / "heads" / label / "truth_prep" / "preproc.nii.gz"),
                      load(out / "heads" / label / "truth_prep" / "brain_mask.nii.gz") > 0) for label in heldout}
    nyul = nyul_outputs(truths)
    variants = parse_variants(args.variants)
    results_file = out / "results.json"
    tasks = [(label, out / "heads" / label, change, suffixes[label], nyul[label], variants,
              float(np.prod(nib.load(str(files[label])).header.get_zooms()[:3])) / 1000.0)
             for label in heldout for change in args.changes]
    print(f"scoring {len(tasks)} images ({time.time() - start:.0f} s)", flush=True)
    rows = []
    # A worker that dies in native code (Atropos on a degenerate image) fails the tasks left, not the run: the
    # rows of every finished task are kept, and a rerun resumes from them.
    with ProcessPoolExecutor(args.nprocs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(score_task, task) for task in tasks]
        for task, future in zip(tasks, futures):
            try:
                rows += future.result()
            except Exception as error:  # BrokenProcessPool included
                rows.append({"head": task[0], "change": task[2], "suffix": task[3][task[2]], "method": "all",
                             "failed": f"scoring stopped: {type(error).__name__}: {error}"})
    meta = {"heads": heldout, "set": args.heads, "changes": args.changes, "variants": variants,
            "models": dict(DEFAULT_MODELS), "seconds": round(time.time() - start)}
    results_file.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (out / "table.md").write_text(table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
