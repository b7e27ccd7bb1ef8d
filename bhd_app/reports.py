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
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc}
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


def group_report_html(records: list[dict], separability_before: float, separability_after: float,
                      failed: list[str]) -> str:
    """The group report: per-scanner intensity distributions before and after, separability, failures."""
    rows = "".join(
        f"<tr><td style='text-align:left'>{html.escape(r['job'])}</td><td style='text-align:left'>"
        f"{html.escape(r['scanner'])}</td><td>{html.escape(r['method'])}</td>"
        f"<td>{np.median(r['before']):.3f}</td><td>{np.median(r['after']):.3f}</td></tr>" for r in records)
    failed_html = ("<p>None.</p>" if not failed else
                   "<ul>" + "".join(f"<li class='bad'>{html.escape(f)}</li>" for f in failed) + "</ul>")
    body = (
        f"<p>{len(records)} harmonized images from {len({r['scanner'] for r in records})} scanners.</p>"
        "<h2>Site separability</h2>"
        "<p>Mean pairwise Wasserstein-1 distance between the scanners' pooled brain intensity distributions "
        "(lower: sites harder to tell apart).</p>"
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


def participant_report_html(title: str, native: np.ndarray, preproc: np.ndarray, mask: np.ndarray,
                            template: np.ndarray, edges: np.ndarray, generated: np.ndarray,
                            harmonized: np.ndarray, facts: dict) -> str:
    """One job's report: input, preprocessing and registration, edge map, harmonization, provenance."""
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
    rows = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td style='text-align:left'>"
                   f"<code>{html.escape(str(v))}</code></td></tr>" for k, v in facts.items())
    body += f"<h2>Metrics and provenance</h2><table>{rows}</table>"
    return html_page(title, body)
