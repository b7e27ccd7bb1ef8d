"""Blind baselines that need only target-domain images (section 4.4).

* Histogram matching: the source's brain intensities are mapped, rank for
  rank, onto the target-domain intensity distribution stored with the model
  (quantiles pooled over the training images).
* SSIMH (spectrum swapping, section 4.4): the lowest 3D DCT frequencies of
  the source are replaced by those of the averaged target-domain image; only
  that low-frequency block of the average is stored with the model.
"""

from __future__ import annotations

import numpy as np
from scipy.fft import dctn, idctn

from .edges import canny_edges

N_QUANTILES = 1001
SPECTRUM_BLOCK = 16  # low-frequency DCT coefficients per axis stored with the model
SSIMH_CUTOFF = 16  # coefficients per axis swapped by default (chosen on the validation subjects, BENCHMARKS.md)


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


def target_spectrum(images: list[np.ndarray], block: int = SPECTRUM_BLOCK) -> np.ndarray:
    """The low-frequency ``block``^3 corner of the 3D DCT (orthonormal) of the averaged target-domain image."""
    mean = np.mean(np.stack([np.asarray(im, np.float32) for im in images]), axis=0)
    return dctn(mean, norm="ortho")[:block, :block, :block].astype(np.float32)


def spectrum_swapping(image: np.ndarray, mask: np.ndarray, spectrum: np.ndarray,
                      cutoff: int = SSIMH_CUTOFF) -> np.ndarray:
    """SSIMH: swap the source's ``cutoff``^3 lowest DCT coefficients for the target average's; zero outside the mask.

    ``image`` must be on the grid that ``spectrum`` was computed on (the harmonization grid).
    """
    if not 0 < cutoff <= min(spectrum.shape):
        raise ValueError(f"cutoff must be in 1..{min(spectrum.shape)}, got {cutoff}")
    coeffs = dctn(np.asarray(image, np.float32), norm="ortho")
    coeffs[:cutoff, :cutoff, :cutoff] = spectrum[:cutoff, :cutoff, :cutoff]
    out = idctn(coeffs, norm="ortho").astype(np.float32)
    out[mask == 0] = 0
    return np.clip(out, 0.0, 1.0)


def random_edges(source: np.ndarray, brain: np.ndarray, seed: int) -> np.ndarray:
    """Table S3's unconditional condition: as many edge voxels as the source's edge map, at random in the brain.

    As in the paper, the unconditional variant needs no separate model, only this random edge condition.
    """
    edge_map, _ = canny_edges(source)
    edges = np.zeros_like(edge_map)
    rng = np.random.default_rng(seed)
    edges.flat[rng.choice(np.flatnonzero(brain), size=int(edge_map.sum()), replace=False)] = 1
    return edges
