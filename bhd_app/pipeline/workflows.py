"""The participant level as nipype workflows: one small workflow per job (subject/session/image).

    preprocess -> harmonize -> to_native -> derivatives

Each node runs a plain function of this package in its own folder of the work
directory, so nipype caches finished nodes (a re-run resumes) and runs jobs in
parallel (MultiProc) or on a cluster scheduler (SLURM, SGE, PBS plugins).
The node functions import what they need inside their bodies, as nipype's
Function interface requires.
"""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.utility import Function
from nipype.pipeline import engine as pe

from ..config import BRAIN_EXTRACTION, DEVICE, T1W, HarmonizationSettings
from .bids import Job
from .preprocessing import step_settings


def save_nifti(array, affine, path: str, dtype: str = "float32") -> str:
    """Save an array as NIfTI with millimetre units and both qform and sform set (scanner-anatomical)."""
    import nibabel as nib
    import numpy as np

    img = nib.Nifti1Image(np.asarray(array).astype(dtype), affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)
    return path


def run_preprocessing(in_file: str, contrast: str, brain_extraction: str, seed: int, omp_nthreads: int,
                      step_settings: dict | None = None):
    """Node: preprocess one anatomical image onto the harmonization grid (section 4.1). ``step_settings``
    (preprocessing.step_settings()) is not read here: as a node input it makes nipype redo cached preprocessing
    when bhd's version or a step's settings change."""
    import json
    import os

    import nibabel as nib

    from bhd_app.pipeline.preprocessing import preprocess
    from bhd_app.pipeline.templates import harmonization_grid
    from bhd_app.pipeline.workflows import save_nifti

    cwd = os.getcwd()
    pre = preprocess(in_file, cwd, brain_extraction=brain_extraction, seed=seed, n_threads=omp_nthreads,
                     contrast=contrast)
    grid = harmonization_grid()
    preproc_file = os.path.join(cwd, "preproc.nii.gz")
    mask_file = os.path.join(cwd, "brain_mask.nii.gz")
    native_mask_file = os.path.join(cwd, "native_brain_mask.nii.gz")
    native_preproc_file = os.path.join(cwd, "native_preproc.nii.gz")
    save_nifti(pre.image, grid.affine, preproc_file)
    save_nifti(pre.brain_mask, grid.affine, mask_file, "uint8")
    nib.save(pre.native_brain_mask, native_mask_file)
    nib.save(pre.native_image, native_preproc_file)
    info_file = os.path.join(cwd, "preprocessing.json")
    with open(info_file, "w") as f:
        json.dump({"timings": pre.timings, "settings": pre.settings}, f, indent=2, default=str)
    return preproc_file, mask_file, str(pre.transform_path), native_mask_file, native_preproc_file, info_file


def run_harmonization(preproc_file: str, mask_file: str, settings: dict, device: str, omp_nthreads: int):
    """Node: harmonize the preprocessed image with the chosen method (bhd, histmatch, ssimh or none)."""
    import json
    import os
    import time

    import nibabel as nib
    import numpy as np
    import torch

    from bhd_app.config import HarmonizationSettings
    from bhd_app.method.baselines import SSIMH_CUTOFF
    from bhd_app.method.harmonize import apply_method
    from bhd_app.modelfile import load_model, select_device
    from bhd_app.pipeline.workflows import save_nifti

    torch.set_num_threads(max(int(omp_nthreads), 1))
    cwd = os.getcwd()
    img = nib.load(preproc_file)
    source = np.asarray(img.dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(mask_file).dataobj) > 0
    start = time.monotonic()
    method = settings["method"]
    model = load_model(settings.get("model"), select_device(device)) if method != "none" else None
    result = apply_method(model, source, mask, HarmonizationSettings.from_dict(settings))
    files = {"uncertainty": ""}  # written only when several draws were averaged
    for key, dtype in (("harmonized", "float32"), ("generated", "float32"), ("edge_map", "uint8"),
                       ("uncertainty", "float32")):
        if result.get(key) is not None:
            files[key] = os.path.join(cwd, f"{key}.nii.gz")
            save_nifti(result[key], img.affine, files[key], dtype)
    info = {"model_file": str(model.path) if model else None, "model_sha256": model.sha256 if model else None,
            "device": str(model.device) if model else "cpu",
            "refinement_history": [round(v, 5) for v in result["refinement_history"]],
            "seconds": round(time.monotonic() - start, 1)}
    if method == "ssimh":
        info["ssimh_cutoff"] = SSIMH_CUTOFF
    files["info"] = os.path.join(cwd, "harmonization.json")
    with open(files["info"], "w") as f:
        json.dump(info, f, indent=2)
    return files["harmonized"], files["generated"], files["edge_map"], files["info"], files["uncertainty"]


def run_to_native(grid_file: str, xfm_file: str, in_file: str, preproc_file: str, native_preproc_file: str,
                  native_mask_file: str, native: str):
    """Node: the harmonized image on the subject's native grid (``HarmonizationSettings.native``)."""
    import os

    import nibabel as nib
    import numpy as np

    from bhd_app.pipeline.preprocessing import carry_change_to_native, to_native

    out_file = os.path.join(os.getcwd(), "native.nii.gz")
    harmonized = np.asarray(nib.load(grid_file).dataobj, dtype=np.float32)
    if native == "change":
        source = np.asarray(nib.load(preproc_file).dataobj, dtype=np.float32)
        image = carry_change_to_native(harmonized, source, native_preproc_file, nib.load(native_mask_file),
                                       xfm_file)
    else:
        image = to_native(harmonized, xfm_file, in_file)
    nib.save(image, out_file)
    return out_file


