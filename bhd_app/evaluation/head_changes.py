"""Scanner changes of a raw head in native space: the end-to-end test family, held out from training.

A raw target-scanner head (with skull, before N4 and brain extraction) is re-rendered the way another
scanner could have acquired it; the whole participant level then runs on it (``benchmarks/end_to_end.py``).
Every kind differs from training's altered starts (``training.scanner_changes``: monotone intensity curves
blended by a smooth 3 x 3 x 3 random field, an exponential bias on a 3 x 3 x 3 grid, Gaussian blur along one
axis, Gaussian noise) and from the grid-space sources of ``alterations``:

* ``tissue_gains``: each class (CSF, cortical grey matter, deep grey matter, white matter, non-brain) scaled
  by its own gain, with the segmentation's sharp boundaries: no global intensity map and no smooth field
  undoes it, since deep and cortical grey matter change differently;
* ``coil_field``: the receive profile of a ring of surface coils (Gaussian sensitivities outside the head);
* ``thick_slices``: slices ``factor`` times thicker: a box profile sampled every ``factor`` slices and
  interpolated back (partial volume and interpolation, not a Gaussian blur);
* ``rician_noise``: the magnitude of complex Gaussian noise;
* ``sharpening``: a vendor-like reconstruction: k-space truncation (Gibbs ringing), then unsharp masking;
* ``render``: new levels for every class at once (contrast conversion: T2w-like, FLAIR-like).

Labels are the group level's 3-class segmentation of the unaltered head (0 outside the brain, 1 CSF, 2 GM,
3 WM); all arrays are (X, Y, Z) on the head's own grid, intensities in the raw image's units.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

CLASSES = ("other", "csf", "gm", "deep_gm", "wm")


def deep_region(brain: np.ndarray, zooms: tuple[float, ...], depth_mm: float = 25.0) -> np.ndarray:
    """Voxels (bool, X, Y, Z) deeper than ``depth_mm`` inside the brain mask: where the deep grey nuclei are."""
    return ndimage.distance_transform_edt(brain > 0, sampling=zooms) > depth_mm


def memberships(labels: np.ndarray, deep: np.ndarray, smooth_vox: float = 0.5) -> dict[str, np.ndarray]:
    """Per-class weights (each X, Y, Z, summing to 1) from hard labels, grey matter split into cortical and
    deep; smoothed by ``smooth_vox`` only, so the boundaries stay those of the anatomy."""
    hard = {"other": labels == 0, "csf": labels == 1, "gm": (labels == 2) & ~deep, "deep_gm": (labels == 2) & deep,
            "wm": labels == 3}
    soft = {k: ndimage.gaussian_filter(v.astype(np.float32), smooth_vox) for k, v in hard.items()}
    total = sum(soft.values()) + 1e-6
    return {k: (v / total).astype(np.float32) for k, v in soft.items()}


def tissue_gains(head: np.ndarray, weights: dict[str, np.ndarray], gains: dict[str, float]) -> np.ndarray:
    """``head`` with each class multiplied by its gain (classes missing from ``gains`` keep gain 1)."""
    gain = sum(weights[k] * gains.get(k, 1.0) for k in CLASSES)
    return (head * gain).astype(np.float32)


def render(head: np.ndarray, weights: dict[str, np.ndarray], levels: dict[str, float], texture: float) -> np.ndarray:
    """Every brain class drawn at a new mean level (fractions of the head's 99th percentile); within a class the
    relative variation of ``head`` is kept with gain ``texture`` (negative: inverted). Non-brain keeps ``head``
    times ``levels['other']``."""
    scale = float(np.percentile(head[head > 0], 99))
    out = weights["other"] * head * levels.get("other", 1.0)
    for k in CLASSES[1:]:
        inside = weights[k] > 0.5
        mean = float(head[inside].mean()) if inside.any() else 1.0
        out = out + weights[k] * scale * levels[k] * np.maximum(1.0 + texture * (head / mean - 1.0), 0.0)
    return out.astype(np.float32)


def coil_field(shape: tuple[int, ...], zooms: tuple[float, ...], head: np.ndarray, strength: float,
               coils: int = 8, width_mm: float = 70.0, seed: int = 0) -> np.ndarray:
    """A multiplicative receive field (X, Y, Z) of ``coils`` surface coils on a ring around the head's centre in
    the plane of the first two axes, each a Gaussian sensitivity of ``width_mm`` with a random gain; scaled so its
    range over the head is ``strength`` (0.35: the brightest voxel 35 % above the darkest, about)."""
    rng = np.random.default_rng(seed)
    centre = np.array(ndimage.center_of_mass(head > 0)) * zooms
    extent = (np.ptp(np.argwhere(head > 0), axis=0) * zooms) / 2 + 15.0
    axes = [np.arange(n, dtype=np.float32) * z for n, z in zip(shape, zooms)]
    field = np.zeros(shape, np.float32)
    for angle in rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi, coils, endpoint=False):
        p = centre + np.array([np.cos(angle) * extent[0], np.sin(angle) * extent[1], rng.uniform(-0.5, 0.5) * extent[2]])
        g = [np.exp(-((a - c) ** 2) / (2 * width_mm**2)) for a, c in zip(axes, p)]
        field += rng.uniform(0.6, 1.4) * g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :]
    inside = field[head > 0]
    lo, hi = float(inside.min()), float(inside.max())
    return (1.0 + strength * ((field - lo) / (hi - lo) - 0.5)).astype(np.float32)


def thick_slices(image: np.ndarray, axis: int, factor: int) -> np.ndarray:
    """Slices ``factor`` times thicker along ``axis``: the mean of each run of ``factor`` slices, placed at the
    run's centre and linearly interpolated back onto every slice (edge slices take the nearest run)."""
    moved = np.moveaxis(image.astype(np.float32), axis, 0)
    n = moved.shape[0]
    runs = [moved[k:k + factor].mean(axis=0) for k in range(0, n, factor)]
    centres = np.array([k + (min(factor, n - k) - 1) / 2 for k in range(0, n, factor)])
    position = np.clip(np.arange(n, dtype=np.float64), centres[0], centres[-1])
    upper = np.clip(np.searchsorted(centres, position, side="right"), 1, len(centres) - 1)
    w = ((position - centres[upper - 1]) / (centres[upper] - centres[upper - 1]))[:, None, None]
    stack = np.stack(runs)
    out = (1 - w) * stack[upper - 1] + w * stack[upper]
    return np.moveaxis(out.astype(np.float32), 0, axis)


def rician_noise(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """|image + n1 + i n2| with n1, n2 ~ N(0, sigma^2): the magnitude image of a noisy complex acquisition."""
    rng = np.random.default_rng(seed)
    real = image + rng.normal(0.0, sigma, image.shape)
    return np.sqrt(real**2 + rng.normal(0.0, sigma, image.shape) ** 2).astype(np.float32)


def sharpening(image: np.ndarray, keep: float = 0.6, amount: float = 0.8, sigma_vox: float = 1.0) -> np.ndarray:
    """A vendor-like reconstruction: k-space kept up to ``keep`` of Nyquist on every axis (a box, hence Gibbs
    ringing), then unsharp masking x + ``amount`` (x - G_sigma x); clipped at 0 as a magnitude image."""
    k = np.fft.fftn(image)
    for axis, n in enumerate(image.shape):
        f = np.abs(np.fft.fftfreq(n)) <= 0.5 * keep
        k = k * f.reshape([-1 if a == axis else 1 for a in range(image.ndim)])
    low = np.real(np.fft.ifftn(k))
    out = low + amount * (low - ndimage.gaussian_filter(low, sigma_vox))
    return np.maximum(out, 0.0).astype(np.float32)


# The test changes: (suffix the image is run as, the change). T1w kinds one at a time, then combined; T2w-like
# and FLAIR-like renderings for contrast conversion. Seeds come from the head.
CHANGES = {
    "tissue": ("T1w", lambda h, w, z, s: tissue_gains(h, w, {"csf": 1.6, "gm": 1.15, "deep_gm": 0.85, "wm": 0.93,
                                                              "other": 1.1})),
    "coil": ("T1w", lambda h, w, z, s: h * coil_field(h.shape, z, h, 0.4, seed=s)),
    "slices": ("T1w", lambda h, w, z, s: thick_slices(h, 1, 3)),
    "noise": ("T1w", lambda h, w, z, s: rician_noise(h, 0.05 * float(np.percentile(h, 99)), s)),
    "recon": ("T1w", lambda h, w, z, s: sharpening(h)),
    "combined": ("T1w", lambda h, w, z, s: rician_noise(
        thick_slices(tissue_gains(h, w, {"csf": 1.4, "gm": 1.1, "deep_gm": 1.2, "wm": 0.95})
                     * coil_field(h.shape, z, h, 0.3, seed=s), 0, 2), 0.03 * float(np.percentile(h, 99)), s + 1)),
    "t2w_like": ("T2w", lambda h, w, z, s: render(h, w, {"csf": 0.95, "gm": 0.6, "deep_gm": 0.5, "wm": 0.4,
                                                         "other": 0.7}, -0.5)),
    "flair_like": ("T2w", lambda h, w, z, s: render(h, w, {"csf": 0.08, "gm": 0.8, "deep_gm": 0.7, "wm": 0.35,
                                                           "other": 0.8}, 0.5)),
}


def apply_change(name: str, head: np.ndarray, weights: dict[str, np.ndarray], zooms: tuple[float, ...],
                 seed: int) -> tuple[str, np.ndarray]:
    """(suffix, the head re-rendered by change ``name`` of ``CHANGES``), non-negative float32 (X, Y, Z)."""
    suffix, change = CHANGES[name]
    return suffix, np.maximum(change(head.astype(np.float32), weights, zooms, seed), 0.0).astype(np.float32)
