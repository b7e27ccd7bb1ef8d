"""Tests of the group level's downstream measures (bhd_app.pipeline.site_effects, bhd_app.pipeline.group), the console progress
and the methods text.

The images are the session's simulated subject on the coarse 32^3 grid (conftest ``small_subject``); the
end-to-end tests reuse the reference participant run (one subject on two scanners, conftest ``participant_run``).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from bhd_app.cli.run import main
from bhd_app.config import CONTRAST_CONVERSION, T1W
from bhd_app.pipeline import site_effects
from bhd_app.pipeline.boilerplate import methods_text
from bhd_app.pipeline.group import classifier_line
from bhd_app.pipeline.progress import JobProgress


def read_tsv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_segment_orders_tissues_by_intensity_and_counts_every_brain_voxel(small_subject):
    image, mask = small_subject["trio3t"], small_subject["mask"]
    labels = site_effects.segment(image, mask)
    assert labels.shape == image.shape and set(np.unique(labels)) == {0, 1, 2, 3}
    assert (labels[mask == 0] == 0).all() and (labels[mask > 0] > 0).all()
    means = [image[labels == k].mean() for k in (1, 2, 3)]
    assert means[0] < means[1] < means[2]  # CSF < GM < WM in a T1w image
    volumes = site_effects.tissue_volumes(labels)
    assert sum(volumes.values()) == pytest.approx((mask > 0).sum() * site_effects.voxel_ml())


def test_image_features_see_a_contrast_change(small_subject):
    image, mask = small_subject["trio3t"], small_subject["mask"]
    labels = site_effects.segment(image, mask)
    features = site_effects.image_features(image, labels)
    assert features.shape == (len(site_effects.FEATURES),) and np.isfinite(features).all()
    contrast = site_effects.FEATURES.index("GM_WM_contrast")
    assert features[contrast] > 0
    flatter = np.where(mask > 0, 0.5 + 0.5 * (image - 0.5), 0)  # half the contrast
    assert site_effects.image_features(flatter, labels)[contrast] < features[contrast]


def test_scanner_effect_is_large_for_a_scanner_offset_and_small_for_noise():
    rng = np.random.default_rng(0)
    scanners = ["a"] * 4 + ["b"] * 4
    offset = site_effects.scanner_effect(list(rng.normal(0, 1, 8) + np.repeat([0.0, 10.0], 4)), scanners)
    assert offset["eta2"] > 0.9 and offset["p"] < 1e-3
    noise = site_effects.scanner_effect(list(rng.normal(0, 1, 8)), scanners)
    assert noise["eta2"] < offset["eta2"] and noise["p"] > offset["p"]
    assert np.isnan(site_effects.scanner_effect([1.0, 2.0], ["a", "a"])["eta2"])  # one scanner


def test_partial_eta2_removes_the_subject_effect():
    """Two subjects, each on both scanners: a big subject difference hides no scanner effect."""
    subjects, scanners = ["s1", "s1", "s2", "s2", "s3", "s3"], ["a", "b"] * 3
    values = [100.0, 101.0, 200.0, 201.2, 150.0, 150.9]  # subject dominates; scanner b adds ~1
    effect = site_effects.scanner_effect(values, scanners, subjects)
    assert effect["eta2"] < 0.01 and effect["partial_eta2"] > 0.9


def test_site_classifier_accuracy_against_chance():
    rng = np.random.default_rng(1)
    scanners = ["a", "b", "c"] * 4
    centers = np.array([{"a": (0, 0, 0), "b": (5, 0, 0), "c": (0, 5, 0)}[s] for s in scanners], float)
    separable = rng.normal(0, 0.1, (12, 3)) + centers
    result = site_effects.site_classifier(separable, scanners, permutations=20)
    assert result["accuracy"] == 1.0 and result["chance"] == pytest.approx(1 / 3) and result["p"] < 0.1
    noise = site_effects.site_classifier(rng.normal(0, 1, (12, 3)), scanners, permutations=20)
    assert noise["accuracy"] < 0.75
    assert np.isnan(site_effects.site_classifier(np.zeros((3, 2)), ["a"] * 3)["accuracy"])


@pytest.mark.parametrize("n_scanners", [2, 4])
def test_site_classifier_is_leave_one_out_of_a_ridge_classifier(n_scanners):
    """Oracle: refit scikit-learn's RidgeClassifier without each image in turn and predict it."""
    from sklearn.linear_model import RidgeClassifier
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(n_scanners)
    scanners = list("abcd"[:n_scanners] * 3) + ["a", "b"]
    features = rng.normal(0, 1, (len(scanners), 5)) + 0.8 * np.array(["abcd".index(s) for s in scanners])[:, None]
    x, y = StandardScaler().fit_transform(features), np.array(scanners)
    right = [RidgeClassifier(alpha=1.0).fit(np.delete(x, i, 0), np.delete(y, i)).predict(x[i:i + 1])[0] == y[i]
             for i in range(len(y))]
    assert site_effects.site_classifier(features, scanners, permutations=5)["accuracy"] == pytest.approx(np.mean(right))


