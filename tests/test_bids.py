"""Tests of bhd_app.pipeline.bids on small real BIDS datasets.

The images are real heads from the IXI dataset (Hammersmith Hospital, Philips 3T; CC BY-SA 3.0,
brain-development.org; see ../shared/data/IXI/SOURCE.md beside the repository), copied into datasets built in tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bhd_app.errors import BHDInputError
from bhd_app.pipeline import bids as B
from bhd_app.pipeline.templates import RESOLUTION_LABEL, RESOLUTION_TEXT, TEMPLATE_SPACE

IXI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "IXI"
HEADS = sorted(IXI.glob("IXI01[2-5]-HH-*-T1_ds.nii.gz"))
VALIDATOR = shutil.which("bids-validator-deno")
needs_validator = pytest.mark.skipif(
    VALIDATOR is None, reason="bids-validator-deno is not installed (pip install bids-validator-deno)")

if len(HEADS) != 4:
    pytest.skip(f"the IXI test images are missing from {IXI}", allow_module_level=True)


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)


def _image(root: Path, rel: str, head: int, sidecar: dict | None = None) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HEADS[head], path)
    if sidecar is not None:
        _write(path.with_name(path.name.replace(".nii.gz", ".json")), sidecar)
    return path


def _dataset(root: Path, files: dict[str, dict | None], description: dict | None = None) -> Path:
    _write(root / "dataset_description.json",
           description or {"Name": "IXI Hammersmith subset", "BIDSVersion": "1.10.0", "DatasetType": "raw",
                           "License": "CC BY-SA 3.0"})
    # Inherited by every T1w; file-level sidecars add to or override it.
    _write(root / "T1w.json", {"Manufacturer": "Philips", "MagneticFieldStrength": 3, "RepetitionTime": 0.0098})
    _write(root / "T2w.json", {"Manufacturer": "Philips", "MagneticFieldStrength": 3, "RepetitionTime": 5.7})
    for i, (rel, sidecar) in enumerate(files.items()):
        _image(root, rel, i % len(HEADS), sidecar)
    return root


SESSION_FILES = {
    "sub-01/ses-1/anat/sub-01_ses-1_run-01_T1w.nii.gz": {"ManufacturersModelName": "Intera"},
    "sub-01/ses-1/anat/sub-01_ses-1_run-02_T1w.nii.gz": {"ManufacturersModelName": "Intera"},
    "sub-01/ses-2/anat/sub-01_ses-2_acq-mprage_T1w.nii.gz": {"MagneticFieldStrength": 1.5},
    "sub-01/ses-2/anat/sub-01_ses-2_T2w.nii.gz": None,
    "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz": None,
    "sub-02/ses-1/anat/sub-02_ses-1_T2w.nii.gz": None,
}


@pytest.fixture(scope="module")
def session_ds(tmp_path_factory) -> Path:
    """Two subjects, two sessions, two runs, an acquisition label and T2w images."""
    return _dataset(tmp_path_factory.mktemp("ds") / "bids", SESSION_FILES)


@pytest.fixture(scope="module")
def session_layout(session_ds):
    return B.load_layout(session_ds)


@pytest.fixture()
def flat_ds(tmp_path) -> Path:
    """Two subjects without sessions."""
    return _dataset(tmp_path / "flat", {"sub-11/anat/sub-11_T1w.nii.gz": None,
                                        "sub-12/anat/sub-12_T1w.nii.gz": None})


def _names(jobs) -> list[str]:
    return [job.path.name for job in jobs]


# ----------------------------------------------------------------------------- labels and layout


def test_normalize_label():
    assert B.normalize_label("sub-01", "sub") == "01"
    assert B.normalize_label("01", "sub") == "01"
    assert B.normalize_label(" ses-pre ", "ses") == "pre"
    for bad in ("sub-0_1", "01/..", "", "sub-"):
        with pytest.raises(BHDInputError, match="--participant-label"):
            B.normalize_label(bad, "sub")
    with pytest.raises(BHDInputError, match="--session-label"):
        B.normalize_label("ses-a b", "ses")


def test_not_a_bids_dataset(tmp_path, session_ds):
    with pytest.raises(BHDInputError, match=r"not a BIDS dataset \(no dataset_description.json\)") as err:
        B.load_layout(tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(BHDInputError, match=f"did you mean {session_ds}"):
        B.load_layout(session_ds / "sub-01")
    with pytest.raises(BHDInputError, match="no such directory"):
        B.load_layout(tmp_path / "missing")
    _write(tmp_path / "dataset_description.json", '{"Name": "x",')
    with pytest.raises(BHDInputError, match="invalid JSON"):
        B.load_layout(tmp_path)
    _write(tmp_path / "dataset_description.json", {"Name": "x"})
    with pytest.raises(BHDInputError, match="'BIDSVersion' field missing"):
        B.load_layout(tmp_path, validate=True)


def test_pybids_validation(session_ds):
    layout = B.load_layout(session_ds, validate=True)
    assert len(B.collect_jobs(layout, suffixes=("T1w", "T2w"))) == 6


# ----------------------------------------------------------------------------- job discovery


def test_jobs_sessions_runs_and_metadata(session_layout):
    jobs = B.collect_jobs(session_layout)
    assert _names(jobs) == ["sub-01_ses-1_run-01_T1w.nii.gz", "sub-01_ses-1_run-02_T1w.nii.gz",
                            "sub-01_ses-2_acq-mprage_T1w.nii.gz", "sub-02_ses-1_T1w.nii.gz"]
    first = jobs[0]
    assert (first.subject, first.session, first.suffix, first.name) == ("01", "1", "T1w", "sub-01_ses-1_run-01_T1w")
    assert str(first.entities["run"]) == "01"
    # inherited from the top-level T1w.json, plus the file's own sidecar
    assert first.metadata["Manufacturer"] == "Philips"
    assert first.metadata["MagneticFieldStrength"] == 3
    assert first.metadata["ManufacturersModelName"] == "Intera"
    assert jobs[2].entities["acquisition"] == "mprage"
    assert jobs[2].metadata["MagneticFieldStrength"] == 1.5  # the file's sidecar wins
    assert jobs[3].metadata == {"Manufacturer": "Philips", "MagneticFieldStrength": 3, "RepetitionTime": 0.0098}


def test_participant_labels(session_layout):
    with_prefix = B.collect_jobs(session_layout, participant_labels=["sub-02"])
    assert _names(with_prefix) == ["sub-02_ses-1_T1w.nii.gz"]
    assert B.collect_jobs(session_layout, participant_labels=["02"]) == with_prefix
    assert len(B.collect_jobs(session_layout, participant_labels=["01", "sub-02"])) == 4


def test_unknown_participant_lists_available(session_layout):
    with pytest.raises(BHDInputError, match=r"--participant-label 03: not in .*; available: 01, 02$"):
        B.collect_jobs(session_layout, participant_labels=["sub-01", "sub-03"])


def test_session_labels(session_layout, flat_ds):
    jobs = B.collect_jobs(session_layout, session_labels=["ses-2"])
    assert _names(jobs) == ["sub-01_ses-2_acq-mprage_T1w.nii.gz"]  # sub-02 has no ses-2: skipped
    with pytest.raises(BHDInputError, match=r"--session-label 3: .*available: 1, 2$"):
        B.collect_jobs(session_layout, session_labels=["3"])
    # the selected participants must have the session
    with pytest.raises(BHDInputError, match=r"--session-label 2: .* for the selected participants; available: 1$"):
        B.collect_jobs(session_layout, participant_labels=["02"], session_labels=["2"])
    with pytest.raises(BHDInputError, match="available: none"):
        B.collect_jobs(B.load_layout(flat_ds), session_labels=["1"])


def test_t2w_on_request(session_layout):
    assert all(job.suffix == "T1w" for job in B.collect_jobs(session_layout))
    jobs = B.collect_jobs(session_layout, suffixes=("T1w", "T2w"))
    t2w = [job for job in jobs if job.suffix == "T2w"]
    assert _names(t2w) == ["sub-01_ses-2_T2w.nii.gz", "sub-02_ses-1_T2w.nii.gz"]
    assert t2w[0].metadata["RepetitionTime"] == 5.7
    assert _names(jobs)[2:4] == ["sub-01_ses-2_acq-mprage_T1w.nii.gz", "sub-01_ses-2_T2w.nii.gz"]
    with pytest.raises(ValueError):
        B.collect_jobs(session_layout, suffixes=("FLAIR",))


def test_no_sessions(flat_ds, tmp_path):
    jobs = B.collect_jobs(B.load_layout(flat_ds))
    assert [(j.subject, j.session) for j in jobs] == [("11", None), ("12", None)]
    path = B.derivative_path(tmp_path, jobs[0], desc="preproc", suffix="T1w", extension=".nii.gz")
    assert path == tmp_path / "sub-11/anat/sub-11_desc-preproc_T1w.nii.gz"


def test_bids_filter_file(session_layout, tmp_path):
    def jobs_for(content, **kwargs):
        path = tmp_path / "filter.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return _names(B.collect_jobs(session_layout, bids_filters=B.load_bids_filters(path), **kwargs))

    assert jobs_for({"t1w": {"acquisition": "mprage"}}) == ["sub-01_ses-2_acq-mprage_T1w.nii.gz"]
    assert jobs_for({"T1w": {"run": 2}}) == ["sub-01_ses-1_run-02_T1w.nii.gz"]
    assert "sub-01_ses-2_acq-mprage_T1w.nii.gz" not in jobs_for({"t1w": {"acquisition": None}})
    assert jobs_for({"t1w": {"acquisition": "*"}}) == ["sub-01_ses-2_acq-mprage_T1w.nii.gz"]
    assert jobs_for({"t2w": {"session": "1"}}, suffixes=("T2w",)) == ["sub-02_ses-1_T2w.nii.gz"]
    with pytest.raises(BHDInputError, match="no T1w image matching the BIDS filters for participant.s. 02"):
        jobs_for({"t1w": {"acquisition": "mprage"}}, participant_labels=["02"])

    for content, message in [
        ('{"t1w": {"acquisition": "mprage"', "invalid JSON in --bids-filter-file"),
        ({"bold": {"task": "rest"}}, "unknown BIDS filter section 'bold'; allowed: t1w, t2w"),
        ({"t1w": {"acq": "mprage"}}, "use the pybids entity name 'acquisition'"),
        ({"t1w": {"subject": "01"}}, "use --participant-label"),
        ({"t1w": {"flavour": "x"}}, "not a BIDS entity"),
        ({"t1w": "mprage"}, "must be an object"),
        ({"t1w": {"run": {"x": 1}}}, "a string, number, null or a list"),
    ]:
        with pytest.raises(BHDInputError, match=message) as err:
            jobs_for(content)
        assert str(tmp_path / "filter.json") in str(err.value)
    with pytest.raises(BHDInputError, match="not found"):
        B.load_bids_filters(tmp_path / "nope.json")


def test_layout_database_reused_until_dataset_changes(tmp_path):
    bids_dir = _dataset(tmp_path / "bids", {"sub-01/anat/sub-01_T1w.nii.gz": None,
                                            "sub-01/func/sub-01_task-rest_bold.nii.gz": None})
    db_dir = tmp_path / "work" / "bids_db"
    layout = B.load_layout(bids_dir, database_dir=db_dir)
    assert len(B.collect_jobs(layout)) == 1
    assert layout.get(datatype="func") == []  # only anat/ is indexed
    (index,) = db_dir.glob("*/layout_index.sqlite")
    stamp = index.stat().st_mtime_ns, index.stat().st_ino
    _write(bids_dir / "derivatives" / "bhd" / "dataset_description.json", {})  # our own outputs
    assert len(B.collect_jobs(B.load_layout(bids_dir, database_dir=db_dir))) == 1
    assert (index.stat().st_mtime_ns, index.stat().st_ino) == stamp  # reused, not rebuilt
    _image(bids_dir, "sub-02/anat/sub-02_T1w.nii.gz", 1)
    assert len(B.collect_jobs(B.load_layout(bids_dir, database_dir=db_dir))) == 2
    assert [p.name for p in db_dir.iterdir()] == [index.parent.name]  # no temporary folders left


# ----------------------------------------------------------------------------- derivative names


def _job(session: str | None = "1", **entities) -> B.Job:
    entities = {"subject": "01", "session": session, "suffix": "T1w", **entities}
    return B.Job("01", session, "T1w", Path("/in/x_T1w.nii.gz"), entities, {})


@pytest.mark.parametrize("job, kwargs, expected", [
    (_job(), dict(space=TEMPLATE_SPACE, res=RESOLUTION_LABEL, desc="preproc", suffix="T1w", extension=".nii.gz"),
     "sub-01/ses-1/anat/sub-01_ses-1_space-MNI152NLin2009aSym_res-1p2_desc-preproc_T1w.nii.gz"),
    (_job(), dict(space=TEMPLATE_SPACE, res=RESOLUTION_LABEL, desc="brain", suffix="mask", extension="nii.gz"),
     "sub-01/ses-1/anat/sub-01_ses-1_space-MNI152NLin2009aSym_res-1p2_desc-brain_mask.nii.gz"),
    (_job(), dict(from_="T1w", to=TEMPLATE_SPACE, mode="image", suffix="xfm", extension=".mat"),
     "sub-01/ses-1/anat/sub-01_ses-1_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.mat"),
    (_job(None, acquisition="mprage", reconstruction="norm", run="02"),
     dict(desc="harmonized", space=TEMPLATE_SPACE, suffix="T1w", extension=".json"),
     "sub-01/anat/sub-01_acq-mprage_rec-norm_run-02_space-MNI152NLin2009aSym_desc-harmonized_T1w.json"),
    (_job(ceagent="gd", acquisition="fast", echo=1, part="mag", chunk=3),
     dict(space=TEMPLATE_SPACE, res="1p2", suffix="T1w", extension=".nii.gz"),
     "sub-01/ses-1/anat/sub-01_ses-1_acq-fast_ce-gd_echo-1_part-mag_space-MNI152NLin2009aSym_chunk-3_res-1p2_T1w.nii.gz"),
])
def test_derivative_path(tmp_path, job, kwargs, expected):
    assert B.derivative_path(tmp_path, job, **kwargs) == tmp_path / expected


def test_derivative_names_never_collide(session_layout, tmp_path):
    jobs = B.collect_jobs(session_layout, suffixes=("T1w", "T2w"))
    space = TEMPLATE_SPACE
    kinds = [dict(space=space, desc="preproc", suffix=None), dict(space=space, desc="brain", suffix="mask"),
             dict(space=space, desc="harmonized", suffix=None), dict(from_=None, to=space, mode="image", suffix="xfm")]
    paths = []
    for job in jobs:
        for kind in kinds:
            kind = {**kind, "suffix": kind["suffix"] or job.suffix}
            if "from_" in kind:
                kind["from_"] = job.suffix
            paths.append(B.derivative_path(tmp_path, job, extension=".nii.gz", **kind))
    assert len(set(paths)) == len(paths) == 4 * len(jobs)
    t2w = next(job for job in jobs if job.suffix == "T2w" and job.subject == "02")
    names = [p.name for p in paths if p.name.startswith("sub-02_ses-1_")]
    assert "sub-02_ses-1_space-MNI152NLin2009aSym_desc-brain_mask.nii.gz" in names  # from the T1w
    assert "sub-02_ses-1_space-MNI152NLin2009aSym_desc-brainT2w_mask.nii.gz" in names  # from the T2w
    assert "sub-02_ses-1_space-MNI152NLin2009aSym_desc-preproc_T2w.nii.gz" in names
    assert "sub-02_ses-1_from-T2w_to-MNI152NLin2009aSym_mode-image_xfm.nii.gz" in names
    figure = B.derivative_path(tmp_path, t2w, desc="harmonized", suffix="T2w", extension=".svg", datatype="figures")
    assert figure == tmp_path / "sub-02/figures/sub-02_ses-1_desc-harmonized_T2w.svg"


def test_derivative_path_keeps_run_padding_and_rejects_bad_labels(session_layout, tmp_path):
    job = B.collect_jobs(session_layout)[1]
    path = B.derivative_path(tmp_path, job, desc="preproc", suffix="T1w", extension=".nii.gz")
    assert path.name == "sub-01_ses-1_run-02_desc-preproc_T1w.nii.gz"
    for bad in (dict(desc="pre_proc"), dict(space="MNI-152")):
        with pytest.raises(ValueError):
            B.derivative_path(tmp_path, job, suffix="T1w", extension=".nii.gz", **bad)
    with pytest.raises(ValueError):
        B.derivative_path(tmp_path, job, suffix="T1w", extension=".nii gz")


# ----------------------------------------------------------------------------- writing


def test_write_sidecars(tmp_path):
    np = pytest.importorskip("numpy")
    image = tmp_path / "sub-01" / "anat" / "sub-01_desc-preproc_T1w.nii.gz"
    other = tmp_path / "sub-01" / "anat" / "sub-01_desc-brain_mask.nii.gz"
    sidecar, other_sidecar = B.write_sidecars({image: {"b": np.float32(1.5), "a": np.arange(2),
                                                       "SkullStripped": True}, other: {"Type": "Brain"}})
    assert sidecar == image.with_name("sub-01_desc-preproc_T1w.json") == B.sidecar_path(image)
    text = sidecar.read_text()
    assert json.loads(text) == {"SkullStripped": True, "a": [0, 1], "b": 1.5}
    assert list(json.loads(text)) == ["SkullStripped", "a", "b"]  # sorted keys
    assert B.write_sidecars({tmp_path / "x_T1w.nii": {}})[0].name == "x_T1w.json"
    with pytest.raises(ValueError):  # NaN is not JSON: neither sidecar is written
        B.write_sidecars({other: {"Type": "changed"}, image: {"a": float("nan")}})
    assert json.loads(sidecar.read_text())["b"] == 1.5  # the failed write left the old files intact
    assert json.loads(other_sidecar.read_text()) == {"Type": "Brain"}
    assert sorted(p.name for p in sidecar.parent.iterdir()) == sorted([sidecar.name, other_sidecar.name])


def test_dataset_description(tmp_path, session_ds, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.delenv(B.CONTAINER_TAG_ENV, raising=False)
    for var in ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        monkeypatch.delenv(var, raising=False)
    path = B.write_dataset_description(out, session_ds, "0.1.0")
    desc = json.loads(path.read_text())
    assert desc["DatasetType"] == "derivative" and desc["BIDSVersion"]
    assert desc["GeneratedBy"] == [{"Name": "bhd", "Version": "0.1.0"}]
    assert desc["SourceDatasets"] == [{"URL": session_ds.resolve().as_uri()}]
    assert desc["DatasetLinks"] == {"raw": session_ds.resolve().as_uri()}
    assert desc["License"] == "CC BY-SA 3.0"
    ignore = (out / ".bidsignore").read_text().splitlines()
    assert ignore == ["*_xfm.*", "*.html", "figures", "logs", "group_*"]

    def state():
        return [(p.read_bytes(), p.stat().st_ino) for p in (path, out / ".bidsignore")]

    before = state()
    B.write_dataset_description(out, session_ds, "0.1.0")
    assert state() == before  # idempotent: same content, files not even rewritten

    # another pipeline's entry is kept, ours is replaced; the container is recorded
    desc["GeneratedBy"].insert(0, {"Name": "fMRIPrep", "Version": "24.1.0"})
    path.write_text(json.dumps(desc))
    monkeypatch.setenv(B.CONTAINER_TAG_ENV, "bhd:0.2.0")
    desc = json.loads(B.write_dataset_description(out, session_ds, "0.2.0", code_url="https://x.org/bhd").read_text())
    assert desc["GeneratedBy"] == [
        {"Name": "fMRIPrep", "Version": "24.1.0"},
        {"Name": "bhd", "Version": "0.2.0", "CodeURL": "https://x.org/bhd",
         "Container": {"Type": "docker", "Tag": "bhd:0.2.0"}}]
    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/bhd_0.2.0.sif")
    monkeypatch.delenv(B.CONTAINER_TAG_ENV)
    assert B.detect_container() == {"Type": "apptainer", "Tag": "bhd_0.2.0.sif"}

    # a DOI in the input's description is cited instead of the local path
    doi_ds = tmp_path / "doi_ds"
    _write(doi_ds / "dataset_description.json",
           {"Name": "x", "BIDSVersion": "1.10.0", "DatasetDOI": "https://doi.org/10.18112/openneuro.ds000001.v1"})
    desc = json.loads(B.write_dataset_description(tmp_path / "out2", doi_ds, "0.1.0", container={}).read_text())
    assert desc["SourceDatasets"] == [{"DOI": "doi:10.18112/openneuro.ds000001.v1"}]
    assert "Container" not in desc["GeneratedBy"][0]


def _derivative_dataset(out: Path, bids_dir: Path, layout, skull_stripped: bool = True) -> list[B.Job]:
    """What the app writes: preproc image + mask + sidecars, a transform, a report, a figure, a log."""
    B.write_dataset_description(out, bids_dir, "0.1.0", container={})
    jobs = B.collect_jobs(layout, suffixes=("T1w", "T2w"))
    for job in jobs:
        common = {"Resolution": {RESOLUTION_LABEL: RESOLUTION_TEXT}, "SpatialReference": "https://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009",
                  "Sources": [B.bids_uri(job.path, bids_dir)]}
        if skull_stripped:
            common["SkullStripped"] = True
        space = dict(space=TEMPLATE_SPACE, res=RESOLUTION_LABEL)
        preproc = B.derivative_path(out, job, **space, desc="preproc", suffix=job.suffix, extension=".nii.gz")
        mask = B.derivative_path(out, job, **space, desc="brain", suffix="mask", extension=".nii.gz")
        for image in (preproc, mask):
            image.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(job.path, image)
        B.write_sidecars({preproc: {**common, "Description": "Skull-stripped, registered, intensity-normalized"},
                          mask: {**common, "Type": "Brain", "Description": "Brain mask"}})
        xfm = B.derivative_path(out, job, from_=job.suffix, to=TEMPLATE_SPACE, mode="image",
                                suffix="xfm", extension=".mat")
        xfm.write_bytes(b"\0" * 64)
        figure = B.derivative_path(out, job, desc="harmonized", suffix=job.suffix, extension=".svg",
                                   datatype="figures")
        _write(figure, "<svg/>")
    _write(out / "sub-01.html", "<html></html>")
    _write(out / "logs" / "bhd.log", "done\n")
    return jobs


def test_derivatives_indexed_by_pybids(tmp_path, session_ds):
    from bids import BIDSLayout

    out = tmp_path / "derivatives" / "bhd"
    jobs = _derivative_dataset(out, session_ds, B.load_layout(session_ds))
    assert len(jobs) == 6

    deriv = BIDSLayout(out, validate=False, is_derivative=True)
    preproc = deriv.get(desc="preproc", space=TEMPLATE_SPACE, res=RESOLUTION_LABEL, extension=".nii.gz",
                        return_type="file")
    assert sorted(Path(p).name for p in preproc) == [
        "sub-01_ses-1_run-01_space-MNI152NLin2009aSym_res-1p2_desc-preproc_T1w.nii.gz",
        "sub-01_ses-1_run-02_space-MNI152NLin2009aSym_res-1p2_desc-preproc_T1w.nii.gz",
        "sub-01_ses-2_acq-mprage_space-MNI152NLin2009aSym_res-1p2_desc-preproc_T1w.nii.gz",
        "sub-01_ses-2_space-MNI152NLin2009aSym_res-1p2_desc-preproc_T2w.nii.gz",
        "sub-02_ses-1_space-MNI152NLin2009aSym_res-1p2_desc-preproc_T1w.nii.gz",
        "sub-02_ses-1_space-MNI152NLin2009aSym_res-1p2_desc-preproc_T2w.nii.gz"]
    masks = deriv.get(subject="01", session="1", run=2, desc="brain", suffix="mask", extension=".nii.gz")
    assert len(masks) == 1
    assert masks[0].get_metadata()["Type"] == "Brain"
    xfms = deriv.get(suffix="xfm", to=TEMPLATE_SPACE, extension=".mat", return_type="file")
    assert len(xfms) == 6
    assert len(deriv.get(subject="02", suffix="mask", extension=".nii.gz")) == 2  # T1w's and T2w's

    raw = B.load_layout(session_ds)
    raw.add_derivatives(out)
    assert len(raw.get(scope="bhd", desc="preproc", suffix="T2w", extension=".nii.gz")) == 2


@needs_validator
def test_derivatives_pass_bids_validator(tmp_path, session_ds):
    out = tmp_path / "bhd"
    _derivative_dataset(out, session_ds, B.load_layout(session_ds))
    ok, summary = B.run_bids_validator(out)
    assert ok, summary
    assert "NOT_INCLUDED" not in summary  # the .bidsignore covers xfm, html, figures and logs

    ok, summary = B.run_bids_validator(session_ds)  # the input, as the app checks it
    assert ok, summary


@needs_validator
def test_bids_validator_reports_errors(tmp_path, session_ds):
    out = tmp_path / "bhd"
    _derivative_dataset(out, session_ds, B.load_layout(session_ds), skull_stripped=False)
    (out / ".bidsignore").unlink()
    ok, summary = B.run_bids_validator(out)
    assert not ok
    assert "ERROR SIDECAR_KEY_REQUIRED[SkullStripped]" in summary
    assert "ERROR NOT_INCLUDED" in summary
    ok, summary = B.run_bids_validator(out, ignore_codes=["SIDECAR_KEY_REQUIRED", "NOT_INCLUDED", "ALL_FILENAME_RULES_HAVE_ISSUES"])
    assert ok, summary
    with pytest.raises(RuntimeError, match="bids-validator-deno failed"):
        B.run_bids_validator(tmp_path / "missing")


def test_validator_missing(monkeypatch, tmp_path):
    """Neither on PATH nor beside the interpreter (where it is looked for too)."""
    from bhd_app.pipeline.bids import validator  # whose find_bids_validator reads sys.executable and sys.prefix

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(validator.sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setattr(validator.sys, "prefix", str(tmp_path))
    with pytest.raises(BHDInputError, match="pip install bids-validator-deno.*--skip-bids-validation"):
        B.run_bids_validator(tmp_path)


# ----------------------------------------------------------------------------- output directory


def test_check_output_dir(tmp_path, session_ds):
    with pytest.raises(BHDInputError, match="inside the input dataset"):
        B.check_output_dir(session_ds, session_ds, None)
    for bad in (session_ds / "out", session_ds / "sub-01" / "out", session_ds / "derivatives"):
        with pytest.raises(BHDInputError, match=f"{session_ds}/derivatives/bhd"):
            B.check_output_dir(session_ds, bad, None)
    inside = session_ds / "derivatives" / "bhd"
    B.check_output_dir(session_ds, inside, tmp_path / "work")  # allowed, and created
    assert inside.is_dir() and (tmp_path / "work").is_dir()
    shutil.rmtree(session_ds / "derivatives")

    with pytest.raises(BHDInputError, match="work directory is inside the input dataset"):
        B.check_output_dir(session_ds, tmp_path / "out", session_ds / "work")
    with pytest.raises(BHDInputError, match="work directory is inside the output dataset"):
        B.check_output_dir(session_ds, tmp_path / "out", tmp_path / "out" / "work")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(BHDInputError, match=f"{blocker}/out: cannot write to the output directory"):
        B.check_output_dir(session_ds, blocker / "out", None)
    link = tmp_path / "link"
    os.symlink(session_ds, link)  # a symlink into the input is still the input
    with pytest.raises(BHDInputError, match="inside the input dataset"):
        B.check_output_dir(session_ds, link / "out", None)
