"""BIDS input and output: find the anatomical images to harmonize, name and describe the derivatives.

Inputs are indexed with pybids (anatomical folders only); the layout database can live in the
work directory so that re-runs skip indexing. Every derivative file name is built by
:func:`derivative_path`, in BIDS entity order, under ``sub-X/[ses-Y/]anat/``. Files that the
BIDS specification does not cover (transforms, HTML reports, figures, logs) are listed in the
output's ``.bidsignore`` so that the official validator accepts the derivative dataset.

The code is in three modules: :mod:`.inputs` (the :class:`Job`, labels, the pybids layout, BIDS filters and
:func:`collect_jobs`), :mod:`.outputs` (derivative names, atomic writes, JSON sidecars, the derivative
``dataset_description.json``, ``.bidsignore`` and README, output and work directory checks) and
:mod:`.validator` (finding and running ``bids-validator-deno``).
"""

from .inputs import (
    ANAT_EXTENSIONS,
    SUFFIXES,
    Job,
    collect_jobs,
    layout_database_dir,
    load_bids_filters,
    load_layout,
    normalize_label,
)
from .outputs import (
    BIDS_VERSION,
    BIDSIGNORE,
    CONTAINER_TAG_ENV,
    DATASET_NAME,
    DERIVATIVES_README,
    PIPELINE_NAME,
    atomic_write_texts,
    bids_uri,
    check_output_dir,
    derivative_path,
    detect_container,
    probe_writable,
    sidecar_path,
    write_dataset_description,
    write_sidecars,
)
from .validator import BIDSValidatorMissing, find_bids_validator, run_bids_validator

__all__ = [
    # inputs
    "ANAT_EXTENSIONS", "SUFFIXES", "Job", "collect_jobs", "layout_database_dir", "load_bids_filters", "load_layout",
    "normalize_label",
    # outputs
    "BIDS_VERSION", "BIDSIGNORE", "CONTAINER_TAG_ENV", "DATASET_NAME", "DERIVATIVES_README", "PIPELINE_NAME",
    "atomic_write_texts", "bids_uri", "check_output_dir", "derivative_path", "detect_container", "probe_writable",
    "sidecar_path", "write_dataset_description", "write_sidecars",
    # validator
    "BIDSValidatorMissing", "find_bids_validator", "run_bids_validator",
]
