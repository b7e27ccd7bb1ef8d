"""Tests of bhd_app.evaluation.alterations: known scanner-like changes for traveling subjects with real anatomy.

The image is the simulated target-protocol subject on the grid (``conftest.subject``); each change is
checked against what it promises, with the best global intensity map as the oracle.
"""

from __future__ import annotations

import numpy as np
import pytest

from bhd_app.evaluation import alterations
from bhd_app.method.metrics import lesion_contrast


def best_global_map_residual(altered: np.ndarray, truth: np.ndarray, mask: np.ndarray, bins: int = 256) -> float:
    """RMS error left by the best function of intensity alone (the conditional mean of truth per altered bin)."""
    a, t = altered[mask > 0], truth[mask > 0]
    idx = np.clip((a * bins).astype(int), 0, bins - 1)
    sums, counts = np.bincount(idx, t, bins), np.bincount(idx, minlength=bins)
    fitted = (sums / np.maximum(counts, 1))[idx]
    return float(np.sqrt(np.mean((fitted - t) ** 2)))


@pytest.fixture(scope="module")
def target(subject):
    return subject.image("trio3t"), subject.mask


def test_a_monotone_change_is_undone_by_the_oracle_map_but_the_tissue_contrast_change_is_not(target):
    image, mask = target
    monotone = np.where(mask > 0, image**2, 0)
    assert best_global_map_residual(monotone, image, mask) < 0.01  # the bins' own width
    changed = alterations.tissue_contrast(image, mask, {"csf": 0.2, "gm": 0.62, "wm": 0.8}, deep_gm=0.74)
    changed = np.clip(changed, 0, 1)
    assert best_global_map_residual(changed, image, mask) > 0.02
    assert (changed[mask == 0] == 0).all()


def test_tissue_memberships_sum_to_one_in_the_brain(target):
    image, mask = target
    m = alterations.tissue_memberships(image, mask)
    total = sum(m.values())
    np.testing.assert_allclose(total[mask > 0], 1.0, atol=1e-4)
    # White matter is the brightest class of a T1w image.
    means = {t: float((image * w).sum() / w.sum()) for t, w in m.items()}
    assert means["csf"] < means["gm"] < means["wm"]


def test_bias_field_has_the_given_strength_and_is_smooth():
    field = alterations.bias_field((48, 56, 40), 0.1, seed=3)
    log = np.log(field)
    assert log.std() == pytest.approx(0.1, rel=1e-3)
    assert np.abs(np.diff(log, axis=0)).mean() < 0.01  # smooth: tiny changes between neighbours


@pytest.mark.parametrize("name", list(alterations.SOURCES))
def test_each_source_scanner_gives_a_normalized_brain_image(target, name):
    image, mask = target
    out = alterations.SOURCES[name].apply(image, mask, seed=1)
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1 and (out[mask == 0] == 0).all()
    corr = np.corrcoef(out[mask > 0], image[mask > 0])[0, 1]
    # T1w sources keep the T1w ordering of tissues; the T2w-like one inverts it.
    assert corr > 0.5 if alterations.SOURCES[name].suffix == "T1w" else corr < -0.3


def test_lesions_are_drawn_hypointense_in_white_matter(target):
    image, mask = target
    out, lesion, shell = alterations.draw_lesions(image, mask, count=3, radius=3.0, ratio=0.6, seed=0)
    assert 3 * 80 < lesion.sum() < 3 * 140  # three spheres of radius 3 (113 voxels each)
    assert shell.sum() > lesion.sum()
    assert lesion_contrast(out, lesion, shell) == pytest.approx(0.6, abs=0.08)
    assert lesion_contrast(image, lesion, shell) == pytest.approx(1.0, abs=0.05)
    from scipy import ndimage

    far = ~ndimage.binary_dilation(lesion, iterations=5)
    np.testing.assert_allclose(out[far], image[far], atol=1e-6)  # nothing changes away from the lesions
