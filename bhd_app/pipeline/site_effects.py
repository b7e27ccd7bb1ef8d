"""Downstream site effects of one image set: tissue volumes, a site classifier, traveling-subject agreement.

Every function takes images on the harmonization grid (D, H, W), in [0, 1], zero outside the brain
mask, and knows nothing of BIDS. The group level (``group.py``) runs them on each condition: the
preprocessed images (before), the harmonized images of the method that was run, and histogram
matching computed from the preprocessed images.

* ``segment``: three tissue classes (CSF, GM, WM) in the brain mask, Atropos's model (Gaussian classes from
  k-means, a light MRF prior) in numpy; ``tissue_volumes`` counts them in mL of template space.
* ``scanner_effect``: how much of a volume's variance the scanner explains (one-way ANOVA F, p,
  eta-squared; with repeated subjects also the partial eta-squared of scanner given subject).
* ``image_features`` + ``site_classifier``: leave-one-out accuracy of a ridge classifier (scikit-learn)
  predicting the scanner from intensity percentiles, tissue medians, GM/WM contrast and texture.
* ``traveling_agreement``: the same subject on two scanners, the second rigidly registered onto the
  first (ANTs), compared by PSNR/SSIM after percentile normalization (``metrics.fidelity``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, stats

from ..method.metrics import fidelity
from .templates import harmonization_grid

TISSUES = ("CSF", "GM", "WM")  # labels 1, 2, 3 of ``segment``
PERCENTILES = (5, 25, 50, 75, 95)
FEATURES = (tuple(f"brain_p{p}" for p in PERCENTILES) + tuple(f"{t}_median" for t in TISSUES)
            + ("GM_WM_contrast", "WM_gradient", "WM_local_sd"))


def voxel_ml() -> float:
    """The volume of one voxel of the harmonization grid in mL."""
    return float(abs(np.linalg.det(harmonization_grid().affine[:3, :3]))) / 1000.0


def _neighbour_sum(fields: np.ndarray) -> np.ndarray:
    """Sum of each field (..., D, H, W) over the 26 neighbours of every voxel, weighted by inverse distance in
    voxels (1, 1/sqrt 2, 1/sqrt 3); zero beyond the array's edges."""
    def pair(f: np.ndarray, axis: int) -> np.ndarray:  # f[i - 1] + f[i + 1] along one axis
        out = np.zeros_like(f)
        lo, hi = [slice(None)] * f.ndim, [slice(None)] * f.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        out[tuple(lo)] += f[tuple(hi)]
        out[tuple(hi)] += f[tuple(lo)]
        return out

    x, y, z = pair(fields, -3), pair(fields, -2), pair(fields, -1)
    xy = pair(x, -2)
    faces, edges, corners = x + y + z, xy + pair(x, -1) + pair(y, -1), pair(xy, -1)
    return faces + np.float32(2 ** -0.5) * edges + np.float32(3 ** -0.5) * corners


def _kmeans_1d(values: np.ndarray, k: int = 3, iterations: int = 200) -> np.ndarray:
    """Class (0..k-1, by increasing mean) of each value: k-means started from k means evenly spaced over the range."""
    ordered = np.sort(values)
    cumulative = np.concatenate([[0.0], np.cumsum(ordered, dtype=np.float64)])
    means = ordered[0] + (ordered[-1] - ordered[0]) * (np.arange(k) + 0.5) / k
    for _ in range(iterations):
        bounds = np.concatenate([[0], np.searchsorted(ordered, (means[1:] + means[:-1]) / 2), [ordered.size]])
        counts = np.diff(bounds)
        new = np.where(counts > 0, np.diff(cumulative[bounds]) / np.maximum(counts, 1), means)
        if np.array_equal(new, means):
            break
        means = new
    return np.searchsorted((means[1:] + means[:-1]) / 2, values)


