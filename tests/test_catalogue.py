"""The catalogue of broken inputs and settings, through every command line: ``bhd-app`` participant and group,
``bhd-train``. Each case must end in one ``error:`` line naming the file or option and what to do, a non-zero
exit code, no traceback and no outputs. Broken images are in test_robustness.py (``_damage``). The cases here
fail before any job starts (seconds), except the group level's, which reuse the shared reference run, and the
slow ones. Read-only and full folders are real (read-only bind mounts, a small tmpfs), so that they hold
for root too; where mounting is not allowed those tests are skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from bhd_app.cli import train
from bhd_app.cli.run import main
from bhd_app.modelfile import sha256_of
from conftest import small_dataset

VIDA = ("02", "vida", "T1w")


def _one_error_line(capsys, program: str = "bhd-app") -> str:
    """The run's only stderr line, which must be ``<program>: error: ...``."""
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith(f"{program}: error: "), err
    return err[0]


def _outputs(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.is_file()] if out.exists() else []


@pytest.fixture()
def ds(examples, tmp_path) -> Path:
    return small_dataset(examples, tmp_path / "ds", [VIDA])


@contextmanager
def _mounted(folder: Path, *options: str):
    """``folder`` with a file system mounted on it (root only; the test is skipped where mounting fails)."""
    if subprocess.run(["mount", *options, str(folder)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount here (needs root in a mount namespace that allows it)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _participant(ds: Path, tmp_path: Path, *extra: str) -> int:
    return main([str(ds), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"), "--skip-bids-validation",
                 *extra])


# ---------------------------------------------------------------------------------------------- participant level


def _filter_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "filter.json"
    path.write_text(text)
    return str(path)


def _model_with_card(tmp_path: Path, content) -> Path:
    """A .pt file holding ``content`` (bytes as they are, else torch.save) with a model card of its sha256."""
    path = tmp_path / "models" / "other.pt"
    path.parent.mkdir(exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    path.with_suffix(".json").write_text(json.dumps({"sha256": sha256_of(path)}))
    return path


class RunsCode:
    """Unpickling this calls ``open(marker, "w")``: a model file that would run code when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


CASES = {  # name: (the extra arguments for a case's tmp_path, a phrase of the error line)
    "plugin_args_not_json": (lambda tmp: ["--plugin-args", "{bad"], "--plugin-args '{bad': invalid JSON"),
    "plugin_args_not_an_object": (lambda tmp: ["--plugin-args", "[2]"], "must be a JSON object"),
    "filter_file_not_json": (lambda tmp: ["--bids-filter-file", _filter_file(tmp, '{"t1w": ')], "invalid JSON"),
    "filter_selects_nothing": (lambda tmp: ["--bids-filter-file", _filter_file(tmp, '{"t1w": {"run": 7}}')],
                               "no T1w image matching the BIDS filters"),
    "work_dir_is_a_file": (lambda tmp: ["-w", str(tmp / "ds" / "README")], "work directory"),
    "model_not_a_bhd_model": (lambda tmp: ["--model", str(_model_with_card(tmp, {"weights": torch.zeros(3)}))],
                              "not a bhd model"),
    "model_is_a_text_file": (lambda tmp: ["--model", str(_model_with_card(tmp, b"<html>404</html>"))],
                             "not a loadable bhd model"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_settings_are_one_line_errors(ds, tmp_path, capsys, case):
    extra, phrase = CASES[case]
    code = _participant(ds, tmp_path, *extra(tmp_path))
    line = _one_error_line(capsys)
    assert code == 2 and phrase in line, line
    assert _outputs(tmp_path / "out") == []


def test_invalid_dataset_description(ds, tmp_path, capsys):
    (ds / "dataset_description.json").write_text('{"Name": "x",\n')
    assert _participant(ds, tmp_path) == 2
    assert str(ds / "dataset_description.json") in _one_error_line(capsys)


def test_a_model_file_that_would_run_code_is_refused_without_running_it(ds, tmp_path, capsys):
    marker = tmp_path / "code_ran"
    model = _model_with_card(tmp_path, {"unet": RunsCode(marker)})
    assert _participant(ds, tmp_path, "--model", str(model)) == 2
    line = _one_error_line(capsys)
    assert str(model) in line and "not a loadable bhd model" in line, line
    assert not marker.exists()


def test_read_only_work_folder(ds, tmp_path, capsys):
    work = tmp_path / "w"
    work.mkdir()
    with _mounted(work, "--bind", "-o", "ro", str(work)):
        code = _participant(ds, tmp_path)
    line = _one_error_line(capsys)
    assert code == 2 and str(work) in line and "Read-only file system" in line, line
    assert _outputs(tmp_path / "out") == []


def test_one_invalid_sidecar_is_skipped_with_a_warning(examples, tmp_path, caplog):
    """pybids stops indexing at an invalid JSON file; bhd leaves it out (and its metadata) and goes on."""
    from bhd_app.pipeline.bids import collect_jobs, load_layout

    ds = small_dataset(examples, tmp_path / "ds", [VIDA, ("02", "biograph", "T1w")])
    bad = ds / "sub-02" / "ses-biograph" / "anat" / "sub-02_ses-biograph_T1w.json"
    bad.write_text('{"Manufacturer": "Siemens",\n')
    fetched_never = ds / "T1w.json"  # a git-annex sidecar that was never fetched
    fetched_never.symlink_to(".git/annex/objects/aa/bb/SHA256E-s12--cc.json")
    for database_dir in (None, tmp_path / "db", tmp_path / "db"):  # no index, a new index, the saved index
        caplog.clear()
        jobs = collect_jobs(load_layout(ds, database_dir=database_dir))
        assert [j.name for j in jobs] == ["sub-02_ses-biograph_T1w", "sub-02_ses-vida_T1w"]
        assert jobs[0].metadata == {} and jobs[1].metadata["Manufacturer"] == "Siemens"
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 2, warnings
        assert any(str(bad) in w and "invalid JSON" in w for w in warnings), warnings
        assert any(str(fetched_never) in w and "broken symlink" in w for w in warnings), warnings


@pytest.mark.slow
def test_a_non_brain_image_is_refused_by_qc(ds, tmp_path, capsys):
    """A uniform ellipsoid with noise (a phantom) on the image's grid passes brain extraction and registration;
    the tissue fit refuses it."""
    import nibabel as nib
    import numpy as np

    path = ds / "sub-02" / "ses-vida" / "anat" / "sub-02_ses-vida_T1w.nii.gz"
    img = nib.load(path)
    axes = np.indices(img.shape, dtype=np.float32)
    centre, radii = (np.array(img.shape) - 1) / 2, np.array(img.shape) * 0.42
    inside = sum(((a - c) / r) ** 2 for a, c, r in zip(axes, centre, radii)) < 1
    phantom = inside * 100 + np.random.default_rng(0).normal(0, 5, img.shape)
    nib.save(nib.Nifti1Image(np.maximum(phantom, 0).astype(np.float32), img.affine), path)
    assert _participant(ds, tmp_path) == 1
    failed = [ln for ln in capsys.readouterr().err.splitlines() if "FAILED" in ln]
    assert len(failed) == 1 and str(path) in failed[0] and "does not look like a brain MRI" in failed[0], failed
    assert not list((tmp_path / "out").glob("sub-*/**/*.nii.gz"))


# ---------------------------------------------------------------------------------------------- group level


@pytest.fixture()
def finished(participant_run, tmp_path) -> tuple[Path, Path]:
    """A copy of the reference run's input and derivatives (the participant level done)."""
    ds, out = tmp_path / "ds", tmp_path / "out"
    shutil.copytree(participant_run.ds, ds)
    shutil.copytree(participant_run.out, out, ignore=shutil.ignore_patterns("group_*"))
    return ds, out


@pytest.mark.slow  # a whole group level (or two participant runs): 1-3 min on 2 cores
def test_group_level_cannot_write_is_one_line_error(finished, capsys):
    ds, out = finished
    (out / "group_report.html").mkdir()  # root ignores permissions: a folder in the way fails for everyone
    assert main([str(ds), str(out), "group"]) == 2
    line = _one_error_line(capsys)
    assert str(out) in line and "cannot write the group outputs" in line, line
    assert not (out / "group_bhd.tsv").exists() and not list(out.glob(".*.tmp"))


def test_group_level_read_only_output(finished, capsys):
    """A read-only file system (the case of the issue: EROFS), which root cannot write either."""
    ds, out = finished
    with _mounted(out, "--bind", "-o", "ro", str(out)):
        code = main([str(ds), str(out), "group"])
    assert code == 2 and "Read-only file system" in _one_error_line(capsys)
    assert not (out / "group_bhd.tsv").exists()


def test_group_level_full_disk(finished, tmp_path, capsys):
    """A full output disk: one line, and no file left half-written."""
    ds, out = finished
    used = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    full = tmp_path / "full"
    full.mkdir()
    with _mounted(full, "-t", "tmpfs", "-o", f"size={used + 4_000_000}", "tmpfs"):
        shutil.copytree(out, full / "out")
        with open(full / "filler", "wb", buffering=0) as filler:  # fill the disk
            try:
                while filler.write(b"\0" * 65536):
                    pass
            except OSError:
                pass
        code = main([str(ds), str(full / "out"), "group"])
        line = _one_error_line(capsys)
        assert code == 2 and "No space left on device" in line, line
        assert not (full / "out" / "group_bhd.tsv").exists() and not list((full / "out").glob(".*.tmp"))


@pytest.mark.slow  # a whole group level (or two participant runs): 1-3 min on 2 cores
def test_group_level_skips_unreadable_files_with_a_warning(finished, capsys, caplog):
    ds, out = finished
    (ds / "sub-02" / "ses-vida" / "anat" / "sub-02_ses-vida_T1w.json").write_text("{")
    side = next(out.glob("sub-02/ses-biograph/anat/*space-*_desc-harmonized_T1w.json"))
    side.write_text('{"Sources": ')
    assert main([str(ds), str(out), "group"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2 and any(str(side) in w and "--force" in w for w in warnings), warnings
    assert len((out / "group_bhd.tsv").read_text().splitlines()) == 2  # the header and sub-02 ses-vida
    assert "Traceback" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- bhd-train


def _train(tmp_path: Path, ds: Path) -> int:
    return train.main([str(tmp_path / "run"), "--bids-dir", str(ds), "--steps", "1", "--device", "cpu"])


def test_train_on_an_empty_dataset(ds, tmp_path, capsys):
    shutil.rmtree(ds / "sub-02")
    assert _train(tmp_path, ds) == 2
    assert "no sub-* folders" in _one_error_line(capsys, "bhd-train")
    assert _outputs(tmp_path / "run") == []


def test_train_on_a_single_image(ds, tmp_path, capsys):
    assert _train(tmp_path, ds) == 2
    line = _one_error_line(capsys, "bhd-train")
    assert str(ds) in line and "1 T1w image" in line, line
    assert _outputs(tmp_path / "run") == []


def test_train_run_dir_that_cannot_be_created(ds, tmp_path, capsys):
    (tmp_path / "run").write_text("a file")
    assert _train(tmp_path, ds) == 2
    assert str(tmp_path / "run") in _one_error_line(capsys, "bhd-train")


def test_train_validation_subjects_must_be_held_out(ds, tmp_path, capsys):
    code = train.main([str(tmp_path / "run"), "--bids-dir", str(ds), "--participant-label", "02", "03",
                       "--validation-label", "sub-02", "--steps", "1", "--device", "cpu"])
    assert code == 2
    line = _one_error_line(capsys, "bhd-train")
    assert "--validation-label 02" in line and "held out" in line, line
    assert _outputs(tmp_path / "run") == []


def test_train_validation_label_needs_a_bids_target(tmp_path, capsys):
    code = train.main([str(tmp_path / "run"), "--synthetic", "2", "--validation-label", "01", "--steps", "1"])
    assert code == 2
    assert "--bids-dir" in _one_error_line(capsys, "bhd-train")
    assert _outputs(tmp_path / "run") == []


def test_train_refuses_a_data_cache_that_holds_the_validation_subjects(tmp_path, capsys):
    """A RUN_DIR prepared without --validation-label holds every subject; validating on one of them would
    score images the model was trained on."""
    import numpy as np

    from bhd_app.training.data import save_cache

    run = tmp_path / "run"
    run.mkdir()
    image = np.zeros((8, 8, 8), np.float32)
    image[2:6, 2:6, 2:6] = 0.5
    mask = (image > 0).astype(np.uint8)
    save_cache(run / "data.npz", [image, image], [mask, mask], [mask, mask],
               {"images": ["sub-01_ses-trio_T1w.nii.gz", "sub-03_ses-trio_T1w.nii.gz"]})
    (run / "validation.npz").write_bytes((run / "data.npz").read_bytes())  # prepared: no preprocessing
    before = sorted(p.name for p in run.iterdir())
    code = train.main([str(run), "--bids-dir", str(tmp_path), "--validation-label", "03", "--steps", "1",
                       "--device", "cpu"])
    assert code == 2
    line = _one_error_line(capsys, "bhd-train")
    assert "sub-03" in line and "data.npz" in line, line
    assert sorted(p.name for p in run.iterdir()) == before


@pytest.mark.slow
@pytest.mark.parametrize("grid_factor", [1, 2])
def test_train_validates_on_held_out_subjects_of_the_target(examples, tmp_path, grid_factor):
    """--validation-label: those subjects are preprocessed into validation.npz, never trained on, and each
    checkpoint's validation scores them altered by the known scanners (one row per image and scanner); on the
    coarse grid too (--grid-factor 2), whose exported model loads with its grid."""
    import csv

    from bhd_app.modelfile import load_model
    from bhd_app.training.data import load_cache
    from bhd_app.training.validation import VALIDATION_ALTERATIONS

    ds = small_dataset(examples, tmp_path / "ds", [("01", "trio", "T1w"), ("02", "trio", "T1w"),
                                                    ("03", "trio", "T1w")])
    run = tmp_path / "run"
    assert train.main([str(run), "--bids-dir", str(ds), "--validation-label", "03", "--steps", "2",
                       "--checkpoint-minutes", "0", "--validate-minutes", "0.001", "--device", "cpu",
                       "--width", "4", "--patch-size", "16", "--batch-size", "1", "--grid-factor", str(grid_factor),
                       "--export", str(run / "model.pt")]) == 0
    assert load_model(run / "model.pt").grid_factor == grid_factor
    assert [name.split("_")[0] for name in load_cache(run / "data.npz")[3]["images"]] == ["sub-01", "sub-02"]
    assert [name.split("_")[0] for name in load_cache(run / "validation.npz")[3]["images"]] == ["sub-03"]
    with open(run / "validation.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert {r["protocol"] for r in rows} == set(VALIDATION_ALTERATIONS)
    assert all(float(r["bhd_psnr"]) > 0 and float(r["histmatch_ncc_psnr"]) > 0 for r in rows)


# ---------------------------------------------------------------------------------------------- valid inputs


def test_native_brain_mask(participant_run):
    """``desc-brain_mask`` without ``space-``: the brain extraction on the input's own grid, with a sidecar."""
    import nibabel as nib
    import numpy as np

    anat = participant_run.out / "sub-02" / "ses-vida" / "anat"
    mask = nib.load(anat / "sub-02_ses-vida_desc-brain_mask.nii.gz")
    source = nib.load(participant_run.ds / "sub-02" / "ses-vida" / "anat" / "sub-02_ses-vida_T1w.nii.gz")
    assert mask.shape == source.shape and np.allclose(mask.affine, source.affine, atol=1e-4)
    data = np.asarray(mask.dataobj)
    volume_ml = data.sum() * np.prod(source.header.get_zooms()[:3]) / 1000
    assert set(np.unique(data)) == {0, 1} and 900 < volume_ml < 2200, volume_ml
    sidecar = json.loads((anat / "sub-02_ses-vida_desc-brain_mask.json").read_text())
    assert sidecar["Type"] == "Brain" and sidecar["Sources"] == ["bids:raw:sub-02/ses-vida/anat/sub-02_ses-vida_T1w.nii.gz"]


def _odd_but_valid_dataset(examples: Path, root: Path) -> tuple[Path, Path]:
    """sub-02 ses-vida in a folder whose path has a space and non-ASCII letters, as two runs: run-01 an
    uncompressed int16 .nii with a scale factor, run-02 the original .nii.gz. Returns (dataset, run-01)."""
    import nibabel as nib
    import numpy as np

    ds = small_dataset(examples, root / "mes données" / "ds travel", [VIDA])
    anat = ds / "sub-02" / "ses-vida" / "anat"
    original = anat / "sub-02_ses-vida_T1w.nii.gz"
    img = nib.load(original)
    data = np.asarray(img.dataobj, dtype=np.float64)
    slope = data.max() / 30000  # int16 values up to 30000
    scaled = nib.Nifti1Image(np.round(data / slope).astype(np.int16), img.affine)
    scaled.header.set_slope_inter(slope, 0.0)
    run1 = anat / "sub-02_ses-vida_run-01_T1w.nii"
    nib.save(scaled, run1)
    for run, image in (("01", run1), ("02", anat / "sub-02_ses-vida_run-02_T1w.nii.gz")):
        if image.suffix == ".gz":
            original.rename(image)
        shutil.copy(anat / "sub-02_ses-vida_T1w.json", anat / f"sub-02_ses-vida_run-{run}_T1w.json")
    (anat / "sub-02_ses-vida_T1w.json").unlink()
    return ds, run1


def test_valid_odd_inputs_are_found_and_named(examples, tmp_path):
    """Runs, .nii, int16 with a scale factor, a path with a space and non-ASCII letters: found, read, named."""
    import nibabel as nib
    import numpy as np

    from bhd_app.pipeline.bids import collect_jobs, load_layout
    from bhd_app.pipeline.derivatives import output_paths
    from bhd_app.pipeline.preprocessing import load_anatomical

    ds, run1 = _odd_but_valid_dataset(examples, tmp_path)
    jobs = collect_jobs(load_layout(ds, database_dir=tmp_path / "db"))
    assert [j.path.name for j in jobs] == ["sub-02_ses-vida_run-01_T1w.nii", "sub-02_ses-vida_run-02_T1w.nii.gz"]
    assert all(j.metadata["Manufacturer"] == "Siemens" for j in jobs)
    loaded = [np.asarray(load_anatomical(j.path).dataobj) for j in jobs]
    slope = nib.load(run1).dataobj.slope
    assert nib.load(run1).get_data_dtype() == np.int16 and np.abs(loaded[0] - loaded[1]).max() <= slope
    names = [{role: p.name for role, p in output_paths(tmp_path / "out", j).items()} for j in jobs]
    assert names[0]["native"] == "sub-02_ses-vida_run-01_desc-harmonized_T1w.nii.gz"
    assert names[1]["native_mask"] == "sub-02_ses-vida_run-02_desc-brain_mask.nii.gz"
    assert not set(names[0].values()) & set(names[1].values())


@pytest.mark.slow
def test_valid_odd_inputs_are_harmonized(examples, tmp_path, capsys):
    ds, _ = _odd_but_valid_dataset(examples, tmp_path)
    out = tmp_path / "sortie ü" / "out"
    code = main([str(ds), str(out), "participant", "-w", str(tmp_path / "w"), "--skip-bids-validation",
                 "--nprocs", "2", "--omp-nthreads", "1"])
    assert code == 0, capsys.readouterr().err
    anat = out / "sub-02" / "ses-vida" / "anat"
    for run in ("01", "02"):
        assert (anat / f"sub-02_ses-vida_run-{run}_desc-harmonized_T1w.nii.gz").is_file()
        assert (anat / f"sub-02_ses-vida_run-{run}_desc-brain_mask.nii.gz").is_file()
    assert main([str(ds), str(out), "group"]) == 0
    assert len((out / "group_bhd.tsv").read_text().splitlines()) == 3


def test_participant_level_output_disk_fills_during_the_job(ds, tmp_path, capsys):
    """The output disk has room for the write probe and the logs but not for the job's images: the job fails in
    one line naming the disk's problem, and no derivative is left, whole or half-written."""
    full = tmp_path / "full"
    full.mkdir()
    with _mounted(full, "-t", "tmpfs", "-o", "size=2m", "tmpfs"):
        out = full / "out"
        code = main([str(ds), str(out), "participant", "-w", str(tmp_path / "w"), "--skip-bids-validation"])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        failed = [ln for ln in err if "FAILED" in ln or "error:" in ln]
        assert code == 1 and len(failed) == 1 and "No space left on device" in failed[0], err
        assert not any("Traceback" in ln for ln in err)
        assert not list(out.glob("sub-*/**/*.nii.gz")) and not list(out.rglob("*.tmp"))
