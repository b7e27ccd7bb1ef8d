"""Image similarity inside the brain: PSNR and SSIM (section 4.4, Table 1).

Both compare images in [0, 1] (data range 1) and are averaged over the voxels
of a brain mask. SSIM uses a 3D Gaussian window (sigma 1.5 voxels, Wang et al.
2004 constants), computed over the whole volume, then averaged in the mask.
``fidelity`` is the paper's scoring: each image is first normalized to its own
1st-99th percentiles inside the mask, so a global scale and offset earn nothing.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .intensity import normalize_percentile


def psnr(image: np.ndarray, reference: np.ndarray, mask: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over the mask."""
    m = mask > 0
    mse = float(np.mean((image[m].astype(np.float64) - reference[m]) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)


def ssim(image: np.ndarray, reference: np.ndarray, mask: np.ndarray, data_range: float = 1.0,
         sigma: float = 1.5) -> float:
    """Mean structural similarity over the mask (3D Gaussian window)."""
    x = image.astype(np.float64)
    y = reference.astype(np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma, truncate=3.5)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s[mask > 0].mean())


def percentile_normalized(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image`` normalized to its 1st-99th percentiles in ``mask`` (all zero if it has no range there)."""
    try:
        return normalize_percentile(image, mask)[0]
    except ValueError:
        return np.zeros(image.shape, np.float32)


def fidelity(image: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(PSNR, SSIM) in ``mask`` after normalizing each image to its 1st-99th percentiles there (section 4.4)."""
    a, b = percentile_normalized(image, mask), percentile_normalized(reference, mask)
    return psnr(a, b, mask), ssim(a, b, mask)


def ncc(image: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    """Normalized cross-correlation over the mask (the refinement objective of section 3.5)."""
    m = mask > 0
    a = image[m].astype(np.float64) - image[m].mean()
    b = reference[m].astype(np.float64) - reference[m].mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-12))


def lesion_contrast(image: np.ndarray, lesion: np.ndarray, surround: np.ndarray) -> float:
    """Mean lesion intensity over the mean of the tissue around it (the paper's Fig. 6 check)."""
    return float(image[lesion].mean() / max(image[surround].mean(), 1e-6))
