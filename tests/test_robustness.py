"""Bad input, tampering, interruption and reproducibility, each through the real ``bhd-app`` command line.

Fast tests break one copy of an example image (or the model, or the output folder) and check the one-line
message, the exit code and that no derivatives were written. The slow ones run real jobs: a dataset with one
odd-but-valid image and two broken ones, a second run with the same seed, and a run killed with SIGKILL then
re-run; the last two are compared with the shared reference run (``participant_run`` in conftest.py).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bhd_app.cli.run import main
from bhd_app.config import default_model_path
from conftest import small_dataset

VIDA, BIOGRAPH, TRIO = ("02", "vida", "T1w"), ("02", "biograph", "T1w"), ("02", "trio", "T1w")
GRID = "space-MNI152NLin2009aSym_res-1p2"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
TIMING_KEYS = {"TimingsSeconds"}  # the only fields of the sidecars that differ between identical runs


def _image(ds: Path, job: tuple[str, str, str]) -> Path:
    sub, ses, suffix = job
    return ds / f"sub-{sub}" / f"ses-{ses}" / "anat" / f"sub-{sub}_ses-{ses}_{suffix}.nii.gz"


def _derivatives(out: Path) -> dict[str, Path]:
    """Every file of the derivatives' subject folders (not the HTML reports), by path relative to ``out``."""
    return {str(p.relative_to(out)): p for p in sorted(out.glob("sub-*/**/*")) if p.is_file()}


def _leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*.tmp")]


def _cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    """Run ``bhd-app`` in this process; (exit code, non-empty stderr lines)."""
    code = main(argv)
    return code, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def _cli_as_user(argv: list[str], capsys) -> tuple[int, list[str]]:
    """``_cli`` as a user whom file permissions bind: for root, a child process without the capabilities that
    let root read and write past them (util-linux's setpriv drops them from the bounding set)."""
    if not IS_ROOT:
        return _cli(argv, capsys)
    done = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", sys.executable, "-m",
                           "bhd_app.cli.run", *argv], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    return done.returncode, [ln for ln in done.stderr.splitlines() if ln.strip()]


