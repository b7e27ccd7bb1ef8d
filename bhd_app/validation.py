"""Validation on simulated traveling subjects: harmonization against histogram matching.

A traveling subject is one anatomy rendered by a source protocol and by the
target protocol; harmonizing the source should bring it close to the target
render (PSNR and SSIM inside the brain, section 4.4). Validation subjects use
their own seeds, disjoint from the training data, ``bids_examples/`` and the
benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .baselines import histogram_matching
from .harmonize import HarmonizationModel, harmonize
from .metrics import psnr, ssim
from .simulation import PROTOCOLS, TARGET_PROTOCOL, make_anatomy, render_on_grid

VALIDATION_SEEDS = (3001, 3002)
VALIDATION_SOURCES = ("sonata15t", "vision15t")


@dataclass
class TravelingSubject:
    seed: int
    protocol: str
    source: np.ndarray
    target: np.ndarray
    mask: np.ndarray


def traveling_subjects(seeds=VALIDATION_SEEDS, sources=VALIDATION_SOURCES, lesions: int = 2) -> list[TravelingSubject]:
    """Source/target render pairs on the harmonization grid; the mask is the target's brain."""
    out = []
    for seed in seeds:
        anatomy = make_anatomy(seed, lesions=lesions)
        target, mask = render_on_grid(anatomy, PROTOCOLS[TARGET_PROTOCOL], seed + 1)
        for k, name in enumerate(sources):
            source, _ = render_on_grid(anatomy, PROTOCOLS[name], seed + 10 + k)
            out.append(TravelingSubject(seed, name, source, target, mask))
    return out


def score(image: np.ndarray, subject: TravelingSubject) -> tuple[float, float]:
    return psnr(image, subject.target, subject.mask), ssim(image, subject.target, subject.mask)


def validate(model: HarmonizationModel, subjects: list[TravelingSubject], **settings) -> list[dict]:
    """One row per subject and protocol: PSNR/SSIM of the source, histogram matching and bhd."""
    rows = []
    for subj in subjects:
        result = harmonize(model, subj.source, subj.mask, **settings)
        hm = histogram_matching(subj.source, subj.mask, model.target_quantiles)
        row = {"seed": subj.seed, "protocol": subj.protocol}
        for name, image in (("source", subj.source), ("histmatch", hm), ("generated", result["generated"]),
                            ("bhd", result["harmonized"])):
            row[f"{name}_psnr"], row[f"{name}_ssim"] = score(image, subj)
        rows.append(row)
    return rows
