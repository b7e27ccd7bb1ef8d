"""The group level: the site effect before and after harmonization, across participants.

For every complete job of the derivatives, three versions of the image are compared: the
preprocessed image (``before``), the harmonized image of the method that was run, and histogram
matching computed here from the same preprocessed image and the model's target histogram (the
one-line alternative every harmonization must beat). Images are grouped by scanner: the input's
merged (inherited) sidecar metadata, Manufacturer, ManufacturersModelName and MagneticFieldStrength,
and the contrast (T1w and T2w inputs are separate scanners).

Measured per version (``site_effects``): tissue volumes from a 3-class segmentation and the
scanner's effect on them (ANOVA, eta-squared); a cross-validated site classifier against chance;
for subjects seen on several scanners, the agreement of their sessions after rigid registration;
with ``age`` in participants.tsv, the correlation of the volumes with age (biology kept). Also the
mean pairwise Wasserstein-1 distance of the scanners' intensity histograms (which histogram
matching drives to zero by construction, so it says little). Writes ``group_*.tsv`` and
``group_report.html``.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from ..errors import BHDInputError
from .bids import SUFFIXES, Job, atomic_write_texts, collect_jobs, load_layout, probe_writable, sidecar_path
from .crashes import read_crashes
from .derivatives import job_is_complete, output_paths

PERCENTILES = (5, 25, 50, 75, 95)
N_SAMPLES = 2001
LOGGER = logging.getLogger(__name__)


def _scanner(meta: dict, suffix: str) -> str:
    parts = [str(meta.get("Manufacturer", "unknown")), str(meta.get("ManufacturersModelName", "")).strip(),
             f"{meta['MagneticFieldStrength']:g}T" if "MagneticFieldStrength" in meta else "", suffix]
    return " ".join(p for p in parts if p)


def collect_results(bids_dir: Path, out_dir: Path, database_dir: Path | None = None) -> list[dict]:
    """One record per complete job of the derivatives (T1w and T2w inputs), in ``collect_jobs`` order.

    The jobs are the input dataset's (pybids, so the scanner comes from the merged, inherited
    sidecar metadata); their files are found by the participant level's own names
    (``derivatives.output_paths``). A job whose derivatives cannot be read is left out with a
    one-line warning.
    """
    layout = load_layout(bids_dir, database_dir=database_dir)
    records = []
    for job in collect_jobs(layout, suffixes=SUFFIXES):
        if not job_is_complete(out_dir, job):
            continue
        try:
            records.append(job_record(out_dir, job))
        except (OSError, ValueError, EOFError, zlib.error, ImageFileError) as err:
            LOGGER.warning("%s: the job's derivatives cannot be read (%s); skipped; re-run the participant level "
                           "for it with --force", job.name, " ".join(str(err).split()))
    return records


def job_record(out_dir: Path, job: Job) -> dict:
    """A complete job's record: identity, scanner, method, its files, the brain intensities before and after."""
    paths = output_paths(out_dir, job)
    side = sidecar_path(paths["harmonized"])
    try:
        info = json.loads(side.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{side}: invalid JSON ({err.msg})") from None
    mask = np.asarray(nib.load(paths["mask"]).dataobj) > 0
    before = np.asarray(nib.load(paths["preproc"]).dataobj, dtype=np.float32)[mask]
    after = np.asarray(nib.load(paths["harmonized"]).dataobj, dtype=np.float32)[mask]
    return {"job": job.name, "subject": job.subject, "session": job.session or "",
            "scanner": _scanner(job.metadata, job.suffix), "suffix": job.suffix,
            "method": info.get("Harmonization", {}).get("method", ""),
            "model_sha256": info.get("Harmonization", {}).get("ModelSHA256"),
            "files": {role: paths[role] for role in ("preproc", "mask", "harmonized")},
            "before": before, "after": after}


def _quantiles(values: np.ndarray) -> np.ndarray:
    return np.quantile(values, np.linspace(0, 1, N_SAMPLES))


def site_separability(records: list[dict], key: str) -> float:
    """Mean pairwise Wasserstein-1 distance between the scanners' pooled brain intensity distributions
    (``r[key]``: the brain's intensities)."""
    return scanner_distance([r["scanner"] for r in records], [_quantiles(r[key]) for r in records])


def scanner_distance(scanners: list[str], quantiles: list[np.ndarray]) -> float:
    """Mean pairwise Wasserstein-1 distance between scanners, from each image's brain quantiles (``N_SAMPLES``)."""
    by_site: dict[str, list[np.ndarray]] = {}
    for scanner, q in zip(scanners, quantiles):
        by_site.setdefault(scanner, []).append(q)
    site_q = {s: np.mean(qs, axis=0) for s, qs in by_site.items()}
    pairs = list(itertools.combinations(sorted(site_q), 2))
    if not pairs:
        return float("nan")
    return float(np.mean([np.mean(np.abs(site_q[a] - site_q[b])) for a, b in pairs]))


def failed_jobs(out_dir: Path) -> list[str]:
    """Crash files left by participant runs (one per failed node or input check): what failed, the error."""
    return [f"{c.node} {c.last_line} ({c.path.name})" for c in read_crashes(Path(out_dir) / "logs")]


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


def read_participants(bids_dir: Path) -> dict[str, dict]:
    """participants.tsv as {subject label (no 'sub-'): {'age': float or None, 'sex': str or None}}; {} if absent.

    A file that cannot be read as a table (not UTF-8, binary data, a row with another number of columns than the
    header, no participant_id column) gives {} and one warning line naming it: the age analysis is skipped and the
    group level goes on.
    """
    path = Path(bids_dir) / "participants.tsv"
    if not path.is_file():
        return {}
    out = {}
    try:
        text = path.read_text(encoding="utf-8-sig")
        if "\0" in text:
            raise ValueError("binary data (NUL bytes), not a table")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
        header = next(reader, [])
        if "participant_id" not in header:
            raise ValueError("no participant_id column in its first line")
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ValueError(f"line {reader.line_num} has {len(row)} column(s), the header {len(header)}")
            values = dict(zip(header, row))
            try:
                age = float(values.get("age", ""))
            except ValueError:  # n/a
                age = None
            out[values["participant_id"].strip().removeprefix("sub-")] = {
                "age": age if age is not None and np.isfinite(age) else None,
                "sex": values.get("sex", "").strip() or None}
    except UnicodeDecodeError as err:
        LOGGER.warning("%s: not UTF-8 text (byte 0x%02x at offset %d); age analysis skipped; save it as UTF-8",
                       path, err.object[err.start], err.start)
        return {}
    except (OSError, ValueError, csv.Error) as err:
        LOGGER.warning("%s: %s; age analysis skipped; fix the file (tab-separated, UTF-8, as many columns in every "
                       "row as in the header)", path, getattr(err, "strerror", None) or err)
        return {}
    return out


def conditions(method: str) -> list[str]:
    """The image versions compared: before, the method that was run, and histogram matching beside it."""
    return ["before"] + [m for m in dict.fromkeys((method, "histmatch")) if m not in ("", "none")]


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float32)


