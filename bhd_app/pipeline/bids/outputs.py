"""BIDS outputs: derivative file names, atomic writes, JSON sidecars, the derivative dataset_description.json,
.bidsignore and README, and the checks of the output and work directories."""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Any

from ...errors import BHDInputError
from .inputs import LABEL_RE, Job, read_json

BIDS_VERSION = "1.10.0"
PIPELINE_NAME = "bhd"
DATASET_NAME = "bhd: BlindHarmonyDiff harmonized anatomical MRI"
# Set in the container image (e.g. ENV BHD_CONTAINER_TAG=bhd:0.1.0) to record it in GeneratedBy.
CONTAINER_TAG_ENV = "BHD_CONTAINER_TAG"
# Patterns for files outside the BIDS specification. The deno validator does not honour a
# trailing slash (bids-standard/bids-validator#291), so folders are listed without one.
BIDSIGNORE = ("*_xfm.*", "*.html", "figures", "logs", "group_*")

# Input entities carried into derivative names: (pybids name, BIDS key).
_SOURCE_ENTITIES = (
    ("task", "task"), ("acquisition", "acq"), ("ceagent", "ce"), ("reconstruction", "rec"),
    ("run", "run"), ("echo", "echo"), ("part", "part"), ("chunk", "chunk"),
)
# BIDS order of every entity a derivative name may hold. from/to/mode are not in the spec;
# they go where the NiPreps put them, after the source entities and before space.
_ENTITY_ORDER = ("sub", "ses", "task", "acq", "ce", "rec", "run", "echo", "part",
                 "from", "to", "mode", "space", "chunk", "res", "desc")


def _check_entity(key: str, value: Any) -> str:
    text = str(value)
    if not LABEL_RE.match(text):
        raise ValueError(f"{key}-{text}: BIDS labels are letters and digits only")
    return text


def derivative_path(out_dir: str | Path, job: Job, *, space: str | None = None, res: str | None = None,
                    desc: str | None = None, suffix: str, extension: str, from_: str | None = None,
                    to: str | None = None, mode: str | None = None, datatype: str = "anat") -> Path:
    """The one place derivative names are made, e.g.
    ``sub-01/ses-1/anat/sub-01_ses-1_space-MNI152NLin2009aSym_res-1p2_desc-preproc_T1w.nii.gz``.

    The input's acq/ce/rec/run/... are kept so that several runs never collide. A file that does
    not name the contrast it came from (a mask, a segmentation) gets it in ``desc`` when it comes
    from a T2w, since BIDS has no entity for it: ``desc-brain`` -> ``desc-brainT2w``.
    ``datatype="figures"`` gives ``sub-X/figures/`` (no session folder), as the NiPreps do.
    Not pybids' ``build_path``: the derivative path patterns it ships (pybids 0.22 ``derivatives.json``) have no
    ``res`` or ``run`` for anatomical images and no pattern for transforms (``from``/``to``/``mode``).
    """
    if job.suffix != "T1w" and job.suffix not in (suffix, from_, to):
        desc = f"{desc or ''}{job.suffix}"
    values = {"sub": job.subject, "ses": job.session}
    values.update({key: job.entities.get(name) for name, key in _SOURCE_ENTITIES})
    values.update({"from": from_, "to": to, "mode": mode, "space": space, "res": res, "desc": desc})
    parts = [f"{key}-{_check_entity(key, values[key])}" for key in _ENTITY_ORDER
             if values.get(key) not in (None, "")]
    extension = extension if extension.startswith(".") else f".{extension}"
    if not re.match(r"^(\.[A-Za-z0-9]+)+$", extension):
        raise ValueError(f"{extension!r}: not a file extension")
    folder = Path(out_dir) / f"sub-{job.subject}"
    if job.session and datatype != "figures":
        folder = folder / f"ses-{job.session}"
    name = "_".join(parts) + f"_{_check_entity('suffix', suffix)}{extension}"
    return folder / _check_entity("datatype", datatype) / name


def bids_uri(path: str | Path, bids_dir: str | Path) -> str:
    """``bids:raw:sub-01/anat/sub-01_T1w.nii.gz`` for a file of the input, for ``Sources`` fields."""
    rel = Path(path).resolve().relative_to(Path(bids_dir).resolve())
    return f"bids:raw:{rel.as_posix()}"


def atomic_write_texts(texts: dict[Path, str]) -> None:
    """Write each text through a hidden temporary file beside its path; rename them into place once all are
    written, so that a failure (a read-only or full disk) leaves none of them half-written."""
    staged = []
    try:
        for path, text in texts.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():  # the one thing that makes a rename below fail
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            staged.append((tmp, path))
            with open(tmp, "x", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write_texts({path: text})


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False, default=_jsonable) + "\n"


def sidecar_path(image_path: str | Path) -> Path:
    """The JSON sidecar of an image: ``x_T1w.nii.gz`` -> ``x_T1w.json``."""
    image_path = Path(image_path)
    return image_path.with_name(image_path.name.split(".", 1)[0] + ".json")


def write_sidecars(fields_by_image: dict[Path, dict]) -> list[Path]:
    """The one sidecar writer: each image's ``fields`` as its JSON sidecar, all renamed into place at once.

    Keys sorted, numpy values as numbers, NaN refused (JSON has none). Returns the sidecars' paths.
    """
    texts = {sidecar_path(image): _dumps(fields) for image, fields in fields_by_image.items()}
    atomic_write_texts(texts)
    return list(texts)


