"""The whole preprocessing stage (paper section 4.1): steps 1-6 on one image, with the quality checks."""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from ...config import BRAIN_EXTRACTION, BRAIN_EXTRACTIONS, T1W
from ...errors import BHDInputError
from ...method.intensity import PERCENTILES, normalize_percentile
from ..templates import TEMPLATE_SPACE, harmonization_grid, template_on_grid
from . import bias, brain, registration
from .bias import bias_correct, head_mask
from .brain import extract_brain_deepbet, extract_brain_template, largest_component
from .geometry import grid_ants, nifti, to_ants
from .registration import register_affine, template_ants
from .inputs import load_anatomical, looks_skull_stripped

BRAIN_EXTRACTION_METHODS = BRAIN_EXTRACTIONS
BRAIN_ML_RANGE = (600.0, 2500.0)  # a brain mask outside this is implausible
MIN_BRAIN_ML = 300.0  # smaller masks are failures of brain extraction (or not a brain image)
# tissue_fit below this: not a brain image. Measured: T1w heads 0.55 (a clinical scan) to 0.97, a
# brain-extracted T2w with a stroke 0.26; a uniform ellipsoid phantom 0.09, uniform noise 0.005 (both
# pass brain extraction and registration).
MIN_TISSUE_FIT = 0.15


@dataclass
class Preprocessed:
    """One image on the harmonization grid, with what is needed to go back (to_native)."""

    image: np.ndarray  # float32 on harmonization_grid(), normalized to [0, 1], 0 outside the brain
    brain_mask: np.ndarray  # uint8 on the grid
    transform_path: Path  # ANTs affine .mat, native -> template (ITK convention), in work_dir
    native_brain_mask: nib.Nifti1Image  # uint8 on the native grid
    native_image: nib.Nifti1Image  # float32 on the native grid: the N4 image normalized like ``image``
    timings: dict[str, float]  # seconds per step
    settings: dict[str, Any]  # everything used, JSON-serializable, for the sidecars
    qc: dict[str, float] = field(default_factory=dict)  # template overlap, brain volume, intensity range


@lru_cache(maxsize=1)
def template_brain_mask_on_grid() -> np.ndarray:
    """The template brain mask (T1 > 0) resampled onto the harmonization grid (uint8)."""
    import ants

    _, mask, _ = template_ants()
    on_grid = ants.resample_image_to_target(mask, grid_ants(), interp_type="linear")
    return (on_grid.numpy() >= 0.5).astype(np.uint8)


