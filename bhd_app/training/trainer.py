"""Training the edge-to-image model on target-domain patches (sections 3.3, 4.2-4.3).

The loop draws batches from a ``patches.PatchSampler``, regresses the velocity
field (``flow.rectified_flow_loss``, eq. 6), keeps an EMA of the weights, writes
checkpoints atomically (model, EMA, optimizer, step, RNG states), appends the
loss to a TSV log and resumes from the last checkpoint. Knows nothing of BIDS:
it takes arrays.

Under ``torchrun`` the loop runs data-parallel (DistributedDataParallel, one
process per GPU): every rank draws the random numbers of the whole global batch
(patches, flips, noise, times) from the same seeded generators and computes its
own slice, so N processes train the same model as one process with that batch.
Rank 0 alone writes files.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..config import TRAINING, TrainingSettings
from ..method.flow import rectified_flow_loss, training_noise
from ..method.model import EdgeToImageUNet, UNetConfig
from . import scanner_changes
from .patches import PatchSampler


@dataclass
class TrainConfig:
    """What the training loop runs with: ``config.TrainingSettings`` with the U-Net's full config.

    The defaults are ``config.TRAINING``'s; ``from_settings`` builds one from any settings.
    """

    patch_size: int = TRAINING.patch_size
    batch_size: int = TRAINING.batch_size
    learning_rate: float = TRAINING.learning_rate
    steps: int = TRAINING.steps
    multi_stride_fraction: float = TRAINING.multi_stride_fraction
    parameterization: str = TRAINING.parameterization
    late_time_fraction: float = TRAINING.late_time_fraction  # share of t ~ U(0.5, 1) (flow.training_times)
    altered_start_fraction: float = TRAINING.altered_start_fraction  # share starting from a changed copy
    altered_start_times: tuple[float, float] = TRAINING.altered_start_times
    grid_factor: int = TRAINING.grid_factor  # the model's grid (method.grid); the sampler's volumes are on it
    ema_decay: float = TRAINING.ema_decay
    seed: int = TRAINING.seed
    checkpoint_every_s: float = TRAINING.checkpoint_every_s
    unet: UNetConfig = field(default_factory=lambda: UNetConfig(base_width=TRAINING.width))

    @classmethod
    def from_settings(cls, settings: TrainingSettings) -> "TrainConfig":
        values = {k: v for k, v in settings.to_dict().items() if k != "width"}
        return cls(**values, unet=UNetConfig(base_width=settings.width))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["unet"] = self.unet.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["unet"] = UNetConfig.from_dict(d["unet"])
        return cls(**d)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job; the defaults are a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Distributed":
        """Read torchrun's RANK, WORLD_SIZE and LOCAL_RANK (absent: one process)."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_part(self, global_batch: int) -> slice:
        """This rank's samples ``rank*b:(rank+1)*b`` of the global batch, b = global_batch / world_size."""
        if global_batch % self.world_size:
            raise ValueError(f"the batch size {global_batch} is the global batch: it must be a multiple of the "
                             f"{self.world_size} processes")
        b = global_batch // self.world_size
        return slice(self.rank * b, (self.rank + 1) * b)

    def start(self, device: torch.device) -> torch.device:
        """Join the process group (nccl on CUDA, gloo on CPU); returns this rank's device (``cuda:LOCAL_RANK``)."""
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        # Ranks wait in the next step's all-reduce while rank 0 validates: allow that an hour.
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             timeout=timedelta(minutes=60))
        return device


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def progress_bar(step: int, total: int, time_budget_s: float | None, disable: bool = False) -> tqdm:
    """The console bar of a training call: over the steps, or over the seconds of ``time_budget_s`` when that
    ends the call first (steps left at the last measured pace are unknown, so a step bar's time left would be
    that of all ``total`` steps)."""
    if time_budget_s is None:
        return tqdm(total=total, initial=step, disable=disable, desc="training", unit="step")
    return tqdm(total=round(time_budget_s), disable=disable, desc="training (time budget)", unit="s",
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} of {total}s, {remaining} left{postfix}")


