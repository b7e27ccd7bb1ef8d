"""BIDS input and output: find the anatomical images to harmonize, name and describe the derivatives.

Inputs are indexed with pybids (anatomical folders only); the layout database can live in the
work directory so that re-runs skip indexing. Every derivative file name is built by
:func:`derivative_path`, in BIDS entity order, under ``sub-X/[ses-Y/]anat/``. Files that the
BIDS specification does not cover (transforms, HTML reports, figures, logs) are listed in the
output's ``.bidsignore`` so that the official validator accepts the derivative dataset.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from ..errors import BHDInputError

if TYPE_CHECKING:
    from bids import BIDSLayout

LOGGER = logging.getLogger(__name__)

BIDS_VERSION = "1.10.0"
PIPELINE_NAME = "bhd"
DATASET_NAME = "bhd: BlindHarmonyDiff harmonized anatomical MRI"
# Set in the container image (e.g. ENV BHD_CONTAINER_TAG=bhd:0.1.0) to record it in GeneratedBy.
CONTAINER_TAG_ENV = "BHD_CONTAINER_TAG"
# Patterns for files outside the BIDS specification. The deno validator does not honour a
# trailing slash (bids-standard/bids-validator#291), so folders are listed without one.
BIDSIGNORE = ("*_xfm.*", "*.html", "figures", "logs", "group_*")

ANAT_EXTENSIONS = [".nii", ".nii.gz"]
SUFFIXES = ("T1w", "T2w")
_LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")
# Only anat/ is indexed: other datatype folders can be large and are never used.
_INDEX_IGNORE = (
    re.compile(r"^/(code|models|sourcedata|stimuli|derivatives)(/|$)"),
    re.compile(r"^/sub-[^/]+/(ses-[^/]+/)?(func|dwi|fmap|perf|meg|eeg|ieeg|beh|pet|micr|nirs|motion|mrs|emg)(/|$)"),
)
# Input entities carried into derivative names: (pybids name, BIDS key).
_SOURCE_ENTITIES = (
    ("task", "task"), ("acquisition", "acq"), ("ceagent", "ce"), ("reconstruction", "rec"),
    ("run", "run"), ("echo", "echo"), ("part", "part"), ("chunk", "chunk"),
)
# BIDS order of every entity a derivative name may hold. from/to/mode are not in the spec;
# they go where the NiPreps put them, after the source entities and before space.
_ENTITY_ORDER = ("sub", "ses", "task", "acq", "ce", "rec", "run", "echo", "part",
                 "from", "to", "mode", "space", "chunk", "res", "desc")
# Filter-file keys the user may not set, and BIDS short keys people write instead of pybids names.
_FILTER_FORBIDDEN = {"subject": "use --participant-label", "suffix": "use the t1w/t2w sections",
                     "datatype": "only anat/ is read"}
_SHORT_KEYS = {"sub": "subject", "ses": "session", "acq": "acquisition", "ce": "ceagent",
               "rec": "reconstruction", "dir": "direction", "mod": "modality", "trc": "tracer",
               "stain": "staining", "nuc": "nucleus", "voi": "volume"}


@dataclass(frozen=True)
class Job:
    """One unit of work: one anatomical image of one subject/session."""

    subject: str  # without 'sub-'
    session: str | None
    suffix: str  # 'T1w' or 'T2w'
    path: Path  # the input image
    entities: dict = field(hash=False)  # pybids entities of the input (acquisition, run, ...)
    metadata: dict = field(hash=False, repr=False)  # merged (inherited) JSON sidecar metadata

    @property
    def name(self) -> str:
        """The input file name without extension, e.g. ``sub-01_ses-1_run-01_T1w`` (for logs, work dirs)."""
        return self.path.name.split(".", 1)[0]

    def to_json(self) -> str:
        """The job as JSON text (for nipype node inputs); ``from_json`` reads it back."""
        # pybids' run entity is an int that remembers its zero padding (run-01); JSON would drop it.
        entities = {k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v
                    for k, v in self.entities.items()}
        return json.dumps({"subject": self.subject, "session": self.session, "suffix": self.suffix,
                           "path": str(self.path), "entities": entities, "metadata": self.metadata}, default=str)

    @classmethod
    def from_json(cls, text: str) -> "Job":
        d = json.loads(text)
        return cls(d["subject"], d["session"], d["suffix"], Path(d["path"]), d["entities"], d["metadata"])


class BIDSValidatorMissing(BHDInputError):
    """bids-validator-deno is not installed."""


# ----------------------------------------------------------------------------- inputs


def normalize_label(label: str, prefix: str) -> str:
    """``'sub-01'`` or ``'01'`` -> ``'01'`` (prefix 'sub' or 'ses'); BHDInputError unless alphanumeric."""
    text = str(label).strip()
    if text.startswith(f"{prefix}-"):
        text = text[len(prefix) + 1:]
    if not _LABEL_RE.match(text):
        option = {"sub": "--participant-label", "ses": "--session-label"}.get(prefix, f"{prefix} label")
        raise BHDInputError(
            f"{option} {label!r}: a BIDS label has only letters and digits (give e.g. '{prefix}-01' or '01')"
        )
    return text


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BHDInputError(f"{path}: invalid JSON in {what} (line {err.lineno}, column {err.colno}: "
                            f"{err.msg}); fix the file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise BHDInputError(f"{path}: cannot read {what} ({err}); check the path and permissions") from None


def layout_database_dir(bids_dir: str | Path, database_dir: str | Path) -> Path:
    """The folder of a dataset's pybids index in ``database_dir``: pybids takes the root from a saved database, so
    each dataset gets its own folder."""
    root = Path(bids_dir).expanduser().resolve()
    return Path(database_dir) / f"{root.name}-{hashlib.sha1(str(root).encode()).hexdigest()[:10]}"


def load_layout(bids_dir: str | Path, validate: bool = False,
                database_dir: str | Path | None = None) -> BIDSLayout:
    """Index a BIDS dataset (anat/ folders only) with pybids.

    ``validate`` is pybids' own check that skips files whose names are not BIDS. With
    ``database_dir`` the index is kept there (one sub-folder per dataset) and reused until a file
    of the dataset changes.
    """
    from bids import BIDSLayout
    from bids.exceptions import BIDSValidationError
    from bids.layout import BIDSLayoutIndexer

    root = Path(bids_dir).expanduser().resolve()
    if not root.is_dir():
        raise BHDInputError(f"{bids_dir}: no such directory; give the root folder of a BIDS dataset")
    description = root / "dataset_description.json"
    if not description.is_file():
        parent = next((p for p in root.parents if (p / "dataset_description.json").is_file()), None)
        hint = f"; did you mean {parent}?" if parent else ""
        raise BHDInputError(
            f"{bids_dir}: not a BIDS dataset (no dataset_description.json); give the dataset's root "
            f"folder, the one holding dataset_description.json and the sub-* folders{hint}"
        )
    if not isinstance(_read_json(description, "the dataset description"), dict):
        raise BHDInputError(f"{description}: must hold a JSON object; see the BIDS specification")

    def build(database_path: Path | None, reset: bool, skipped: list[str] = ()):
        ignore = list(_INDEX_IGNORE) + [re.compile(f"^{re.escape(rel)}$") for rel in skipped]
        indexer = BIDSLayoutIndexer(validate=validate, ignore=ignore)
        try:
            return BIDSLayout(root, validate=validate, indexer=indexer,
                              database_path=database_path, reset_database=reset)
        except BIDSValidationError as err:  # validate=True: e.g. no BIDSVersion in the description
            raise BHDInputError(f"{description}: {str(err).splitlines()[0].strip()} Fix the file.") from None

    if database_dir is None:
        return build(None, True, _unreadable_sidecars(root))

    db = layout_database_dir(root, database_dir)
    stamp = _dataset_fingerprint(root, validate)

    def fresh() -> bool:
        return (db / "fingerprint").is_file() and (db / "fingerprint").read_text() == stamp

    if not fresh():
        # Index into a private folder, then move it into place: parallel runs sharing one work
        # directory never see a half-built database.
        db.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{db.name}.", dir=db.parent))
        try:
            skipped = _unreadable_sidecars(root)
            build(tmp, True, skipped)
            (tmp / "skipped_sidecars.json").write_text(json.dumps(skipped))
            (tmp / "fingerprint").write_text(stamp)
            if not fresh():  # else another run got there first
                shutil.rmtree(db, ignore_errors=True)
                try:
                    os.rename(tmp, db)
                except OSError:
                    pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:  # the index was built without them: warn again
        _unreadable_sidecars(root, json.loads((db / "skipped_sidecars.json").read_text()))
    return build(db, False)


def _indexed_files(root: Path) -> Iterable[tuple[str, Path]]:
    """(``/``-rooted relative path, path) of every file pybids indexes, in a stable order."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel = "" if Path(dirpath) == root else "/" + Path(dirpath).relative_to(root).as_posix()
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and not any(p.search(f"{rel}/{d}") for p in _INDEX_IGNORE))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield f"{rel}/{name}", Path(dirpath) / name


