"""Tests of bhd_app.method.flow: the rectified-flow loss (eq. 6) and the sampler (eq. 5).

For a single known clean image x1 the optimal field is closed-form: the image parameterization predicts x1
itself, the velocity parameterization predicts (x1 - x_t) / (1 - t). The "networks" below are small real
``nn.Module``s that compute exactly that from their input (B, 5, D, H, W) = (x_t, edge, i, j, k) and t.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bhd_app.method import flow
from bhd_app.method.model import EdgeToImageUNet, UNetConfig

SHAPE = (2, 1, 4, 6, 5)


class KnownImage(nn.Module):
    """The optimal image-parameterization network for one known x1: always predicts x1."""

    def __init__(self, x1: torch.Tensor):
        super().__init__()
        self.register_buffer("x1", x1)
        self.times: list[float] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 5 and t.shape == (x.shape[0],)
        self.times.append(float(t[0]))
        return self.x1.expand(x.shape[0], *self.x1.shape[1:]).to(x.dtype)


class KnownVelocity(nn.Module):
    """The optimal velocity-parameterization network for one known x1: (x1 - x_t) / (1 - t), from its input."""

    def __init__(self, x1: torch.Tensor):
        super().__init__()
        self.register_buffer("x1", x1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (self.x1 - x[:, :1]) / (1 - t).clamp(min=1e-4)[:, None, None, None, None]


class Constant(nn.Module):
    """Predicts a constant (a wrong network)."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :1], self.value)


@pytest.fixture
def x1() -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return flow.to_flow_space(torch.rand(SHAPE, generator=g))


@pytest.fixture
def cond() -> torch.Tensor:
    g = torch.Generator().manual_seed(12)
    return torch.rand((SHAPE[0], 4, *SHAPE[2:]), generator=g) * 2 - 1


def draws(seed: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (x0, t) that rectified_flow_loss draws from a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(like.shape, generator=g)
    t = torch.rand(like.shape[0], generator=g)
    return x0, t


@pytest.mark.parametrize("method,steps", [("euler", 4), ("euler", 16), ("midpoint", 4), ("midpoint", 8)])
def test_sampler_reaches_known_image_in_image_parameterization(x1, cond, method, steps):
    net = KnownImage(x1)
    out = flow.sample(net, cond, "image", steps=steps, method=method, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x1, rtol=0, atol=1e-5)
    # Fixed steps: euler evaluates at t = 0, h, ..., 1 - h; midpoint also at the half steps.
    h = 1.0 / steps
    expected = [k * h for k in range(steps)]
    if method == "midpoint":
        expected = [v for k in range(steps) for v in (k * h, (k + 0.5) * h)]
    assert net.times == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("method,calls_per_step", [("euler", 1), ("midpoint", 2)])
@pytest.mark.parametrize("start_time", [0.0, 0.5, 0.8, 0.9, 0.95])
@pytest.mark.parametrize("steps", [1, 2, 3, 16])
def test_oracle_network_is_reproduced_exactly_from_any_start(x1, cond, method, calls_per_step, start_time, steps):
    """dx/dt = (x1 - x) / (1 - t) is linear in t for a fixed x1, so euler and midpoint land on x1 exactly.

    They must, whatever t0 and step count, with exactly ``steps`` steps of network calls: no floor on 1 - t
    may shrink the last steps' velocity, and no extra zero-length step may appear on the time grid.
    """
    net = KnownImage(x1)
    start = torch.zeros_like(x1)
    out = flow.sample(net, cond, "image", steps=steps, method=method, start_time=start_time, start_image=start,
                      generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x1, rtol=0, atol=1e-4)
    assert len(net.times) == calls_per_step * steps
    assert max(net.times) < 1.0


@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_sampler_reaches_known_image_in_velocity_parameterization(x1, cond, method):
    out = flow.sample(KnownVelocity(x1), cond, "velocity", steps=4, method=method,
                      generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, x1, rtol=0, atol=1e-5)


def test_sampler_with_wrong_network_misses(x1, cond):
    out = flow.sample(KnownImage(x1 + 0.5), cond, "image", steps=4, method="euler",
                      generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x1 + 0.5, rtol=0, atol=1e-5)
    assert (out - x1).abs().min() > 0.49


def test_adaptive_solver_reaches_known_image(x1, cond):
    out = flow.sample(KnownVelocity(x1), cond, "velocity", steps=1, method="dopri5", start_time=0.0,
                      generator=torch.Generator().manual_seed(2))
    # (x1 - x_t) / (1 - t) is exact for straight paths; dopri5 follows them within its tolerance.
    torch.testing.assert_close(out, x1, rtol=0, atol=1e-3)


def test_start_time_uses_the_start_image(cond):
    """With a zero field (the untrained U-Net, zero head) the sample is x_t0 = t0 * start + (1 - t0) * noise."""
    torch.manual_seed(0)
    net = EdgeToImageUNet(UNetConfig(base_width=4, time_dim=16)).eval()
    shape = (SHAPE[0], 1, 8, 8, 8)
    cond = torch.rand(shape[0], 4, 8, 8, 8)
    start = torch.rand(shape) * 2 - 1
    out = flow.sample(net, cond, "velocity", steps=2, method="midpoint", start_time=0.6, start_image=start,
                      generator=torch.Generator().manual_seed(5))
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out, 0.6 * start + 0.4 * noise)
    # Another start image gives another result.
    other = flow.sample(net, cond, "velocity", steps=2, method="midpoint", start_time=0.6, start_image=-start,
                        generator=torch.Generator().manual_seed(5))
    assert (other - out).abs().max() > 0.1


