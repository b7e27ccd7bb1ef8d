"""Validation on traveling subjects: harmonization against histogram matching.

A traveling subject is one anatomy seen by a source scanner and by the target
scanner; harmonizing the source should bring it close to the target image
(PSNR and SSIM inside the brain, section 4.4). For the simulated target they
are renders of simulated anatomies (``traveling_subjects``: their own seeds,
disjoint from the training data, ``bids_examples/`` and the benchmark). For a
real target they are held-out target images with lesions drawn in, altered by
known scanner-like changes (``altered_subjects``): the unaltered image is the
truth.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from ..config import PAPER, T1W, HarmonizationSettings
from ..evaluation.alterations import SOURCES, draw_lesions
from ..method.metrics import fidelity, lesion_contrast
from ..evaluation.simulation import PROTOCOLS, TARGET_PROTOCOL, Anatomy, make_anatomy, render_on_grid
from ..method.baselines import histogram_matching
from ..method.edges import canny_edges
from ..method.grid import refine_grid
from ..method.harmonize import HarmonizationModel, generate, harmonize, model_grid, refined_start
from ..pipeline.templates import Grid, harmonization_grid

if TYPE_CHECKING:
    from .trainer import Trainer

VALIDATION_SEEDS = (3001, 3002)
VALIDATION_SOURCES = ("sonata15t", "vision15t")
VALIDATION_ALTERATIONS = ("low_contrast_15t", "flash_like")


@dataclass
class TravelingSubject:
    seed: int
    protocol: str
    source: np.ndarray
    target: np.ndarray
    mask: np.ndarray
    lesion: np.ndarray | None = None  # lesion core (boolean, on the grid)
    shell: np.ndarray | None = None  # the white matter around it

    def lesion_contrast_error(self, image: np.ndarray) -> float:
        """|lesion contrast of ``image`` - the target's| (Fig. 6; lower is better)."""
        return abs(lesion_contrast(image, self.lesion, self.shell) - lesion_contrast(self.target, self.lesion,
                                                                                     self.shell))


