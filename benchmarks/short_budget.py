#!/usr/bin/env python
"""Short-budget training comparisons at the same wall time (issue 9): which change is worth hours of CPU?

    python benchmarks/short_budget.py OUT_DIR [--minutes 20] [--parallel 2] [--seed 0] [--variants baseline ...]

Every variant trains from scratch for ``--minutes`` of wall time with the same seed and the same 16 synthetic
target-domain subjects (rendered once into OUT_DIR/data.npz; copy it into another OUT_DIR to repeat a
comparison with another ``--seed``), one CPU thread each and ``torch.compile``,
``--parallel`` runs at a time (keep the machine's load the same for every run), and is then scored on the
validation subjects (seeds 3001-3002, never trained on):

* reconstruction: the target render regenerated from its own edge map from pure noise (t0 = 0, as Table S4);
* harmonization: the Sonata 1.5T render harmonized at t0 = 0.5, 2 midpoint steps, NCC towards the source.

A run folder that already holds its model is scored without retraining, so a stopped comparison resumes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np

from bhd_app.cli.train import load_or_make_data
from bhd_app.harmonize import harmonize, load_model
from bhd_app.validation import reconstruction_score, score, traveling_subjects

BASE = ["--synthetic", "16", "--width", "16", "--patch-size", "48", "--batch-size", "4", "--lr", "2e-4",
        "--multi-stride-fraction", "0.2", "--parameterization", "image", "--late-time-fraction", "0", "--compile"]
VARIANTS = {  # changes to BASE (later flags win in argparse)
    "baseline": [],
    "velocity": ["--parameterization", "velocity"],
    "lr1e-4": ["--lr", "1e-4"],
    "width24": ["--width", "24"],
    "patch64-batch2": ["--patch-size", "64", "--batch-size", "2"],
    "patch32-batch8": ["--patch-size", "32", "--batch-size", "8"],
    "late-time0.5": ["--late-time-fraction", "0.5"],
    "multi-stride0.5": ["--multi-stride-fraction", "0.5"],
}


def start_training(out_dir: Path, name: str, minutes: float, seed: int = 0) -> subprocess.Popen | None:
    run = out_dir / name
    if (run / "model.pt").exists():
        return None
    run.mkdir(parents=True, exist_ok=True)
    if not (run / "data.npz").exists():
        shutil.copy(out_dir / "data.npz", run / "data.npz")
    cmd = ["bhd-train", str(run), *BASE, *VARIANTS[name], "--time-budget", str(minutes), "--steps", "1000000",
           "--validate-minutes", "0", "--seed", str(seed), "--threads", "1", "--export", str(run / "model.pt")]
    return subprocess.Popen(cmd, stdout=open(run / "train.log", "w"), stderr=subprocess.STDOUT)


def evaluate(model_path: Path) -> dict:
    model = load_model(model_path)
    recon, harm = [], []
    for subj in traveling_subjects(sources=("sonata15t",)):
        recon.append(reconstruction_score(model, subj))
        result = harmonize(model, subj.source, subj.mask, start_time=0.5, steps=2, refinement="ncc", seed=0)
        harm.append(score(result["harmonized"], subj))
    r, h = np.mean(recon, axis=0), np.mean(harm, axis=0)
    return {"steps": model.card["steps"], "training_s": model.card["wall_time_s"],
            "s_per_step": round(model.card["wall_time_s"] / max(model.card["steps"], 1), 2),
            "final_loss": model.card.get("final_loss"),
            "reconstruction_psnr": round(r[0], 2), "reconstruction_ssim": round(r[1], 3),
            "harmonization_psnr": round(h[0], 2), "harmonization_ssim": round(h[1], 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--minutes", type=float, default=20)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seed", type=int, default=0, help="training seed (weights, patches, noise) of every variant")
    args = p.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if not (args.out_dir / "data.npz").exists():  # the training command's own renderer and cache format
        load_or_make_data(argparse.Namespace(run_dir=args.out_dir, synthetic=16, lesion_every=3))
    for k in range(0, len(args.variants), args.parallel):
        batch = args.variants[k:k + args.parallel]
        runs = [start_training(args.out_dir, name, args.minutes, args.seed) for name in batch]
        for run in runs:
            if run and run.wait():
                raise SystemExit(f"training failed: {run.args}")
    results_file = args.out_dir / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    for name in args.variants:
        if name not in results:
            results[name] = evaluate(args.out_dir / name / "model.pt")
            results_file.write_text(json.dumps(results, indent=1))
            print(name, results[name], flush=True)
    print(f"| variant ({args.minutes:g} min, 1 thread each, {args.parallel} at a time) | steps | s/step | "
          "reconstruction PSNR / SSIM | harmonization (t0 0.5) PSNR / SSIM |\n|---|---|---|---|---|")
    for name in args.variants:
        r = results[name]
        print(f"| {name} | {r['steps']} | {r['s_per_step']} | {r['reconstruction_psnr']:.2f} / "
              f"{r['reconstruction_ssim']:.3f} | {r['harmonization_psnr']:.2f} / {r['harmonization_ssim']:.3f} |")


if __name__ == "__main__":
    main()
