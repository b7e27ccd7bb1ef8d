"""Tests of bhd_app.method.edges: 3D Canny with the subject-level 8 % threshold (section 3.2, supplement S1).

Images: the session's simulated subject on the harmonization grid (conftest) and the real stroke T1w/T2w
pair of ../shared/data/VolumeRenderingData (same subject, same grid).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bhd_app.method import edges

CUBE = (slice(8, 24),) * 3


def near_fraction(a: np.ndarray, b: np.ndarray) -> float:
    """The fraction of the edges of ``a`` that lie within one voxel (26-neighbourhood) of an edge of ``b``."""
    grown = ndimage.binary_dilation(b.astype(bool), np.ones((3, 3, 3), bool))
    a = a.astype(bool)
    return float((a & grown).sum() / a.sum())


@pytest.fixture(scope="module")
def sim_edges(subject):
    return {p: edges.canny_edges(subject.image(p)) for p in ("trio3t", "vision15t", "t2w3t")}


@pytest.fixture(scope="module")
def stroke_edges(stroke):
    return {k: edges.canny_edges(v) for k, v in stroke.items()}


def test_edge_fraction_on_simulated_grid_image(subject, sim_edges):
    for protocol, (edge_map, threshold) in sim_edges.items():
        assert edge_map.shape == subject.image(protocol).shape and edge_map.dtype == np.uint8
        assert set(np.unique(edge_map)) <= {0, 1}
        assert abs(edge_map.mean() - edges.EDGE_FRACTION) < 0.002, protocol
        assert threshold > 0


def test_edge_fraction_on_real_image(stroke, stroke_edges):
    for name, (edge_map, threshold) in stroke_edges.items():
        assert edge_map.shape == stroke[name].shape
        assert abs(edge_map.mean() - 0.08) < 0.002, name
        assert threshold > 0


def test_other_fraction_is_reached_too(stroke):
    edge_map, _ = edges.canny_edges(stroke["T1"], fraction=0.05)
    assert abs(edge_map.mean() - 0.05) < 0.002


def test_edges_obey_hysteresis_and_suppression(stroke, stroke_edges):
    """Every edge is a local maximum above the low threshold, and every 26-connected run touches the high one."""
    image = stroke["T1"]
    edge_map, high = stroke_edges["T1"]
    magnitude, grad = edges.gradient_magnitude(image)
    candidates = edges.non_maximum_suppression(magnitude, grad)
    e = edge_map.astype(bool)
    assert not (e & ~candidates).any()
    assert magnitude[e].min() >= edges.LOW_HIGH_RATIO * high
    labels, n = ndimage.label(e, structure=np.ones((3, 3, 3), bool))
    peak = ndimage.maximum(magnitude, labels, index=np.arange(1, n + 1))
    assert n > 0 and (peak >= high).all()
    # Non-maximum suppression thins: far fewer candidates than voxels with a gradient.
    assert candidates.sum() < 0.5 * (magnitude > 0).sum()


def test_same_anatomy_two_t1_contrasts_share_edges(sim_edges):
    """Eq. 2: the target (Trio 3T MPRAGE) and the large-gap source (Vision 1.5T FLASH) give nearly the same edges.

    Measured on seed 0: 0.97 (trio in vision) and 0.96 (vision in trio); with the vision map shifted by
    4 voxels (the chance level for maps this dense: 8 % of the volume is about 20 % of the brain) 0.71.
    """
    trio, vision = sim_edges["trio3t"][0], sim_edges["vision15t"][0]
    shifted = np.roll(vision, 4, axis=0)
    chance = near_fraction(trio, shifted)
    for a, b in ((trio, vision), (vision, trio)):
        overlap = near_fraction(a, b)
        assert overlap > 0.9
        assert overlap > chance + 0.2


def test_same_anatomy_t1_and_t2_share_most_edges(sim_edges, stroke_edges):
    """T1w vs T2w shares fewer edges than two T1w contrasts, but far more than chance.

    Measured: simulated trio3t vs t2w3t 0.75 / 0.68 (chance, T2 map shifted by 4 voxels: 0.60);
    real stroke T1 vs T2 0.88 / 0.90 (chance 0.64).
    """
    pairs = {"simulated": (sim_edges["trio3t"][0], sim_edges["t2w3t"][0]),
             "real": (stroke_edges["T1"][0], stroke_edges["T2"][0])}
    bounds = {"simulated": 0.6, "real": 0.8}
    for kind, (t1, t2) in pairs.items():
        chance = near_fraction(t1, np.roll(t2, 4, axis=0))
        for a, b in ((t1, t2), (t2, t1)):
            overlap = near_fraction(a, b)
            assert overlap > bounds[kind], kind
            assert overlap > chance + 0.05, kind
    # Two T1w contrasts agree better than T1w and T2w.
    trio, vision, t2 = (sim_edges[p][0] for p in ("trio3t", "vision15t", "t2w3t"))
    assert near_fraction(trio, vision) > near_fraction(trio, t2)


def test_deterministic(stroke):
    crop = stroke["T1"][30:94, 40:104, 40:104]
    (a, ta), (b, tb) = edges.canny_edges(crop), edges.canny_edges(crop.copy())
    assert ta == tb
    np.testing.assert_array_equal(a, b)


def test_cube_edges_on_faces_and_thin():
    image = np.zeros((32, 32, 32), np.float32)
    image[CUBE] = 1.0
    edge_map, _ = edges.canny_edges(image)
    e = edge_map.astype(bool)
    assert e.any()
    # Every edge lies on the boundary: voxels whose 26-neighbourhood holds both inside and outside.
    inside = np.zeros(image.shape, bool)
    inside[CUBE] = True
    ball = np.ones((3, 3, 3), bool)
    boundary = ndimage.binary_dilation(inside, ball) & ~ndimage.binary_erosion(inside, ball)
    assert not (e & ~boundary).any()
    # Through the centre of each face, the edge is at most two voxels thick (the two sides of the step).
    for axis in range(3):
        line = np.moveaxis(e, axis, 0)[:, 16, 16]
        assert set(np.nonzero(line)[0]) == {7, 8, 23, 24}
    # The interior of every face is covered.
    for axis in range(3):
        for layer in (8, 23):
            face = np.take(e, layer, axis=axis)[10:22, 10:22]
            assert face.all(), (axis, layer)
    # Nothing deep inside or far outside.
    assert not e[10:22, 10:22, 10:22].any()
    assert not e[:5].any() and not e[27:].any()


def test_flat_image_has_no_edges():
    edge_map, threshold = edges.canny_edges(np.full((16, 16, 16), 0.3, np.float32))
    assert edge_map.sum() == 0 and threshold == 0.0