def run_derivatives(job_json: str, out_dir: str, bids_dir: str, settings: dict, preproc_file: str,
                    mask_file: str, xfm_file: str, preproc_info: str, harmonized_file: str, generated_file: str,
                    edges_file: str, harmonization_info: str, native_file: str, native_mask_file: str,
                    uncertainty_file: str = ""):
    """Node: write this job's BIDS derivatives (atomically) and return the path of the main output."""
    import json
    from pathlib import Path

    from bhd_app.pipeline.bids import Job
    from bhd_app.pipeline.derivatives import write_job_derivatives

    files = {"preproc": preproc_file, "mask": mask_file, "xfm": xfm_file, "edges": edges_file,
             "generated": generated_file, "harmonized": harmonized_file, "native": native_file,
             "native_mask": native_mask_file}
    if uncertainty_file:
        files["uncertainty"] = uncertainty_file
    return str(write_job_derivatives(Job.from_json(job_json), Path(out_dir), Path(bids_dir), settings, files,
                                     json.loads(Path(preproc_info).read_text()),
                                     json.loads(Path(harmonization_info).read_text())))


def _node(function, inputs: list[str], outputs: list[str], name: str, **values) -> pe.Node:
    node = pe.Node(Function(input_names=inputs, output_names=outputs, function=function), name=name)
    for key, value in values.items():
        setattr(node.inputs, key, value)
    return node


def init_job_wf(job: Job, out_dir: Path, bids_dir: Path, settings: dict, device: str = DEVICE,
                omp_nthreads: int = 1) -> pe.Workflow:
    """The workflow of one job: preprocessing, harmonization, native-space image, derivatives.

    Example:
        >>> from bhd_app.pipeline.bids import Job
        >>> job = Job("01", "trio", "T1w", Path("sub-01_ses-trio_T1w.nii.gz"), {}, {})
        >>> wf = init_job_wf(job, Path("out"), Path("."), {"method": "none"})
        >>> sorted(wf.list_node_names())
        ['derivatives', 'harmonize', 'preprocess', 'to_native']
    """
    wf = pe.Workflow(name=job.name.replace("-", "_"))
    pre = _node(run_preprocessing, ["in_file", "contrast", "brain_extraction", "seed", "omp_nthreads", "step_settings"],
                ["preproc_file", "mask_file", "xfm_file", "native_mask_file", "native_preproc_file", "info_file"],
                "preprocess",
                in_file=str(job.path), contrast=job.suffix,
                brain_extraction=settings.get("brain_extraction", BRAIN_EXTRACTION),
                seed=settings.get("seed", T1W.seed), omp_nthreads=omp_nthreads, step_settings=step_settings())
    har = _node(run_harmonization, ["preproc_file", "mask_file", "settings", "device", "omp_nthreads"],
                ["harmonized_file", "generated_file", "edges_file", "info_file", "uncertainty_file"], "harmonize",
                settings=settings, device=device, omp_nthreads=omp_nthreads)
    nat = _node(run_to_native, ["grid_file", "xfm_file", "in_file", "preproc_file", "native_preproc_file",
                                "native_mask_file", "native"], ["out_file"], "to_native",
                in_file=str(job.path), native=HarmonizationSettings.from_dict(settings).native)
    out = _node(run_derivatives, ["job_json", "out_dir", "bids_dir", "settings", "preproc_file", "mask_file",
                                  "xfm_file", "preproc_info", "harmonized_file", "generated_file", "edges_file",
                                  "harmonization_info", "native_file", "native_mask_file", "uncertainty_file"],
                ["out_file"],
                "derivatives",
                job_json=job.to_json(), out_dir=str(out_dir), bids_dir=str(bids_dir), settings=settings)
    out.overwrite = True  # cheap, and it must follow the current code and output folder even when cached
    wf.connect([
        (pre, har, [("preproc_file", "preproc_file"), ("mask_file", "mask_file")]),
        (har, nat, [("harmonized_file", "grid_file")]),
        (pre, nat, [("xfm_file", "xfm_file"), ("preproc_file", "preproc_file"),
                    ("native_preproc_file", "native_preproc_file"), ("native_mask_file", "native_mask_file")]),
        (pre, out, [("preproc_file", "preproc_file"), ("mask_file", "mask_file"), ("xfm_file", "xfm_file"),
                    ("info_file", "preproc_info"), ("native_mask_file", "native_mask_file")]),
        (har, out, [("harmonized_file", "harmonized_file"), ("generated_file", "generated_file"),
                    ("edges_file", "edges_file"), ("uncertainty_file", "uncertainty_file"),
                    ("info_file", "harmonization_info")]),
        (nat, out, [("out_file", "native_file")]),
    ])
    return wf


def init_participant_wf(jobs: list[Job], out_dir: Path, bids_dir: Path, work_dir: Path,
                        settings_by_suffix: dict[str, dict], device: str = DEVICE,
                        omp_nthreads: int = 1) -> pe.Workflow:
    """All jobs side by side in one workflow (they share nothing, so they run in parallel).

    ``settings_by_suffix`` holds the harmonization settings of T1w and of T2w jobs.
    """
    wf = pe.Workflow(name="bhd_participant_wf", base_dir=str(work_dir))
    for job in jobs:
        wf.add_nodes([init_job_wf(job, out_dir, bids_dir, settings_by_suffix[job.suffix], device, omp_nthreads)])
    return wf
