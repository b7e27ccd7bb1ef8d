#!/usr/bin/env python
"""Choose SSIMH's cutoff (DCT coefficients per axis swapped) on the validation traveling subjects.

    python benchmarks/ssimh_cutoff.py [--data training/default-w16/data.npz]

The target-domain average comes from the training images of the shipped model (``data.npz``, written by
``bhd-train``); the validation subjects (seeds 3001-3002) are rendered on the grid by four source protocols
and scored against their target render (PSNR, SSIM inside the brain), beside histogram matching.
"""

from __future__ import annotations

import argparse

import numpy as np

from bhd_app.baselines import histogram_matching, spectrum_swapping, target_quantiles, target_spectrum
from bhd_app.validation import score, traveling_subjects

SOURCES = ("sonata15t", "biograph3t", "vision15t", "vida3t")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="training/default-w16/data.npz")
    p.add_argument("--cutoffs", type=int, nargs="+", default=[1, 2, 4, 8, 12, 16, 24, 32, 48, 64])
    args = p.parse_args()
    data = np.load(args.data)
    images = [data[f"image{i}"] for i in range(int(data["n"]))]
    masks = [data[f"mask{i}"] for i in range(int(data["n"]))]
    spectrum = target_spectrum(images, block=max(args.cutoffs))
    subjects = traveling_subjects(sources=SOURCES)
    print("| method | mean PSNR | mean SSIM |\n|---|---|---|")
    for name, fn in [("source", lambda s: s.source),
                     ("histmatch", lambda s: histogram_matching(s.source, s.mask, target_quantiles(images, masks)))] + \
                    [(f"ssimh cutoff {c}", lambda s, c=c: spectrum_swapping(s.source, s.mask, spectrum, c))
                     for c in args.cutoffs]:
        scores = np.array([score(fn(s), s) for s in subjects])
        print(f"| {name} | {scores[:, 0].mean():.2f} | {scores[:, 1].mean():.3f} |", flush=True)


if __name__ == "__main__":
    main()
