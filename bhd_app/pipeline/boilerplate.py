"""The methods paragraph ("boilerplate", as fMRIPrep writes it): ``logs/CITATION.md`` in the derivatives.

Written from what the participant level actually used: the settings per contrast, the model file
with its sha256 and card, and the installed software versions. A user can paste it into a paper.
"""

from __future__ import annotations

from pathlib import Path

# The images a setting can name (start_from, refine_reference), in the methods' words.
START_WORDS = {"source": "source", "histmatch": "histogram-matched source",
               "refined": "histogram-matched source refined by NCC towards the source (alpha x N x gradient)"}


def refinement_words(s: dict) -> str:
    """What follows the edge-to-image draw, in the methods' words."""
    reference = START_WORDS[s["start_from"] if s["refine_reference"] == "start" else s["refine_reference"]]
    if s["refinement"] == "none":
        return "no refinement"
    if s["refinement"] == "split":
        return (f"a frequency split: the draw's intensities below a Gaussian low-pass of {s['split_sigma_mm']:g} mm "
                f"with the finer detail of the {reference}")
    return (f"{s['refine_iterations']} refinement iterations climbing the {s['refinement'].upper()} with the "
            f"{reference} ({s['refine_region']}, step {s['refine_step']:g}, rule {s['refine_step_rule']})")


REFERENCES = {
    "bhd": "Jeong H, Lee H, Chun SY, Lee J. Efficient and robust 3D blind harmonization for large domain gaps "
           "(BlindHarmonyDiff). Seoul National University.",
    "ants": "Avants BB, Tustison NJ, Song G, Cook PA, Klein A, Gee JC. A reproducible evaluation of ANTs "
            "similarity metric performance in brain image registration. NeuroImage 54(3):2033-2044, 2011.",
    "n4": "Tustison NJ, Avants BB, Cook PA, et al. N4ITK: improved N3 bias correction. IEEE Trans Med Imaging "
          "29(6):1310-1320, 2010.",
    "deepbet": "Fisch L, Zumdick S, Barkhau C, et al. deepbet: fast brain extraction of T1-weighted MRI using "
               "convolutional neural networks. Comput Biol Med 179:108845, 2024.",
    "nipype": "Gorgolewski K, Burns CD, Madison C, et al. Nipype: a flexible, lightweight and extensible "
              "neuroimaging data processing framework in Python. Front Neuroinform 5:13, 2011.",
    "pybids": "Yarkoni T, Markiewicz CJ, de la Vega A, et al. PyBIDS: Python tools for BIDS datasets. "
              "J Open Source Softw 4(40):1294, 2019.",
    "mni": "Fonov V, Evans AC, Botteron K, et al. Unbiased average age-appropriate atlases for pediatric "
           "studies. NeuroImage 54(1):313-327, 2011.",
}


def methods_text(settings_by_suffix: dict[str, dict], versions: dict[str, str], brain_extraction: str) -> str:
    """The methods paragraph and references as Markdown.

    ``settings_by_suffix``: the harmonization settings per input contrast (``HarmonizationSettings.to_dict()``)
    with the ``model`` file and its ``model_sha256``, as the participant jobs get them.
    """
    v = versions
    steps = (f"Each anatomical image was corrected for intensity non-uniformity with N4 [n4] (ANTs through antspyx "
             f"{v.get('antspyx', '?')}), skull-stripped "
             + {"auto": f"with deepbet [deepbet] (T1w heads; {v.get('deepbet', '?')}) or by the non-zero voxels of "
                        "already skull-stripped inputs, with a template-based fallback",
                "deepbet": f"with deepbet [deepbet] ({v.get('deepbet', '?')})",
                "template": "by affine registration to the brain-only MNI template",
                "nonzero": "by keeping the non-zero voxels (inputs already skull-stripped)"}[brain_extraction]
             + ", affinely registered to the MNI152 2009a nonlinear symmetric template [mni] with ANTs [ants], "
               "resampled onto a 1.2 x 1.2 x 1.25 mm grid (MNI152NLin2009aSym, res-1p2) and normalized to the "
               "1st-99th intensity percentiles inside the brain.")
    recipes = dict.fromkeys((s["preset"], s.get("settings_file")) for s in settings_by_suffix.values() if "preset" in s)
    parts = [f"The harmonization settings were bhd-app's preset '{name}'"
             + (f", changed by the settings file {Path(file).name}" if file else "") + "." for name, file in recipes]
    for suffix, s in settings_by_suffix.items():
        method = s.get("method", "bhd")
        if method == "bhd":
            what = ("harmonized to the target domain" if suffix == "T1w" else "converted to the T1w target contrast")
            parts.append(
                f"{suffix} images were then {what} with BlindHarmonyDiff [bhd]: the 3D Canny edge map of the image "
                f"conditioned a rectified-flow edge-to-image model integrated over the whole volume "
                f"({s['solver']} solver, {s['steps']} step{'s' if s['steps'] != 1 else ''}, "
                + ("from pure noise" if s["start_time"] == 0 else
                   f"starting at t0 = {s['start_time']:g} from the noised "
                   f"{START_WORDS[s['start_from']]}")
                + ", " + ("a single draw" if s["samples"] == 1 else f"{s['samples']} averaged draws")
                + (", whose per-voxel standard deviation is given as an uncertainty map" if s["samples"] > 1 else "")
                + "), followed by "
                + refinement_words(s)
                + f"; random seed {s['seed']}. "
                + ("On the input's own grid, the change made on the harmonization grid was added to the input at "
                   "its own resolution." if s.get("native") == "change" else
                   "The harmonized image was resampled back onto the input's own grid."))
        else:
            parts.append(f"{suffix} images were then processed with method '{method}' "
                         + {"histmatch": "(histogram matching to the model's target-domain histogram).",
                            "ssimh": "(swapping the lowest 3D DCT frequencies with the target-domain average).",
                            "none": "(preprocessing only, no harmonization)."}.get(method, "."))
        if s.get("model_sha256"):
            parts.append(f"The {suffix} model was {Path(s['model']).name}, sha256 {s['model_sha256']}.")
    software = ", ".join(f"{k} {val}" for k, val in versions.items())
    text = (f"# Methods (bhd {versions.get('bhd', '?')})\n\n"
            f"Results included in this manuscript come from harmonization performed with bhd {versions.get('bhd')} "
            "(a BIDS App of BlindHarmonyDiff [bhd]), run with Nipype [nipype] on data found with PyBIDS [pybids]. "
            f"{steps} {' '.join(parts)}\n\n"
            f"Software: {software}.\n\n"
            "This text was written by bhd so that it can be pasted into a manuscript unchanged; it is released "
            "under the CC0 license.\n\n## References\n\n"
            + "\n".join(f"- [{k}] {ref}" for k, ref in REFERENCES.items()) + "\n")
    return text


def write_methods(out_dir: Path, settings_by_suffix: dict[str, dict], brain_extraction: str) -> Path:
    """Write ``logs/CITATION.md`` in the derivatives (replacing an older one) and return its path."""
    from .derivatives import software_versions

    versions = software_versions()
    for pkg in ("deepbet", "scikit-learn"):
        try:
            from importlib.metadata import version

            versions.setdefault(pkg, version(pkg))
        except Exception:  # noqa: BLE001 - a missing package is left out
            pass
    path = Path(out_dir) / "logs" / "CITATION.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(methods_text(settings_by_suffix, versions, brain_extraction))
    return path
