"""Downstream site effects of one image set: tissue volumes, a site classifier, traveling-subject agreement.

Every function takes images on the harmonization grid (D, H, W), in [0, 1], zero outside the brain
mask, and knows nothing of BIDS. The group level (``group.py``) runs them on each condition: the
preprocessed images (before), the harmonized images of the method that was run, and histogram
matching computed from the preprocessed images.

* ``segment``: three tissue classes (CSF, GM, WM) by Atropos (antspyx) with k-means initialization
  and a light MRF prior in the brain mask; ``tissue_volumes`` counts them in mL of template space.
* ``scanner_effect``: how much of a volume's variance the scanner explains (one-way ANOVA F, p,
  eta-squared; with repeated subjects also the partial eta-squared of scanner given subject).
* ``image_features`` + ``site_classifier``: cross-validated accuracy of a scikit-learn classifier
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


def segment(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Tissue labels (D, H, W) uint8: 0 outside ``mask``, 1 CSF, 2 GM, 3 WM (ordered by mean intensity, T1w).

    Atropos, 3 classes, k-means initialization, MRF smoothing 0.1 on the 26-neighbourhood, 5 iterations.
    """
    import ants

    brain = mask > 0
    img = ants.from_numpy(np.asarray(image, np.float32))
    msk = ants.from_numpy(brain.astype(np.float32))
    labels = ants.atropos(a=img, x=msk, i="kmeans[3]", m="[0.1,1x1x1]", c="[5,0]", verbose=0)
    labels = np.asarray(labels["segmentation"].numpy(), np.uint8)
    labels[~brain] = 0
    # Order the classes by mean intensity so that label 1 is the darkest (CSF in a T1w image).
    means = [image[labels == k].mean() if (labels == k).any() else np.inf for k in (1, 2, 3)]
    out = np.zeros_like(labels)
    for new, old in enumerate(np.argsort(means), start=1):
        out[labels == old + 1] = new
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

    Standardized features, multinomial logistic regression (scikit-learn). ``chance`` is the accuracy of
    always guessing the most common scanner; ``p`` is the permutation p-value (scanners shuffled).
    Lower accuracy after harmonization is better. A scanner with one image can never be predicted (it is
    missing from the training fold). NaN where a training fold would hold one scanner only.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import LeaveOneOut, permutation_test_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(scanners)
    counts = np.unique(y, return_counts=True)[1]
    out = {"n_images": len(y), "n_scanners": len(counts), "chance": float(counts.max() / len(y)) if len(y) else np.nan,
           "cv": "leave-one-out", "accuracy": np.nan, "p": np.nan}
    # Every training fold (one image left out) must still hold two scanners.
    if len(counts) < 2 or len(y) < 3 or (len(counts) == 2 and counts.min() < 2):
        return out
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    accuracy, _, p = permutation_test_score(model, np.asarray(features, np.float64), y, cv=LeaveOneOut(),
                                            n_permutations=permutations, random_state=seed)
    return out | {"accuracy": float(accuracy), "p": float(p)}


def rigid_transform(fixed: np.ndarray, moving: np.ndarray, seed: int = 0) -> list[str]:
    """ANTs rigid registration of ``moving`` onto ``fixed`` (both on the grid); the forward transform files."""
    import ants

    reg = ants.registration(ants.from_numpy(np.asarray(fixed, np.float32)),
                            ants.from_numpy(np.asarray(moving, np.float32)), type_of_transform="Rigid",
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
