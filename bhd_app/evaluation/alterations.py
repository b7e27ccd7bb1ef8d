"""Known scanner-like changes of a real target-domain image: traveling subjects with real anatomy.

A held-out image of the target scanner (on the grid, [0, 1], zero outside the brain) is altered
by changes of the kind that separate scanners, then harmonized back and scored against the
unaltered original: same anatomy, same position, known truth. Each change is a function of
arrays only:

* ``tissue_contrast``: new intensities per tissue class, with memberships taken from the
  spatially smoothed segmentation and a separate contrast for deep grey matter, so that no
  global (monotone or not) intensity map can undo it;
* ``bias_field``: a smooth multiplicative field;
* ``noise``: Gaussian noise of a given level;
* ``thick_slices``: blur along one axis (thicker slices);
* T2w-like re-rendering for contrast conversion (``SOURCES['t2w_like']``).

``SOURCES`` names the source "scanners" used by ``benchmarks/real_traveling.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..method.intensity import normalize_percentile

TISSUES = ("csf", "gm", "wm")


def tissue_memberships(image: np.ndarray, mask: np.ndarray, smooth_vox: float = 1.0) -> dict[str, np.ndarray]:
    """Soft CSF/GM/WM memberships (each (D, H, W), summing to 1 in the mask) from a 3-class intensity
    clustering (k-means on the brain's intensities), smoothed spatially by ``smooth_vox``."""
    values = image[mask > 0]
    centres = np.quantile(values, [0.1, 0.45, 0.85])
    for _ in range(20):
        labels = np.argmin(np.abs(values[:, None] - centres[None]), axis=1)
        centres = np.array([values[labels == k].mean() for k in range(3)])
    hard = np.zeros(image.shape, np.int8)
    hard[mask > 0] = np.argmin(np.abs(values[:, None] - centres[None]), axis=1)
    out = {}
    for k, name in enumerate(TISSUES):
        out[name] = ndimage.gaussian_filter((hard == k).astype(np.float32) * (mask > 0), smooth_vox)
    total = sum(out.values()) + 1e-6
    return {name: np.where(mask > 0, m / total, 0).astype(np.float32) for name, m in out.items()}


def deep_region(shape: tuple[int, ...], mask: np.ndarray, fraction: float = 0.35) -> np.ndarray:
    """A smooth weight (D, H, W) in [0, 1], 1 in the brain's central ellipsoid (deep grey matter) and 0 outside it."""
    centre = np.array(ndimage.center_of_mass(mask > 0))
    nz = np.argwhere(mask > 0)
    radii = (nz.max(0) - nz.min(0)) / 2 * fraction
    grid = np.indices(shape, dtype=np.float32)
    r2 = sum(((grid[a] - centre[a]) / radii[a]) ** 2 for a in range(3))
    return np.clip(1.5 - r2, 0, 1).astype(np.float32)


def tissue_contrast(image: np.ndarray, mask: np.ndarray, levels: dict[str, float], deep_gm: float,
                    texture: float = 1.0) -> np.ndarray:
    """Re-draw the tissues at new mean ``levels`` (csf, gm, wm); grey matter in the deep region at ``deep_gm``.

    Within-tissue detail is kept as ``texture`` times the image's deviation from its tissue means.
    """
    memberships = tissue_memberships(image, mask)
    means = {t: float((image * m).sum() / m.sum()) for t, m in memberships.items()}
    smooth_mean = sum(means[t] * m for t, m in memberships.items())
    deep = deep_region(image.shape, mask)
    gm_level = levels["gm"] * (1 - deep) + deep_gm * deep
    new = memberships["csf"] * levels["csf"] + memberships["gm"] * gm_level + memberships["wm"] * levels["wm"]
    out = new + texture * (image - smooth_mean)
    return np.where(mask > 0, out, 0).astype(np.float32)


def bias_field(shape: tuple[int, ...], strength: float, seed: int) -> np.ndarray:
    """A smooth multiplicative field exp(strength * g), g a unit-RMS random field smoothed over ~1/3 of the grid."""
    rng = np.random.default_rng(seed)
    g = ndimage.gaussian_filter(rng.standard_normal(shape), min(shape) / 6, mode="reflect")
    g = (g - g.mean()) / (g.std() + 1e-12)
    return np.exp(strength * g).astype(np.float32)


def noise(image: np.ndarray, level: float, seed: int) -> np.ndarray:
    return (image + level * np.random.default_rng(seed).standard_normal(image.shape)).astype(np.float32)


def thick_slices(image: np.ndarray, axis: int, sigma_vox: float) -> np.ndarray:
    return ndimage.gaussian_filter1d(image, sigma_vox, axis=axis).astype(np.float32)


@dataclass(frozen=True)
class SourceScanner:
    """A known alteration: tissue levels, deep-GM level, texture gain, bias, noise and slice blur."""

    suffix: str
    levels: dict
    deep_gm: float
    texture: float = 1.0
    bias: float = 0.0
    noise: float = 0.0
    slice_axis: int = 2
    slice_sigma: float = 0.0

    def apply(self, image: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray:
        """The altered image (D, H, W), normalized 1-99 % in the brain like a preprocessed input (section 4.1)."""
        out = tissue_contrast(image, mask, self.levels, self.deep_gm, self.texture)
        if self.bias:
            out = out * bias_field(image.shape, self.bias, seed)
        if self.slice_sigma:
            out = thick_slices(out, self.slice_axis, self.slice_sigma)
        if self.noise:
            out = noise(out, self.noise, seed + 1)
        out[mask == 0] = 0
        return normalize_percentile(out, mask)[0]


# Target (IXI-HH, normalized): CSF ~0.25, GM ~0.55, WM ~0.85. The T1w sources change the GM/WM
# contrast, the deep-GM contrast and the texture, and add bias, noise and thick slices.
SOURCES = {
    "low_contrast_15t": SourceScanner("T1w", {"csf": 0.20, "gm": 0.62, "wm": 0.80}, deep_gm=0.74, texture=0.8,
                                      bias=0.12, noise=0.02, slice_sigma=1.0),
    "high_contrast_3t": SourceScanner("T1w", {"csf": 0.12, "gm": 0.45, "wm": 0.90}, deep_gm=0.52, texture=1.3,
                                      bias=0.08, noise=0.01),
    "flash_like": SourceScanner("T1w", {"csf": 0.30, "gm": 0.70, "wm": 0.82}, deep_gm=0.80, texture=0.7,
                                bias=0.15, noise=0.03, slice_axis=0, slice_sigma=1.5),
    "t2w_like": SourceScanner("T2w", {"csf": 0.95, "gm": 0.55, "wm": 0.35}, deep_gm=0.45, texture=-0.6,
                              bias=0.10, noise=0.02),
}


def draw_lesions(image: np.ndarray, mask: np.ndarray, count: int = 3, radius: float = 3.0, ratio: float = 0.6,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``count`` T1-hypointense white-matter lesions (``ratio`` x the local WM) into a target image.

    Returns (image with lesions, lesion core (bool), white matter 2-3 voxels around it (bool)).
    """
    wm = tissue_memberships(image, mask)["wm"]
    deep_wm = ndimage.binary_erosion(wm > 0.9, iterations=int(radius) + 2)
    candidates = np.argwhere(deep_wm)
    rng = np.random.default_rng(seed)
    grid = np.indices(image.shape, dtype=np.float32)
    lesion = np.zeros(image.shape, bool)
    for centre in candidates[rng.choice(len(candidates), count, replace=False)]:
        lesion |= sum((grid[a] - centre[a]) ** 2 for a in range(3)) <= radius**2
    soft = np.maximum(lesion, ndimage.gaussian_filter(lesion.astype(np.float32), 0.7))  # soft rim, full core
    out = image * (1 - (1 - ratio) * soft)
    shell = ndimage.binary_dilation(lesion, iterations=3) & ~ndimage.binary_dilation(lesion, iterations=1)
    return out.astype(np.float32), lesion, shell & (wm > 0.9)
