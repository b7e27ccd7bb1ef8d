"""The methods paragraph ("boilerplate", as fMRIPrep writes it): ``logs/CITATION.md`` in the derivatives, with its
references as BibTeX in ``logs/CITATION.bib``.

Written from what the participant level actually used: the settings per contrast (every number in the text comes
from them, whatever the defaults are), the model file with its sha256 and card (its target scanner, training data
and grid), and the installed software versions. A user can paste it into a paper.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..method.edges import EDGE_FRACTION

# Each reference: the text of the Markdown list and the BibTeX entry (type, fields); the key is the label the
# text cites ([bhd]) and the BibTeX key. Authors beyond those listed are "and others" (the text's "et al.").
REFERENCES = {
    "bhd": ("Jeong H, Lee H, Chun SY, Lee J. Efficient and robust 3D blind harmonization for large domain gaps. "
            "arXiv:2505.00133, 2025.",
            ("misc", {"author": "Jeong, H. and Lee, H. and Chun, S. Y. and Lee, J.",
                      "title": "Efficient and robust {3D} blind harmonization for large domain gaps",
                      "year": "2025", "eprint": "2505.00133", "archivePrefix": "arXiv",
                      "howpublished": "arXiv:2505.00133", "url": "https://arxiv.org/abs/2505.00133"})),
    "n4": ("Tustison NJ, Avants BB, Cook PA, et al. N4ITK: improved N3 bias correction. IEEE Trans Med Imaging "
           "29(6):1310-1320, 2010.",
           ("article", {"author": "Tustison, N. J. and Avants, B. B. and Cook, P. A. and others",
                        "title": "{N4ITK}: improved {N3} bias correction", "journal": "IEEE Trans Med Imaging",
                        "volume": "29", "number": "6", "pages": "1310--1320", "year": "2010",
                        "doi": "10.1109/TMI.2010.2046908"})),
    "deepbet": ("Fisch L, Zumdick S, Barkhau C, et al. deepbet: fast brain extraction of T1-weighted MRI using "
                "convolutional neural networks. Comput Biol Med 179:108845, 2024.",
                ("article", {"author": "Fisch, L. and Zumdick, S. and Barkhau, C. and others",
                             "title": "deepbet: fast brain extraction of {T1}-weighted {MRI} using convolutional "
                                      "neural networks",
                             "journal": "Comput Biol Med", "volume": "179", "pages": "108845", "year": "2024"})),
    "mni": ("Fonov V, Evans AC, Botteron K, et al. Unbiased average age-appropriate atlases for pediatric "
            "studies. NeuroImage 54(1):313-327, 2011.",
            ("article", {"author": "Fonov, V. and Evans, A. C. and Botteron, K. and others",
                         "title": "Unbiased average age-appropriate atlases for pediatric studies",
                         "journal": "NeuroImage", "volume": "54", "number": "1", "pages": "313--327",
                         "year": "2011", "doi": "10.1016/j.neuroimage.2010.07.033"})),
    "ants": ("Avants BB, Tustison NJ, Song G, Cook PA, Klein A, Gee JC. A reproducible evaluation of ANTs "
             "similarity metric performance in brain image registration. NeuroImage 54(3):2033-2044, 2011.",
             ("article", {"author": "Avants, B. B. and Tustison, N. J. and Song, G. and Cook, P. A. and Klein, A. "
                                    "and Gee, J. C.",
                          "title": "A reproducible evaluation of {ANTs} similarity metric performance in brain "
                                   "image registration",
                          "journal": "NeuroImage", "volume": "54", "number": "3", "pages": "2033--2044",
                          "year": "2011", "doi": "10.1016/j.neuroimage.2010.09.025"})),
    "canny": ("Canny J. A computational approach to edge detection. IEEE Trans Pattern Anal Mach Intell "
              "8(6):679-698, 1986.",
              ("article", {"author": "Canny, J.", "title": "A computational approach to edge detection",
                           "journal": "IEEE Trans Pattern Anal Mach Intell", "volume": "8", "number": "6",
                           "pages": "679--698", "year": "1986", "doi": "10.1109/TPAMI.1986.4767851"})),
    "flow": ("Liu X, Gong C, Liu Q. Flow straight and fast: learning to generate and transfer data with rectified "
             "flow. International Conference on Learning Representations (ICLR), 2023. arXiv:2209.03003.",
             ("inproceedings", {"author": "Liu, X. and Gong, C. and Liu, Q.",
                                "title": "Flow straight and fast: learning to generate and transfer data with "
                                         "rectified flow",
                                "booktitle": "International Conference on Learning Representations (ICLR)",
                                "year": "2023", "eprint": "2209.03003", "archivePrefix": "arXiv"})),
    "histmatch": ("Nyul LG, Udupa JK. On standardizing the MR image intensity scale. Magn Reson Med "
                  "42(6):1072-1081, 1999.",
                  ("article", {"author": "Ny{\\'u}l, L. G. and Udupa, J. K.",
                               "title": "On standardizing the {MR} image intensity scale",
                               "journal": "Magn Reson Med", "volume": "42", "number": "6", "pages": "1072--1081",
                               "year": "1999"})),
    "ixi": ("IXI dataset. Information eXtraction from Images (IXI) project, brain-development.org/ixi-dataset, "
            "CC BY-SA 3.0.",
            ("misc", {"title": "{IXI} dataset", "author": "{IXI project}",
                      "howpublished": "Information eXtraction from Images (IXI), "
                                      "\\url{https://brain-development.org/ixi-dataset/}",
                      "note": "CC BY-SA 3.0"})),
    "nipype": ("Gorgolewski K, Burns CD, Madison C, et al. Nipype: a flexible, lightweight and extensible "
               "neuroimaging data processing framework in Python. Front Neuroinform 5:13, 2011.",
               ("article", {"author": "Gorgolewski, K. and Burns, C. D. and Madison, C. and others",
                            "title": "Nipype: a flexible, lightweight and extensible neuroimaging data processing "
                                     "framework in {Python}",
                            "journal": "Front Neuroinform", "volume": "5", "pages": "13", "year": "2011",
                            "doi": "10.3389/fninf.2011.00013"})),
    "pybids": ("Yarkoni T, Markiewicz CJ, de la Vega A, et al. PyBIDS: Python tools for BIDS datasets. "
               "J Open Source Softw 4(40):1294, 2019.",
               ("article", {"author": "Yarkoni, T. and Markiewicz, C. J. and de la Vega, A. and others",
                            "title": "{PyBIDS}: {Python} tools for {BIDS} datasets",
                            "journal": "J Open Source Softw", "volume": "4", "number": "40", "pages": "1294",
                            "year": "2019", "doi": "10.21105/joss.01294"})),
}

REGION_WORDS = {"brain": "brain voxels", "volume": "voxels of the whole volume"}


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def step_words(s: dict) -> str:
    """How one NCC (or MI) refinement iteration moves the image under ``refine_step_rule``, with its numbers."""
    region = REGION_WORDS.get(s["refine_region"], s["refine_region"])
    if s["refine_step_rule"] == "paper":
        return (f"each iteration x <- x + {s['refine_step']:g} x N x gradient, N the number of {region}, the "
                "paper's step rule")
    return (f"each iteration changing the {region} by a root-mean-square {s['refine_step']:g} (0-1 intensity "
            "scale), never past the similarity's maximum along the gradient")


def _matched() -> str:
    return "the source histogram-matched to the model's target-domain histogram [histmatch]"


def start_words(s: dict) -> str:
    """The image the flow starts from (``start_from``), with the numbers of the NCC refinement that makes the
    ``refined`` start."""
    if s["start_from"] == "source":
        return "the preprocessed source image itself"
    if s["start_from"] == "histmatch":
        return _matched()
    return (f"{_matched()} and then refined towards the source by {_n(s['refine_iterations'], 'iteration')} of "
            f"gradient ascent on their normalized cross-correlation (NCC) ({step_words(s)})")


REFERENCE_WORDS = {"source": "the preprocessed source image",
                   "histmatch": "the source histogram-matched to the target-domain histogram [histmatch]"}


def reference_words(s: dict) -> str:
    """The image the refinement uses (``refine_reference``); ``start`` is the ``start_from`` image, also when the
    flow starts from noise."""
    if s["refine_reference"] != "start":
        return REFERENCE_WORDS.get(s["refine_reference"], s["refine_reference"])
    return "the start image S" if s["start_time"] > 0 else start_words(s)


def refinement_words(s: dict, grid_factor: int = 1) -> str:
    """What follows the edge-to-image draw, in the methods' words, with its numbers."""
    reference = reference_words(s)
    if s["refinement"] == "none":
        return "no refinement"
    if s["refinement"] == "split":
        return (f"a frequency split (the refinement): the harmonized image keeps the draw's low spatial frequencies, "
                f"below a Gaussian low-pass of sigma {s['split_sigma_mm']:g} mm, and takes the finer detail from "
                f"{reference}")
    objective = {"ncc": "normalized cross-correlation (NCC)", "mi": "mutual information (MI; Parzen-window "
                 "histograms, 256 bins)"}.get(s["refinement"], s["refinement"].upper())
    return (f"the refinement of the paper's section 3.5: {_n(s['refine_iterations'], 'iteration')} of gradient "
            f"ascent on the {objective} between the harmonized image and {reference} ({step_words(s)})")


