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
PARTICIPANT_SECTIONS = ("Did it work?", "Distance to the target histogram", "Change in the brain", "Harmonization",
                        "the harmonized image (after)", "Difference map", "Input: sub-02_ses-vida_T1w.nii.gz", "sagittal",
                        "brain mask", "Registration", "Edge map", "Metrics and provenance")
PARTICIPANT_FACTS = ("NCC", "brain volume", "ModelSHA256", "time: harmonization", "time: registration",
                     "software", "setting: seed", "setting: steps", "setting: Model", "setting: ModelTargetDomain")
PARTICIPANT_IMAGES = 7  # histograms, harmonization, difference, input, brain mask, registration, edge map

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
    assert len(images) == PARTICIPANT_IMAGES
    for png in images:  # every figure is a real picture, not an empty canvas
        picture = matplotlib.image.imread(io.BytesIO(png))
        assert picture.shape[0] > 100 and picture[..., :3].std() > 0.05


@needs_chromium
def test_participant_report_in_chromium(reports, tmp_path):
    shot = _check_in_chromium(reports["participant"], tmp_path, PARTICIPANT_IMAGES)
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


# ------------------------------------------------------------------------- "did it work?": the reports' verdicts

GRID = "space-MNI152NLin2009aSym_res-1p2"


def _job_images(out: Path, stem: str = "sub-02_ses-vida") -> dict[str, np.ndarray]:
    import nibabel as nib

    anat = out / "sub-02" / stem.split("_")[1] / "anat"
    load = lambda desc, suffix: np.asarray(nib.load(anat / f"{stem}_{GRID}_desc-{desc}_{suffix}.nii.gz").dataobj,
                                           dtype=np.float32)
    return {"preproc": load("preproc", "T1w"), "harmonized": load("harmonized", "T1w"), "mask": load("brain", "mask")}


def _default_model():
    from bhd_app.config import DEFAULT_MODELS, default_model_path
    from bhd_app.modelfile import load_model

    return DEFAULT_MODELS["T1w"], load_model(default_model_path("T1w"))


def test_participant_report_opens_with_a_verdict_measured_on_the_job(reports, participant_run):
    """The verdict comes before every figure; its distances to the target histogram are the Wasserstein-1
    distances of the brain's intensities before and after to the default model's target quantiles (checked here
    with scipy's own), and its change in the brain is the RMS and 99th percentile of |harmonized - preprocessed|."""
    from scipy.stats import wasserstein_distance

    text = reports["participant"].read_text()
    assert text.index("Did it work?") < text.index("<img") < text.index("Harmonization: the preprocessed image")
    assert text.index("Difference map") < text.index("Input: ") < text.index("Registration")
    name, model = _default_model()
    images = _job_images(participant_run.out)
    brain = images["mask"] > 0
    match = re.search(rf"Distance to the target histogram of {re.escape(name)} <b>([0-9.]+) -&gt; ([0-9.]+)</b>", text)
    assert match, text[:3000]
    for value, image in zip(match.groups(), (images["preproc"], images["harmonized"])):
        assert float(value) == pytest.approx(wasserstein_distance(image[brain], model.target_quantiles), abs=2e-3)
    assert float(match.group(2)) < float(match.group(1))  # the example's scanners move towards the target
    change = np.abs(images["harmonized"] - images["preproc"])[brain]
    match = re.search(r"RMS ([0-9.]+)</b>, 99th percentile of \|change\| <b>([0-9.]+)</b>", text)
    assert match
    assert float(match.group(1)) == pytest.approx(np.sqrt(np.mean(change ** 2)), abs=1e-3)
    assert float(match.group(2)) == pytest.approx(np.percentile(change, 99), abs=1e-3)
    assert "No warning signs." in text  # a sound harmonization of a sound input


def test_participant_report_rows_are_readable_and_internal_rows_are_gone(reports):
    from bhd_app import __version__

    text = reports["participant"].read_text()
    software = re.search(r"<th style='text-align:left'>software</th><td style='text-align:left'><code>([^<]*)</code>",
                         text)
    assert software and software.group(1).startswith(f"bhd {__version__}, torch ")
    assert "{" not in software.group(1) and "&#x27;" not in software.group(1)
    assert "RefinementHistory" not in text and "before refinement" not in text
    assert "normalization (input intensities mapped to 0 and 1)</th><td style='text-align:left'><code>" in text


