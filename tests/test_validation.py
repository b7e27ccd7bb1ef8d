"""Validation subjects: the lesion check (Fig. 6) of simulated ones, and altered held-out images of a real target."""

from __future__ import annotations

import numpy as np

from bhd_app.method.metrics import lesion_contrast
from bhd_app.evaluation.simulation import make_anatomy
from bhd_app.pipeline.templates import harmonization_grid
from bhd_app.training.validation import (VALIDATION_ALTERATIONS, VALIDATION_SEEDS, altered_subjects, lesion_masks,
                                         traveling_subjects)


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


def test_altered_subjects_are_held_out_images_with_lesions_seen_by_known_scanners(subject):
    """A real target's validation subject: the image with lesions drawn in is the truth, and each source is
    exactly that truth altered by its scanner of ``alterations.SOURCES`` (recomputed here as the oracle)."""
    from bhd_app.evaluation.alterations import SOURCES, draw_lesions

    image, mask = subject.image("trio3t"), subject.mask
    subjects = altered_subjects([image, image], [mask, mask])
    assert [(s.seed, s.protocol) for s in subjects] == [(k, name) for k in (0, 1) for name in VALIDATION_ALTERATIONS]
    for s in subjects:
        truth, lesion, shell = draw_lesions(image, mask, seed=s.seed)
        np.testing.assert_array_equal(s.target, truth)
        np.testing.assert_array_equal(s.lesion, lesion)
        np.testing.assert_array_equal(s.source, SOURCES[s.protocol].apply(truth, mask, seed=100 * s.seed + 7))
        assert s.target[s.lesion].mean() < 0.8 * image[s.lesion].mean()  # T1-hypointense lesions in the truth
        assert s.lesion_contrast_error(s.target) == 0.0 < s.lesion_contrast_error(s.source)
    assert not np.array_equal(subjects[0].lesion, subjects[2].lesion)  # each held-out image its own lesions
