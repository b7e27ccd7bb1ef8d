"""One job's BIDS derivatives: their names (``output_paths``), sidecars and report.

Every file is written under a temporary name next to its final place, then
renamed; the harmonized image's sidecar comes last and marks the job complete
(``job_is_complete``), so an interrupted run leaves nothing that a re-run would
take for a finished job.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .. import __version__
from ..config import SHIPPED_MODELS, shipped_model_path
from .bids import Job, atomic_write_texts, bids_uri, derivative_path, sidecar_path, write_sidecars
from .templates import GRID_SPACING, RESOLUTION_LABEL, RESOLUTION_TEXT, TEMPLATE_SPACE

SPATIAL_REFERENCE = {TEMPLATE_SPACE: "MNI152 2009a nonlinear symmetric template as shipped by nilearn "
                                      "(mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz)"}


def software_versions() -> dict[str, str]:
    out = {"bhd": __version__}
    for pkg in ("torch", "antspyx", "nibabel", "numpy", "scipy", "torchdiffeq", "nipype", "pybids"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _card(model_file: Path) -> dict:
    """The model card beside a model file, or {} when it is missing or unreadable."""
    try:
        card = json.loads(Path(model_file).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def model_identity(model_file: str | Path | None, sha256: str | None = None) -> dict:
    """What the sidecars, the report and the methods text say about a model file, from its card.

    ``name``: the shipped model's name (``config.SHIPPED_MODELS``) when the file is a shipped model (its path, or a
    copy with a shipped model's sha256), else the file name; ``target_domain``, ``credit`` and ``license`` as its
    card states them (None where it does not); ``grid_factor``: the model's grid (1: the 1.2 mm harmonization
    grid, 2: 2.4 mm); ``{}`` without a model file.
    """
    if not model_file:
        return {}
    path = Path(model_file)
    card = _card(path)
    sha256 = sha256 or card.get("sha256")
    name = path.name
    for shipped in SHIPPED_MODELS:
        shipped_path = shipped_model_path(shipped)
        same_file = path.resolve() == shipped_path.resolve()
        if same_file or (sha256 and sha256 == _card(shipped_path).get("sha256")):
            name = shipped
            break
    data = card.get("training_data") if isinstance(card.get("training_data"), dict) else {}
    return {"name": name, "file": path.name, "shipped": name in SHIPPED_MODELS,
            "target_domain": card.get("target_domain"), "credit": card.get("credit"),
            "license": data.get("license") or card.get("license"),
            "grid_factor": int((card.get("training") or {}).get("grid_factor", 1) or 1)}


def model_grid_text(grid_factor: int) -> str:
    """The grid a model draws on, in words: 1, the harmonization grid; 2, its 2x2x2 blocks."""
    spacing = " x ".join(f"{s * grid_factor:g}" for s in GRID_SPACING)
    if grid_factor == 1:
        return f"the {spacing} mm harmonization grid"
    return (f"a {spacing} mm grid, the 1.2 mm harmonization grid averaged over {grid_factor}x{grid_factor}x"
            f"{grid_factor} blocks")


def output_paths(out_dir: Path, job: Job, *, uncertainty: bool = False) -> dict[str, Path]:
    """Every file a job writes, by role: the one place their names are made (``bids.derivative_path``).

    Sidecars are ``bids.sidecar_path`` of their image. The uncertainty map (``uncertainty``) exists only
    with several averaged draws; the HTML report is named after the input file.
    """
    out_dir = Path(out_dir)
    grid = {"space": TEMPLATE_SPACE, "res": RESOLUTION_LABEL}
    paths = {
        "preproc": derivative_path(out_dir, job, **grid, desc="preproc", suffix=job.suffix, extension=".nii.gz"),
        "mask": derivative_path(out_dir, job, **grid, desc="brain", suffix="mask", extension=".nii.gz"),
        "edges": derivative_path(out_dir, job, **grid, desc="edges", suffix="mask", extension=".nii.gz"),
        "xfm": derivative_path(out_dir, job, from_=job.suffix, to=TEMPLATE_SPACE, mode="image", suffix="xfm",
                               extension=".mat"),
        "harmonized": derivative_path(out_dir, job, **grid, desc="harmonized", suffix="T1w", extension=".nii.gz"),
        "native": derivative_path(out_dir, job, desc="harmonized", suffix="T1w", extension=".nii.gz"),
        "native_mask": derivative_path(out_dir, job, desc="brain", suffix="mask", extension=".nii.gz"),
        "report": out_dir / f"{job.name}.html",
    }
    if uncertainty:
        paths["uncertainty"] = derivative_path(out_dir, job, **grid, desc="uncertainty", suffix="T1w",
                                               extension=".nii.gz")
    return paths


# The files that make a job complete; the harmonized image's sidecar is written last.
_COMPLETE = ("preproc", "mask", "edges", "xfm", "harmonized", "native", "native_mask")
_WITHOUT_SIDECAR = ("xfm",)


def job_is_complete(out_dir: Path, job: Job) -> bool:
    """True when every output and sidecar of the job exists (the completion marker is written last)."""
    paths = output_paths(out_dir, job)
    needed = [paths[r] for r in _COMPLETE] + [sidecar_path(paths[r]) for r in _COMPLETE if r not in _WITHOUT_SIDECAR]
    return all(p.exists() for p in needed)


def _target_quantiles(model_file: str | None):
    """The model's target histogram (quantiles of the target domain's brain intensities), or None without a
    loadable model."""
    from ..errors import BHDInputError
    from ..modelfile import load_model

    if not model_file:
        return None
    try:
        return load_model(Path(model_file), "cpu").target_quantiles
    except BHDInputError:
        return None


def _report(job: Job, preproc_file: str, mask_file: str, edges_file: str, harmonized_file: str, timings: dict,
            harmonization: dict, preprocessing: dict, model_file: str | None, uncertainty_file: str = "") -> str:
    import nibabel as nib
    import numpy as np

    from ..method.metrics import ncc
    from .reports import participant_report_html
    from .templates import template_on_grid

    def load(path):
        return np.asarray(nib.load(path).dataobj, dtype=np.float32)

    preproc, mask, harmonized = load(preproc_file), load(mask_file), load(harmonized_file)
    # The input as stored, turned to RAS for display (axis 0: left to right, 1: back to front, 2: down to up).
    native = nib.as_closest_canonical(nib.load(job.path))
    identity = model_identity(model_file)  # the model whose target histogram the verdict measures against
    history = harmonization.get("RefinementHistory") or []
    facts = {"input": job.path.name, "scanner": " ".join(str(job.metadata.get(k, "")) for k in
                                                         ("Manufacturer", "ManufacturersModelName",
                                                          "MagneticFieldStrength")).strip() or "not stated",
             "NCC(harmonized, preprocessed) in the brain": round(ncc(harmonized, preproc, mask), 4),
             "brain volume (mL, template space)": round(float(mask.sum()) * 1.2 * 1.2 * 1.25 / 1000, 1),
             "brain extraction": preprocessing["brain_extraction"].get("method"),
             "normalization (input intensities mapped to 0 and 1)":
                 " and ".join(f"{float(preprocessing['normalization'].get(k, np.nan)):.2f}" for k in ("low", "high")),
             **{f"time: {k} (s)": round(float(v), 1) for k, v in timings.items()},
             **{f"setting: {k}": v for k, v in harmonization.items() if k != "RefinementHistory"},
             **({"refinement: similarity per iteration": " -> ".join(f"{v:.4f}" for v in history)} if history else {}),
             "software": ", ".join(f"{k} {v}" for k, v in software_versions().items())}
    return participant_report_html(
        f"bhd: {job.name}", np.asarray(native.dataobj, dtype=np.float32), preproc, mask, template_on_grid(),
        load(edges_file), harmonized, facts, load(uncertainty_file) if uncertainty_file else None,
        nib.load(preproc_file).affine, target_quantiles=_target_quantiles(model_file),
        model_label=identity.get("name", ""), native_label=job.path.name,
        native_zooms=tuple(float(z) for z in native.header.get_zooms()[:3]), contrast=job.suffix)


def write_job_derivatives(job: Job, out_dir: Path, bids_dir: Path, settings: dict, files: dict[str, str],
                          preprocessing: dict, harmonization: dict) -> Path:
    """Copy a job's results into the derivatives dataset with their sidecars and the job's HTML report.

    ``files`` maps the roles of ``output_paths`` to the files the workflow made (``generated``, the network's
    draw before the refinement, may be among them: it is not kept); ``preprocessing`` and ``harmonization`` are what
    those steps recorded (settings, timings, model, device). With several averaged draws,
    ``files["uncertainty"]`` (their per-voxel standard deviation) is written too. Images go first,
    then the sidecars, the harmonized image's last. Returns the harmonized image's path.
    """
    out_dir = Path(out_dir)
    paths = output_paths(out_dir, job, uncertainty=bool(files.get("uncertainty")))
    pre, har = preprocessing, harmonization
    source = bids_uri(job.path, bids_dir)
    grid_fields = {"SpatialReference": SPATIAL_REFERENCE, "Resolution": {RESOLUTION_LABEL: RESOLUTION_TEXT},
                   "SkullStripped": True}
    common = {"PipelineSoftware": software_versions()}
    recorded = {k: v for k, v in settings.items() if k not in ("model", "model_sha256")}
    identity = model_identity(har["model_file"], har["model_sha256"])
    recorded.update(Model=identity.get("name"), ModelFile=identity.get("file"), ModelSHA256=har["model_sha256"],
                    ModelTargetDomain=(identity.get("target_domain") or "not stated in the model card")
                    if identity else None,
                    Device=har["device"], RefinementHistory=har["refinement_history"])
    if "ssimh_cutoff" in har:  # DCT coefficients per axis swapped with the target average
        recorded["SSIMHCutoff"] = har["ssimh_cutoff"]
    sidecars = {
        "preproc": {**grid_fields, **common, "Sources": [source],
                    "Description": "Bias-corrected, brain-extracted, affinely registered and "
                                   "1st-99th percentile normalized image (bhd preprocessing)",
                    "Preprocessing": pre["settings"], "TimingsSeconds": pre["timings"]},
        "mask": {**grid_fields, **common, "Sources": [source], "Type": "Brain",
                 "Description": "Brain mask on the harmonization grid"},
        "edges": {**grid_fields, **common, "Type": "ROI", "Sources": [bids_uri(paths["preproc"], out_dir)],
                  "Description": "3D Canny edge map with the subject-level threshold giving 8% edge "
                                 "voxels (BlindHarmonyDiff section 3.2)"},
        "harmonized": {**grid_fields, **common, "Sources": [source],
                       "Description": f"{job.suffix} harmonized to the target domain of the model (T1w contrast)",
                       "Harmonization": recorded},
        "native": {**common, "SkullStripped": True, "Sources": [source], "SpatialReference": source,
                   "Description": "Harmonized image resampled back onto the input's native grid",
                   "Harmonization": recorded},
        "native_mask": {**common, "Sources": [source], "SpatialReference": source, "Type": "Brain",
                        "Description": "Brain mask on the input's native grid (the brain extraction of bhd "
                                       "preprocessing)"},
    }
    if "uncertainty" in paths:
        sidecars["uncertainty"] = {
            **grid_fields, **common, "Sources": [bids_uri(paths["preproc"], out_dir)],
            "Description": f"Per-voxel standard deviation over the {settings.get('samples')} edge-to-image draws "
                           "averaged before the refinement (normalized intensity units, 0 outside the brain): "
                           "where the model is unsure of the harmonized intensity",
            "Units": "arbitrary", "Harmonization": recorded}
    report = _report(job, files["preproc"], files["mask"], files["edges"], files["harmonized"],
                     {**pre["timings"], "harmonization": har["seconds"]}, recorded, pre["settings"],
                     har["model_file"] or settings.get("model"), files.get("uncertainty", ""))
    images = [r for r in paths if r != "report"]
    staged = []
    try:
        for role in images:
            final = paths[role]
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".{final.name}.tmp")
            staged.append((tmp, final))
            shutil.copyfile(files[role], tmp)
    except OSError:  # a full or read-only disk: no half-written image stays behind
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in staged:
        os.replace(tmp, final)
    atomic_write_texts({paths["report"]: report})
    write_sidecars({paths[r]: fields for r, fields in sidecars.items() if r != "harmonized"})
    write_sidecars({paths["harmonized"]: sidecars["harmonized"]})  # last: marks the job complete
    return paths["harmonized"]


# ------------------------------------------------------------------------------------- the derivatives' README

# What each role of ``output_paths`` holds, in the README's words.
ROLE_WORDS = {
    "preproc": "the preprocessed image: N4-corrected, brain-extracted, affinely registered to the template and "
               "normalized to the 1st-99th percentiles in the brain (0-1 scale)",
    "mask": "the brain mask on the harmonization grid",
    "edges": "the 3D Canny edge map the model is conditioned on (8 % of voxels)",
    "harmonized": "the harmonized image on the template grid (T1w contrast of the model's target scanner)",
    "uncertainty": "only with several averaged draws (setting `samples` 2 or more): the per-voxel standard "
                   "deviation over the draws",
    "native": "the harmonized image on the input's own grid, at its resolution (setting `native`)",
    "native_mask": "the brain mask on the input's own grid",
    "xfm": "the ANTs affine transform from the input to the template grid",
    "report": "the job's HTML report: a verdict (distance to the target histogram before and after, the change in "
              "the brain, warning signs), the images, the settings and versions",
}
# The group level's files (``bhd-app ... group``): group_report.html and each table it writes.
GROUP_FILES = {
    "group_report.html": "the group report: a verdict table (before, the method that was run and histogram "
                         "matching, per measure), the figures and tables below",
    "group_bhd.tsv": "one row per image: scanner, contrast, method, brain intensity percentiles before and after",
    "group_volumes.tsv": "tissue volumes (CSF, GM, WM; mL) of every image, per version (before, the method, "
                         "histogram matching)",
    "group_scanner_means.tsv": "mean tissue volumes per scanner and version",
    "group_site_effects.tsv": "the scanner's effect on each tissue volume (ANOVA: eta-squared, partial "
                              "eta-squared given subject, p), per version",
    "group_classifier.tsv": "a cross-validated site classifier's accuracy against chance, per version",
    "group_traveling.tsv": "traveling subjects: agreement (PSNR, SSIM) and volume differences of the same "
                           "subject's images on two scanners, per version (empty without such subjects)",
    "group_age.tsv": "correlation of tissue volumes with age from participants.tsv, per version (empty without "
                     "usable ages)",
}
README_FIRST_LINES = "# bhd derivatives\n\nHarmonized anatomical images made by bhd"


def derivatives_readme(version: str = __version__) -> str:
    """The derivatives' README.md: every file bhd writes into the output folder, with the names that
    ``output_paths`` makes (for a T1w and a T2w input) and the group level's ``GROUP_FILES``."""
    def rows(suffix: str) -> list[str]:
        job = Job("X", "Y", suffix, Path(f"sub-X_ses-Y_{suffix}.nii.gz"), {}, {})
        paths = output_paths(Path("."), job, uncertainty=True)
        order = ("preproc", "mask", "edges", "harmonized", "uncertainty", "native", "native_mask", "xfm", "report")
        return [f"| `{paths[r].as_posix()}` | {ROLE_WORDS[r]} |" for r in order]

    group = "\n".join(f"| `{name}` | {words} |" for name, words in GROUP_FILES.items())
    return f"""{README_FIRST_LINES} {version}: BlindHarmonyDiff (Jeong H, Lee H, Chun SY, Lee J.
Efficient and robust 3D blind harmonization for large domain gaps. arXiv:2505.00133, 2025) as a BIDS App.
Every file bhd writes into this folder is listed here. The harmonization grid is the MNI152 2009a nonlinear
symmetric template (`MNI152NLin2009aSym`) at 1.2 x 1.2 x 1.25 mm (`res-1p2`).

## Each image (one job), participant level

For an input `sub-X/ses-Y/anat/sub-X_ses-Y_T1w.nii.gz` (without sessions: no `ses-Y`; other entities of the
input, such as `acq-` or `run-`, are kept):

| file | what |
|---|---|
{chr(10).join(rows("T1w"))}

Every image has a JSON sidecar beside it (same name, `.json`; the transform has none): its sources, space and
resolution, software versions and, for the harmonized images, every setting, the model (name, file, sha256 and
target scanner) and the device. The harmonized template-grid image's sidecar is written last: a job is complete
when it exists.

A T2w input (contrast conversion to the target's T1w contrast) carries its contrast in `desc` where the suffix
does not name it:

| file | what |
|---|---|
{chr(10).join(rows("T2w"))}

## The whole dataset

| file | what |
|---|---|
| `dataset_description.json` | the derivatives' BIDS description (`GeneratedBy`: bhd, its version, the container) |
| `.bidsignore` | the files above that BIDS does not define (reports, transforms, logs, group files) |
| `README.md` | this file |
| `logs/CITATION.md` | the methods paragraph of the participant level's last run: the steps, the model (its target scanner, grid and sha256), every setting, the software versions and the references |
| `logs/CITATION.bib` | the references of `logs/CITATION.md` as BibTeX |
| `logs/crash-*.txt` | one crash file per failed step of a job (nipype's) or per input refused before any work (`crash-*-input_check.txt`); the group report lists them |

## Group level (`bhd-app BIDS_DIR OUTPUT_DIR group`)

| file | what |
|---|---|
{group}
"""


def write_derivatives_readme(out_dir: Path, version: str = __version__) -> Path | None:
    """Write ``README.md`` into the derivatives (``derivatives_readme``), unless a README that bhd did not write
    is there; returns its path, or None when it was left alone."""
    path = Path(out_dir) / "README.md"
    text = derivatives_readme(version)
    if path.exists():
        old = path.read_text(encoding="utf-8", errors="replace")
        if old == text or not old.startswith(README_FIRST_LINES):
            return path if old == text else None
    atomic_write_texts({path: text})
    return path
