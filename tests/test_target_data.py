"""Tests of bhd_app.training.data: the compact cache of prepared target-domain images."""

from __future__ import annotations

import numpy as np

from bhd_app.method.edges import canny_edges
from bhd_app.training.data import load_cache, save_cache


def test_cache_round_trip_keeps_masks_and_edges_exactly_and_images_to_8_bits(small_subject, tmp_path):
    images = [small_subject["trio3t"], small_subject["vision15t"]]
    masks = [small_subject["mask"].astype(np.uint8)] * 2
    edges = [canny_edges(im)[0] for im in images]
    edges[1][0, 0, 0] = 1  # an edge voxel far outside the brain's bounding box is kept too
    save_cache(tmp_path / "data.npz", images, masks, edges, {"source": "test", "subjects": 2})
    back, back_masks, back_edges, desc = load_cache(tmp_path / "data.npz")
    assert desc == {"source": "test", "subjects": 2}
    for a, b in zip(images, back):
        assert b.shape == a.shape and b.dtype == np.float32
        assert np.abs(a - b).max() <= 0.5 / 255 + 1e-6
    for a, b in zip(masks + edges, back_masks + back_edges):
        np.testing.assert_array_equal(a, b)
    assert (tmp_path / "data.npz").stat().st_size < sum(im.nbytes for im in images) / 4
    assert not list(tmp_path.glob("*.tmp"))
