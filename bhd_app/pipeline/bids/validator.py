"""The official BIDS validator (``bids-validator-deno``): find it, run it, summarize its issues."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable

from ...errors import BHDInputError


class BIDSValidatorMissing(BHDInputError):
    """bids-validator-deno is not installed."""


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
