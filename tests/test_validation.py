"""The validation subjects' lesion check (Fig. 6): masks from the simulator, contrast error against the target."""

from __future__ import annotations

import numpy as np

from bhd_app.evaluation.metrics import lesion_contrast
from bhd_app.evaluation.simulation import make_anatomy
from bhd_app.pipeline.templates import harmonization_grid
from bhd_app.training.validation import VALIDATION_SEEDS, lesion_masks, traveling_subjects


def test_lesion_masks_hold_the_lesions_and_the_white_matter_around_them(anatomy):
    lesion, shell = lesion_masks(make_anatomy(7, lesions=2), harmonization_grid())
    assert lesion.sum() > 50 and shell.sum() > 50
    assert not (lesion & shell).any()
    no_lesion, _ = lesion_masks(anatomy, harmonization_grid())  # the session's subject has none
    assert not no_lesion.any()


def test_lesion_contrast_error_is_zero_for_the_target_and_large_for_a_filled_lesion():
    subj = traveling_subjects(seeds=VALIDATION_SEEDS[:1], sources=("sonata15t",))[0]
    target_contrast = lesion_contrast(subj.target, subj.lesion, subj.shell)
    assert 0.5 < target_contrast < 0.9  # lesions are T1-hypointense
    assert subj.lesion_contrast_error(subj.target) == 0.0
    assert 0.0 < subj.lesion_contrast_error(subj.source) < 0.3
    filled = subj.target.copy()
    filled[subj.lesion] = subj.target[subj.shell].mean()  # the lesion painted over with white matter
    assert np.isclose(subj.lesion_contrast_error(filled), 1.0 - target_contrast)
