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
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..config import (DEFAULT_TRAINING_RECIPE, DEVICE, DEVICES, PARAMETERIZATIONS, TRAINING, TRAINING_RECIPES,
                      TrainingSettings)
from ..errors import BHDInputError
from ..method.baselines import target_quantiles
from ..method.model import UNetConfig
from ..modelfile import load_model, select_device
from ..pipeline.bids import normalize_label
from .parser import OneLineErrorParser
from ..training.data import bids_target_data, load_cache, on_model_grid, save_cache, synthetic_target_data
from ..training.export import export_model
from ..training.patches import PatchSampler
from ..training.trainer import Distributed, TrainConfig, Trainer
from ..training.validation import Validator, altered_subjects


# The options that set a field of config.TrainingSettings of the same name (--lr: learning_rate); --checkpoint-minutes
# sets checkpoint_every_s.
RECIPE_OPTIONS = ("width", "patch_size", "batch_size", "learning_rate", "steps", "multi_stride_fraction",
                  "parameterization", "late_time_fraction", "altered_start_fraction", "grid_factor", "seed")


def _by_recipe(name: str, show=lambda value: f"{value:g}" if isinstance(value, float) else str(value)) -> str:
    """Help text: a TrainingSettings field's value in each recipe."""
    return " [" + ", ".join(f"{recipe}: {show(getattr(s, name))}" for recipe, s in TRAINING_RECIPES.items()) + "]"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="bhd-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="folder for checkpoints, logs and the exported model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bids-dir", type=Path, help="target-domain BIDS dataset (its T1w images)")
    src.add_argument("--synthetic", type=int, metavar="N", help="render N simulated target-domain subjects")
    p.add_argument("--participant-label", nargs="+",
                   help="with --bids-dir: train on these subjects only (default: all but --validation-label)")
    p.add_argument("--validation-label", nargs="+", metavar="SUB",
                   help="with --bids-dir: held-out subjects of the target dataset, never trained on; each is altered "
                        "by known scanner-like changes and harmonized back at the participant defaults every "
                        "--validate-minutes (RUN_DIR/validation.tsv). Without them a BIDS target is not validated")
    p.add_argument("--lesion-every", type=int, default=3, help="--synthetic: every k-th subject has WM lesions")
    p.add_argument("--recipe", choices=tuple(TRAINING_RECIPES), default=DEFAULT_TRAINING_RECIPE,
                   help="the settings below, as a whole (config.TRAINING_RECIPES): cpu, a CPU recipe; paper, the "
                        "paper's configuration (section 4.2), for a GPU; fine-tune, the shipped IXI-HH models' "
                        "fine-tune of a trained model (--init-from); an option given below wins (default: "
                        f"{DEFAULT_TRAINING_RECIPE})")
    g = p.add_argument_group("the recipe's settings (default: the --recipe's value, given in brackets per recipe)")
    g.add_argument("--width", type=int, help="U-Net base width" + _by_recipe("width"))
    g.add_argument("--patch-size", type=int, help="cubic patch size" + _by_recipe("patch_size"))
    g.add_argument("--batch-size", type=int,
                   help="global batch, split over the processes under torchrun" + _by_recipe("batch_size"))
    g.add_argument("--lr", type=float, dest="learning_rate",
                   help="Adam learning rate" + _by_recipe("learning_rate"))
    g.add_argument("--multi-stride-fraction", type=float,
                   help="share of multi-stride patches (section 3.4)" + _by_recipe("multi_stride_fraction"))
    g.add_argument("--late-time-fraction", type=float,
                   help="share of training times drawn from U(0.5, 1) instead of U(0, 1)"
                        + _by_recipe("late_time_fraction"))
    g.add_argument("--altered-start-fraction", type=float,
                   help="share of patches whose path starts from a copy with random scanner-like changes, "
                        "histogram-matched back, at t ~ U(%g, %g), as the T1w sampler's start is the source "
                        "(image parameterization)" % TRAINING.altered_start_times + _by_recipe("altered_start_fraction"))
    g.add_argument("--parameterization", choices=PARAMETERIZATIONS,
                   help="what the network predicts" + _by_recipe("parameterization"))
    g.add_argument("--grid-factor", type=int, choices=(1, 2),
                   help="train and draw on the harmonization grid (1) or one twice as coarse (2: 2.4 mm, 8x the "
                        "anatomy in a patch; T1w keeps the draw's low frequencies)" + _by_recipe("grid_factor"))
    g.add_argument("--steps", type=int, help="total steps (resume counts those done)" + _by_recipe("steps"))
    g.add_argument("--checkpoint-minutes", type=float,
                   help="minutes between checkpoints"
                        + _by_recipe("checkpoint_every_s", lambda s: f"{s / 60:g}"))
    g.add_argument("--seed", type=int, help="random seed" + _by_recipe("seed"))
    p.add_argument("--time-budget", type=float, help="stop after this many minutes in this call")
    p.add_argument("--validate-minutes", type=float, default=20.0,
                   help="score the EMA model on validation subjects at most this often (0: never): simulated "
                        "traveling subjects with --synthetic, the --validation-label subjects with --bids-dir")
    p.add_argument("--export", type=Path, help="write the EMA model here (.pt + .json card) at the end")
    p.add_argument("--compact-state", type=Path,
                   help="small resume file (weights, EMA, step; no optimizer) kept between sessions: training "
                        "starts from it when RUN_DIR has no checkpoint, and it is rewritten at the end")
    p.add_argument("--init-from", type=Path, metavar="MODEL",
                   help="start a new run from the weights of a trained model (e.g. the shipped one) and fine-tune "
                        "it on this target domain; --width must match the model's")
    p.add_argument("--device", choices=DEVICES, default=DEVICE)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network for training (slightly faster steps after minutes of compiling)")
    p.add_argument("--nprocs", type=int, default=1, help="--bids-dir: images preprocessed in parallel")
    p.add_argument("--prepare-only", action="store_true",
                   help="preprocess (or render) the target data into RUN_DIR/data.npz and stop")
    p.add_argument("--mixed-precision", action="store_true", help="bfloat16 autocast on CUDA (faster on a GPU)")
    return p


