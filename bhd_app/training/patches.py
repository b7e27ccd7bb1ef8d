"""Simple and multi-stride patches of the target-domain volumes (section 3.4).

A *simple patch* (stride 1) is a sub-volume of the patch size; a *multi-stride
patch* is a random sub-volume whose size along each axis is an n-multiple of
the patch size (n drawn per axis), down-sampled to the patch size by strided
indexing. The coordinate channels are taken from the full-volume grid the same
way, so the network always knows where a patch came from. Random flips on all
three axes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..method.flow import to_flow_space
from ..method.model import coordinate_grid


def patch_strides(volume_shape: tuple[int, ...], patch_size: int, multi_stride: bool,
                  rng: np.random.Generator) -> tuple[int, int, int]:
    """Per-axis strides n: all 1 for a simple patch; for a multi-stride patch n ~ U{1..max}, not all 1."""
    if not multi_stride:
        return (1, 1, 1)
    largest = [max(s // patch_size, 1) for s in volume_shape]
    if max(largest) == 1:
        return (1, 1, 1)
    while True:
        strides = tuple(int(rng.integers(1, m + 1)) for m in largest)
        if max(strides) > 1:
            return strides


def patch_slices(volume_shape: tuple[int, ...], patch_size: int, strides: tuple[int, int, int],
                 rng: np.random.Generator) -> tuple[slice, slice, slice]:
    """Slices that cut a sub-volume of n * patch_size voxels and keep every n-th voxel (section 3.4)."""
    out = []
    for size, n in zip(volume_shape, strides):
        extent = n * patch_size
        start = int(rng.integers(0, size - extent + 1))
        out.append(slice(start, start + extent, n))
    return tuple(out)


class PatchSampler:
    """Draws multi-stride / simple patches of (image, edge map, coordinates) from whole volumes.

    ``images`` and ``edge_maps`` are lists of arrays on the same grid, images in [0, 1].
    A batch is (x1 in flow space (B, 1, P, P, P), condition (B, 4, P, P, P)).
    """

    def __init__(self, images: list[np.ndarray], edge_maps: list[np.ndarray], patch_size: int,
                 multi_stride_fraction: float, seed: int = 0):
        shapes = {im.shape for im in images} | {e.shape for e in edge_maps}
        if len(shapes) != 1:
            raise ValueError(f"all volumes must share one grid, got shapes {shapes}")
        self.shape = shapes.pop()
        if min(self.shape) < patch_size:
            raise ValueError(f"patch size {patch_size} exceeds the volume shape {self.shape}")
        self.volumes = [torch.from_numpy(np.stack([to_flow_space(im), e]).astype(np.float32))
                        for im, e in zip(images, edge_maps)]
        self.coords = coordinate_grid(self.shape)
        self.patch_size = patch_size
        self.multi_stride_fraction = multi_stride_fraction
        self.rng = np.random.default_rng(seed)

    def _draw(self) -> tuple[int, tuple[slice, slice, slice], list[int]]:
        """The random choices of one patch: volume, slices, flipped dimensions."""
        volume = int(self.rng.integers(len(self.volumes)))
        strides = patch_strides(self.shape, self.patch_size, self.rng.random() < self.multi_stride_fraction, self.rng)
        sl = patch_slices(self.shape, self.patch_size, strides, self.rng)
        flips = [d + 1 for d in range(3) if self.rng.random() < 0.5]
        return volume, sl, flips

    def _cut(self, volume: int, sl: tuple[slice, slice, slice], flips: list[int]) -> torch.Tensor:
        p = torch.cat([self.volumes[volume][(slice(None), *sl)], self.coords[(slice(None), *sl)]])
        return p.flip(flips) if flips else p

    def patch(self) -> torch.Tensor:
        """One patch as (5, P, P, P): image, edge map, three coordinate channels."""
        return self._cut(*self._draw())

    def batch(self, size: int, part: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of ``size`` patches, or only its ``part`` (the random draws are those of the whole batch)."""
        draws = [self._draw() for _ in range(size)]
        b = torch.stack([self._cut(*d) for d in draws[part or slice(None)]])
        return b[:, :1].contiguous(), b[:, 1:].contiguous()
