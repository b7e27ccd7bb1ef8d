#!/usr/bin/env python
"""Multi-stride vs simple patches at the same training budget (Table S4, section 3.4 / S4.1).

    python benchmarks/patch_ablation.py OUT_DIR [--steps 1000] [--threads 1] [--data training/default-w16/data.npz]

Trains two edge-to-image models from scratch with the same seed, data (the default model's 16 synthetic
target-domain subjects), width, patch size, batch and number of steps (a multi-stride patch costs the same as
a simple one, so this is also the same compute), one with 20% multi-stride patches
(the paper's split) and one with simple patches only, then scores each as the paper does in S4.1: every
validation subject's target-protocol render (seeds 3001-3002, never trained on) is reconstructed from its own
edge map, starting from pure noise (t0 = 0, 2 midpoint steps, seed 0), and compared with the render inside the
brain (PSNR, SSIM). A run folder that already holds its model is scored without retraining.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np

from bhd_app.modelfile import load_model
from bhd_app.training.validation import reconstruction_score, traveling_subjects

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"multi-stride (20%)": 0.2, "simple patches only": 0.0}


def train(run_dir: Path, fraction: float, args: argparse.Namespace) -> Path:
    model = run_dir / "model.pt"
    if model.exists():
        return model
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.data.exists() and not (run_dir / "data.npz").exists():
        shutil.copy(args.data, run_dir / "data.npz")  # same rendered subjects, no re-rendering
    subprocess.run(["bhd-train", str(run_dir), "--synthetic", "16", "--width", str(args.width),
                    "--patch-size", str(args.patch_size), "--batch-size", "4", "--lr", "2e-4",
                    "--multi-stride-fraction", str(fraction), "--parameterization", "image",
                    "--steps", str(args.steps), "--validate-minutes", "0", "--seed", "0",
                    "--threads", str(args.threads), "--export", str(model)], check=True)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--patch-size", type=int, default=32)
    p.add_argument("--data", type=Path, default=REPO / "training/default-w16/data.npz")
    args = p.parse_args()
    subjects = [s for s in traveling_subjects(sources=("sonata15t",))]  # one per seed: the target render
    rows = []
    for name, fraction in VARIANTS.items():
        model = load_model(train(args.out_dir / f"msf{fraction}", fraction, args))
        for subj in subjects:
            psnr_db, ssim_value, _ = reconstruction_score(model, subj)
            rows.append({"variant": name, "seed": subj.seed, "steps": model.card["steps"],
                         "training_s": model.card["wall_time_s"],
                         "psnr": round(psnr_db, 3), "ssim": round(ssim_value, 4)})
            print(json.dumps(rows[-1]), flush=True)
    (args.out_dir / "results.json").write_text(json.dumps(rows, indent=1))
    print("| patches | training steps | training wall time (s) | PSNR (dB) | SSIM |\n|---|---|---|---|---|")
    for name in VARIANTS:
        rs = [r for r in rows if r["variant"] == name]
        print(f"| {name} | {rs[0]['steps']} | {rs[0]['training_s']:.0f} | {np.mean([r['psnr'] for r in rs]):.2f} | "
              f"{np.mean([r['ssim'] for r in rs]):.3f} |")


if __name__ == "__main__":
    main()
