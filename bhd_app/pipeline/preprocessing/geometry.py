"""Geometry: nibabel's RAS affine is the only source of truth. Arrays reach ANTs (LPS) through ``to_ants`` and never
through ITK's own NIfTI reader, which can prefer the qform where nibabel prefers the sform. ``to_native`` maps an
array on the harmonization grid back to an input's native grid with the inverse affine (step 7)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from ...errors import BHDInputError
from ..templates import harmonization_grid

INTERPOLATORS = {"linear": "linear", "nearest": "nearestNeighbor", "label": "genericLabel"}
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A NIfTI image whose qform and sform both hold `affine` (so ITK and nibabel agree), units mm."""
    out = nib.Nifti1Image(data, affine)
    out.set_qform(affine, code="scanner")
    out.set_sform(affine, code="scanner")
    out.header.set_xyzt_units("mm")
    return out


def to_ants(data: np.ndarray, affine: np.ndarray):
    """An ANTs image with nibabel's voxel-to-world affine (RAS) turned into ITK's LPS geometry."""
    import ants

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = RAS_TO_LPS @ (affine[:3, :3] / spacing)
    origin = RAS_TO_LPS @ affine[:3, 3]
    return ants.from_numpy(
        np.ascontiguousarray(data, dtype=np.float32),
        origin=tuple(float(v) for v in origin),
        spacing=tuple(float(v) for v in spacing),
        direction=direction,
    )


def grid_ants(data: np.ndarray | None = None):
    grid = harmonization_grid()
    return to_ants(np.zeros(grid.shape, np.float32) if data is None else data, grid.affine)


def to_native(
    grid_array: np.ndarray,
    transform_path: str | os.PathLike,
    native_reference_path: str | os.PathLike,
    interpolation: str = "linear",
) -> nib.Nifti1Image:
    """Map an array on harmonization_grid() to the native grid of `native_reference_path`.

    Uses the inverse of the affine from preprocess. interpolation: "linear" (float32 out),
    "nearest" or "label" (out in the input's dtype, for masks and labels).
    """
    import ants

    if interpolation not in INTERPOLATORS:
        raise ValueError(f"interpolation {interpolation!r}: use one of {', '.join(INTERPOLATORS)}")
    grid = harmonization_grid()
    grid_array = np.asarray(grid_array)
    if grid_array.shape != grid.shape:
        raise ValueError(f"array of shape {grid_array.shape} is not on the harmonization grid {grid.shape}")
    if not Path(transform_path).is_file():
        raise FileNotFoundError(f"{transform_path}: the affine transform from preprocess is missing")
    ref_path = Path(native_reference_path)
    try:
        ref = nib.load(ref_path)
        shape, affine = ref.shape[:3], np.asarray(ref.affine, dtype=float)
    except Exception as exc:
        reason = type(exc).__name__
        raise BHDInputError(f"{ref_path}: cannot be read as a NIfTI image ({reason}); check the file") from exc
    native = ants.apply_transforms(
        to_ants(np.zeros(shape, np.float32), affine),
        grid_ants(grid_array.astype(np.float32)),
        [str(transform_path)],
        whichtoinvert=[True],
        interpolator=INTERPOLATORS[interpolation],
    ).numpy()
    if interpolation == "linear":
        dtype = np.float32
    else:  # masks and labels keep their type
        dtype = np.uint8 if grid_array.dtype == bool else grid_array.dtype
    return nifti(native.astype(dtype, copy=False), affine)


def carry_change_to_native(
    harmonized: np.ndarray,
    source: np.ndarray,
    native_source_path: str | os.PathLike,
    native_mask: nib.Nifti1Image,
    transform_path: str | os.PathLike,
) -> nib.Nifti1Image:
    """The harmonized image at the input's own resolution: the native source plus the change made on the grid.

    ``harmonized`` and ``source`` (D, H, W) are on harmonization_grid(), in [0, 1]; ``native_source_path``
    holds the input normalized like ``source`` (``Preprocessed.native_image``). The change harmonized - source is
    mapped to the native grid (linear) and added there, so detail finer than the grid is kept rather than
    resampled away; the result is clipped to [0, 1] and zero outside ``native_mask``.
    """
    native_source = nib.load(native_source_path)
    change = to_native(np.asarray(harmonized, np.float32) - np.asarray(source, np.float32), transform_path,
                       native_source_path)
    out = np.asarray(change.dataobj)  # float32, summed into in place
    out += np.asarray(native_source.dataobj, dtype=np.float32)
    np.clip(out, 0.0, 1.0, out=out)
    out[np.asarray(native_mask.dataobj) == 0] = 0.0
    return nifti(out, native_source.affine)
