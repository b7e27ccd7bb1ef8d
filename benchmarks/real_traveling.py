#!/usr/bin/env python
"""Traveling subjects with real anatomy: held-out IXI-HH images, altered by known scanner-like changes.

    python benchmarks/real_traveling.py OUT_DIR --models training/ixi-hh/bhd_ixihh_w16.pt [--subjects 3]

Each held-out subject of the real target scanner (IXI Hammersmith, Philips Intera 3T; IXI dataset,
brain-development.org, CC BY-SA 3.0; never trained on) gets three T1-hypointense white-matter lesions
drawn in; that image is the truth. Each source of ``bhd_app.evaluation.alterations.SOURCES`` re-draws it with
other tissue contrasts (deep grey matter apart, so no global intensity map undoes it), a bias field,
noise and thick slices, or as a T2w-like image (contrast conversion). Every method harmonizes the
altered image back on the grid and is scored against the truth: PSNR/SSIM after normalizing each
image 1-99 % in the brain (``metrics.fidelity``) and the lesion contrast error.

No-model controls, with the target statistics (histogram, low-frequency spectrum) of the IXI-HH
training images (``--target-data``; where that cache is missing, those the first model file stores):
the altered image itself, histogram matching, SSIMH, and histogram matching refined by NCC towards the source (the refinement without the network); per
model, its defaults with random edges (the network without the edge map). The headline is each
model's margin over the best control, per source. Rows accumulate in OUT_DIR/results.json, so
models can be scored in separate calls (``--no-controls`` skips the controls already there).

Needs the held-out subjects preprocessed once (about 10 min on 2 cores) and the training images'
cache (``training/ixi-hh/train_cpu.sh`` makes it):
    python training/ixi_hh_bids.py work/ixi-hh
    bhd-train runs/ixi-hh-heldout --bids-dir work/ixi-hh/heldout --nprocs 2 --prepare-only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bhd_app.evaluation.alterations import SOURCES, draw_lesions
from bhd_app.method.baselines import (histogram_matching, random_edges, spectrum_swapping, target_quantiles,
                               target_spectrum)
from bhd_app.config import PAPER, T1W, preset
from bhd_app.method.harmonize import at_model_resolution, harmonize, model_grid, refined_start
from bhd_app.modelfile import load_model
from bhd_app.method.metrics import fidelity, lesion_contrast
from bhd_app.method.refinement import refine
from bhd_app.training.data import load_cache

REPO = Path(__file__).resolve().parents[1]
HELDOUT = REPO / "runs" / "ixi-hh-heldout" / "data.npz"
TARGET_DATA = REPO / "runs" / "ixi-hh-w16" / "data.npz"
CONTROLS = ("none", "histmatch", "ssimh", "histmatch + NCC")  # and "random edges (model)"


def controls(source: np.ndarray, mask: np.ndarray, suffix: str, quantiles: np.ndarray,
             spectrum: np.ndarray) -> dict:
    """The no-model controls' images (D, H, W) for one altered source."""
    settings = preset(suffix)
    matched = histogram_matching(source, mask, quantiles)
    out = {"none": source, "histmatch": matched, "ssimh": spectrum_swapping(source, mask, spectrum)}
    if suffix == "T1w":
        out["histmatch + NCC"] = refined_start(matched, source, mask, settings)
    return out