def test_verdict_warns_of_changes_at_the_brain_edge_nothing_changed_a_histogram_moved_away_and_unsure_draws(
        participant_run):
    """On the reference job's own images: no warning; a rim darkened by 0.1 (the 2.4 mm grid's partial-volume
    fault this project once had), an unchanged image, an inverted contrast and a focal disagreement of the draws
    each give their warning."""
    from scipy import ndimage

    from bhd_app.pipeline.reports import verdict

    _, model = _default_model()
    images = _job_images(participant_run.out)
    preproc, harmonized, mask = images["preproc"], images["harmonized"], images["mask"]
    q = model.target_quantiles
    sound = verdict(preproc, harmonized, mask, q)
    assert sound["warnings"] == [] and sound["distance_after"] < sound["distance_before"]
    brain = mask > 0
    rim = brain & ~ndimage.binary_erosion(brain, iterations=2)
    for step, word in ((-0.1, "a darkened rim?"), (0.1, "a brightened rim?")):
        faulty = verdict(preproc, np.where(rim, harmonized + step, harmonized), mask, q)
        assert len(faulty["warnings"]) == 1, faulty["warnings"]
        assert "The brain's edge changed unlike the tissue inside it" in faulty["warnings"][0]
        assert word in faulty["warnings"][0]
    unchanged = verdict(preproc, preproc, mask, q)
    assert any("nothing was changed" in w for w in unchanged["warnings"])
    inverted = verdict(preproc, np.where(brain, 1 - preproc, 0), mask, q)
    assert any("moved away from the target histogram" in w for w in inverted["warnings"])
    assert any("follows the input's anatomy weakly" in w for w in inverted["warnings"])
    uncertainty = np.where(brain, 0.01, 0).astype(np.float32)
    assert verdict(preproc, harmonized, mask, q, uncertainty)["warnings"] == []
    centre = tuple(int(np.mean(ix)) for ix in np.nonzero(brain))
    blob = np.zeros_like(uncertainty)
    blob[tuple(slice(c - 4, c + 4) for c in centre)] = 0.5
    focal = verdict(preproc, harmonized, mask, q, uncertainty + blob * brain)
    assert len(focal["warnings"]) == 1 and "disagree in one region" in focal["warnings"][0]


def test_difference_map_has_a_colour_bar_in_image_units_and_every_row_shows_the_same_slices(monkeypatch):
    import matplotlib.pyplot as plt

    from bhd_app.pipeline import reports as R

    figures = []
    monkeypatch.setattr(R, "figure_to_data_uri", lambda fig: figures.append(fig) or "data:")
    volume = np.zeros((20, 24, 30), np.float32)
    volume[5:15, 5:20, 10:25] = 1
    other = np.zeros_like(volume)
    other[:, :, 2:28] = 0.5  # another extent: its own picks would be other slices
    affine = np.diag([1.2, 1.2, 1.25, 1.0])
    R.mosaic([("a", volume, {}), ("difference", other - volume, {"cmap": "RdBu_r"})], picks=R._slice_picks(volume),
             affine=affine, colorbar={1: "difference (image units, 0-1 scale)"})
    fig = figures[-1]
    bars = [ax for ax in fig.axes if ax.get_ylabel() == "difference (image units, 0-1 scale)"]
    assert len(bars) == 1
    panels = [ax for ax in fig.axes if ax not in bars]
    z_labels = [ax.get_xlabel() for ax in panels[5:]]
    assert z_labels == [f"z = {k * 1.25:.0f} mm" for k in R._slice_picks(volume)]
    for top, bottom in zip(panels[:5], panels[5:]):  # same slice in both rows: the difference is 0.5 - 1 there
        shown_a, shown_b = top.get_images()[0].get_array(), bottom.get_images()[0].get_array()
        np.testing.assert_allclose(np.asarray(shown_b), 0.5 - np.asarray(shown_a))
    plt.close("all")