def _dataset_fingerprint(root: Path, validate: bool) -> str:
    """Hash of the names, sizes and mtimes of the files pybids indexes (cheap next to indexing)."""
    import bids

    digest = hashlib.sha1(f"{root}|{validate}|{bids.__version__}".encode())
    for rel, path in _indexed_files(root):
        st = os.lstat(path)
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _unreadable_sidecars(root: Path, known: list[str] | None = None) -> list[str]:
    """The JSON sidecars pybids could not read (relative paths), each logged as a one-line warning.

    pybids stops indexing at the first invalid one, so they are left out of the index: one bad sidecar
    does not stop the other participants. ``known`` (from an earlier scan) only repeats the warnings.
    """
    bad = []
    for rel, path in _indexed_files(root) if known is None else ((r, root / r[1:]) for r in known):
        if not rel.endswith(".json") or rel == "/dataset_description.json":
            continue
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            if path.is_symlink() and not path.exists():
                reason = "a broken symlink (a git-annex/DataLad file not fetched?)"
            elif isinstance(err, json.JSONDecodeError):
                reason = f"invalid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
            else:
                reason = f"unreadable ({err})"
            LOGGER.warning("%s: %s; skipped, its metadata are not used; fix the file", path, reason)
            bad.append(rel)
    return bad


