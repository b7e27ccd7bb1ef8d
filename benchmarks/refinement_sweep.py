#!/usr/bin/env python
"""Refinement settings on the validation traveling subjects (section 3.5; issue 9: chosen after the model is good).

    python benchmarks/refinement_sweep.py [--model PATH] [--checkpoint RUN_DIR/checkpoint.pt]

Subjects 3001-3002 rendered on the grid by four source protocols; each source's edge-to-image output (start
t0 from the histogram-matched source, 2 midpoint steps, seed 0) is refined towards the source (the paper's
reference; ``sampling_sweep.py`` compares it with the histogram-matched one) with every setting and scored
against the same subject's target render inside the brain. ``--checkpoint`` scores a training checkpoint's
EMA weights instead of the model file's.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bhd_app.baselines import histogram_matching
from bhd_app.config import T1W
from bhd_app.edges import canny_edges
from bhd_app.harmonize import HarmonizationModel, generate, load_model
from bhd_app.refinement import refine
from bhd_app.validation import score, traveling_subjects

SOURCES = ("sonata15t", "biograph3t", "vision15t", "vida3t")
SETTINGS = [("none", 0.0)] + [("ncc", step) for step in (0.002, 0.005, 0.01, 0.02)] + [("mi", 0.02)]


def load_for_benchmark(model_path: str | None, checkpoint: str | None) -> HarmonizationModel:
    """The model file (default: the shipped one), with a training checkpoint's EMA weights if given."""
    model = load_model(model_path)
    if checkpoint:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.net.load_state_dict(state["ema"])
        print(f"EMA weights of {checkpoint} at step {state['step']}")
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--start-time", type=float, default=T1W.start_time)
    args = p.parse_args()
    model = load_for_benchmark(args.model, args.checkpoint)
    scores = {s: [] for s in SETTINGS}
    for subj in traveling_subjects(sources=SOURCES):
        edge_map, _ = canny_edges(subj.source)
        start = histogram_matching(subj.source, subj.mask, model.target_quantiles)
        generated = generate(model, edge_map, steps=2, start_time=args.start_time, start_image=start, seed=0)
        generated[subj.mask == 0] = 0
        for objective, step in SETTINGS:
            out, _ = refine(generated, subj.source, subj.mask, objective, step, 6, "brain")
            out[subj.mask == 0] = 0
            scores[(objective, step)].append(score(out, subj))
        print(subj.seed, subj.protocol, {f"{o} {s}": tuple(np.round(v[-1], 3)) for (o, s), v in scores.items()},
              flush=True)
    print("| refinement | mean PSNR | mean SSIM |\n|---|---|---|")
    for (objective, step), values in scores.items():
        psnr_mean, ssim_mean = np.mean(values, axis=0)
        print(f"| {objective} {step if objective != 'none' else ''} | {psnr_mean:.2f} | {ssim_mean:.3f} |")


if __name__ == "__main__":
    main()