def detect_container() -> dict | None:
    """``{"Type", "Tag"}`` when running inside the bhd container image, else None."""
    tag = os.environ.get(CONTAINER_TAG_ENV)
    for kind in ("APPTAINER", "SINGULARITY"):
        image = os.environ.get(f"{kind}_CONTAINER")
        if image:
            return {"Type": kind.lower(), "Tag": tag or Path(image).name}
    return {"Type": "docker", "Tag": tag} if tag else None


def write_dataset_description(out_dir: str | Path, bids_dir: str | Path, version: str,
                              container: dict | None = None, code_url: str | None = None) -> Path:
    """Write the derivative ``dataset_description.json`` and ``.bidsignore``; idempotent.

    An existing description is merged: GeneratedBy entries of other pipelines and other
    SourceDatasets are kept, bhd's entry is replaced. ``container=None`` detects it
    (:func:`detect_container`), ``{}`` records none.
    """
    out_dir, bids_dir = Path(out_dir), Path(bids_dir).resolve()
    source_desc = {}
    if (bids_dir / "dataset_description.json").is_file():
        loaded = read_json(bids_dir / "dataset_description.json", "the input dataset description")
        source_desc = loaded if isinstance(loaded, dict) else {}
    doi = str(source_desc.get("DatasetDOI") or "").strip()
    if doi:
        doi = doi if doi.startswith("doi:") else "doi:" + re.sub(r"^(https?://(dx\.)?doi\.org/)", "", doi)
        source = {"DOI": doi}
    else:
        source = {"URL": bids_dir.as_uri()}

    generated = {"Name": PIPELINE_NAME, "Version": str(version)}
    if code_url:
        generated["CodeURL"] = code_url
    container = container if container is not None else detect_container()
    if container:
        generated["Container"] = dict(container)

    path = out_dir / "dataset_description.json"
    old = read_json(path, "the output dataset description") if path.is_file() else {}
    old = old if isinstance(old, dict) else {}
    desc = dict(old)
    desc.update({"Name": old.get("Name", DATASET_NAME), "BIDSVersion": BIDS_VERSION,
                 "DatasetType": "derivative"})
    desc["GeneratedBy"] = [g for g in old.get("GeneratedBy", [])
                           if isinstance(g, dict) and g.get("Name") != PIPELINE_NAME] + [generated]
    desc["SourceDatasets"] = [s for s in old.get("SourceDatasets", []) if s != source] + [source]
    desc.setdefault("DatasetLinks", {})["raw"] = source.get("URL") or f"https://doi.org/{doi[4:]}"
    if "License" in source_desc:
        desc.setdefault("License", source_desc["License"])
    text = _dumps(desc)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        _atomic_write_text(path, text)

    ignore = out_dir / ".bidsignore"
    lines = ignore.read_text(encoding="utf-8").splitlines() if ignore.is_file() else []
    if any(p not in lines for p in BIDSIGNORE):
        _atomic_write_text(ignore, "\n".join(lines + [p for p in BIDSIGNORE if p not in lines]) + "\n")
    readme = out_dir / "README.md"
    if not readme.exists():
        _atomic_write_text(readme, DERIVATIVES_README.format(version=version))
    return path


DERIVATIVES_README = """# bhd derivatives

Harmonized anatomical images made by bhd {version} (BlindHarmonyDiff as a BIDS App).
Per image: the preprocessed image, brain mask and edge map on the MNI152NLin2009aSym grid
(1.2 x 1.2 x 1.25 mm), the harmonized image on that grid and on the input's native grid, the brain
mask on the native grid (`desc-brain_mask` without `space-`), the affine
transform (`_xfm.mat`, ANTs), JSON sidecars with every setting, and an HTML report per image.
The group level adds `group_bhd.tsv` and `group_report.html`.
"""


def probe_writable(folder: Path) -> None:
    """Write one byte to a temporary file in ``folder`` and sync it: OSError on a read-only or full disk (a real
    write, not permission bits, which root ignores)."""
    with tempfile.TemporaryFile(dir=folder) as probe:
        probe.write(b"\0")
        probe.flush()
        os.fsync(probe.fileno())


def check_output_dir(bids_dir: str | Path, out_dir: str | Path, work_dir: str | Path | None = None) -> None:
    """BHDInputError unless the output (and work) directories are usable; creates them.

    The output may not be the input dataset or inside it, except under ``<bids_dir>/derivatives/``;
    the work directory may not be inside the input or the output dataset.
    """
    bids, out = Path(bids_dir).resolve(), Path(out_dir).resolve()
    suggestion = bids / "derivatives" / PIPELINE_NAME
    if out == bids or (bids in out.parents and bids / "derivatives" not in out.parents):
        raise BHDInputError(f"{out_dir}: the output directory is inside the input dataset {bids}; "
                            f"use a folder outside it or under derivatives/ (e.g. {suggestion})")
    dirs = [(out, out_dir, "output")]
    if work_dir is not None:
        work = Path(work_dir).resolve()
        for inside, name in ((bids, "input dataset"), (out, "output dataset")):
            if work == inside or inside in work.parents:
                raise BHDInputError(f"{work_dir}: the work directory is inside the {name} {inside}, "
                                    "where its files would be taken for data; choose a folder elsewhere (-w)")
        dirs.append((work, work_dir, "work"))
    for path, given, what in dirs:
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe_writable(path)
        except OSError as err:
            raise BHDInputError(f"{given}: cannot write to the {what} directory ({err.strerror or err}); "
                                "choose a writable folder") from None