def load_bids_filters(path: str | Path) -> dict:
    """Read a ``--bids-filter-file``: ``{"t1w": {"acquisition": "mprage"}, "t2w": {...}}``.

    Entity names are pybids' (``acquisition``, ``reconstruction``, ``run``...); ``null`` means
    "entity absent" and ``"*"`` "any value", as in fMRIPrep.
    """
    path = Path(path)
    if not path.is_file():
        raise BHDInputError(f"{path}: --bids-filter-file not found; give the path of a JSON file")
    return _check_filters(_read_json(path, "--bids-filter-file"), str(path))


def _check_filters(filters: Any, origin: str) -> dict:
    """Validate a filter dict; return it with lower-case section keys."""
    from bids.layout.models import Config

    allowed = {key.lower() for key in SUFFIXES}
    if not isinstance(filters, dict):
        raise BHDInputError(f"{origin}: the BIDS filters must be a JSON object like "
                            '{"t1w": {"acquisition": "mprage"}}')
    known = set(Config.load("bids").entities)
    checked = {}
    for section, query in filters.items():
        key = str(section).lower()
        if key not in allowed:
            raise BHDInputError(f"{origin}: unknown BIDS filter section {section!r}; "
                                f"allowed: {', '.join(sorted(allowed))}")
        if not isinstance(query, dict):
            raise BHDInputError(f"{origin}: filter section {section!r} must be an object of entity: value")
        for entity, value in query.items():
            if entity in _FILTER_FORBIDDEN:
                raise BHDInputError(f"{origin}: {section}.{entity} cannot be filtered; {_FILTER_FORBIDDEN[entity]}")
            if entity in _SHORT_KEYS:
                raise BHDInputError(f"{origin}: {section}.{entity}: use the pybids entity name "
                                    f"{_SHORT_KEYS[entity]!r} instead of {entity!r}")
            if entity not in known and not entity[:1].isupper():  # capitalized keys filter on metadata
                raise BHDInputError(f"{origin}: {section}.{entity} is not a BIDS entity; "
                                    f"known: {', '.join(sorted(known - set(_FILTER_FORBIDDEN)))}")
            values = value if isinstance(value, list) else [value]
            if not all(v is None or isinstance(v, (str, int, float, bool)) for v in values):
                raise BHDInputError(f"{origin}: {section}.{entity} must be a string, number, null or a list of them")
        checked[key] = dict(query)
    return checked