def test_start_time_integrates_from_t0_only(x1, cond):
    net = KnownImage(x1)
    start = torch.zeros_like(x1)
    out = flow.sample(net, cond, "image", steps=4, method="euler", start_time=0.5, start_image=start,
                      generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x1, rtol=0, atol=1e-5)
    assert net.times == pytest.approx([0.5, 0.625, 0.75, 0.875], abs=1e-6)


def test_start_time_without_start_image_fails(cond):
    with pytest.raises(ValueError, match="start_image"):
        flow.sample(Constant(0.0), cond, "velocity", steps=2, method="midpoint", start_time=0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sample_shape_and_dtype(cond, dtype):
    out = flow.sample(Constant(0.0), cond.to(dtype), "velocity", steps=2, method="midpoint")
    assert out.shape == SHAPE and out.dtype == dtype
    # Seeded: the same generator seed gives the same noise, another seed another one.
    a = flow.sample(Constant(0.0), cond, "velocity", steps=2, method="midpoint", generator=torch.Generator().manual_seed(3))
    b = flow.sample(Constant(0.0), cond, "velocity", steps=2, method="midpoint", generator=torch.Generator().manual_seed(3))
    c = flow.sample(Constant(0.0), cond, "velocity", steps=2, method="midpoint", generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 0.1


def test_loss_is_zero_for_the_perfect_predictor(x1, cond):
    image = flow.rectified_flow_loss(KnownImage(x1), x1, cond, "image", torch.Generator().manual_seed(7))
    assert float(image) == 0.0
    vel = flow.rectified_flow_loss(KnownVelocity(x1), x1, cond, "velocity", torch.Generator().manual_seed(7))
    assert float(vel) < 1e-10


def test_loss_of_a_wrong_predictor_is_eq6(x1, cond):
    """Offsetting the known image by d costs d^2 (image) and d^2 / (1 - t)^2 (velocity), at the drawn t."""
    d = 0.1
    image = flow.rectified_flow_loss(KnownImage(x1 + d), x1, cond, "image", torch.Generator().manual_seed(8))
    assert float(image) == pytest.approx(d * d, rel=1e-4)
    vel = flow.rectified_flow_loss(KnownVelocity(x1 + d), x1, cond, "velocity", torch.Generator().manual_seed(8))
    _, t = draws(8, x1)
    assert float(vel) == pytest.approx(float(((d / (1 - t)) ** 2).mean()), rel=1e-4)
    # A zero velocity network costs E ||x1 - x0||^2 over the drawn noise.
    zero = flow.rectified_flow_loss(Constant(0.0), x1, cond, "velocity", torch.Generator().manual_seed(9))
    x0, _ = draws(9, x1)
    assert float(zero) == pytest.approx(float(((x1 - x0) ** 2).mean()), rel=1e-5)
    assert float(zero) > 0.5


def test_loss_rejects_unknown_parameterization(x1, cond):
    with pytest.raises(ValueError, match="parameterization"):
        flow.rectified_flow_loss(Constant(0.0), x1, cond, "score")


def test_velocity_from_image_prediction(x1, cond):
    x_t = torch.zeros_like(x1)
    t = torch.tensor([0.5, 0.75])
    v = flow.velocity(KnownImage(x1), x_t, t, cond, "image")
    torch.testing.assert_close(v, x1 / (1 - t)[:, None, None, None, None])
    # Near t = 1 the division is clamped at 1 - t = MIN_ONE_MINUS_T.
    v1 = flow.velocity(KnownImage(x1), x_t, torch.tensor([1.0, 1.0]), cond, "image")
    torch.testing.assert_close(v1, x1 / flow.MIN_ONE_MINUS_T)


def test_flow_space_round_trip():
    image = torch.rand(3, 7, 5, dtype=torch.float64)
    x = flow.to_flow_space(image)
    assert x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(flow.to_flow_space(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(flow.from_flow_space(x), image, rtol=0, atol=1e-12)
    # Samples beyond [-1, 1] are clipped back into [0, 1].
    torch.testing.assert_close(flow.from_flow_space(torch.tensor([-3.0, 2.0])), torch.tensor([0.0, 1.0]))