def tissue_fit(image: np.ndarray, mask: np.ndarray) -> float:
    """How well the template's grey and white matter maps explain an image on the grid, in ``mask``: the
    multiple correlation R of a linear fit, so any contrast of a brain scores high and a phantom low."""
    gm, wm = template_on_grid("gm")[mask], template_on_grid("wm")[mask]
    design = np.stack([gm, wm, np.ones_like(gm)], axis=1).astype(np.float64)
    values = image[mask].astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    return float(np.sqrt(max(0.0, 1.0 - np.var(values - design @ coef) / max(np.var(values), 1e-12))))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def preprocess(
    path: str | os.PathLike,
    work_dir: str | os.PathLike,
    brain_extraction: str = BRAIN_EXTRACTION,
    skull_stripped: bool | None = None,
    seed: int = T1W.seed,
    n_threads: int = 1,
    contrast: str = "T1w",
) -> Preprocessed:
    """Steps 1-6 on one image (section 4.1); the affine transform is written into `work_dir`.

    brain_extraction: "auto" (nonzero voxels if the input is skull-stripped, else deepbet for T1w
    and template for other contrasts; template also when deepbet's mask is implausible), or one
    of "deepbet", "template", "nonzero". skull_stripped: None detects it (looks_skull_stripped).
    """
    if brain_extraction not in BRAIN_EXTRACTION_METHODS:
        choices = ", ".join(BRAIN_EXTRACTION_METHODS)
        raise BHDInputError(f"brain extraction '{brain_extraction}': use one of {choices}")
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(n_threads)  # effective only before ITK's first use
    import ants

    path, work_dir = Path(path), Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    stem = path.name.removesuffix(".gz").removesuffix(".nii")
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    # 1. load and check
    img = load_anatomical(path)
    data, affine = np.asarray(img.dataobj), img.affine
    del img  # one copy of the input in memory: ``data``
    np.maximum(data, 0.0, out=data)  # magnitude: no negatives
    zooms = tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0))
    voxel_ml = float(np.prod(zooms)) / 1000.0
    stripped = looks_skull_stripped(data, zooms) if skull_stripped is None else bool(skull_stripped)
    lap("load")

    # 2. N4, over the head (or the nonzero voxels of a stripped input)
    nonzero = data > 0
    head = nonzero if stripped else head_mask(data)
    n4_data, shrink = bias_correct(data, head, affine)
    del data  # from here on the N4 image stands for the input
    lap("n4")

    # 3. brain extraction
    method = brain_extraction
    if method == "auto":
        method = "nonzero" if stripped else ("deepbet" if contrast == "T1w" else "template")
    fallback = None
    if method == "deepbet":
        try:
            mask = extract_brain_deepbet(n4_data, affine, n_threads)
            problem = f"a mask of {mask.sum() * voxel_ml:.0f} mL"
            plausible = BRAIN_ML_RANGE[0] <= mask.sum() * voxel_ml <= BRAIN_ML_RANGE[1]
        except Exception as exc:  # e.g. deepbet's "Not enough foreground to calculate bounding box"
            if brain_extraction != "auto":
                raise BHDInputError(f"{path}: deepbet failed ({exc}); try the template brain extraction") from exc
            mask, problem, plausible = None, f"an error ({exc})", False
        if brain_extraction == "auto" and not plausible:
            warnings.warn(f"{path}: deepbet gave {problem}; using the template brain extraction")
            fallback, method = f"deepbet: {problem}", "template"
    if method == "template":
        mask = extract_brain_template(to_ants(n4_data, affine), head, affine, work_dir, stem, seed)
    elif method == "nonzero":
        mask = ndi.binary_fill_holes(largest_component(nonzero))
    brain_ml = float(mask.sum() * abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    if brain_ml < MIN_BRAIN_ML:
        raise BHDInputError(f"{path}: brain extraction ({method}) found {brain_ml:.0f} ml of brain (an adult brain "
                            f"is about 1,000-1,600 ml); check the image is a brain MRI or try another "
                            "--brain-extraction")
    lap("brain_extraction")

    # 4. affine registration of the brain to the template brain
    transform = register_affine(to_ants(n4_data * mask, affine), work_dir / f"{stem}_native-to-template_", seed)
    lap("registration")

    # 5. resampling onto the grid: linear for the image, linear then >= 0.5 for the mask
    grid_ref = grid_ants()
    image = ants.apply_transforms(grid_ref, to_ants(n4_data, affine), [str(transform)], interpolator="linear").numpy()
    grid_mask = ants.apply_transforms(grid_ref, to_ants(mask.astype(np.float32), affine), [str(transform)],
                                      interpolator="linear").numpy() >= 0.5
    lap("resample")

    # 6. normalization (section 4.1)
    try:
        image, low, high = normalize_percentile(image, grid_mask)
    except (ValueError, IndexError) as exc:
        raise BHDInputError(f"{path}: cannot normalize ({exc}); check the image and its brain mask") from exc
    lap("normalize")
    timings["total"] = round(sum(timings.values()), 3)

    native_mask = nifti(mask.astype(np.uint8), affine)
    native = n4_data  # normalized in place: its last use
    native -= low
    native /= high - low
    np.clip(native, 0.0, 1.0, out=native)
    native[~mask] = 0.0
    native_image = nifti(native, affine)
    template_mask = template_brain_mask_on_grid()
    qc = {
        "template_dice": round(_dice(grid_mask, template_mask), 4),
        "tissue_fit": round(tissue_fit(image, grid_mask & (template_mask > 0)), 4),
        "brain_volume_ml": round(float(mask.sum()) * voxel_ml, 1),
        "normalization_low": low,
        "normalization_high": high,
    }
    if qc["tissue_fit"] < MIN_TISSUE_FIT:
        raise BHDInputError(f"{path}: does not look like a brain MRI (the template's grey and white matter explain "
                            f"its brain intensities with R = {qc['tissue_fit']:.2f}, brain images score "
                            f"{MIN_TISSUE_FIT:g} or more); check that this is a brain image")
    if qc["template_dice"] < 0.8:
        warnings.warn(f"{path}: registered brain overlaps the template brain poorly (Dice {qc['template_dice']})")
    settings = _settings(
        brain_extraction, method, fallback, stripped, skull_stripped, contrast, shrink, seed, n_threads
    )
    settings["normalization"].update(low=low, high=high)  # the intensities mapped to 0 and 1
    return Preprocessed(
        image=image,
        brain_mask=grid_mask.astype(np.uint8),
        transform_path=transform,
        native_brain_mask=native_mask,
        native_image=native_image,
        timings=timings,
        settings=settings,
        qc=qc,
    )


def step_settings() -> dict[str, Any]:
    """bhd's version and the settings of the steps that decide preprocessing's result. The workflow gives them to its
    preprocessing node, so that nipype's cache redoes the node when they change (it hashes a node's inputs only)."""
    from ... import __version__

    return {"bhd": __version__, "n4": dict(bias.N4), "registration": registration.affine_settings(),
            "deepbet_input_shape": list(brain.DEEPBET_SHAPE)}


def _settings(requested, method, fallback, stripped, stripped_given, contrast, shrink, seed, n_threads) -> dict:
    from importlib.metadata import version

    grid = harmonization_grid()
    extraction: dict[str, Any] = {"requested": requested, "method": method, "input_skull_stripped": stripped,
                                  "skull_stripped_detected": stripped_given is None}
    if method == "deepbet":
        extraction.update(package=f"deepbet {version('deepbet')}", threshold=0.5,
                          network_input_shape=list(brain.DEEPBET_SHAPE))
    elif method == "template":
        extraction.update(template=TEMPLATE_SPACE,
                          registration="rigid then affine from a head-geometry start (_head_init_transform), "
                                       "metric masked to the template brain",
                          mask="template T1 > 0 warped back, linear, >= 0.5")
    if fallback:
        extraction["fallback_from"] = fallback
    return {
        "contrast": contrast,
        "bias_correction": {"method": "N4 (antspyx)", "shrink_factor": shrink, **bias.N4,
                            "mask": "nonzero voxels" if stripped else "head (head_mask)"},
        "brain_extraction": extraction,
        "registration": {"method": "antspyx antsRegistration", "template": TEMPLATE_SPACE, "transform": "Affine",
                         "moving": "N4 image x brain mask", "initialization": "centres of mass",
                         **registration.affine_settings()},
        "resampling": {"grid_shape": list(grid.shape), "grid_spacing_mm": list(grid.spacing),
                       "image": "linear", "mask": "linear, >= 0.5"},
        "normalization": {"method": "percentile min-max inside the brain, clipped to [0, 1], 0 outside",
                          "percentiles": list(PERCENTILES)},
        "seed": seed,
        "ants_random_seed": seed + 1,
        "n_threads": n_threads,
        "versions": {p: version(p) for p in ("antspyx", "nibabel", "deepbet")},
    }
