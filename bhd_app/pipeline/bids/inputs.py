"""BIDS inputs: the Job of one anatomical image, participant/session labels, the pybids layout (and its cached
index), ``--bids-filter-file`` checks and :func:`collect_jobs`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from ...errors import BHDInputError

if TYPE_CHECKING:
    from bids import BIDSLayout

LOGGER = logging.getLogger(__name__)

ANAT_EXTENSIONS = [".nii", ".nii.gz"]
SUFFIXES = ("T1w", "T2w")
LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")
# Only anat/ is indexed: other datatype folders can be large and are never used.
_INDEX_IGNORE = (
    re.compile(r"^/(code|models|sourcedata|stimuli|derivatives)(/|$)"),
    re.compile(r"^/sub-[^/]+/(ses-[^/]+/)?(func|dwi|fmap|perf|meg|eeg|ieeg|beh|pet|micr|nirs|motion|mrs|emg)(/|$)"),
)
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


def normalize_label(label: str, prefix: str) -> str:
    """``'sub-01'`` or ``'01'`` -> ``'01'`` (prefix 'sub' or 'ses'); BHDInputError unless alphanumeric."""
    text = str(label).strip()
    if text.startswith(f"{prefix}-"):
        text = text[len(prefix) + 1:]
    if not LABEL_RE.match(text):
        option = {"sub": "--participant-label", "ses": "--session-label"}.get(prefix, f"{prefix} label")
        raise BHDInputError(
            f"{option} {label!r}: a BIDS label has only letters and digits (give e.g. '{prefix}-01' or '01')"
        )
    return text


def read_json(path: Path, what: str) -> Any:
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
    if not isinstance(read_json(description, "the dataset description"), dict):
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
    return _check_filters(read_json(path, "--bids-filter-file"), str(path))


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
