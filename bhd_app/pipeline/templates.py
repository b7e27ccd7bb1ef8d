"""The template space and the fixed harmonization grid.

The template is the MNI152 2009a nonlinear *symmetric* atlas as shipped inside
nilearn's wheel (brain-only T1, GM and WM probability maps); nothing is
downloaded. Its BIDS name is ``MNI152NLin2009aSym``.

The harmonization grid has the paper's voxel size, 1.2 x 1.2 x 1.25 mm
(section 4.1, supplement S2), and a matrix of 128 x 160 x 136 that covers the
template brain (144 x 180 x 154 mm) with a 3-8 mm margin. Every size divides by
8, the U-Net's total down-sampling factor (three 2x steps, supplement S3.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..config import GRID_SPACING

TEMPLATE_SPACE = "MNI152NLin2009aSym"
GRID_SHAPE = (128, 160, 136)
# World coordinate (mm, RAS) of the grid's centre: the centre of the template brain.
GRID_CENTER = (0.0, -17.0, 5.0)
RESOLUTION_LABEL = "1p2"
RESOLUTION_TEXT = "1.2 x 1.2 x 1.25 mm, matrix 128 x 160 x 136 (RAS), covering the MNI152 2009a brain"


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid: shape and a 4x4 voxel-to-world (RAS mm) affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


def harmonization_grid() -> Grid:
    """The fixed 1.2 x 1.2 x 1.25 mm grid on which the model works (RAS orientation)."""
    spacing = np.asarray(GRID_SPACING)
    shape = np.asarray(GRID_SHAPE)
    origin = np.asarray(GRID_CENTER) - (shape - 1) / 2.0 * spacing
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = origin
    return Grid(GRID_SHAPE, affine)


def _nilearn_data_dir() -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data"


def template_path(kind: str = "t1") -> Path:
    """Path of a template file shipped by nilearn: kind is 't1', 'gm' or 'wm'."""
    path = _nilearn_data_dir() / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path}: nilearn's MNI152 2009a template is missing; reinstall nilearn")
    return path


@lru_cache(maxsize=4)
def load_template(kind: str = "t1") -> tuple[np.ndarray, np.ndarray]:
    """The template image as (float32 array, affine) at its native 1 mm."""
    import nibabel as nib

    img = nib.load(template_path(kind))
    return np.asarray(img.get_fdata(), dtype=np.float32), img.affine.copy()


@lru_cache(maxsize=3)
def template_on_grid(kind: str = "t1") -> np.ndarray:
    """The template resampled (trilinear) onto the harmonization grid."""
    from scipy import ndimage

    data, affine = load_template(kind)
    grid = harmonization_grid()
    to_template = np.linalg.inv(affine) @ grid.affine
    idx = np.indices(grid.shape, dtype=np.float32).reshape(3, -1)
    coords = to_template[:3, :3] @ idx + to_template[:3, 3:4]
    return ndimage.map_coordinates(data, coords, order=1).reshape(grid.shape).astype(np.float32)
