"""The bhd-app command line end to end, on the generated example dataset and broken copies of it."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bhd_app import config
from bhd_app.cli.parser import build_parser
from bhd_app.cli.run import harmonization_settings, main
from bhd_app.config import default_model_path

from conftest import small_dataset as _small_dataset

def _derivative_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("sub-*") if p.is_file()]


def _settings(tmp_path, *options: str) -> dict[str, config.HarmonizationSettings]:
    args = build_parser().parse_args([str(tmp_path), str(tmp_path / "out"), "participant", *options])
    return {suffix: harmonization_settings(args, suffix) for suffix in config.CONTRASTS}


def test_each_contrast_gets_its_presets_settings_and_a_settings_file_changes_them(tmp_path):
    """T1w starts late from the histogram-matched source and refines; T2w (contrast conversion, section 4.8)
    starts from noise, averages several draws and does not refine; --preset names a whole recipe; a settings
    file's top level changes every contrast, its [T2w] table that contrast only, and --seed wins over both."""
    default = _settings(tmp_path)
    assert default == {"T1w": config.T1W, "T2w": config.CONTRAST_CONVERSION}
    assert default["T2w"].start_time == 0.0 and default["T2w"].refinement == "none"
    assert default["T2w"].samples > default["T1w"].samples
    paper = _settings(tmp_path, "--preset", "paper")
    assert paper == config.PRESETS["paper"]
    assert (paper["T1w"].start_time, paper["T1w"].solver, paper["T1w"].steps) == (0.0, "midpoint", 2)
    assert (paper["T1w"].refinement, paper["T1w"].refine_reference, paper["T1w"].refine_step_rule,
            paper["T1w"].refine_step, paper["T1w"].refine_iterations) == ("ncc", "source", "paper", 0.02, 6)
    assert paper["T2w"].refinement == "none"
    assert _settings(tmp_path, "--preset", "conversion")["T1w"] == config.CONTRAST_CONVERSION
    file = tmp_path / "expert.toml"
    file.write_text('samples = 2\nstart_time = 0.5\nseed = 4\n\n[T2w]\nsolver = "euler"\nsamples = 3\n')
    changed = _settings(tmp_path, "--config", str(file), "--seed", "9")
    assert changed["T1w"] == replace(config.T1W, samples=2, start_time=0.5, seed=9)
    assert changed["T2w"] == replace(config.CONTRAST_CONVERSION, samples=3, start_time=0.5, solver="euler", seed=9)
    json_file = tmp_path / "expert.json"
    json_file.write_text(json.dumps({"T1w": {"refinement": "ncc", "refine_iterations": 3}}))
    changed = _settings(tmp_path, "--preset", "paper", "--config", str(json_file))
    assert changed["T1w"] == replace(config.PAPER, refine_iterations=3) and changed["T2w"] == paper["T2w"]


