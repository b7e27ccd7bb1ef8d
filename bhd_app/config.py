"""Every default of bhd, defined once: harmonization presets and the training recipe.

``bhd-app --preset`` names a recipe of ``PRESETS``, whose settings a ``--config`` file changes under the field
names of ``HarmonizationSettings`` (``read_settings_file``); ``bhd-train``'s options carry the field names of
``TrainingSettings`` (``--patch-size`` is ``patch_size``). The model card's ``defaults`` block is written from
them, and sidecars record them under the same names. Nothing here imports torch or BIDS.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from importlib import resources
from pathlib import Path

# The harmonization grid's voxel size, mm (the paper's, section 4.1; ``pipeline.templates.harmonization_grid``).
GRID_SPACING = (1.2, 1.2, 1.25)
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
REFINE_REGIONS = ("brain", "volume")
NATIVE = ("change", "resample")
FINISHES = ("none", "histmatch")
CONTRASTS = ("T1w", "T2w")
# Brain extraction: auto takes the non-zero voxels of skull-stripped inputs, deepbet for T1w heads, else the template.
BRAIN_EXTRACTIONS = ("auto", "deepbet", "template", "nonzero")
BRAIN_EXTRACTION = "auto"
DEVICES = ("auto", "cpu", "cuda")
DEVICE = "auto"  # CUDA when present
# The choices of each HarmonizationSettings field that has them (a settings file is checked against these).
CHOICES = {"method": METHODS, "solver": SOLVERS, "start_from": START_FROM, "refinement": REFINEMENTS,
           "refine_step_rule": STEP_RULES, "refine_region": REFINE_REGIONS, "refine_reference": REFINE_REFERENCES,
           "native": NATIVE, "finish": FINISHES}


@dataclass(frozen=True)
class HarmonizationSettings:
    """How one preprocessed image is harmonized (eq. 4-5, section 3.5).

    ``start_time`` 0 draws the image from the edge map alone (the paper); t0 > 0 starts from
    the noised ``start_from`` image: the source, its histogram-matched version, or (``refined``)
    that version after the paper's NCC refinement towards the source (the refine_step fields).
    ``samples`` edge-to-image draws are averaged before the refinement, which climbs the NCC (or
    MI) with ``refine_reference`` (``refine_step_rule`` says what ``refine_step`` means), or
    (``split``) keeps the draw's low frequencies below a Gaussian low-pass of ``split_sigma_mm`` and the
    reference's high frequencies (``refinement.refine``); the reference ``start`` is the start image.
    ``finish`` ``histmatch`` matches the refined brain's histogram to the target histogram at the end.
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
    split_sigma_mm: float = 19.2
    finish: str = "none"
    native: str = "change"
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HarmonizationSettings":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# T1w inputs: harmonization. The flow draws from the edge map alone (2 midpoint steps from noise, S3.1's solver);
# the draw's low frequencies (below 19.2 mm: 8 voxels of the coarse model grid) replace those of the source matched
# to the target histogram, which keeps its finer detail. T2w inputs: contrast conversion to the T1w target
# (section 4.8): from noise along the whole path, no refinement (T1w and T2w correlate too little), 4 averaged draws.
T1W = HarmonizationSettings()
CONTRAST_CONVERSION = replace(T1W, start_time=0.0, steps=2, solver="midpoint", samples=4, refinement="none",
                              native="resample")
# The paper's route (sections 3.3-3.5, S3.1): one draw from the edge map alone (t0 0, midpoint steps), then the
# NCC refinement towards the source, x += 0.02 x N x gradient, 6 iterations; the grid image resampled to the
# input's grid. Contrast conversion without the refinement (section 4.8).
PAPER = replace(T1W, start_time=0.0, start_from="source", steps=2, solver="midpoint", samples=1, refinement="ncc",
                refine_step=0.02, refine_step_rule="paper", refine_iterations=6, refine_region="brain",
                refine_reference="source", native="resample")
PAPER_CONTRAST_CONVERSION = replace(PAPER, refinement="none")
# Whole recipes, by the name --preset accepts: the settings of each input contrast.
PRESETS = {"default": {"T1w": T1W, "T2w": CONTRAST_CONVERSION},
           "paper": {"T1w": PAPER, "T2w": PAPER_CONTRAST_CONVERSION},
           "conversion": {"T1w": CONTRAST_CONVERSION, "T2w": CONTRAST_CONVERSION}}
