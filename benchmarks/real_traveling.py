#!/usr/bin/env python
"""Traveling subjects with real anatomy: held-out IXI-HH images, altered by known scanner-like changes.

    python benchmarks/real_traveling.py OUT_DIR --model training/ixi-hh/bhd_ixihh_w16.pt [--subjects 4]

Each held-out subject of the real target scanner (IXI Hammersmith, Philips Intera 3T; IXI dataset,
brain-development.org, CC BY-SA 3.0; never trained on) gets three T1-hypointense white-matter lesions
drawn in; that image is the truth. Each source of ``bhd_app.alterations.SOURCES`` re-draws it with
other tissue contrasts (deep grey matter apart, so no global intensity map undoes it), a bias field,
noise and thick slices, or as a T2w-like image (contrast conversion). Every method harmonizes the
altered image back on the grid and is scored against the truth: PSNR/SSIM after normalizing each
image 1-99 % in the brain (``metrics.fidelity``) and the lesion contrast error.

No-model controls (target statistics from the model file): the altered image itself, histogram
matching, SSIMH, histogram matching refined by NCC towards the source (the refinement without the
network), and bhd's defaults with random edges (the network without the edge map). The headline
is bhd's margin over the best control, per source.

Needs the held-out subjects preprocessed once (about 10 min on 2 cores):
    python training/ixi_hh_bids.py work/ixi-hh
    bhd-train runs/ixi-hh-heldout --bids-dir work/ixi-hh/heldout --nprocs 2 --prepare-only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bhd_app.alterations import SOURCES, draw_lesions
from bhd_app.baselines import histogram_matching, random_edges, spectrum_swapping
from bhd_app.config import preset
from bhd_app.harmonize import harmonize, load_model
from bhd_app.metrics import fidelity, lesion_contrast
from bhd_app.refinement import refine
from bhd_app.target_data import load_cache

REPO = Path(__file__).resolve().parents[1]
HELDOUT = REPO / "runs" / "ixi-hh-heldout" / "data.npz"
CONTROLS = ("none", "histmatch", "ssimh", "histmatch + NCC", "random edges")


def methods(model, source: np.ndarray, mask: np.ndarray, suffix: str, seed: int, controls: bool) -> dict:
    """Every method's harmonized image (D, H, W) for one altered source."""
    settings = preset(suffix)
    out = {}
    if controls:
        matched = histogram_matching(source, mask, model.target_quantiles)
        out["none"] = source
        out["histmatch"] = matched
        out["ssimh"] = spectrum_swapping(source, mask, model.ssimh_spectrum())
        if suffix == "T1w":
            out["histmatch + NCC"] = refine(matched, source, mask, "ncc", settings.refine_step,
                                            settings.refine_iterations, step_rule=settings.refine_step_rule)[0]
            out["random edges"] = harmonize(model, source, mask, settings, seed=seed,
                                            edge_map=random_edges(source, mask, seed))["harmonized"]
    out["bhd"] = harmonize(model, source, mask, settings, seed=seed)["harmonized"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--model", type=Path, required=True, help="the model whose target is IXI-HH (controls use it)")
    p.add_argument("--also", type=Path, nargs="*", default=[], help="other models: bhd only, at their defaults")
    p.add_argument("--subjects", type=int, default=4, help="first N held-out subjects")
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    p.add_argument("--heldout", type=Path, default=HELDOUT)
    args = p.parse_args(argv)
    if not args.heldout.exists():
        print(f"real_traveling: {args.heldout} is missing; prepare it as the docstring says", file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    images, masks, _, desc = load_cache(args.heldout)
    models = {"bhd": load_model(args.model)} | {f"bhd ({m.stem})": load_model(m) for m in args.also}
    rows = []
    for k in range(min(args.subjects, len(images))):
        truth, lesion, shell = draw_lesions(images[k], masks[k], seed=k)
        truth_lc = lesion_contrast(truth, lesion, shell)
        for name in args.sources:
            scanner = SOURCES[name]
            source = scanner.apply(truth, masks[k], seed=100 * k + 7)
            for label, model in models.items():
                t = time.perf_counter()
                outs = methods(model, source, masks[k], scanner.suffix, seed=k, controls=label == "bhd")
                for method, image in outs.items():
                    psnr_db, ssim_value = fidelity(image, truth, masks[k])
                    rows.append({"subject": desc["images"][k].split("_")[0], "source": name,
                                 "method": label if method == "bhd" else method, "psnr": round(psnr_db, 3),
                                 "ssim": round(ssim_value, 4),
                                 "lesion_error": round(abs(lesion_contrast(image, lesion, shell) - truth_lc), 4)})
                print(f"subject {k} {name} {label}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        (args.out_dir / "results.json").write_text(json.dumps({"rows": rows, "models": {
            m: str(v.path) for m, v in models.items()}, "heldout": desc}, indent=1))
    (args.out_dir / "tables.md").write_text(tables(rows))
    print(tables(rows))
    return 0


def tables(rows: list[dict]) -> str:
    """Mean PSNR / SSIM / lesion error per source and method, and bhd's margin over the best control."""
    lines = ["| source | method | PSNR (dB) | SSIM | lesion error |", "|---|---|---|---|---|"]
    margins = ["", "| source | bhd PSNR - best control | bhd SSIM - best control | best control (PSNR) |",
               "|---|---|---|---|"]
    for source in dict.fromkeys(r["source"] for r in rows):
        mean = {}
        for method in dict.fromkeys(r["method"] for r in rows if r["source"] == source):
            sel = [r for r in rows if r["source"] == source and r["method"] == method]
            mean[method] = {k: float(np.mean([r[k] for r in sel])) for k in ("psnr", "ssim", "lesion_error")}
            m = mean[method]
            lines.append(f"| {source} | {method} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['lesion_error']:.3f} |")
        controls = {c: mean[c] for c in CONTROLS if c in mean}
        best = max(controls, key=lambda c: controls[c]["psnr"])
        margins.append(f"| {source} | {mean['bhd']['psnr'] - controls[best]['psnr']:+.2f} | "
                       f"{mean['bhd']['ssim'] - max(c['ssim'] for c in controls.values()):+.3f} | {best} |")
    return "\n".join(lines + margins) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
