"""Step 3 of preprocessing: brain extraction by deepbet (T1w heads) or by registering the head to the template
brain."""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from ..templates import load_template
from .geometry import RAS_TO_LPS
from .registration import register_affine, template_ants

# deepbet's network input for the brain box: 192^3 (about 1 mm voxels over a brain box) instead of its 256^3
# takes 2-3x less time; the masks agree with 256^3's at Dice 0.986-0.990 on nine heads (BENCHMARKS.md).
DEEPBET_SHAPE = (192, 192, 192)
HEAD_TOP_TO_BRAIN_MM = 80.0  # template method: the brain centre starts this far below the top of the head


@lru_cache(maxsize=1)
def _deepbet_model():
    from deepbet.bet import BrainExtraction

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=DeprecationWarning)
        return BrainExtraction()  # GPU if torch sees one, else CPU


def extract_brain_deepbet(data: np.ndarray, affine: np.ndarray, n_threads: int = 1) -> np.ndarray:
    """deepbet (Fisch et al. 2024) brain mask (D, H, W) bool, thresholded at 0.5; trained on T1w heads.

    deepbet's own ``run`` with its network input at DEEPBET_SHAPE instead of 256^3: its bounding-box
    network finds the brain, the brain box is resampled to DEEPBET_SHAPE, segmented, and mapped back.
    """
    import torch

    model = _deepbet_model()
    image = nib.Nifti1Image(data.astype(np.float32), affine)
    canonical = nib.as_closest_canonical(image)  # RAS+, as deepbet expects
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        volume = np.ascontiguousarray(canonical.get_fdata(dtype=np.float32))
        probability = model.run_model(volume, shape=DEEPBET_SHAPE)
    finally:
        torch.set_num_threads(previous)
    mask = model.postprocess(probability > 0.5)
    back = nib.orientations.ornt_transform(nib.io_orientation(canonical.affine), nib.io_orientation(affine))
    return nib.orientations.apply_orientation(mask, back) > 0


def _head_init_transform(head: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """Translation putting the template brain's centre of mass where the head's geometry puts the brain.

    Left-right and front-back: the centre of the top 60 mm of the head (around the skull vault; the
    same slab of the template brain is within 1.5 mm of its centre). Up-down: HEAD_TOP_TO_BRAIN_MM
    below the top of the head (scalp and skull ~12 mm, brain top to centre ~70 mm). The centre of
    mass of the whole head sits in the face and neck, too low: a rigid stage started there
    converged to the wrong place in 2 of 15 trials, from here in none of 20 (RESULTS_preprocessing.md).
    """
    import ants

    xyz = nib.affines.apply_affine(affine, np.argwhere(head))  # RAS mm: the scanner's z is the body axis
    top = xyz[:, 2].max()
    centre = xyz[xyz[:, 2] > top - 60.0].mean(axis=0)
    centre[2] = top - HEAD_TOP_TO_BRAIN_MM
    t1, t_affine = load_template("t1")
    t_centre = nib.affines.apply_affine(t_affine, np.array(ndi.center_of_mass(t1 > 0)))
    shift = RAS_TO_LPS @ (centre - t_centre)  # ITK maps fixed (template) points to moving points
    tx = ants.create_ants_transform(
        transform_type="AffineTransform", precision="float", dimension=3, translation=tuple(shift.tolist())
    )
    ants.write_transform(tx, str(path))
    return path


def extract_brain_template(
    image, head: np.ndarray, affine: np.ndarray, work_dir: Path, stem: str, seed: int
) -> np.ndarray:
    """Template-based brain mask: register the head to the brain-only template, warp its mask back.

    Rigid then affine, from _head_init_transform, with the metric restricted to the template brain
    itself: without that mask, or with a dilated one, the template brain was often scaled onto the
    whole head (benchmarks). Any contrast (mutual information). No intensity refinement: the mask
    is the warped template brain, 3-9% smaller than deepbet's (Dice 0.947-0.960 on five heads).
    """
    import ants

    _, t_mask, _ = template_ants()
    init = _head_init_transform(head, affine, work_dir / f"{stem}_head-init.mat")
    transform = register_affine(
        image, work_dir / f"{stem}_head-to-template_", seed, stages=("Rigid", "Affine"), mask=t_mask, initial=init
    )
    warped = ants.apply_transforms(image, t_mask, [str(transform)], whichtoinvert=[True], interpolator="linear")
    init.unlink(missing_ok=True)
    transform.unlink(missing_ok=True)
    mask = warped.numpy() >= 0.5
    return ndi.binary_fill_holes(largest_component(mask))


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n <= 1:
        return mask
    return labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
