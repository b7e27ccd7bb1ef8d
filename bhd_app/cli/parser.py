"""The ``bhd-app`` command line (BIDS-Apps convention, options after fMRIPrep/MRIQC)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .. import __version__
from ..config import (BRAIN_EXTRACTION, BRAIN_EXTRACTIONS, DEFAULT_MODELS, DEFAULT_PRESET, DEVICE, DEVICES, METHODS,
                      PRESETS, PRESETS_WHAT, SHIPPED_MODELS, T1W, model_path, summary)


def _preset_help() -> str:
    """--preset's help: each preset's contrasts in a few words (``config.summary``)."""
    return " ".join(f"{name} ({PRESETS_WHAT[name]}): "
                    + "; ".join(f"{suffix} {summary(s)}" for suffix, s in contrasts.items()) + "."
                    for name, contrasts in PRESETS.items())


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


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be a positive integer")
    return n


def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, which a cluster's allocation sets), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
    g.add_argument("--method", choices=METHODS,
                   help="bhd (BlindHarmonyDiff), histmatch (histogram matching to the target domain), "
                        "ssimh (low-frequency 3D DCT swap with the target-domain average), "
                        f"none (preprocessing only); default: the preset's ({T1W.method})")
    g.add_argument("--model", type=model_path,  # a missing file: one-line error
                   help=f"a shipped model ({', '.join(SHIPPED_MODELS)}) or a model file (.pt with its .json card, "
                        "written by bhd-train), for every contrast; default: "
                        + ", ".join(f"{name} for {suffix}" for suffix, name in DEFAULT_MODELS.items()))
    g.add_argument("--preset", choices=tuple(PRESETS), default=DEFAULT_PRESET,
                   help="the sampler and refinement recipe of each contrast. " + _preset_help())
    g.add_argument("--config", type=_existing_file, metavar="FILE",
                   help="expert settings file (TOML, or JSON for .json) that changes the preset's: keys named as "
                        "the sidecar's Harmonization settings (steps, solver, start_time, start_from, samples, "
                        "refinement, refine_step, ...), for every contrast or in a [T1w] / [T2w] table")
    g.add_argument("--brain-extraction", choices=BRAIN_EXTRACTIONS, default=BRAIN_EXTRACTION,
                   help="auto: the non-zero voxels of skull-stripped inputs, deepbet for T1w heads, "
                        "template-based otherwise; nonzero: the input is already skull-stripped")

    g = p.add_argument_group("performance and execution")
    g.add_argument("-w", "--work-dir", type=lambda v: Path(v).expanduser().absolute(),
                   help="work folder (node cache; default: ./work)")
    g.add_argument("--nprocs", "--n-cpus", type=_positive_int, default=_usable_cpus(),
                   help="participant: jobs run in parallel; group: processes for the segmentations and "
                        "registrations (default: the CPUs this process may use, e.g. a SLURM allocation's)")
    g.add_argument("--omp-nthreads", type=_positive_int, help="threads per job (default: nprocs / jobs, >= 1)")
    g.add_argument("--device", choices=DEVICES, default=DEVICE, help="auto: CUDA when present")
    g.add_argument("--plugin", default=None, help="nipype plugin: Linear, MultiProc, SLURM, SGE, PBS, ...")
    g.add_argument("--plugin-args", default=None,
                   help="JSON object of nipype plugin arguments, e.g. '{\"sbatch_args\": \"-p short\"}'")
    g.add_argument("--force", action="store_true", help="redo jobs whose derivatives are already complete")
    g.add_argument("--seed", type=int,
                   help=f"random seed of the noise and the registration; default: the preset's ({T1W.seed})")
    return p
