"""Tests of bhd_app.training.patches and .trainer: multi-stride patches (section 3.4), the loop, checkpoints and resume.

The loop tests train tiny networks on the session's simulated target-domain (trio3t) image and its edge map.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bhd_app.config import PAPER_TRAINING, TRAINING
from bhd_app.method.edges import canny_edges
from bhd_app.method.flow import to_flow_space
from bhd_app.method.model import EdgeToImageUNet, UNetConfig, coordinate_grid
from bhd_app.training.patches import PatchSampler, patch_slices, patch_strides
from bhd_app.training.trainer import TrainConfig, Trainer

GRID = (128, 160, 136)


@pytest.fixture(scope="module")
def target(subject):
    """The simulated target-domain image and its edge map (float32)."""
    image = subject.image("trio3t")
    return image, canny_edges(image)[0].astype(np.float32)


def test_simple_patch_has_stride_one():
    rng = np.random.default_rng(0)
    assert all(patch_strides(GRID, 32, False, rng) == (1, 1, 1) for _ in range(20))


def test_multi_stride_range():
    rng = np.random.default_rng(1)
    largest = [s // 32 for s in GRID]  # (4, 5, 4)
    seen = [set(), set(), set()]
    for _ in range(400):
        strides = patch_strides(GRID, 32, True, rng)
        assert max(strides) > 1
        for a, n in enumerate(strides):
            assert 1 <= n <= largest[a]
            seen[a].add(n)
    assert seen == [set(range(1, m + 1)) for m in largest]


def test_multi_stride_on_a_small_volume_falls_back_to_stride_one():
    rng = np.random.default_rng(2)
    assert patch_strides((40, 63, 50), 32, True, rng) == (1, 1, 1)
    # One axis long enough: only that one can take stride 2.
    for _ in range(20):
        assert patch_strides((40, 64, 50), 32, True, rng) == (1, 2, 1)


def test_patch_slices_cut_p_cubed_inside_the_volume():
    rng = np.random.default_rng(3)
    volume = np.zeros(GRID, np.uint8)
    starts = set()
    for _ in range(300):
        strides = patch_strides(GRID, 32, bool(rng.random() < 0.5), rng)
        sl = patch_slices(GRID, 32, strides, rng)
        assert volume[sl].shape == (32, 32, 32)
        for s, n, size in zip(sl, strides, GRID):
            assert s.step == n and 0 <= s.start and s.stop <= size and s.stop - s.start == 32 * n
        if strides[0] == 4:
            starts.add(sl[0].start)
    # With stride 4 on the 128 axis, the only start is 0.
    assert starts <= {0}
    # Stride 1: every start from 0 to size - P is reachable.
    firsts = {patch_slices((40, 40, 40), 32, (1, 1, 1), rng)[0].start for _ in range(300)}
    assert firsts == set(range(9))


def indexed_sampler(shape=(64, 48, 80), patch=16, fraction=0.2, seed=0):
    """A sampler whose 'edge map' holds each voxel's linear index, so every patch voxel can be traced back."""
    index = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    image = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return PatchSampler([image], [index], patch, fraction, seed=seed), image


def test_patch_channels_come_from_the_sampled_voxels():
    """Image, edge and the three coordinate channels of a patch all come from the same full-volume voxels.

    The coordinates equal coordinate_grid of the full volume at those voxels (the corners included), whatever
    stride and flips were drawn; along each axis the voxels step by the stride (reversed when flipped).
    """
    shape = (64, 48, 80)
    sampler, image = indexed_sampler(shape)
    full = coordinate_grid(shape)
    flow_image = to_flow_space(torch.from_numpy(image))
    flipped_axes = set()
    strided = 0
    for _ in range(60):
        p = sampler.patch()
        assert p.shape == (5, 16, 16, 16)
        ijk = np.unravel_index(p[1].numpy().astype(np.int64), shape)
        idx = tuple(torch.from_numpy(a) for a in ijk)
        torch.testing.assert_close(p[0], flow_image[idx], rtol=0, atol=0)
        torch.testing.assert_close(p[2:], full[(slice(None), *idx)], rtol=0, atol=0)
        for corner in np.ndindex(2, 2, 2):
            c = tuple(-1 if k else 0 for k in corner)
            voxel = tuple(int(a[c]) for a in ijk)
            torch.testing.assert_close(p[(slice(2, 5), *c)], full[(slice(None), *voxel)], rtol=0, atol=0)
        steps = []
        for a in range(3):
            diffs = np.diff(ijk[a], axis=a)
            other = [b for b in range(3) if b != a]
            assert (np.diff(ijk[a], axis=other[0]) == 0).all() and (np.diff(ijk[a], axis=other[1]) == 0).all()
            assert len(np.unique(diffs)) == 1
            step = int(diffs.flat[0])
            steps.append(abs(step))
            if step < 0:
                flipped_axes.add(a)
        strided += max(steps) > 1
    assert flipped_axes == {0, 1, 2}
    assert strided > 0


