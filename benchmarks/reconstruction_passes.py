#!/usr/bin/env python
"""How well a model regenerates held-out target-domain images, by sampler: the ceiling of harmonization.

    python benchmarks/reconstruction_passes.py [--model ixi-hh] [--subjects 2]

Each held-out IXI-HH image (IXI dataset, brain-development.org, CC BY-SA 3.0; the cache that
``benchmarks/real_traveling.py`` uses) is regenerated from its own edge map, starting at t0 0.9 from
itself noised (what T1w harmonization does with the histogram-matched source) or from pure noise (the
paper's generation), with several solvers and step counts; PSNR/SSIM against the image itself, each
normalized 1-99 % in the brain. The start itself (the noised image at t0 0.9) is the first row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from bhd_app.config import model_path
from bhd_app.method.metrics import fidelity
from bhd_app.method.harmonize import harmonize
from bhd_app.modelfile import load_model
from bhd_app.training.data import load_cache

HELDOUT = Path(__file__).resolve().parents[1] / "runs" / "ixi-hh-heldout" / "data.npz"
SAMPLERS = [(0.9, "euler", 1), (0.9, "euler", 2), (0.9, "euler", 4), (0.9, "midpoint", 1), (0.9, "midpoint", 2),
            (0.0, "euler", 4), (0.0, "midpoint", 2)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ixi-hh")
    p.add_argument("--subjects", type=int, default=2)
    p.add_argument("--heldout", type=Path, default=HELDOUT)
    args = p.parse_args(argv)
    if not args.heldout.exists():
        print(f"reconstruction_passes: {args.heldout} is missing; see benchmarks/real_traveling.py", file=sys.stderr)
        return 2
    model = load_model(model_path(args.model))
    images, masks, _, _ = load_cache(args.heldout)
    rows: dict[str, list] = {}
    for k in range(min(args.subjects, len(images))):
        image, mask = images[k], masks[k]
        noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(k)).numpy()
        start = np.clip(0.9 * image + 0.05 + 0.05 * noise, 0, 1)  # x_t0 of the sampler, in [0, 1] units
        rows.setdefault("the noised start at t0 0.9 (no network)", []).append(fidelity(start, image, mask))
        for t0, solver, steps in SAMPLERS:
            evaluations = steps * (2 if solver == "midpoint" else 1)
            out = harmonize(model, image, mask, start_time=t0, start_from="source", solver=solver, steps=steps,
                            refinement="none", seed=k)["generated"]
            label = f"t0 {t0:g}, {steps} {solver} step(s) ({evaluations} network passes)"
            rows.setdefault(label, []).append(fidelity(out, image, mask))
    print(f"| sampler ({args.model}, {min(args.subjects, len(images))} held-out images) | PSNR (dB) | SSIM |")
    print("|---|---|---|")
    for label, scores in rows.items():
        print(f"| {label} | {np.mean([s[0] for s in scores]):.2f} | {np.mean([s[1] for s in scores]):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