def training_settings(args: argparse.Namespace) -> TrainingSettings:
    """The training settings the command line gives: the ``--recipe``'s (``config.TRAINING_RECIPES``), with every
    option given."""
    given = {name: getattr(args, name) for name in RECIPE_OPTIONS if getattr(args, name) is not None}
    if args.checkpoint_minutes is not None:
        given["checkpoint_every_s"] = args.checkpoint_minutes * 60
    return replace(TRAINING_RECIPES[args.recipe], **given)


def load_or_make_data(args) -> tuple[list, list, list, dict]:
    """Target-domain data, cached in the run dir (``training.data.save_cache``) so that resuming skips
    rendering and preprocessing, and a run prepared on one machine can train on another."""
    cache = args.run_dir / "data.npz"
    if cache.exists():
        data = load_cache(cache)
        held_out = {f"sub-{normalize_label(label, 'sub')}" for label in args.validation_label or ()}
        leaked = sorted({name.split("_")[0] for name in data[3].get("images", [])} & held_out)
        if leaked:
            raise BHDInputError(f"{cache}: holds the validation subject(s) {' '.join(leaked)}, so they would be "
                                "trained on; use a new RUN_DIR or other --validation-label subjects")
        return data
    if args.synthetic:
        data = synthetic_target_data(args.synthetic, args.lesion_every)
    else:
        data = bids_target_data(args.bids_dir, args.participant_label, args.run_dir / "preproc", args.nprocs,
                                exclude=args.validation_label or ())
    save_cache(cache, *data)  # other ranks wait for this file
    return load_cache(cache)  # the 8-bit images that resuming will see


def load_or_make_validation_data(args) -> tuple[list, list] | None:
    """The --validation-label subjects' images and brain masks, preprocessed once into RUN_DIR/validation.npz
    (None without --validation-label)."""
    if not args.validation_label:
        return None
    cache = args.run_dir / "validation.npz"
    if not cache.exists():
        save_cache(cache, *bids_target_data(args.bids_dir, args.validation_label, args.run_dir / "preproc",
                                            args.nprocs, minimum=1))
    images, masks, _, _ = load_cache(cache)
    return images, masks


