"""``bhd-app``: parse, configure, run. User-fixable problems end as one line and exit code 2."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from .. import __version__
from ..config import HarmonizationSettings, models_by_contrast, read_settings_file, resolve
from ..errors import BHDInputError
from ..method.refinement import check_refinement
from .parser import build_parser

LOGGER = logging.getLogger("bhd")
EXIT_INPUT_ERROR = 2
EXIT_JOBS_FAILED = 1


def harmonization_settings(args, suffix: str) -> HarmonizationSettings:
    """One job's settings: its contrast's settings in ``--preset`` (``config.PRESETS``), then those of the
    ``--config`` file (``config.read_settings_file``), then ``--method`` and ``--seed`` where given."""
    from_file = read_settings_file(args.config) if args.config else None
    settings = resolve(suffix, args.preset, from_file, method=args.method, seed=args.seed)
    try:
        check_refinement(settings.refinement, settings.refine_step_rule)
    except ValueError as err:  # the choices are checked before, so only MI under the paper's step rule
        where = args.config or f"--preset {args.preset}"
        raise BHDInputError(f"{where}: refinement 'mi' with refine_step_rule 'paper' ({suffix}): {err}; set "
                            "refine_step_rule = \"rms\" in the --config file") from None
    return settings


def preset_record(args) -> dict:
    """What the sidecars and the methods text record beside the settings: the preset, and the settings file."""
    return {"preset": args.preset, **({"settings_file": str(args.config)} if args.config else {})}


def check_inputs(jobs, crash_dir: Path) -> tuple[list, list[tuple[object, str]]]:
    """Open every input once (cheap checks) so that a bad file fails alone, with a one-line message.

    Warnings (NaN voxels set to 0, ...) are logged as one line each; a bad input gets a crash file.
    """
    from ..pipeline.preprocessing import load_anatomical

    good, bad = [], []
    for job in jobs:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                load_anatomical(job.path)
            for warning in caught:
                LOGGER.warning("%s", warning.message)
            good.append(job)
        except BHDInputError as err:
            bad.append((job, str(err)))
            crash_dir.mkdir(parents=True, exist_ok=True)
            tag, stamp = job.name.replace("-", "_"), time.strftime("%Y%m%d-%H%M%S")
            (crash_dir / f"crash-{stamp}-{tag}-input_check.txt").write_text(
                f"Node: {tag}.input_check\nInput file: {job.path}\n\nBHDInputError: {err}\n")
    return good, bad


@contextmanager
def temporary_dir_in(parent: Path):
    """Point TMPDIR (and Python's tempfile) at a fresh folder in ``parent``; remove it at the end.

    Libraries that write to the system temp folder and leave files there (antspyx's registration,
    nipype workers) then write there.
    """
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tmp-", dir=parent))
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = str(tmp), str(tmp)
    try:
        yield tmp
    finally:
        if saved[0] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[0]
        tempfile.tempdir = saved[1]
        shutil.rmtree(tmp, ignore_errors=True)


LOCK_NAME = "bhd.lock"
_held_locks: set[int] = set()  # the file descriptors of the work-directory locks this process holds


class WorkDirInUse(BHDInputError):
    """Another bhd-app run holds the work directory's lock."""


def _close_held_locks() -> None:
    """In a forked child (nipype's MultiProc workers): close the inherited lock descriptors, so that the lock goes
    with the run's own process; a worker left running after its run was killed then holds no lock."""
    for fd in _held_locks:
        try:
            os.close(fd)
        except OSError:
            pass
    _held_locks.clear()


os.register_at_fork(after_in_child=_close_held_locks)


@contextmanager
def work_dir_lock(work_dir: Path):
    """Hold ``work_dir/bhd.lock`` with ``fcntl.flock`` for the run; WorkDirInUse at once if another run holds it.

    The OS releases the lock when the process ends, even by SIGKILL, so a lock file left behind never blocks.
    The lock file is removed at the end, while it is still held.
    """
    import fcntl

    path = Path(work_dir) / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WorkDirInUse(f"{work_dir}: another bhd-app run is using this work directory (it holds {path}); "
                               "wait until it ends or give another work directory (-w)") from None
        except OSError as err:  # a file system without locks: run unlocked
            LOGGER.warning("%s: cannot lock the work directory (%s); make sure no other run uses it", path,
                           err.strerror or err)
            os.close(fd)
            yield path
            return
        try:  # the run that held it may have removed the file just before it let go: then lock the new one
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    _held_locks.add(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        path.unlink(missing_ok=True)
        _held_locks.discard(fd)
        os.close(fd)


def first_missing(path: Path) -> Path | None:
    """The topmost folder of ``path`` (itself included) that does not exist yet: what creating it would make."""
    top = None
    for folder in (Path(path).absolute(), *Path(path).absolute().parents):
        if folder.exists() or folder.is_symlink():
            break
        top = folder
    return top


@contextmanager
def removed_on_refusal(*made: Path | None, keep: Path | None = None):
    """Remove ``made`` (paths this run creates; None: nothing) again if the run is refused (BHDInputError).

    A refused run then leaves no output folder, no work folder and no pybids index behind. When the refusal is
    that another run holds the work directory (WorkDirInUse), ``keep`` (the work directory) and its parents stay.
    """
    try:
        yield
    except BHDInputError as err:
        for path in reversed([p for p in made if p is not None]):
            if isinstance(err, WorkDirInUse) and keep is not None and (path == keep or path in keep.parents):
                continue
            shutil.rmtree(path, ignore_errors=True)
        raise


def plugin_arguments(text: str | None) -> dict:
    """``--plugin-args`` as a dict; BHDInputError unless it is a JSON object."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise BHDInputError(f"--plugin-args {text!r}: invalid JSON ({err.msg}, column {err.colno}); give a JSON "
                            """object, e.g. '{"n_procs": 4}'""") from None
    if not isinstance(value, dict):
        raise BHDInputError(f"--plugin-args {text!r}: must be a JSON object of nipype plugin arguments, "
                            """e.g. '{"n_procs": 4}'""")
    return value


def run_participant(args) -> int:
    from ..pipeline.bids import check_output_dir, layout_database_dir

    # A settings file or a combination that cannot run stops here, before any file is written.
    resolved = {suffix: harmonization_settings(args, suffix) for suffix in args.contrasts}
    plugin_args = plugin_arguments(args.plugin_args)
    work_dir = args.work_dir or Path.cwd() / "work"
    # A refusal below leaves nothing: the folders and the pybids index this run made are removed again, those in
    # the work directory while the run holds its lock (a second run on it is refused at once).
    new_out, new_work = first_missing(args.output_dir), first_missing(work_dir)
    with removed_on_refusal(new_out, keep=work_dir):
        check_output_dir(args.bids_dir, args.output_dir, work_dir)
        with work_dir_lock(work_dir), removed_on_refusal(
                new_work, first_missing(layout_database_dir(args.bids_dir, work_dir / "pybids"))):
            return _run_participant(args, work_dir, plugin_args, resolved)


def _run_participant(args, work_dir: Path, plugin_args: dict,
                     resolved: dict[str, HarmonizationSettings]) -> int:
    from ..modelfile import check_model_file, select_device
    from ..pipeline.bids import collect_jobs, load_bids_filters, load_layout, write_dataset_description
    from ..pipeline.boilerplate import write_methods
    from ..pipeline.crashes import read_crashes
    from ..pipeline.derivatives import job_is_complete
    from ..pipeline.progress import JobFirstMultiProcPlugin, JobProgress
    from ..pipeline.workflows import init_participant_wf

    layout = load_layout(args.bids_dir, database_dir=work_dir / "pybids")
    if not args.skip_bids_validation:
        _validate_input(args.bids_dir)
    filters = load_bids_filters(args.bids_filter_file) if args.bids_filter_file else None
    jobs = collect_jobs(layout, args.participant_label, args.session_label, filters, suffixes=tuple(args.contrasts),
                        filters_origin=str(args.bids_filter_file or "BIDS filters"))
    select_device(args.device)
    if args.model is not None and not args.model.is_file():
        raise BHDInputError(f"{args.model}: model file not found; check the --model path (a .pt file with its "
                            ".json card, written by bhd-train)")
    models = models_by_contrast(args.model, args.contrasts)
    checked, sha256 = {}, {}
    for suffix, path in models.items():
        if resolved[suffix].method == "none":
            continue
        if path not in checked:  # each model file and its sha256, once, before any job starts
            checked[path] = check_model_file(path)
            sha256[path] = checked[path].sha256
        if resolved[suffix].method == "ssimh":
            checked[path].ssimh_spectrum()  # a model saved without it is refused before any job starts
    # The model's sha256 is part of the settings so that nipype's cache redoes harmonization for a new model.
    settings = {suffix: {**resolved[suffix].to_dict(), **preset_record(args), "model": str(models[suffix]),
                         "model_sha256": sha256.get(models[suffix]), "brain_extraction": args.brain_extraction}
                for suffix in args.contrasts}
    todo = [j for j in jobs if args.force or not job_is_complete(args.output_dir, j)]
    for job in jobs:
        if job not in todo:
            LOGGER.info("%s: derivatives complete, skipped (use --force to redo)", job.name)
    crash_dir = args.output_dir / "logs"
    todo, failed = check_inputs(todo, crash_dir)
    write_dataset_description(args.output_dir, args.bids_dir, __version__)
    write_methods(args.output_dir, settings, args.brain_extraction)
    if todo:
        nprocs = min(args.nprocs, len(todo))
        omp = args.omp_nthreads or max(args.nprocs // nprocs, 1)
        wf = init_participant_wf(todo, args.output_dir, args.bids_dir, work_dir, settings, args.device, omp)
        wf.config["execution"].update({"crashdump_dir": str(crash_dir), "crashfile_format": "txt",
                                       "stop_on_first_crash": False, "remove_unnecessary_outputs": False})
        plugin = args.plugin or "MultiProc"  # job by job also with one process, so the time left is known early
        if plugin == "MultiProc":
            plugin_args.setdefault("n_procs", nprocs)
            plugin_args.setdefault("raise_insufficient", False)
        LOGGER.info("%d job(s) to run with nipype %s (%d at a time, %d thread(s) each); work dir %s",
                    len(todo), plugin, nprocs, omp, work_dir)
        # nipype's SLURM plugin names its jobs after $LOGNAME and fails with a KeyError where it is unset
        # (containers, cron, CI; the user id need not have a name there).
        os.environ.setdefault("LOGNAME", os.environ.get("USER") or str(os.getuid()))
        progress = None
        if not plugin.endswith("Graph"):  # graph plugins submit everything at once and report no node status
            progress = JobProgress([j.name for j in todo])
            plugin_args.setdefault("status_callback", progress)
        with temporary_dir_in(work_dir):
            try:
                # Job by job, so that jobs complete one after another (and the time left is known early).
                wf.run(plugin=JobFirstMultiProcPlugin(plugin_args=plugin_args) if plugin == "MultiProc" else plugin,
                       plugin_args=plugin_args)
            except RuntimeError as err:
                LOGGER.debug("nipype: %s", err)
            finally:
                if progress is not None:
                    progress.close()
        crashes = read_crashes(crash_dir)
        for job in todo:
            if not job_is_complete(args.output_dir, job):
                newest = [c for c in crashes if c.is_of(job.name)][-1:]
                failed.append((job, newest[0].message if newest else f"failed; see the crash files in {crash_dir}"))
    done = [j for j in jobs if job_is_complete(args.output_dir, j)]
    print(f"bhd: {len(done)} of {len(jobs)} jobs complete in {args.output_dir}")
    for job, message in failed:
        print(f"bhd: FAILED {job.name}: {message}", file=sys.stderr)
    return EXIT_JOBS_FAILED if failed else 0


def _validate_input(bids_dir: Path) -> None:
    from ..pipeline.bids import BIDSValidatorMissing, run_bids_validator

    try:
        ok, summary = run_bids_validator(bids_dir)
    except BIDSValidatorMissing:
        LOGGER.warning("bids-validator-deno is not installed: input validation skipped")
        return
    if not ok:
        errors = [ln.strip() for ln in summary.splitlines() if ln.strip().startswith("ERROR")]
        first = errors[0] if errors else summary.splitlines()[0]
        raise BHDInputError(f"{bids_dir}: the BIDS validator found {len(errors) or 'some'} error(s), first: "
                            f"{first}; fix them or pass --skip-bids-validation")


def run_group(args) -> int:
    from ..pipeline.group import run_group_level

    database_dir = args.work_dir / "pybids" if args.work_dir else None
    with temporary_dir_in(Path(tempfile.gettempdir())):  # the group level's own temporary files
        return run_group_level(args.bids_dir, args.output_dir, args.model, database_dir, args.nprocs)


def _configure_logging(verbose: int) -> None:
    """bhd logs at INFO (DEBUG with -v); nipype's node lines only with -v."""
    from nipype import config, logging as nipype_logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(logging.DEBUG if verbose else logging.INFO)
    LOGGER.propagate = False
    level = "INFO" if verbose >= 1 else "WARNING"
    # A failed node's traceback goes to its crash file; bhd prints one FAILED line, nipype's ERROR log only with -v.
    workflow_level = level if verbose >= 1 else "CRITICAL"
    config.update_config({"logging": {"workflow_level": workflow_level, "interface_level": level,
                                      "utils_level": level}})
    nipype_logging.update_logging(config)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        if args.analysis_level == "participant":
            return run_participant(args)
        return run_group(args)
    except BHDInputError as err:
        print(f"bhd-app: error: {err}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except OSError as err:  # e.g. a disk that filled up or a folder made read-only during the run
        where = err.filename or args.output_dir
        print(f"bhd-app: error: {where}: {err.strerror or err}; check the free space and permissions there "
              "and run again", file=sys.stderr)
        return EXIT_JOBS_FAILED


if __name__ == "__main__":
    sys.exit(main())
