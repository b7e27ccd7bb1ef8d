"""The model's grid: the harmonization grid, or one ``factor`` times coarser along each axis.

A coarse-grid model (factor 2: 2.4 mm voxels on the 1.2 mm harmonization grid) sees 8x more anatomy in a
patch of the same size and evaluates a whole volume 8x faster. Its images are block means of the
harmonization grid's, zero-padded at the far ends to a multiple of the U-Net's down-sampling factor, so
training and use see the same grid; its output is interpolated back to the harmonization grid, where the
T1w refinement (``split``) keeps only its low frequencies.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def coarsen(image: np.ndarray, factor: int, multiple: int = 8) -> np.ndarray:
    """Means over ``factor``^3 blocks of ``image`` (D, H, W), its shape first cut to a multiple of ``factor``;
    the result zero-padded at the far ends to a multiple of ``multiple``. ``factor`` 1 returns ``image``."""
    if factor == 1:
        return image
    d, h, w = (s // factor * factor for s in image.shape)
    x = image[:d, :h, :w].astype(np.float32)
    x = x.reshape(d // factor, factor, h // factor, factor, w // factor, factor).mean((1, 3, 5))
    return np.pad(x, [(0, -s % multiple) for s in x.shape])


def coarsen_mask(mask: np.ndarray, factor: int, multiple: int = 8) -> np.ndarray:
    """A brain mask on the coarse grid: the blocks at least half inside ``mask`` (uint8)."""
    if factor == 1:
        return mask
    return (coarsen((mask > 0).astype(np.float32), factor, multiple) >= 0.5).astype(np.uint8)


def refine_grid(image: np.ndarray, shape: tuple[int, int, int], factor: int, order: int = 1) -> np.ndarray:
    """A coarse image back on the harmonization grid of ``shape``: linear interpolation (``order`` 0: nearest)
    with block centres aligned (half a block at the borders takes the nearest block), the padding dropped;
    voxels past the last whole block are zero."""
    if factor == 1:
        return image
    blocks = image[tuple(slice(0, s // factor) for s in shape)]
    up = ndimage.zoom(blocks, factor, order=order, grid_mode=True, mode="nearest")
    out = np.zeros(shape, image.dtype)
    out[:up.shape[0], :up.shape[1], :up.shape[2]] = up
    return out
