"""Subject-level intensity normalization (section 4.1), shared by preprocessing and scoring."""

from __future__ import annotations

import numpy as np

PERCENTILES = (1.0, 99.0)  # section 4.1


def normalize_percentile(
    image: np.ndarray, mask: np.ndarray, percentiles: tuple[float, float] = PERCENTILES
) -> tuple[np.ndarray, float, float]:
    """Min-max normalization between the 1st and 99th percentiles inside the mask (4.1).

    Returns (normalized float32 image clipped to [0, 1] and 0 outside the mask, low, high).
    """
    inside = mask > 0
    low, high = (float(v) for v in np.percentile(image[inside], percentiles))
    if not high > low:
        raise ValueError(f"no intensity range inside the brain mask (percentiles {low} and {high})")
    out = np.clip((image - low) / (high - low), 0.0, 1.0).astype(np.float32)
    out[~inside] = 0.0
    return out, low, high
