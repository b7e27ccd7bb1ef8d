"""Step 2 of preprocessing: N4 bias field correction over the head."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .geometry import to_ants

# N4 on ~6 mm voxels: bias field within r = 0.97-0.99 of a 2 mm fit that takes 25x longer (benchmarks). All 200
# iterations run: fitting on every 6 mm-th voxel until the field changed by < 0.1 % and interpolating it took a
# third to half of the time, but moved the end-to-end benchmark's tissue volumes by 5 mL (BENCHMARKS.md).
N4 = {"spacing_mm": 6.0, "iterations": [50, 50, 50, 50], "tolerance": 1e-7, "spline_distance_mm": 200.0}


def head_mask(data: np.ndarray) -> np.ndarray:
    """The head (everything above the air's noise), holes filled: the region N4 corrects.

    ``ants.get_mask`` thresholds at the mean intensity, which on a head with bright scalp drops grey
    matter; N4 then leaves it uncorrected and the grey/white contrast is distorted.
    """
    threshold = 0.1 * float(np.percentile(data, 99.5))
    labels, n = ndi.label(ndi.binary_opening(data > threshold, iterations=1))
    sizes = np.bincount(labels.ravel())[1:] if n else np.zeros(1)
    # Brain and scalp can be separate pieces (dark skull and CSF between them): keep every large piece.
    mask = np.isin(labels, 1 + np.flatnonzero(sizes >= 0.05 * sizes.max())) if n else labels > 0
    mask = ndi.binary_fill_holes(ndi.binary_closing(mask, iterations=3))
    # A head cut by the field of view is not closed in 3D: fill slice by slice along every axis too.
    for axis in range(3):
        mask = np.stack([ndi.binary_fill_holes(sl) for sl in np.moveaxis(mask, axis, 0)], axis=0)
        mask = np.moveaxis(mask, 0, axis)
    return mask


def bias_correct(data: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, int]:
    """N4 (settings in N4) on ``data`` (X, Y, Z) inside ``mask``, ANTs shrinking it by k = round(6 mm / voxel size)
    and evaluating the field at every voxel. Returns (corrected float32 image (X, Y, Z), k)."""
    import ants

    image = to_ants(data, affine)
    k = max(1, int(round(N4["spacing_mm"] / min(image.spacing))))
    corrected = ants.n4_bias_field_correction(
        image,
        mask=to_ants(mask.astype(np.float32), affine),
        shrink_factor=k,
        convergence={"iters": list(N4["iterations"]), "tol": N4["tolerance"]},
        spline_param=N4["spline_distance_mm"],
    )
    return corrected.numpy(), k
