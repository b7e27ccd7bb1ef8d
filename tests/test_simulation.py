"""Tests of bhd_app.evaluation.simulation: signal equations, relaxation times, scanner acquisition and grid rendering.

The anatomy is the session's simulated subject (conftest); acquisitions use a small field of view to stay fast.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bhd_app.evaluation import simulation as S
from bhd_app.pipeline.templates import harmonization_grid

MPRAGE = [name for name, p in S.PROTOCOLS.items() if p.sequence == "MPRAGE"]
FOV = (96.0, 112.0, 96.0)


def test_protocol_table():
    assert S.TARGET_PROTOCOL == "trio3t"
    assert set(MPRAGE) == {"trio3t", "sonata15t", "biograph3t", "vida3t"}
    assert S.PROTOCOLS["vision15t"].sequence == "FLASH" and S.PROTOCOLS["t2w3t"].suffix == "T2w"


@pytest.mark.parametrize("name", MPRAGE + ["vision15t"])
def test_t1_weighted_ordering(name):
    s = S.tissue_signal(S.PROTOCOLS[name])
    assert s["wm"] > s["gm"] > s["csf"] > 0
    # White-matter lesions are T1-hypointense.
    assert s["lesion"] < s["wm"]


def test_t2_weighted_ordering():
    s = S.tissue_signal(S.PROTOCOLS["t2w3t"])
    assert s["csf"] > s["gm"] > s["wm"] > 0
    assert s["lesion"] > s["gm"]  # lesions are bright on T2w


def test_large_gap_source_has_little_grey_white_contrast():
    def contrast(name):
        s = S.tissue_signal(S.PROTOCOLS[name])
        return (s["wm"] - s["gm"]) / (s["wm"] + s["gm"])

    assert contrast("vision15t") < 0.5 * contrast("trio3t")
    assert all(contrast("vision15t") < contrast(name) for name in MPRAGE)


def test_mprage_signal_equation():
    """The trio3t white-matter signal, recomputed from the MPRAGE equation with the tissue's relaxation times."""
    p = S.PROTOCOLS["trio3t"]
    t1, t2, pd = S.relaxation("wm", p.field_strength)
    a = np.deg2rad(p.flip_angle)
    expected = pd * np.sin(a) * abs(1 - 2 * np.exp(-p.ti / t1) + np.exp(-p.tr / t1)) * np.exp(-p.te / t2)
    assert S.tissue_signal(p)["wm"] == pytest.approx(expected, rel=1e-12)


def test_t1_lengthens_with_field_strength():
    for tissue in ("csf", "gm", "wm", "lesion"):
        t1_15, t1_3 = S.relaxation(tissue, 1.5)[0], S.relaxation(tissue, 3.0)[0]
        assert t1_3 > t1_15
        # Log-linear in field strength: the geometric mean at 1.5 * sqrt(2) T.
        assert S.relaxation(tissue, 1.5 * np.sqrt(2))[0] == pytest.approx(np.sqrt(t1_15 * t1_3), rel=1e-9)
        # T2 and PD do not depend on the field here.
        assert S.relaxation(tissue, 1.5)[1:] == S.relaxation(tissue, 3.0)[1:]
    # In the range of the literature (Wansapura 1999, Rooney 2007): WM 3T ~ 0.8-1.1 s, GM 3T ~ 1.3-1.8 s.
    assert 750 < S.relaxation("wm", 3.0)[0] < 1100 and 1200 < S.relaxation("gm", 3.0)[0] < 1850
    assert 550 < S.relaxation("wm", 1.5)[0] < 800 and 900 < S.relaxation("gm", 1.5)[0] < 1300


@pytest.mark.parametrize("name", sorted(S.PROTOCOLS))
def test_acquire_shape_orientation_and_dtype(anatomy, name):
    p = S.PROTOCOLS[name]
    image, affine = S.acquire(anatomy, p, seed=1, fov_mm=FOV)
    assert image.dtype == np.uint8
    assert nib.aff2axcodes(affine) == tuple(p.orientation)
    axis = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
    assert image.shape == tuple(int(round(FOV[axis[c]] / p.voxel_size[i])) for i, c in enumerate(p.orientation))
    np.testing.assert_allclose(nib.affines.voxel_sizes(affine), p.voxel_size)
    # The head is in the field of view: a bright brain, dark air in a corner.
    assert image.max() >= 200 and image.mean() > 20


