"""Visual reports: self-contained HTML pages with matplotlib figures embedded as PNG data URIs.

No network resources: every picture is inline, the style is in the page.
"""

from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc}h3{font-size:1em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
img{max-width:100%}.bad{color:#b00}"""


def figure_to_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def html_page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def _target_density(quantiles: np.ndarray, bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The density of the distribution given by evenly spaced ``quantiles`` (a model's target histogram) on
    ``bins``: bin centres and densities."""
    density, edges = np.histogram(np.clip(quantiles, bins[0], bins[-1]), bins=bins, density=True)
    return 0.5 * (edges[1:] + edges[:-1]), density


def _site_histograms(records: list[dict], targets: dict[str, tuple[str, np.ndarray]] | None = None) -> str:
    """Per-scanner brain intensity histograms before and after; the after panel draws each contrast's target
    histogram (``targets``: suffix -> (model name, quantiles))."""
    sites = sorted({r["scanner"] for r in records})
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    bins = np.linspace(0, 1, 65)
    colors = plt.cm.tab10(np.linspace(0, 1, 10))
    method = records[0].get("method") or "harmonization"
    for ax, key, title in zip(axes, ("before", "after"), ("before harmonization (preprocessed)",
                                                          f"after harmonization ({method})")):
        for k, site in enumerate(sites):
            values = np.concatenate([r[key] for r in records if r["scanner"] == site])
            ax.hist(values, bins=bins, density=True, histtype="step", lw=1.6, color=colors[k % 10], label=site)
        ax.set_title(title)
        ax.set_xlabel("normalized intensity in the brain (0-1)")
    styles = ("--", ":", "-.")
    for k, (suffix, (name, quantiles)) in enumerate(sorted((targets or {}).items())):
        x, density = _target_density(np.asarray(quantiles), bins)
        axes[1].plot(x, density, color="k", ls=styles[k % 3], lw=1.6,
                     label=f"target of {name}" + (f" ({suffix} inputs)" if len(targets) > 1 else ""))
    axes[0].set_ylabel("density")
    axes[1].legend(fontsize=7)
    return figure_to_data_uri(fig)


def _median_plot(records: list[dict]) -> str:
    sites = sorted({r["scanner"] for r in records})
    fig, ax = plt.subplots(figsize=(11, 3.2))
    for k, site in enumerate(sites):
        rs = [r for r in records if r["scanner"] == site]
        for dx, key, marker in ((-0.12, "before", "o"), (0.12, "after", "s")):
            ys = [np.median(r[key]) for r in rs]
            ax.scatter([k + dx] * len(ys), ys, marker=marker, label=key if k == 0 else None,
                       color="tab:red" if key == "before" else "tab:blue")
    ax.set_xticks(range(len(sites)), sites, rotation=15, fontsize=8)
    ax.set_ylabel("median brain intensity")
    ax.legend()
    return figure_to_data_uri(fig)


def _number(x: float) -> str:
    return "n/a (one scanner)" if np.isnan(x) else f"{x:.4f}"


def _table(rows: list[dict], columns: list[str] | None = None) -> str:
    """An HTML table of dicts (floats with 3 significant decimals, NaN as n/a)."""
    if not rows:
        return "<p>None.</p>"
    columns = columns or list(rows[0])

    def cell(v):
        if isinstance(v, float):
            return "n/a" if np.isnan(v) else f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
        return html.escape(str(v))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<div style='overflow-x:auto'><table><tr>{head}</tr>{body}</table></div>"


CONDITION_COLORS = {"before": "tab:gray", "histmatch": "tab:orange"}  # the method that was run: tab:blue


def _color(condition: str) -> str:
    return CONDITION_COLORS.get(condition, "tab:blue")


def _grouped_bars(ax, rows: list[dict], group_key: str, value_key: str, conditions: list[str]) -> None:
    """Bars of ``value_key`` per ``group_key`` (x) and condition (colour)."""
    groups = list(dict.fromkeys(r[group_key] for r in rows))
    width = 0.8 / max(len(conditions), 1)
    for k, c in enumerate(conditions):
        values = [next((r[value_key] for r in rows if r[group_key] == g and r["condition"] == c), np.nan)
                  for g in groups]
        ax.bar(np.arange(len(groups)) + (k - (len(conditions) - 1) / 2) * width, values, width, label=c,
               color=_color(c))
    ax.set_xticks(range(len(groups)), groups, fontsize=8)


def _legend_above(ax) -> None:
    """The legend in one row above the axes, where no bar can hide under it (bars reach 1 on the eta-squared
    and SSIM plots)."""
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, fontsize=7, ncol=len(labels), loc="lower left", bbox_to_anchor=(0, 1.01),
              frameon=False, borderaxespad=0)


def _downstream_figures(tables: dict[str, list[dict]], conditions: list[str]) -> list[tuple[str, str]]:
    """(title, data URI) of the site-effect, classifier, traveling-subject and age figures that have data."""
    figures = []
    if tables["site_effects"]:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
        _grouped_bars(axes[0], tables["site_effects"], "tissue", "eta2", conditions)
        axes[0].set_ylabel("eta-squared of scanner")
        _legend_above(axes[0])
        rows = tables["classifier"]
        axes[1].bar(range(len(rows)), [r["accuracy"] for r in rows], color=[_color(r["condition"]) for r in rows])
        axes[1].set_xticks(range(len(rows)), [r["condition"] for r in rows], fontsize=8)
        chance = tables["classifier"][0]["chance"]
        axes[1].axhline(chance, color="k", ls="--", lw=1, label=f"chance {chance:.2f}")
        axes[1].set_ylim(0, 1)
        axes[1].set_ylabel("site classifier accuracy")
        _legend_above(axes[1])
        figures.append(("Scanner effect on tissue volumes (left) and site classifier accuracy (right): lower is "
                        "better", figure_to_data_uri(fig)))
    if tables["scanner_means"]:
        tissues = [k.removesuffix("_mL") for k in tables["scanner_means"][0] if k.endswith("_mL")]
        fig, axes = plt.subplots(1, len(tissues), figsize=(11, 3.4))
        scanners = list(dict.fromkeys(r["scanner"] for r in tables["scanner_means"]))
        for ax, t in zip(axes, tissues):
            for k, c in enumerate(conditions):
                ys = [next(r[f"{t}_mL"] for r in tables["scanner_means"] if r["scanner"] == s and r["condition"] == c)
                      for s in scanners]
                ax.plot(np.arange(len(scanners)) + 0.1 * (k - 1), ys, "o", color=_color(c), label=c)
            ax.set_xticks(range(len(scanners)), scanners, rotation=30, ha="right", fontsize=6)
            ax.set_title(f"{t} (mL)", fontsize=9)
        axes[0].legend(fontsize=7)
        figures.append(("Mean tissue volume per scanner", figure_to_data_uri(fig)))
    if tables["traveling"]:
        rows = [dict(r, pair=f"{r['subject']}: {r['job_a'].split('_')[1]}-{r['job_b'].split('_')[1]}")
                for r in tables["traveling"]]
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
        for ax, key, label in ((axes[0], "ssim", "SSIM"), (axes[1], "abs_dGM_mL", "|GM volume difference| (mL)")):
            _grouped_bars(ax, rows, "pair", key, conditions)
            ax.set_ylabel(label)
            ax.tick_params(axis="x", labelrotation=30, labelsize=6)
        _legend_above(axes[0])
        figures.append(("Traveling subjects: agreement of the same subject's sessions on two scanners (SSIM after "
                        "rigid registration: higher is better; volume difference: lower is better)",
                        figure_to_data_uri(fig)))
    if tables["age"]:
        fig, ax = plt.subplots(figsize=(6, 3))
        _grouped_bars(ax, tables["age"], "tissue", "r", conditions)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylabel("Pearson r with age")
        _legend_above(ax)
        figures.append(("Biology kept: correlation of tissue volumes with age (should not shrink towards 0)",
                        figure_to_data_uri(fig)))
    return figures


def _mean_over(rows: list[dict], condition: str, key: str) -> float:
    values = [r[key] for r in rows if r["condition"] == condition and not np.isnan(r[key])]
    return float(np.mean(values)) if values else float("nan")


def downstream_summary(tables: dict[str, list[dict]], conditions: list[str]) -> list[dict]:
    """One row per measure, one column per condition: the numbers the report puts side by side."""
    measures = [("mean eta-squared of scanner on GM/WM/CSF volume (lower is better)", "site_effects", "eta2"),
                ("mean partial eta-squared of scanner given subject (lower is better)", "site_effects", "partial_eta2"),
                ("site classifier accuracy (lower is better)", "classifier", "accuracy"),
                ("site classifier chance level (most common scanner)", "classifier", "chance"),
                ("traveling subjects: mean PSNR dB (higher is better)", "traveling", "psnr_dB"),
                ("traveling subjects: mean SSIM (higher is better)", "traveling", "ssim"),
                ("traveling subjects: mean |GM difference| mL (lower is better)", "traveling", "abs_dGM_mL"),
                ("traveling subjects: mean |WM difference| mL (lower is better)", "traveling", "abs_dWM_mL"),
                ("mean |r| of tissue volumes with age (biology; should stay)", "age", "abs_r")]
    age_rows = [dict(r, abs_r=abs(r["r"])) for r in tables["age"]]
    out = []
    for label, table, key in measures:
        rows = age_rows if table == "age" else tables[table]
        if rows:
            out.append({"measure": label, **{c: _mean_over(rows, c, key) for c in conditions}})
    return out


def condition_label(condition: str, method: str) -> str:
    """A version's name in the group report: before is method none; the method that was run; histmatch."""
    if condition == "before":
        return "before (method none)"
    if condition == method:
        return f"{condition} (the method run)"
    return "histmatch (computed here)" if condition == "histmatch" else condition


def _best(values: dict[str, float], higher: bool) -> str:
    """The condition with the best value (ties within 0.5 % of the range of values: all tied ones), or n/a."""
    finite = {c: v for c, v in values.items() if v is not None and np.isfinite(v)}
    if not finite:
        return "n/a"
    best = max(finite.values()) if higher else min(finite.values())
    tolerance = 1e-9 + 0.005 * max(abs(v) for v in finite.values())
    winners = [c for c, v in finite.items() if abs(v - best) <= tolerance]
    return winners[0] if len(winners) == 1 else "tie: " + ", ".join(winners)


def group_verdict(tables: dict[str, list[dict]], conditions: list[str], separability: dict[str, float]) -> list[dict]:
    """One row per measure: its value per condition (before, the method run, histmatch), whether lower or higher
    is better, and which condition wins (``best``; "n/a" where the measure could not be computed)."""
    from .site_effects import TISSUES

    rows = []

    def add(measure: str, higher: bool, values: dict[str, float], note: str = "") -> None:
        rows.append({"measure": measure, "better": "higher" if higher else "lower", **values,
                     "best": _best(values, higher), "note": note})

    def effect(tissue: str, key: str) -> dict[str, float]:
        return {c: next((r.get(key, np.nan) for r in tables["site_effects"]
                         if r["condition"] == c and r["tissue"] == tissue), np.nan) for c in conditions}

    for t in TISSUES:
        values = effect(t, "eta2")
        add(f"scanner effect on {t} volume (eta-squared)", False, values,
            "" if any(np.isfinite(v) for v in values.values()) else
            "not computed: needs two scanners or more and more images than scanners")
    for t in TISSUES:
        values = effect(t, "partial_eta2")
        if any(np.isfinite(v) for v in values.values()):
            add(f"scanner effect on {t} volume given subject (partial eta-squared)", False, values)
    chance = next((r["chance"] for r in tables["classifier"] if np.isfinite(r.get("chance", np.nan))), np.nan)
    accuracy = {c: next((r["accuracy"] for r in tables["classifier"] if r["condition"] == c), np.nan)
                for c in conditions}
    add("site classifier accuracy" + (f" (chance {chance:.2f})" if np.isfinite(chance) else ""), False, accuracy,
        "" if any(np.isfinite(v) for v in accuracy.values()) else
        "not run: it needs two scanners or more, and two images or more of each when there are two")
    if tables["traveling"]:
        add("traveling subjects: SSIM of the same subject's two scanners", True,
            {c: _mean_over(tables["traveling"], c, "ssim") for c in conditions})
        add("traveling subjects: PSNR (dB)", True, {c: _mean_over(tables["traveling"], c, "psnr_dB") for c in conditions})
        for t in TISSUES:
            add(f"traveling subjects: |{t} volume difference| (mL)", False,
                {c: _mean_over(tables["traveling"], c, f"abs_d{t}_mL") for c in conditions})
    else:
        add("traveling subjects (same subject on two scanners)", True, {c: np.nan for c in conditions},
            "no subject was seen on two scanners")
    add("intensity separability of the scanners (mean pairwise Wasserstein-1)", False,
        {c: separability.get(c, np.nan) for c in conditions},
        "histogram matching reaches 0 by construction" if "histmatch" in conditions else "")
    return rows


def _verdict_table(rows: list[dict], conditions: list[str], method: str) -> str:
    """The group verdict as an HTML table, the winner of each row in bold on green."""
    head = ("<tr><th style='text-align:left'>measure</th><th>better</th>"
            + "".join(f"<th>{html.escape(condition_label(c, method))}</th>" for c in conditions)
            + "<th>best</th><th style='text-align:left'>note</th></tr>")

    def cell(row, c):
        v = row[c]
        text = "n/a" if v is None or not np.isfinite(v) else f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
        won = row["best"] == c or (row["best"].startswith("tie: ") and c in row["best"][5:].split(", "))
        return f"<td style='background:#e6f4e6'><b>{text}</b></td>" if won else f"<td>{text}</td>"

    body = "".join(
        f"<tr><td style='text-align:left'>{html.escape(r['measure'])}</td><td>{r['better']}</td>"
        + "".join(cell(r, c) for c in conditions)
        + f"<td>{html.escape(r['best'])}</td><td style='text-align:left'>{html.escape(r['note'])}</td></tr>"
        for r in rows)
    return f"<table>{head}{body}</table>"


def _verdict_sentence(rows: list[dict], conditions: list[str], method: str) -> str:
    """How many measures each version wins (ties and measures that could not be computed apart)."""
    decided = [r for r in rows if r["best"] != "n/a"]
    wins = {c: sum(r["best"] == c for r in decided) for c in conditions}
    ties = sum(r["best"].startswith("tie") for r in decided)
    counts = ", ".join(f"{condition_label(c, method)} {wins[c]}" for c in conditions)
    missing = len(rows) - len(decided)
    return (f"Best of {len(decided)} measure{'s' if len(decided) != 1 else ''}: {counts}"
            + (f", tied {ties}" if ties else "")
            + (f" ({missing} could not be computed on this dataset)" if missing else "") + ".")


def group_report_html(records: list[dict], separability: dict[str, float], failed: list[str],
                      tables: dict[str, list[dict]] | None = None,
                      targets: dict[str, tuple[str, np.ndarray]] | None = None) -> str:
    """The group report: a verdict table first (per measure, which of before, the method run and histogram
    matching wins), then the downstream site effects per condition (``tables`` of ``group.downstream_tables``),
    per-scanner intensity distributions before and after (with each contrast's target histogram, ``targets``:
    suffix -> (model name, quantiles)), separability per condition (``separability``), failures."""
    method = records[0]["method"] if records else ""
    rows = "".join(
        f"<tr><td style='text-align:left'>{html.escape(r['job'])}</td><td style='text-align:left'>"
        f"{html.escape(r['scanner'])}</td><td>{html.escape(r['method'])}</td>"
        f"<td>{np.median(r['before']):.3f}</td><td>{np.median(r['after']):.3f}</td></tr>" for r in records)
    failed_html = ("<p>None.</p>" if not failed else
                   "<ul>" + "".join(f"<li class='bad'>{html.escape(f)}</li>" for f in failed) + "</ul>")
    conditions = (list(dict.fromkeys(r["condition"] for r in tables["volumes"])) if tables
                  else [c for c in separability])
    verdict = ""
    downstream = ""
    if tables:
        verdict_rows = group_verdict(tables, conditions, separability)
        verdict = ("<h2>Did it work? The verdict per measure</h2>"
                   f"<p><b>{html.escape(_verdict_sentence(verdict_rows, conditions, method))}</b> Each row compares "
                   "the preprocessed images (<i>before</i>, method none), the method that was run and histogram "
                   "matching to the model's target histogram computed here from the same images; the best value of "
                   "each row is on green (values within 0.5 % of each other tie). Scanner effects and the site classifier want low values (the scanner "
                   "should not show), traveling subjects high agreement and small volume differences.</p>"
                   + _verdict_table(verdict_rows, conditions, method)
                   + ("" if not failed else f"<p class='bad'>{len(failed)} job(s) failed: see the end of this "
                                            "report.</p>"))
        figures = "".join(f"<h3>{html.escape(t)}</h3><img alt='{html.escape(t)}' src='{uri}'>"
                          for t, uri in _downstream_figures(tables, conditions))
        travel_note = ("" if tables["traveling"] else
                       "<p>No subject was seen on two scanners: no traveling-subject comparison.</p>")
        age_note = "" if tables["age"] else "<p>participants.tsv gives no usable age: no age correlation.</p>"
        downstream = (
            "<h2>Downstream site effects, side by side</h2>"
            f"<p>Versions compared: {', '.join(conditions)}. <i>before</i> is the preprocessed image; histogram "
            "matching (<i>histmatch</i>) is computed here from the same preprocessed image and the model's target "
            "histogram. Tissues: 3 Gaussian classes with a light MRF prior (Atropos's model, k-means "
            "initialization) in the brain mask, volumes in mL of template space. Site classifier: a ridge "
            "classifier on intensity percentiles, tissue medians, GM/WM contrast and WM texture, leave-one-out "
            "cross-validation, permutation p-value. Traveling pairs: the second session rigidly registered onto "
            "the first (ANTs QuickRigid).</p>"
            + _table(downstream_summary(tables, conditions)) + travel_note + age_note + figures
            + "<h3>Scanner effect per tissue (one-way ANOVA)</h3>" + _table(tables["site_effects"])
            + "<h3>Site classifier</h3>" + _table(tables["classifier"])
            + "<h3>Traveling-subject pairs</h3>" + _table(tables["traveling"])
            + ("<h3>Correlation with age</h3>" + _table(tables["age"]) if tables["age"] else "")
            + "<h3>Mean tissue volumes per scanner</h3>" + _table(tables["scanner_means"]))
    separability_rows = "".join(
        f"<tr><td style='text-align:left'>{html.escape(condition_label(c, method))}</td>"
        f"<td>{_number(separability[c])}</td></tr>" for c in separability)
    body = (
        f"<p>{len(records)} harmonized images from {len({r['scanner'] for r in records})} scanners; method "
        f"<b>{html.escape(method or '?')}</b>.</p>"
        + verdict + downstream +
        "<h2>Site separability of the intensity histograms</h2>"
        "<p>Mean pairwise Wasserstein-1 distance between the scanners' pooled brain intensity distributions "
        "(lower: sites harder to tell apart; histogram matching drives it to zero by construction).</p>"
        f"<table><tr><th style='text-align:left'>version</th><th>separability</th></tr>{separability_rows}</table>"
        "<h2>Intensity distributions per scanner (after: with the model's target histogram, dashed)</h2>"
        f"<img alt='histograms' src='{_site_histograms(records, targets)}'>"
        f"<h2>Median brain intensity per image</h2><img alt='medians' src='{_median_plot(records)}'>"
        "<h2>Images</h2><table><tr><th>job</th><th>scanner</th><th>method</th><th>median before</th>"
        f"<th>median after</th></tr>{rows}</table>"
        f"<h2>Failed jobs (crash files in logs/)</h2>{failed_html}")
    return html_page("bhd group report", body)


# ----------------------------------------------------------------------------------------- the per-job report

# Warning thresholds of the per-job verdict (``verdict``). The rim step is measured on the change that one
# intensity mapping of the input does not explain (``intensity_mapped``). On two T1w jobs of the example dataset
# at the defaults of 2026-12-07 it was -0.003 and -0.000, the edge share 0-1 % (0.1 x the border's share); a rim
# darkened or brightened by 0.1 gave rim steps of 0.058-0.065. One T1w job with 4 draws had a brain median
# standard deviation of 0.022 and a smoothed peak of 0.21.
RIM_STEP = 0.04  # |mean unexplained change in the outer 2 voxels - that 3-6 voxels in| above this: a rim
EDGE_SHARE = 0.5  # of the 1 % largest changes within 2 voxels of the brain mask's border, ...
EDGE_ENRICHMENT = 3.0  # ... and that many times the border's share of the brain
MOVED_AWAY = 0.005  # distance to the target histogram grown by more than this (0-1 image units)
WEAK_NCC = 0.9  # NCC(harmonized, preprocessed) below this for a T1w input: the anatomy is not followed
UNSURE_MEDIAN = 0.1  # brain median of the uncertainty map above this (0-1 image units): unsure everywhere
UNSURE_PEAK = 0.35  # smoothed (sigma 2 voxels) uncertainty above this somewhere in the brain: unsure there


def distance_to_target(values: np.ndarray, quantiles: np.ndarray) -> float:
    """Wasserstein-1 (earth mover's) distance between the intensities ``values`` and the distribution whose
    quantiles at evenly spaced levels 0..1 are ``quantiles`` (the model's target histogram): the mean absolute
    difference of the two quantile functions, in image units (0-1 scale)."""
    levels = np.linspace(0, 1, len(quantiles))
    return float(np.mean(np.abs(np.quantile(values, levels) - np.asarray(quantiles, np.float64))))


def intensity_mapped(preproc: np.ndarray, harmonized: np.ndarray, brain: np.ndarray, bins: int = 64) -> np.ndarray:
    """The part of the harmonized image that one intensity mapping of the input explains: each brain voxel gets
    the mean harmonized value of the brain voxels in its preprocessed-intensity bin (``bins`` even bins over the
    brain's range); the input's values outside the brain.

    A rim test on ``harmonized - intensity_mapped(...)`` asks whether the brain's edge changed unlike the tissue
    of the same input intensity inside it: partial-volume voxels at the edge are darker than the tissue, and any
    intensity mapping (histogram matching included) moves dark voxels differently from bright ones.
    """
    values = preproc[brain]
    edges = np.linspace(values.min(), values.max() + 1e-6, bins + 1)
    index = np.clip(np.digitize(values, edges) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    means = np.bincount(index, weights=harmonized[brain], minlength=bins) / np.maximum(counts, 1)
    mapped = preproc.astype(np.float32).copy()
    mapped[brain] = means[index]
    return mapped


def verdict(preproc: np.ndarray, harmonized: np.ndarray, mask: np.ndarray, target_quantiles: np.ndarray | None,
            uncertainty: np.ndarray | None = None, contrast: str = "T1w") -> dict:
    """The numbers and warnings that open a job's report ("did it work?").

    ``distance_before``/``distance_after``: ``distance_to_target`` of the brain voxels of the preprocessed and
    harmonized images (None without the model's target histogram); ``rms``/``p99``: root mean square and 99th
    percentile of |harmonized - preprocessed| in the brain; ``edge_share``: the share of the 1 % largest changes
    within 2 voxels of the brain mask's border, ``border_share`` that border's share of the brain; ``rim_step``:
    the mean change in those outer voxels minus that 3-6 voxels in, of the change no intensity mapping explains
    (``intensity_mapped``); ``warnings``: plain sentences, empty when nothing looks wrong.
    """
    from scipy import ndimage

    from ..method.metrics import ncc

    brain = mask > 0
    out: dict = {"warnings": [], "distance_before": None, "distance_after": None}
    if not brain.any():
        out["warnings"].append("The brain mask is empty: nothing was harmonized.")
        return out
    change = np.abs(harmonized - preproc)
    out["rms"] = float(np.sqrt(np.mean(change[brain] ** 2)))
    out["p99"] = float(np.percentile(change[brain], 99))
    out["ncc"] = ncc(harmonized, preproc, mask)
    if target_quantiles is not None:
        out["distance_before"] = distance_to_target(preproc[brain], target_quantiles)
        out["distance_after"] = distance_to_target(harmonized[brain], target_quantiles)
    inner = ndimage.binary_erosion(brain, iterations=2)
    border, shell = brain & ~inner, inner & ~ndimage.binary_erosion(brain, iterations=6)
    out["border_share"] = float(border.sum() / brain.sum())
    top = brain & (change >= out["p99"]) if out["p99"] > 0 else np.zeros_like(brain)
    out["edge_share"] = float((top & border).sum() / max(top.sum(), 1))
    signed = harmonized - intensity_mapped(preproc, harmonized, brain)
    out["rim_step"] = float(signed[border].mean() - signed[shell].mean()) if shell.any() and border.any() else 0.0
    warnings = out["warnings"]
    if out["p99"] == 0:
        warnings.append("The harmonized image equals the preprocessed image: nothing was changed.")
    if out["distance_after"] is not None and out["distance_after"] > out["distance_before"] + MOVED_AWAY:
        warnings.append(f"The brain's intensity histogram moved away from the target histogram (distance "
                        f"{out['distance_before']:.3f} -> {out['distance_after']:.3f}): check the model and the input's "
                        "contrast.")
    concentrated = (out["p99"] > 0 and out["edge_share"] >= EDGE_SHARE
                    and out["edge_share"] >= EDGE_ENRICHMENT * out["border_share"])
    if abs(out["rim_step"]) > RIM_STEP or concentrated:
        warnings.append(f"The brain's edge changed unlike the tissue inside it (a "
                        f"{'darkened' if out['rim_step'] < 0 else 'brightened'} rim?): beyond what one intensity mapping "
                        f"of the input explains, the change in the outer 2 voxels differs from the change in the next "
                        f"4 voxels inward by {out['rim_step']:+.3f}, and "
                        f"{100 * out['edge_share']:.0f} % of the 1 % largest changes lie in those outer voxels (which "
                        f"hold {100 * out['border_share']:.0f} % of the brain). Check the brain mask and the harmonized "
                        "image's outer cortex.")
    if contrast == "T1w" and out["ncc"] < WEAK_NCC:
        warnings.append(f"The harmonized image follows the input's anatomy weakly (NCC {out['ncc']:.3f} in the brain, "
                        f"below {WEAK_NCC}): look for structure that is not in the input.")
    if uncertainty is not None and np.any(uncertainty[brain] > 0):
        median = float(np.median(uncertainty[brain]))
        smooth = ndimage.gaussian_filter(np.asarray(uncertainty, np.float32), 2.0)
        peak = float(smooth[brain].max())
        out["uncertainty_median"], out["uncertainty_peak"] = median, peak
        if median > UNSURE_MEDIAN:
            warnings.append(f"The draws disagree across the brain (median standard deviation {median:.3f}, above "
                            f"{UNSURE_MEDIAN}): the harmonized intensities are uncertain.")
        elif peak > UNSURE_PEAK:
            warnings.append(f"The draws disagree in one region (smoothed standard deviation {peak:.2f}, above "
                            f"{UNSURE_PEAK}, against a brain median of {median:.3f}): see the uncertainty map below "
                            "for where.")
    return out


def _verdict_html(v: dict, model_label: str) -> str:
    """The verdict section's text: a headline and the numbers behind it."""
    ok = not v["warnings"]
    headline = ("No warning signs." if ok else
                f"{len(v['warnings'])} warning sign{'s' if len(v['warnings']) > 1 else ''}: "
                + " ".join(v["warnings"]))
    items = []
    if v["distance_before"] is not None:
        before, after = v["distance_before"], v["distance_after"]
        moved = (f"{100 * (before - after) / before:.0f} % closer" if after <= before and before > 0 else
                 "no closer") + ("; the input was already close to the target" if before < 0.02 else "")
        items.append(f"Distance to the target histogram{f' of {model_label}' if model_label else ''} "
                     f"<b>{before:.3f} -&gt; {after:.3f}</b> ({moved}; Wasserstein-1 distance between the brain's "
                     "intensities and the model's target-domain histogram, 0-1 image units; histogram matching "
                     "alone would reach 0).")
    else:
        items.append("Distance to the target histogram: not measured (no model).")
    if "rms" in v:
        items.append(f"Change in the brain (harmonized - preprocessed): <b>RMS {v['rms']:.3f}</b>, 99th percentile "
                     f"of |change| <b>{v['p99']:.3f}</b> (0-1 image units); NCC(harmonized, preprocessed) "
                     f"{v['ncc']:.3f}.")
        items.append(f"The brain's edge: {100 * v['edge_share']:.0f} % of the 1 % largest changes lie within 2 voxels "
                     f"of the brain mask's border, which holds {100 * v['border_share']:.0f} % of the brain; beyond "
                     f"one intensity mapping of the input, the change there differs from the change just inside by "
                     f"{v['rim_step']:+.3f} (a warning above "
                     f"{RIM_STEP}).")
    if "uncertainty_median" in v:
        items.append(f"Uncertainty (standard deviation over the draws): brain median {v['uncertainty_median']:.4f}, "
                     f"smoothed peak {v['uncertainty_peak']:.4f}.")
    colour = "#e6f4e6" if ok else "#fdecea"
    return (f"<div style='background:{colour};padding:0.6em 1em;border-radius:4px'>"
            f"<p style='font-size:1.15em;margin:0.2em 0'><b>{html.escape(headline)}</b></p><ul>"
            + "".join(f"<li>{item}</li>" for item in items) + "</ul></div>")


def _histogram_figure(preproc: np.ndarray, harmonized: np.ndarray, mask: np.ndarray,
                      target_quantiles: np.ndarray | None, model_label: str) -> str:
    """The brain's intensity histogram before and after, with the model's target histogram."""
    brain = mask > 0
    fig, ax = plt.subplots(figsize=(7, 2.8))
    bins = np.linspace(0, 1, 65)
    ax.hist(preproc[brain], bins=bins, density=True, histtype="step", lw=1.6, color="tab:gray",
            label="preprocessed (before)")
    ax.hist(harmonized[brain], bins=bins, density=True, histtype="step", lw=1.8, color="tab:blue",
            label="harmonized (after)")
    if target_quantiles is not None:
        ax.plot(*_target_density(np.asarray(target_quantiles), bins), "k--", lw=1.4,
                label=f"target{f' ({model_label})' if model_label else ''}")
    ax.set_xlabel("intensity in the brain (0-1 image units)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8, frameon=False)
    return figure_to_data_uri(fig)


def _slice_picks(volume: np.ndarray, n: int = 5) -> np.ndarray:
    """``n`` axial slice indices spread over the non-zero extent of a volume (RAS grid: last axis is z)."""
    nz = np.nonzero(volume.any(axis=(0, 1)))[0]
    lo, hi = (nz[0], nz[-1]) if nz.size else (0, volume.shape[2] - 1)
    return np.linspace(lo + 0.2 * (hi - lo), hi - 0.15 * (hi - lo), n).astype(int)


def _slices(volume: np.ndarray, n: int = 5, picks: np.ndarray | None = None) -> list[np.ndarray]:
    """Axial slices of a volume at ``picks`` (default: ``_slice_picks``), shown with x across and y up."""
    picks = _slice_picks(volume, n) if picks is None else picks
    return [volume[:, :, k].T for k in picks]


Contour = tuple[np.ndarray, float, str]  # (volume, iso-level, colour)


def mosaic(rows: list[tuple[str, np.ndarray, dict]], contours: dict[int, list[Contour]] | None = None, *,
           picks: np.ndarray | None = None, affine: np.ndarray | None = None,
           colorbar: dict[int, str] | None = None) -> str:
    """A grid of axial slices, one row per (label, volume, imshow options), as a data URI.

    Every row and contour shows the same slices: ``picks`` (default: spread over the first row's volume).
    ``contours`` maps a row index to the iso-lines drawn over that row's slices; with ``affine`` (the grid's
    voxel-to-mm map) each column is titled with its z in mm; ``colorbar`` maps a row index to its colour bar's
    label.
    """
    n = 5
    contours, colorbar = contours or {}, colorbar or {}
    picks = _slice_picks(rows[0][1], n) if picks is None else np.asarray(picks)
    fig, axes = plt.subplots(len(rows), n, figsize=(2.1 * n, 2.3 * len(rows)), squeeze=False)
    for r, (label, volume, opts) in enumerate(rows):
        shown = None
        for c, sl in enumerate(_slices(volume, n, picks)):
            ax = axes[r, c]
            shown = ax.imshow(sl, origin="lower", **({"cmap": "gray"} | opts))
            for line_volume, level, color in contours.get(r, []):
                ax.contour(_slices(line_volume, n, picks)[c], levels=[level], colors=color, linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if affine is not None and r == len(rows) - 1:
                z = (np.asarray(affine) @ np.array([0.0, 0.0, float(picks[c]), 1.0]))[2]
                ax.set_xlabel(f"z = {z:.0f} mm", fontsize=8)
        axes[r, 0].set_title(label, fontsize=9, loc="left")
        if r in colorbar and shown is not None:
            bar = fig.colorbar(shown, ax=list(axes[r]), fraction=0.025, pad=0.01)
            bar.set_label(colorbar[r], fontsize=8)
            bar.ax.tick_params(labelsize=7)
    if not colorbar:
        fig.subplots_adjust(wspace=0.02, hspace=0.15)
    return figure_to_data_uri(fig)


def native_mosaic(volume: np.ndarray, zooms: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> str:
    """The middle sagittal, coronal and axial slices of an image on its own grid, turned to RAS (axis 0 left to
    right, 1 back to front, 2 down to up; ``zooms``: its voxel sizes in mm), each titled with its slice."""
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.6))
    views = (("sagittal", 0, (1, 2)), ("coronal", 1, (0, 2)), ("axial", 2, (0, 1)))
    for ax, (name, axis, (across, up)) in zip(axes, views):
        k = volume.shape[axis] // 2
        sl = np.take(volume, k, axis=axis).T
        hi = float(np.percentile(volume, 99.5)) or 1.0
        ax.imshow(sl, cmap="gray", origin="lower", vmin=0, vmax=hi, aspect=zooms[up] / zooms[across])
        ax.set_title(f"{name}, slice {k + 1} of {volume.shape[axis]}", fontsize=9)
        ax.set_axis_off()
    return figure_to_data_uri(fig)


def least_sure(uncertainty: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> str:
    """One sentence on where the model is least sure: the peak of the smoothed uncertainty map (D, H, W).

    The map is smoothed (Gaussian, sigma 2 voxels) so that one noisy voxel does not decide; the peak
    is given in the grid's millimetre coordinates (MNI for the harmonization grid), with how many
    of the 1 % most uncertain brain voxels lie within 2 voxels of the brain mask's border.
    """
    from scipy import ndimage

    brain = mask > 0
    if not brain.any() or not np.any(uncertainty[brain] > 0):
        return "The draws agree everywhere: the uncertainty map is zero in the brain."
    smooth = ndimage.gaussian_filter(np.asarray(uncertainty, np.float32), 2.0)
    smooth[~brain] = 0
    peak = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    x, y, z = (affine @ np.array([*peak, 1.0]))[:3]
    median = float(np.median(uncertainty[brain]))
    top = brain & (uncertainty >= np.percentile(uncertainty[brain], 99))
    border = brain & ~ndimage.binary_erosion(brain, iterations=2)
    at_border = 100.0 * (top & border).sum() / max(top.sum(), 1)
    return (f"The model is least sure around ({x:.0f}, {y:.0f}, {z:.0f}) mm: the smoothed standard deviation "
            f"over the draws peaks there at {smooth[peak]:.3f} ({smooth[peak] / max(median, 1e-6):.1f} x the "
            f"brain median {median:.4f}); {at_border:.0f} % of the 1 % most uncertain brain voxels lie within "
            "2 voxels of the brain mask's border. Check the harmonized image there (a lesion, an artefact or "
            "a registration error are the usual causes).")


def _fact_value(value) -> str:
    """A provenance value as readable text: lists and dicts without Python's brackets and quotes."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fact_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_fact_value(v) for v in value)
    return str(value)


AXIAL = "axial slices seen from above, the subject's left on the left"


def participant_report_html(title: str, native: np.ndarray, preproc: np.ndarray, mask: np.ndarray,
                            template: np.ndarray, edges: np.ndarray, harmonized: np.ndarray, facts: dict,
                            uncertainty: np.ndarray | None = None, affine: np.ndarray | None = None, *,
                            target_quantiles: np.ndarray | None = None, model_label: str = "",
                            native_label: str = "input", native_zooms: tuple[float, float, float] = (1, 1, 1),
                            contrast: str = "T1w") -> str:
    """One job's report: the verdict first ("did it work?": ``verdict`` against the model's target histogram
    ``target_quantiles``), then the harmonization and its difference map, the uncertainty, the input, the
    preprocessing and registration, the edge map, and the provenance (``facts``).

    ``native`` is the input on its own grid turned to RAS (``native_zooms``: its voxel sizes); the other volumes
    are on the harmonization grid, whose voxel-to-mm map is ``affine``. With ``uncertainty`` (the per-voxel
    standard deviation over the draws), a section shows it and says where the model is least sure.
    """
    template = template / (float(np.percentile(template[template > 0], 99)) or 1.0)
    outline, white_matter = (template, 0.05, "tab:red"), (template, 0.84, "yellow")  # brain; grey/white border
    difference = harmonized - preproc
    # 99th percentile inside the brain: a few extreme voxels must not wash the map out.
    limit = float(np.percentile(np.abs(difference[mask > 0]), 99)) if mask.any() else 0.0
    limit = limit or 1.0
    gray01 = {"vmin": 0, "vmax": 1}
    picks = _slice_picks(mask if mask.any() else preproc)
    grid = {"picks": picks, "affine": affine}
    checks = verdict(preproc, harmonized, mask, target_quantiles, uncertainty, contrast)
    body = ("<h2>Did it work?</h2>" + _verdict_html(checks, model_label)
            + "<h3>The brain's intensity histogram before and after, and the target's</h3>"
            + f"<img alt='brain intensity histograms' src='{_histogram_figure(preproc, harmonized, mask, target_quantiles, model_label)}'>")
    sections = [
        (f"Harmonization: the preprocessed image (before) and the harmonized image (after), template grid, {AXIAL}",
         mosaic([("preprocessed (before)", preproc, gray01), ("harmonized (after)", harmonized, gray01)], **grid)),
        (f"Difference map: harmonized - preprocessed (red: brighter after, blue: darker after; colour range "
         f"+/- {limit:.3f}, the 99th percentile of |difference| in the brain)",
         mosaic([("harmonized - preprocessed", difference, {"cmap": "RdBu_r", "vmin": -limit, "vmax": limit})],
                colorbar={0: "difference (image units, 0-1 scale)"}, **grid)),
    ]
    figures = "".join(f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='{uri}'>" for t, uri in sections)
    body += figures
    if uncertainty is not None:
        top = float(np.percentile(uncertainty[mask > 0], 99.5)) if mask.any() else 0.0
        uri = mosaic([("uncertainty (SD over draws)", uncertainty, {"cmap": "magma", "vmin": 0, "vmax": top or 1.0})],
                     {0: [(mask, 0.5, "cyan")]}, colorbar={0: "standard deviation (image units, 0-1 scale)"}, **grid)
        sentence = least_sure(uncertainty, mask, np.eye(4) if affine is None else affine)
        body += (f"<h2>Uncertainty map: standard deviation over the draws (colour range 0 to {top:.3f}, the 99.5th "
                 f"percentile in the brain)</h2><img alt='uncertainty map' src='{uri}'><p>{html.escape(sentence)}</p>")
    sections = [
        (f"Input: {native_label} on its own grid (middle sagittal, coronal and axial slices, turned to RAS for "
         "display: the subject's front on the right, left on the left)", native_mosaic(native, native_zooms)),
        (f"Preprocessed image with the brain mask (red), template grid, {AXIAL}",
         mosaic([("preprocessed", preproc, gray01)], {0: [(mask, 0.5, "tab:red")]}, **grid)),
        ("Registration: the template's brain outline (red) and grey/white border (yellow) over the registered "
         "image, and the template itself",
         mosaic([("registered (preprocessed)", preproc, gray01), ("template", template, gray01)],
                {0: [outline, white_matter], 1: [outline, white_matter]}, **grid)),
        ("Edge map the model was conditioned on (section 3.2)", mosaic([("edge map", edges, {"cmap": "gray"})], **grid)),
    ]
    body += "".join(f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='{uri}'>" for t, uri in sections)
    rows = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td style='text-align:left'>"
                   f"<code>{html.escape(_fact_value(value))}</code></td></tr>" for k, value in facts.items())
    body += f"<h2>Metrics and provenance</h2><table>{rows}</table>"
    return html_page(title, body)
