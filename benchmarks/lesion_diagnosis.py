#!/usr/bin/env python
"""Where the lesion shortfall comes from, and what the refinement can and cannot do about it.

    python benchmarks/lesion_diagnosis.py CACHE_DIR [--model M] [--start-times 0.9 0.7] [--threads 1]
                                          [--mappings-only]

On the validation traveling subjects (3001-3002 x Sonata 1.5T, BioGraph 3T, Vision 1.5T, Vida 3T; 2 lesions
each), with the edge-to-image output at each start time cached in CACHE_DIR (one whole-volume sampling per
pair and start time; later runs only score):

1. **In-distribution check** (subject 3001): lesion contrast of the network's output when the flow starts
   from the *target* render itself (what training taught it) against starting from the histogram-matched
   Sonata render (what the participant level does).
2. **Refinement variants** on the t0 = 0.9 output: the participant level's NCC ascent (unit-RMS steps,
   6 or 18 iterations, step 0.005-0.08) towards the histogram-matched source, with and without putting the
   result back to the generated image's brain mean and standard deviation afterwards (NCC cannot tell).
3. **The blend family** that NCC ascent moves along: the z-scored generated image and the z-scored
   histogram-matched source mixed with weight w (w = 0: the network's output, w = 1: histogram matching's
   pattern), at the generated image's brain mean and standard deviation; for every start time.
4. **The network's tissue contrast as an intensity mapping**: the monotone function f of the histogram-matched
   source's intensity that fits the t0 = 0.9 output best (mean output per quantile bin), applied to the
   histogram-matched source, alone or plus the output's smoothed remainder: can a pointwise mapping, which
   cannot lift a lesion more than the tissue of its intensity, keep the lesion contrast better? And the
   oracle: the same kind of f fitted to the target render itself, the best any intensity mapping can do
   (``--mappings-only`` runs this part alone).

Prints markdown tables of PSNR / SSIM / |lesion contrast - target's| means per source.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from bhd_app.baselines import histogram_matching
from bhd_app.edges import canny_edges
from bhd_app.harmonize import generate, load_model
from bhd_app.metrics import lesion_contrast
from bhd_app.refinement import refine
from bhd_app.validation import score_with_lesion, traveling_subjects

SOURCES = ("sonata15t", "biograph3t", "vision15t", "vida3t")


def zscore(x: np.ndarray, inside: np.ndarray) -> np.ndarray:
    return (x[inside] - x[inside].mean()) / x[inside].std()


def with_statistics_of(values: np.ndarray, like: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """``values`` (brain voxels) given the brain mean and standard deviation of ``like``, clipped to [0, 1]."""
    out = np.zeros_like(like)
    z = (values - values.mean()) / values.std()
    out[inside] = np.clip(z * like[inside].std() + like[inside].mean(), 0, 1)
    return out


def intensity_mapping(source: np.ndarray, output: np.ndarray, inside: np.ndarray, bins: int = 64) -> np.ndarray:
    """The monotone piecewise-linear f with f(source) closest to ``output`` in the brain: the mean output in
    each quantile bin of the source, made non-decreasing, interpolated between the bins' mean intensities."""
    s, o = source[inside], output[inside]
    which = np.clip(np.searchsorted(np.quantile(s, np.linspace(0, 1, bins + 1)), s, side="right") - 1, 0, bins - 1)
    xs = np.array([s[which == b].mean() for b in range(bins)])
    ys = np.maximum.accumulate(np.array([o[which == b].mean() for b in range(bins)]))
    out = np.zeros_like(source)
    out[inside] = np.interp(s, xs, ys)
    return out


