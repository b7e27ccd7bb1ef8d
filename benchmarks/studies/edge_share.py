#!/usr/bin/env python
"""What the edge map carries at each start time: fidelity against the same draw with random edges (issue 20).

    python benchmarks/studies/edge_share.py score OUT --model bhd_app/data/models/bhd_ixihh_coarse.pt [--first 0 --subjects 3]
    python benchmarks/studies/edge_share.py plot OUT [OUT/edge_share.png]

A T1w draw starts from the refined start (histogram matching + the paper's NCC step towards the source) noised
at t0 (section 3.3; t0 0 is the paper's generation from the edge map alone), takes ``--steps`` Euler steps,
averages ``--samples`` draws, and keeps its frequencies below a Gaussian low-pass of ``--split-sigmas-mm``
(mm) with the start's finer detail (``refinement="split"``). Each (t0, split) is scored
with the source's Canny edge map (rows "t0 T, split S") and with random edges of the same density (rows
"random edges (t0 T, split S)"), on held-out IXI-HH heads with known scanner changes, beside the no-model
controls: the scoring, subjects and alterations of ``real_traveling.py`` (IXI dataset, CC BY-SA 3.0; each
image normalized 1-99 % in the brain). Rows accumulate in OUT/results.json; ``plot`` draws, per source, the
margin over random edges against the margin over the best no-model control, one curve per split.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bhd_app.config import GRID_SPACING, preset  # noqa: E402
from bhd_app.evaluation.alterations import SOURCES, draw_lesions  # noqa: E402
from bhd_app.method.baselines import random_edges  # noqa: E402
from bhd_app.method.harmonize import at_model_resolution, harmonize, model_grid  # noqa: E402
from bhd_app.method.refinement import frequency_split, split_sigma_voxels  # noqa: E402
from bhd_app.modelfile import load_model  # noqa: E402
from bhd_app.training.data import load_cache  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: real_traveling
from real_traveling import CONTROLS, HELDOUT, controls, scored, write_tables  # noqa: E402

T1W_SOURCES = [s for s in SOURCES if SOURCES[s].suffix == "T1w"]


def label(t0: float, sigma_mm: float) -> str:
    return f"t0 {t0:g}, split {sigma_mm:g} mm"


def score(args) -> int:
    model = load_model(args.model)
    images, masks, _, desc = load_cache(args.heldout)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results = args.out_dir / "results.json"
    rows = json.loads(results.read_text())["rows"] if results.exists() else []
    settings = preset("T1w")
    for k in range(args.first, args.first + args.subjects):
        truth, lesion, shell = draw_lesions(images[k], masks[k], seed=k)
        subject = desc["images"][k].split("_")[0]
        for name in args.sources:
            source = SOURCES[name].apply(truth, masks[k], seed=100 * k + 7)
            t = time.perf_counter()
            outs = controls(source, masks[k], "T1w", model.target_quantiles, model.ssimh_spectrum())
            start = outs["histmatch + NCC"]  # the refined start, as harmonize makes it
            seen = at_model_resolution(model, start)  # and as the model's grid holds it
            for t0 in args.start_times:
                for random in (False, True):
                    edges = random_edges(*model_grid(model, source, masks[k]), k) if random else None
                    generated = harmonize(model, source, masks[k], settings, seed=k, start_time=t0, steps=args.steps,
                                          samples=args.samples, edge_map=edges, refinement="none")["generated"]
                    for mm in args.split_sigmas_mm:
                        row = label(t0, mm)
                        outs[f"random edges ({row})" if random else row] = frequency_split(
                            generated, start, masks[k], split_sigma_voxels(mm, GRID_SPACING), seen)
            print(f"{subject} {name}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
            rows = scored(rows, subject, name, outs, truth, masks[k], lesion, shell)
            results.write_text(json.dumps({"rows": rows, "model": str(args.model), "steps": args.steps,
                                           "samples": args.samples, "heldout": desc["dataset"]}, indent=1))
    write_tables(args.out_dir, rows)
    return 0


def margins(rows: list[dict], source: str, row: str) -> tuple[float, float]:
    """(PSNR margin over the best no-model control, PSNR margin over the same row with random edges), dB."""
    def mean(method: str) -> float:
        return float(np.mean([r["psnr"] for r in rows if r["source"] == source and r["method"] == method]))
    best = max(mean(c) for c in CONTROLS if any(r["method"] == c for r in rows))
    return mean(row) - best, mean(row) - mean(f"random edges ({row})")


def plot(out_dir: Path, png: Path) -> int:
    rows = json.loads((out_dir / "results.json").read_text())["rows"]
    # (t0, split) of each row: "t0 0.1, split 19.2 mm"; rows written before the split was in mm ("split 16") give
    # it in voxels of 1.2 mm
    parsed = {(float(t0.split()[1]), float(split.split()[1]) * (1.0 if split.endswith(" mm") else 1.2)): r["method"]
              for r in rows if r["method"].startswith("t0 ") for t0, split in [r["method"].split(", ")]}
    t0s, sigmas = sorted({p[0] for p in parsed}), sorted({p[1] for p in parsed})
    sources = [s for s in T1W_SOURCES if any(r["source"] == s for r in rows)]
    fig, axes = plt.subplots(1, len(sources), figsize=(5 * len(sources), 4.5), squeeze=False)
    for ax, source in zip(axes[0], sources):
        for sigma in sigmas:
            ran = [t0 for t0 in t0s if (t0, sigma) in parsed]
            points = np.array([margins(rows, source, parsed[t0, sigma]) for t0 in ran])
            ax.plot(points[:, 0], points[:, 1], "o-", label=f"split {sigma:g} mm")
            for t0, (x, y) in zip(ran, points):
                ax.annotate(f"{t0:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axvline(1, color="0.6", ls="--")
        ax.axhline(1, color="0.6", ls="--")
        ax.set(title=source, xlabel="PSNR - best no-model control (dB)", ylabel="PSNR - same draw, random edges (dB)")
    axes[0][0].legend(fontsize=8, title="labels: t0")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    print(png)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sc = sub.add_parser("score", help="score draws at each start time, with the edge map and with random edges")
    sc.add_argument("out_dir", type=Path)
    sc.add_argument("--model", type=Path, required=True)
    sc.add_argument("--start-times", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9])
    sc.add_argument("--split-sigmas-mm", type=float, nargs="+", default=[4.8, 9.6, 19.2, 28.8],
                    help="Gaussian low-pass widths of the frequency split (mm)")
    sc.add_argument("--steps", type=int, default=1, help="Euler steps from t0 to 1")
    sc.add_argument("--samples", type=int, default=1, help="draws averaged")
    sc.add_argument("--first", type=int, default=0, help="index of the first held-out subject (0-15)")
    sc.add_argument("--subjects", type=int, default=3)
    sc.add_argument("--sources", nargs="+", default=T1W_SOURCES, choices=T1W_SOURCES)
    sc.add_argument("--heldout", type=Path, default=HELDOUT)
    pl = sub.add_parser("plot", help="the trade-off figure from OUT/results.json")
    pl.add_argument("out_dir", type=Path)
    pl.add_argument("png", type=Path, nargs="?")
    args = p.parse_args(argv)
    if args.command == "plot":
        return plot(args.out_dir, args.png or args.out_dir / "edge_share.png")
    if not args.heldout.exists():
        print(f"edge_share: {args.heldout} is missing; prepare it as real_traveling.py's docstring says",
              file=sys.stderr)
        return 2
    return score(args)


if __name__ == "__main__":
    raise SystemExit(main())
