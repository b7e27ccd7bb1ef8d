#!/usr/bin/env python
"""Plot a training run: loss and validation PSNR/SSIM (bhd vs histogram matching) against steps and wall time.

    python benchmarks/plot_training.py RUN_DIR [OUT.png]

Reads ``RUN_DIR/loss.tsv`` and ``RUN_DIR/validation.tsv`` written by ``bhd-train``; the validation curves use the
first row's (fixed) settings, and rows at other settings (the participant defaults) are drawn as a second bhd line.
"""

from __future__ import annotations

import csv
import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read_tsv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def main(run_dir: Path, out: Path) -> None:
    loss = read_tsv(run_dir / "loss.tsv")
    val = read_tsv(run_dir / "validation.tsv") if (run_dir / "validation.tsv").exists() else []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    steps = np.array([int(r["step"]) for r in loss])
    values = np.array([float(r["loss"]) for r in loss])
    k = max(len(values) // 50, 1)
    smooth = np.convolve(values, np.ones(k) / k, mode="valid")
    axes[0].plot(steps, values, color="0.8", lw=0.5)
    axes[0].plot(steps[k - 1:], smooth, color="k")
    axes[0].set(xlabel="step", ylabel="training loss", yscale="log", title="loss")
    if val:
        fixed = val[0]["settings"]  # the campaign's fixed settings; later rows may add the participant defaults
        by_step: dict[int, list[dict]] = {}
        for r in val:
            if r["settings"] == fixed:
                by_step.setdefault(int(r["step"]), []).append(r)
        vs = sorted(by_step)
        hours = [float(by_step[s][0]["wall_s"]) / 3600 for s in vs]
        defaults: dict[int, list[dict]] = {}
        for r in val:
            if r["settings"] != fixed:
                defaults.setdefault(int(r["step"]), []).append(r)
        for ax, metric in zip(axes[1:], ("psnr", "ssim")):
            for method, color in (("bhd", "tab:blue"), ("generated", "tab:cyan"), ("histmatch", "tab:red"),
                                  ("histmatch_ncc", "tab:orange"), ("source", "0.5")):
                if f"{method}_{metric}" not in val[0]:  # logs written before that control was scored
                    continue
                ys = [np.mean([float(r[f"{method}_{metric}"]) for r in by_step[s]]) for s in vs]
                ax.plot(vs, ys, "o-", color=color, label="bhd (fixed settings)" if method == "bhd" else method)
            if defaults:
                ds = sorted(defaults)
                ys = [np.mean([float(r[f"bhd_{metric}"]) for r in defaults[s]]) for s in ds]
                ax.plot(ds, ys, "s--", color="tab:green", label="bhd (participant defaults)")
            ax.set(xlabel="step", ylabel=f"validation {metric.upper()} (brain)", title=metric.upper())
            top = ax.secondary_xaxis("top", functions=(lambda x, vs=vs, h=hours: np.interp(x, vs, h),
                                                       lambda x, vs=vs, h=hours: np.interp(x, h, vs)))
            top.set_xlabel("training wall time (h)")
        axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a bhd-train run folder (loss.tsv, validation.tsv)")
    parser.add_argument("out", type=Path, nargs="?", help="the figure (default RUN_DIR/training_curve.png)")
    args = parser.parse_args()
    if not (args.run_dir / "loss.tsv").is_file():
        sys.exit(f"plot_training: {args.run_dir / 'loss.tsv'} not found; pass a bhd-train run folder")
    main(args.run_dir, args.out or args.run_dir / "training_curve.png")
