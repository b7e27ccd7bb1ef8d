"""Errors that leave nothing behind (issue 34): a refusal is one line, a non-zero exit code, no traceback, and no
file or folder that the run made. Through the real command lines (``bhd-app`` and ``bhd-train`` as installed, or
their ``main()``), on the generated example dataset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bhd_app.cli.run import main
from conftest import small_dataset

VIDA = ("02", "vida", "T1w")
BIN = Path(sys.executable).parent


def _program(name: str) -> str:
    """The installed console script beside the interpreter (as a user of the environment runs it)."""
    path = BIN / name
    if not path.is_file():
        pytest.skip(f"{name} is not installed beside {sys.executable} (pip install -e .)")
    return str(path)


def _stderr_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


@pytest.fixture()
def ds(examples, tmp_path) -> Path:
    return small_dataset(examples, tmp_path / "ds", [VIDA])


# ---------------------------------------------------------------------------------------------- argument errors


@pytest.mark.parametrize("program, args, phrase", [
    ("bhd-app", ["{ds}", "{out}", "participant", "--method", "foo"], "argument --method: invalid choice: 'foo'"),
    ("bhd-app", ["{ds}"], "the following arguments are required: output_dir, analysis_level"),
    ("bhd-train", ["{out}", "--synthetic", "x"], "argument --synthetic: invalid int value: 'x'"),
])
def test_argument_errors_are_one_line_with_a_hint_to_help(tmp_path, program, args, phrase):
    """argparse printed its 20-line usage before the error; now one line that points to --help, exit code 2."""
    args = [a.format(ds=tmp_path, out=tmp_path / "out") for a in args]
    run = subprocess.run([_program(program), *args], capture_output=True, text=True)
    err = _stderr_lines(run.stderr)
    assert run.returncode == 2
    assert len(err) == 1 and err[0].startswith(f"{program}: error: ") and phrase in err[0], err
    assert err[0].endswith(f"see {program} --help"), err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- refusals write nothing


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


REFUSALS = {  # name: (the extra arguments for a case's tmp_path, a phrase of the error line)
    "unknown_participant": (lambda tmp: ["--participant-label", "99"], "--participant-label 99: not in"),
    "filter_selects_nothing": (lambda tmp: ["--bids-filter-file", _write(tmp / "f.json", '{"t1w": {"run": 7}}')],
                               "no T1w image matching the BIDS filters"),
    "model_not_found": (lambda tmp: ["--model", str(tmp / "none.pt")], "model file not found"),
}


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_refused_run_leaves_no_output_or_work_folder(ds, tmp_path, capsys, case):
    """Exit 2 before any job: the output and work folders that the run made (here with a missing parent), and the
    pybids index it wrote, are removed again; a work folder that was there keeps what it held and gets nothing."""
    extra, phrase = REFUSALS[case]
    out, work = tmp_path / "new" / "out", tmp_path / "new" / "work"
    code = main([str(ds), str(out), "participant", "-w", str(work), "--skip-bids-validation", *extra(tmp_path)])
    err = _stderr_lines(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and phrase in err[0], err
    assert not (tmp_path / "new").exists()
    # A work folder of an earlier run (its own pybids index of another dataset, the nipype cache) is left as it was.
    work = tmp_path / "old_work"
    (work / "pybids" / "other-0123456789").mkdir(parents=True)
    (work / "participant_wf").mkdir()
    (work / "participant_wf" / "result.pklz").write_bytes(b"cached")
    before = _files(work)
    code = main([str(ds), str(out), "participant", "-w", str(work), "--skip-bids-validation", *extra(tmp_path)])
    assert code == 2 and _files(work) == before and not (tmp_path / "new").exists()


# ---------------------------------------------------------------------------------------------- the validator


def test_the_validator_beside_the_interpreter_is_found_without_path(ds, tmp_path):
    """/venv/bin/bhd-app run by its path, with the environment's bin/ not on PATH (a batch job, a cron line): the
    validator installed in that environment still validates (it was skipped as "not installed")."""
    if not (BIN / "bids-validator-deno").is_file():
        pytest.skip(f"bids-validator-deno is not installed beside {sys.executable} (pip install -e .[test])")
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if d and not (Path(d) / "bids-validator-deno").exists())
    stray = ds / "sub-02" / "ses-vida" / "anat" / "junk.txt"  # an error for the validator: a file BIDS does not know
    stray.write_text("junk")
    run = subprocess.run([_program("bhd-app"), str(ds), str(tmp_path / "out"), "participant",
                          "-w", str(tmp_path / "w"), "--participant-label", "99"],  # 99: no job runs either way
                         capture_output=True, text=True, env={**os.environ, "PATH": path}, cwd=tmp_path)
    err = _stderr_lines(run.stderr)
    assert run.returncode == 2
    assert len(err) == 1 and "the BIDS validator found 1 error(s)" in err[0] and "junk.txt" in err[0], err
    assert not (tmp_path / "out").exists() and not (tmp_path / "w").exists()


# ---------------------------------------------------------------------------------------------- one run per work dir


def test_a_second_run_on_a_held_work_dir_is_refused_at_once(ds, tmp_path, capsys):
    """The work directory's lock, taken here with the app's own function, refuses a run in one line naming the
    folder (exit 2); the run makes no output folder and leaves the lock and the work directory as they were."""
    from bhd_app.cli.run import work_dir_lock

    work = tmp_path / "w"
    work.mkdir()
    with work_dir_lock(work) as lock:
        before = _files(work)
        code = main([str(ds), str(tmp_path / "out"), "participant", "-w", str(work), "--skip-bids-validation"])
        err = _stderr_lines(capsys.readouterr().err)
        assert code == 2 and len(err) == 1, err
        assert err[0].startswith(f"bhd-app: error: {work}: another bhd-app run is using this work directory"), err
        assert _files(work) == before and lock.is_file()
        assert not (tmp_path / "out").exists()
    assert not lock.exists()  # removed at the end of the run that held it


def _wait_for(condition, seconds: float, proc: subprocess.Popen) -> None:
    import time

    end = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "timed out"
        time.sleep(0.2)


def test_the_lock_of_a_killed_run_never_blocks_the_next(ds, tmp_path):
    """A real run holds the work directory: a second run there is refused at once; once the first is killed with
    SIGKILL (its nipype workers, forked from it, left running), the next run proceeds, although the lock file of
    the killed run is still there. ``--participant-label 99`` makes the second and third runs stop early."""
    import signal

    work, app = tmp_path / "w", _program("bhd-app")
    common = [str(ds), str(tmp_path / "out"), "participant", "-w", str(work), "--skip-bids-validation"]
    first = subprocess.Popen([app, *common, "--nprocs", "1", "--omp-nthreads", "1"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        # The first step of the job has started in a forked nipype worker.
        _wait_for(lambda: any(p.is_dir() for p in work.glob("bhd_participant_wf/*/*")), 120, first)
        second = subprocess.run([app, *common, "--participant-label", "99"], capture_output=True, text=True)
        err = _stderr_lines(second.stderr)
        assert second.returncode == 2 and len(err) == 1, err
        assert f"{work}: another bhd-app run is using this work directory" in err[0], err
        os.kill(first.pid, signal.SIGKILL)  # the run's own process only: its workers go on
        first.wait(30)
        assert (work / "bhd.lock").is_file()
        third = subprocess.run([app, *common, "--participant-label", "99"], capture_output=True, text=True)
        err = _stderr_lines(third.stderr)
        assert third.returncode == 2 and len(err) == 1 and "--participant-label 99: not in" in err[0], err
    finally:
        try:
            os.killpg(first.pid, signal.SIGKILL)  # the first run's workers
        except ProcessLookupError:
            pass
        first.wait(30)


# ---------------------------------------------------------------------------------------------- participants.tsv


BROKEN_PARTICIPANTS = {  # name: (the bytes of participants.tsv, a phrase of the warning)
    "not_utf8": ("participant_id\tage\tsite\nsub-01\t34\tK\u00f6ln\nsub-02\t61\tM\u00fcnchen\n".encode("latin-1"),
                 "not UTF-8 text (byte 0xf6"),
    "short_row": (b"participant_id\tage\tsex\nsub-01\t34\tF\nsub-02\n", "line 3 has 1 column(s), the header 3"),
    "long_row": (b"participant_id\tage\tsex\nsub-01\t34\tF\tx\n", "line 2 has 4 column(s), the header 3"),
    "binary": (bytes(range(256)) * 4, "not UTF-8 text"),
    "nul_bytes": (b"participant_id\tage\nsub-01\x00\x00\t34\n", "binary data (NUL bytes)"),
    "no_participant_id": (b"subject\tage\n01\t34\n", "no participant_id column"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_PARTICIPANTS))
def test_a_broken_participants_tsv_is_skipped_with_one_warning(tmp_path, caplog, case):
    from bhd_app.pipeline.group import read_participants

    data, phrase = BROKEN_PARTICIPANTS[case]
    (tmp_path / "participants.tsv").write_bytes(data)
    assert read_participants(tmp_path) == {}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and len(warnings[0].splitlines()) == 1, warnings
    assert warnings[0].startswith(f"{tmp_path / 'participants.tsv'}: ") and phrase in warnings[0], warnings
    assert "age analysis skipped" in warnings[0]


def test_a_valid_participants_tsv_is_read(tmp_path, caplog):
    """CRLF line ends, a byte-order mark, n/a and blank lines are fine."""
    from bhd_app.pipeline.group import read_participants

    text = "\ufeffparticipant_id\tage\tsex\r\nsub-01\t34\tF\r\n02\tn/a\t\r\n\r\n"
    (tmp_path / "participants.tsv").write_bytes(text.encode())
    assert read_participants(tmp_path) == {"01": {"age": 34.0, "sex": "F"}, "02": {"age": None, "sex": None}}
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_the_group_level_goes_on_without_a_readable_participants_tsv(participant_run, tmp_path, capsys, caplog):
    """A participants.tsv in Latin-1 (a spreadsheet's export): it stopped the group level with a traceback after
    the minutes of segmentation; now one warning naming it, and the group outputs are written."""
    import shutil

    ds, out = tmp_path / "ds", tmp_path / "out"
    shutil.copytree(participant_run.ds, ds)
    shutil.copytree(participant_run.out, out, ignore=shutil.ignore_patterns("group_*"))
    (ds / "participants.tsv").write_bytes(BROKEN_PARTICIPANTS["not_utf8"][0])
    assert main([str(ds), str(out), "group"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(ds / "participants.tsv") in warnings[0], warnings
    assert "age analysis skipped" in warnings[0]
    assert "Traceback" not in capsys.readouterr().err
    assert (out / "group_report.html").is_file() and (out / "group_bhd.tsv").is_file()


# ---------------------------------------------------------------------------------------------- --bids-filter-file


@pytest.mark.parametrize("key, phrase", [("Acquisition", "did you mean the entity 'acquisition'?"),
                                         ("Manufactorer", "check its spelling")])
def test_a_filter_key_that_is_no_entity_and_no_metadata_key_is_one_line_error(ds, tmp_path, capsys, key, phrase):
    """A capitalized key filters on metadata; one that no sidecar has (an entity written with a capital) ended in
    pybids' traceback; now one line naming the key and the filter file, exit 2, nothing written."""
    from bhd_app.pipeline.bids import collect_jobs, load_layout

    filters = tmp_path / "filters.json"
    filters.write_text('{"t1w": {"%s": "mprage"}}' % key)
    code = main([str(ds), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"), "--skip-bids-validation",
                 "--bids-filter-file", str(filters)])
    err = _stderr_lines(capsys.readouterr().err)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"bhd-app: error: {filters}: t1w.{key} is neither a BIDS entity nor a metadata key")
    assert phrase in err[0], err
    assert not (tmp_path / "out").exists() and not (tmp_path / "w").exists()
    # A metadata key that the sidecars have filters as before.
    jobs = collect_jobs(load_layout(ds), bids_filters={"t1w": {"Manufacturer": "Siemens"}})
    assert [j.name for j in jobs] == ["sub-02_ses-vida_T1w"]