def _check_metadata_keys(layout, filters: dict, origin: str) -> None:
    """BHDInputError unless each capitalized filter key (a metadata filter) is a metadata key of some file of the
    dataset: pybids refuses it with a traceback otherwise (an entity written with a capital, "Acquisition")."""
    from bids.layout.models import Config

    keys = [(section, key) for section, query in filters.items() for key in query if key[:1].isupper()]
    if not keys:
        return
    metadata = set(layout.get_entities(metadata=True))
    entities = set(Config.load("bids").entities)
    for section, key in keys:
        if key not in metadata:
            hint = (f"; did you mean the entity {key.lower()!r}? (entity names are lower case)"
                    if key.lower() in entities else "; check its spelling against the JSON sidecars")
            raise BHDInputError(f"{origin}: {section}.{key} is neither a BIDS entity nor a metadata key of any "
                                f"file in {layout.root}{hint}")


def _query_value(value: Any) -> Any:
    from bids.layout import Query

    if value is None:
        return Query.NONE
    if value == "*":
        return Query.ANY
    return value


def _some(labels: list[str], limit: int = 20) -> str:
    shown = ", ".join(labels[:limit])
    return shown + (f", ... ({len(labels)} in all)" if len(labels) > limit else "")


def collect_jobs(layout, participant_labels: Iterable[str] | None = None,
                 session_labels: Iterable[str] | None = None, bids_filters: dict | None = None,
                 suffixes: Iterable[str] = ("T1w",), filters_origin: str = "BIDS filters") -> list[Job]:
    """Every requested anatomical image (each run/acquisition its own Job), sorted.

    Unknown participant or session labels raise BHDInputError listing the available ones, as
    does a requested participant with no image; unrequested subjects without one are skipped.
    So does a capitalized filter key that no file has as a metadata key (``filters_origin``: the
    filter file, named in the message).
    """
    suffixes = tuple(suffixes)
    if not suffixes or any(s not in SUFFIXES for s in suffixes):
        raise ValueError(f"suffixes must be among {SUFFIXES}, got {suffixes}")
    filters = _check_filters(bids_filters or {}, filters_origin)
    _check_metadata_keys(layout, filters, filters_origin)
    root = layout.root

    available = sorted(layout.get_subjects())
    if not available:
        raise BHDInputError(f"{root}: no sub-* folders with anatomical data; is this the dataset root?")
    explicit = bool(participant_labels)
    if explicit:
        subjects = sorted({normalize_label(label, "sub") for label in participant_labels})
        unknown = [s for s in subjects if s not in available]
        if unknown:
            raise BHDInputError(f"--participant-label {' '.join(unknown)}: not in {root}; "
                                f"available: {_some(available)}")
    else:
        subjects = available

    sessions = None
    if session_labels:
        sessions = sorted({normalize_label(label, "ses") for label in session_labels})
        have = sorted(layout.get_sessions(subject=subjects))
        unknown = [s for s in sessions if s not in have]
        if unknown:
            raise BHDInputError(f"--session-label {' '.join(unknown)}: not in {root} for the selected "
                                f"participants; available: {_some(have) if have else 'none (no ses-* folders)'}")

    jobs = []
    for suffix in suffixes:
        query = {"datatype": "anat", "suffix": suffix, "extension": ANAT_EXTENSIONS}
        query.update({k: _query_value(v) for k, v in filters.get(suffix.lower(), {}).items()})
        query["subject"] = subjects
        if sessions:
            query["session"] = sessions
        for bids_file in layout.get(**query):
            entities = dict(bids_file.get_entities())
            jobs.append(Job(subject=entities["subject"], session=entities.get("session"), suffix=suffix,
                            path=Path(bids_file.path), entities=entities,
                            metadata=dict(bids_file.get_metadata())))

    missing = sorted(set(subjects) - {job.subject for job in jobs})
    what = "/".join(suffixes) + " image" + (f" in session(s) {', '.join(sessions)}" if sessions else "") + \
        (" matching the BIDS filters" if filters else "")
    if missing and (explicit or len(missing) == len(subjects)):
        raise BHDInputError(f"{root}: no {what} for participant(s) {_some(missing)}; "
                            "check the dataset, --participant-label, --session-label and --bids-filter-file")
    for subject in missing:
        LOGGER.warning("sub-%s: no %s; skipped", subject, what)
    order = {s: i for i, s in enumerate(SUFFIXES)}
    return sorted(jobs, key=lambda j: (j.subject, j.session or "", order[j.suffix], str(j.path)))