DEFAULT_PRESET = "default"
PRESETS_WHAT = {"default": "bhd's choice, BENCHMARKS.md", "paper": "the paper's route",
                "conversion": "contrast conversion for every contrast"}
# The fields whose default depends on the input's contrast.
CONTRAST_DEPENDENT = tuple(f.name for f in fields(HarmonizationSettings)
                           if getattr(T1W, f.name) != getattr(CONTRAST_CONVERSION, f.name))
# Why the presets are what they are, for the model card.
PRESETS_WHY = ("T1w: draw from the edge map alone (2 midpoint steps from noise) and keep the draw's frequencies "
               "below a Gaussian low-pass of 19.2 mm (8 voxels of the 2.4 mm model grid) with the finer detail of "
               "the source matched to the target histogram: chosen with the ixi-hh-coarse model on held-out IXI-HH "
               "heads 1-3, raw heads altered in native space and run end to end (benchmarks/end_to_end.py), as the "
               "bhd setting with the smallest tissue-volume error (40.5 mL against histogram matching's 40.3, the "
               "previous default's 52.3) and the highest PSNR among those that low; T2w (contrast conversion, "
               "section 4.8): from noise, 2 midpoint steps, no refinement, 4 averaged draws (1.0-1.5 dB over one "
               "draw); see BENCHMARKS.md")


def preset(suffix: str, name: str = DEFAULT_PRESET) -> HarmonizationSettings:
    """The settings of preset ``name`` (``PRESETS``) for an input of this suffix (T1w, or T2w)."""
    return PRESETS[name][suffix]


def card_defaults() -> dict:
    """The model card's ``defaults`` block: the default preset of every contrast in full, and why."""
    drop = ("method", "seed")
    return {**{suffix: {k: v for k, v in s.to_dict().items() if k not in drop}
               for suffix, s in PRESETS[DEFAULT_PRESET].items()},
            "why": PRESETS_WHY}


def summary(s: HarmonizationSettings) -> str:
    """One contrast's settings in a few words, for --help: the start, the flow, the draws, the refinement."""
    start = f"t0 {s.start_time:g} from {s.start_from}" if s.start_time > 0 else "from noise"
    draws = f", {s.samples} draws" if s.samples > 1 else ""
    refinement = {"none": "no refinement", "split": f"split at {s.split_sigma_mm:g} mm",
                  }.get(s.refinement, f"{s.refinement} x{s.refine_iterations} ({s.refine_step_rule} step "
                                      f"{s.refine_step:g}) to {s.refine_reference}")
    return f"{start}, {s.steps} {s.solver} step{'s' if s.steps > 1 else ''}{draws}, {refinement}"


# The numbers a settings file may give: (lowest, highest, whether the highest is allowed).
LIMITS = {"steps": (1, None, True), "samples": (1, None, True), "refine_iterations": (0, None, True),
          "start_time": (0.0, 1.0, False), "refine_step": (0.0, None, True), "split_sigma_mm": (0.0, None, True),
          "seed": (0, None, True)}
_KINDS = {"int": (int, "an integer"), "float": ((int, float), "a number"), "str": (str, "a string")}


def _checked(path: Path, key: str, name: str, value):
    """``value`` of settings field ``name`` as the dataclass holds it; BHDInputError naming ``path`` and ``key``."""
    from .errors import BHDInputError

    kind = {f.name: f.type for f in fields(HarmonizationSettings)}[name]
    types, words = _KINDS[kind]
    if isinstance(value, bool) or not isinstance(value, types):
        raise BHDInputError(f"{path}: {key} = {value!r} must be {words}; fix the settings file")
    if name in CHOICES and value not in CHOICES[name]:
        raise BHDInputError(f"{path}: {key} = {value!r} is not one of {', '.join(CHOICES[name])}; fix the "
                            "settings file")
    low, high, closed = LIMITS.get(name, (None, None, True))
    if (low is not None and value < low) or (high is not None and (value > high or (value == high and not closed))):
        bound = f"at least {low:g}" if high is None else f"in [{low:g}, {high:g}{']' if closed else ')'}"
        raise BHDInputError(f"{path}: {key} = {value!r} must be {bound}; fix the settings file")
    return float(value) if kind == "float" else value