# ---------------------------------------------------------------------------------------------- complex voxels


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_an_image_with_complex_voxels_fails_alone_before_any_work(examples, tmp_path, capsys, dtype):
    """A complex-valued NIfTI (datatype complex64/complex128) was cast to real without naming the file (its
    imaginary part dropped) and harmonized; now its job fails before any work in one line naming the file, as other
    broken images do."""
    import nibabel as nib
    import numpy as np

    ds = small_dataset(examples, tmp_path / "ds", [VIDA])
    bad = ds / "sub-02" / "ses-vida" / "anat" / "sub-02_ses-vida_T1w.nii.gz"
    img = nib.load(bad)
    data = np.asarray(img.dataobj, dtype=np.float64)
    nib.save(nib.Nifti1Image((data * np.exp(0.3j)).astype(dtype), img.affine), bad)
    assert nib.load(bad).get_data_dtype() == np.dtype(dtype)
    out = tmp_path / "out"
    code = main([str(ds), str(out), "participant", "-w", str(tmp_path / "w"), "--skip-bids-validation"])
    err = _stderr_lines(capsys.readouterr().err)
    failed = [ln for ln in err if "FAILED" in ln]
    assert code == 1 and len(failed) == 1, err
    assert str(bad) in failed[0] and f"complex-valued voxels (NIfTI datatype {dtype})" in failed[0], failed
    assert not any("Traceback" in ln for ln in err)
    assert not list(out.glob("sub-*/**/*.nii.gz")) and list((out / "logs").glob("crash-*input_check.txt"))


# ---------------------------------------------------------------------------------------------- the README demo


def test_the_readme_demo_folders_are_ignored_by_git():
    """The README's demo command writes its output and work folders into the checkout; git ignores both."""
    import re
    import shutil

    repo = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    demo = re.search(r"bhd-app (\S+) (\S+) participant -w (\S+)", (repo / "README.md").read_text())
    assert demo, "the README's demo command"
    for folder in demo.group(2, 3):
        check = subprocess.run(["git", "check-ignore", "-q", f"{folder}/derivative.nii.gz"], cwd=repo)
        assert check.returncode == 0, f"{folder}/ is not in .gitignore"