def check_labels(args) -> None:
    """BHDInputError for --validation-label without a BIDS target or shared with --participant-label."""
    if not args.validation_label:
        return
    if not args.bids_dir:
        raise BHDInputError("--validation-label needs --bids-dir (a simulated target is validated on simulated "
                            "traveling subjects)")
    shared = ({normalize_label(label, "sub") for label in args.participant_label or ()}
              & {normalize_label(label, "sub") for label in args.validation_label})
    if shared:
        raise BHDInputError(f"--validation-label {' '.join(sorted(shared))}: also in --participant-label; "
                            "validation subjects must be held out from training")


def load_weights(path: Path, unet: UNetConfig) -> dict:
    """The network weights of a model file (its sha256 checked against its card), as float32 tensors."""
    model = load_model(path, "cpu")
    if model.net.config != unet:
        raise BHDInputError(f"{path}: --init-from needs a network like this run's; the model has width "
                            f"{model.net.config.base_width}: pass --width {model.net.config.base_width}")
    return {k: v.float().contiguous() for k, v in model.net.state_dict().items()}


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
        settings = training_settings(args)
        if settings.batch_size % dist.world_size:
            raise BHDInputError(f"--batch-size {settings.batch_size} is the global batch: it must be a multiple of "
                                f"the {dist.world_size} torchrun processes")
        check_labels(args)
        if settings.altered_start_fraction > 0 and settings.parameterization != "image":
            raise BHDInputError("--altered-start-fraction needs --parameterization image (the loss asks for the "
                                "unchanged image)")
        device = select_device(args.device)
    except BHDInputError as err:
        print(f"bhd-train: error: {err}", file=sys.stderr)
        return 2
    if dist.active:
        device = dist.start(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch shapes: let cuDNN pick its fastest 3D convolutions
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
        held_out = load_or_make_validation_data(args) if dist.is_main else None
        images, masks, edges, data_desc = load_or_make_data(args)
    except BHDInputError as err:
        print(f"bhd-train: error: {err}", file=sys.stderr)
        return 2
    if args.prepare_only:
        validation = f" and {len(held_out[0])} validation images in {args.run_dir / 'validation.npz'}"
        print(f"prepared {len(images)} target-domain images in {args.run_dir / 'data.npz'}"
              + (validation if held_out else ""))
        return 0
    config = TrainConfig.from_settings(training_settings(args))
    model_images, model_edges = on_model_grid(images, edges, config.grid_factor, config.unet.downsampling_factor)
    sampler = PatchSampler(model_images, model_edges, config.patch_size, config.multi_stride_fraction,
                           seed=config.seed)
    trainer = Trainer(config, sampler, args.run_dir, device, dist, compile=args.compile,
                      mixed_precision=args.mixed_precision)
    if trainer.step == 0 and args.compact_state and args.compact_state.exists():
        ema = None
        if args.export and args.export.exists():  # the exported model holds the EMA weights
            ema = {k: v.float() for k, v in torch.load(args.export, weights_only=True)["state_dict"].items()}
        trainer.load_compact_state(args.compact_state, ema)
        if dist.is_main:
            print(f"starting from {args.compact_state} at step {trainer.step}", file=sys.stderr)
    elif trainer.step == 0 and args.init_from:
        try:
            trainer.start_from_weights(load_weights(args.init_from, config.unet))
        except BHDInputError as err:
            print(f"bhd-train: error: {err}", file=sys.stderr)
            return 2
        if dist.is_main:
            print(f"fine-tuning from {args.init_from}", file=sys.stderr)
    quantiles = target_quantiles(images, masks)
    validator = None
    if args.validate_minutes and dist.is_main and (args.synthetic or held_out):
        subjects = altered_subjects(*held_out) if held_out else None  # None: the simulated traveling subjects
        validator = Validator(args.run_dir, quantiles, args.validate_minutes * 60, subjects)
    elif args.validate_minutes and dist.is_main:
        print("bhd-train: no validation (give --validation-label SUB ... to score held-out target subjects)",
              file=sys.stderr)
    trainer.train(time_budget_s=args.time_budget * 60 if args.time_budget else None, on_checkpoint=validator)
    if not dist.is_main:
        return 0
    if args.compact_state:
        trainer.save_compact_state(args.compact_state)
    if args.export:
        card = export_model(args.export, trainer, quantiles, images, data_desc)
        print(f"exported {args.export} (sha256 {card['sha256'][:12]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
