"""Tests of bhd_app.method.metrics: PSNR, SSIM and NCC inside a brain mask, against known closed-form values.

The reference image is the real stroke T1w (normalized to [0, 1], brain-extracted) where the shared data are
present, else a smooth random volume; the mask is its brain.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bhd_app.method.metrics import fidelity, ncc, psnr, ssim


@pytest.fixture(scope="module")
def reference(request):
    """(image in [0, 1], brain mask): a 64^3 block of the real stroke T1w, or a smooth random volume."""
    try:
        stroke = request.getfixturevalue("stroke")
        image = stroke["T1"][30:94, 48:112, 38:102].astype(np.float32)
    except pytest.skip.Exception:
        rng = np.random.default_rng(0)
        image = ndimage.gaussian_filter(rng.random((64, 64, 64)), 2).astype(np.float32)
        image = (image - image.min()) / (image.max() - image.min())
    mask = (image > 0.05).astype(np.uint8)
    assert mask.mean() > 0.3
    return image, mask


def noisy(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    return image + np.random.default_rng(seed).normal(0, sigma, image.shape)


def test_identical_images(reference):
    image, mask = reference
    assert psnr(image, image, mask) == float("inf")
    assert ssim(image, image, mask) == pytest.approx(1.0, abs=1e-12)
    assert ncc(image, image, mask) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("offset", [0.1, 0.01, 0.003])
def test_constant_offset(reference, offset):
    image, mask = reference
    assert psnr(image + offset, image, mask) == pytest.approx(-20 * np.log10(offset), abs=1e-4)
    assert psnr(image - offset, image, mask) == pytest.approx(-20 * np.log10(offset), abs=1e-4)


def test_data_range(reference):
    image, mask = reference
    # On a 0..255 scale, the same relative error gives the same PSNR.
    assert psnr(255 * (image + 0.01), 255 * image, mask, data_range=255) == pytest.approx(40.0, abs=1e-3)


def test_only_the_mask_counts(reference):
    image, mask = reference
    other = image + 0.01
    other[mask == 0] = 5.0  # anything outside the brain
    assert psnr(other, image, mask) == pytest.approx(40.0, abs=1e-4)


@pytest.mark.parametrize("sigma", [0.02, 0.05, 0.1])
def test_gaussian_noise(reference, sigma):
    image, mask = reference
    # Over ~10^5 voxels the noise variance is within about 0.5 % of sigma^2: 0.02 dB.
    assert psnr(noisy(image, sigma), image, mask) == pytest.approx(-20 * np.log10(sigma), abs=0.1)


def test_ssim_decreases_with_noise(reference):
    image, mask = reference
    values = [ssim(noisy(image, s, seed=1), image, mask) for s in (0.01, 0.03, 0.1, 0.3)]
    assert all(b < a for a, b in zip(values, values[1:])), values
    assert values[0] > 0.9 and values[-1] < 0.5


def test_ssim_equals_scikit_image_averaged_in_the_mask(reference):
    """Oracle: scikit-image's 3D SSIM map (Gaussian window sigma 1.5, population covariance) averaged in the mask.
    ``ssim`` stays a dozen lines of scipy rather than a runtime dependency on scikit-image and its packages."""
    from skimage.metrics import structural_similarity

    image, mask = reference
    other = np.clip(image.astype(np.float64) ** 1.3 + np.random.default_rng(1).normal(0, 0.05, image.shape), 0, 1)
    _, full = structural_similarity(other, image.astype(np.float64), data_range=1.0, gaussian_weights=True,
                                    sigma=1.5, use_sample_covariance=False, full=True)
    assert ssim(other, image, mask) == pytest.approx(float(full[mask > 0].mean()), abs=1e-9)


def test_ssim_is_symmetric(reference):
    image, mask = reference
    other = noisy(image, 0.05, seed=2)
    assert ssim(other, image, mask) == pytest.approx(ssim(image, other, mask), abs=1e-12)


def test_ssim_of_two_constants_is_the_luminance_term():
    """Flat images have zero variance: SSIM = (2 a b + C1) / (a^2 + b^2 + C1) with C1 = (0.01 L)^2."""
    a, b = 0.5, 0.3
    mask = np.ones((16, 16, 16), np.uint8)
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(np.full((16, 16, 16), a), np.full((16, 16, 16), b), mask) == pytest.approx(expected, rel=1e-9)


def test_ssim_of_a_contrast_inversion_is_negative(reference):
    image, mask = reference
    assert ssim(1 - image, image, mask) < 0


def test_ncc_of_a_linear_transform(reference):
    image, mask = reference
    assert ncc(3.0 * image + 0.2, image, mask) == pytest.approx(1.0, abs=1e-9)
    assert ncc(-0.5 * image + 1.0, image, mask) == pytest.approx(-1.0, abs=1e-9)
    # A nonlinear map is less than perfectly correlated; independent noise is uncorrelated.
    assert 0.5 < ncc(image**4, image, mask) < 0.99
    rng = np.random.default_rng(3)
    assert abs(ncc(rng.random(image.shape), image, mask)) < 0.02


def test_fidelity_gives_no_credit_for_a_global_rescale(reference):
    """Normalized 1-99 % in the mask first: a linear map of an image scores as the image itself."""
    image, mask = reference
    target = noisy(image, 0.02)
    plain = fidelity(image, target, mask)
    for scale, offset in ((0.7, 0.1), (1.3, -0.05)):
        rescaled = fidelity(scale * image + offset, target, mask)
        assert rescaled == pytest.approx(plain, abs=1e-4)
        # Raw PSNR does reward (or punish) the same rescale.
        assert abs(psnr(scale * image + offset, target, mask) - psnr(image, target, mask)) > 1.0
    assert fidelity(image, image, mask)[0] == float("inf")
    assert fidelity(target, image, mask)[1] < 1.0


def test_fidelity_of_an_image_without_range_is_low(reference):
    image, mask = reference
    flat = np.full(image.shape, 0.3, np.float32)
    psnr_db, ssim_value = fidelity(flat, image, mask)
    assert psnr_db < 10 and ssim_value < 0.2