def strides_of(patch: torch.Tensor, shape: tuple[int, ...]) -> list[int]:
    """The stride of a patch along each axis, read from its coordinate channels (grid step 2 / (n - 1))."""
    out = []
    for a, n in enumerate(shape):
        c = patch[2 + a].movedim(a, 0)
        out.append(round(abs(float(c[1, 0, 0] - c[0, 0, 0])) * (n - 1) / 2.0))
    return out


def test_about_a_fifth_of_patches_are_multi_stride():
    sampler, _ = indexed_sampler(fraction=0.2, seed=4)
    n_draws = 1500
    multi = 0
    for _ in range(n_draws):
        strides = strides_of(sampler.patch(), sampler.shape)
        assert all(1 <= n <= s // 16 for n, s in zip(strides, sampler.shape))
        multi += max(strides) > 1
    # Binomial(1500, 0.2): standard deviation about 0.01.
    assert abs(multi / n_draws - 0.2) < 0.04
    sampler, _ = indexed_sampler(fraction=0.0, seed=5)
    assert all(strides_of(sampler.patch(), sampler.shape) == [1, 1, 1] for _ in range(50))
    sampler, _ = indexed_sampler(fraction=1.0, seed=6)
    assert all(max(strides_of(sampler.patch(), sampler.shape)) > 1 for _ in range(50))


def test_batch_shapes_and_flow_space():
    sampler, _ = indexed_sampler()
    x1, cond = sampler.batch(3)
    assert x1.shape == (3, 1, 16, 16, 16) and cond.shape == (3, 4, 16, 16, 16)
    assert x1.min() >= -1 and x1.max() <= 1 and x1.min() < -0.9 and x1.max() > 0.9
    assert cond[:, 1:].abs().max() <= 1


def test_sampler_rejects_bad_volumes():
    a = np.zeros((32, 32, 32), np.float32)
    with pytest.raises(ValueError, match="one grid"):
        PatchSampler([a], [np.zeros((32, 32, 31), np.float32)], 16, 0.2)
    with pytest.raises(ValueError, match="exceeds"):
        PatchSampler([a], [a], 64, 0.2)


def tiny_config(**kw) -> TrainConfig:
    base = dict(patch_size=16, batch_size=2, learning_rate=1e-3, steps=6, seed=3, checkpoint_every_s=1e9,
                unet=UNetConfig(base_width=4, time_dim=16))
    base.update(kw)
    return TrainConfig(**base)


def crop_sampler(target, seed=0) -> PatchSampler:
    image, edge_map = target
    sl = (slice(40, 88), slice(56, 104), slice(44, 92))
    return PatchSampler([image[sl]], [edge_map[sl]], 16, 0.2, seed=seed)


def test_loss_goes_down(target, tmp_path):
    """40 steps of a width-8 U-Net on 32^3 patches (batch 2, lr 2e-3): the loss drops by more than 10 %.

    Measured (seeds 0-3): the mean of the last 10 losses is 0.75-0.83 times the mean of the first 10.
    """
    image, edge_map = target
    config = TrainConfig(patch_size=32, batch_size=2, learning_rate=2e-3, steps=40, seed=0, checkpoint_every_s=1e9,
                         unet=UNetConfig(base_width=8, time_dim=32))
    sampler = PatchSampler([image], [edge_map], 32, 0.2, seed=0)
    losses = Trainer(config, sampler, tmp_path, torch.device("cpu")).train(progress=False)
    assert len(losses) == 40 and all(np.isfinite(losses))
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.9 * first, (first, last)


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_resume_reproduces_an_uninterrupted_run(target, tmp_path):
    device = torch.device("cpu")
    # Uninterrupted: 6 steps.
    full = Trainer(tiny_config(), crop_sampler(target), tmp_path / "full", device)
    losses_full = full.train(progress=False)
    assert len(losses_full) == 6 and full.step == 6

    # Interrupted after 3 steps (a checkpoint is written when the requested steps are reached) ...
    first = Trainer(tiny_config(), crop_sampler(target), tmp_path / "cut", device)
    losses_a = first.train(steps=3, progress=False)
    assert (tmp_path / "cut" / "checkpoint.pt").exists()
    # ... and resumed by a fresh trainer with a fresh sampler.
    resumed = Trainer(tiny_config(), crop_sampler(target), tmp_path / "cut", device)
    assert resumed.step == 3
    assert state_equal(resumed.net.state_dict(), first.net.state_dict())
    assert state_equal(resumed.ema.state_dict(), first.ema.state_dict())
    assert resumed.sampler.rng.bit_generator.state == first.sampler.rng.bit_generator.state
    assert torch.equal(resumed.generator.get_state(), first.generator.get_state())
    assert resumed.optimizer.state_dict()["state"][0]["step"] == 3
    losses_b = resumed.train(progress=False)

    assert losses_a == losses_full[:3]
    assert losses_b == losses_full[3:]
    assert resumed.step == 6
    assert state_equal(resumed.net.state_dict(), full.net.state_dict())
    assert state_equal(resumed.ema.state_dict(), full.ema.state_dict())
    rows = (tmp_path / "cut" / "loss.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["step", "wall_s", "loss", "patches_per_s"]
    assert [int(r.split("\t")[0]) for r in rows[1:]] == list(range(1, 7))
    # The weights moved: a real run, not a no-op.
    fresh = Trainer(tiny_config(), crop_sampler(target), tmp_path / "fresh", device)
    assert not state_equal(fresh.net.state_dict(), full.net.state_dict())


@pytest.mark.slow
def test_compiled_training_matches_the_plain_one_and_saves_plain_weights(target, tmp_path):
    """``bhd-train --compile``: the same losses as without torch.compile, a checkpoint a plain network loads.

    Slow: inductor compiles its C++ kernels first (minutes on 2 cores).
    """
    device = torch.device("cpu")
    plain = Trainer(tiny_config(steps=3), crop_sampler(target), tmp_path / "plain", device).train(progress=False)
    compiled = Trainer(tiny_config(steps=3), crop_sampler(target), tmp_path / "compiled", device, compile=True)
    assert compiled.model is not compiled.net
    np.testing.assert_allclose(compiled.train(progress=False), plain, rtol=1e-3)
    state = torch.load(tmp_path / "compiled" / "checkpoint.pt", weights_only=False)
    EdgeToImageUNet(tiny_config().unet).load_state_dict(state["model"])  # no torch.compile prefixes


def test_resume_with_another_network_is_refused(target, tmp_path):
    Trainer(tiny_config(steps=1), crop_sampler(target), tmp_path, torch.device("cpu")).train(progress=False)
    with pytest.raises(ValueError, match="another network"):
        Trainer(tiny_config(unet=UNetConfig(base_width=8, time_dim=16)), crop_sampler(target), tmp_path,
                torch.device("cpu"))
    with pytest.raises(ValueError, match="another network"):  # the same network on another grid
        Trainer(tiny_config(grid_factor=2), crop_sampler(target), tmp_path, torch.device("cpu"))


def test_ema_follows_the_weights(target, tmp_path):
    trainer = Trainer(tiny_config(steps=2), crop_sampler(target), tmp_path, torch.device("cpu"))
    before = {k: v.clone() for k, v in trainer.ema.state_dict().items()}
    trainer.train(progress=False)
    # Early on, decay = (1 + step) / (10 + step): the EMA moves towards the weights but lags behind them.
    moved = [k for k in before if not torch.equal(before[k], trainer.ema.state_dict()[k])]
    assert moved
    assert not state_equal(trainer.ema.state_dict(), trainer.net.state_dict())


def test_config_round_trip():
    config = tiny_config()
    assert TrainConfig.from_dict(config.to_dict()) == config
    paper = TrainConfig.from_settings(PAPER_TRAINING)
    assert (paper.patch_size, paper.batch_size, paper.learning_rate, paper.steps, paper.multi_stride_fraction,
            paper.unet.base_width, paper.parameterization) == (64, 8, 5e-5, 150_000, 0.2, 64, "velocity")


def test_training_defaults_are_defined_once():
    """bhd-train's parser, the training loop's config and config.TRAINING agree; given options reach the loop."""
    from bhd_app.cli.train import build_parser, training_settings

    assert training_settings(build_parser().parse_args(["run", "--synthetic", "1"])) == TRAINING
    assert TrainConfig.from_settings(TRAINING) == TrainConfig()
    args = build_parser().parse_args(["run", "--synthetic", "1", "--lr", "1e-4", "--width", "8",
                                      "--late-time-fraction", "0.5", "--checkpoint-minutes", "1", "--grid-factor", "2"])
    config = TrainConfig.from_settings(training_settings(args))
    assert (config.learning_rate, config.unet.base_width, config.late_time_fraction, config.checkpoint_every_s,
            config.grid_factor) == (1e-4, 8, 0.5, 60.0, 2)
    assert config.patch_size == TRAINING.patch_size and config.parameterization == TRAINING.parameterization


def test_a_recipe_names_whole_training_settings_and_the_shipped_models_scripts_use_it():
    """--recipe paper / fine-tune give config's recipe, an option given beside it wins; the IXI-HH training scripts
    and README's fine-tune command name the fine-tune recipe instead of repeating its numbers."""
    from bhd_app.cli.train import build_parser, training_settings
    from bhd_app.config import TRAINING_FINE_TUNE, TRAINING_RECIPES

    def settings(*options: str):
        return training_settings(build_parser().parse_args(["run", "--synthetic", "1", *options]))

    assert settings("--recipe", "paper") == PAPER_TRAINING
    fine_tune = settings("--recipe", "fine-tune")
    assert fine_tune == TRAINING_FINE_TUNE == TRAINING_RECIPES["fine-tune"]
    assert (fine_tune.learning_rate, fine_tune.late_time_fraction, fine_tune.altered_start_fraction,
            fine_tune.grid_factor) == (1e-4, 0.5, 0.5, 2)
    assert settings("--recipe", "fine-tune", "--grid-factor", "1", "--seed", "3") == replace(
        TRAINING_FINE_TUNE, grid_factor=1, seed=3)
    repo = Path(__file__).resolve().parents[1]
    for script in sorted((repo / "training" / "ixi-hh").glob("*_cpu.sh")):
        text = script.read_text()
        assert "--recipe fine-tune" in text and "--lr" not in text and "--late-time-fraction" not in text, script
    readme = (repo / "README.md").read_text()
    assert "--recipe fine-tune" in readme and "--lr 1e-4" not in readme


def test_compact_state_round_trip(tmp_path):
    """The small between-sessions state restores step, EMA and (half-precision) weights."""
    rng = np.random.default_rng(0)
    image = rng.random((32, 32, 32)).astype(np.float32)
    edges = (image > 0.5).astype(np.uint8)
    config = TrainConfig(patch_size=16, batch_size=2, learning_rate=1e-3, checkpoint_every_s=1e9,
                         unet=UNetConfig(base_width=4))
    first = Trainer(config, PatchSampler([image], [edges], 16, 0.2), tmp_path / "a", torch.device("cpu"))
    first.train(steps=3, progress=False)
    first.save_compact_state(tmp_path / "compact.pt")
    second = Trainer(config, PatchSampler([image], [edges], 16, 0.2), tmp_path / "b", torch.device("cpu"))
    second.load_compact_state(tmp_path / "compact.pt", first.ema.state_dict())
    assert second.step == 3
    for a, b in zip(first.ema.state_dict().values(), second.ema.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(first.net.state_dict().values(), second.net.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4)
    losses = second.train(steps=5, progress=False)
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_validator_logs_the_fixed_settings_and_the_participant_defaults(target, small_subject, tmp_path):
    """Each checkpoint's validation writes one row per subject for each of the two settings, every metric."""
    import csv
    import json

    from bhd_app.config import T1W
    from bhd_app.method.baselines import target_quantiles
    from bhd_app.training.validation import TravelingSubject, Validator

    source, reference, mask = small_subject["vision15t"], small_subject["trio3t"], small_subject["mask"]
    subjects = [TravelingSubject(1, "vision15t", source, reference, mask)]
    trainer = Trainer(tiny_config(steps=1), crop_sampler(target), tmp_path, torch.device("cpu"))
    trainer.train(progress=False)
    Validator(tmp_path, target_quantiles([reference], [mask]), 0.0, subjects)(trainer)
    with open(tmp_path / "validation.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [json.loads(r["settings"]) for r in rows] == [Validator.FIXED_SETTINGS.to_dict(), T1W.to_dict()]
    assert json.loads(rows[1]["settings"])["start_time"] == T1W.start_time
    assert all(r["step"] == "1" and np.isfinite(float(r["bhd_psnr"])) for r in rows)
    assert all(float(r["histmatch_ncc_psnr"]) > float(r["source_psnr"]) for r in rows)  # the best control, scored
    assert rows[0]["bhd_psnr"] != rows[1]["bhd_psnr"]


def test_a_time_budget_bar_counts_the_budget_not_the_steps(target, tmp_path, capsys):
    """With --time-budget the bar runs over the budget's seconds: a bar over all configured steps showed a time
    left of days (e.g. 134 hours for 150k steps) for a 90-minute call."""
    trainer = Trainer(tiny_config(steps=10**6), crop_sampler(target), tmp_path, torch.device("cpu"))
    trainer.train(time_budget_s=1.0, progress=True)
    err = capsys.readouterr().err
    assert "training (time budget)" in err and "of 1s" in err, err
    assert "1000000" not in err and trainer.step > 0
