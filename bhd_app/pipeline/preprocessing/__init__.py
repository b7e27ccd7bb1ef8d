"""Preprocessing of one anatomical image onto the harmonization grid (paper section 4.1).

    load_anatomical -> N4 bias correction -> brain extraction -> affine registration to the
    template brain -> resampling onto harmonization_grid() -> 1st-99th percentile min-max
    normalization inside the brain (section 4.1)

``to_native`` maps any array on the grid back to the native grid with the inverse affine.

One module per step: ``inputs`` (load and check), ``bias`` (N4), ``brain`` (brain extraction),
``registration`` (affine to the template), ``geometry`` (RAS/LPS and the way back to the native grid);
``stage`` runs them in order (``preprocess``) and checks the result.

Brain extraction: ``deepbet`` (a CNN trained on T1w heads, weights inside its wheel) is the default
for T1w; ``template`` (affine registration of the head to the brain-only MNI template, whose brain
mask is warped back) is the fallback for other contrasts and for implausible deepbet masks;
``nonzero`` keeps the nonzero voxels of an input that is already skull-stripped.
benchmarks/RESULTS_preprocessing.md has the measurements behind these choices.

ANTs works in memory; only the affine transforms are files, written under the caller's ``work_dir``
(nothing goes to the system temp dir).

Reproducibility: ANTs samples its metric at random points. We pass ``seed + 1`` as its random seed
(ANTs reads 0 as "seed from the clock") and ask ITK for ``n_threads`` threads. With one thread
runs are bit-identical; with more, ANTs' mutual information sums per thread and two runs can differ
slightly (affine parameters by ~1e-4). deepbet runs with torch set to ``n_threads``. ITK reads
ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS once, at its first use in the process: the first ``preprocess``
call (or the CLI, before anything else) fixes the thread count for the process.
"""

from __future__ import annotations

from ...method.intensity import normalize_percentile
from .geometry import carry_change_to_native, to_native
from .inputs import load_anatomical, looks_skull_stripped
from .stage import (
    BRAIN_EXTRACTION_METHODS,
    MIN_TISSUE_FIT,
    Preprocessed,
    preprocess,
    step_settings,
    template_brain_mask_on_grid,
    tissue_fit,
)

__all__ = [
    "BRAIN_EXTRACTION_METHODS",
    "MIN_TISSUE_FIT",
    "Preprocessed",
    "carry_change_to_native",
    "load_anatomical",
    "looks_skull_stripped",
    "normalize_percentile",
    "preprocess",
    "step_settings",
    "template_brain_mask_on_grid",
    "tissue_fit",
    "to_native",
]
