"""Writing one job's BIDS derivatives: names, sidecars, atomic commit.

All files of a job are first written under temporary names next to their final
place, then renamed; the harmonized image's sidecar is renamed last and marks
the job complete (``job_is_complete``), so an interrupted run leaves nothing
that a re-run would take for a finished job.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .. import __version__
from .bids import Job, bids_uri, derivative_path
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


def output_paths(out_dir: Path, job: Job) -> dict[str, Path]:
    """Every file a job writes (without sidecars), by role."""
    grid = {"space": TEMPLATE_SPACE, "res": RESOLUTION_LABEL}
    return {
        "preproc": derivative_path(out_dir, job, **grid, desc="preproc", suffix=job.suffix, extension=".nii.gz"),
        "mask": derivative_path(out_dir, job, **grid, desc="brain", suffix="mask", extension=".nii.gz"),
        "edges": derivative_path(out_dir, job, **grid, desc="edges", suffix="mask", extension=".nii.gz"),
        "xfm": derivative_path(out_dir, job, from_=job.suffix, to=TEMPLATE_SPACE, mode="image", suffix="xfm",
                               extension=".mat"),
        "harmonized": derivative_path(out_dir, job, **grid, desc="harmonized", suffix="T1w", extension=".nii.gz"),
        "native": derivative_path(out_dir, job, desc="harmonized", suffix="T1w", extension=".nii.gz"),
        "native_mask": derivative_path(out_dir, job, desc="brain", suffix="mask", extension=".nii.gz"),
    }


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name.replace(".nii.gz", ".json"))


def job_is_complete(out_dir: Path, job: Job) -> bool:
    """True when every output and sidecar of the job exists (the completion marker is written last)."""
    paths = output_paths(out_dir, job)
    needed = list(paths.values()) + [_sidecar(p) for k, p in paths.items() if k != "xfm"]
    return all(p.exists() for p in needed)


def uncertainty_path(out_dir: Path, job: Job) -> Path:
    """The uncertainty map's name (written only with ``samples`` > 1, so not one of ``output_paths``)."""
    return derivative_path(out_dir, job, space=TEMPLATE_SPACE, res=RESOLUTION_LABEL, desc="uncertainty",
                           suffix="T1w", extension=".nii.gz")


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


def job_from_json(text: str) -> Job:
    d = json.loads(text)
    return Job(d["subject"], d["session"], d["suffix"], Path(d["path"]), d["entities"], d["metadata"])


def write_job_derivatives(job_json: str, out_dir: str, bids_dir: str, settings: dict, preproc_file: str,
                          mask_file: str, xfm_file: str, preproc_info: str, harmonized_file: str,
                          generated_file: str, edges_file: str, harmonization_info: str, native_file: str,
                          native_mask_file: str, uncertainty_file: str = "") -> str:
    """Copy a job's results into the derivatives dataset with their sidecars and the job's HTML report.

    With several averaged draws, ``uncertainty_file`` (their per-voxel standard deviation) is written too.
    Returns the harmonized image's path.
    """
    job = job_from_json(job_json)
    out_dir = Path(out_dir)
    paths = output_paths(out_dir, job)
    if uncertainty_file:
        paths["uncertainty"] = uncertainty_path(out_dir, job)
    pre = json.loads(Path(preproc_info).read_text())
    har = json.loads(Path(harmonization_info).read_text())
    source = bids_uri(job.path, bids_dir)
    grid_fields = {"SpatialReference": SPATIAL_REFERENCE, "Resolution": {RESOLUTION_LABEL: RESOLUTION_TEXT},
                   "SkullStripped": True}
    common = {"PipelineSoftware": software_versions()}
    harmonization = {k: v for k, v in settings.items() if k not in ("model", "model_sha256")}
    harmonization.update(ModelFile=Path(har["model_file"]).name if har["model_file"] else None,
                         ModelSHA256=har["model_sha256"],
                         Device=har["device"], RefinementHistory=har["refinement_history"])
    if "ssimh_cutoff" in har:  # DCT coefficients per axis swapped with the target average
        harmonization["SSIMHCutoff"] = har["ssimh_cutoff"]
    contents = {
        "preproc": (preproc_file, {**grid_fields, **common, "Sources": [source],
                                   "Description": "Bias-corrected, brain-extracted, affinely registered and "
                                                  "1st-99th percentile normalized image (bhd preprocessing)",
                                   "Preprocessing": pre["settings"], "TimingsSeconds": pre["timings"]}),
        "mask": (mask_file, {**grid_fields, **common, "Sources": [source], "Type": "Brain",
                             "Description": "Brain mask on the harmonization grid"}),
        "edges": (edges_file, {**grid_fields, **common, "Type": "ROI",
                               "Sources": [bids_uri(paths["preproc"], out_dir)],
                               "Description": "3D Canny edge map with the subject-level threshold giving 8% edge "
                                              "voxels (BlindHarmonyDiff section 3.2)"}),
        "xfm": (xfm_file, None),
        "harmonized": (harmonized_file, {**grid_fields, **common, "Sources": [source],
                                         "Description": f"{job.suffix} harmonized to the target domain "
                                                        f"of the model (T1w contrast)",
                                         "Harmonization": harmonization}),
        "native": (native_file, {**common, "SkullStripped": True, "Sources": [source],
                                 "Description": "Harmonized image resampled back onto the input's native grid",
                                 "Harmonization": harmonization}),
        "native_mask": (native_mask_file, {**common, "Sources": [source], "Type": "Brain",
                                           "Description": "Brain mask on the input's native grid (the brain "
                                                          "extraction of bhd preprocessing)"}),
    }
    if uncertainty_file:
        contents["uncertainty"] = (uncertainty_file, {
            **grid_fields, **common, "Sources": [bids_uri(paths["preproc"], out_dir)],
            "Description": f"Per-voxel standard deviation over the {settings.get('samples')} edge-to-image draws "
                           "averaged before the refinement (normalized intensity units, 0 outside the brain): "
                           "where the model is unsure of the harmonized intensity",
            "Units": "arbitrary", "Harmonization": harmonization})
    staged: list[tuple[Path, Path]] = []
    report = out_dir / f"{job.name}.html"
    report_tmp = report.with_name(f".{report.name}.tmp")
    report_tmp.write_text(_report(job, preproc_file, mask_file, edges_file, generated_file, harmonized_file,
                                  {**pre["timings"], "harmonization": har["seconds"]}, harmonization,
                                  pre["settings"], uncertainty_file))
    staged.append((report_tmp, report))
    for role, (src, sidecar) in contents.items():
        final = paths[role]
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp")
        shutil.copyfile(src, tmp)
        staged.append((tmp, final))
        if sidecar is not None:
            side = _sidecar(final)
            side_tmp = side.with_name(f".{side.name}.tmp")
            side_tmp.write_text(json.dumps(sidecar, indent=2, sort_keys=True, default=str) + "\n")
            staged.append((side_tmp, side))
    # The harmonized image's sidecar goes last: it marks the job complete.
    marker = _sidecar(paths["harmonized"])
    staged.sort(key=lambda pair: pair[1] == marker)
    for tmp, final in staged:
        os.replace(tmp, final)
    return str(paths["harmonized"])
