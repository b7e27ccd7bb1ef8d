"""``bhd-train``: train the edge-to-image model on target-domain images (sections 3.3-3.4, 4.2).

Target-domain images come either from a BIDS dataset (every T1w goes through
the participant-level preprocessing first) or from the physics simulator
(``--synthetic N``: N subjects rendered by the target protocol, seeds 1000+).
Running the same command again resumes from ``RUN_DIR/checkpoint.pt``.

Several GPUs (one process each, on one or several nodes) train data-parallel under
``torchrun --nproc_per_node N -m bhd_app.cli.train ...``; ``--batch-size`` is the
global batch, split evenly over the processes, and rank 0 writes every file.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..baselines import target_quantiles, target_spectrum
from ..edges import canny_edges
from ..errors import BHDInputError
from ..harmonize import HarmonizationModel, save_model, select_device
from ..model import UNetConfig
from ..training import Distributed, PatchSampler, TrainConfig, Trainer
from .parser import harmonize_defaults

SYNTHETIC_SEED0 = 1000


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bhd-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="folder for checkpoints, logs and the exported model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bids-dir", type=Path, help="target-domain BIDS dataset (its T1w images)")
    src.add_argument("--synthetic", type=int, metavar="N", help="render N simulated target-domain subjects")
    p.add_argument("--participant-label", nargs="+", help="with --bids-dir: train on these subjects only")
    p.add_argument("--lesion-every", type=int, default=3, help="--synthetic: every k-th subject has WM lesions")
    p.add_argument("--width", type=int, default=16, help="U-Net base width (paper: 64)")
    p.add_argument("--patch-size", type=int, default=48, help="cubic patch size (paper: 64)")
    p.add_argument("--batch-size", type=int, default=4,
                   help="global batch, split over the processes under torchrun (paper: 8)")
    p.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (paper: 5e-5)")
    p.add_argument("--multi-stride-fraction", type=float, default=0.2)
    p.add_argument("--late-time-fraction", type=float, default=0.0,
                   help="share of training times drawn from U(0.5, 1) instead of U(0, 1) (paper: 0)")
    p.add_argument("--parameterization", choices=("velocity", "image"), default="image")
    p.add_argument("--steps", type=int, default=150_000, help="total steps (resume counts those done)")
    p.add_argument("--time-budget", type=float, help="stop after this many minutes in this call")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--validate-minutes", type=float, default=20.0,
                   help="score the EMA model on validation subjects at most this often (0: never)")
    p.add_argument("--export", type=Path, help="write the EMA model here (.pt + .json card) at the end")
    p.add_argument("--compact-state", type=Path,
                   help="small resume file (weights, EMA, step; no optimizer) kept between sessions: training "
                        "starts from it when RUN_DIR has no checkpoint, and it is rewritten at the end")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network for training (slightly faster steps after minutes of compiling)")
    p.add_argument("--seed", type=int, default=0)
    return p


def synthetic_target_subject(k: int, lesions: int):
    """Synthetic training subject ``k`` rendered by the target protocol: (image, brain mask, edge map, anatomy)."""
    from ..simulation import PROTOCOLS, TARGET_PROTOCOL, make_anatomy, render_on_grid

    seed = SYNTHETIC_SEED0 + k
    anatomy = make_anatomy(seed, lesions=lesions)
    image, mask = render_on_grid(anatomy, PROTOCOLS[TARGET_PROTOCOL], seed)
    return image, mask, canny_edges(image)[0], anatomy


def synthetic_target_data(n: int, lesion_every: int) -> tuple[list, list, list, dict]:
    from ..simulation import TARGET_PROTOCOL

    images, masks, edges = [], [], []
    for k in range(n):
        lesions = 3 if lesion_every and k % lesion_every == lesion_every - 1 else 0
        image, mask, edge_map, _ = synthetic_target_subject(k, lesions)
        images.append(image)
        masks.append(mask)
        edges.append(edge_map)
        print(f"rendered synthetic subject {k + 1}/{n}", file=sys.stderr)
    desc = {"source": "synthetic", "protocol": TARGET_PROTOCOL, "subjects": n,
            "seeds": [SYNTHETIC_SEED0, SYNTHETIC_SEED0 + n - 1],
            "description": "physics-rendered MNI152 2009a anatomy (bhd_app.simulation), target protocol "
                           "modelled on a Siemens TIM Trio 3T MPRAGE (paper Table S1)"}
    return images, masks, edges, desc


def bids_target_data(bids_dir: Path, labels, work_dir: Path) -> tuple[list, list, list, dict]:
    from ..bids import collect_jobs, load_layout
    from ..preprocessing import preprocess

    jobs = collect_jobs(load_layout(bids_dir), participant_labels=labels)
    if len(jobs) < 2:
        raise BHDInputError(f"{bids_dir}: {len(jobs)} T1w image selected; a target domain needs two or more to "
                            "train on; add images or select more participants")
    images, masks, edges = [], [], []
    for job in jobs:
        pre = preprocess(job.path, work_dir / job.name)
        images.append(pre.image)
        masks.append(pre.brain_mask)
        edges.append(canny_edges(pre.image)[0])
    desc = {"source": "bids", "dataset": str(bids_dir), "images": [str(j.path) for j in jobs]}
    return images, masks, edges, desc


def load_or_make_data(args) -> tuple[list, list, list, dict]:
    """Target-domain data, cached in the run dir so that resuming skips rendering/preprocessing."""
    cache = args.run_dir / "data.npz"
    if cache.exists():
        blob = np.load(cache, allow_pickle=False)
        n = int(blob["n"])
        desc = json.loads(str(blob["desc"]))
        return ([blob[f"image{k}"] for k in range(n)], [blob[f"mask{k}"] for k in range(n)],
                [blob[f"edge{k}"] for k in range(n)], desc)
    if args.synthetic:
        data = synthetic_target_data(args.synthetic, args.lesion_every)
    else:
        data = bids_target_data(args.bids_dir, args.participant_label, args.run_dir / "preproc")
    images, masks, edges, desc = data
    arrays = {"n": len(images), "desc": json.dumps(desc)}
    for k in range(len(images)):
        arrays.update({f"image{k}": images[k].astype(np.float32), f"mask{k}": masks[k], f"edge{k}": edges[k]})
    tmp = cache.with_name(cache.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, cache)  # other ranks wait for this file
    return data


def wait_for(path: Path, poll_s: float = 2.0) -> None:
    """Block until ``path`` exists (torchrun ends this process if rank 0 fails meanwhile)."""
    while not path.exists():
        time.sleep(poll_s)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dist = Distributed.from_env()
    try:
        if args.batch_size % dist.world_size:
            raise BHDInputError(f"--batch-size {args.batch_size} is the global batch: it must be a multiple of "
                                f"the {dist.world_size} torchrun processes")
        device = select_device(args.device)
    except BHDInputError as err:
        print(f"bhd-train: error: {err}", file=sys.stderr)
        return 2
    if dist.active:
        device = dist.start(device)
    try:
        return train(args, dist, device)
    finally:
        if dist.active:
            torch.distributed.destroy_process_group()


def train(args: argparse.Namespace, dist: Distributed, device: torch.device) -> int:
    """Prepare the data (rank 0; the other ranks read its cache), train, and export (rank 0)."""
    try:
        try:
            args.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BHDInputError(f"{args.run_dir}: cannot create the run folder ({err.strerror}); choose a "
                                "writable folder") from None
        if not dist.is_main:
            wait_for(args.run_dir / "data.npz")
        images, masks, edges, data_desc = load_or_make_data(args)
    except BHDInputError as err:
        print(f"bhd-train: error: {err}", file=sys.stderr)
        return 2
    config = TrainConfig(patch_size=args.patch_size, batch_size=args.batch_size, learning_rate=args.lr,
                         steps=args.steps, multi_stride_fraction=args.multi_stride_fraction,
                         parameterization=args.parameterization, late_time_fraction=args.late_time_fraction,
                         seed=args.seed,
                         checkpoint_every_s=args.checkpoint_minutes * 60, unet=UNetConfig(base_width=args.width))
    sampler = PatchSampler(images, edges, config.patch_size, config.multi_stride_fraction, seed=args.seed)
    trainer = Trainer(config, sampler, args.run_dir, device, dist, compile=args.compile)
    if trainer.step == 0 and args.compact_state and args.compact_state.exists():
        ema = None
        if args.export and args.export.exists():  # the exported model holds the EMA weights
            ema = {k: v.float() for k, v in torch.load(args.export, weights_only=True)["state_dict"].items()}
        trainer.load_compact_state(args.compact_state, ema)
        if dist.is_main:
            print(f"starting from {args.compact_state} at step {trainer.step}", file=sys.stderr)
    quantiles = target_quantiles(images, masks)
    validator = None
    if args.validate_minutes and dist.is_main:
        validator = Validator(args.run_dir, quantiles, args.validate_minutes * 60)
    trainer.train(time_budget_s=args.time_budget * 60 if args.time_budget else None, on_checkpoint=validator)
    if not dist.is_main:
        return 0
    if args.compact_state:
        trainer.save_compact_state(args.compact_state)
    if args.export:
        recipe = {k: v for k, v in config.to_dict().items() if k != "steps"}  # a stop step, not steps trained
        card = {"bhd_version": __version__, "training": recipe, "training_data": data_desc,
                "steps": trainer.step, "wall_time_s": round(trainer.wall, 1),
                "final_loss": _recent_loss(args.run_dir / "loss.tsv")}
        card = {**_curated_card_fields(args.export), **card}
        card = save_model(args.export, trainer.ema, config.parameterization, quantiles, card,
                          target_spectrum(images))
        print(f"exported {args.export} (sha256 {card['sha256'][:12]}...)")
    return 0


CURATED_CARD_FIELDS = ("target_domain", "width_choice", "defaults", "validation", "status", "reproduce")


def _curated_card_fields(model_path: Path) -> dict:
    """Hand-written fields of an existing model card (target domain, chosen defaults, status) to keep on export.

    ``validation`` and ``status`` describe the model at the step they name; re-measure after training.
    """
    card_path = model_path.with_suffix(".json")
    if not card_path.exists():
        return {}
    old = json.loads(card_path.read_text())
    return {k: old[k] for k in CURATED_CARD_FIELDS if k in old}


def _recent_loss(log: Path, n: int = 200) -> float:
    with open(log) as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f, delimiter="\t")]
    return round(float(np.mean(losses[-n:])), 5)


class Validator:
    """Scores the EMA network on validation traveling subjects, at most every ``every_s`` seconds.

    Two rows per subject and checkpoint: the fixed settings the curve has used since step 1 (comparable over
    the whole campaign) and the participant level's current T1w defaults.
    """

    FIXED_SETTINGS = {"start_time": 0.5, "steps": 2, "refinement": "ncc"}

    def __init__(self, run_dir: Path, quantiles: np.ndarray, every_s: float, subjects: list | None = None):
        from ..validation import traveling_subjects

        self.log = run_dir / "validation.tsv"
        self.quantiles = quantiles
        self.every_s = every_s
        self.last = -float("inf")
        self.subjects = traveling_subjects() if subjects is None else subjects
        self.settings = [self.FIXED_SETTINGS, harmonize_defaults()]

    def __call__(self, trainer: Trainer) -> None:
        from ..validation import validate

        if time.monotonic() - self.last < self.every_s:
            return
        self.last = time.monotonic()
        model = HarmonizationModel(trainer.ema, trainer.config.parameterization, self.quantiles, {}, Path("ema"),
                                   "", trainer.device)
        for settings in self.settings:
            rows = validate(model, self.subjects, **settings)
            new = not self.log.exists()
            with open(self.log, "a") as f:
                if new:
                    f.write("\t".join(["step", "wall_s", "settings"] + list(rows[0])) + "\n")
                for row in rows:
                    values = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()]
                    f.write("\t".join([str(trainer.step), f"{trainer.wall:.0f}", json.dumps(settings)] + values)
                            + "\n")
            mean = {k: np.mean([r[k] for r in rows])
                    for k in ("histmatch_ssim", "bhd_ssim", "histmatch_psnr", "bhd_psnr")}
            print(f"\nvalidation step {trainer.step} {json.dumps(settings)}: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
