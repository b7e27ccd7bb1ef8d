"""Step 4 of preprocessing: affine registration to the template T1 (and the template images ANTs registers to)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..templates import load_template
from .geometry import grid_ants, to_ants

# Affine registration to the template T1 (1 mm): three levels down to 2 mm (the grid is 1.2 mm; a
# fourth, 1 mm level moved the brain by only 0.3-0.7 mm RMS at 10x the cost), mutual information
# (works for T2w too), 25% regular sampling restricted to the template brain dilated by 5 mm. The 2 mm
# level costs about 0.35 s an iteration on a 1 mm head and stops after 5 (about 40 to converge): with deepbet's
# 192^3 masks the brain then lands 0.05-0.46 mm (mean) from where all of them put it (BENCHMARKS.md).
AFFINE = {
    "metric": "mattes",
    "shrink_factors": (8, 4, 2),
    "smoothing_sigmas_vox": (4, 2, 1),
    "iterations": (1000, 500, 5),
    "sampling": "regular",
    "sampling_rate": 0.25,
    "fixed_mask_dilation_mm": 5.0,
}


def affine_settings() -> dict:
    """AFFINE as JSON (tuples as lists), for the sidecars and the workflow's cache key."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in AFFINE.items()}


@lru_cache(maxsize=1)
def template_ants():
    """(template T1, brain mask, brain mask dilated) as ANTs images; the mask is T1 > 0 (brain-only T1)."""
    t1, affine = load_template("t1")
    mask = t1 > 0
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    dilated = ndi.distance_transform_edt(~mask, sampling=spacing) <= AFFINE["fixed_mask_dilation_mm"]
    return tuple(to_ants(a.astype(np.float32), affine) for a in (t1, mask, dilated))


@lru_cache(maxsize=1)
def template_brain_mask_on_grid() -> np.ndarray:
    """The template brain mask (T1 > 0) resampled onto the harmonization grid (uint8)."""
    import ants

    _, mask, _ = template_ants()
    on_grid = ants.resample_image_to_target(mask, grid_ants(), interp_type="linear")
    return (on_grid.numpy() >= 0.5).astype(np.uint8)


def register_affine(
    moving,
    outprefix: Path,
    seed: int,
    stages: tuple[str, ...] = ("Affine",),
    mask=None,
    initial: Path | None = None,
    metric: str | None = None,
) -> Path:
    """Register `moving` to the template T1 (settings in AFFINE), one ANTs run per stage.

    Returns the collapsed affine (native -> template), ``{outprefix}0GenericAffine.mat``; earlier
    stages' files are removed. mask: metric mask on the template (default: brain dilated by 5 mm).
    Without `initial`, ANTs starts from the centres of mass.
    """
    import ants

    fixed, _, dilated = template_ants()
    kwargs = dict(
        aff_metric=metric or AFFINE["metric"],
        aff_sampling=32,
        aff_random_sampling_rate=AFFINE["sampling_rate"],
        aff_iterations=AFFINE["iterations"],
        aff_shrink_factors=AFFINE["shrink_factors"],
        aff_smoothing_sigmas=AFFINE["smoothing_sigmas_vox"],
        mask=dilated if mask is None else mask,
    )
    previous_seed = ants.config._random_seed  # read by ants.registration at call time
    ants.config._random_seed = seed + 1  # ANTs reads 0 as "seed from the clock"
    try:
        for i, stage in enumerate(stages):
            prefix = str(outprefix) if i == len(stages) - 1 else f"{outprefix}{stage.lower()}_"
            ants.registration(fixed, moving, stage, initial_transform=[str(initial)] if initial else None,
                              outprefix=prefix, **kwargs)
            if i > 0:
                initial.unlink(missing_ok=True)
            initial = Path(f"{prefix}0GenericAffine.mat")
    finally:
        ants.config._random_seed = previous_seed
    return initial
