"""The ``bhd-app`` command line (BIDS-Apps convention, options after fMRIPrep/MRIQC)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .. import __version__
from ..config import (CONTRAST_CONVERSION, CONTRAST_DEPENDENT, DEFAULT_MODELS, METHODS, NATIVE, REFINEMENTS,
                      REFINE_REFERENCES, SHIPPED_MODELS, SOLVERS, START_FROM, STEP_RULES, T1W, model_path)

def _default(name: str):
    """A harmonization option's default: the T1w preset's, or None where the contrast decides (``config.preset``)."""
    return None if name in CONTRAST_DEPENDENT else getattr(T1W, name)


def _note(name: str) -> str:
    """Help text for an option whose default depends on the contrast (argparse shows the others' itself)."""
    if name not in CONTRAST_DEPENDENT:
        return ""
    return f" (default {getattr(T1W, name)} for T1w, {getattr(CONTRAST_CONVERSION, name)} for T2w)"


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line with a hint to ``--help`` (exit code 2, as argparse's), not the
    usage text; bhd-train uses it too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, except None: those options say in their help what they do when not given."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)


def _existing_dir(value: str) -> Path:
    path = Path(value).expanduser().absolute()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: no such directory")
    return path


def _existing_file(value: str) -> Path:
    path = Path(value).expanduser().absolute()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{value}: no such file")
    return path


def _unit_interval(value: str) -> float:
    x = float(value)
    if not 0.0 <= x < 1.0:
        raise argparse.ArgumentTypeError(f"{value}: must be in [0, 1)")
    return x


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be a positive integer")
    return n


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; paths and numbers are checked here, before any work starts."""
    p = OneLineErrorParser(
        prog="bhd-app",
        description="bhd: BlindHarmonyDiff blind harmonization of T1-weighted brain MRI, as a BIDS App.",
        formatter_class=_DefaultsHelpFormatter)
    p.add_argument("bids_dir", type=_existing_dir, help="the input BIDS dataset")
    p.add_argument("output_dir", type=lambda v: Path(v).expanduser().absolute(),
                   help="the derivatives folder (created if missing)")
    p.add_argument("analysis_level", choices=("participant", "group"),
                   help="participant: harmonize each image; group: site-effect report over participants")
    p.add_argument("--version", action="version", version=f"bhd {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")

    g = p.add_argument_group("selecting inputs")
    g.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                   help="subjects to process, with or without 'sub-' (default: all)")
    g.add_argument("--session-label", nargs="+", metavar="LABEL", help="sessions to process (default: all)")
    g.add_argument("--bids-filter-file", type=_existing_file, metavar="FILE",
                   help="JSON with pybids filters per contrast, e.g. {\"t1w\": {\"acquisition\": \"mprage\"}}")
    g.add_argument("--contrasts", nargs="+", choices=("T1w", "T2w"), default=["T1w"],
                   help="input contrasts; T2w runs as contrast conversion to the T1w target")
    g.add_argument("--skip-bids-validation", action="store_true", help="do not validate the input dataset")

    g = p.add_argument_group("harmonization")
    g.add_argument("--method", choices=METHODS, default=_default("method"),
                   help="bhd (BlindHarmonyDiff), histmatch (histogram matching to the target domain), "
                        "ssimh (low-frequency 3D DCT swap with the target-domain average), "
                        "none (preprocessing only)")
    g.add_argument("--model", type=model_path,  # a missing file: one-line error
                   help=f"a shipped model ({', '.join(SHIPPED_MODELS)}) or a model file (.pt with its .json card, "
                        "written by bhd-train), for every contrast; default: "
                        + ", ".join(f"{name} for {suffix}" for suffix, name in DEFAULT_MODELS.items()))
    g.add_argument("--steps", type=_positive_int, default=_default("steps"), help="ODE solver steps" + _note("steps"))
    g.add_argument("--solver", default=_default("solver"), choices=SOLVERS,
                   help="torchdiffeq method (paper: midpoint)" + _note("solver"))
    g.add_argument("--start-time", type=_unit_interval, default=_default("start_time"),
                   help="flow start t0: 0 is pure noise (paper); t0>0 starts from the noised --start-from image"
                        + _note("start_time"))
    g.add_argument("--start-from", choices=START_FROM, default=_default("start_from"),
                   help="the image mixed into the start when --start-time > 0: the source matched to the target "
                        "histogram, that image refined by NCC towards the source (--refine-step etc.), or the "
                        "source" + _note("start_from"))
    g.add_argument("--samples", type=_positive_int, default=_default("samples"),
                   help="edge-to-image draws averaged before the refinement (closer to the target on average, "
                        "N times the sampling time)" + _note("samples"))
    g.add_argument("--refinement", choices=REFINEMENTS, default=_default("refinement"),
                   help="ncc/mi: gradient ascent on the similarity with --refine-reference (section 3.5); split: "
                        "the model's frequencies below --split-sigma voxels, the reference's above"
                        + _note("refinement"))
    g.add_argument("--refine-step", type=float, default=_default("refine_step"),
                   help="refinement step; its meaning is set by --refine-step-rule" + _note("refine_step"))
    g.add_argument("--refine-step-rule", choices=STEP_RULES, default=_default("refine_step_rule"),
                   help="rms: each iteration changes the brain by an RMS of --refine-step, never past the NCC "
                        "maximum (a linear map of the reference); paper: x += step * N * gradient over the N brain "
                        "voxels, the paper's gradient ascent for NCC (its step: 0.02; MI needs rms)"
                        + _note("refine_step_rule"))
    g.add_argument("--refine-iterations", type=int, default=_default("refine_iterations"),
                   help="refinement iterations (paper: 6)" + _note("refine_iterations"))
    g.add_argument("--refine-region", choices=("brain", "volume"), default=_default("refine_region"),
                   help="voxels the NCC/MI refinement sees and changes" + _note("refine_region"))
    g.add_argument("--split-sigma", type=float, default=_default("split_sigma"),
                   help="--refinement split: the Gaussian low-pass (voxels of the model's grid: 1.2 mm, or 2.4 mm for "
                        "ixi-hh-coarse) below which the edge-to-image output is kept; the reference supplies the "
                        "frequencies above it" + _note("split_sigma"))
    g.add_argument("--refine-reference", choices=REFINE_REFERENCES, default=_default("refine_reference"),
                   help="the image the refinement uses: the source (paper), the source matched to the target "
                        "histogram, or the start image (--start-from)" + _note("refine_reference"))
    g.add_argument("--native", choices=NATIVE, default=_default("native"),
                   help="the native-grid image: change adds the harmonization's change, made on the grid, to the "
                        "input at its own resolution (finer detail kept); resample resamples the harmonized grid "
                        "image" + _note("native"))
    g.add_argument("--brain-extraction", choices=("auto", "deepbet", "template", "nonzero"), default="auto",
                   help="auto: the non-zero voxels of skull-stripped inputs, deepbet for T1w heads, "
                        "template-based otherwise; nonzero: the input is already skull-stripped")

    g = p.add_argument_group("performance and execution")
    g.add_argument("-w", "--work-dir", type=lambda v: Path(v).expanduser().absolute(),
                   help="work folder (node cache; default: ./work)")
    g.add_argument("--nprocs", "--n-cpus", type=_positive_int, default=os.cpu_count() or 1,
                   help="jobs run in parallel")
    g.add_argument("--omp-nthreads", type=_positive_int, help="threads per job (default: nprocs / jobs, >= 1)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when present")
    g.add_argument("--seed", type=int, default=_default("seed"), help="random seed (noise, registration)")
    g.add_argument("--plugin", default=None, help="nipype plugin: Linear, MultiProc, SLURM, SGE, PBS, ...")
    g.add_argument("--plugin-args", default=None,
                   help="JSON object of nipype plugin arguments, e.g. '{\"sbatch_args\": \"-p short\"}'")
    g.add_argument("--force", action="store_true", help="redo jobs whose derivatives are already complete")
    return p
