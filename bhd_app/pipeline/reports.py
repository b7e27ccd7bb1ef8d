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


def _site_histograms(records: list[dict]) -> str:
    sites = sorted({r["scanner"] for r in records})
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    bins = np.linspace(0, 1, 65)
    colors = plt.cm.tab10(np.linspace(0, 1, 10))
    for ax, key, title in zip(axes, ("before", "after"), ("before harmonization", "after harmonization")):
        for k, site in enumerate(sites):
            values = np.concatenate([r[key] for r in records if r["scanner"] == site])
            ax.hist(values, bins=bins, density=True, histtype="step", lw=1.6, color=colors[k % 10], label=site)
        ax.set_title(title)
        ax.set_xlabel("normalized intensity in the brain")
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
    return f"<table><tr>{head}</tr>{body}</table>"


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


def group_report_html(records: list[dict], separability_before: float, separability_after: float,
                      failed: list[str], tables: dict[str, list[dict]] | None = None) -> str:
    """The group report: downstream site effects per condition (``tables`` of ``group.downstream_tables``),
    per-scanner intensity distributions before and after, separability, failures."""
    rows = "".join(
        f"<tr><td style='text-align:left'>{html.escape(r['job'])}</td><td style='text-align:left'>"
        f"{html.escape(r['scanner'])}</td><td>{html.escape(r['method'])}</td>"
        f"<td>{np.median(r['before']):.3f}</td><td>{np.median(r['after']):.3f}</td></tr>" for r in records)
    failed_html = ("<p>None.</p>" if not failed else
                   "<ul>" + "".join(f"<li class='bad'>{html.escape(f)}</li>" for f in failed) + "</ul>")
    downstream = ""
    if tables:
        conditions = list(dict.fromkeys(r["condition"] for r in tables["volumes"]))
        figures = "".join(f"<h3>{html.escape(t)}</h3><img alt='{html.escape(t)}' src='{uri}'>"
                          for t, uri in _downstream_figures(tables, conditions))
        travel_note = ("" if tables["traveling"] else
                       "<p>No subject was seen on two scanners: no traveling-subject comparison.</p>")
        age_note = "" if tables["age"] else "<p>participants.tsv gives no usable age: no age correlation.</p>"
        downstream = (
            "<h2>Downstream site effects, side by side</h2>"
            f"<p>Versions compared: {', '.join(conditions)}. <i>before</i> is the preprocessed image; histogram "
            "matching (<i>histmatch</i>) is computed here from the same preprocessed image and the model's target "
            "histogram. Tissues: Atropos (3 classes, k-means initialization) in the brain mask, volumes in mL of "
            "template space. Site classifier: logistic regression on intensity percentiles, tissue medians, GM/WM "
            "contrast and WM texture, leave-one-out cross-validation, permutation p-value.</p>"
            + _table(downstream_summary(tables, conditions)) + travel_note + age_note + figures
            + "<h3>Scanner effect per tissue (one-way ANOVA)</h3>" + _table(tables["site_effects"])
            + "<h3>Site classifier</h3>" + _table(tables["classifier"])
            + "<h3>Traveling-subject pairs</h3>" + _table(tables["traveling"])
            + ("<h3>Correlation with age</h3>" + _table(tables["age"]) if tables["age"] else "")
            + "<h3>Mean tissue volumes per scanner</h3>" + _table(tables["scanner_means"]))
    body = (
        f"<p>{len(records)} harmonized images from {len({r['scanner'] for r in records})} scanners.</p>"
        + downstream +
        "<h2>Site separability of the intensity histograms</h2>"
        "<p>Mean pairwise Wasserstein-1 distance between the scanners' pooled brain intensity distributions "
        "(lower: sites harder to tell apart; histogram matching drives it to zero by construction).</p>"
        f"<table><tr><th>before</th><th>after</th></tr><tr><td>{_number(separability_before)}</td>"
        f"<td>{_number(separability_after)}</td></tr></table>"
        f"<h2>Intensity distributions per scanner</h2><img alt='histograms' src='{_site_histograms(records)}'>"
        f"<h2>Median brain intensity per image</h2><img alt='medians' src='{_median_plot(records)}'>"
        "<h2>Images</h2><table><tr><th>job</th><th>scanner</th><th>method</th><th>median before</th>"
        f"<th>median after</th></tr>{rows}</table>"
        f"<h2>Failed jobs (crash files in logs/)</h2>{failed_html}")
    return html_page("bhd group report", body)


def _slices(volume: np.ndarray, n: int = 5) -> list[np.ndarray]:
    """``n`` axial slices spread over the non-zero extent of a volume (RAS grid: last axis is z)."""
    nz = np.nonzero(volume.any(axis=(0, 1)))[0]
    lo, hi = (nz[0], nz[-1]) if nz.size else (0, volume.shape[2] - 1)
    picks = np.linspace(lo + 0.2 * (hi - lo), hi - 0.15 * (hi - lo), n).astype(int)
    return [volume[:, :, k].T for k in picks]