@pytest.mark.parametrize("text, key, says", [
    ("stepz = 2\n", "'stepz'", "valid keys: method, steps"),
    ("[T1w]\nsolver = \"heun\"\n", "T1w.solver", "not one of euler, midpoint"),
    ("steps = \"2\"\n", "steps", "must be an integer"),
    ("samples = 0\n", "samples", "at least 1"),
    ("start_time = 1.0\n", "start_time", "in [0, 1)"),
    ("refine_step = true\n", "refine_step", "must be a number"),
    ("[T3w]\nsteps = 2\n", "'T3w'", "the tables [T1w], [T2w]"),
    ("T1w = 2\n", "'T1w'", "must be a table"),
    ("steps = \n", "invalid TOML", "line 1"),
    ("refinement = \"mi\"\n", "refinement 'mi'", "refine_step_rule = \"rms\""),
])
def test_a_bad_settings_file_is_one_line_naming_the_file_and_key_and_nothing_is_written(tmp_path, capsys, text,
                                                                                        key, says):
    """Through the command line: exit 2 before the output or work folder exists."""
    file = tmp_path / "settings.toml"
    file.write_text(text)
    out, work = tmp_path / "out", tmp_path / "work"
    code = main([str(tmp_path), str(out), "participant", "--config", str(file), "-w", str(work)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and str(file) in err[0] and key in err[0] and says in err[0], err
    assert not out.exists() and not work.exists()


def test_the_sampler_options_are_settings_file_keys_not_options(tmp_path, capsys):
    """--steps & co. left the command line for --config; a missing settings file or an unknown preset is one line."""
    for argv in (["--steps", "2"], ["--config", str(tmp_path / "missing.toml")], ["--preset", "fast"]):
        with pytest.raises(SystemExit) as exit_:
            main([str(tmp_path), str(tmp_path / "out"), "participant", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and argv[0] in err[0] and "--help" in err[0], err
    bad_json = tmp_path / "settings.json"
    bad_json.write_text('{"steps": 2,}')
    assert main([str(tmp_path), str(tmp_path / "out"), "participant", "--config", str(bad_json)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad_json) in err[0] and "invalid JSON" in err[0]


def test_every_layer_takes_its_defaults_from_config(tmp_path):
    """refine() and harmonize(), the parser, the workflow, a settings file and the model card's defaults block
    agree with bhd_app/config.py, where each default is defined once."""
    import inspect

    from bhd_app.method.harmonize import apply_method, harmonize
    from bhd_app.method.refinement import refine
    from bhd_app.modelfile import select_device
    from bhd_app.pipeline.bids import Job
    from bhd_app.pipeline.preprocessing import preprocess
    from bhd_app.pipeline.templates import harmonization_grid
    from bhd_app.pipeline.workflows import init_job_wf
    from bhd_app.training.validation import validate

    def defaults(function) -> dict:
        return {k: p.default for k, p in inspect.signature(function).parameters.items()}

    t1w = config.preset("T1w")
    assert t1w is config.PRESETS[config.DEFAULT_PRESET]["T1w"] is config.T1W
    # The method layer: refine() has no objective of its own, the rest are the default preset's.
    r = defaults(refine)
    assert r["objective"] is inspect.Parameter.empty
    assert (r["step"], r["iterations"], r["region"], r["step_rule"], r["split_sigma_mm"]) == (
        t1w.refine_step, t1w.refine_iterations, t1w.refine_region, t1w.refine_step_rule, t1w.split_sigma_mm)
    assert r["voxel_size"] == defaults(harmonize)["voxel_size"] == defaults(apply_method)["voxel_size"]
    assert r["voxel_size"] == config.GRID_SPACING == pytest.approx(harmonization_grid().spacing)
    assert defaults(harmonize)["settings"] is t1w and defaults(validate)["settings"] is t1w
    assert defaults(preprocess)["brain_extraction"] == config.BRAIN_EXTRACTION
    assert defaults(preprocess)["seed"] == t1w.seed and defaults(select_device)["name"] == config.DEVICE
    # The parser: what the presets decide is left to them.
    parser = build_parser()
    assert parser.get_default("preset") == config.DEFAULT_PRESET
    assert parser.get_default("method") is None and parser.get_default("seed") is None
    assert parser.get_default("brain_extraction") == config.BRAIN_EXTRACTION
    assert parser.get_default("device") == config.DEVICE
    resolved = _settings(tmp_path)
    assert resolved == config.PRESETS[config.DEFAULT_PRESET]
    # A settings file that states every field of the default preset changes nothing.
    file = tmp_path / "all.json"
    file.write_text(json.dumps({suffix: s.to_dict() for suffix, s in resolved.items()}))
    assert _settings(tmp_path, "--config", str(file)) == resolved
    # The workflow: each job's nodes get the resolved settings; without seed or brain extraction, config's.
    for suffix, settings in resolved.items():
        job = Job("01", None, suffix, tmp_path / f"sub-01_{suffix}.nii.gz", {}, {})
        wf = init_job_wf(job, tmp_path / "out", tmp_path, settings.to_dict())
        assert wf.get_node("harmonize").inputs.settings == settings.to_dict()
        assert wf.get_node("to_native").inputs.native == settings.native
        assert wf.get_node("harmonize").inputs.device == config.DEVICE
        bare = init_job_wf(job, tmp_path / "out", tmp_path, {"method": settings.method})
        assert bare.get_node("preprocess").inputs.seed == settings.seed
        assert bare.get_node("preprocess").inputs.brain_extraction == config.BRAIN_EXTRACTION
    # The model card's defaults block: every field of each contrast's default settings but method and seed.
    card = json.loads(default_model_path().with_suffix(".json").read_text())["defaults"]
    assert card == config.card_defaults()
    for suffix, settings in resolved.items():
        assert card[suffix] == {k: v for k, v in settings.to_dict().items() if k not in ("method", "seed")}


def test_changed_preprocessing_settings_make_nipype_redo_cached_preprocessing(tmp_path, monkeypatch):
    """nipype reuses a finished node when the hash of its inputs is unchanged; a step's settings (here N4's
    tolerance) and bhd's version are among the preprocessing node's inputs, so changing them changes the hash."""
    from bhd_app.pipeline.bids import Job
    from bhd_app.pipeline.preprocessing import bias
    from bhd_app.pipeline.workflows import init_job_wf

    job = Job("01", "trio", "T1w", tmp_path / "sub-01_ses-trio_T1w.nii.gz", {}, {})

    def preprocessing_hash() -> str:
        node = init_job_wf(job, tmp_path / "out", tmp_path, {"method": "none"}).get_node("preprocess")
        return node.inputs.get_hashval()[1]

    before = preprocessing_hash()
    assert preprocessing_hash() == before  # nothing changed: the cache is reused
    monkeypatch.setitem(bias.N4, "tolerance", bias.N4["tolerance"] / 10)
    assert preprocessing_hash() != before


def test_the_model_card_states_the_participant_level_defaults(tmp_path):
    """The shipped model card repeats the defaults it was chosen with (issue 9); they must be the parser's."""
    card = json.loads(default_model_path().with_suffix(".json").read_text())
    args = build_parser().parse_args([str(tmp_path), str(tmp_path / "out"), "participant"])
    assert card["defaults"] == config.card_defaults()
    for suffix in ("T1w", "T2w"):
        used = harmonization_settings(args, suffix).to_dict()
        assert {key: used[key] for key in card["defaults"][suffix]} == card["defaults"][suffix], suffix


def test_every_shipped_model_loads_with_a_card_of_todays_defaults_and_its_training_data_credited():
    from bhd_app.modelfile import load_model

    for name in config.SHIPPED_MODELS:
        model = load_model(config.shipped_model_path(name))
        assert model.card["defaults"] == config.card_defaults(), name
        assert model.grid_factor == model.card["training"].get("grid_factor", 1) in (1, 2), name
        if "IXI" in json.dumps(model.card["training_data"]):
            assert "IXI" in model.card["credit"] and "CC BY-SA" in model.card["license"], name


def test_help_shows_what_a_user_decides_and_each_presets_recipe(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: None" not in text
    for option in ("--participant-label", "--contrasts", "--method", "--model", "--preset", "--config", "--nprocs",
                   "--plugin", "--work-dir", "--device", "--seed"):
        assert option in text, option
    for option in ("--steps", "--solver", "--start-time", "--samples", "--refinement", "--refine-step",
                   "--split-sigma", "--native"):
        assert f"{option} " not in text, option
    for name, contrasts in config.PRESETS.items():
        for suffix, settings in contrasts.items():
            assert f"{suffix} {config.summary(settings)}" in text, (name, suffix)


def test_not_a_bids_folder_is_one_line_error(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    code = main([str(tmp_path / "in"), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "dataset_description.json" in err[0] and str(tmp_path / "in") in err[0]


def test_mi_refinement_under_the_paper_step_rule_is_one_line_error(tmp_path, capsys):
    """The paper's step (x += 0.02 N grad) is NCC's; on MI's gradient it wrecked the image (10-12 dB), so the
    combination stops before any file is written; with the rms step rule MI runs."""
    file = tmp_path / "mi.toml"
    file.write_text('[T1w]\nrefinement = "mi"\n')
    out = tmp_path / "out"
    code = main([str(tmp_path), str(out), "participant", "--config", str(file), "-w", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and 'refine_step_rule = "rms"' in err[0] and str(file) in err[0] and "T1w" in err[0]
    assert not out.exists()
    file.write_text('[T1w]\nrefinement = "mi"\nrefine_step_rule = "rms"\n')
    assert _settings(tmp_path, "--config", str(file))["T1w"].refinement == "mi"


def test_unknown_participant_label_lists_the_available_ones(examples, tmp_path, capsys):
    ds = _small_dataset(examples, tmp_path / "ds", [("02", "vida", "T1w")])
    code = main([str(ds), str(tmp_path / "out"), "participant", "--participant-label", "sub-99",
                 "-w", str(tmp_path / "w"), "--skip-bids-validation"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "99" in err[0] and "02" in err[0]


def test_output_inside_input_is_refused(examples, tmp_path, capsys):
    ds = _small_dataset(examples, tmp_path / "ds", [("02", "vida", "T1w")])
    code = main([str(ds), str(ds / "sub-02" / "out"), "participant", "-w", str(tmp_path / "w"),
                 "--skip-bids-validation"])
    assert code == 2
    assert not (ds / "sub-02" / "out" / "sub-02").exists()


@pytest.mark.parametrize("damage", ["truncated", "4d"])
def test_bad_image_fails_alone_and_leaves_nothing(examples, tmp_path, capsys, damage):
    ds = _small_dataset(examples, tmp_path / "ds", [("02", "vida", "T1w")])
    bad = ds / "sub-02" / "ses-vida" / "anat" / "sub-02_ses-vida_T1w.nii.gz"
    if damage == "truncated":
        raw = gzip.decompress(bad.read_bytes())
        bad.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    else:
        img = nib.load(bad)
        data = np.asarray(img.dataobj)
        nib.save(nib.Nifti1Image(np.stack([data, data], -1), img.affine), bad)
    out = tmp_path / "out"
    code = main([str(ds), str(out), "participant", "-w", str(tmp_path / "w"), "--skip-bids-validation"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if "FAILED" in ln]
    assert code == 1
    assert len(err) == 1 and bad.name in err[0]
    assert _derivative_files(out) == []


def test_participant_level_end_to_end(participant_run):
    """Preprocessing, harmonization and derivatives of a real job; a re-run skips it."""
    ds, out, args = participant_run.ds, participant_run.out, participant_run.args
    anat = out / "sub-02" / "ses-vida" / "anat"
    stem = "sub-02_ses-vida"
    grid = "space-MNI152NLin2009aSym_res-1p2"
    harmonized = nib.load(anat / f"{stem}_{grid}_desc-harmonized_T1w.nii.gz")
    assert harmonized.shape == (128, 160, 136)
    data = np.asarray(harmonized.dataobj)
    mask = np.asarray(nib.load(anat / f"{stem}_{grid}_desc-brain_mask.nii.gz").dataobj) > 0
    assert 0 <= data.min() and data.max() <= 1 and data[~mask].max() == 0 and data[mask].std() > 0.1
    native = nib.load(anat / f"{stem}_desc-harmonized_T1w.nii.gz")
    source = nib.load(ds / "sub-02" / "ses-vida" / "anat" / f"{stem}_T1w.nii.gz")
    assert native.shape == source.shape and np.allclose(native.affine, source.affine, atol=1e-4)
    side = json.loads((anat / f"{stem}_{grid}_desc-harmonized_T1w.json").read_text())
    assert side["SkullStripped"] is True and len(side["Harmonization"]["ModelSHA256"]) == 64
    assert side["Harmonization"]["start_time"] == config.T1W.start_time
    assert side["Harmonization"]["samples"] == config.T1W.samples
    assert side["Harmonization"]["solver"] == config.T1W.solver and "method_ode" not in side["Harmonization"]
    assert (anat / f"{stem}_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.mat").exists()
    for name in (f"{stem}_desc-harmonized_T1w.json", f"{stem}_desc-brain_mask.json"):  # on the input's own grid
        native_side = json.loads((anat / name).read_text())
        assert native_side["SpatialReference"] == f"bids:raw:sub-02/ses-vida/anat/{stem}_T1w.nii.gz", name
    report = (out / f"{stem}_T1w.html").read_text()
    assert report.count("data:image/png;base64,") >= 5 and "http" not in report.replace("http-equiv", "")
    mtime = (anat / f"{stem}_{grid}_desc-harmonized_T1w.nii.gz").stat().st_mtime
    assert main(args) == 0
    assert (anat / f"{stem}_{grid}_desc-harmonized_T1w.nii.gz").stat().st_mtime == mtime


def test_derivatives_pass_the_bids_validator(participant_run):
    from bhd_app.pipeline.bids import BIDSValidatorMissing, run_bids_validator

    try:
        ok, summary = run_bids_validator(participant_run.out)
    except BIDSValidatorMissing:
        pytest.skip("bids-validator-deno not installed")
    assert ok, summary


def test_group_level_without_results_is_one_line_error(examples, tmp_path, capsys):
    ds = _small_dataset(examples, tmp_path / "ds", [("02", "vida", "T1w")])
    (tmp_path / "out").mkdir()
    assert main([str(ds), str(tmp_path / "out"), "group"]) == 2
    assert "run the participant level first" in capsys.readouterr().err


def _rerun(run, out: Path, *extra: str) -> Path:
    """The reference run's dataset and work folder (cached preprocessing), sub-02 ses-vida, into ``out``."""
    work = run.args[run.args.index("-w") + 1]
    assert main([str(run.ds), str(out), "participant", "-w", work, "--skip-bids-validation", "--nprocs", "1",
                 "--participant-label", "02", "--session-label", "vida", *extra]) == 0
    return out / "sub-02" / "ses-vida" / "anat"


def test_one_process_runs_the_jobs_one_after_another(participant_run, tmp_path, capsys):
    """--nprocs 1 completes the first job before the second starts (nipype's Linear plugin ran every job's
    first step, then every job's second, so the time left stayed unknown until the end)."""
    work = participant_run.args[participant_run.args.index("-w") + 1]
    assert main([str(participant_run.ds), str(tmp_path / "out"), "participant", "-w", work, "--skip-bids-validation",
                 "--nprocs", "1"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("bhd [")]
    first_done = next(i for i, ln in enumerate(lines) if "job complete (1/2 jobs done" in ln)
    first_job = lines[first_done].split("] ", 1)[1].split(":")[0]
    assert lines[0].split("] ", 1)[1].startswith(first_job)
    assert all(ln.split("] ", 1)[1].startswith(first_job) for ln in lines[:first_done]), lines
    assert "about" in lines[first_done + 1]  # the second job's first line has an estimate


def _harmonized(anat: Path) -> tuple[np.ndarray, dict]:
    path = next(anat.glob("*space-*desc-harmonized_T1w.nii.gz"))
    sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
    return np.asarray(nib.load(path).dataobj), sidecar


def test_ssimh_method_through_the_cli(participant_run, tmp_path):
    """--method ssimh: the target spectrum from the model file, the cutoff in the sidecar, other output than bhd."""
    anat = _rerun(participant_run, tmp_path / "out", "--method", "ssimh")
    image, sidecar = _harmonized(anat)
    bhd_image, _ = _harmonized(participant_run.out / "sub-02" / "ses-vida" / "anat")
    preproc = np.asarray(nib.load(next(anat.glob("*desc-preproc_T1w.nii.gz"))).dataobj)
    assert sidecar["Harmonization"]["method"] == "ssimh" and sidecar["Harmonization"]["SSIMHCutoff"] == 16
    assert image.min() >= 0 and image.max() <= 1
    assert np.abs(image - preproc).mean() > 1e-3 and np.abs(image - bhd_image).mean() > 1e-3


def test_a_preset_and_a_settings_file_through_the_cli_are_recorded(participant_run, tmp_path):
    """--preset paper with a settings file: the harmonized image's sidecar holds the preset, the file and every
    resolved setting; the methods text names the preset and the file; the image is the paper route's, not the
    default's."""
    file = tmp_path / "expert.toml"
    file.write_text("[T1w]\nrefine_iterations = 3\n")
    anat = _rerun(participant_run, tmp_path / "out", "--preset", "paper", "--config", str(file))
    image, sidecar = _harmonized(anat)
    recorded = sidecar["Harmonization"]
    assert recorded["preset"] == "paper" and recorded["settings_file"] == str(file)
    expected = replace(config.PAPER, refine_iterations=3).to_dict()
    assert {k: recorded[k] for k in expected} == expected
    citation = (tmp_path / "out" / "logs" / "CITATION.md").read_text()
    assert "preset 'paper', changed by the settings file expert.toml" in citation
    default_image, default_sidecar = _harmonized(participant_run.out / "sub-02" / "ses-vida" / "anat")
    assert default_sidecar["Harmonization"]["preset"] == config.DEFAULT_PRESET
    assert "settings_file" not in default_sidecar["Harmonization"]
    assert np.abs(image - default_image).mean() > 1e-3


@pytest.mark.slow  # a whole group level (or two participant runs): 1-3 min on 2 cores
def test_a_new_model_redoes_cached_harmonization(participant_run, tmp_path):
    """The work folder caches nodes; a model file replaced at the same path must not reuse the old output.

    The replacement keeps the old file's size and modification time, which is all nipype's own input hash
    looks at: only the model's sha256 in the node settings tells the two models apart.
    """
    import os

    import torch

    from bhd_app.modelfile import load_model, save_model

    model = load_model()
    path = tmp_path / "model.pt"
    save_model(path, model.net, model.parameterization, model.target_quantiles, {}, model.target_spectrum)
    before, sidecar_before = _harmonized(_rerun(participant_run, tmp_path / "a", "--model", str(path)))
    with torch.no_grad():
        for p in model.net.parameters():
            p.mul_(0.9)
    stat = path.stat()
    save_model(path, model.net, model.parameterization, model.target_quantiles, {}, model.target_spectrum)
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after, sidecar_after = _harmonized(_rerun(participant_run, tmp_path / "b", "--model", str(path)))
    assert sidecar_after["Harmonization"]["ModelSHA256"] != sidecar_before["Harmonization"]["ModelSHA256"]
    assert np.abs(after - before).max() > 1e-3


def test_without_model_each_contrast_gets_its_default_model(examples, tmp_path):
    """No --model: the T1w job uses config.DEFAULT_MODELS["T1w"], the T2w job the T2w one (--method histmatch
    takes each model's target histogram); the sidecars and the methods text name each; --model sets both."""
    ds = _small_dataset(examples, tmp_path / "ds", [("01", "trio", "T1w"), ("01", "trio", "T2w")])
    out = tmp_path / "out"
    DESC = {"T1w": "", "T2w": "T2w"}
    common = ["--contrasts", "T1w", "T2w", "--method", "histmatch", "-w", str(tmp_path / "w"),
              "--skip-bids-validation", "--nprocs", "2"]
    assert main([str(ds), str(out), "participant", *common]) == 0
    anat = out / "sub-01" / "ses-trio" / "anat"
    citation = (out / "logs" / "CITATION.md").read_text()
    for suffix in ("T1w", "T2w"):
        path = anat / f"sub-01_ses-trio_desc-harmonized{DESC[suffix]}_T1w.json"  # a T2w input converted to T1w
        recorded = json.loads(path.read_text())["Harmonization"]
        expected = default_model_path(suffix)
        assert recorded["ModelFile"] == expected.name
        assert f"The {suffix} model was {expected.name}, sha256 {recorded['ModelSHA256']}" in citation
    assert default_model_path("T1w") != default_model_path("T2w")
    # --model: the parser's value through the function the participant level resolves each job's model with
    # (test_a_new_model_redoes_cached_harmonization runs --model through the CLI)
    args = build_parser().parse_args([str(ds), str(tmp_path / "one"), "participant", *common, "--model", "ixi-hh"])
    assert {p.name for p in config.models_by_contrast(args.model, args.contrasts).values()} == {"bhd_ixihh.pt"}


def test_nprocs_defaults_to_the_cpus_this_process_may_use():
    """On a cluster node an allocation's affinity, not the node's core count, bounds the processes started."""
    import os
    import subprocess
    import sys

    code = "from bhd_app.cli.parser import build_parser; print(build_parser().get_default('nprocs'))"
    one_cpu = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert one_cpu.stdout.strip() == "1"
