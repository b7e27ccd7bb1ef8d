#!/usr/bin/env python
"""Speed and memory of the model: whole-volume harmonization and training throughput.

    python benchmarks/bench_model.py [--model PATH] [--device auto] [--width W]

Reports, on one simulated subject on the 128 x 160 x 136 grid:
* edge map time, edge-to-image sampling time at the participant level's default
  settings, refinement time, total harmonization wall time;
* peak memory of whole-volume inference (CPU: max RSS of this process; CUDA: max allocated);
* training throughput (patches per second) at the model's training configuration.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch

from bhd_app.config import T1W
from bhd_app.evaluation.simulation import PROTOCOLS, make_anatomy, render_on_grid
from bhd_app.method.baselines import histogram_matching
from bhd_app.method.edges import canny_edges
from bhd_app.method.harmonize import generate
from bhd_app.method.model import UNetConfig
from bhd_app.method.refinement import refine
from bhd_app.modelfile import load_model, select_device
from bhd_app.training.patches import PatchSampler
from bhd_app.training.trainer import TrainConfig, Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=T1W.steps)
    p.add_argument("--solver", default=T1W.solver)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--width", type=int, help="benchmark an untrained network of this width instead")
    args = p.parse_args()
    device = select_device(args.device)
    model = load_model(args.model, device)
    if args.width:
        from bhd_app.method.model import EdgeToImageUNet

        model.net = EdgeToImageUNet(UNetConfig(base_width=args.width)).to(device).eval()
        if device.type == "cpu":
            model.net = model.net.to(memory_format=torch.channels_last_3d)
    anatomy = make_anatomy(2001)
    source, mask = render_on_grid(anatomy, PROTOCOLS["sonata15t"], 1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    edge_map, _ = canny_edges(source)
    t1 = time.perf_counter()
    start = histogram_matching(source, mask, model.target_quantiles)
    generated = generate(model, edge_map, steps=args.steps, solver=args.solver, start_time=T1W.start_time,
                         start_image=start)
    t2 = time.perf_counter()
    refine(generated, source, mask, T1W.refinement, T1W.refine_step, T1W.refine_iterations, T1W.refine_region,
           T1W.refine_step_rule)
    t3 = time.perf_counter()
    peak = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)

    cfg = TrainConfig.from_dict(model.card["training"]) if "training" in model.card else TrainConfig()
    cfg.unet = model.net.config
    cfg.checkpoint_every_s = 1e9
    sampler = PatchSampler([source], [edge_map], cfg.patch_size, cfg.multi_stride_fraction)
    import tempfile

    trainer = Trainer(cfg, sampler, tempfile.mkdtemp(), device)
    trainer.train(steps=2, progress=False)
    tt = time.perf_counter()
    trainer.train(steps=2 + args.train_steps, progress=False)
    per_step = (time.perf_counter() - tt) / args.train_steps

    result = {
        "device": str(device), "cpu_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "unet_width": model.net.config.base_width, "solver": args.solver, "solver_steps": args.steps, "start_time": T1W.start_time,
        "edge_map_s": round(t1 - t0, 2), "sampling_s": round(t2 - t1, 2), "refinement_s": round(t3 - t2, 2),
        "harmonization_total_s": round(t3 - t0, 2), "peak_memory_GiB": round(peak, 2),
        "train_patch_size": cfg.patch_size, "train_batch": cfg.batch_size,
        "train_s_per_step": round(per_step, 2), "train_patches_per_s": round(cfg.batch_size / per_step, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