# ----------------------------------------------------------------------------- outputs


def _check_entity(key: str, value: Any) -> str:
    text = str(value)
    if not _LABEL_RE.match(text):
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
        loaded = _read_json(bids_dir / "dataset_description.json", "the input dataset description")
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
    old = _read_json(path, "the output dataset description") if path.is_file() else {}
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


# ----------------------------------------------------------------------------- validator


def find_bids_validator() -> str | None:
    """``bids-validator-deno`` on PATH, else beside the running interpreter (the environment bhd is installed in,
    whose ``bin`` need not be on PATH: ``/venv/bin/bhd-app`` run by its path, a batch job), else None."""
    exe = shutil.which("bids-validator-deno")
    if exe is not None:
        return exe
    for folder in (Path(sys.executable).parent, Path(sys.prefix) / "bin"):
        candidate = folder / "bids-validator-deno"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def run_bids_validator(dataset_dir: str | Path, ignore_codes: Iterable[str] = (),
                       timeout: float | None = None) -> tuple[bool, str]:
    """Run the official validator (``bids-validator-deno``) on a raw or derivative dataset.

    Returns (no errors, summary); the summary counts errors and warnings and names each issue
    code with an example file. ``ignore_codes`` are passed in a validator config file.
    """
    exe = find_bids_validator()
    if exe is None:
        raise BIDSValidatorMissing("bids-validator-deno: not installed; run `pip install bids-validator-deno` "
                                   "or pass --skip-bids-validation")
    command = [exe, str(dataset_dir), "--format", "json", "--no-color"]
    with tempfile.TemporaryDirectory() as tmp:
        if ignore_codes:
            config = Path(tmp) / "validator.json"
            config.write_text(json.dumps({"ignore": [{"code": code} for code in ignore_codes]}))
            command += ["--config", str(config)]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    try:
        issues = json.loads(proc.stdout)["issues"]["issues"]
    except (json.JSONDecodeError, KeyError, TypeError):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"bids-validator-deno failed on {dataset_dir} (exit {proc.returncode}): {tail[0]}") from None
    return _summarize(issues)


def _summarize(issues: list[dict], max_lines: int = 30) -> tuple[bool, str]:
    grouped: dict[tuple[str, str], list[str]] = {}
    for issue in issues:
        severity = issue.get("severity", "error")
        if severity in ("error", "warning"):
            code = issue.get("code", "?") + (f"[{issue['subCode']}]" if issue.get("subCode") else "")
            grouped.setdefault((severity, code), []).append(issue.get("location", ""))
    count = {s: sum(len(v) for (sev, _), v in grouped.items() if sev == s) for s in ("error", "warning")}
    lines = [f"bids-validator-deno: {count['error']} error(s), {count['warning']} warning(s)"]
    for (severity, code), where in sorted(grouped.items()):  # errors first
        more = f" (+{len(where) - 1} more)" if len(where) > 1 else ""
        lines.append(f"  {severity.upper()} {code}: {where[0]}{more}")
    if len(lines) > max_lines + 1:
        lines[max_lines + 1:] = [f"  ... {len(lines) - max_lines - 1} more issue codes"]
    return count["error"] == 0, "\n".join(lines)
