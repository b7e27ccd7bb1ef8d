#!/usr/bin/env python
"""NCC refinement with fixed-size steps (bhd before session 9) against steps capped at the NCC maximum (now).

    python benchmarks/refinement_step_cap.py CACHE.npz [--model NAME=PATH@T0 ...] [--threads 2]

Validation subjects 3001-3002, the four T1w source protocols. Each model's edge-to-image output (start t0 from
the histogram-matched source, 2 midpoint steps, seed 0; cached in CACHE.npz, made on the first run) is refined
towards the histogram-matched source, 6 iterations in the brain, with each step: once with ``refine`` (steps
capped at the NCC maximum) and once with the fixed-size loop it replaced, written out below for the
comparison. Prints subject 3001 Sonata's NCC histories and a table of mean PSNR / SSIM / lesion error.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bhd_app.baselines import histogram_matching
from bhd_app.edges import canny_edges
from bhd_app.harmonize import generate, load_model
from bhd_app.refinement import ncc_gradient, refine
from bhd_app.validation import score_with_lesion, traveling_subjects
from refinement_sweep import SOURCES

STEPS = (0.0025, 0.005, 0.01, 0.02, 0.04, 0.08)


def refine_fixed_steps(image: np.ndarray, reference: np.ndarray, mask: np.ndarray, step: float,
                       iterations: int = 6) -> tuple[np.ndarray, list[float]]:
    """The NCC ascent as bhd ran it until session 9: every step of unit-RMS length ``step``, never capped."""
    sel = mask > 0
    x, s = image[sel].astype(np.float64), reference[sel].astype(np.float64)
    history = []
    for _ in range(iterations):
        value, grad = ncc_gradient(x, s)
        history.append(value)
        x = np.clip(x + step * grad / np.sqrt(np.mean(grad**2)), 0.0, 1.0)
    history.append(ncc_gradient(x, s)[0])
    out = image.astype(np.float32).copy()
    out[sel] = x
    return out, history


def cached_outputs(cache: Path, models: dict[str, tuple[str, float]]) -> dict[str, np.ndarray]:
    """Histogram-matched sources and each model's edge-to-image output, computed once."""
    if cache.exists():
        return dict(np.load(cache))
    out = {}
    for name, (path, t0) in models.items():
        model = load_model(path)
        for subj in traveling_subjects(seeds=[3001, 3002], sources=SOURCES):
            edge_map, _ = canny_edges(subj.source)
            start = histogram_matching(subj.source, subj.mask, model.target_quantiles)
            out[f"hm_{subj.seed}_{subj.protocol}"] = start.astype(np.float32)
            out[f"{name}_{subj.seed}_{subj.protocol}"] = generate(
                model, edge_map, steps=2, start_time=t0, start_image=start, seed=0).astype(np.float32)
            print(name, subj.seed, subj.protocol, flush=True)
    np.savez_compressed(cache, **out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cache", type=Path)
    p.add_argument("--model", nargs="+", default=["shipped=@0.9"],
                   help="NAME=PATH@T0 (empty PATH: the shipped model)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = {}
    for spec in args.model:
        name, rest = spec.split("=", 1)
        path, t0 = rest.rsplit("@", 1)
        models[name] = (path or None, float(t0))
    outputs = cached_outputs(args.cache, models)
    scores: dict[tuple[str, str], list] = {}
    for subj in traveling_subjects(seeds=[3001, 3002], sources=SOURCES):
        start = outputs[f"hm_{subj.seed}_{subj.protocol}"]
        scores.setdefault(("histogram matching", subj.protocol), []).append(score_with_lesion(start, subj))
        for name, (_, t0) in models.items():
            generated = outputs[f"{name}_{subj.seed}_{subj.protocol}"]
            for step in STEPS:
                for kind in ("fixed", "capped"):
                    if kind == "fixed":
                        out, history = refine_fixed_steps(generated, start, subj.mask, step)
                    else:
                        out, history = refine(generated, start, subj.mask, "ncc", step, 6, "brain")
                    out[subj.mask == 0] = 0
                    row = f"{name} t0 {t0} NCC {step} {kind}"
                    scores.setdefault((row, subj.protocol), []).append(score_with_lesion(out, subj))
                    if subj.seed == 3001 and subj.protocol == "sonata15t":
                        print(row, np.round(history, 4))
    print("PSNR / SSIM / |lesion contrast - target's|, mean of subjects 3001-3002")
    print("| setting | " + " | ".join(SOURCES) + " |\n|---" + "|---" * len(SOURCES) + "|")
    for row in dict.fromkeys(k[0] for k in scores):
        print(f"| {row} | " + " | ".join("%.2f / %.3f / %.3f" % tuple(np.mean(scores[(row, s)], axis=0))
                                          for s in SOURCES) + " |")


if __name__ == "__main__":
    main()