class Countdown:
    """The time left in one stage of the group level (segmentations, traveling pairs), from the mean wall time
    per finished item of that stage."""

    def __init__(self, total: int):
        self.total, self.started = total, time.monotonic()

    def left(self, done: int) -> str:
        if done == 0:
            return "time left in this stage: estimating"
        per_item = (time.monotonic() - self.started) / done
        return f"about {timedelta(seconds=round(per_item * (self.total - done)))} left in this stage"


def image_versions(record: dict, target_quantiles: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The versions of one job's image on the grid (before, the method run, histmatch; (D, H, W) each) and its
    brain mask. Histogram matching is computed here from the preprocessed image and the target histogram."""
    from ..method.baselines import histogram_matching

    preproc, mask = _load(record["files"]["preproc"]), _load(record["files"]["mask"]) > 0
    images = {"before": preproc, "histmatch": histogram_matching(preproc, mask, target_quantiles)}
    images[record["method"]] = _load(record["files"]["harmonized"])
    return {c: images[c] for c in conditions(record["method"])}, mask


def measure_image(record: dict, target_quantiles: np.ndarray) -> dict[str, dict]:
    """Per version of one job's image: its tissue volumes, the site classifier's features and the brain's
    intensity quantiles (``N_SAMPLES``), from one segmentation of each version."""
    from .site_effects import image_features, segment, tissue_volumes

    images, mask = image_versions(record, target_quantiles)
    out = {}
    for c, image in images.items():
        try:
            labels = segment(image, mask)
        except ValueError as err:
            raise BHDInputError(f"{record['files']['preproc' if c == 'before' else 'harmonized']}: {c} version "
                                f"cannot be segmented ({err}); check the image, or remove this job's derivatives "
                                "and run the group level again") from None
        out[c] = {"volumes": tissue_volumes(labels), "features": image_features(image, labels),
                  "quantiles": _quantiles(image[mask])}
    return out


def pair_agreement(record_a: dict, record_b: dict, quantiles_a: np.ndarray, quantiles_b: np.ndarray,
                   schedule: str = "QuickRigid") -> dict:
    """(PSNR dB, SSIM) per version of one traveling pair: one rigid transform (``rigid_transform``'s ANTs
    ``schedule``), from the preprocessed images, moves every version of the second image onto the first; scored in
    the overlap of the brain masks."""
    from .site_effects import apply_transform, rigid_transform, traveling_agreement

    (images_a, mask_a), (images_b, mask_b) = image_versions(record_a, quantiles_a), image_versions(record_b, quantiles_b)
    transforms = rigid_transform(images_a["before"], images_b["before"], schedule=schedule)
    try:
        overlap = mask_a & (apply_transform(images_a["before"], mask_b, transforms, nearest=True) > 0.5)
        return {c: traveling_agreement(images_a[c], apply_transform(images_a[c], images_b[c], transforms), overlap)
                for c in images_a}
    finally:
        for f in transforms:  # ANTs wrote them to the temp folder
            Path(f).unlink(missing_ok=True)


def _files_only(record: dict) -> dict:
    """What a worker needs of a record (``image_versions``): not the brain intensities, which it reloads."""
    return {k: record[k] for k in ("job", "method", "suffix", "files")}


def _in_parallel(function: Callable, tasks: list[tuple], nprocs: int, stage: str, names: list[str],
                 progress: Callable[[str], None]) -> list:
    """``function(*task)`` for every task, on ``nprocs`` processes (1: in this one), results in task order; one
    progress line per finished task with the time left in the stage."""
    countdown = Countdown(len(tasks))
    results: list = [None] * len(tasks)

    def done(k: int, finished: int) -> None:
        progress(f"{stage} {names[k]} done ({finished}/{len(tasks)}; {countdown.left(finished)})")

    if nprocs <= 1 or len(tasks) <= 1:
        for k, task in enumerate(tasks):
            results[k] = function(*task)
            done(k, k + 1)
        return results
    # Fresh interpreters: the parent has torch loaded, and forking a process with its thread pools is unsafe.
    with ProcessPoolExecutor(max_workers=min(nprocs, len(tasks)), mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(function, *task): k for k, task in enumerate(tasks)}
        for finished, future in enumerate(as_completed(futures), start=1):
            results[futures[future]] = future.result()
            done(futures[future], finished)
    return results


def measure_images(records: list[dict], target_quantiles: dict[str, np.ndarray], nprocs: int = 1,
                   progress: Callable[[str], None] = lambda line: None) -> dict[str, list[dict]]:
    """``measure_image`` of every record on ``nprocs`` processes; per condition, one entry per record (same order).
    ``target_quantiles``: the target histogram of the model each input contrast used (``_target_quantiles``)."""
    progress(f"segmenting {len(records)} images, {len(conditions(records[0]['method']))} versions each, "
             f"on {min(nprocs, len(records))} process(es)")
    tasks = [(_files_only(r), target_quantiles[r["suffix"]]) for r in records]
    measured = _in_parallel(measure_image, tasks, nprocs, "segmented", [r["job"] for r in records], progress)
    return {c: [m[c] for m in measured] for c in conditions(records[0]["method"])}


def traveling_pairs(records: list[dict]) -> list[tuple[int, int]]:
    """Index pairs (i, j), i < j, of the same subject's images on two different scanners."""
    return [(i, j) for i, j in itertools.combinations(range(len(records)), 2)
            if records[i]["subject"] == records[j]["subject"] and records[i]["scanner"] != records[j]["scanner"]]


def downstream_tables(records: list[dict], measured: dict[str, list[dict]], participants: dict,
                      target_quantiles: dict[str, np.ndarray], nprocs: int = 1,
                      progress: Callable[[str], None] = lambda line: None) -> dict[str, list[dict]]:
    """The group tables (name -> rows) of tissue volumes, scanner effects, site classifier, travelers, age;
    the traveling pairs are registered on ``nprocs`` processes."""
    from scipy import stats

    from .site_effects import TISSUES, scanner_effect, site_classifier

    scanners, subjects = [r["scanner"] for r in records], [r["subject"] for r in records]
    tables: dict[str, list[dict]] = {k: [] for k in ("volumes", "scanner_means", "site_effects", "classifier",
                                                      "traveling", "age")}
    for c, entries in measured.items():
        for r, e in zip(records, entries):
            tables["volumes"].append({"job": r["job"], "subject": r["subject"], "session": r["session"],
                                      "scanner": r["scanner"], "condition": c,
                                      **{f"{t}_mL": e["volumes"][t] for t in TISSUES}})
        for scanner in sorted(set(scanners)):
            rows = [e["volumes"] for e, s in zip(entries, scanners) if s == scanner]
            tables["scanner_means"].append({"condition": c, "scanner": scanner, "n_images": len(rows),
                                            **{f"{t}_mL": np.mean([v[t] for v in rows]) for t in TISSUES}})
        for t in TISSUES:
            effect = scanner_effect([e["volumes"][t] for e in entries], scanners, subjects)
            tables["site_effects"].append({"condition": c, "tissue": t, **effect})
        result = site_classifier(np.stack([e["features"] for e in entries]), scanners)
        tables["classifier"].append({"condition": c, **result})
        ages = [participants.get(s, {}).get("age") for s in subjects]
        if all(a is not None for a in ages) and len(set(ages)) >= 2 and len(ages) >= 3:
            for t in TISSUES:
                r_age, p_age = stats.pearsonr(ages, [e["volumes"][t] for e in entries])
                tables["age"].append({"condition": c, "tissue": t, "r": r_age, "p": p_age, "n_images": len(ages)})
    pairs = traveling_pairs(records)
    if pairs:
        progress(f"registering {len(pairs)} traveling pair(s) on {min(nprocs, len(pairs))} process(es)")
    tasks = [(_files_only(records[i]), _files_only(records[j]), target_quantiles[records[i]["suffix"]],
              target_quantiles[records[j]["suffix"]]) for i, j in pairs]
    names = [f"{records[i]['job']} / {records[j]['job']}" for i, j in pairs]
    agreements = _in_parallel(pair_agreement, tasks, nprocs, "registered", names, progress)
    for (i, j), agreement in zip(pairs, agreements):
        for c, entries in measured.items():
            psnr, ssim = agreement[c]
            a, b = entries[i]["volumes"], entries[j]["volumes"]
            tables["traveling"].append({"subject": records[i]["subject"], "job_a": records[i]["job"],
                                        "job_b": records[j]["job"], "scanner_a": records[i]["scanner"],
                                        "scanner_b": records[j]["scanner"], "condition": c, "psnr_dB": psnr,
                                        "ssim": ssim, **{f"abs_d{t}_mL": abs(a[t] - b[t]) for t in TISSUES}})
    return tables


def tsv_text(rows: list[dict]) -> str:
    """A list of dicts as TSV text (floats with 4 decimals); an empty table is an empty text."""
    if not rows:
        return ""
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return out.getvalue()


def _target_quantiles(records: list[dict], model_path: Path | None) -> dict[str, np.ndarray]:
    """Per input contrast, its model's target histogram (for histogram matching); ``model_path`` (``--model``, or
    None for each contrast's default model) must name the models the jobs used."""
    from ..config import models_by_contrast
    from ..modelfile import load_model

    out = {}
    for suffix, path in models_by_contrast(model_path, sorted({r["suffix"] for r in records})).items():
        model = load_model(path, "cpu")
        used = {r["model_sha256"] for r in records if r["suffix"] == suffix and r["model_sha256"]}
        if used and used != {model.sha256}:
            raise BHDInputError(f"the participant's {suffix} jobs used model sha256 {sorted(used)[0][:12]}..., not "
                                f"{model.path.name} ({model.sha256[:12]}...); pass the same --model to the group level")
        out[suffix] = model.target_quantiles
    return out


def separability_by_condition(records: list[dict], measured: dict[str, list[dict]]) -> dict[str, float]:
    """``site_separability`` of each version of the images (before, the method run, histogram matching)."""
    scanners = [r["scanner"] for r in records]
    return {condition: scanner_distance(scanners, [e["quantiles"] for e in entries])
            for condition, entries in measured.items()}


def _target_names(records: list[dict], model_path: Path | None,
                  quantiles: dict[str, np.ndarray]) -> dict[str, tuple[str, np.ndarray]]:
    """Per input contrast, (its model's name, its target histogram) for the report's histograms."""
    from ..config import models_by_contrast
    from .derivatives import model_identity

    paths = models_by_contrast(model_path, sorted(quantiles))
    return {suffix: (model_identity(paths[suffix]).get("name", ""), q) for suffix, q in quantiles.items()}


def run_group_level(bids_dir: Path, out_dir: Path, model_path: Path | None = None,
                    database_dir: Path | None = None, nprocs: int = 1) -> int:
    """Gather the participant results into the group TSVs and HTML report (``database_dir``: pybids' index;
    ``nprocs``: processes for the segmentations and registrations)."""
    from .reports import group_report_html

    if not out_dir.exists():
        raise BHDInputError(f"{out_dir}: no participant-level outputs; run the participant level first")
    records = collect_results(Path(bids_dir), Path(out_dir), database_dir)
    if not records:
        raise BHDInputError(f"{out_dir}: no complete participant results found; run the participant level first")
    try:  # before the minutes of segmentation and registration, not after them
        probe_writable(out_dir)
    except OSError as err:
        raise BHDInputError(f"{out_dir}: cannot write the group outputs ({err.strerror or err}); make the "
                            "output folder writable (and not full) and run the group level again") from None
    before, after = site_separability(records, "before"), site_separability(records, "after")
    started = time.monotonic()

    def progress(line: str) -> None:
        print(f"bhd group [{timedelta(seconds=round(time.monotonic() - started))}] {line}", flush=True)

    quantiles = _target_quantiles(records, model_path)
    measured = measure_images(records, quantiles, nprocs, progress)
    tables = downstream_tables(records, measured, read_participants(Path(bids_dir)), quantiles, nprocs, progress)
    progress("writing the group tables and report")
    html = group_report_html(records, separability_by_condition(records, measured), failed_jobs(out_dir), tables,
                             _target_names(records, model_path, quantiles))
    texts = {out_dir / "group_bhd.tsv": group_tsv(records), out_dir / "group_report.html": html}
    texts |= {out_dir / f"group_{name}.tsv": tsv_text(rows) for name, rows in tables.items()}
    try:
        atomic_write_texts(texts)
    except OSError as err:  # the disk filled up or became read-only while the group level ran
        raise BHDInputError(f"{out_dir}: cannot write the group outputs ({err.strerror or err}); make the "
                            "output folder writable (and not full) and run the group level again") from None
    scanners = len({r["scanner"] for r in records})
    summary = (f"site separability (mean pairwise W1) before {before:.4f}, after {after:.4f}" if scanners > 1
               else "site separability needs two scanners or more")
    print(f"bhd group: {len(records)} jobs, {scanners} scanner(s), {len(traveling_pairs(records))} traveling "
          f"pair(s); {summary}")
    for row in tables["classifier"]:
        print(f"bhd group: {classifier_line(row)}")
    return 0


def classifier_line(row: dict) -> str:
    """One line on a site classifier row (``site_effects.site_classifier``), also when it could not run."""
    if np.isnan(row["accuracy"]):
        return (f"site classifier on {row['condition']}: not run ({row['n_images']} image(s), {row['n_scanners']} "
                "scanner(s); it needs two scanners or more, and two images or more of each when there are two)")
    return f"site classifier on {row['condition']}: accuracy {row['accuracy']:.2f} (chance {row['chance']:.2f})"
