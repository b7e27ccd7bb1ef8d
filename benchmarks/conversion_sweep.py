#!/usr/bin/env python
"""Contrast conversion (T2w to T1w, paper 4.8) settings: averaged draws and ODE steps, simulated and real.

    python benchmarks/conversion_sweep.py REAL_DATA_OUT [--samples 4] [--ode-steps 2] [--threads 2]

T2w inputs start from pure noise, so one draw of the edge-to-image model is one sample of the target-domain
images that share the T2w's edge map; the average of N draws estimates their posterior mean, which is closer
to the truth in the mean squared sense at N times the cost (``--samples`` of the participant level). Scored:

* simulated: the T2w render of validation subjects 3001-3002 against the same subject's target T1w render
  (PSNR, SSIM inside the brain, |lesion contrast - target's|);
* real: the preprocessed T2w of IXI002 and the stroke patient from a finished ``real_data.py`` run
  (REAL_DATA_OUT), converted, registered (antspyx, affine) to the same subject's preprocessed real T1w and
  scored inside the brain as ``real_data.py`` does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bhd_app.edges import canny_edges
from bhd_app.harmonize import generate, load_model
from bhd_app.validation import score_with_lesion, traveling_subjects
from real_data import T2W_SUBJECTS, grid_image, t1w_scorer


def averages(draws: list[np.ndarray]) -> dict[int, np.ndarray]:
    """The mean of the first 1, 2, 4, ... draws."""
    counts = [n for n in (1, 2, 4, 8, 16) if n <= len(draws)]
    return {n: np.mean(draws[:n], axis=0) for n in counts}


def markdown_row(row: tuple) -> str:
    cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
    return "| " + " | ".join(cells + [""] * (6 - len(cells))) + " |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("real_data_out", type=Path)
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--ode-steps", type=int, nargs="+", default=[2])
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    rows = []

    def report(subject: str, steps: int, draws: list[np.ndarray], scorer) -> None:
        for n, image in averages(draws).items():
            rows.append((subject, steps, n, *scorer(image)))
            print(markdown_row(rows[-1]), flush=True)

    for subj in traveling_subjects(seeds=[3001, 3002], sources=("t2w3t",)):
        edge_map, _ = canny_edges(subj.source)
        for steps in args.ode_steps:
            draws = [generate(model, edge_map, steps=steps, seed=k) * (subj.mask > 0) for k in range(args.samples)]
            report(f"simulated {subj.seed}", steps, draws, lambda image: score_with_lesion(image, subj))

    root = args.real_data_out.absolute()
    for sub, ses in T2W_SUBJECTS:
        t2 = grid_image(root / "out-none", sub, ses, "*desc-preproc_T2w.nii.gz").numpy()
        t2_brain = grid_image(root / "out-none", sub, ses, "*desc-brainT2w_mask.nii.gz").numpy() > 0
        edge_map, _ = canny_edges(t2)
        real_score = t1w_scorer(root, sub, ses)
        for steps in args.ode_steps:
            draws = [generate(model, edge_map, steps=steps, seed=k) * t2_brain for k in range(args.samples)]
            report(f"real {sub}", steps, draws, real_score)

    print("\n| subject | ODE steps | draws averaged | PSNR | SSIM | lesion error |\n|---|---|---|---|---|---|")
    for row in rows:
        print(markdown_row(row))


if __name__ == "__main__":
    main()