def table(title: str, scores: dict) -> None:
    print(f"\n{title}\n\n| setting | " + " | ".join(SOURCES) + " |\n" + "|---" * (len(SOURCES) + 1) + "|")
    for setting, per_source in scores.items():
        print(f"| {setting} | " + " | ".join("%.2f / %.3f / %.3f" % tuple(np.mean(per_source[s], axis=0))
                                             for s in SOURCES) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cache_dir", type=Path)
    p.add_argument("--model", default=None)
    p.add_argument("--start-times", type=float, nargs="+", default=[0.9, 0.7])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--mappings-only", action="store_true", help="only part 4 (intensity mappings)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    refinements, blends, mappings = {}, {}, {}
    for subj in traveling_subjects(seeds=(3001, 3002), sources=SOURCES):
        inside = subj.mask > 0
        matched = histogram_matching(subj.source, subj.mask, model.target_quantiles)
        edge_map = canny_edges(subj.source)[0]
        generated = {}
        for t0 in args.start_times:
            path = args.cache_dir / f"{subj.seed}_{subj.protocol}_t{t0}.npy"
            if not path.exists():
                image = generate(model, edge_map, steps=2, start_time=t0, start_image=matched, seed=0)
                image[~inside] = 0
                np.save(path, image)
            generated[t0] = np.load(path)

        def record(table_: dict, setting: str, image: np.ndarray) -> None:
            image[~inside] = 0
            table_.setdefault(setting, {}).setdefault(subj.protocol, []).append(score_with_lesion(image, subj))

        g = generated[args.start_times[0]]
        mapped = intensity_mapping(matched, g, inside)
        record(mappings, "histogram matching", matched.copy())
        record(mappings, "no refinement", g.copy())
        record(mappings, "f(histogram-matched source)", mapped.copy())
        record(mappings, "f(histogram-matched source), NCC 0.005 x6",
               refine(mapped, matched, subj.mask, "ncc", 0.005)[0])
        for sigma in (1, 2, 4, 8):
            record(mappings, f"f(...) + output's remainder smoothed (sigma {sigma} voxels)",
                   (mapped + gaussian_filter(g - mapped, sigma)).astype(np.float32))
        record(mappings, "oracle: f fitted to the target render", intensity_mapping(matched, subj.target, inside))
        if args.mappings_only:
            print(f"scored {subj.seed} {subj.protocol}", flush=True)
            continue
        record(refinements, "histogram matching", matched.copy())
        record(refinements, "no refinement", g.copy())
        for step in (0.005, 0.01, 0.02, 0.04, 0.08):
            for iterations in (6, 18):
                out = refine(g, matched, subj.mask, "ncc", step, iterations, "brain")[0]
                record(refinements, f"NCC {step} x{iterations}", out.copy())
                record(refinements, f"NCC {step} x{iterations}, rescaled", with_statistics_of(out[inside], g, inside))
        for t0, image in generated.items():
            for w in np.linspace(0, 1, 11):
                mix = (1 - w) * zscore(image, inside) + w * zscore(matched, inside)
                record(blends, f"t0 {t0}, w {w:.1f}", with_statistics_of(mix, image, inside))
        if subj.seed == 3001 and subj.protocol == "sonata15t":
            path = args.cache_dir / f"{subj.seed}_target_t{args.start_times[0]}.npy"
            if not path.exists():
                np.save(path, generate(model, canny_edges(subj.target)[0], steps=2, start_time=args.start_times[0],
                                       start_image=subj.target, seed=0))
            ratio = {"target render": subj.target, "histogram-matched Sonata": matched,
                     "network output from the target render": np.load(path),
                     "network output from the histogram-matched Sonata": g}
            print(f"lesion contrast (mean lesion / surrounding white matter), subject 3001, t0 {args.start_times[0]}:")
            for name, image in ratio.items():
                print(f"  {name}: {lesion_contrast(image, subj.lesion, subj.shell):.3f}")
        print(f"scored {subj.seed} {subj.protocol}", flush=True)
    if not args.mappings_only:
        table(f"Refinement variants on the t0 {args.start_times[0]} output (PSNR / SSIM / lesion error)",
              refinements)
        table("z-scored blend of the network output and the histogram-matched source (PSNR / SSIM / lesion error)",
              blends)
    table(f"The t0 {args.start_times[0]} output's intensity mapping applied to the histogram-matched source "
          "(PSNR / SSIM / lesion error)", mappings)


if __name__ == "__main__":
    main()