def model_outputs(model, name: str, source: np.ndarray, mask: np.ndarray, suffix: str, seed: int,
                  with_random_edges: bool, with_variants: bool = False, with_solvers: bool = False,
                  start_times: tuple[float, ...] = (), t1w: dict | None = None) -> dict:
    """A model's harmonized image at the participant level's defaults; for T1w also the same draw refined with
    the paper's step rule (alpha 0.02, 6 iterations) towards the source and towards its histogram-matched
    version, and (``with_random_edges``) the defaults with random edges; ``with_variants`` adds the frequency
    split of the default draw and of a draw from pure noise, at 4.8 and 9.6 mm (4 and 8 voxels of 1.2 mm); ``with_solvers`` the defaults
    with 2 midpoint steps instead of one Euler step; ``start_times`` the defaults from other t0. ``t1w``
    replaces fields of the T1w defaults in every row."""
    settings = preset(suffix)
    if t1w and suffix == "T1w":
        settings = replace(settings, **t1w)
    result = harmonize(model, source, mask, settings, seed=seed)
    out = {name: result["harmonized"]}
    if suffix == "T1w":
        matched = histogram_matching(source, mask, model.target_quantiles)
        for reference, image in (("source", source), ("histmatch", matched)):
            out[f"{name}, paper step to {reference}"] = refine(result["generated"], image, mask, "ncc",
                                                               PAPER.refine_step, PAPER.refine_iterations,
                                                               step_rule=PAPER.refine_step_rule)[0]
        if with_variants:  # the frequency split (refinement "split") of the default draw and of a draw from noise
            seen = at_model_resolution(model, matched)
            for mm in (4.8, 9.6):
                out[f"{name}, split {mm:g} mm"] = refine(result["generated"], matched, mask, "split",
                                                         split_sigma_mm=mm, reference_seen=seen)[0]
            from_noise = harmonize(model, source, mask, settings, seed=seed, start_time=0.0,
                                   refinement="none")["generated"]
            for mm in (4.8, 9.6):
                out[f"{name}, from noise + split {mm:g} mm"] = refine(from_noise, matched, mask, "split",
                                                                      split_sigma_mm=mm, reference_seen=seen)[0]
    if with_solvers and suffix == "T1w":
        out[f"{name}, 2 midpoint steps"] = harmonize(model, source, mask, settings, seed=seed, steps=2,
                                                     solver="midpoint")["harmonized"]
    for t0 in start_times if suffix == "T1w" else ():
        out[f"{name}, t0 {t0:g}"] = harmonize(model, source, mask, settings, seed=seed,
                                              start_time=t0)["harmonized"]
    if with_random_edges and suffix == "T1w":
        edges = random_edges(*model_grid(model, source, mask), seed)
        out[f"random edges ({name})"] = harmonize(model, source, mask, settings, seed=seed,
                                                  edge_map=edges)["harmonized"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--models", type=Path, nargs="+", required=True)
    p.add_argument("--random-edges", action="store_true", help="also each model with random edges (T1w)")
    p.add_argument("--variants", action="store_true", help="also the frequency-split variants (T1w)")
    p.add_argument("--solvers", action="store_true", help="also the defaults with 2 midpoint steps (T1w)")
    p.add_argument("--start-times", type=float, nargs="+", default=[],
                   help="also the defaults from these t0 (T1w)")
    p.add_argument("--t1w", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="the models' T1w settings instead of the participant default's, e.g. refinement=none "
                        "(config.HarmonizationSettings fields; every model row, random edges too)")
    p.add_argument("--no-controls", action="store_true", help="score the models only")
    p.add_argument("--subjects", type=int, default=3, help="N held-out subjects")
    p.add_argument("--first", type=int, default=0, help="index of the first held-out subject (0-15)")
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    p.add_argument("--heldout", type=Path, default=HELDOUT)
    p.add_argument("--target-data", type=Path, default=TARGET_DATA)
    args = p.parse_args(argv)
    if not args.heldout.exists():
        print(f"real_traveling: {args.heldout} is missing; prepare it as the docstring says", file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results = args.out_dir / "results.json"
    rows = json.loads(results.read_text())["rows"] if results.exists() else []
    images, masks, _, desc = load_cache(args.heldout)
    models = {m.stem: load_model(m) for m in args.models}
    if args.target_data.exists():
        quantiles, spectrum = target_statistics(args.target_data)
    else:  # the statistics the first model file stores, computed from its own training images
        first = next(iter(models.values()))
        quantiles, spectrum = first.target_quantiles, first.ssimh_spectrum()
        print(f"real_traveling: {args.target_data} is missing; the controls use {args.models[0]}'s stored "
              "target histogram and spectrum", file=sys.stderr)
    for k in range(args.first, min(args.first + args.subjects, len(images))):
        truth, lesion, shell = draw_lesions(images[k], masks[k], seed=k)
        subject = desc["images"][k].split("_")[0]
        for name in args.sources:
            scanner = SOURCES[name]
            source = scanner.apply(truth, masks[k], seed=100 * k + 7)
            outs = {} if args.no_controls else controls(source, masks[k], scanner.suffix, quantiles, spectrum)
            for label, model in models.items():
                t = time.perf_counter()
                outs |= model_outputs(model, label, source, masks[k], scanner.suffix, k, args.random_edges,
                                      args.variants, args.solvers, tuple(args.start_times), t1w_overrides(args.t1w))
                print(f"{subject} {name} {label}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
            rows = scored(rows, subject, name, outs, truth, masks[k], lesion, shell)
            results.write_text(json.dumps({"rows": rows, "heldout": desc["dataset"]}, indent=1))
    write_tables(args.out_dir, rows)
    return 0


def scored(rows: list[dict], subject: str, source: str, images: dict, truth: np.ndarray, mask: np.ndarray,
           lesion: np.ndarray, shell: np.ndarray) -> list[dict]:
    """``rows`` with this subject's and source's rows of the methods in ``images`` (method -> image, D, H, W)
    replaced by their scores against ``truth``: PSNR and SSIM (each image normalized 1-99 % in ``mask``) and the
    lesion contrast error."""
    truth_lc = lesion_contrast(truth, lesion, shell)
    rows = [r for r in rows if not (r["subject"] == subject and r["source"] == source and r["method"] in images)]
    for method, image in images.items():
        psnr_db, ssim_value = fidelity(image, truth, mask)
        rows.append({"subject": subject, "source": source, "method": method, "psnr": round(psnr_db, 3),
                     "ssim": round(ssim_value, 4),
                     "lesion_error": round(abs(lesion_contrast(image, lesion, shell) - truth_lc), 4)})
    return rows


def t1w_overrides(pairs: list[str]) -> dict:
    """FIELD=VALUE pairs as settings fields, each value of its default's type."""
    out = {}
    for pair in pairs:
        name, value = pair.split("=", 1)
        out[name] = type(getattr(T1W, name))(value)
    return out


def target_statistics(cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """The target-domain histogram and low-frequency spectrum of the training images (what a model file stores)."""
    images, masks, _, _ = load_cache(cache)
    return target_quantiles(images, masks), target_spectrum(images)


def write_tables(out_dir: Path, rows: list[dict]) -> None:
    """OUT_DIR/tables.md from the rows (``tables``), also printed."""
    (out_dir / "tables.md").write_text(tables(rows))
    print(tables(rows))


def tables(rows: list[dict]) -> str:
    """Mean PSNR / SSIM / lesion error per source and method (over the subjects it ran on), and each model's
    margin over the best control on the same subjects."""
    def mean(source: str, method: str, subjects: set) -> dict:
        sel = [r for r in rows if r["source"] == source and r["method"] == method and r["subject"] in subjects]
        return {k: float(np.mean([r[k] for r in sel])) for k in ("psnr", "ssim", "lesion_error")}

    lines = ["| source | method | subjects | PSNR (dB) | SSIM | lesion error |", "|---|---|---|---|---|---|"]
    margins = ["", "| source | model | PSNR - best control | SSIM - best control | best control (PSNR) |",
               "|---|---|---|---|---|"]
    for source in dict.fromkeys(r["source"] for r in rows):
        methods = list(dict.fromkeys(r["method"] for r in rows if r["source"] == source))
        ran = {m: {r["subject"] for r in rows if r["source"] == source and r["method"] == m} for m in methods}
        for method in methods:
            m = mean(source, method, ran[method])
            lines.append(f"| {source} | {method} | {len(ran[method])} | {m['psnr']:.2f} | {m['ssim']:.3f} | "
                         f"{m['lesion_error']:.3f} |")
        for model in (m for m in methods if m not in CONTROLS and not m.startswith("random edges")):
            control = {c: mean(source, c, ran[model]) for c in methods
                       if (c in CONTROLS or c == f"random edges ({model})") and ran[model] <= ran[c]}
            if not control:
                continue
            best = max(control, key=lambda c: control[c]["psnr"])
            m = mean(source, model, ran[model])
            margins.append(f"| {source} | {model} | {m['psnr'] - control[best]['psnr']:+.2f} | "
                           f"{m['ssim'] - max(c['ssim'] for c in control.values()):+.3f} | {best} |")
    return "\n".join(lines + margins) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