def read_settings_file(path: str | Path) -> dict[str, dict]:
    """A settings file (``bhd-app --config``; TOML, or JSON for a ``.json`` file) as overrides per contrast.

    Its keys are ``HarmonizationSettings`` field names, for every contrast at the top level and for one in its
    table (``[T1w]``, ``[T2w]``; the table wins). Returns ``{suffix: {field: value}}`` for every contrast in
    ``CONTRASTS``. A file that cannot be read, an unknown key, a value of the wrong type, outside the choices or
    the limits: BHDInputError, one line naming the file and the key.
    """
    import json

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: its backport (setup.cfg)
        import tomli as tomllib

    from .errors import BHDInputError

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (OSError, UnicodeDecodeError) as err:
        raise BHDInputError(f"{path}: cannot read the settings file ({getattr(err, 'strerror', None) or err}); "
                            "give a readable UTF-8 TOML or JSON file") from None
    except json.JSONDecodeError as err:
        raise BHDInputError(f"{path}: invalid JSON ({err.msg}, line {err.lineno} column {err.colno}); fix the "
                            "settings file") from None
    except tomllib.TOMLDecodeError as err:
        raise BHDInputError(f"{path}: invalid TOML ({err}); fix the settings file (a .json file is read as "
                            "JSON)") from None
    if not isinstance(data, dict):
        raise BHDInputError(f"{path}: a settings file holds keys and values (a JSON object); fix the settings file")
    names = [f.name for f in fields(HarmonizationSettings)]
    valid = f"valid keys: {', '.join(names)}, and the tables {', '.join(f'[{c}]' for c in CONTRASTS)}"
    common, tables = {}, {suffix: {} for suffix in CONTRASTS}
    for key, value in data.items():
        if key in CONTRASTS and isinstance(value, dict):
            for name, inner in value.items():
                if name not in names:
                    raise BHDInputError(f"{path}: unknown key '{key}.{name}'; {valid}")
                tables[key][name] = _checked(path, f"{key}.{name}", name, inner)
        elif key in CONTRASTS:
            raise BHDInputError(f"{path}: '{key}' must be a table of settings ([{key}]); fix the settings file")
        elif key in names:
            common[key] = _checked(path, key, key, value)
        else:
            raise BHDInputError(f"{path}: unknown key '{key}'; {valid}")
    return {suffix: {**common, **tables[suffix]} for suffix in CONTRASTS}


def resolve(suffix: str, preset_name: str = DEFAULT_PRESET, from_file: dict[str, dict] | None = None,
            **given) -> HarmonizationSettings:
    """One contrast's settings: the preset's, then the settings file's (``read_settings_file``), then ``given``
    (command-line options; None: not given)."""
    file_values = (from_file or {}).get(suffix, {})
    return replace(preset(suffix, preset_name), **{**file_values, **{k: v for k, v in given.items() if v is not None}})


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
    keeps the draw's low frequencies). ``bhd-train --recipe`` names a whole recipe (``TRAINING_RECIPES``):
    ``cpu``, the defaults; ``paper``, the paper's configuration (section 4.2), for a GPU; ``fine-tune``, the
    shipped IXI-HH models' fine-tune of a trained model.
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
# The fine-tune of the shipped IXI-HH models (training/ixi-hh/) and of README's one-call model of one's own
# scanner, from a trained model (--init-from): Adam at 1e-4, half the training times from U(0.5, 1), half the
# paths from a start with random scanner-like changes, on the 2x coarser grid (ixi-hh-coarse, the T1w default).
TRAINING_FINE_TUNE = replace(TRAINING, learning_rate=1e-4, late_time_fraction=0.5, altered_start_fraction=0.5,
                             grid_factor=2)
TRAINING_RECIPES = {"cpu": TRAINING, "paper": PAPER_TRAINING, "fine-tune": TRAINING_FINE_TUNE}
DEFAULT_TRAINING_RECIPE = "cpu"


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
