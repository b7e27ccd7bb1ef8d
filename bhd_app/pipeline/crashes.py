"""Crash files of participant runs (``logs/crash-*.txt``): nipype's, and the input check's, read in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Crash:
    """One crash file: the failed node (``<job>.<step>``), the user-facing error if any, the last line."""

    path: Path
    node: str
    user_error: str | None
    last_line: str

    @property
    def message(self) -> str:
        """The user-facing error when there is one, else the last line and where to read the rest."""
        return self.user_error or f"{self.last_line or 'failed'} (crash file: {self.path})"

    def is_of(self, job_name: str) -> bool:
        """Whether the crash belongs to the job whose input is named ``job_name`` (e.g. ``sub-01_T1w``)."""
        tag = job_name.replace("-", "_")
        return tag in self.path.name or f".{tag}." in f".{self.node}."


def read_crash(path: Path) -> Crash:
    """Parse one crash file: first line ``Node: ...``; the error is the last ``BHDInputError:`` line."""
    lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    node = lines[0].removeprefix("Node: ").removeprefix("bhd_participant_wf.") if lines else ""
    user_error = next((ln.split("BHDInputError:", 1)[1].strip() for ln in reversed(lines)
                       if "BHDInputError:" in ln), None)
    return Crash(Path(path), node, user_error, lines[-1] if len(lines) > 1 else "")


def read_crashes(crash_dir: Path) -> list[Crash]:
    """Every crash file of a folder, oldest first."""
    crash_dir = Path(crash_dir)
    files = sorted(crash_dir.glob("crash-*.txt"), key=os.path.getmtime) if crash_dir.exists() else []
    return [read_crash(f) for f in files]
