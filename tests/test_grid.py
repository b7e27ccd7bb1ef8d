"""Tests of bhd_app.method.grid (the model's grid: the harmonization grid or one twice as coarse), against
closed forms: block means, a linear field, a block-constant image."""

from __future__ import annotations

import numpy as np

from bhd_app.method.grid import coarsen, coarsen_mask, refine_grid


def linear_field(shape: tuple[int, int, int]) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    return (0.1 * z + 0.05 * y - 0.02 * x + 3).astype(np.float32)


def test_coarsen_takes_block_means_and_pads_to_the_unet_multiple():
    image = np.random.default_rng(0).random((21, 24, 18)).astype(np.float32)
    coarse = coarsen(image, 2, multiple=8)
    assert coarse.shape == (16, 16, 16)  # 10, 12, 9 blocks, padded to multiples of 8
    np.testing.assert_allclose(coarse[3, 5, 2], image[6:8, 10:12, 4:6].mean(), rtol=1e-6)
    assert (coarse[10:] == 0).all() and (coarse[:, 12:] == 0).all() and (coarse[:, :, 9:] == 0).all()
    assert coarsen(image, 1) is image


def test_a_linear_field_comes_back_exactly_inside_and_within_half_a_voxel_step_at_the_borders():
    """Block means of a linear field are its values at the block centres, and linear interpolation between them
    reproduces it; the outermost voxels take the nearest block, whose centre is half a voxel away."""
    field = linear_field((20, 24, 18))
    back = refine_grid(coarsen(field, 2), field.shape, 2)
    np.testing.assert_allclose(back[1:-1, 1:-1, 1:-1], field[1:-1, 1:-1, 1:-1], atol=1e-5)
    np.testing.assert_allclose(np.abs(back - field).max(), 0.5 * (0.1 + 0.05 + 0.02), rtol=1e-4)


def test_nearest_refinement_undoes_coarsening_of_a_block_constant_image_and_zeroes_the_cut_voxels():
    blocks = np.random.default_rng(1).random((5, 6, 4)).astype(np.float32)
    image = np.zeros((11, 12, 8), np.float32)  # one voxel past the last whole block on the first axis
    image[:10] = blocks.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    back = refine_grid(coarsen(image, 2), image.shape, 2, order=0)
    np.testing.assert_allclose(back, image, atol=1e-6)
    assert (refine_grid(coarsen(image + 1, 2), image.shape, 2, order=0)[10] == 0).all()


def test_a_coarse_mask_keeps_the_blocks_at_least_half_inside():
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[:2, :2, :2] = 1  # a whole block
    mask[2:, 2:, 2:][0] = 1  # half of another (4 of its 8 voxels)
    mask[:2, 2:, :2][0, 0, 0] = 1  # one voxel of a third
    coarse = coarsen_mask(mask, 2, multiple=1)
    assert coarse.dtype == np.uint8 and coarse.shape == (2, 2, 2)
    assert coarse[0, 0, 0] == 1 and coarse[1, 1, 1] == 1 and coarse[0, 1, 0] == 0 and coarse.sum() == 2