def test_segment_agrees_with_atropos_on_a_real_brain(stroke):
    """The numpy segmentation against ants.atropos with the same model and schedule, on a real T1w brain."""
    import ants

    image = stroke["T1"][40:104, 60:124, 40:104].astype(np.float32)  # 64^3 mm of the real brain
    mask = image > 0.02
    reference = ants.atropos(a=ants.from_numpy(image), x=ants.from_numpy(mask.astype(np.float32)), i="kmeans[3]",
                             m="[0.1,1x1x1]", c="[5,0]", verbose=0)["segmentation"].numpy().astype(np.uint8)
    reference[~mask] = 0
    means = [image[reference == k].mean() for k in (1, 2, 3)]  # Atropos orders its k-means classes by intensity
    assert means[0] < means[1] < means[2]
    labels = site_effects.segment(image, mask)
    assert (labels == reference)[mask].mean() > 0.998
    for k in (1, 2, 3):
        assert (labels == k).sum() == pytest.approx((reference == k).sum(), rel=0.005)


def test_segment_refuses_an_image_without_three_tissue_classes():
    mask = np.zeros((16, 16, 16), bool)
    mask[4:12, 4:12, 4:12] = True
    with pytest.raises(ValueError, match="three tissue classes"):
        site_effects.segment(np.where(mask, 0.5, 0).astype(np.float32), mask)


def test_rigid_registration_restores_traveling_subject_agreement(small_subject):
    fixed, mask = small_subject["trio3t"], small_subject["mask"] > 0
    moved = ndimage.shift(small_subject["vision15t"], (1.5, -1.0, 1.0), order=1)
    moved_mask = ndimage.shift(mask.astype(np.float32), (1.5, -1.0, 1.0), order=0) > 0.5
    unregistered = site_effects.traveling_agreement(fixed, moved, mask & moved_mask)
    transforms = site_effects.rigid_transform(fixed, moved)
    aligned = site_effects.apply_transform(fixed, moved, transforms)
    aligned_mask = site_effects.apply_transform(fixed, moved_mask, transforms, nearest=True) > 0.5
    registered = site_effects.traveling_agreement(fixed, aligned, mask & aligned_mask)
    assert registered[1] > unregistered[1] + 0.02  # SSIM
    assert registered[0] > unregistered[0]  # PSNR