def test_acquisitions_in_two_orientations_agree_in_world_space(anatomy):
    """trio3t (PIR) and sonata15t (ASL), both 1 mm MPRAGE, land on the same RAS voxels once reoriented.

    Measured correlation 0.95; flipping either axis of one of them drops it below 0.3.
    """
    def canonical(name):
        image, affine = S.acquire(anatomy, S.PROTOCOLS[name], seed=1, fov_mm=FOV)
        c = nib.as_closest_canonical(nib.Nifti1Image(image, affine))
        return c.get_fdata(), c.affine

    a, affine_a = canonical("trio3t")
    b, affine_b = canonical("sonata15t")
    np.testing.assert_allclose(affine_a, affine_b, atol=1e-9)

    def corr(x, y):
        return np.corrcoef(x.ravel(), y.ravel())[0, 1]

    assert corr(a, b) > 0.85
    for axis in range(3):
        assert corr(a, np.flip(b, axis)) < 0.5


def test_acquire_is_seeded(anatomy):
    p = S.PROTOCOLS["vision15t"]
    small = (48.0, 48.0, 48.0)
    a, _ = S.acquire(anatomy, p, seed=3, fov_mm=small)
    b, _ = S.acquire(anatomy, p, seed=3, fov_mm=small)
    c, _ = S.acquire(anatomy, p, seed=4, fov_mm=small)
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.2  # noise and bias differ


def test_render_on_grid_is_deterministic_and_normalized(anatomy, small_grid):
    p = S.PROTOCOLS["trio3t"]
    a, mask = S.render_on_grid(anatomy, p, 7, small_grid)
    b, mask_b = S.render_on_grid(anatomy, p, 7, small_grid)
    c, _ = S.render_on_grid(anatomy, p, 8, small_grid)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(mask, mask_b)
    assert np.abs(a - c).max() > 0.01
    assert a.shape == small_grid.shape and a.dtype == np.float32 and mask.dtype == np.uint8
    assert (a[mask == 0] == 0).all()
    brain = a[mask > 0]
    assert brain.min() == 0 and brain.max() == 1
    # Percentile min-max (1st-99th): about 1 % of the brain is clipped at each end.
    assert 0.005 < (brain == 1).mean() < 0.02 and 0.005 < (brain == 0).mean() < 0.02
    # Without noise the render is the same for any seed.
    n1, _ = S.render_on_grid(anatomy, p, 1, small_grid, noise=False)
    n2, _ = S.render_on_grid(anatomy, p, 2, small_grid, noise=False)
    np.testing.assert_array_equal(n1, n2)


def test_full_grid_renders_share_the_mask_and_contrast(subject):
    grid = harmonization_grid()
    trio, mask = subject.render("trio3t")
    t2, mask_t2 = subject.render("t2w3t")
    assert trio.shape == grid.shape == (128, 160, 136)
    np.testing.assert_array_equal(mask, mask_t2)
    assert 0.15 < mask.mean() < 0.5
    for image in (trio, t2):
        assert image.min() == 0 and image.max() == 1 and (image[mask == 0] == 0).all()
    # T1w and T2w contrasts are inverted inside the brain.
    m = mask > 0
    assert np.corrcoef(trio[m], t2[m])[0, 1] < -0.3


def test_anatomy_fractions(anatomy):
    f = anatomy.fractions
    assert set(f) == set(S.TISSUES)
    shape = f["gm"].shape
    assert all(v.shape == shape for v in f.values()) and anatomy.texture.shape == shape
    total = sum(f.values())
    assert total.max() <= 1.0 + 1e-5 and min(v.min() for v in f.values()) >= -1e-6
    assert f["lesion"].max() == 0  # make_anatomy(0) has no lesions
    # The subject is placed by a near-rigid affine (rotation up to 8 degrees, scale 0.92-1.08).
    scale = np.abs(np.linalg.det(anatomy.subject_affine[:3, :3])) ** (1 / 3)
    assert 0.9 < scale < 1.1
