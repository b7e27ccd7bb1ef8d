"""One job's BIDS derivatives: their names (``output_paths``), sidecars and report.

Every file is written under a temporary name next to its final place, then
renamed; the harmonized image's sidecar comes last and marks the job complete
(``job_is_complete``), so an interrupted run leaves nothing that a re-run would
take for a finished job.
"""

from __future__ import annotations

import os
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .. import __version__
from .bids import Job, atomic_write_texts, bids_uri, derivative_path, sidecar_path, write_sidecars
from .templates import RESOLUTION_LABEL, RESOLUTION_TEXT, TEMPLATE_SPACE

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


def _report(job: Job, preproc_file: str, mask_file: str, edges_file: str, generated_file: str,
            harmonized_file: str, timings: dict, harmonization: dict, preprocessing: dict,
            uncertainty_file: str = "") -> str:
    import nibabel as nib
    import numpy as np

    from ..evaluation.metrics import ncc
    from .reports import participant_report_html
    from .templates import template_on_grid

    def load(path):
        return np.asarray(nib.load(path).dataobj, dtype=np.float32)

    preproc, mask, harmonized = load(preproc_file), load(mask_file), load(harmonized_file)
    facts = {"input": job.path.name, "scanner": " ".join(str(job.metadata.get(k, "")) for k in
                                                         ("Manufacturer", "ManufacturersModelName",
                                                          "MagneticFieldStrength")),
             "NCC(harmonized, preprocessed) in the brain": round(ncc(harmonized, preproc, mask), 4),
             "brain volume (mL, template space)": round(float(mask.sum()) * 1.2 * 1.2 * 1.25 / 1000, 1),
             "brain extraction": preprocessing["brain_extraction"].get("method"),
             "normalization (input intensities mapped to 0 and 1)":
                 [round(float(preprocessing["normalization"].get(k, np.nan)), 2) for k in ("low", "high")],
             **{f"time: {k} (s)": round(float(v), 1) for k, v in timings.items()},
             **{f"setting: {k}": v for k, v in harmonization.items()},
             "software": software_versions()}
    return participant_report_html(f"bhd: {job.name}", load(job.path), preproc, mask, template_on_grid(),
                                   load(edges_file), load(generated_file), harmonized, facts,
                                   load(uncertainty_file) if uncertainty_file else None,
                                   nib.load(preproc_file).affine)


def write_job_derivatives(job: Job, out_dir: Path, bids_dir: Path, settings: dict, files: dict[str, str],
                          preprocessing: dict, harmonization: dict) -> Path:
    """Copy a job's results into the derivatives dataset with their sidecars and the job's HTML report.

    ``files`` maps the roles of ``output_paths`` (and ``generated``, the edge-to-image output the
    report shows) to the files the workflow made; ``preprocessing`` and ``harmonization`` are what
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
    recorded.update(ModelFile=Path(har["model_file"]).name if har["model_file"] else None,
                    ModelSHA256=har["model_sha256"],
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
    report = _report(job, files["preproc"], files["mask"], files["edges"], files["generated"], files["harmonized"],
                     {**pre["timings"], "harmonization": har["seconds"]}, recorded, pre["settings"],
                     files.get("uncertainty", ""))
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