Contour = tuple[np.ndarray, float, str]  # (volume, iso-level, colour)


def mosaic(rows: list[tuple[str, np.ndarray, dict]], contours: dict[int, list[Contour]] | None = None) -> str:
    """A grid of axial slices, one row per (label, volume, imshow options), as a data URI.

    ``contours`` maps a row index to the iso-lines drawn over that row's slices.
    """
    n = 5
    contours = contours or {}
    fig, axes = plt.subplots(len(rows), n, figsize=(2.1 * n, 2.3 * len(rows)), squeeze=False)
    for r, (label, volume, opts) in enumerate(rows):
        for c, sl in enumerate(_slices(volume, n)):
            ax = axes[r, c]
            ax.imshow(sl, origin="lower", **({"cmap": "gray"} | opts))
            for line_volume, level, color in contours.get(r, []):
                ax.contour(_slices(line_volume, n)[c], levels=[level], colors=color, linewidths=0.6)
            ax.set_axis_off()
        axes[r, 0].set_title(label, fontsize=9, loc="left")
    fig.subplots_adjust(wspace=0.02, hspace=0.15)
    return figure_to_data_uri(fig)


def native_mosaic(volume: np.ndarray) -> str:
    """Three orthogonal middle slices of an image on its native grid (as stored)."""
    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    for ax, sl in zip(axes, (volume[volume.shape[0] // 2], volume[:, volume.shape[1] // 2],
                             volume[:, :, volume.shape[2] // 2])):
        ax.imshow(np.rot90(sl), cmap="gray")
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


def participant_report_html(title: str, native: np.ndarray, preproc: np.ndarray, mask: np.ndarray,
                            template: np.ndarray, edges: np.ndarray, generated: np.ndarray,
                            harmonized: np.ndarray, facts: dict, uncertainty: np.ndarray | None = None,
                            affine: np.ndarray | None = None) -> str:
    """One job's report: input, preprocessing and registration, edge map, harmonization, provenance.

    With ``uncertainty`` (the per-voxel standard deviation over the draws, on the grid of ``preproc``
    whose voxel-to-mm map is ``affine``), a section shows it and says where the model is least sure.
    """
    template = template / (float(np.percentile(template[template > 0], 99)) or 1.0)
    outline, white_matter = (template, 0.05, "tab:red"), (template, 0.84, "yellow")  # brain; grey/white border
    difference = harmonized - preproc
    # 99th percentile inside the brain: a few extreme voxels must not wash the map out.
    limit = float(np.percentile(np.abs(difference[mask > 0]), 99)) if mask.any() else 0.0
    limit = limit or 1.0
    gray01 = {"vmin": 0, "vmax": 1}
    sections = [
        ("Input (native grid, as stored)", native_mosaic(native)),
        ("Preprocessed image with the brain mask (red)",
         mosaic([("preprocessed", preproc, gray01)], {0: [(mask, 0.5, "tab:red")]})),
        ("Registration: the template's brain outline (red) and grey/white border (yellow) over the registered "
         "image, and the template itself",
         mosaic([("registered (preprocessed)", preproc, gray01), ("template", template, gray01)],
                {0: [outline, white_matter], 1: [outline, white_matter]})),
        ("Edge map (section 3.2)", mosaic([("edge map", edges, {"cmap": "gray"})])),
        ("Harmonized image before refinement (edge-to-image output) and after refinement",
         mosaic([("preprocessed (source)", preproc, gray01), ("before refinement", generated, gray01),
                 ("after refinement (harmonized)", harmonized, gray01)])),
        (f"Difference map: harmonized - preprocessed (colour range +/- {limit:.3f}, the 99th percentile in the brain)",
         mosaic([("difference", difference, {"cmap": "RdBu_r", "vmin": -limit, "vmax": limit})])),
    ]
    body = "".join(f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='{uri}'>" for t, uri in sections)
    if uncertainty is not None:
        top = float(np.percentile(uncertainty[mask > 0], 99.5)) if mask.any() else 0.0
        uri = mosaic([("uncertainty (SD over draws)", uncertainty, {"cmap": "magma", "vmin": 0, "vmax": top or 1.0})],
                     {0: [(mask, 0.5, "cyan")]})
        sentence = least_sure(uncertainty, mask, np.eye(4) if affine is None else affine)
        body += (f"<h2>Uncertainty map: standard deviation over the draws (colour range 0 to {top:.3f}, the 99.5th "
                 f"percentile in the brain)</h2><img alt='uncertainty map' src='{uri}'><p>{html.escape(sentence)}</p>")
    rows = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td style='text-align:left'>"
                   f"<code>{html.escape(str(v))}</code></td></tr>" for k, v in facts.items())
    body += f"<h2>Metrics and provenance</h2><table>{rows}</table>"
    return html_page(title, body)