def test_group_report_opens_with_a_verdict_table_of_the_tsv_numbers(reports, participant_run):
    """Before, the method that was run and histogram matching, per measure, with the numbers of the group TSVs
    and the winner of each row; the separability table names the method of each row."""
    import csv

    from bhd_app.pipeline.reports import condition_label

    text = reports["group"].read_text()
    assert text.index("Did it work? The verdict per measure") < text.index("Downstream site") < text.index("<img")
    for label in ("before (method none)", "bhd (the method run)", "histmatch (computed here)"):
        assert f"<th>{label}</th>" in text
        assert f"<tr><td style='text-align:left'>{label}</td><td>" in text  # a row of the separability table
    with open(participant_run.out / "group_site_effects.tsv", newline="") as f:
        effects = list(csv.DictReader(f, delimiter="\t"))
    for tissue in ("CSF", "GM", "WM"):
        row = re.search(rf"<tr><td style='text-align:left'>scanner effect on {tissue} volume \(eta-squared\)</td>"
                        r"<td>lower</td>(.*?)</tr>", text)
        assert row, tissue
        cells = re.findall(r"<td[^>]*>(?:<b>)?([^<]*)(?:</b>)?</td>", row.group(1))
        values = {r["condition"]: float(r["eta2"]) for r in effects if r["tissue"] == tissue}
        for cell, condition in zip(cells, ("before", "bhd", "histmatch")):
            assert cell == ("n/a" if np.isnan(values[condition]) else f"{values[condition]:.3g}"), (tissue, condition)
        if all(np.isnan(v) for v in values.values()):  # one image per scanner: no within-scanner variance
            assert cells[3] == "n/a" and "not computed" in cells[4], (tissue, cells)
        else:
            best = min((v, c) for c, v in values.items() if not np.isnan(v))[1]
            assert cells[3] == best or cells[3].startswith("tie: "), (tissue, cells)
    with open(participant_run.out / "group_traveling.tsv", newline="") as f:
        ssim = {r["condition"]: float(r["ssim"]) for r in csv.DictReader(f, delimiter="\t")}  # one pair
    row = re.search(r"<tr><td style='text-align:left'>traveling subjects: SSIM of the same subject's two scanners</td>"
                    r"<td>higher</td>(.*?)</tr>", text.replace("&#x27;", "'"))
    cells = re.findall(r"<td[^>]*>(?:<b>)?([^<]*)(?:</b>)?</td>", row.group(1))
    assert cells[:3] == [f"{ssim[c]:.3g}" for c in ("before", "bhd", "histmatch")]
    assert cells[3] == max(ssim, key=ssim.get) or cells[3].startswith("tie: ")
    assert "site classifier accuracy" in text and "not run: it needs two scanners or more" in text
    assert "traveling subjects: SSIM" in text and condition_label("bhd", "bhd") in text


def test_group_verdict_picks_the_winner_by_the_direction_of_each_measure():
    from bhd_app.pipeline.reports import _best, group_verdict

    assert _best({"before": 0.9, "bhd": 0.5, "histmatch": 0.7}, higher=False) == "bhd"
    assert _best({"before": 0.9, "bhd": 0.5, "histmatch": 0.7}, higher=True) == "before"
    assert _best({"before": 0.5, "bhd": 0.5, "histmatch": 0.7}, higher=False) == "tie: before, bhd"
    assert _best({"before": float("nan"), "bhd": float("nan")}, higher=False) == "n/a"
    conditions = ["before", "bhd", "histmatch"]
    tables = {"site_effects": [{"condition": c, "tissue": t, "eta2": e, "partial_eta2": float("nan")}
                               for c, e in zip(conditions, (0.8, 0.3, 0.5)) for t in ("CSF", "GM", "WM")],
              "classifier": [{"condition": c, "accuracy": a, "chance": 0.5} for c, a in zip(conditions, (1.0, 0.5, 0.75))],
              "traveling": [{"condition": c, "ssim": x, "psnr_dB": 20 + x, "abs_dCSF_mL": 1.0, "abs_dGM_mL": 9 - 5 * x,
                             "abs_dWM_mL": 1.0} for c, x in zip(conditions, (0.8, 0.9, 0.85))]}
    rows = {r["measure"]: r for r in group_verdict(tables, conditions, {"before": 0.1, "bhd": 0.02, "histmatch": 0.0})}
    assert rows["scanner effect on GM volume (eta-squared)"]["best"] == "bhd"
    assert rows["site classifier accuracy (chance 0.50)"]["best"] == "bhd"
    assert rows["traveling subjects: SSIM of the same subject's two scanners"]["best"] == "bhd"
    assert rows["traveling subjects: |GM volume difference| (mL)"]["best"] == "bhd"
    assert rows["traveling subjects: |WM volume difference| (mL)"]["best"].startswith("tie: ")
    separability = rows["intensity separability of the scanners (mean pairwise Wasserstein-1)"]
    assert separability["best"] == "histmatch" and "by construction" in separability["note"]
    assert not any("given subject" in m for m in rows)  # no partial eta-squared without repeated subjects


