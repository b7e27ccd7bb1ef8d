"""Random scanner-like changes of target-domain patches: in training, the start the T1w sampler meets.

A T1w sampler started late (``start_time`` 0.9) starts from the noised source, histogram-matched and
refined (``flow.sample``): what separates that start from a target image is another scanner's
contrast, not Gaussian noise alone. With ``altered_start_fraction`` > 0, that share of each batch builds
x_t = t * start + (1 - t) * x0 from a changed copy of the target patch, histogram-matched back to
it, at a time t near t0; the loss still asks for the unchanged patch (image parameterization). The
changes are generic and drawn per patch:

* two random monotone intensity curves, blended by a smooth random field, so each tissue's
  intensity moves, and moves differently across the patch (histogram matching cannot undo that);
* a smooth multiplicative bias field;
* Gaussian blur along one random axis (thicker slices);
* Gaussian noise;
* after the histogram matching, a mild third curve: the subject's histogram is not the target's.

Only target-domain images are used, so training stays blind to the source scanners. As with
``flow.training_noise``, the random draws are made for the whole global batch (``draw``) and
applied to this process's part (``apply``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CURVE_KNOTS = 6  # segments of the random intensity curve
FIELD_NODES = 3  # a smooth field is a 3 x 3 x 3 random grid, trilinearly upsampled to the patch
MAX_BIAS = 0.25  # bias field exp(b * (2 u - 1)), b ~ U(0, MAX_BIAS)
MAX_BLUR_VOX = 1.5
MAX_NOISE = 0.04  # in [0, 1] image units
MAX_RESIDUAL = 0.3  # weight of the curve applied after histogram matching


@dataclass
class Changes:
    """The random draws of one batch's changes (B patches): which are changed and how."""

    chosen: torch.Tensor  # (B,) bool
    times: torch.Tensor  # (B,) t for the changed patches
    curves: torch.Tensor  # (B, 3, CURVE_KNOTS + 1) monotone curves' values at 0, 1/K, ..., 1
    curve_field: torch.Tensor  # (B, 1, n, n, n) weight of the second curve against the first
    residual: torch.Tensor  # (B,) weight of the third curve, applied after histogram matching
    bias: torch.Tensor  # (B, 1, n, n, n) log bias field
    blur_sigma: torch.Tensor  # (B,)
    blur_axis: torch.Tensor  # (B,) in 0..2
    noise: torch.Tensor  # (B, 1, P, P, P) unit Gaussian noise
    noise_level: torch.Tensor  # (B,)

    def part(self, sl: slice) -> "Changes":
        return Changes(*(getattr(self, f)[sl] for f in self.__dataclass_fields__))


def draw(shape: tuple[int, ...], fraction: float, times: tuple[float, float], generator: torch.Generator,
         device: torch.device | str = "cpu") -> Changes:
    """Draw the changes of a global batch of patches of ``shape`` (B, 1, P, P, P)."""
    b = shape[0]

    def u(*s: int) -> torch.Tensor:
        return torch.rand(s, generator=generator, device=device)

    chosen = u(b) < fraction
    lo, hi = times
    increments = u(b, 3, CURVE_KNOTS) + 0.1
    curves = torch.cat([torch.zeros(b, 3, 1, device=device), increments.cumsum(2)], 2)
    return Changes(chosen=chosen, times=lo + (hi - lo) * u(b), curves=curves / curves[:, :, -1:],
                   curve_field=u(b, 1, FIELD_NODES, FIELD_NODES, FIELD_NODES), residual=MAX_RESIDUAL * u(b),
                   bias=MAX_BIAS * u(b)[:, None, None, None, None] * (2 * u(b, 1, *(FIELD_NODES,) * 3) - 1),
                   blur_sigma=MAX_BLUR_VOX * u(b), blur_axis=(3 * u(b)).long().clamp(max=2),
                   noise=torch.randn(shape, generator=generator, device=device), noise_level=MAX_NOISE * u(b))


def monotone_curve(x: torch.Tensor, curve: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear map of x (B, 1, P, P, P) in [0, 1] through ``curve`` (B, K + 1) at K equal segments."""
    k = curve.shape[1] - 1
    pos = x.clamp(0, 1).flatten(1) * k
    idx = pos.floor().long().clamp(max=k - 1)
    lo, hi = curve.gather(1, idx), curve.gather(1, idx + 1)
    return (lo + (pos - idx) * (hi - lo)).view_as(x)


def blur_along(x: torch.Tensor, sigma: float, axis: int) -> torch.Tensor:
    """Gaussian blur of one patch (1, 1, P, P, P) along spatial ``axis`` (0-2), reflecting at the borders."""
    if sigma < 0.2:
        return x
    radius = int(3 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    shape = [1, 1, 1, 1, 1]
    shape[2 + axis] = kernel.numel()
    pad = [0] * 6
    pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
    return F.conv3d(F.pad(x, pad, mode="reflect"), kernel.view(shape))


def match_histogram(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Each patch's values replaced by the reference patch's values of the same rank (exact matching)."""
    flat = x.flatten(1)
    ranks = flat.argsort(1).argsort(1)
    return reference.flatten(1).sort(1).values.gather(1, ranks).view_as(x)


def apply(x1: torch.Tensor, changes: Changes) -> torch.Tensor:
    """The start images (B, 1, P, P, P), flow space: changed and histogram-matched where chosen, else x1."""
    image = (x1 + 1) / 2
    size = x1.shape[2:]

    def field(nodes: torch.Tensor) -> torch.Tensor:
        return F.interpolate(nodes, size=size, mode="trilinear", align_corners=True)

    inside = image > 0  # the brain; zero outside it, as in a preprocessed image
    w = field(changes.curve_field)
    out = (1 - w) * monotone_curve(image, changes.curves[:, 0]) + w * monotone_curve(image, changes.curves[:, 1])
    out = out * torch.exp(field(changes.bias))
    out = torch.cat([blur_along(out[i:i + 1], float(changes.blur_sigma[i]), int(changes.blur_axis[i]))
                     for i in range(out.shape[0])])
    out = out + changes.noise_level[:, None, None, None, None] * changes.noise
    out = torch.where(inside, out.clamp(min=1e-6), torch.zeros_like(out))  # brain values rank above the background
    matched = match_histogram(out, image)
    r = changes.residual[:, None, None, None, None]
    start = ((1 - r) * matched + r * monotone_curve(matched, changes.curves[:, 2])) * 2 - 1
    return torch.where(changes.chosen[:, None, None, None, None], start, x1)
