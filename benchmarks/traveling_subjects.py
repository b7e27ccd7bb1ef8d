#!/usr/bin/env python
"""Traveling-subject benchmark on the harmonization grid (paper Table 1 layout, Fig. 6 lesion check).

    python benchmarks/traveling_subjects.py [--subjects 2] [--model PATH] [--sweep] [--out results.json]

Simulated subjects (seeds 2001+, disjoint from training 1000+, validation 3000+
and bids_examples 1-3), each with white-matter lesions, are rendered by the
target protocol and by every source protocol directly on the grid (as the
preprocessing would deliver them). Every method harmonizes each source; PSNR and
SSIM are measured inside the brain against the same subject's target render,
and the lesion contrast (mean lesion / mean surrounding white matter) is
compared with the target's. ``--sweep`` scores a grid of start times and
refinement settings (to choose the participant level's defaults on the
validation subjects, use ``--seeds 3001 3002``).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from bhd_app.baselines import histogram_matching
from bhd_app.config import preset
from bhd_app.harmonize import harmonize, load_model, select_device
from bhd_app.metrics import fidelity, lesion_contrast
from bhd_app.simulation import PROTOCOLS, TARGET_PROTOCOL, make_anatomy, render_on_grid
from bhd_app.templates import harmonization_grid
from bhd_app.validation import lesion_masks

SOURCES = ("sonata15t", "biograph3t", "vision15t", "vida3t", "t2w3t")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[2001, 2002])
    p.add_argument("--sources", nargs="+", default=list(SOURCES))
    p.add_argument("--model", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--sweep", action="store_true", help="score start times and refinement settings")
    p.add_argument("--start-times", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7], help="for --sweep")
    p.add_argument("--refinements", nargs="+", default=["none", "ncc", "mi"], help="for --sweep")
    p.add_argument("--out", default=None, help="write all rows as JSON here")
    args = p.parse_args()
    model = load_model(args.model, select_device(args.device))
    grid = harmonization_grid()
    rows = []
    for seed in args.seeds:
        anatomy = make_anatomy(seed, lesions=4)
        target, mask = render_on_grid(anatomy, PROTOCOLS[TARGET_PROTOCOL], seed + 1)
        lesion, shell = lesion_masks(anatomy, grid)
        target_lc = lesion_contrast(target, lesion, shell)
        for k, name in enumerate(args.sources):
            source, _ = render_on_grid(anatomy, PROTOCOLS[name], seed + 10 + k)
            t1w = PROTOCOLS[name].suffix == "T1w"
            defaults = preset(PROTOCOLS[name].suffix)
            methods = {"source": lambda: source,
                       "histmatch": lambda: histogram_matching(source, mask, model.target_quantiles)}
            settings = {"bhd": {}}
            if args.sweep:
                for t0 in (args.start_times if t1w else (0.0,)):
                    for ref in (args.refinements if t1w else ("none",)):
                        settings[f"bhd_t{t0}_{ref}"] = {"start_time": t0, "refinement": ref}
            for label, s in settings.items():
                methods[label] = (lambda s=s: harmonize(model, source, mask, defaults, steps=args.steps,
                                                        seed=seed, **s)["harmonized"])
            for label, fn in methods.items():
                t0 = time.perf_counter()
                image = fn()
                row = {"seed": seed, "protocol": name, "method": label, "seconds": round(time.perf_counter() - t0, 1),
                       **dict(zip(("psnr", "ssim"), (round(v, 4) for v in fidelity(image, target, mask)))),
                       "lesion_contrast": round(lesion_contrast(image, lesion, shell), 3),
                       "target_lesion_contrast": round(target_lc, 3)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\nmean over subjects: protocol method PSNR SSIM |lesion contrast - target|")
    keys = sorted({(r["protocol"], r["method"]) for r in rows}, key=lambda k: (SOURCES.index(k[0]), k[1]))
    for prot, meth in keys:
        rs = [r for r in rows if r["protocol"] == prot and r["method"] == meth]
        print(f"{prot:11s} {meth:18s} {np.mean([r['psnr'] for r in rs]):6.2f} {np.mean([r['ssim'] for r in rs]):.4f} "
              f"{np.mean([abs(r['lesion_contrast'] - r['target_lesion_contrast']) for r in rs]):.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