def test_group_histograms_draw_the_target_histogram_after_harmonization(monkeypatch):
    import matplotlib.pyplot as plt

    from bhd_app.pipeline import reports as R

    figures = []
    monkeypatch.setattr(R, "figure_to_data_uri", lambda fig: figures.append(fig) or "data:")
    rng = np.random.default_rng(0)
    records = [{"scanner": s, "method": "bhd", "before": rng.uniform(0, 1, 1000), "after": rng.uniform(0, 1, 1000)}
               for s in ("a", "b")]
    quantiles = np.quantile(rng.beta(5, 2, 5000), np.linspace(0, 1, 1001))
    R._site_histograms(records, {"T1w": ("ixi-hh-coarse", quantiles)})
    before, after = figures[-1].axes
    assert [line.get_label() for line in after.get_lines()] == ["target of ixi-hh-coarse"]
    assert before.get_lines() == [] and "bhd" in after.get_title()
    x, y = after.get_lines()[0].get_data()
    assert x[np.argmax(y)] == pytest.approx(0.8, abs=0.05)  # the mode of Beta(5, 2)
    plt.close("all")


# ------------------------------------------------------------------------------- sidecar, methods text, README


def test_sidecar_names_the_model_and_its_target_scanner(participant_run):
    import json

    from bhd_app.config import default_model_path

    name, model = _default_model()
    card = json.loads(default_model_path("T1w").with_suffix(".json").read_text())
    anat = participant_run.out / "sub-02" / "ses-vida" / "anat"
    for path in (anat / f"sub-02_ses-vida_{GRID}_desc-harmonized_T1w.json", anat / "sub-02_ses-vida_desc-harmonized_T1w.json"):
        recorded = json.loads(path.read_text())["Harmonization"]
        assert recorded["Model"] == name and recorded["ModelFile"] == default_model_path("T1w").name
        assert recorded["ModelTargetDomain"] == card["target_domain"] and recorded["ModelSHA256"] == model.sha256


def test_model_identity_names_shipped_models_by_name_and_others_by_file(tmp_path):
    import shutil

    from bhd_app.config import SHIPPED_MODELS, shipped_model_path
    from bhd_app.modelfile import load_model, save_model
    from bhd_app.pipeline.derivatives import model_grid_text, model_identity

    for name in SHIPPED_MODELS:
        path = shipped_model_path(name)
        identity = model_identity(path)
        assert identity["name"] == name and identity["shipped"] and identity["target_domain"]
        copy = tmp_path / name / path.name  # a copy of a shipped model keeps its name (same sha256)
        copy.parent.mkdir()
        shutil.copy(path, copy)
        shutil.copy(path.with_suffix(".json"), copy.with_suffix(".json"))
        assert model_identity(copy)["name"] == name
    model = load_model(shipped_model_path("ixi-hh"))
    own = tmp_path / "mine.pt"
    save_model(own, model.net, model.parameterization, model.target_quantiles * 0.9, {"training": {"grid_factor": 2}})
    identity = model_identity(own)
    assert identity["name"] == "mine.pt" and not identity["shipped"] and identity["target_domain"] is None
    assert identity["grid_factor"] == 2 and "2.4 x 2.4 x 2.5 mm" in model_grid_text(2)
    assert model_grid_text(1).startswith("the 1.2 x 1.2 x 1.25 mm harmonization grid")


