"""The edge-to-image network: a 3D U-Net for the velocity field (supplement S3.1).

Five input channels: the noisy image x_t, the edge map e and the three
coordinate channels (i, j, k) in [-1, 1] taken from the full-volume grid
(section 3.3). Width multipliers {1, 2, 4, 8}; each block has two 3D
convolutions with RMS normalization and SiLU and is conditioned on the flow
time t; down-sampling moves 2x2x2 spatial blocks into channels, up-sampling is
nearest-neighbour plus convolution; skip connections join encoder and decoder.
The base width is a parameter: 64 is the paper's, the CPU default is smaller.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class UNetConfig:
    """Hyper-parameters of the edge-to-image U-Net (paper defaults where it gives them)."""

    base_width: int = 64
    multipliers: tuple[int, ...] = (1, 2, 4, 8)
    in_channels: int = 5
    time_dim: int = 128

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        d = dict(d)
        d["multipliers"] = tuple(d["multipliers"])
        return cls(**d)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.multipliers) - 1)


class RMSNorm(nn.Module):
    """RMS normalization over channels of a (B, C, D, H, W) tensor."""

    def __init__(self, channels: int):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(1, channels, 1, 1, 1))
        self.scale = channels**0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.gain * self.scale


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the flow time t in [0, 1], shape (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ConvBlock(nn.Module):
    """Two 3D convolutions, each followed by RMS normalization and SiLU; time enters as scale and shift.

    A 1x1x1 convolution carries the input around the block (residual) when widths differ.
    """

    def __init__(self, in_ch: int, out_ch: int, time_dim: int):
        super().__init__()
        self.conv1 = nn.Conv3d(in_ch, out_ch, 3, padding=1)
        self.norm1 = RMSNorm(out_ch)
        self.conv2 = nn.Conv3d(out_ch, out_ch, 3, padding=1)
        self.norm2 = RMSNorm(out_ch)
        self.time = nn.Linear(time_dim, 2 * out_ch)
        self.skip = nn.Conv3d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        scale, shift = self.time(t_emb)[:, :, None, None, None].chunk(2, dim=1)
        h = self.norm2(self.conv2(h)) * (1 + scale) + shift
        return F.silu(h) + self.skip(x)


class Down(nn.Module):
    """Down-sampling by moving 2x2x2 spatial blocks into channels, then a 1x1x1 convolution."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.proj = nn.Conv3d(8 * in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        x = x.view(b, c, d // 2, 2, h // 2, 2, w // 2, 2)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, c * 8, d // 2, h // 2, w // 2)
        return self.proj(x)


class Up(nn.Module):
    """Up-sampling: nearest-neighbour x2, then a 3x3x3 convolution."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv3d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class EdgeToImageUNet(nn.Module):
    """v_theta(x_t, t; e, i, j, k) of eq. 6: (B, 5, D, H, W) and t of shape (B,) -> (B, 1, D, H, W).

    Spatial sizes must divide by ``config.downsampling_factor`` (8 for four levels).

    Example:
        >>> net = EdgeToImageUNet(UNetConfig(base_width=8))
        >>> net(torch.zeros(1, 5, 16, 16, 16), torch.zeros(1)).shape
        torch.Size([1, 1, 16, 16, 16])
    """

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = config = config or UNetConfig()
        widths = [config.base_width * m for m in config.multipliers]
        td = config.time_dim
        self.time_mlp = nn.Sequential(nn.Linear(td, td), nn.SiLU(), nn.Linear(td, td))
        self.stem = nn.Conv3d(config.in_channels, widths[0], 3, padding=1)
        self.encoder = nn.ModuleList(ConvBlock(w, w, td) for w in widths[:-1])
        self.downs = nn.ModuleList(Down(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.middle = nn.ModuleList([ConvBlock(widths[-1], widths[-1], td), ConvBlock(widths[-1], widths[-1], td)])
        self.ups = nn.ModuleList(Up(b, a) for a, b in zip(widths[:-1], widths[1:]))
        self.decoder = nn.ModuleList(ConvBlock(2 * w, w, td) for w in widths[:-1])
        self.head = nn.Conv3d(widths[0], 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        factor = self.config.downsampling_factor
        if any(s % factor for s in x.shape[2:]):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} must divide by {factor}")
        t_emb = self.time_mlp(time_embedding(t, self.config.time_dim))
        h = self.stem(x)
        skips = []
        for block, down in zip(self.encoder, self.downs):
            h = block(h, t_emb)
            skips.append(h)
            h = down(h)
        for block in self.middle:
            h = block(h, t_emb)
        for up, block in zip(reversed(self.ups), reversed(self.decoder)):
            h = block(torch.cat([up(h), skips.pop()], dim=1), t_emb)
        return self.head(h)


def coordinate_grid(shape: tuple[int, int, int]) -> torch.Tensor:
    """The three coordinate channels of the full volume, each in [-1, 1]: shape (3, *shape)."""
    axes = [torch.linspace(-1.0, 1.0, n) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))
