#!/usr/bin/env python
"""Candidate models side by side on the validation subjects, at the participant level's defaults (issue 9).

    python benchmarks/compare_models.py MODEL.pt [MODEL.pt ...] [--sources sonata15t ... t2w3t] [--threads 1]

Subjects 3001-3002 (never trained on, not in the benchmark), rendered by each source protocol, are harmonized
by every model with the defaults the participant level uses for that input (T1w: ``config.preset('T1w')``;
T2w: contrast conversion) and scored against the same subject's target render inside the brain: PSNR, SSIM
and the lesion contrast error of Fig. 6, next to the no-model controls: histogram matching, for T1w also
histogram matching refined by the paper's NCC step towards the source, and the first model fed random edges.
This is how a new checkpoint earns the right to be shipped: it must not lose to the shipped one here.

``--reconstruction`` also regenerates each subject's target render from its own edge map, from pure noise
(no source image at all, as for contrast conversion), and scores it the same way: the model's own skill,
lesions included, which the late T1w start hides behind the histogram-matched source.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bhd_app.config import preset
from bhd_app.method.baselines import histogram_matching, random_edges
from bhd_app.method.harmonize import harmonize, model_grid, refined_start
from bhd_app.modelfile import load_model
from bhd_app.training.validation import reconstruction_score, score_with_lesion, traveling_subjects

SOURCES = ("sonata15t", "biograph3t", "vision15t", "vida3t", "t2w3t")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", type=Path)
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    p.add_argument("--seeds", type=int, nargs="+", default=[3001, 3002])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--reconstruction", action="store_true",
                   help="also regenerate each target render from its own edge map from pure noise")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = [load_model(path) for path in args.models]
    models = {f"{path} (step {model.card['steps']})": model for path, model in zip(args.models, loaded)}
    scores: dict[tuple[str, str], list] = {}
    reconstructed: set[int] = set()
    for subj in traveling_subjects(seeds=args.seeds, sources=args.sources):
        if args.reconstruction and subj.seed not in reconstructed:
            reconstructed.add(subj.seed)
            for name, model in models.items():
                scores.setdefault((name, "from noise"), []).append(reconstruction_score(model, subj))
        suffix = "T2w" if subj.protocol.startswith("t2w") else "T1w"
        matched = histogram_matching(subj.source, subj.mask, loaded[0].target_quantiles)
        images = {"histogram matching": matched}
        if suffix == "T1w":
            images["histogram matching + NCC"] = refined_start(matched, subj.source, subj.mask, preset(suffix))
            edges = random_edges(*model_grid(loaded[0], subj.source, subj.mask), subj.seed)
            images["random edges (first model)"] = harmonize(loaded[0], subj.source, subj.mask, preset(suffix),
                                                             edge_map=edges)["harmonized"]
        for name, model in models.items():
            images[name] = harmonize(model, subj.source, subj.mask, preset(suffix))["harmonized"]
        for name, image in images.items():
            scores.setdefault((name, subj.protocol), []).append(score_with_lesion(image, subj))
        print(subj.seed, subj.protocol, {k[0]: np.round(v[-1], 3).tolist() for k, v in scores.items()
                                         if k[1] == subj.protocol}, flush=True)
    columns = args.sources + ["from noise"] * args.reconstruction
    print("PSNR / SSIM / |lesion contrast - target's|, mean of the validation subjects")
    print("| method | " + " | ".join(columns) + " |\n|---" * 1 + "|---" * len(columns) + "|")
    for name in dict.fromkeys(k[0] for k in scores if k[1] != "from noise"):
        cells = [np.mean(scores.get((name, src), [[np.nan] * 3]), axis=0) for src in columns]
        print(f"| {name} | " + " | ".join(f"{c[0]:.2f} / {c[1]:.3f} / {c[2]:.3f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
