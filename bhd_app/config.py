"""Every default of bhd, defined once: harmonization presets and the training recipe.

The command lines fill these dataclasses (``bhd-app`` and ``bhd-train`` options carry the field names:
``--start-time`` is ``start_time``), the model card's ``defaults`` block is written from them,
and sidecars record them under the same names. Nothing here imports torch or BIDS.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from importlib import resources
from pathlib import Path

# The shipped models, by the name --model accepts; each card states its target domain.
SHIPPED_MODELS = {"simulated-trio": "bhd_default.pt", "ixi-hh": "bhd_ixihh.pt", "ixi-hh-coarse": "bhd_ixihh_coarse.pt"}
# The model an input of each contrast gets without --model: T1w harmonization scored best with the coarse-grid
# model, T2w contrast conversion with the same network on the 1.2 mm grid (BENCHMARKS.md, held-out IXI-HH heads).
DEFAULT_MODELS = {"T1w": "ixi-hh-coarse", "T2w": "ixi-hh"}
METHODS = ("bhd", "histmatch", "ssimh", "none")
SOLVERS = ("euler", "midpoint", "rk4", "dopri5")
REFINEMENTS = ("ncc", "mi", "split", "none")
START_FROM = ("histmatch", "refined", "source")
REFINE_REFERENCES = ("source", "histmatch", "start")
STEP_RULES = ("rms", "paper")
NATIVE = ("change", "resample")


@dataclass(frozen=True)
class HarmonizationSettings:
    """How one preprocessed image is harmonized (eq. 4-5, section 3.5).

    ``start_time`` 0 draws the image from the edge map alone (the paper); t0 > 0 starts from
    the noised ``start_from`` image: the source, its histogram-matched version, or (``refined``)
    that version after the paper's NCC refinement towards the source (the refine_step fields).
    ``samples`` edge-to-image draws are averaged before the refinement, which climbs the NCC (or
    MI) with ``refine_reference`` (``refine_step_rule`` says what ``refine_step`` means), or
    (``split``) keeps the draw's low frequencies below ``split_sigma`` voxels of the model's grid and the
    reference's high frequencies (``refinement.refine``); the reference ``start`` is the start image.
    ``native`` says how the native-grid image is made: ``change`` adds the change made on the grid
    to the input at its own resolution (finer detail kept); ``resample`` resamples the harmonized
    grid image (contrast conversion, where the input's own detail has the other contrast).
    """

    method: str = "bhd"
    steps: int = 2
    solver: str = "midpoint"
    start_time: float = 0.0
    start_from: str = "histmatch"
    samples: int = 1
    refinement: str = "split"
    refine_step: float = 0.02
    refine_step_rule: str = "paper"
    refine_iterations: int = 6
    refine_region: str = "brain"
    refine_reference: str = "start"
    split_sigma: float = 8.0
    native: str = "change"
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HarmonizationSettings":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# T1w inputs: harmonization. The flow draws from the edge map alone (2 midpoint steps from noise, S3.1's solver);
# the draw's low frequencies (below 8 voxels of the model's grid) replace those of the source matched to the target
# histogram, which keeps its finer detail. T2w inputs: contrast conversion to the T1w target (section 4.8): from
# noise along the whole path, no refinement (T1w and T2w correlate too little), 4 averaged draws.
T1W = HarmonizationSettings()
CONTRAST_CONVERSION = replace(T1W, start_time=0.0, steps=2, solver="midpoint", samples=4, refinement="none",
                              native="resample")
PRESETS = {"T1w": T1W, "T2w": CONTRAST_CONVERSION}
# The fields whose default depends on the input's contrast.
CONTRAST_DEPENDENT = tuple(f.name for f in fields(HarmonizationSettings)
                           if getattr(T1W, f.name) != getattr(CONTRAST_CONVERSION, f.name))
# Why the presets are what they are, for the model card.
PRESETS_WHY = ("T1w: draw from the edge map alone (2 midpoint steps from noise) and keep the draw's frequencies below "
               "a Gaussian low-pass of 8 voxels of the model's grid with the finer detail of the source matched to "
               "the target histogram: chosen with the ixi-hh-coarse model on held-out IXI-HH heads 1-3, raw heads "
               "altered in native space and run end to end (benchmarks/end_to_end.py), as the bhd setting with the "
               "smallest tissue-volume error (40.5 mL against histogram matching's 40.3, the previous default's "
               "52.3) and the highest PSNR among those that low; T2w (contrast conversion, section 4.8): from "
               "noise, 2 midpoint steps, no refinement, 4 averaged draws (1.0-1.5 dB over one draw); see "
               "BENCHMARKS.md")


def preset(suffix: str) -> HarmonizationSettings:
    """The participant level's defaults for an input of this suffix (T1w, or T2w for contrast conversion)."""
    return PRESETS[suffix]


def card_defaults() -> dict:
    """The model card's ``defaults`` block: every preset in full, and why."""
    drop = ("method", "seed")
    return {**{s: {k: v for k, v in p.to_dict().items() if k not in drop} for s, p in PRESETS.items()},
            "why": PRESETS_WHY}


PARAMETERIZATIONS = ("velocity", "image")


@dataclass(frozen=True)
class TrainingSettings:
    """How ``bhd-train`` fits the edge-to-image model (sections 3.3-3.4, 4.2-4.3).

    The options carry the field names (``--patch-size`` is ``patch_size``), except ``--lr``
    (``learning_rate``) and ``--width`` (the U-Net's base width). ``multi_stride_fraction`` of the
    patches are multi-stride patches; ``late_time_fraction`` of the training times are drawn from
    U(0.5, 1) instead of U(0, 1); ``altered_start_fraction`` of the patches start from a copy with
    random scanner-like changes, at t ~ U(``altered_start_times``) (``training.scanner_changes``;
    image parameterization). ``grid_factor`` 2 trains on the harmonization grid averaged over 2x2x2
    blocks (``method.grid``: 2.4 mm, so a patch holds 8x the anatomy; harmonization then draws there and
    keeps the draw's low frequencies). The defaults are a CPU recipe; ``PAPER_TRAINING`` is the paper's
    configuration (section 4.2), for a GPU.
    """

    width: int = 16
    patch_size: int = 48
    batch_size: int = 4
    learning_rate: float = 2e-4
    steps: int = 150_000
    multi_stride_fraction: float = 0.2
    parameterization: str = "image"
    late_time_fraction: float = 0.0
    altered_start_fraction: float = 0.0
    altered_start_times: tuple[float, float] = (0.8, 0.95)
    grid_factor: int = 1
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every_s: float = 300.0

    def to_dict(self) -> dict:
        return asdict(self)


TRAINING = TrainingSettings()
# Section 4.2: 64^3 patches, batch 8, Adam at 5e-5, 150K steps, the full-width U-Net; the velocity field.
PAPER_TRAINING = replace(TRAINING, width=64, patch_size=64, batch_size=8, learning_rate=5e-5,
                         parameterization="velocity")


def shipped_model_path(name: str) -> Path:
    """The file of a shipped model (``SHIPPED_MODELS``)."""
    return Path(str(resources.files("bhd_app") / "data" / "models" / SHIPPED_MODELS[name]))


def default_model_path(suffix: str = "T1w") -> Path:
    """The shipped model an input of this contrast gets without ``--model`` (``DEFAULT_MODELS``)."""
    return shipped_model_path(DEFAULT_MODELS[suffix])


def models_by_contrast(value: Path | None, suffixes: tuple[str, ...] | list[str]) -> dict[str, Path]:
    """The model file of each input contrast: ``--model`` for all, or each contrast's default model."""
    return {suffix: value or default_model_path(suffix) for suffix in suffixes}


def model_path(value: str | Path | None) -> Path:
    """``--model``: a shipped model's name, a file path, or None for the T1w default model."""
    if value is None:
        return default_model_path()
    if str(value) in SHIPPED_MODELS:
        return shipped_model_path(str(value))
    return Path(value).expanduser().absolute()