def lesion_and_shell(lesion_fraction: np.ndarray, wm_fraction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lesion core (fraction > 0.5) and the white matter (> 0.9) 2-3 voxels around it."""
    lesion = lesion_fraction > 0.5
    shell = ndimage.binary_dilation(lesion, iterations=3) & ~ndimage.binary_dilation(lesion, iterations=1)
    return lesion, shell & (wm_fraction > 0.9)


def lesion_masks(anatomy: Anatomy, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """A simulated subject's lesion core and surrounding white matter, on ``grid``."""
    idx = np.indices(grid.shape, dtype=np.float32).reshape(3, -1)
    to_anat = np.linalg.inv(anatomy.affine) @ grid.affine
    coords = to_anat[:3, :3] @ idx + to_anat[:3, 3:4]
    lesion = ndimage.map_coordinates(anatomy.fractions["lesion"], coords, order=1).reshape(grid.shape)
    wm = ndimage.map_coordinates(anatomy.fractions["wm"], coords, order=1).reshape(grid.shape)
    return lesion_and_shell(lesion, wm)


def traveling_subjects(seeds=VALIDATION_SEEDS, sources=VALIDATION_SOURCES, lesions: int = 2) -> list[TravelingSubject]:
    """Source/target render pairs on the harmonization grid; the mask is the target's brain.

    A source's noise seed depends on its position in ``sources``: compare scores within one source list.
    """
    out = []
    for seed in seeds:
        anatomy = make_anatomy(seed, lesions=lesions)
        target, mask = render_on_grid(anatomy, PROTOCOLS[TARGET_PROTOCOL], seed + 1)
        lesion, shell = lesion_masks(anatomy, harmonization_grid())
        for k, name in enumerate(sources):
            source, _ = render_on_grid(anatomy, PROTOCOLS[name], seed + 10 + k)
            out.append(TravelingSubject(seed, name, source, target, mask, lesion, shell))
    return out


def altered_subjects(images: list[np.ndarray], masks: list[np.ndarray],
                     sources: tuple[str, ...] = VALIDATION_ALTERATIONS) -> list[TravelingSubject]:
    """Held-out target-domain images (D, H, W) on the grid as traveling subjects: each gets three white-matter
    lesions drawn in (the truth) and is altered by each scanner of ``alterations.SOURCES`` named in ``sources``
    (the source). ``seed`` is the image's index; the same images give the same subjects."""
    out = []
    for k, (image, mask) in enumerate(zip(images, masks)):
        truth, lesion, shell = draw_lesions(image, mask, seed=k)
        for name in sources:
            source = SOURCES[name].apply(truth, mask, seed=100 * k + 7)
            out.append(TravelingSubject(k, name, source, truth, mask, lesion, shell))
    return out


def score(image: np.ndarray, subject: TravelingSubject) -> tuple[float, float]:
    """PSNR and SSIM against the target render, each normalized 1-99 % in the brain (``metrics.fidelity``)."""
    return fidelity(image, subject.target, subject.mask)


def score_with_lesion(image: np.ndarray, subject: TravelingSubject) -> tuple[float, float, float]:
    """PSNR, SSIM (inside the brain) and the lesion contrast error against the subject's target render."""
    return (*score(image, subject), subject.lesion_contrast_error(image))


def reconstruction_score(model: HarmonizationModel, subject: TravelingSubject) -> tuple[float, float, float]:
    """The target render regenerated from its own edge map from pure noise (the paper's 2 midpoint steps,
    ``config.PAPER``), scored (S4.1): PSNR, SSIM and lesion contrast error, as ``score_with_lesion``."""
    edge_map, _ = canny_edges(model_grid(model, subject.target, subject.mask)[0])
    image = refine_grid(generate(model, edge_map, steps=PAPER.steps, solver=PAPER.solver, start_time=PAPER.start_time,
                                 seed=PAPER.seed), subject.target.shape, model.grid_factor)
    image[subject.mask == 0] = 0
    return score_with_lesion(image, subject)


def validate(model: HarmonizationModel, subjects: list[TravelingSubject],
             settings: HarmonizationSettings = T1W) -> list[dict]:
    """One row per subject and protocol: PSNR/SSIM of the source, histogram matching, histogram matching refined
    by the paper's NCC step towards the source (the best control without the network), the edge-to-image
    output and bhd."""
    rows = []
    for subj in subjects:
        result = harmonize(model, subj.source, subj.mask, settings)
        hm = histogram_matching(subj.source, subj.mask, model.target_quantiles)
        hm_ncc = refined_start(hm, subj.source, subj.mask, T1W)  # the control at the participant defaults
        row = {"seed": subj.seed, "protocol": subj.protocol}
        for name, image in (("source", subj.source), ("histmatch", hm), ("histmatch_ncc", hm_ncc),
                            ("generated", result["generated"]), ("bhd", result["harmonized"])):
            row[f"{name}_psnr"], row[f"{name}_ssim"] = score(image, subj)
        rows.append(row)
    return rows


class Validator:
    """Scores the EMA network on validation traveling subjects, at most every ``every_s`` seconds.

    Two rows per subject and checkpoint: the fixed settings the curve has used since step 1 (comparable over
    the whole campaign) and the participant level's current T1w defaults.
    """

    FIXED_SETTINGS = HarmonizationSettings(start_time=0.5, start_from="histmatch", steps=2, solver="midpoint",
                                           refinement="ncc", refine_step=0.02, refine_step_rule="rms",
                                           refine_reference="source")

    def __init__(self, run_dir: Path, quantiles: np.ndarray, every_s: float, subjects: list | None = None):
        self.log = run_dir / "validation.tsv"
        self.quantiles = quantiles
        self.every_s = every_s
        self.last = -float("inf")
        self.subjects = traveling_subjects() if subjects is None else subjects
        self.settings = [self.FIXED_SETTINGS, T1W]

    def __call__(self, trainer: "Trainer") -> None:
        if time.monotonic() - self.last < self.every_s:
            return
        self.last = time.monotonic()
        model = HarmonizationModel(trainer.ema, trainer.config.parameterization, self.quantiles, {}, Path("ema"),
                                   "", trainer.device, grid_factor=trainer.config.grid_factor)
        for settings in self.settings:
            rows = validate(model, self.subjects, settings)
            new = not self.log.exists()
            with open(self.log, "a") as f:
                if new:
                    f.write("\t".join(["step", "wall_s", "settings"] + list(rows[0])) + "\n")
                for row in rows:
                    values = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()]
                    f.write("\t".join([str(trainer.step), f"{trainer.wall:.0f}", json.dumps(settings.to_dict()),
                                        *values]) + "\n")
            mean = {k: np.mean([r[k] for r in rows])
                    for k in ("histmatch_ncc_ssim", "bhd_ssim", "histmatch_ncc_psnr", "bhd_psnr")}
            print(f"\nvalidation step {trainer.step} {json.dumps(settings.to_dict())}: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()), file=sys.stderr)
