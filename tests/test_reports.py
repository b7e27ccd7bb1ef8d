"""The participant and group HTML reports of the reference run, opened in headless Chromium."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from bhd_app.cli.run import main

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0"]
PARTICIPANT_SECTIONS = ("Input", "brain mask", "Registration", "Edge map", "before refinement",
                        "after refinement", "Difference map", "Metrics and provenance")
PARTICIPANT_FACTS = ("NCC", "brain volume", "ModelSHA256", "time: harmonization", "time: registration",
                     "software", "setting: seed", "setting: steps")

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt install chromium)")


def _chromium(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / "chromium-profile"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=180)


def _data_uris(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src=['\"]data:image/png;base64,([A-Za-z0-9+/=]+)['\"]", text)]


def _check_in_chromium(page: Path, tmp: Path, n_images: int) -> np.ndarray:
    """The page's DOM holds its images and no network resource; returns the screenshot (RGB, 0-1)."""
    dom = _chromium(page, tmp, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<img") == n_images and len(_data_uris(dom.stdout)) == n_images
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", dom.stdout)  # self-contained
    problems = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln or "Failed to load" in ln]
    assert problems == [], problems
    shot = tmp / f"{page.stem}.png"
    result = _chromium(page, tmp, f"--screenshot={shot}", "--window-size=1200,2000")
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    return matplotlib.image.imread(shot)[..., :3]


@pytest.fixture(scope="module")
def reports(participant_run) -> dict[str, Path]:
    assert main([str(participant_run.ds), str(participant_run.out), "group"]) == 0
    return {"participant": participant_run.out / "sub-02_ses-vida_T1w.html",
            "group": participant_run.out / "group_report.html"}


def test_participant_report_contents(reports):
    text = reports["participant"].read_text()
    for section in PARTICIPANT_SECTIONS + PARTICIPANT_FACTS:
        assert section in text, section
    images = _data_uris(text)
    assert len(images) == 6
    for png in images:  # every figure is a real picture, not an empty canvas
        picture = matplotlib.image.imread(io.BytesIO(png))
        assert picture.shape[0] > 100 and picture[..., :3].std() > 0.05


@needs_chromium
def test_participant_report_in_chromium(reports, tmp_path):
    shot = _check_in_chromium(reports["participant"], tmp_path, 6)
    gray = shot.mean(axis=2)
    assert shot.shape[:2] == (2000, 1200)
    assert (gray < 0.2).mean() > 0.05 and gray.std() > 0.1  # black mosaic backgrounds with anatomy on them


@needs_chromium
def test_group_report_in_chromium(reports, tmp_path):
    # Two intensity figures and, for one subject on two scanners, three downstream figures (site effects and
    # classifier, volumes per scanner, traveling subject); no age figure with one subject.
    shot = _check_in_chromium(reports["group"], tmp_path, 5)
    saturation = shot.max(axis=2) - shot.min(axis=2)
    assert (shot.mean(axis=2) < 0.9).mean() > 0.01  # text, axes, lines
    assert (saturation > 0.3).mean() > 0.001  # the coloured histograms and markers


def test_group_figure_legends_cover_no_bar(monkeypatch):
    """The legends of the group figures sit clear of the bars (on the example dataset the eta-squared and SSIM
    bars reach 0.99 and the legend hid them). The tables are the demo's group TSV numbers, rounded."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from bhd_app.pipeline import reports as R

    conditions = ["before", "bhd", "histmatch"]
    eta2 = {"before": (0.954, 0.940, 0.949), "bhd": (0.919, 0.936, 0.944), "histmatch": (0.991, 0.933, 0.992)}
    ssim = {"before": (0.910, 0.887, 0.814, 0.954, 0.983, 0.957, 0.922),
            "bhd": (0.926, 0.896, 0.838, 0.970, 0.989, 0.972, 0.936),
            "histmatch": (0.930, 0.890, 0.874, 0.969, 0.972, 0.974, 0.944)}
    pairs = [("01", "sonata", "trio"), ("01", "sonata", "vision"), ("01", "trio", "vision"), ("02", "biograph", "trio"),
             ("02", "biograph", "vida"), ("02", "trio", "vida"), ("03", "sonata", "trio")]
    tables = {
        "site_effects": [{"condition": c, "tissue": t, "eta2": eta2[c][k]} for c in conditions
                         for k, t in enumerate(("CSF", "GM", "WM"))],
        "classifier": [{"condition": c, "accuracy": a, "chance": 0.375} for c, a in zip(conditions, (0.625, 0.5, 0.5))],
        "scanner_means": [],
        "traveling": [{"subject": s, "job_a": f"sub-{s}_ses-{a}", "job_b": f"sub-{s}_ses-{b}", "condition": c,
                       "ssim": ssim[c][k], "abs_dGM_mL": 10.0 * k} for c in conditions for k, (s, a, b) in enumerate(pairs)],
        "age": [{"condition": c, "tissue": t, "r": r} for c in conditions for t, r in zip(("CSF", "GM", "WM"), (0.5, 0.6, -0.6))],
    }
    figures = []
    monkeypatch.setattr(R, "figure_to_data_uri", lambda fig: figures.append(fig) or "data:")
    R._downstream_figures(tables, conditions)
    assert len(figures) == 3
    checked = 0
    for fig in figures:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is None:
                continue
            box = legend.get_window_extent(renderer)
            bars = [p for p in ax.patches if isinstance(p, Rectangle)]
            assert bars
            for bar in bars:
                assert not box.overlaps(bar.get_window_extent(renderer)), (ax.get_ylabel(), bar.get_height())
            checked += 1
        plt.close(fig)
    assert checked == 4  # eta-squared, classifier, SSIM, age
