"""Rectified flow between Gaussian noise and the image (section 3.3, eq. 5-6).

Images live in [-1, 1] inside the flow (``to_flow_space``); the edge map and the
coordinate channels are the conditions. Two parameterizations of the network
output are supported, both trained on straight paths x_t = t x1 + (1 - t) x0:

* ``velocity``: the network is v_theta and the loss is eq. 6, ||(x1 - x0) - v||^2;
* ``image``: the network predicts the clean image x1_hat and the velocity is
  derived from it, v = (x1_hat - x_t) / (1 - t); the loss is ||x1_hat - x1||^2.

The sampler integrates dx/dt = v from t0 to 1 with torchdiffeq (midpoint by
default, as in supplement S3.1) over the whole volume. t0 = 0 starts from pure
noise (the paper); t0 > 0 starts from a noised source image
x_t0 = t0 * source + (1 - t0) * noise (an option of bhd, see the model card).
"""

from __future__ import annotations

import torch
from torch import nn
from torchdiffeq import odeint

PARAMETERIZATIONS = ("velocity", "image")
# Guards only an evaluation at t = 1 itself (rk4's last stage, adaptive solvers): midpoint and euler
# never evaluate there, and a larger floor would shrink the velocity of their last steps.
MIN_ONE_MINUS_T = 1e-4
FIXED_STEP_METHODS = ("euler", "midpoint", "rk4", "explicit_adams", "implicit_adams")


def to_flow_space(image01: torch.Tensor) -> torch.Tensor:
    return image01 * 2.0 - 1.0


def from_flow_space(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def velocity(net: nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
             parameterization: str) -> torch.Tensor:
    """The velocity field v(x_t, t; e, i, j, k). ``t`` has shape (B,); ``cond`` is (B, 4, D, H, W)."""
    out = net(torch.cat([x_t, cond], dim=1), t)
    if parameterization == "velocity":
        return out
    one_minus_t = (1.0 - t).clamp(min=MIN_ONE_MINUS_T)[:, None, None, None, None]
    return (out - x_t) / one_minus_t


def training_times(b: int, late_fraction: float = 0.0, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """t ~ U(0, 1) (the paper); a ``late_fraction`` of the batch draws t ~ U(0.5, 1) instead.

    Sampling from a noised source starts at t0 >= 0.5 (``sample(start_time=...)``), so bhd can spend
    more of a small CPU training budget on the late part of the path that it integrates.
    """
    t = torch.rand(b, generator=generator, device=device, dtype=dtype)
    late = torch.rand(b, generator=generator, device=device, dtype=dtype) < late_fraction
    return torch.where(late, 0.5 + 0.5 * t, t)


def training_noise(shape: tuple[int, ...], late_fraction: float = 0.0, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The random draws of one loss evaluation: noise x0 of ``shape`` (B, 1, D, H, W), then times t (B,).

    Distributed training draws them for the whole global batch on every rank and slices its own part.
    """
    x0 = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    return x0, training_times(shape[0], late_fraction, generator, device, dtype)


def rectified_flow_loss(net: nn.Module, x1: torch.Tensor, cond: torch.Tensor, parameterization: str,
                        generator: torch.Generator | None = None, late_fraction: float = 0.0,
                        noise: tuple[torch.Tensor, torch.Tensor] | None = None,
                        start: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 6 on a batch: x1 (B, 1, D, H, W) in flow space, cond (B, 4, D, H, W).

    ``noise`` = (x0, t) given by the caller, else drawn by ``training_noise`` from ``generator``.
    ``start`` (image parameterization only) replaces x1 in x_t = t * start + (1 - t) * x0 while the
    loss still asks for x1: the sampler's start from a changed image (``training.scanner_changes``).
    """
    x0, t = noise if noise is not None else training_noise(x1.shape, late_fraction, generator, x1.device, x1.dtype)
    tb = t[:, None, None, None, None]
    x_t = tb * (x1 if start is None else start) + (1 - tb) * x0
    out = net(torch.cat([x_t, cond], dim=1), t)
    if parameterization == "velocity":
        if start is not None:
            raise ValueError("a changed start needs the image parameterization")
        return ((out - (x1 - x0)) ** 2).mean()
    if parameterization == "image":
        return ((out - x1) ** 2).mean()
    raise ValueError(f"unknown parameterization {parameterization!r}; choose from {PARAMETERIZATIONS}")


@torch.no_grad()
def sample(net: nn.Module, cond: torch.Tensor, parameterization: str, *, steps: int, method: str,
           start_time: float = 0.0, start_image: torch.Tensor | None = None,
           atol: float = 5e-5, rtol: float = 5e-5, generator: torch.Generator | None = None,
           autocast: bool = False) -> torch.Tensor:
    """Integrate the learned velocity field from t0 to 1 (eq. 5): returns x1 in flow space, (B, 1, D, H, W).

    Fixed-step methods (euler, midpoint, rk4) take ``steps`` steps; adaptive ones
    (dopri5, ...) use ``atol``/``rtol``. With ``start_time`` > 0, ``start_image``
    (flow space) is mixed with noise as x_t0 = t0 * start + (1 - t0) * noise.
    ``autocast`` runs the network in bfloat16/float16 mixed precision on CUDA.
    """
    shape = (cond.shape[0], 1, *cond.shape[2:])
    x = torch.randn(shape, generator=generator, device=cond.device, dtype=cond.dtype)
    if start_time > 0:
        if start_image is None:
            raise ValueError("start_time > 0 needs a start_image")
        x = start_time * start_image + (1 - start_time) * x

    def field(t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        tt = t.expand(x_t.shape[0]).to(x_t.dtype)
        with torch.autocast(device_type=cond.device.type, enabled=autocast and cond.device.type == "cuda"):
            v = velocity(net, x_t, tt, cond, parameterization)
        return v.to(x_t.dtype)

    if method in FIXED_STEP_METHODS:
        # The step grid itself (steps + 1 times): a step_size option would let torchdiffeq round the float32
        # grid up to an extra, zero-length step that costs a whole step of network evaluations.
        times = torch.linspace(start_time, 1.0, steps + 1, device=cond.device, dtype=torch.float64).to(cond.dtype)
        return odeint(field, x, times, method=method)[-1]
    times = torch.tensor([start_time, 1.0], device=cond.device, dtype=cond.dtype)
    return odeint(field, x, times, method=method, atol=atol, rtol=rtol)[-1]