def model_words(suffix: str, s: dict) -> str:
    """The model sentence: file and sha256, shipped name, target scanner, training data credit, grid."""
    from .derivatives import model_grid_text, model_identity

    if not s.get("model_sha256"):
        return ""
    m = model_identity(s.get("model"), s["model_sha256"])
    what = f"bhd's shipped model {m['name']}" if m["shipped"] else "a model trained with bhd-train"
    credit = ""
    if m["credit"]:
        ixi = " [ixi]" if "ixi" in str(m["credit"]).lower() else ""
        credit = f" Its training images come from the {m['credit']}{ixi}" + (
            f" ({m['license']})." if m["license"] else ".")
    target = f"as its model card states it: \"{m['target_domain']}\"" if m["target_domain"] else (
        "not stated in its model card")
    return (f"The {suffix} model was {m['file']}, sha256 {s['model_sha256']} ({what}). Its target domain, "
            f"{target}. It draws on {model_grid_text(m['grid_factor'])}.{credit}")


def harmonization_words(suffix: str, s: dict) -> str:
    """What the harmonization of one contrast did, from its settings (``HarmonizationSettings.to_dict()``)."""
    from .derivatives import model_identity

    method = s.get("method", "bhd")
    if method != "bhd":
        return (f"{suffix} images were then processed with method '{method}' "
                + {"histmatch": "(histogram matching [histmatch] to the model's target-domain histogram).",
                   "ssimh": "(SSIMH: the lowest 3D DCT frequencies swapped for those of the model's target-domain "
                            "average image, a baseline of [bhd]).",
                   "none": "(preprocessing only, no harmonization)."}.get(method, "."))
    grid_factor = model_identity(s.get("model"), s.get("model_sha256")).get("grid_factor", 1) if s.get("model") else 1
    what = "harmonized to the model's target domain" if suffix == "T1w" else "converted to the T1w target contrast"
    seeds = (f"random seed {s['seed']}" if s["samples"] == 1 else
             f"random seeds {s['seed']}-{s['seed'] + s['samples'] - 1}")
    return (f"{suffix} images were then {what} with BlindHarmonyDiff [bhd]: the 3D Canny edge map [canny] of the "
            f"image on the model's grid (a subject-level threshold keeping {EDGE_FRACTION * 100:g} % of the voxels "
            "as edges) conditioned a rectified-flow [flow] edge-to-image model integrated over the whole "
            f"volume ({s['solver']} solver, {_n(s['steps'], 'step')}, "
            + ("from pure noise" if s["start_time"] == 0 else
               f"starting at t0 = {s['start_time']:g} from t0 x S + (1 - t0) x noise, S being {start_words(s)}")
            + "; " + ("a single draw" if s["samples"] == 1 else f"{s['samples']} averaged draws")
            + (", whose per-voxel standard deviation is given as an uncertainty map" if s["samples"] > 1 else "")
            + f", {seeds}), followed by {refinement_words(s, grid_factor)}"
            + ("; the brain's intensities were then matched to the model's target-domain histogram [histmatch]"
               if s.get("finish") == "histmatch" else "") + ". "
            + ("On the input's own grid, the change made on the harmonization grid was added to the input at "
               "its own resolution." if s.get("native") == "change" else
               "The harmonized image was resampled back onto the input's own grid."))


