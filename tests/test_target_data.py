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


def test_training_data_on_the_coarse_grid_are_block_means_with_edge_maps_found_there(small_subject):
    from bhd_app.method.grid import coarsen
    from bhd_app.training.data import on_model_grid

    image = small_subject["trio3t"]
    fine_edges = [canny_edges(image)[0]]
    assert on_model_grid([image], fine_edges, 1) == ([image], fine_edges)
    coarse, edges = on_model_grid([image], fine_edges, 2)
    assert coarse[0].shape == edges[0].shape == (16, 16, 16)
    np.testing.assert_allclose(coarse[0][2, 3, 4], image[4:6, 6:8, 8:10].mean(), rtol=1e-6)
    np.testing.assert_array_equal(edges[0], canny_edges(coarsen(image, 2))[0])
