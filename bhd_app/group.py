"""The group level: the site effect before and after harmonization, across participants.

For every complete job of the derivatives, the brain intensity distribution of
the preprocessed image (before) and of the harmonized image (after) is
summarized by percentiles and grouped by scanner (the input sidecar's
Manufacturer, ManufacturersModelName, MagneticFieldStrength and the contrast).
Site separability is the Wasserstein-1 distance between the pooled intensity
distributions of every pair of scanners, averaged over pairs: it should shrink
after harmonization. Writes ``group_bhd.tsv`` and ``group_report.html``.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from .bids import atomic_write_texts
from .errors import BHDInputError
from .templates import RESOLUTION_LABEL, TEMPLATE_SPACE

PERCENTILES = (5, 25, 50, 75, 95)
N_SAMPLES = 2001
LOGGER = logging.getLogger(__name__)


def _scanner(meta: dict, suffix: str) -> str:
    parts = [str(meta.get("Manufacturer", "unknown")), str(meta.get("ManufacturersModelName", "")).strip(),
             f"{meta['MagneticFieldStrength']:g}T" if "MagneticFieldStrength" in meta else "", suffix]
    return " ".join(p for p in parts if p)


def _source_metadata(bids_dir: Path, sources: list[str]) -> tuple[dict, str]:
    """The input sidecar of a job (from its ``bids:raw:`` source URI) and its contrast."""
    rel = sources[0].split(":", 2)[-1]
    path = bids_dir / rel
    suffix = path.name.split("_")[-1].split(".")[0]
    sidecar = path.with_name(path.name.replace(".nii.gz", ".json").replace(".nii", ".json"))
    try:
        return (json.loads(sidecar.read_text()) if sidecar.exists() else {}), suffix
    except (OSError, UnicodeDecodeError, ValueError) as err:
        LOGGER.warning("%s: cannot be read (%s); the scanner of this job is unknown; fix the file", sidecar, err)
        return {}, suffix


def collect_results(bids_dir: Path, out_dir: Path) -> list[dict]:
    """One record per complete job: identity, scanner and the brain intensities before and after.

    A job whose derivatives cannot be read is left out with a one-line warning.
    """
    records = []
    pattern = f"*_space-{TEMPLATE_SPACE}_res-{RESOLUTION_LABEL}_desc-harmonized_T1w.json"
    for side in sorted(out_dir.glob(f"sub-*/**/anat/{pattern}")):
        try:
            record = _job_record(bids_dir, side)
        except (OSError, ValueError, EOFError, zlib.error, ImageFileError) as err:
            LOGGER.warning("%s: the job's derivatives cannot be read (%s); skipped; re-run the participant level "
                           "for it with --force", side, " ".join(str(err).split()))
            continue
        if record:
            records.append(record)
    return records


def _job_record(bids_dir: Path, side: Path) -> dict | None:
    """The record of the job whose harmonized sidecar is ``side`` (none if its files are incomplete)."""
    info = json.loads(side.read_text())
    harmonized = side.with_name(side.name.replace(".json", ".nii.gz"))
    stem = side.name.split(f"_space-{TEMPLATE_SPACE}")[0]
    anat = side.parent
    mask_files = sorted(anat.glob(f"{stem}_space-{TEMPLATE_SPACE}_res-{RESOLUTION_LABEL}_desc-brain*_mask.nii.gz"))
    preproc_files = sorted(anat.glob(f"{stem}_space-{TEMPLATE_SPACE}_res-{RESOLUTION_LABEL}_desc-preproc_*.nii.gz"))
    if not (harmonized.exists() and mask_files and preproc_files):
        return None
    meta, suffix = _source_metadata(bids_dir, info.get("Sources", [""]))
    mask = np.asarray(nib.load(mask_files[0]).dataobj) > 0
    before = np.asarray(nib.load(preproc_files[0]).dataobj, dtype=np.float32)[mask]
    after = np.asarray(nib.load(harmonized).dataobj, dtype=np.float32)[mask]
    return {"job": stem, "scanner": _scanner(meta, suffix), "suffix": suffix,
            "method": info.get("Harmonization", {}).get("method", ""), "before": before, "after": after}


def _quantiles(values: np.ndarray) -> np.ndarray:
    return np.quantile(values, np.linspace(0, 1, N_SAMPLES))


def site_separability(records: list[dict], key: str) -> float:
    """Mean pairwise Wasserstein-1 distance between the scanners' pooled brain intensity distributions."""
    by_site: dict[str, list[np.ndarray]] = {}
    for r in records:
        by_site.setdefault(r["scanner"], []).append(_quantiles(r[key]))
    site_q = {s: np.mean(qs, axis=0) for s, qs in by_site.items()}
    pairs = list(itertools.combinations(sorted(site_q), 2))
    if not pairs:
        return float("nan")
    return float(np.mean([np.mean(np.abs(site_q[a] - site_q[b])) for a, b in pairs]))


def failed_jobs(out_dir: Path) -> list[str]:
    """Crash files left by participant runs (one per failed node or input check): what failed, the error."""
    logs = out_dir / "logs"
    failed = []
    for crash in sorted(logs.glob("crash-*.txt")) if logs.exists() else []:
        lines = [ln.strip() for ln in crash.read_text(errors="replace").splitlines() if ln.strip()]
        what = lines[0].removeprefix("Node: ").removeprefix("bhd_participant_wf.") if lines else ""
        failed.append(f"{what} {lines[-1] if len(lines) > 1 else ''} ({crash.name})")
    return failed


def group_tsv(records: list[dict]) -> str:
    """The text of ``group_bhd.tsv``: one row per job, brain intensity percentiles before and after."""
    f = io.StringIO()
    w = csv.writer(f, delimiter="\t", lineterminator="\n")
    w.writerow(["job", "scanner", "contrast", "method"]
               + [f"{when}_p{p}" for when in ("before", "after") for p in PERCENTILES])
    for r in records:
        w.writerow([r["job"], r["scanner"], r["suffix"], r["method"]]
                   + [f"{v:.4f}" for when in ("before", "after") for v in np.percentile(r[when], PERCENTILES)])
    return f.getvalue()


def run_group_level(bids_dir: Path, out_dir: Path) -> int:
    """Gather the participant results into the group TSV and HTML report."""
    from .reports import group_report_html

    if not out_dir.exists():
        raise BHDInputError(f"{out_dir}: no participant-level outputs; run the participant level first")
    records = collect_results(Path(bids_dir), Path(out_dir))
    if not records:
        raise BHDInputError(f"{out_dir}: no complete participant results found; run the participant level first")
    before, after = site_separability(records, "before"), site_separability(records, "after")
    html = group_report_html(records, before, after, failed_jobs(out_dir))
    try:
        atomic_write_texts({out_dir / "group_bhd.tsv": group_tsv(records), out_dir / "group_report.html": html})
    except OSError as err:
        raise BHDInputError(f"{out_dir}: cannot write the group outputs ({err.strerror or err}); make the "
                            "output folder writable (and not full) and run the group level again") from None
    scanners = len({r["scanner"] for r in records})
    summary = (f"site separability (mean pairwise W1) before {before:.4f}, after {after:.4f}" if scanners > 1
               else "site separability needs two scanners or more")
    print(f"bhd group: {len(records)} jobs, {scanners} scanner(s); {summary}")
    return 0