def _bhd_app(argv: list[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
    """``bhd-app`` as a child process in its own process group (so that it can be killed whole)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "bhd_app.cli.run", *argv], env=full_env,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


# ---------------------------------------------------------------------------------------------- bad images


def _damage(path: Path, damage: str) -> str:
    """Overwrite ``path`` with a broken version of itself; returns a phrase the error must contain."""
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if damage == "2d":
        nib.save(nib.Nifti1Image(data[:, :, data.shape[2] // 2], img.affine), path)
        return "pass a single 3D image"
    if damage == "single_slice":
        nib.save(nib.Nifti1Image(data[:, :, data.shape[2] // 2: data.shape[2] // 2 + 1], img.affine), path)
        return "pass a 3D volume"
    if damage == "all_zero":
        nib.save(nib.Nifti1Image(np.zeros_like(data), img.affine), path)
        return "all zeros"
    if damage == "anisotropic":  # 12 x 1 x 1 mm voxels (17 thick slices)
        nib.save(nib.Nifti1Image(data[::10], np.diag([12.0, 1.0, 1.0, 1.0])), path)
        return "too anisotropic"
    if damage == "few_slices":  # 20 slices of 1 mm
        nib.save(nib.Nifti1Image(data[:, :, 60:80], img.affine), path)
        return "covers only"
    if damage in ("nan_affine", "singular_affine"):  # the header's sform as written, not nibabel's repair
        header = nib.Nifti1Header()
        header["srow_x"], header["srow_y"] = img.affine[0], img.affine[1]
        header["srow_z"] = [0, 0, np.nan, 0] if damage == "nan_affine" else [0, 0, 0, 0]
        header["sform_code"], header["qform_code"] = 1, 0
        nib.Nifti1Image(data, None, header).to_filename(path)
        return "affine is invalid"
    if damage == "not_nifti":
        path.write_text("<html>404 Not Found</html>\n")
        return "cannot be read as a NIfTI image"
    if damage == "unreadable":
        path.chmod(0)
        return "Permission denied"
    if damage == "broken_symlink":  # a git-annex file that was never fetched
        path.unlink()
        path.symlink_to("../../../.git/annex/objects/Xk/3m/SHA256E-s4242--0a1b.nii.gz/SHA256E-s4242--0a1b.nii.gz")
        return "datalad get"
    raise ValueError(damage)


@pytest.mark.parametrize("damage", ["2d", "single_slice", "all_zero", "anisotropic", "few_slices", "nan_affine",
                                    "singular_affine", "not_nifti", "broken_symlink", "unreadable"])
def test_bad_image_is_one_line_error_and_crash_file(examples, tmp_path, capsys, damage):
    ds = small_dataset(examples, tmp_path / "ds", [VIDA])
    bad = _image(ds, VIDA)
    phrase = _damage(bad, damage)
    out = tmp_path / "out"
    run = _cli_as_user if damage == "unreadable" else _cli
    code, err = run([str(ds), str(out), "participant", "-w", str(tmp_path / "w"), "--skip-bids-validation"], capsys)
    failed = [ln for ln in err if "FAILED" in ln]
    assert code == 1
    assert len(failed) == 1 and str(bad) in failed[0] and phrase in failed[0], err
    assert _derivatives(out) == {} and not list(out.glob("*.html"))
    crashes = list((out / "logs").glob("crash-*sub_02_ses_vida*"))
    assert len(crashes) == 1 and phrase in crashes[0].read_text()


# ---------------------------------------------------------------------------------------------- model file


def test_missing_model_is_one_line_error(examples, tmp_path, capsys):
    ds = small_dataset(examples, tmp_path / "ds", [VIDA])
    model = tmp_path / "models" / "mine.pt"
    code, err = _cli([str(ds), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"),
                      "--skip-bids-validation", "--model", str(model)], capsys)
    assert code == 2
    assert len(err) == 1 and str(model) in err[0] and "--model" in err[0], err
    assert _derivatives(tmp_path / "out") == {}


def test_tampered_model_is_refused(examples, tmp_path, capsys):
    ds = small_dataset(examples, tmp_path / "ds", [VIDA])
    shipped = default_model_path()
    model = tmp_path / "models" / shipped.name
    model.parent.mkdir()
    shutil.copy(shipped, model)
    shutil.copy(shipped.with_suffix(".json"), model.with_suffix(".json"))
    raw = bytearray(model.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit in the middle of the weights
    model.write_bytes(bytes(raw))
    code, err = _cli([str(ds), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"),
                      "--skip-bids-validation", "--model", str(model)], capsys)
    assert code == 2
    assert len(err) == 1 and str(model) in err[0] and "sha256" in err[0] and "restore" in err[0], err
    assert _derivatives(tmp_path / "out") == {}


# ---------------------------------------------------------------------------------------------- output folder


def test_output_folder_that_cannot_be_created(examples, tmp_path, capsys):
    ds = small_dataset(examples, tmp_path / "ds", [VIDA])
    (tmp_path / "a_file").write_text("not a folder")
    out = tmp_path / "a_file" / "out"
    code, err = _cli([str(ds), str(out), "participant", "-w", str(tmp_path / "w"), "--skip-bids-validation"],
                     capsys)
    assert code == 2
    assert len(err) == 1 and str(out) in err[0] and "writable folder" in err[0], err


def test_read_only_output_folder(examples, tmp_path, capsys):
    ds = small_dataset(examples, tmp_path / "ds", [VIDA])
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        code, err = _cli_as_user([str(ds), str(out), "participant", "-w", str(tmp_path / "w"),
                                  "--skip-bids-validation"], capsys)
    finally:
        out.chmod(0o755)
    assert code == 2
    assert len(err) == 1 and str(out) in err[0] and "writable folder" in err[0], err
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------------------------------------- real jobs


def _odd_orientation(path: Path) -> None:
    """Store the image as LPI and tilt the head by 15 degrees (an oblique affine), NaN/Inf in a corner."""
    img = nib.load(path)
    lpi = img.as_reoriented(nib.orientations.ornt_transform(nib.io_orientation(img.affine),
                                                            nib.orientations.axcodes2ornt("LPI")))
    data = np.asarray(lpi.dataobj, dtype=np.float32)
    data[:4, :4, :] = np.nan  # the air in one corner of the field of view
    data[-2:, -2:, :2] = np.inf
    angle = np.deg2rad(15.0)
    tilt = np.eye(4)
    tilt[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    nib.save(nib.Nifti1Image(data, tilt @ lpi.affine), path)


@pytest.fixture(scope="module")
def mixed_run(examples, tmp_path_factory):
    """One odd but valid image and two broken ones, through ``bhd-app`` with its own, empty TMPDIR.

    vida: LPI, 15 degrees oblique, NaN/Inf voxels (must succeed); biograph: one bright voxel in an empty
    volume (passes the input check, fails in preprocessing, inside nipype); trio: all zeros (input check).
    """
    root = tmp_path_factory.mktemp("mixed")
    ds = small_dataset(examples, root / "ds", [VIDA, BIOGRAPH, TRIO])
    _odd_orientation(_image(ds, VIDA))
    one_voxel = nib.load(_image(ds, BIOGRAPH))
    data = np.zeros(one_voxel.shape, np.float32)
    data[tuple(s // 2 for s in data.shape)] = 100.0
    nib.save(nib.Nifti1Image(data, one_voxel.affine), _image(ds, BIOGRAPH))
    _damage(_image(ds, TRIO), "all_zero")
    tmp = root / "system_tmp"
    tmp.mkdir()
    out, work = root / "out", root / "w"
    proc = _bhd_app([str(ds), str(out), "participant", "-w", str(work), "--skip-bids-validation",
                     "--nprocs", "2"], env={"TMPDIR": str(tmp)})
    stdout, stderr = proc.communicate(timeout=1800)
    return {"ds": ds, "out": out, "work": work, "tmp": tmp, "code": proc.returncode, "stdout": stdout,
            "stderr": stderr}


@pytest.mark.slow
def test_one_failing_job_does_not_stop_the_others(mixed_run):
    r = mixed_run
    assert r["code"] == 1, r["stderr"]
    assert "1 of 3 jobs complete" in r["stdout"]
    failed = [ln for ln in r["stderr"].splitlines() if "FAILED" in ln]
    assert len(failed) == 2, r["stderr"]
    assert any(str(_image(r["ds"], TRIO)) in ln and "all zeros" in ln for ln in failed), failed
    assert any(str(_image(r["ds"], BIOGRAPH)) in ln and "check the image" in ln for ln in failed), failed
    crashes = [p.read_text() for p in (r["out"] / "logs").glob("crash-*.txt")]
    for job in (BIOGRAPH, TRIO):  # one crash file per failed job, naming the job's node and its file
        assert any(f"sub_02_ses_{job[1]}" in c and str(_image(r["ds"], job)) in c for c in crashes), job
    files = _derivatives(r["out"])
    assert not [f for f in files if "ses-biograph" in f or "ses-trio" in f]
    assert not (r["out"] / "sub-02_ses-biograph_T1w.html").exists()
    assert _leftovers(r["out"]) == []


@pytest.mark.slow
def test_nan_voxels_and_oblique_lpi_image_are_harmonized(mixed_run, participant_run):
    """NaN/Inf voxels are set to 0 with a one-line warning; an LPI, oblique image gives the same brain."""
    r = mixed_run
    source = _image(r["ds"], VIDA)
    warnings = [ln for ln in r["stderr"].splitlines() if "NaN/Inf voxels set to 0" in ln]
    assert warnings and str(source) in warnings[0]
    anat = r["out"] / "sub-02" / "ses-vida" / "anat"
    native = nib.load(anat / "sub-02_ses-vida_desc-harmonized_T1w.nii.gz")
    assert native.shape == nib.load(source).shape and np.allclose(native.affine, nib.load(source).affine, atol=1e-4)
    assert np.isfinite(np.asarray(native.dataobj)).all()
    # On the template grid the tilted, reoriented head must land where the original one did.
    ref = participant_run.out / "sub-02" / "ses-vida" / "anat"

    def load(folder, desc, suffix):
        return np.asarray(nib.load(folder / f"sub-02_ses-vida_{GRID}_desc-{desc}_{suffix}.nii.gz").dataobj)

    mask, ref_mask = load(anat, "brain", "mask") > 0, load(ref, "brain", "mask") > 0
    dice = 2 * (mask & ref_mask).sum() / (mask.sum() + ref_mask.sum())
    both = mask & ref_mask
    corr = np.corrcoef(load(anat, "preproc", "T1w")[both], load(ref, "preproc", "T1w")[both])[0, 1]
    assert dice > 0.98 and corr > 0.98, (dice, corr)


@pytest.mark.slow
def test_temporary_files_stay_in_the_work_directory(mixed_run):
    r = mixed_run
    assert list(r["tmp"].iterdir()) == []  # antspyx, nipype, matplotlib: nothing in the system temp folder
    assert not list(r["work"].glob("tmp-*"))  # the run's own temp folder is removed at the end


def _same_derivatives(out: Path, ref: Path, names: list[str]) -> None:
    """Byte-identical images and transforms, identical sidecars except timings."""
    assert names
    for name in names:
        a, b = out / name, ref / name
        if name.endswith(".json"):
            da, db = (json.loads(p.read_text()) for p in (a, b))
            for d in (da, db):
                for key in TIMING_KEYS:
                    d.pop(key, None)
            assert da == db, name
        else:
            assert a.read_bytes() == b.read_bytes(), name


@pytest.mark.slow
def test_same_seed_gives_identical_derivatives(participant_run, tmp_path):
    """One job of the reference run again, alone, in fresh folders and a process of its own (as bhd-app runs;
    conftest ``participant_run`` says why): the same bytes."""
    out = tmp_path / "out"
    run = _bhd_app([str(participant_run.ds), str(out), "participant", "-w", str(tmp_path / "w"),
                    "--skip-bids-validation", "--participant-label", "02", "--session-label", "vida",
                    "--omp-nthreads", "1", "--seed", "0"])
    _, stderr = run.communicate(timeout=1800)
    assert run.returncode == 0, stderr
    names = list(_derivatives(out))
    assert len(names) == 13 and all("ses-vida" in n for n in names)
    _same_derivatives(out, participant_run.out, names)


def _node_results(work: Path) -> dict[str, float]:
    """Finished nipype nodes (their result files) and when they were written, except the derivatives nodes."""
    return {str(p.relative_to(work)): p.stat().st_mtime
            for p in work.glob("bhd_participant_wf/*/*/result_*.pklz") if p.parent.name != "derivatives"}


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_uninterrupted_derivatives(participant_run, tmp_path):
    """SIGKILL at a random moment, re-run: the reference run's derivatives, finished nodes not redone."""
    ds, out, work = participant_run.ds, tmp_path / "out", tmp_path / "w"
    args = [str(ds), str(out), "participant", "-w", str(work), "--skip-bids-validation", "--nprocs", "2"]
    delay = random.uniform(0.1, 0.9) * participant_run.seconds
    print(f"killing after {delay:.1f} s of a {participant_run.seconds:.0f} s run")
    proc = _bhd_app(args)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill; the test proves nothing"
    finished_nodes = _node_results(work)
    print(f"{len(finished_nodes)} nipype nodes had finished")
    markers = out.glob(f"sub-*/ses-*/anat/*_{GRID}_desc-harmonized_T1w.json")
    complete = [m.name.split(f"_{GRID}")[0] for m in markers]  # jobs finished before the kill
    before = {n: p.stat().st_mtime for n, p in _derivatives(out).items() if any(j in n for j in complete)}
    time.sleep(1.0)  # anything the re-run rewrites gets a later mtime
    rerun = _bhd_app(args)
    stdout, stderr = rerun.communicate(timeout=1800)
    assert rerun.returncode == 0, stderr
    after_nodes = _node_results(work)
    assert all(after_nodes.get(n) == t for n, t in finished_nodes.items()), "the re-run redid finished nodes"
    files = _derivatives(out)
    assert all(files[n].stat().st_mtime == t for n, t in before.items()), "the re-run rewrote complete jobs"
    assert _leftovers(out) == [] and len(list(out.glob("sub-02_ses-*_T1w.html"))) == 2
    assert sorted(files) == sorted(_derivatives(participant_run.out))
    _same_derivatives(out, participant_run.out, list(files))
