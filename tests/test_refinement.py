"""Tests of bhd_app.method.refinement: gradient ascent on NCC / MI with the source image (section 3.5).

The "generated" images stand in for the edge-to-image output: the session's simulated target-domain (trio3t)
render, blurred or with its histogram distorted; the source is the same anatomy under the large-gap source
protocol (vision15t).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from bhd_app.method import metrics
from bhd_app.method.refinement import OBJECTIVES, mi_gradient, ncc_gradient, refine

# A 14 x 14 x 14 block inside the brain for the (slow, Parzen-window) MI objective.
MI_BLOCK = (slice(57, 71), slice(73, 87), slice(61, 75))


@pytest.fixture(scope="module")
def images(subject):
    target, source, mask = subject.image("trio3t"), subject.image("vision15t"), subject.mask
    blurred = ndimage.gaussian_filter(target, 1.5)
    blurred[mask == 0] = 0
    return {"blurred": blurred, "distorted": target**3, "source": source, "mask": mask}


@pytest.mark.parametrize("kind", ["blurred", "distorted"])
def test_ncc_increases_monotonically(images, kind):
    generated, source, mask = images[kind], images["source"], images["mask"]
    before = metrics.ncc(generated, source, mask)
    out, history = refine(generated, source, mask, "ncc", step_rule="rms")
    assert len(history) == 7  # before each of the 6 iterations and after the last
    assert history[0] == pytest.approx(before, abs=1e-6)
    assert all(b > a for a, b in zip(history, history[1:])), history
    # The history agrees with the metric computed afresh on the returned image.
    assert metrics.ncc(out, source, mask) == pytest.approx(history[-1], abs=1e-5)
    assert history[-1] > before + 0.05


@pytest.mark.parametrize("kind", ["blurred", "distorted"])
def test_large_steps_do_not_overshoot_the_ncc_maximum(images, kind):
    """At the paper's step and above, fixed-size steps would jump past the maximum and oscillate around it.

    Each step is capped at the distance to the maximum along the gradient (where the image becomes a linear
    map of the source), so NCC never decreases and the ascent settles there.
    """
    generated, source, mask = images[kind], images["source"], images["mask"]
    for step in (0.02, 0.1, 0.3):
        _, history = refine(generated, source, mask, "ncc", step=step, iterations=12, step_rule="rms")
        assert all(b >= a - 1e-9 for a, b in zip(history, history[1:])), (step, history)
    assert history[-1] > 0.999, history


def test_refinement_stays_in_range_and_in_the_brain(images):
    generated, source, mask = images["distorted"], images["source"], images["mask"]
    assert generated[mask > 0].min() == 0 and generated[mask > 0].max() == 1  # values at both bounds
    out, _ = refine(generated, source, mask, "ncc", step=0.2, step_rule="rms")
    assert out.dtype == np.float32 and out.shape == generated.shape
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(out[mask == 0], generated[mask == 0])
    assert np.abs(out - generated)[mask > 0].max() > 0.1
    # region="volume" updates the whole grid (a mid-grey background, so that clipping at 0 cannot hide it).
    background = np.where(mask > 0, generated, 0.5).astype(np.float32)
    vol, history = refine(background, source, mask, "ncc", iterations=1, region="volume", step_rule="rms")
    assert np.abs(vol - background)[mask == 0].max() > 0
    assert history[1] > history[0]


def test_a_linear_map_of_the_source_is_left_unchanged(images):
    """NCC is already 1 there (a maximum): the normalized step must not turn rounding noise into changes."""
    source, mask = images["source"], images["mask"]
    generated = np.where(mask > 0, 0.5 * source + 0.2, 0).astype(np.float32)
    out, history = refine(generated, source, mask, "ncc", step=0.05, step_rule="rms")
    np.testing.assert_allclose(out, generated, atol=1e-6)
    assert history[0] == pytest.approx(1.0, abs=1e-9)


def test_step_is_the_rms_intensity_change(images):
    """Away from the bounds, one iteration changes the region by an RMS of exactly ``step``."""
    mask = images["mask"]
    generated = 0.25 + 0.5 * images["blurred"]
    out, _ = refine(generated, images["source"], mask, "ncc", step=0.02, iterations=1, step_rule="rms")
    change = (out.astype(np.float64) - generated)[mask > 0]
    assert np.sqrt(np.mean(change**2)) == pytest.approx(0.02, rel=1e-3)


def test_mi_increases(images):
    generated = images["blurred"][MI_BLOCK]
    source = images["source"][MI_BLOCK]
    mask = np.ones(generated.shape, np.uint8)
    out, history = refine(generated, source, mask, "mi", iterations=4, step_rule="rms")
    assert len(history) == 5
    assert all(b > a for a, b in zip(history, history[1:])), history
    assert history[-1] > history[0] + 0.2
    assert out.min() >= 0 and out.max() <= 1


def test_mi_under_the_paper_step_rule_is_refused(images):
    """x += 0.02 N grad is the paper's step for NCC; MI's per-voxel gradient N grad is of order 1/sigma (here
    up to 100), so that step throws voxels to 0 or 1. refine() refuses it rather than return such an image."""
    generated = images["blurred"][MI_BLOCK]
    source = images["source"][MI_BLOCK]
    x = generated[generated > 0].astype(np.float64)
    s = source[generated > 0].astype(np.float64)
    scaled = x.size * mi_gradient(x, s)[1]
    assert np.abs(scaled).max() > 10  # 0.02 x that is a jump of over 0.2 in [0, 1] units
    mask = np.ones(generated.shape, np.uint8)
    with pytest.raises(ValueError, match="rms step rule"):
        refine(generated, source, mask, "mi", step_rule="paper")


def test_mi_is_larger_for_dependent_images():
    rng = np.random.default_rng(0)
    x = rng.random(2000)
    dependent, _ = mi_gradient(x, 1 - x**2)
    independent, _ = mi_gradient(x, rng.random(2000))
    assert dependent > 1.0 > 0.5 > independent


def test_none_returns_the_input(images):
    generated = images["blurred"]
    out, history = refine(generated, images["source"], images["mask"], "none")
    assert history == []
    np.testing.assert_array_equal(out, generated)
    assert out is not generated  # a copy: the caller's array is left alone
    out0, history0 = refine(generated, images["source"], images["mask"], "ncc", iterations=0)
    np.testing.assert_array_equal(out0, generated)
    assert history0 == []


def test_unknown_objective():
    with pytest.raises(ValueError, match="unknown refinement"):
        refine(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), np.ones((4, 4, 4)), "ssim")
    assert OBJECTIVES == ("ncc", "mi", "split", "none")


def test_ncc_gradient_matches_autograd():
    rng = np.random.default_rng(1)
    x, s = rng.random(50), rng.random(50) + 0.3 * np.arange(50) / 50
    value, grad = ncc_gradient(x, s)
    xt = torch.tensor(x, requires_grad=True)
    st = torch.tensor(s)
    a, b = xt - xt.mean(), st - st.mean()
    ncc = (a * b).sum() / (a.norm() * b.norm())
    ncc.backward()
    assert value == pytest.approx(float(ncc), abs=1e-12)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-8, atol=1e-12)
    assert np.abs(grad).max() > 1e-3


def test_mi_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    x, s = rng.random(300), rng.random(300)
    s = 0.5 * s + 0.5 * x
    value, grad = mi_gradient(x, s, bins=32, sigma=0.05)
    for i in (3, 100, 250):
        h = 1e-6
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        fd = (mi_gradient(xp, s, bins=32, sigma=0.05)[0] - mi_gradient(xm, s, bins=32, sigma=0.05)[0]) / (2 * h)
        assert grad[i] == pytest.approx(fd, rel=1e-3, abs=1e-9)
    assert value > 0


def test_mi_gradient_matches_autograd_over_every_voxel():
    """The chunked closed-form gradient equals autograd of the Parzen-window MI computed on all voxels at once."""
    rng = np.random.default_rng(3)
    x, s = rng.random(3000), rng.random(3000)
    s = 0.6 * x + 0.4 * s
    value, grad = mi_gradient(x, s, bins=64, sigma=0.02, chunk=700)
    centres = torch.linspace(0, 1, 64, dtype=torch.float64)
    xt = torch.tensor(x, requires_grad=True)
    wx = torch.exp(-0.5 * ((xt[:, None] - centres) / 0.02) ** 2)
    ws = torch.exp(-0.5 * ((torch.tensor(s)[:, None] - centres) / 0.02) ** 2)
    wx, ws = wx / (wx.sum(1, keepdim=True) + 1e-12), ws / (ws.sum(1, keepdim=True) + 1e-12)
    joint = wx.T @ ws / len(x)
    px, ps = joint.sum(1), joint.sum(0)
    mi = (joint * (torch.log(joint + 1e-12) - torch.log(px[:, None] * ps[None, :] + 1e-12))).sum()
    mi.backward()
    assert value == pytest.approx(float(mi), rel=1e-10)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-6, atol=1e-6 * np.abs(grad).max())
    assert np.count_nonzero(grad) == x.size


def test_mi_refinement_changes_every_voxel_of_a_large_region(images):
    """More voxels than any subset size: every one of them moves, none by many times the step."""
    block = (slice(40, 90), slice(55, 105), slice(45, 95))  # 125,000 voxels
    generated, source = images["blurred"][block], images["source"][block]
    mask = np.ones(generated.shape, np.uint8)
    out, history = refine(0.1 + 0.8 * generated, source, mask, "mi", step=0.01, iterations=1, step_rule="rms")
    change = np.abs(out.astype(np.float64) - (0.1 + 0.8 * generated))
    assert np.mean(change > 0) > 0.99
    assert np.sqrt(np.mean(change**2)) == pytest.approx(0.01, rel=1e-3)
    assert change.max() < 20 * 0.01
    assert history[1] > history[0]


def test_paper_step_rule_is_alpha_n_times_the_gradient(images):
    """x += alpha * N * dNCC/dx; closed form: N * dNCC/dx = (z_source - NCC * z_x) / std(x) (z: standardized)."""
    mask = images["mask"]
    generated = (0.25 + 0.5 * images["blurred"]).astype(np.float32)
    source = images["source"]
    out, history = refine(generated, source, mask, "ncc", step=0.02, iterations=1, step_rule="paper")
    x, s = generated[mask > 0].astype(np.float64), source[mask > 0].astype(np.float64)
    zx, zs = (x - x.mean()) / x.std(), (s - s.mean()) / s.std()
    expected = x + 0.02 * (zs - history[0] * zx) / x.std()
    np.testing.assert_allclose(out[mask > 0], np.clip(expected, 0, 1), atol=2e-6)
    assert history[1] > history[0]
    with pytest.raises(ValueError, match="step rule"):
        refine(generated, source, mask, "ncc", step_rule="unit")


def test_frequency_split_keeps_the_generated_low_and_the_reference_high_frequencies(images):
    """Closed forms: a constant offset of the reference is a pure low frequency, so it is kept exactly
    (normalized convolution inside the mask reproduces a constant to the edge); and what the split returns
    differs from the reference only by the low-passed difference of the two inputs."""
    from bhd_app.method.refinement import frequency_split, masked_lowpass

    mask = images["mask"]
    reference = np.where(mask > 0, 0.2 + 0.6 * images["source"], 0).astype(np.float32)
    out = frequency_split(reference + 0.1, reference, mask, sigma=4.0)
    np.testing.assert_allclose(out[mask > 0], reference[mask > 0] + 0.1, atol=1e-5)
    generated = np.where(mask > 0, 0.2 + 0.6 * images["blurred"], 0).astype(np.float32)
    out, history = refine(generated, reference, mask, "split", split_sigma_mm=4.8, voxel_size=(1.2, 1.2, 1.2))
    assert history == []
    expected = reference + masked_lowpass(generated - reference, mask, 4.0)
    inside = (mask > 0) & (expected > 0) & (expected < 1)
    np.testing.assert_allclose(out[inside], expected[inside], atol=1e-5)
    assert (out[mask == 0] == 0).all()


def test_the_split_width_is_in_mm_along_each_axis_of_the_grid(images):
    """split_sigma_mm becomes voxels per axis with the grid's voxel size: 4.8 mm on 1.2 x 1.2 x 2.4 mm voxels is
    a low-pass of 4, 4 and 2 voxels (the harmonization grid's default voxel size is config.GRID_SPACING)."""
    from bhd_app.config import GRID_SPACING
    from bhd_app.method.refinement import frequency_split, split_sigma_voxels

    mask = images["mask"]
    reference = np.where(mask > 0, 0.2 + 0.6 * images["source"], 0).astype(np.float32)
    generated = np.where(mask > 0, 0.2 + 0.6 * images["blurred"], 0).astype(np.float32)
    out, _ = refine(generated, reference, mask, "split", split_sigma_mm=4.8, voxel_size=(1.2, 1.2, 2.4))
    np.testing.assert_allclose(out, frequency_split(generated, reference, mask, (4.0, 4.0, 2.0)), atol=1e-6)
    assert np.abs(out - frequency_split(generated, reference, mask, 4.0)).max() > 1e-3
    default, _ = refine(generated, reference, mask, "split", split_sigma_mm=4.8)
    np.testing.assert_allclose(default, frequency_split(generated, reference, mask, (4.0, 4.0, 3.84)), atol=1e-6)
    assert split_sigma_voxels(4.8, GRID_SPACING) == (4.8 / 1.2, 4.8 / 1.2, 4.8 / 1.25)
