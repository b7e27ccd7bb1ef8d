"""Errors that leave nothing behind (issue 34): a refusal is one line, a non-zero exit code, no traceback, and no
file or folder that the run made. Through the real command lines (``bhd-app`` and ``bhd-train`` as installed, or
their ``main()``), on the generated example dataset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bhd_app.cli.run import main
from conftest import small_dataset

VIDA = ("02", "vida", "T1w")
BIN = Path(sys.executable).parent


def _program(name: str) -> str:
    """The installed console script beside the interpreter (as a user of the environment runs it)."""
    path = BIN / name
    if not path.is_file():
        pytest.skip(f"{name} is not installed beside {sys.executable} (pip install -e .)")
    return str(path)


def _stderr_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


@pytest.fixture()
def ds(examples, tmp_path) -> Path:
    return small_dataset(examples, tmp_path / "ds", [VIDA])


# ---------------------------------------------------------------------------------------------- argument errors


@pytest.mark.parametrize("program, args, phrase", [
    ("bhd-app", ["{ds}", "{out}", "participant", "--method", "foo"], "argument --method: invalid choice: 'foo'"),
    ("bhd-app", ["{ds}"], "the following arguments are required: output_dir, analysis_level"),
    ("bhd-train", ["{out}", "--synthetic", "x"], "argument --synthetic: invalid int value: 'x'"),
])
def test_argument_errors_are_one_line_with_a_hint_to_help(tmp_path, program, args, phrase):
    """argparse printed its 20-line usage before the error; now one line that points to --help, exit code 2."""
    args = [a.format(ds=tmp_path, out=tmp_path / "out") for a in args]
    run = subprocess.run([_program(program), *args], capture_output=True, text=True)
    err = _stderr_lines(run.stderr)
    assert run.returncode == 2
    assert len(err) == 1 and err[0].startswith(f"{program}: error: ") and phrase in err[0], err
    assert err[0].endswith(f"see {program} --help"), err
    assert not (tmp_path / "out").exists()
