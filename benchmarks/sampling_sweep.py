#!/usr/bin/env python
"""The T1w defaults on the validation traveling subjects (issue 9): sampling start, averaged draws, refinement.

    python benchmarks/sampling_sweep.py [--model PATH] [--checkpoint RUN/checkpoint.pt] \
        [--start-times 0.7 0.8 0.9] [--samples 2] [--steps 0.005 0.01] [--threads 1]

Subjects 3001-3002 rendered by the four T1w source protocols. For every start time t0 the edge-to-image
output is drawn ``--samples`` times (seeds 0, 1, ...; 2 midpoint steps from the noised histogram-matched
source unless ``--ode-steps`` says otherwise), the first 1, 2, 4, ... draws are averaged and refined (NCC, 6
iterations, in the brain) towards the source (the paper) or towards the histogram-matched source, with each
refinement step, and scored against the same subject's target render inside the brain, next to histogram
matching, with the lesion contrast check of Fig. 6 (|lesion contrast - the target's|, two lesions a subject).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bhd_app.method.baselines import histogram_matching
from bhd_app.method.edges import canny_edges
from bhd_app.method.harmonize import generate
from bhd_app.method.refinement import refine
from bhd_app.training.validation import score_with_lesion, traveling_subjects
from refinement_sweep import SOURCES, load_for_benchmark


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--start-times", type=float, nargs="+", default=[0.7, 0.8, 0.9])
    p.add_argument("--samples", type=int, default=2, help="draws per start time; averages of 1, 2, 4, ... scored")
    p.add_argument("--steps", type=float, nargs="+", default=[0.005, 0.01], help="NCC refinement steps")
    p.add_argument("--ode-steps", type=int, nargs="+", default=[2], help="midpoint steps from t0 to 1")
    p.add_argument("--references", nargs="+", default=["source", "histmatch"], choices=["source", "histmatch"])
    p.add_argument("--seeds", type=int, nargs="+", default=[3001, 3002])
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_for_benchmark(args.model, args.checkpoint)
    counts = [n for n in (1, 2, 4, 8, 16) if n <= args.samples]
    scores: dict[tuple, list] = {}
    for subj in traveling_subjects(seeds=args.seeds, sources=args.sources):
        edge_map, _ = canny_edges(subj.source)
        start = histogram_matching(subj.source, subj.mask, model.target_quantiles)
        scores.setdefault((subj.protocol, "histmatch"), []).append(score_with_lesion(start, subj))
        for t0, ode_steps in ((t0, n) for t0 in args.start_times for n in args.ode_steps):
            draws = [generate(model, edge_map, steps=ode_steps, start_time=t0, start_image=start, seed=k)
                     for k in range(args.samples)]
            for n in counts:
                average = np.mean(draws[:n], axis=0)
                average[subj.mask == 0] = 0
                for name in args.references:
                    reference = subj.source if name == "source" else start
                    for step in args.steps:
                        out, _ = refine(average, reference, subj.mask, "ncc", step, 6, "brain")
                        out[subj.mask == 0] = 0
                        setting = f"t0 {t0}, {ode_steps} ODE steps, {n} sample(s), NCC {step} to {name}"
                        scores.setdefault((subj.protocol, setting), []).append(score_with_lesion(out, subj))
        print(subj.seed, subj.protocol, {k[1]: tuple(np.round(v[-1], 3)) for k, v in scores.items()
                                         if k[0] == subj.protocol}, flush=True)
    settings = list(dict.fromkeys(k[1] for k in scores))
    print("PSNR / SSIM / |lesion contrast - target's|")
    print("| setting | " + " | ".join(args.sources) + " | worst gap to histmatch |")
    print("|---" * (len(args.sources) + 2) + "|")
    for s in settings:
        gaps = [np.mean(scores[(src, s)], axis=0) - np.mean(scores[(src, "histmatch")], axis=0)
                for src in args.sources]
        worst = np.min(gaps, axis=0)
        worst[2] = np.max(gaps, axis=0)[2]  # lesion: lower is better
        print(f"| {s} | " + " | ".join(f"{m[0]:.2f} / {m[1]:.3f} / {m[2]:.3f}"
                                       for m in (np.mean(scores[(src, s)], axis=0) for src in args.sources))
              + f" | {worst[0]:+.2f} / {worst[1]:+.3f} / {worst[2]:+.3f} |")


if __name__ == "__main__":
    main()
