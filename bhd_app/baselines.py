"""Blind baselines that need only target-domain images (section 4.4).

* Histogram matching: the source's brain intensities are mapped, rank for
  rank, onto the target-domain intensity distribution stored with the model
  (quantiles pooled over the training images).
"""

from __future__ import annotations

import numpy as np

N_QUANTILES = 1001


def target_quantiles(images: list[np.ndarray], masks: list[np.ndarray], n: int = N_QUANTILES) -> np.ndarray:
    """The target-domain histogram as ``n`` quantiles of the pooled brain intensities."""
    values = np.concatenate([im[m > 0] for im, m in zip(images, masks)])
    return np.quantile(values, np.linspace(0, 1, n)).astype(np.float32)


def histogram_matching(image: np.ndarray, mask: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Map the brain voxels of ``image`` onto the target quantiles; zero outside the mask."""
    m = mask > 0
    src = np.quantile(image[m], np.linspace(0, 1, len(quantiles)))
    out = np.zeros_like(image, dtype=np.float32)
    # Ties (flat regions) are spread by interpolating on the source quantiles.
    out[m] = np.interp(image[m], src, quantiles)
    return out
