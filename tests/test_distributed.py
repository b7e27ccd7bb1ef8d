"""Data-parallel training under torchrun (gloo backend, two CPU processes) against one process.

Every rank draws the whole global batch's random numbers and trains on its slice, and DistributedDataParallel
averages the gradients, so two processes with a global batch of 4 must end with the weights of one process
with a batch of 4, and only rank 0 may write files. The runs go through ``bhd-train`` itself (``main``), on a
small random volume placed in the run directory's data cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bhd_app.cli import train as train_cli
from bhd_app.training.patches import PatchSampler
from bhd_app.training.trainer import Distributed

STEPS = 3
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def prepare_run_dir(run_dir: Path) -> None:
    """A smooth random 'brain' (40 x 48 x 36), its mask and a thresholded edge map, as bhd-train's data cache."""
    rng = np.random.default_rng(11)
    noise = torch.from_numpy(rng.random((1, 1, 40, 48, 36), dtype=np.float32))
    image = torch.nn.functional.avg_pool3d(noise, 5, 1, 2)[0, 0].numpy()
    image = (image - image.min()) / (image.max() - image.min())
    mask = (image > 0.2).astype(np.uint8)
    edges = (np.abs(np.gradient(image)[0]) > 0.02).astype(np.uint8)
    run_dir.mkdir(parents=True)
    np.savez(run_dir / "data.npz", n=1, desc=json.dumps({"source": "test"}), image0=image, mask0=mask, edge0=edges)


def cli_args(run_dir: Path, batch_size: int = 4, steps: int = STEPS) -> list[str]:
    return [str(run_dir), "--synthetic", "1", "--width", "4", "--patch-size", "16", "--batch-size", str(batch_size),
            "--steps", str(steps), "--lr", "1e-3", "--multi-stride-fraction", "0.5", "--late-time-fraction", "0.5",
            "--validate-minutes", "0", "--threads", "1", "--device", "cpu", "--seed", "5",
            "--export", str(run_dir / "model.pt")]


@pytest.fixture
def single_process(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)


def test_sampler_part_is_a_slice_of_the_whole_batch():
    """A rank's part of a batch equals that slice of the whole batch, and the generator ends in the same state."""
    rng = np.random.default_rng(0)
    image = rng.random((40, 48, 36), dtype=np.float32)
    edges = (image > 0.5).astype(np.float32)
    whole, part = (PatchSampler([image], [edges], 16, 0.5, seed=3) for _ in range(2))
    for _ in range(3):
        x1, cond = whole.batch(4)
        x1_part, cond_part = part.batch(4, Distributed(rank=1, world_size=2).local_part(4))
        assert torch.equal(x1[2:], x1_part) and torch.equal(cond[2:], cond_part)
        assert not torch.equal(x1[:2], x1_part)
    assert whole.rng.bit_generator.state == part.rng.bit_generator.state


def test_local_part_needs_a_divisible_batch():
    assert Distributed(rank=0, world_size=2).local_part(4) == slice(0, 2)
    assert Distributed(rank=2, world_size=4).local_part(8) == slice(4, 6)
    with pytest.raises(ValueError, match="multiple"):
        Distributed(rank=0, world_size=3).local_part(4)


def test_cli_refuses_a_batch_that_does_not_split(tmp_path, single_process, monkeypatch, capsys):
    prepare_run_dir(tmp_path / "run")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert train_cli.main(cli_args(tmp_path / "run", batch_size=4)) == 2
    assert "multiple of the 3 torchrun processes" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_export_writes_a_model_that_loads_and_keeps_the_hand_written_card_fields(tmp_path, single_process):
    """One process: --export writes the EMA weights (float16) with a card whose sha256 load_model checks; the steps and
    defaults are this run's, the curated fields (status, credit, ...) of an existing card are kept."""
    from bhd_app.config import card_defaults
    from bhd_app.modelfile import load_model

    run = tmp_path / "run"
    prepare_run_dir(run)
    (run / "model.json").write_text(json.dumps({"status": "measured by hand", "credit": "IXI", "steps": 99}))
    assert train_cli.main(cli_args(run, steps=2)) == 0
    card = json.loads((run / "model.json").read_text())
    assert card["status"] == "measured by hand" and card["credit"] == "IXI"
    assert card["steps"] == 2 and card["defaults"] == card_defaults() and card["training"]["patch_size"] == 16
    model = load_model(run / "model.pt")
    ema = torch.load(run / "checkpoint.pt", weights_only=True)["ema"]
    for name, value in model.net.state_dict().items():
        torch.testing.assert_close(value.float(), ema[name].half().float())  # the model file stores float16


def losses(run_dir: Path, steps: int = STEPS) -> list[float]:
    rows = (run_dir / "loss.tsv").read_text().splitlines()
    assert rows[0] == "step\twall_s\tloss\tpatches_per_s"
    assert [int(r.split("\t")[0]) for r in rows[1:]] == list(range(1, steps + 1))  # one writer, no duplicates
    return [float(r.split("\t")[2]) for r in rows[1:]]


def assert_same_training(a: dict, b: dict) -> None:
    """Two checkpoints hold the same step, generator states and (up to float summation order) weights."""
    assert a["step"] == b["step"]
    assert a["sampler_rng"] == b["sampler_rng"] and torch.equal(a["torch_rng"], b["torch_rng"])
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()  # plain module keys, no DDP "module." prefix
        for name in a[key]:
            torch.testing.assert_close(b[key][name], a[key][name], rtol=1e-4, atol=1e-6, msg=f"{key} {name}")


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path, single_process):
    """``torchrun --nproc_per_node 2`` (gloo) and one process, global batch 4: the same weights, one set of files.

    Measured: the weights differ by at most 7e-7 after 3 steps (float summation order); a rank that trains on
    the wrong slice, or draws its own noise, differs by orders of magnitude more.
    """
    one, two = tmp_path / "one", tmp_path / "two"
    prepare_run_dir(one)
    prepare_run_dir(two)
    assert train_cli.main(cli_args(one)) == 0

    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "bhd_app.cli.train", *cli_args(two)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    a = torch.load(one / "checkpoint.pt", weights_only=False)
    b = torch.load(two / "checkpoint.pt", weights_only=False)
    assert (a["world_size"], b["world_size"]) == (1, 2)
    assert a["step"] == STEPS
    assert_same_training(a, b)
    # Training moved the weights: equality above is not that of two untouched networks.
    moved = [n for n in a["model"] if not torch.allclose(a["model"][n], a["ema"][n], rtol=1e-3, atol=1e-5)]
    assert moved
    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-5)
    # Rank 0 alone wrote: one checkpoint, log, config and exported model, no leftovers of a second writer.
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir()) == [
        "checkpoint.pt", "config.json", "data.npz", "loss.tsv", "model.json", "model.pt"]

    # The two-process run resumes in one process like the one-process run does.
    for run_dir in (one, two):
        assert train_cli.main(cli_args(run_dir, steps=STEPS + 1)) == 0
    assert_same_training(torch.load(one / "checkpoint.pt", weights_only=False),
                         torch.load(two / "checkpoint.pt", weights_only=False))
    assert len(losses(two, STEPS + 1)) == STEPS + 1
