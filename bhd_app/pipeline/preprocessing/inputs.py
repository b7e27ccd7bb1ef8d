"""Step 1 of preprocessing: load one anatomical image and refuse what cannot be a 3D brain image."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from ...errors import BHDInputError
from .geometry import nifti

MAX_ANISOTROPY = 5.0  # largest / smallest voxel size
MIN_EXTENT_VOXELS = 16  # a "3D" image thinner than this is a slab or a single slice
MIN_FIELD_OF_VIEW_MM = 80.0  # an image narrower than this along any axis cannot hold a whole brain
# An input whose nonzero voxels fill less than this (and at least 30% of the field of view is exactly
# zero) is taken as already skull-stripped: stripped brains are 1.0-1.9 L, heads 3-7 L.
STRIPPED_MAX_ML = 2200.0


def load_anatomical(path: str | os.PathLike) -> nib.Nifti1Image:
    """Load one 3D anatomical image as float32, or raise BHDInputError naming the file.

    A 4D image with one volume is squeezed. NaN/Inf voxels (some converters mark outside-FOV
    voxels that way) are set to 0 with a warning; an all-zero or constant image is an error, as is
    a voxel size ratio above MAX_ANISOTROPY, as are complex-valued voxels (never cast to real).
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise BHDInputError(f"{path}: a broken symlink (a git-annex/DataLad file not fetched?); fetch it with "
                            "`datalad get` or `git annex get`, or remove it")
    if not path.is_file():
        raise BHDInputError(f"{path}: file not found; check the path")
    try:
        path.open("rb").close()
    except OSError as exc:  # nibabel reports an unreadable file as "Could not read file"
        raise BHDInputError(f"{path}: cannot be opened ({exc.strerror}); check its permissions") from exc
    try:
        img = nib.load(path)
        stored = np.dtype(img.get_data_dtype())
        # reads every byte: a truncated file fails here (complex voxels are refused below, not cast to real)
        data = None if stored.kind == "c" else np.asarray(img.dataobj, dtype=np.float32)
        affine = np.asarray(img.affine, dtype=float)
    except Exception as exc:  # nibabel raises EOFError, zlib.error, ValueError, ImageFileError, ...
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise BHDInputError(
            f"{path}: cannot be read as a NIfTI image ({reason}); re-export or re-download it"
        ) from exc
    if data is None:
        raise BHDInputError(f"{path}: complex-valued voxels (NIfTI datatype {stored.name}); pass a real-valued "
                            "magnitude image (e.g. the magnitude reconstruction, or the modulus of this one)")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise BHDInputError(f"{path}: expected one 3D volume, got shape {data.shape}; pass a single 3D image")
    if min(data.shape) < MIN_EXTENT_VOXELS:
        raise BHDInputError(f"{path}: shape {data.shape} is too thin for a 3D head image; pass a 3D volume")
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.all(np.isfinite(affine)) or np.any(zooms <= 0) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise BHDInputError(f"{path}: the voxel-to-world affine is invalid; fix the header (qform/sform)")
    if zooms.max() / zooms.min() > MAX_ANISOTROPY:
        sizes = "x".join(f"{z:.2g}" for z in zooms)
        raise BHDInputError(
            f"{path}: voxel size {sizes} mm is too anisotropic (ratio > {MAX_ANISOTROPY:g}); use a 3D acquisition"
        )
    extent = zooms * np.array(data.shape[:3])
    if extent.min() < MIN_FIELD_OF_VIEW_MM:
        sizes = " x ".join(f"{e:.0f}" for e in extent)
        raise BHDInputError(f"{path}: the image covers only {sizes} mm (a brain needs {MIN_FIELD_OF_VIEW_MM:g} mm "
                            "or more along each axis); pass a whole-brain 3D image")
    bad = ~np.isfinite(data)
    if bad.any():
        warnings.warn(f"{path}: {int(bad.sum())} NaN/Inf voxels set to 0", stacklevel=2)
        data[bad] = 0.0
    if not np.any(data):
        raise BHDInputError(f"{path}: the image is all zeros; check the file")
    if data.max() == data.min():
        raise BHDInputError(f"{path}: the image is constant; check the file")
    return nifti(data, affine)


def looks_skull_stripped(data: np.ndarray, zooms: tuple[float, ...]) -> bool:
    """True if the nonzero voxels look like a stripped brain (small volume, exact zeros around)."""
    nonzero = data != 0
    volume_ml = nonzero.sum() * float(np.prod(zooms)) / 1000.0
    return bool(1.0 - nonzero.mean() >= 0.3 and volume_ml <= STRIPPED_MAX_ML)