def cited(text: str) -> list[str]:
    """The reference keys a text cites ([key]), in order of first citation."""
    return list(dict.fromkeys(k for k in re.findall(r"\[([a-z]+)\]", text) if k in REFERENCES))


def methods_text(settings_by_suffix: dict[str, dict], versions: dict[str, str], brain_extraction: str) -> str:
    """The methods paragraph and its references as Markdown.

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
               "resampled onto a 1.2 x 1.2 x 1.25 mm grid (MNI152NLin2009aSym, res-1p2; the harmonization grid) "
               "and normalized to the 1st-99th intensity percentiles inside the brain (0-1 scale).")
    recipes = dict.fromkeys((s["preset"], s.get("settings_file")) for s in settings_by_suffix.values() if "preset" in s)
    parts = [f"The harmonization settings were bhd-app's preset '{name}'"
             + (f", changed by the settings file {Path(file).name}" if file else "") + "." for name, file in recipes]
    for suffix, s in settings_by_suffix.items():
        parts.append(harmonization_words(suffix, s))
        if s.get("model_sha256"):
            parts.append(model_words(suffix, s))
    software = ", ".join(f"{k} {val}" for k, val in versions.items())
    paragraph = (f"Results included in this manuscript come from harmonization performed with bhd "
                 f"{versions.get('bhd')} (a BIDS App of BlindHarmonyDiff [bhd]), run with Nipype [nipype] on data "
                 f"found with PyBIDS [pybids]. {steps} {' '.join(parts)}")
    keys = cited(paragraph)
    return (f"# Methods (bhd {versions.get('bhd', '?')})\n\n{paragraph}\n\n"
            f"Software: {software}.\n\n"
            "This text was written by bhd so that it can be pasted into a manuscript unchanged; it is released "
            "under the CC0 license. The references are also in CITATION.bib (BibTeX; its keys are the labels "
            "below).\n\n## References\n\n"
            + "\n".join(f"- [{k}] {REFERENCES[k][0]}" for k in keys) + "\n")


def bibtex(keys: list[str]) -> str:
    """The BibTeX entries of the given reference keys (``REFERENCES``), each under its key."""
    entries = []
    for key in keys:
        kind, fields = REFERENCES[key][1]
        body = ",\n".join(f"  {name} = {{{value}}}" for name, value in fields.items())
        entries.append(f"@{kind}{{{key},\n{body}\n}}\n")
    return "\n".join(entries)


def write_methods(out_dir: Path, settings_by_suffix: dict[str, dict], brain_extraction: str) -> Path:
    """Write ``logs/CITATION.md`` and ``logs/CITATION.bib`` in the derivatives (replacing older ones), and the
    derivatives' ``README.md`` listing every file bhd writes (``derivatives.write_derivatives_readme``); returns
    the path of CITATION.md."""
    from .bids import atomic_write_texts
    from .derivatives import software_versions, write_derivatives_readme

    versions = software_versions()
    for pkg in ("deepbet", "scikit-learn"):
        try:
            from importlib.metadata import version

            versions.setdefault(pkg, version(pkg))
        except Exception:  # noqa: BLE001 - a missing package is left out
            pass
    text = methods_text(settings_by_suffix, versions, brain_extraction)
    path = Path(out_dir) / "logs" / "CITATION.md"
    atomic_write_texts({path: text, path.with_suffix(".bib"): bibtex(cited(text))})
    write_derivatives_readme(out_dir, versions.get("bhd"))
    return path
