#!/usr/bin/env python
"""Speed and memory of the model: whole-volume harmonization and training throughput.

    python benchmarks/bench_model.py [--model NAME_OR_PATH] [--device auto] [--width W]

Reports, on one simulated subject on the 128 x 160 x 136 harmonization grid, at the participant level's
T1w defaults (``config.preset("T1w")``) and with the model's own grid (a coarse-grid model draws on its grid):
* the stages of ``harmonize`` at those settings: the edge map, the start images (histogram matching, and
  the NCC step where ``start_from`` is ``refined``), the edge-to-image draws and the refinement (``combine``),
  and their total;
* the T2w preset's contrast conversion (``harmonize`` as the participant level calls it), whole;
* peak memory of whole-volume inference (CPU: max RSS of this process; CUDA: max allocated);
* training throughput (patches per second) at the model's training configuration, on its grid.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch

from bhd_app.config import model_path, preset
from bhd_app.evaluation.simulation import PROTOCOLS, make_anatomy, render_on_grid
from bhd_app.method.edges import canny_edges
from bhd_app.method.harmonize import combine, draw, harmonize, model_grid, start_images
from bhd_app.method.model import UNetConfig
from bhd_app.modelfile import load_model, select_device
from bhd_app.training.patches import PatchSampler
from bhd_app.training.trainer import TrainConfig, Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=model_path, default=None, help="a shipped model's name or a model file")
    p.add_argument("--device", default="auto")
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
    t1w = preset("T1w")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    grid_source, _ = model_grid(model, source, mask)
    edge_map, _ = canny_edges(grid_source)
    t1 = time.perf_counter()
    images = start_images(model, source, mask, t1w)
    t2 = time.perf_counter()
    generated, _ = draw(model, edge_map, images["start"], mask, t1w)
    t3 = time.perf_counter()
    combine(model, generated, images[t1w.refine_reference], mask, t1w)
    t4 = time.perf_counter()
    harmonize(model, source, mask, preset("T2w"))
    t5 = time.perf_counter()
    peak = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)

    cfg = TrainConfig.from_dict(model.card["training"]) if "training" in model.card else TrainConfig()
    cfg.unet = model.net.config
    cfg.checkpoint_every_s = 1e9
    sampler = PatchSampler([grid_source], [edge_map], cfg.patch_size, cfg.multi_stride_fraction)
    import tempfile

    trainer = Trainer(cfg, sampler, tempfile.mkdtemp(), device)
    trainer.train(steps=2, progress=False)
    tt = time.perf_counter()
    trainer.train(steps=2 + args.train_steps, progress=False)
    per_step = (time.perf_counter() - tt) / args.train_steps

    result = {
        "device": str(device), "cpu_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "model": model.path.name, "unet_width": model.net.config.base_width, "grid_factor": model.grid_factor,
        "grid": list(grid_source.shape), "t1w_settings": t1w.to_dict(),
        "edge_map_s": round(t1 - t0, 2), "start_s": round(t2 - t1, 2), "sampling_s": round(t3 - t2, 2),
        "refinement_s": round(t4 - t3, 2), "t1w_total_s": round(t4 - t0, 2), "t2w_conversion_s": round(t5 - t4, 2),
        "peak_memory_GiB": round(peak, 2),
        "train_patch_size": cfg.patch_size, "train_batch": cfg.batch_size,
        "train_s_per_step": round(per_step, 2), "train_patches_per_s": round(cfg.batch_size / per_step, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