def segment(image: np.ndarray, mask: np.ndarray, mrf: float = 0.1, iterations: int = 5) -> np.ndarray:
    """Tissue labels (D, H, W) uint8: 0 outside ``mask``, 1 CSF, 2 GM, 3 WM (ordered by mean intensity, T1w).

    Atropos's model and schedule (ANTs; Avants et al. 2011), about 12 times faster in numpy: three Gaussian
    classes started by k-means from evenly spaced means, a Potts MRF on the 26-neighbourhood (weight ``mrf`` per
    neighbour with the same label, neighbours weighted by inverse distance in voxels). Each iteration updates
    the labels from the current classes and the neighbours' labels (iterated conditional modes, all voxels at
    once), recomputes the posteriors with the new labels, relabels, and refits the classes weighted by the
    posteriors; it stops when the mean largest posterior falls, after ``iterations`` at most. On the example
    dataset's images it labels 99.8 % of brain voxels as ``ants.atropos(i="kmeans[3]", m="[0.1,1x1x1]",
    c="[5,0]")`` does (BENCHMARKS.md, "Group level"). ValueError where a class comes out empty (an image
    without tissue contrast), where Atropos fails too.
    """
    brain = np.asarray(mask) > 0
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in ndimage.find_objects(brain.astype(np.uint8))[0])
    inside = brain[box]
    x = np.asarray(image, np.float32)[box][inside]
    x64 = x.astype(np.float64)
    labels = _kmeans_1d(x)
    total = _neighbour_sum(inside.astype(np.float32))[inside]  # every in-mask neighbour, any label
    one_hot = np.zeros((2, *inside.shape), np.float32)

    def fit(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # (3, n) -> means, variances (3, 1)
        w = weights.astype(np.float64)
        if not (w.sum(1) > 0).all():
            raise ValueError("the brain's intensities do not form three tissue classes (one came out empty)")
        mean = w @ x64 / w.sum(1)
        variance = np.maximum(w @ (x64 * x64) / w.sum(1) - mean ** 2, 1e-12)
        return mean.astype(np.float32)[:, None], variance.astype(np.float32)[:, None]

    def posteriors(labels: np.ndarray, mean: np.ndarray, variance: np.ndarray) -> np.ndarray:  # (3, n)
        one_hot[0][inside], one_hot[1][inside] = labels == 0, labels == 1
        same = _neighbour_sum(one_hot)[:, inside]
        same = np.concatenate([same, total[None] - same.sum(0)])
        prior = np.exp(np.float32(mrf) * same)
        likelihood = np.exp(-0.5 * (x - mean) ** 2 / variance) / np.sqrt(2 * np.pi * variance)
        p = np.maximum(likelihood, 1e-10) * np.maximum(prior / prior.sum(0), 1e-10)
        return p / p.sum(0)

    mean, variance = fit(np.eye(3, dtype=np.float32)[labels].T)
    previous = -np.inf
    for _ in range(iterations):
        p = posteriors(labels, mean, variance)
        labels, score = np.argmax(p, 0), float(p.max(0).mean())
        p = posteriors(labels, mean, variance)
        labels = np.argmax(p, 0)
        mean, variance = fit(p)
        if score < previous:
            break
        previous = score
    rank = np.empty(3, np.uint8)
    rank[np.argsort(mean[:, 0])] = (1, 2, 3)  # label 1 is the darkest class (CSF in a T1w image)
    out = np.zeros(brain.shape, np.uint8)
    crop = np.zeros(inside.shape, np.uint8)
    crop[inside] = rank[labels]
    out[box] = crop
    return out


def tissue_volumes(labels: np.ndarray) -> dict[str, float]:
    """mL of each tissue of a ``segment`` label map (template space: affinely normalized head size)."""
    ml = voxel_ml()
    return {t: float((labels == k).sum()) * ml for k, t in enumerate(TISSUES, start=1)}


def image_features(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The site classifier's features of one image (``FEATURES``, shape (11,)) from its tissue labels.

    Brain intensity percentiles, tissue medians, the GM/WM contrast (WM - GM) / (WM + GM), and
    texture in WM: the mean gradient magnitude and the mean local standard deviation (3-voxel box).
    """
    image = np.asarray(image, np.float32)
    brain, wm = labels > 0, labels == 3
    medians = [float(np.median(image[labels == k])) if (labels == k).any() else 0.0 for k in (1, 2, 3)]
    contrast = (medians[2] - medians[1]) / max(medians[2] + medians[1], 1e-6)
    gradient = np.sqrt(sum(g * g for g in np.gradient(image)))
    mean = ndimage.uniform_filter(image, 3)
    local_sd = np.sqrt(np.maximum(ndimage.uniform_filter(image * image, 3) - mean * mean, 0))
    inner_wm = ndimage.binary_erosion(wm, iterations=1)  # away from the tissue borders
    inner_wm = inner_wm if inner_wm.any() else wm
    return np.array([*np.percentile(image[brain], PERCENTILES), *medians, contrast,
                     float(gradient[inner_wm].mean()), float(local_sd[inner_wm].mean())], np.float64)


def scanner_effect(values: list[float], scanners: list[str], subjects: list[str] | None = None) -> dict:
    """Scanner's effect on one measure over images: one-way ANOVA ``F``, ``p``, ``eta2`` (SS_scanner / SS_total).

    With ``subjects`` where some subject has several images, ``partial_eta2`` is the scanner's share of
    the variance left by the subject (SS_scanner|subject / (SS_scanner|subject + SS_residual));
    NaN where it cannot be estimated (no residual degrees of freedom, one scanner).
    """
    y = np.asarray(values, np.float64)
    groups = sorted(set(scanners))
    nan = {"F": np.nan, "p": np.nan, "eta2": np.nan, "partial_eta2": np.nan}
    if len(groups) < 2 or len(y) <= len(groups):
        return nan
    total = float(((y - y.mean()) ** 2).sum())
    between = sum(float((y[[s == g for s in scanners]].mean() - y.mean()) ** 2) * scanners.count(g) for g in groups)
    within = total - between
    k, n = len(groups), len(y)
    f = (between / (k - 1)) / (within / (n - k)) if within > 0 else np.inf
    out = {"F": f, "p": float(stats.f.sf(f, k - 1, n - k)) if np.isfinite(f) else 0.0,
           "eta2": between / total if total > 0 else np.nan, "partial_eta2": np.nan}
    if subjects is not None and len(set(subjects)) < n:
        def rss(columns: list[str]) -> tuple[float, int]:
            x = np.column_stack([np.ones(n)] + [[c == level for c in col] for col in columns
                                                for level in sorted(set(col))[1:]]).astype(np.float64)
            beta = np.linalg.lstsq(x, y, rcond=None)[0]
            return float(((y - x @ beta) ** 2).sum()), int(np.linalg.matrix_rank(x))
        rss_subject, _ = rss([subjects])
        rss_full, rank = rss([subjects, scanners])
        scanner_ss = rss_subject - rss_full
        if n - rank > 0 and scanner_ss + rss_full > 0:
            out["partial_eta2"] = scanner_ss / (scanner_ss + rss_full)
    return out


def site_classifier(features: np.ndarray, scanners: list[str], seed: int = 0, permutations: int = 200) -> dict:
    """Leave-one-out accuracy of predicting the scanner from ``features`` (n_images, n_features).

    Standardized features, a linear least-squares (ridge, alpha 1) classifier, one scanner against the rest:
    scikit-learn's ``RidgeClassifierCV`` gives every image's left-out decision in closed form from one fit, so
    the permutation test costs one fit per permutation at any number of images. (One against the rest cannot
    pick out a scanner whose features lie between two others' on one line.) ``chance`` is the accuracy of
    always guessing the most common scanner; ``p`` is the permutation p-value (scanners shuffled
    ``permutations`` times). Lower accuracy after harmonization is better. NaN where a training fold would
    hold one scanner only.
    """
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(scanners)
    counts = np.unique(y, return_counts=True)[1]
    out = {"n_images": len(y), "n_scanners": len(counts), "chance": float(counts.max() / len(y)) if len(y) else np.nan,
           "cv": "leave-one-out", "accuracy": np.nan, "p": np.nan}
    # Every training fold (one image left out) must still hold two scanners.
    if len(counts) < 2 or len(y) < 3 or (len(counts) == 2 and counts.min() < 2):
        return out
    x = StandardScaler().fit_transform(np.asarray(features, np.float64))

    def accuracy(labels: np.ndarray) -> float:
        model = RidgeClassifierCV(alphas=[1.0], scoring="accuracy", store_cv_results=True).fit(x, labels)
        decisions = model.cv_results_[:, :, 0]  # each image's decisions when it was left out: (n, scanners or 1)
        picked = (decisions[:, 0] > 0).astype(int) if decisions.shape[1] == 1 else np.argmax(decisions, 1)
        return float(np.mean(model.classes_[picked] == labels))

    observed = accuracy(y)
    rng = np.random.default_rng(seed)
    exceeded = sum(accuracy(rng.permutation(y)) >= observed for _ in range(permutations))
    return out | {"accuracy": observed, "p": (1 + exceeded) / (1 + permutations)}


def rigid_transform(fixed: np.ndarray, moving: np.ndarray, seed: int = 0, schedule: str = "QuickRigid") -> list[str]:
    """ANTs rigid registration of ``moving`` onto ``fixed`` (both on the grid); the forward transform files.

    The images are already affinely in template space, so ANTs' short schedule (``QuickRigid``) is the default;
    ``benchmarks/bench_group.py --rigid`` compares it with the full one (``Rigid``).
    """
    import ants

    reg = ants.registration(ants.from_numpy(np.asarray(fixed, np.float32)),
                            ants.from_numpy(np.asarray(moving, np.float32)), type_of_transform=schedule,
                            random_seed=seed)
    return reg["fwdtransforms"]


def apply_transform(fixed: np.ndarray, moving: np.ndarray, transforms: list[str], nearest: bool = False) -> np.ndarray:
    """``moving`` (D, H, W) resampled onto ``fixed``'s grid with ``rigid_transform``'s result."""
    import ants

    out = ants.apply_transforms(ants.from_numpy(np.asarray(fixed, np.float32)),
                                ants.from_numpy(np.asarray(moving, np.float32)), transforms,
                                interpolator="nearestNeighbor" if nearest else "linear")
    return out.numpy()


def traveling_agreement(fixed: np.ndarray, moved: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(PSNR dB, SSIM) of two sessions of one subject, already aligned, in ``mask`` (``metrics.fidelity``)."""
    return fidelity(moved, fixed, mask)