def test_group_level_on_the_reference_run(participant_run, capsys):
    out = participant_run.out
    assert main([str(participant_run.ds), str(out), "group"]) == 0
    lines = capsys.readouterr().out.splitlines()  # progress: each image, each traveling pair, the writing
    assert any("separability" in line for line in lines)
    rows = (out / "group_bhd.tsv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("job\tscanner")
    assert {r.split("\t")[1] for r in rows[1:]} == {"Siemens MAGNETOM_Vida 3T T1w", "Siemens Biograph_mMR 3T T1w"}
    html = (out / "group_report.html").read_text()
    assert "Site separability" in html and "Downstream site effects" in html
    assert html.count("data:image/png;base64,") >= 2
    segmented = [line for line in lines if "] segmented sub-" in line]  # one line per image as it finishes
    assert len(segmented) == 2 and "(2/2; about 0:" in segmented[1] and "left in this stage)" in segmented[1]
    assert sum("] registered sub-02" in line and "(1/1; about 0:" in line for line in lines) == 1
    assert any(line.startswith("bhd group [0:") and "writing the group tables" in line for line in lines)
    volumes = read_tsv(out / "group_volumes.tsv")
    assert {r["condition"] for r in volumes} == {"before", "bhd", "histmatch"} and len(volumes) == 6
    assert all(300 < float(r["GM_mL"]) + float(r["WM_mL"]) < 2500 for r in volumes)
    travel = read_tsv(out / "group_traveling.tsv")  # sub-02 on vida and biograph: one pair, three versions
    assert len(travel) == 3 and all(0.3 < float(r["ssim"]) <= 1 for r in travel)
    assert len(read_tsv(out / "group_site_effects.tsv")) == 9
    assert read_tsv(out / "group_classifier.tsv")[0]["accuracy"] == "nan"  # two images: not enough to classify
    assert (out / "group_age.tsv").read_text() == ""  # one subject: no age correlation
    text = (out / "group_report.html").read_text()
    for section in ("Downstream site effects", "Traveling-subject pairs", "histmatch", "chance"):
        assert section in text


def test_group_level_without_travelers_or_participants_tsv(participant_run, tmp_path):
    ds, out = tmp_path / "ds", tmp_path / "out"
    shutil.copytree(participant_run.ds, ds)
    (ds / "participants.tsv").unlink()
    shutil.copytree(participant_run.out, out)
    for f in out.glob("sub-02/ses-biograph/anat/*"):
        f.unlink()
    assert main([str(ds), str(out), "group"]) == 0
    assert (out / "group_traveling.tsv").read_text() == ""
    assert "No subject was seen on two scanners" in (out / "group_report.html").read_text()


@pytest.mark.slow  # a whole group level (or two participant runs): 1-3 min on 2 cores
def test_group_level_leaves_nothing_in_the_temp_folder(participant_run, tmp_path, monkeypatch):
    """antspyx's Atropos and registration leave their images in the temp folder (a shared /tmp under Singularity)."""
    tmp, out = tmp_path / "tmp", tmp_path / "out"
    tmp.mkdir()
    shutil.copytree(participant_run.out, out)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    assert main([str(participant_run.ds), str(out), "group"]) == 0
    assert sorted(p.name for p in tmp.iterdir()) == []


def test_group_level_with_another_model_is_a_one_line_error(participant_run, tmp_path, capsys):
    from bhd_app.modelfile import load_model, save_model

    model = load_model()
    other = tmp_path / "other.pt"
    save_model(other, model.net, model.parameterization, model.target_quantiles * 0.9, {"name": "other"})
    assert main([str(participant_run.ds), str(participant_run.out), "group", "--model", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass the same --model" in err[0]


class FakeNode:
    """What nipype's status_callback reads of a node: its name and its workflow hierarchy (plain data)."""

    def __init__(self, job: str, step: str):
        self.name, self._hierarchy = step, f"bhd_participant_wf.{job}"


def test_progress_lines_per_job_step_with_time_left():
    stream = io.StringIO()
    progress = JobProgress(["sub-01_ses-a_T1w", "sub-02_ses-b_T1w"], stream=stream, bar=False)
    for job in ("sub_01_ses_a_T1w", "sub_02_ses_b_T1w"):
        for step in ("preprocess", "harmonize", "to_native", "derivatives"):
            progress(FakeNode(job, step), "start")
            progress(FakeNode(job, step), "end")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10  # four step starts and one completion per job
    assert lines[0].startswith("bhd [0:00:00] sub-01_ses-a_T1w: preprocess started (0/2 jobs done, time left:")
    assert "job complete (1/2 jobs done, about" in lines[4] and "left)" in lines[4]
    assert "(2/2 jobs done, about 0:00:00 left)" in lines[-1]


def test_progress_callback_from_a_real_nipype_run(tmp_path):
    """nipype's Linear plugin calls the progress for every node of a one-job workflow."""
    from nipype.interfaces.utility import Function
    from nipype.pipeline import engine as pe

    def step(x):
        return x

    outer = pe.Workflow("bhd_participant_wf", base_dir=str(tmp_path))
    job = pe.Workflow("sub_01_T1w")
    nodes = [pe.Node(Function(["x"], ["x"], step), name=n) for n in ("preprocess", "derivatives")]
    nodes[0].inputs.x = 1
    job.connect(nodes[0], "x", nodes[1], "x")
    outer.add_nodes([job])
    stream = io.StringIO()
    progress = JobProgress(["sub-01_T1w"], stream=stream, bar=False)
    outer.run(plugin="Linear", plugin_args={"status_callback": progress})
    lines = stream.getvalue().splitlines()
    assert [ln.split("] ", 1)[1].split(" (")[0] for ln in lines] == [
        "sub-01_T1w: preprocess started", "sub-01_T1w: derivatives started",
        "sub-01_T1w: derivatives finished: job complete"]


def test_multiproc_finishes_a_job_before_starting_the_next(tmp_path):
    """With two jobs of three steps on one worker, nipype's MultiProc runs the steps breadth-first (every job's
    first step, then every job's second...), so no job completes until the end and the time left cannot be
    estimated; bhd's plugin runs each job to the end first, and the first job's completion gives an estimate."""
    from nipype.interfaces.utility import Function
    from nipype.pipeline import engine as pe

    from bhd_app.pipeline.progress import JobFirstMultiProcPlugin

    def step(x):
        return x

    outer = pe.Workflow("bhd_participant_wf", base_dir=str(tmp_path))
    for name in ("sub_01_T1w", "sub_02_T1w"):
        job = pe.Workflow(name)
        nodes = [pe.Node(Function(["x"], ["x"], step), name=n) for n in ("preprocess", "harmonize", "derivatives")]
        nodes[0].inputs.x = 1
        job.connect(nodes[0], "x", nodes[1], "x")
        job.connect(nodes[1], "x", nodes[2], "x")
        outer.add_nodes([job])
    stream = io.StringIO()
    progress = JobProgress(["sub-01_T1w", "sub-02_T1w"], stream=stream, bar=False)
    outer.run(plugin=JobFirstMultiProcPlugin(plugin_args={"n_procs": 1, "status_callback": progress}))
    lines = [ln.split("] ", 1)[1] for ln in stream.getvalue().splitlines()]
    first_done = next(i for i, ln in enumerate(lines) if "job complete" in ln)
    assert lines[first_done].startswith("sub-01_T1w: derivatives finished: job complete (1/2 jobs done, about")
    assert not any(ln.startswith("sub-02_T1w") for ln in lines[:first_done])
    assert len(lines) == 8 and "(2/2 jobs done, about 0:00:00 left)" in lines[-1]


def test_methods_text_names_the_settings_the_model_of_each_contrast_and_the_references():
    settings = {"T1w": T1W.to_dict() | {"samples": 4, "model": "/models/bhd_ixihh_coarse.pt", "model_sha256": "ab" * 32},
                "T2w": CONTRAST_CONVERSION.to_dict() | {"model": "/models/bhd_ixihh.pt", "model_sha256": "cd" * 32}}
    text = methods_text(settings, {"bhd": "0.1.0", "antspyx": "0.5.4", "nipype": "1.9"}, "auto")
    assert "4 averaged draws" in text and "uncertainty map" in text
    for s in (T1W, CONTRAST_CONVERSION):  # the settings' own numbers, whatever the defaults are
        start = "from pure noise" if s.start_time == 0 else f"starting at t0 = {s.start_time:g}"
        assert f"{s.solver} solver, {s.steps} step{'s' if s.steps != 1 else ''}, {start}" in text
    assert "N4" in text and "deepbet" in text and "arXiv:2505.00133" in text
    assert f"The T1w model was bhd_ixihh_coarse.pt, sha256 {'ab' * 32}" in text
    assert f"The T2w model was bhd_ixihh.pt, sha256 {'cd' * 32}" in text
    for ref in ("Jeong H, Lee H, Chun SY, Lee J", "Avants", "Gorgolewski", "Yarkoni", "Fisch"):
        assert ref in text
    finish = "then matched to the model's target-domain histogram"
    assert finish not in text
    assert finish in methods_text({"T1w": settings["T1w"] | {"finish": "histmatch"}}, {"bhd": "0.1.0"}, "auto")


@pytest.mark.slow
def test_samples_4_writes_an_uncertainty_map_the_report_shows(examples, tmp_path):
    """One real job with samples = 4 (a --config file): the desc-uncertainty derivative, its sidecar, the report,
    the validator."""
    import json

    import nibabel as nib

    from bhd_app.pipeline.bids import BIDSValidatorMissing, run_bids_validator
    from conftest import small_dataset

    ds = small_dataset(examples, tmp_path / "ds", [("03", "sonata", "T1w")])
    out = tmp_path / "out"
    (tmp_path / "samples.toml").write_text("samples = 4\n")
    assert main([str(ds), str(out), "participant", "-w", str(tmp_path / "w"), "--skip-bids-validation",
                 "--nprocs", "1", "--config", str(tmp_path / "samples.toml")]) == 0
    anat = out / "sub-03" / "ses-sonata" / "anat"
    path = anat / "sub-03_ses-sonata_space-MNI152NLin2009aSym_res-1p2_desc-uncertainty_T1w.nii.gz"
    sd = np.asarray(nib.load(path).dataobj)
    mask = np.asarray(nib.load(anat / "sub-03_ses-sonata_space-MNI152NLin2009aSym_res-1p2_desc-brain_mask.nii.gz")
                      .dataobj) > 0
    assert (sd[~mask] == 0).all() and sd[mask].mean() > 0
    side = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
    assert "standard deviation over the 4" in side["Description"] and side["Harmonization"]["samples"] == 4
    report = (out / "sub-03_ses-sonata_T1w.html").read_text()
    assert "Uncertainty map" in report and "The model is least sure around" in report
    assert "4 averaged draws" in (out / "logs" / "CITATION.md").read_text()
    try:
        ok, summary = run_bids_validator(out)
    except BIDSValidatorMissing:
        return
    assert ok, summary


# ---------------------------------------------------------------------------------------------- group records


def _small_bids_with_derivatives(root: Path, small_subject, small_grid, complete: bool = True) -> tuple[Path, Path]:
    """A 32^3 dataset: sub-01 T1w (scanner only in the top-level T1w.json) and T2w (own sidecar), sub-02 T1w on
    another scanner (own sidecar, overriding the top level); derivatives written at ``output_paths``."""
    import nibabel as nib

    from bhd_app.pipeline.bids import collect_jobs, load_layout, write_sidecars
    from bhd_app.pipeline.derivatives import output_paths

    ds, out = root / "ds", root / "out"
    ds.mkdir(parents=True)
    (ds / "dataset_description.json").write_text(json.dumps({"Name": "small", "BIDSVersion": "1.10.0"}))
    (ds / "T1w.json").write_text(json.dumps({"Manufacturer": "Siemens", "ManufacturersModelName": "TrioTim",
                                             "MagneticFieldStrength": 3}))
    trio, vision, mask = small_subject["trio3t"], small_subject["vision15t"], small_subject["mask"]
    inputs = {("01", "T1w"): trio, ("01", "T2w"): 1 - trio * (mask > 0), ("02", "T1w"): vision}
    for (sub, suffix), image in inputs.items():
        anat = ds / f"sub-{sub}" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(image.astype(np.float32), small_grid.affine), anat / f"sub-{sub}_{suffix}.nii.gz")
    (ds / "sub-01" / "anat" / "sub-01_T2w.json").write_text(json.dumps({"Manufacturer": "GE",
                                                                        "MagneticFieldStrength": 1.5}))
    (ds / "sub-02" / "anat" / "sub-02_T1w.json").write_text(json.dumps({"ManufacturersModelName": "Vision",
                                                                        "MagneticFieldStrength": 1.5}))
    jobs = collect_jobs(load_layout(ds), suffixes=("T1w", "T2w"))
    for job in jobs:
        image = inputs[(job.subject, job.suffix)]
        harmonized = np.where(mask > 0, 0.5 * image + 0.25, 0).astype(np.float32)
        paths = output_paths(out, job)
        volumes = {"preproc": image, "mask": mask, "edges": mask, "harmonized": harmonized, "native": harmonized,
                   "native_mask": mask}
        for role, volume in volumes.items():
            paths[role].parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(np.asarray(volume, np.float32), small_grid.affine), paths[role])
        paths["xfm"].write_bytes(b"\0" * 64)
        write_sidecars({paths[r]: {"Description": r} for r in volumes if r != "harmonized"})
        if complete or job.suffix == "T1w":
            write_sidecars({paths["harmonized"]: {"Harmonization": {"method": "bhd", "ModelSHA256": "ab" * 32}}})
    return ds, out


def test_group_records_hold_t2w_jobs_and_inherited_scanner_metadata(small_subject, small_grid, tmp_path):
    from bhd_app.pipeline.group import collect_results, group_tsv, traveling_pairs

    ds, out = _small_bids_with_derivatives(tmp_path, small_subject, small_grid)
    records = collect_results(ds, out)
    assert [(r["job"], r["suffix"]) for r in records] == [("sub-01_T1w", "T1w"), ("sub-01_T2w", "T2w"),
                                                          ("sub-02_T1w", "T1w")]
    # The scanner of sub-01's T1w is described only in the top-level T1w.json; sub-02's sidecar overrides it.
    assert [r["scanner"] for r in records] == ["Siemens TrioTim 3T T1w", "GE 1.5T T2w", "Siemens Vision 1.5T T1w"]
    assert all(r["method"] == "bhd" and r["model_sha256"] == "ab" * 32 for r in records)
    mask = small_subject["mask"] > 0
    np.testing.assert_array_equal(records[0]["before"], small_subject["trio3t"][mask].astype(np.float32))
    np.testing.assert_allclose(records[2]["after"], 0.5 * small_subject["vision15t"][mask] + 0.25, rtol=1e-6)
    assert traveling_pairs(records) == [(0, 1)]  # sub-01 on two "scanners" (T1w and T2w); sub-02 alone
    rows = list(csv.DictReader(io.StringIO(group_tsv(records)), delimiter="\t"))
    assert [(r["job"], r["contrast"]) for r in rows] == [("sub-01_T1w", "T1w"), ("sub-01_T2w", "T2w"),
                                                         ("sub-02_T1w", "T1w")]
    assert float(rows[2]["after_p50"]) == pytest.approx(0.5 * float(rows[2]["before_p50"]) + 0.25, abs=1e-3)


def test_group_records_skip_a_job_without_its_completion_marker(small_subject, small_grid, tmp_path):
    from bhd_app.pipeline.group import collect_results

    ds, out = _small_bids_with_derivatives(tmp_path, small_subject, small_grid, complete=False)
    assert [r["job"] for r in collect_results(ds, out)] == ["sub-01_T1w", "sub-02_T1w"]


def _record(scanner: str, values: np.ndarray) -> dict:
    return {"scanner": scanner, "before": values, "after": np.clip(values, 0.4, 0.6)}


def test_classifier_line_says_why_the_classifier_did_not_run():
    """One scanner (a single-site study): no 'accuracy nan (chance 1.00)', but what the classifier needs."""
    one_scanner = site_effects.site_classifier(np.zeros((4, 2)), ["a"] * 4) | {"condition": "before"}
    line = classifier_line(one_scanner)
    assert "nan" not in line and "not run (4 image(s), 1 scanner(s)" in line
    rng = np.random.default_rng(0)
    two = site_effects.site_classifier(rng.normal(0, 1, (6, 2)), ["a", "b"] * 3, permutations=5)
    assert classifier_line(two | {"condition": "after"}).startswith("site classifier on after: accuracy ")


def test_site_separability_is_the_mean_pairwise_w1_between_scanners():
    from bhd_app.pipeline.group import site_separability

    base = np.random.default_rng(0).uniform(0.2, 0.8, 20000).astype(np.float32)
    # Shifted copies: the Wasserstein-1 distance of two scanners is their shift; two images of scanner a pool.
    records = [_record("a", base), _record("a", base), _record("b", base + 0.1), _record("c", base + 0.3)]
    assert site_separability(records, "before") == pytest.approx((0.1 + 0.3 + 0.2) / 3, abs=1e-6)
    assert site_separability(records[:2], "before") != site_separability(records[:2], "before")  # one scanner: NaN
    assert site_separability(records, "after") < site_separability(records, "before")


def test_crash_files_are_read_once_for_the_job_and_the_group(tmp_path):
    from bhd_app.pipeline.crashes import read_crashes
    from bhd_app.pipeline.group import failed_jobs

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "crash-20260101-000000-bhd-harmonize-1.txt").write_text(
        "Node: bhd_participant_wf.sub_01_ses_a_T1w.harmonize\nTraceback ...\n\nRuntimeError: out of memory\n")
    (logs / "crash-20260101-000001-sub_02_T1w-input_check.txt").write_text(
        "Node: sub_02_T1w.input_check\nInput file: x\n\nBHDInputError: x: not a NIfTI file; convert it\n")
    crashes = read_crashes(logs)
    assert [c.node for c in crashes] == ["sub_01_ses_a_T1w.harmonize", "sub_02_T1w.input_check"]
    assert crashes[0].is_of("sub-01_ses-a_T1w") and not crashes[0].is_of("sub-01_ses-a_T2w")
    assert crashes[1].is_of("sub-02_T1w") and not crashes[1].is_of("sub-01_ses-a_T1w")
    assert crashes[0].message.startswith("RuntimeError: out of memory (crash file: ")
    assert crashes[1].message == "x: not a NIfTI file; convert it"
    assert failed_jobs(tmp_path) == [f"{c.node} {c.last_line} ({c.path.name})" for c in crashes]
    assert "RuntimeError: out of memory" in failed_jobs(tmp_path)[0]


def test_the_group_level_takes_each_contrasts_target_histogram_from_the_model_its_jobs_used():
    """Without --model each contrast's default model (config.DEFAULT_MODELS); one --model for jobs that used two
    models is a one-line error naming the contrast."""
    from bhd_app.config import default_model_path
    from bhd_app.errors import BHDInputError
    from bhd_app.modelfile import load_model
    from bhd_app.pipeline.group import _target_quantiles

    t1w, t2w = load_model(default_model_path("T1w")), load_model(default_model_path("T2w"))
    records = [{"suffix": "T1w", "model_sha256": t1w.sha256}, {"suffix": "T2w", "model_sha256": t2w.sha256}]
    quantiles = _target_quantiles(records, None)
    np.testing.assert_array_equal(quantiles["T1w"], t1w.target_quantiles)
    np.testing.assert_array_equal(quantiles["T2w"], t2w.target_quantiles)
    with pytest.raises(BHDInputError, match="T2w jobs used model sha256"):
        _target_quantiles(records, default_model_path("T1w"))
