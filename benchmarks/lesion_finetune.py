#!/usr/bin/env python
"""Lesion-focused fine-tuning: does more lesion exposure stop the network lifting lesions towards white matter?

    python benchmarks/lesion_finetune.py OUT_DIR [--minutes 60] [--focus 0.5] [--lesions 4] [--threads 2] \
        [--patch-size 48 --batch-size 4] [--compact-state STATE --ema-model MODEL]

Session 4 found that the shipped model pulls simulated lesions towards white matter (its prior: 5 of its 16
training subjects have lesions, and a random 48^3 patch rarely holds one). This script continues the
shipped model's training (its compact state and EMA, or those given; the campaign's settings: lr 1e-4,
late-time fraction 0.5, clean-image prediction) on ``--subjects`` (16) target-protocol subjects that *all*
have ``--lesions`` lesions, with a share ``--focus`` of the patches placed so that they contain a lesion
voxel (simple patches; the rest are the usual 20 % multi-stride / 80 % simple draws). Running it again
resumes from OUT_DIR/checkpoint.pt.
Writes OUT_DIR/model.pt (+ card); score it against the shipped model with ``compare_models.py``.

The lesion masks come from the simulator, so this is an experiment on the training data's lesion content,
not a training option of the app (``bhd-train --lesion-every 1`` is the app's way to ask for lesion-rich
synthetic data).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from bhd_app.baselines import target_quantiles, target_spectrum
from bhd_app.target_data import synthetic_target_subject
from bhd_app.harmonize import default_model_path, save_model
from bhd_app.model import UNetConfig
from bhd_app.templates import harmonization_grid
from bhd_app.training import PatchSampler, TrainConfig, Trainer
from bhd_app.validation import lesion_masks

REPO = Path(__file__).resolve().parents[1]


class LesionFocusedSampler(PatchSampler):
    """A PatchSampler that, with probability ``focus``, cuts a simple patch around a random lesion voxel."""

    def __init__(self, images, edge_maps, lesions, patch_size, multi_stride_fraction, focus, seed=0):
        super().__init__(images, edge_maps, patch_size, multi_stride_fraction, seed)
        self.lesion_voxels = [np.argwhere(lesion) for lesion in lesions]
        self.focus = focus

    def _draw(self):
        if self.rng.random() >= self.focus:
            return super()._draw()
        volume = int(self.rng.integers(len(self.volumes)))
        voxels = self.lesion_voxels[volume]
        centre = voxels[self.rng.integers(len(voxels))]
        sl = []
        for c, size in zip(centre, self.shape):  # the lesion voxel anywhere inside the patch
            start = int(np.clip(c - self.rng.integers(self.patch_size), 0, size - self.patch_size))
            sl.append(slice(start, start + self.patch_size))
        flips = [d + 1 for d in range(3) if self.rng.random() < 0.5]
        return volume, tuple(sl), flips


def lesion_rich_data(n: int, lesions: int):
    images, masks, edges, lesion_cores = [], [], [], []
    grid = harmonization_grid()
    for k in range(n):
        image, mask, edge_map, anatomy = synthetic_target_subject(k, lesions)
        images.append(image)
        masks.append(mask)
        edges.append(edge_map)
        lesion_cores.append(lesion_masks(anatomy, grid)[0])
        print(f"rendered subject {k + 1}/{n}: {int(lesion_cores[-1].sum())} lesion voxels", file=sys.stderr)
    return images, masks, edges, lesion_cores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--minutes", type=float, default=60.0, help="training time in this call")
    p.add_argument("--focus", type=float, default=0.5, help="share of patches placed on a lesion")
    p.add_argument("--lesions", type=int, default=4, help="lesions per training subject")
    p.add_argument("--subjects", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--patch-size", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--compact-state", type=Path, default=REPO / "training" / "default-w16" / "compact_state.pt",
                   help="training state to start from (default: the shipped model's)")
    p.add_argument("--ema-model", type=Path, default=None,
                   help="model file holding that state's EMA weights (default: the shipped model)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    cache = args.out_dir / "data.npz"
    if cache.exists():
        blob = np.load(cache)
        data = [[blob[f"{name}{k}"] for k in range(args.subjects)] for name in ("image", "mask", "edge", "lesion")]
    else:
        data = lesion_rich_data(args.subjects, args.lesions)
        np.savez(cache, **{f"{name}{k}": a for name, arrays in zip(("image", "mask", "edge", "lesion"), data)
                           for k, a in enumerate(arrays)})
    images, masks, edges, lesions = data
    config = TrainConfig(patch_size=args.patch_size, batch_size=args.batch_size, learning_rate=1e-4,
                         late_time_fraction=0.5, parameterization="image", checkpoint_every_s=300,
                         unet=UNetConfig(base_width=16))
    sampler = LesionFocusedSampler(images, edges, lesions, config.patch_size, config.multi_stride_fraction,
                                   args.focus)
    trainer = Trainer(config, sampler, args.out_dir, torch.device("cpu"), compile=args.compile)
    compact = args.compact_state
    if trainer.step == 0:
        ema_model = args.ema_model or default_model_path()
        ema = {k: v.float() for k, v in torch.load(ema_model, weights_only=True)["state_dict"].items()}
        trainer.load_compact_state(compact, ema)
    start = torch.load(compact, weights_only=True)["step"]
    trainer.train(time_budget_s=args.minutes * 60)
    card = {"training": config.to_dict(), "steps": trainer.step, "wall_time_s": round(trainer.wall, 1),
            "lesion_finetune": {"from_step": start, "focus": args.focus, "lesions": args.lesions}}
    card = save_model(args.out_dir / "model.pt", trainer.ema, config.parameterization,
                      target_quantiles(images, masks), card, target_spectrum(images))
    print(f"step {trainer.step}; wrote {args.out_dir / 'model.pt'} (sha256 {card['sha256'][:12]}...)")


if __name__ == "__main__":
    main()
