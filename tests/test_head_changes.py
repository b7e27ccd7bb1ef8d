"""Tests of bhd_app.evaluation.head_changes: the end-to-end benchmark's native-space scanner changes.

Closed forms: a change at its identity setting returns the head; a box-profile slice of a linear ramp is the
ramp; Rician noise of level 0 is the image; the coil field's range over the head is its strength. The head is
the real IXI Hammersmith T1w head in ../shared (IXI dataset, brain-development.org, CC BY-SA 3.0).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bhd_app.evaluation import head_changes as hc
from conftest import SHARED

HEAD = SHARED / "IXI" / "IXI013-HH-1212-T1_ds.nii.gz"


@pytest.fixture(scope="module")
def head():
    img = nib.load(str(HEAD))
    data = img.get_fdata(dtype=np.float32)
    labels = np.zeros(data.shape, np.int8)
    inside = data > np.percentile(data, 60)
    labels[inside] = 3
    labels[inside & (data < np.percentile(data, 85))] = 2
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return data, labels, zooms


def test_identity_settings_return_the_head(head):
    data, labels, zooms = head
    weights = hc.memberships(labels, hc.deep_region(labels > 0, zooms))
    np.testing.assert_allclose(sum(weights.values()), 1.0, atol=1e-4)
    np.testing.assert_allclose(hc.tissue_gains(data, weights, {}), data, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(hc.rician_noise(data, 0.0, 0), np.abs(data))
    np.testing.assert_allclose(hc.sharpening(data, keep=1.0, amount=0.0), data, atol=1e-3)
    np.testing.assert_array_equal(hc.thick_slices(data, 1, 1), data)


def test_deep_grey_matter_changes_apart_from_cortex(head):
    data, labels, zooms = head
    deep = hc.deep_region(labels > 0, zooms, depth_mm=10.0)
    weights = hc.memberships(labels, deep)
    out = hc.tissue_gains(data, weights, {"gm": 1.2, "deep_gm": 0.8})
    cortex, nuclei = (labels == 2) & ~deep, (labels == 2) & deep
    cortex &= weights["gm"] > 0.99
    nuclei &= weights["deep_gm"] > 0.99
    assert cortex.sum() > 100 and nuclei.sum() > 100
    np.testing.assert_allclose(out[cortex] / data[cortex], 1.2, rtol=5e-3)
    np.testing.assert_allclose(out[nuclei] / data[nuclei], 0.8, rtol=5e-3)


def test_thick_slices_keep_a_linear_ramp_and_average_the_rest():
    ramp = np.broadcast_to(np.arange(30, dtype=np.float32)[None, :, None], (4, 30, 5)).copy()
    out = hc.thick_slices(ramp, 1, 3)
    np.testing.assert_allclose(out[:, 1:-2], ramp[:, 1:-2], atol=1e-5)  # between the first and last run centre
    stripes = np.zeros((4, 30, 5), np.float32)
    stripes[:, ::3] = 3.0  # one bright slice per run of three: every run averages to 1
    np.testing.assert_allclose(hc.thick_slices(stripes, 1, 3), 1.0, atol=1e-5)


def test_coil_field_spans_its_strength_over_the_head(head):
    data, _, zooms = head
    field = hc.coil_field(data.shape, zooms, data > np.percentile(data, 50), 0.4, seed=3)
    inside = field[data > np.percentile(data, 50)]
    assert inside.max() - inside.min() == pytest.approx(0.4, abs=1e-4)
    assert inside.mean() == pytest.approx(1.0, abs=0.2)


def test_every_change_gives_a_nonnegative_image_of_the_head_shape(head):
    data, labels, zooms = head
    weights = hc.memberships(labels, hc.deep_region(labels > 0, zooms))
    for name in hc.CHANGES:
        suffix, out = hc.apply_change(name, data, weights, zooms, seed=1)
        assert suffix in ("T1w", "T2w") and out.shape == data.shape and out.dtype == np.float32
        assert out.min() >= 0 and np.abs(out - data).mean() > 0.01 * data.mean()
