"""Tests of bhd_app.training.scanner_changes: the changed starts of training paths, on the simulated target image.

Oracles: an identity change gives the patch back exactly; exact histogram matching keeps ranks and takes the
reference's values; the curve and the blur are checked against their closed forms; the loss with a changed start
is the image loss at x_t built from that start.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bhd_app.method import flow
from bhd_app.method.edges import canny_edges
from bhd_app.training import scanner_changes as sc
from bhd_app.training.patches import PatchSampler
from bhd_app.training.trainer import TrainConfig, Trainer
from bhd_app.method.model import UNetConfig


@pytest.fixture(scope="module")
def patches(subject) -> torch.Tensor:
    """Four 24^3 patches (flow space) of the simulated target image, brain and background."""
    image = subject.image("trio3t")
    sampler = PatchSampler([image], [canny_edges(image)[0].astype(np.float32)], 24, 0.2, seed=0)
    return sampler.batch(4)[0]


def identity(changes: sc.Changes) -> sc.Changes:
    """The same draws with every change switched off: straight curves, no bias, blur, noise or residual."""
    b = changes.chosen.shape[0]
    straight = torch.linspace(0, 1, sc.CURVE_KNOTS + 1).expand(b, 3, -1).clone()
    return sc.Changes(chosen=torch.ones(b, dtype=torch.bool), times=changes.times, curves=straight,
                      curve_field=changes.curve_field, residual=torch.zeros(b), bias=torch.zeros_like(changes.bias),
                      blur_sigma=torch.zeros(b), blur_axis=changes.blur_axis, noise=changes.noise,
                      noise_level=torch.zeros(b))


def test_identity_change_gives_the_patch_back(patches):
    changes = sc.draw(patches.shape, 1.0, (0.8, 0.95), torch.Generator().manual_seed(0))
    torch.testing.assert_close(sc.apply(patches, identity(changes)), patches, rtol=0, atol=1e-6)


def test_fraction_zero_changes_nothing_and_fraction_one_changes_every_patch(patches):
    g = torch.Generator().manual_seed(1)
    assert torch.equal(sc.apply(patches, sc.draw(patches.shape, 0.0, (0.8, 0.95), g)), patches)
    changed = sc.apply(patches, sc.draw(patches.shape, 1.0, (0.8, 0.95), g))
    brain = patches > -1
    for i in range(patches.shape[0]):
        rms = float(((changed[i] - patches[i])[brain[i]] ** 2).mean().sqrt())
        assert rms > 1e-3, i
    assert torch.equal(changed[~brain], patches[~brain])  # the background stays background


def test_times_are_drawn_in_their_range():
    changes = sc.draw((64, 1, 4, 4, 4), 0.5, (0.8, 0.95), torch.Generator().manual_seed(2))
    assert float(changes.times.min()) >= 0.8 and float(changes.times.max()) <= 0.95
    assert 10 < int(changes.chosen.sum()) < 54


def test_monotone_curve_is_piecewise_linear_through_its_knots():
    curve = torch.tensor([[0.0, 0.5, 0.6, 1.0]])  # 3 segments: 0-1/3, 1/3-2/3, 2/3-1
    x = torch.tensor([0.0, 1 / 6, 1 / 3, 0.5, 5 / 6, 1.0]).view(1, 1, 1, 1, 6)
    expected = torch.tensor([0.0, 0.25, 0.5, 0.55, 0.8, 1.0]).view_as(x)
    torch.testing.assert_close(sc.monotone_curve(x, curve), expected, rtol=0, atol=1e-6)


def test_blur_acts_along_one_axis_and_keeps_the_mean():
    x = torch.zeros(1, 1, 15, 15, 15)
    x[0, 0, 7, 7, 7] = 1.0
    for axis in range(3):
        y = sc.blur_along(x, 1.0, axis)
        assert float(y.sum()) == pytest.approx(1.0, abs=1e-5)
        others = [d for d in range(3) if d != axis]
        profile = y[0, 0].sum(dim=tuple(others))
        assert float(profile[6]) == pytest.approx(float(np.exp(-0.5)) * float(profile[7]), rel=1e-4)
        assert float(y[0, 0].sum(dim=axis).max()) == pytest.approx(1.0, abs=1e-6)  # no spread across the axis
    assert torch.equal(sc.blur_along(x, 0.0, 0), x)


def test_histogram_matching_keeps_ranks_and_takes_the_reference_values():
    g = torch.Generator().manual_seed(3)
    x, ref = torch.rand(2, 1, 5, 5, 5, generator=g), torch.rand(2, 1, 5, 5, 5, generator=g) ** 3
    out = sc.match_histogram(x, ref)
    for i in range(2):
        assert torch.equal(out[i].flatten().sort().values, ref[i].flatten().sort().values)
        assert torch.equal(out[i].flatten().argsort(), x[i].flatten().argsort())
    assert torch.equal(sc.match_histogram(torch.exp(3 * x), ref), out)  # a monotone map is undone exactly


def test_loss_with_a_changed_start_is_the_image_loss_at_that_start(patches):
    start = patches * 0.5
    net = torch.nn.Identity()

    class FirstChannel(torch.nn.Module):  # predicts x_t itself: the loss is then ||x_t - x1||^2
        def forward(self, x, t):
            return net(x[:, :1])

    cond = torch.zeros(patches.shape[0], 4, *patches.shape[2:])
    g = torch.Generator().manual_seed(4)
    x0, t = flow.training_noise(patches.shape, 0.0, g)
    loss = flow.rectified_flow_loss(FirstChannel(), patches, cond, "image", noise=(x0, t), start=start)
    tb = t[:, None, None, None, None]
    assert float(loss) == pytest.approx(float(((tb * start + (1 - tb) * x0 - patches) ** 2).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="image parameterization"):
        flow.rectified_flow_loss(FirstChannel(), patches, cond, "velocity", noise=(x0, t), start=start)


def test_training_with_changed_starts_is_reproducible_and_differs_from_plain_training(subject, tmp_path):
    image = subject.image("trio3t")[40:88, 56:104, 44:92]
    edge_map = canny_edges(image)[0].astype(np.float32)
    config = TrainConfig(patch_size=16, batch_size=2, learning_rate=1e-3, steps=4, seed=3, checkpoint_every_s=1e9,
                         parameterization="image", altered_start_fraction=0.5,
                         unet=UNetConfig(base_width=4, time_dim=16))
    runs = []
    for name in ("a", "b"):
        trainer = Trainer(config, PatchSampler([image], [edge_map], 16, 0.2, seed=0), tmp_path / name,
                          torch.device("cpu"))
        runs.append(trainer.train(progress=False, time_budget_s=1e6))  # a budget, as bhd-train --time-budget
    assert runs[0] == runs[1] and all(np.isfinite(runs[0]))
    plain = Trainer(TrainConfig(**{**config.__dict__, "altered_start_fraction": 0.0}),
                    PatchSampler([image], [edge_map], 16, 0.2, seed=0), tmp_path / "plain", torch.device("cpu"))
    assert plain.train(progress=False) != runs[0]