def test_citation_names_the_paper_the_target_scanner_the_grid_and_the_settings_with_a_bibtex_file(participant_run):
    """logs/CITATION.md of the reference run: the paper's arXiv identifier, the default model's target scanner,
    credit and grid (from its card), the refinement's numbers (from the T1w preset, whatever they are); every
    reference it cites is in logs/CITATION.bib under the same key."""
    import json

    from bhd_app.config import T1W, default_model_path
    from bhd_app.pipeline.derivatives import model_grid_text

    text = (participant_run.out / "logs" / "CITATION.md").read_text()
    bib = (participant_run.out / "logs" / "CITATION.bib").read_text()
    card = json.loads(default_model_path("T1w").with_suffix(".json").read_text())
    assert ("Jeong H, Lee H, Chun SY, Lee J. Efficient and robust 3D blind harmonization for large domain gaps. "
            "arXiv:2505.00133, 2025.") in text
    assert card["target_domain"] in text and card["credit"] in text
    assert model_grid_text(card["training"].get("grid_factor", 1)) in text
    if T1W.start_from == "refined" or T1W.refinement in ("ncc", "mi"):
        assert f"{T1W.refine_iterations} iteration" in text and f"{T1W.refine_step:g}" in text
    labels = re.findall(r"^- \[([a-z]+)\] ", text, flags=re.M)
    assert set(labels) == set(re.findall(r"\[([a-z]+)\]", text.split("## References")[0]))
    assert re.findall(r"^@\w+\{(\w+),", bib, flags=re.M) == labels
    assert "eprint = {2505.00133}" in bib and "archivePrefix = {arXiv}" in bib


@pytest.mark.parametrize("refinement", ["ncc", "mi", "split", "none"])
@pytest.mark.parametrize("start_time", [0.0, 0.37])
@pytest.mark.parametrize("start_from", ["source", "histmatch", "refined"])
def test_methods_text_states_what_the_settings_do(refinement, start_time, start_from):
    """Whatever the settings, the text gives the numbers of each step that ran and none of a step that did not."""
    from bhd_app.config import T1W
    from bhd_app.pipeline.boilerplate import methods_text

    rule = "rms" if refinement == "mi" else "paper"
    s = T1W.to_dict() | {"refinement": refinement, "start_time": start_time, "start_from": start_from,
                         "refine_step": 0.0137, "refine_iterations": 11, "refine_step_rule": rule,
                         "split_sigma_mm": 5.5, "steps": 3, "solver": "midpoint", "samples": 1,
                         "model": "/nowhere/mine.pt", "model_sha256": "ab" * 32}
    text = methods_text({"T1w": s}, {"bhd": "0.1.0"}, "deepbet")
    # The start image is made when the flow starts from it or the refinement uses it (reference "start").
    uses_start = start_time > 0 or (refinement != "none" and s["refine_reference"] == "start")
    refines = refinement in ("ncc", "mi") or (start_from == "refined" and uses_start)
    assert ("0.0137" in text and "11 iterations" in text) == refines
    assert ("x N x gradient" in text) == (refines and rule == "paper")
    assert ("sigma 5.5 mm" in text) == (refinement == "split")
    assert ("t0 = 0.37" in text) == (start_time > 0) and ("from pure noise" in text) == (start_time == 0)
    assert "midpoint solver, 3 steps" in text
    assert ("followed by no refinement" in text) == (refinement == "none")
    assert ("mutual information" in text) == (refinement == "mi")
    assert "The T1w model was mine.pt" in text and "not stated in its model card" in text


def test_derivatives_readme_lists_every_file_the_app_wrote(reports, participant_run):
    """Every file of the reference run's derivatives, after the group level, matches a name the README lists
    (its sub-X/ses-Y names stand for any subject and session; sidecars are the images' names with .json)."""
    from fnmatch import fnmatch

    out = participant_run.out
    text = (out / "README.md").read_text()
    names = [n.replace("sub-X", "sub-*").replace("ses-Y", "ses-*") for n in re.findall(r"^\| `([^`]+)` \|", text,
                                                                                        flags=re.M)]
    assert "logs/CITATION.md" in names and "logs/CITATION.bib" in names and "logs/crash-*.txt" in names
    assert "group_report.html" in names
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert any(w.startswith("group_") and w.endswith(".tsv") for w in written)
    for name in written:
        image = name.removesuffix(".json") + ".nii.gz" if name.startswith("sub-") and name.endswith(".json") else name
        assert any(fnmatch(image, pattern) for pattern in names), name
    for table in [w for w in written if w.startswith("group_")]:
        assert f"`{table}`" in text