class Trainer:
    """The training loop with EMA, atomic checkpoints, a loss log and resume.

    Files in ``run_dir``: ``checkpoint.pt`` (everything needed to resume),
    ``loss.tsv`` (step, wall seconds, loss, patches per second) and ``config.json``.
    With ``dist`` active (a started torchrun process group), ``net`` is trained through
    DistributedDataParallel on this rank's part of each batch, and only rank 0 writes
    those files and calls ``on_checkpoint``; every rank resumes from ``run_dir``, which
    must therefore be on a shared file system across nodes. ``compile`` runs the loss through
    ``torch.compile(net)``; checkpoints and the EMA keep the plain network's weights.
    ``mixed_precision`` runs the loss in bfloat16 autocast on CUDA (ignored on the CPU).
    """

    def __init__(self, config: TrainConfig, sampler: PatchSampler, run_dir: Path, device: torch.device,
                 dist: Distributed = Distributed(), compile: bool = False, mixed_precision: bool = False):
        self.config = config
        self.mixed_precision = mixed_precision and device.type == "cuda"  # bfloat16 autocast, fp32 weights
        self.sampler = sampler
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.dist = dist
        self.part = dist.local_part(config.batch_size)
        torch.manual_seed(config.seed)
        self.net = EdgeToImageUNet(config.unet).to(device)
        if device.type == "cpu":  # oneDNN's 3D convolutions are faster channels-last
            self.net = self.net.to(memory_format=torch.channels_last_3d)
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.model = self.net  # what the loss calls: the network, or its DistributedDataParallel wrapper
        if dist.active:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[device.index] if device.type == "cuda" else None)
        if compile:  # 3-28 % faster steps on our CPU after minutes of compiling (BENCHMARKS.md)
            self.model = torch.compile(self.model)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.learning_rate)
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.step = 0
        self.wall = 0.0
        self.warmup_until = 0  # learning-rate warm-up after starting from a compact state
        self.checkpoint_path = self.run_dir / "checkpoint.pt"
        if self.checkpoint_path.exists():
            self._resume()
        elif dist.is_main:
            (self.run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))

    def _same_model(self, saved: TrainConfig) -> bool:
        """Whether a saved run trained the same network, parameterization and grid as this one."""
        return (saved.unet, saved.parameterization, saved.grid_factor) == (
            self.config.unet, self.config.parameterization, self.config.grid_factor)

    def _resume(self) -> None:
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        saved = TrainConfig.from_dict(state["config"])
        if not self._same_model(saved):
            raise ValueError(f"{self.checkpoint_path}: checkpoint was made with another network; use a new run dir")
        self.net.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.learning_rate
        self.step, self.wall = state["step"], state["wall"]
        self.sampler.rng.bit_generator.state = state["sampler_rng"]
        self.generator.set_state(state["torch_rng"].cpu())  # map_location moved it; generators take CPU states

    def save_compact_state(self, path: Path) -> None:
        """A small file to continue training from in a later session (half-precision weights and step).

        The full checkpoint holds the EMA and the Adam moments too (4x the model); the EMA weights
        are the exported model file, so the two files together let training go on.
        """
        _atomic_save({"config": self.config.to_dict(), "step": self.step, "wall": self.wall,
                      "model": {k: v.half() for k, v in self.net.state_dict().items()}}, Path(path))

    def load_compact_state(self, path: Path, ema_state: dict | None = None) -> None:
        """Start from a compact state (and the EMA weights, when given); fresh optimizer, short warm-up."""
        state = torch.load(path, map_location=self.device, weights_only=True)
        saved = TrainConfig.from_dict(state["config"])
        if not self._same_model(saved):
            raise ValueError(f"{path}: state was made with another network")
        self.net.load_state_dict({k: v.float() for k, v in state["model"].items()})
        self.ema.load_state_dict(ema_state if ema_state is not None else self.net.state_dict())
        self.step, self.wall = state["step"], state["wall"]
        self.warmup_until = self.step + 200
        self.sampler.rng = np.random.default_rng([self.config.seed, self.step])
        self.generator.manual_seed(self.config.seed + self.step)

    def start_from_weights(self, state: dict) -> None:
        """Fine-tune: network and EMA start from ``state`` (a model's weights), fresh optimizer, short warm-up."""
        self.net.load_state_dict(state)
        self.ema.load_state_dict(state)
        self.warmup_until = self.step + 200

    def save_checkpoint(self) -> None:
        _atomic_save({
            "config": self.config.to_dict(), "model": self.net.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(), "step": self.step, "wall": self.wall,
            "sampler_rng": self.sampler.rng.bit_generator.state, "torch_rng": self.generator.get_state(),
            "world_size": self.dist.world_size,
        }, self.checkpoint_path)

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        for e, p in zip(self.ema.parameters(), self.net.parameters()):
            e.lerp_(p, 1 - decay)

    def _agree(self, loss: torch.Tensor, checkpoint_due: bool, out_of_time: bool) -> tuple[float, bool, bool]:
        """The global batch's mean loss, and whether any rank wants a checkpoint or has run out of time.

        Ranks must take the same decisions (or wait for one another forever): one all-reduce per step.
        """
        if not self.dist.active:
            return loss.item(), checkpoint_due, out_of_time
        flags = torch.stack([loss.detach().float(), torch.tensor(float(checkpoint_due), device=loss.device),
                             torch.tensor(float(out_of_time), device=loss.device)])
        torch.distributed.all_reduce(flags)
        total, due, late = flags.tolist()
        return total / self.dist.world_size, due > 0, late > 0

    def train(self, steps: int | None = None, time_budget_s: float | None = None,
              on_checkpoint: Callable[["Trainer"], None] | None = None, progress: bool = True) -> list[float]:
        """Run until ``steps`` total steps (or the time budget) are reached; returns this call's losses."""
        total = steps if steps is not None else self.config.steps
        losses: list[float] = []
        main = self.dist.is_main
        log = open(self.run_dir / "loss.tsv", "a") if main else None
        if main and log.tell() == 0:
            log.write("step\twall_s\tloss\tpatches_per_s\n")
        start = time.monotonic()
        last_ckpt = start
        bar = progress_bar(self.step, total, time_budget_s, disable=not (progress and main))
        self.net.train()
        while self.step < total:
            t0 = time.monotonic()
            x1, cond = self.sampler.batch(self.config.batch_size, self.part)
            x1, cond = x1.to(self.device), cond.to(self.device)
            if self.device.type == "cpu":
                x1 = x1.contiguous(memory_format=torch.channels_last_3d)
                cond = cond.contiguous(memory_format=torch.channels_last_3d)
            if self.step < self.warmup_until:
                for group in self.optimizer.param_groups:
                    group["lr"] = self.config.learning_rate * (1 - (self.warmup_until - self.step) / 200)
            elif self.warmup_until:
                for group in self.optimizer.param_groups:
                    group["lr"] = self.config.learning_rate
                self.warmup_until = 0
            x0, t = training_noise((self.config.batch_size, *x1.shape[1:]), self.config.late_time_fraction,
                                   self.generator, self.device, x1.dtype)
            changed_start = None
            if self.config.altered_start_fraction > 0:
                changes = scanner_changes.draw(x0.shape, self.config.altered_start_fraction,
                                               tuple(self.config.altered_start_times), self.generator, self.device)
                t = torch.where(changes.chosen, changes.times.to(t.dtype), t)
                changed_start = scanner_changes.apply(x1, changes.part(self.part))
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.mixed_precision):
                loss = rectified_flow_loss(self.model, x1, cond, self.config.parameterization,
                                           noise=(x0[self.part], t[self.part]), start=changed_start)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DistributedDataParallel averages the gradients over the ranks here
            self.optimizer.step()
            self._update_ema()
            self.step += 1
            dt = time.monotonic() - t0
            self.wall += dt
            now = time.monotonic()
            loss_value, checkpoint_due, out_of_time = self._agree(
                loss, now - last_ckpt >= self.config.checkpoint_every_s,
                time_budget_s is not None and now - start >= time_budget_s)
            losses.append(loss_value)
            if main:
                log.write(f"{self.step}\t{self.wall:.1f}\t{losses[-1]:.5f}\t{self.config.batch_size / dt:.2f}\n")
            bar.update(1 if time_budget_s is None else min(now - start, time_budget_s) - bar.n)
            bar.set_postfix(step=self.step, loss=f"{losses[-1]:.4f}")
            if checkpoint_due or self.step >= total or out_of_time:
                if main:
                    log.flush()
                    self.save_checkpoint()
                last_ckpt = time.monotonic()
                if on_checkpoint is not None and main:
                    self.net.eval()
                    on_checkpoint(self)
                    self.net.train()
            if out_of_time:
                break
        bar.close()
        if main:
            log.close()
        return losses
