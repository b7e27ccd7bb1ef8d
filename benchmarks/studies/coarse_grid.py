#!/usr/bin/env python
"""Design study (issue 20, item 5): the flow on a 2x coarser grid against today's design, at equal wall time.

    python benchmarks/studies/coarse_grid.py prepare runs/ixi-hh-16/data.npz runs/design-coarse/data.npz
    (then train both arms side by side with bhd-train, one core each: see BENCHMARKS.md)
    python benchmarks/studies/coarse_grid.py score OUT_DIR --full FULL.pt --coarse COARSE.pt [--first 0 --subjects 3]

The coarse design runs the same network on the harmonization grid averaged over 2x2x2 blocks (1.2 mm to
2.4 mm: 8x fewer voxels, so a 48^3 patch covers most of the brain): the target images, their masks and
edge maps are made on that grid (``prepare``), the model is trained there, and a T1w image is harmonized
by taking the refined start (histogram matching + the paper's NCC step) to the coarse grid, one Euler step
from it noised at t0 0.9, and keeping the upsampled output's frequencies below a Gaussian low-pass of
``--split-sigmas-mm`` with the start's finer detail (rows "coarse grid, split S mm"; "coarse grid" alone is the
participant default, ``config.T1W.split_sigma_mm``). Also from
pure noise (the paper's route), where the edge map carries everything, and each with random edges (the
network without the edge map). The bhd-app route for such a model is ``bhd-train --grid-factor 2``
(``bhd_app.method.grid``); this script scores a model trained on the ``prepare``d cache the same way.

Scored like ``real_traveling.py`` (held-out IXI-HH heads, IXI dataset, CC BY-SA 3.0, with known scanner
changes; each image normalized 1-99 % in the brain); rows accumulate in OUT_DIR/results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bhd_app.config import GRID_SPACING, T1W, preset
from bhd_app.evaluation.alterations import SOURCES, draw_lesions
from bhd_app.method.baselines import histogram_matching, random_edges
from bhd_app.method.grid import coarsen_mask
from bhd_app.method.harmonize import at_model_resolution, harmonize, model_grid, refined_start
from bhd_app.method.refinement import frequency_split, split_sigma_voxels
from bhd_app.modelfile import load_model
from bhd_app.training.data import load_cache, on_model_grid, save_cache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: real_traveling
from real_traveling import HELDOUT, TARGET_DATA, controls, scored, target_statistics, write_tables  # noqa: E402

FACTOR = 2


def prepare(fine_cache: Path, coarse_cache: Path) -> None:
    """The training cache on the coarse grid: block-averaged images, masks, and edge maps found there."""
    images, masks, edges, desc = load_cache(fine_cache)
    coarse, edges = on_model_grid(images, edges, FACTOR)
    cmasks = [coarsen_mask(m, FACTOR) for m in masks]
    coarse_cache.parent.mkdir(parents=True, exist_ok=True)
    save_cache(coarse_cache, coarse, cmasks, edges, {**desc, "grid": f"{FACTOR}x coarser than the harmonization grid"})
    print(f"{coarse_cache}: {len(coarse)} images of shape {coarse[0].shape}")


def score(args) -> int:
    images, masks, _, desc = load_cache(args.heldout)
    full, coarse = load_model(args.full), load_model(args.coarse)
    # Trained by bhd-train on the prepared coarse cache, so its card states neither its grid nor the fine-grid
    # histogram; both designs start from the same histogram matching.
    coarse.grid_factor, coarse.target_quantiles = FACTOR, full.target_quantiles
    if args.target_data.exists():
        quantiles, spectrum = target_statistics(args.target_data)
    else:  # as real_traveling.py: the statistics the model file stores
        quantiles, spectrum = full.target_quantiles, full.ssimh_spectrum()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results = args.out_dir / "results.json"
    rows = json.loads(results.read_text())["rows"] if results.exists() else []
    for k in range(args.first, args.first + args.subjects):
        truth, lesion, shell = draw_lesions(images[k], masks[k], seed=k)
        subject = desc["images"][k].split("_")[0]
        for name in args.sources:
            scanner = SOURCES[name]
            source = scanner.apply(truth, masks[k], seed=100 * k + 7)
            t = time.perf_counter()
            outs = controls(source, masks[k], "T1w", quantiles, spectrum)
            settings = preset("T1w")
            start = refined_start(histogram_matching(source, masks[k], full.target_quantiles), source, masks[k])
            for model, label, t0 in ((full, "today's design", 0.9), (coarse, "coarse grid", 0.9),
                                     (coarse, "coarse grid from noise", 0.0)):
                for random in (False, True):
                    edges = random_edges(*model_grid(model, source, masks[k]), k) if random else None
                    generated = harmonize(model, source, masks[k], settings, seed=k, start_time=t0, edge_map=edges,
                                          refinement="none")["generated"]
                    for mm in args.split_sigmas_mm if model is coarse else [T1W.split_sigma_mm]:
                        row = label if mm == T1W.split_sigma_mm else f"{label}, split {mm:g} mm"
                        outs[f"random edges ({row})" if random else row] = frequency_split(
                            generated, start, masks[k], split_sigma_voxels(mm, GRID_SPACING),
                            at_model_resolution(model, start))
            print(f"{subject} {name}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
            rows = scored(rows, subject, name, outs, truth, masks[k], lesion, shell)
            results.write_text(json.dumps({"rows": rows, "heldout": desc["dataset"]}, indent=1))
    write_tables(args.out_dir, rows)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="make the coarse-grid training cache from a fine one")
    prep.add_argument("fine_cache", type=Path)
    prep.add_argument("coarse_cache", type=Path)
    sc = sub.add_parser("score", help="score both designs on held-out subjects")
    sc.add_argument("out_dir", type=Path)
    sc.add_argument("--full", type=Path, required=True, help="a model trained on the harmonization grid")
    sc.add_argument("--coarse", type=Path, required=True, help="a model trained on the coarse grid")
    sc.add_argument("--first", type=int, default=0)
    sc.add_argument("--subjects", type=int, default=3)
    sc.add_argument("--sources", nargs="+", default=[s for s in SOURCES if SOURCES[s].suffix == "T1w"])
    sc.add_argument("--split-sigmas-mm", type=float, nargs="+", default=[T1W.split_sigma_mm],
                    help="frequency splits of the coarse draws (Gaussian low-pass, mm)")
    sc.add_argument("--heldout", type=Path, default=HELDOUT)
    sc.add_argument("--target-data", type=Path, default=TARGET_DATA)
    args = p.parse_args(argv)
    if args.command == "prepare":
        prepare(args.fine_cache, args.coarse_cache)
        return 0
    return score(args)


if __name__ == "__main__":
    raise SystemExit(main())
