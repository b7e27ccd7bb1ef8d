"""Harmonization of one preprocessed image (eq. 4 and section 3.5).

x_har = E2I(D(x_src)): the source's edge map conditions the rectified flow,
which is integrated over the whole volume; the refinement module then pulls
the result towards the source. The model arrives loaded (``bhd_app.modelfile``
reads and writes model files); nothing here touches files or BIDS.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..config import GRID_SPACING, REFINE_REFERENCES, START_FROM, T1W, HarmonizationSettings
from ..errors import BHDInputError
from .baselines import histogram_matching, spectrum_swapping
from .edges import canny_edges
from .flow import from_flow_space, sample, to_flow_space
from .grid import coarsen, coarsen_mask, refine_grid
from .model import EdgeToImageUNet, coordinate_grid
from .refinement import refine


@dataclass
class HarmonizationModel:
    """A loaded edge-to-image model with what harmonization needs beside the network."""

    net: EdgeToImageUNet
    parameterization: str
    target_quantiles: np.ndarray
    card: dict
    path: Path
    sha256: str
    device: torch.device
    target_spectrum: np.ndarray | None = None  # SSIMH's low-frequency DCT block of the target average
    grid_factor: int = 1  # the model's grid: 1, the harmonization grid; 2, twice as coarse (``method.grid``)

    def ssimh_spectrum(self) -> np.ndarray:
        """The target spectrum that ``--method ssimh`` needs; a one-line error for models saved without it."""
        if self.target_spectrum is None:
            raise BHDInputError(f"{self.path}: this model stores no target spectrum for --method ssimh; "
                                "re-export it with bhd-train or choose another method")
        return self.target_spectrum


def model_grid(model: HarmonizationModel, source: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``source`` and ``mask`` (D, H, W) on the model's grid (``method.grid``), where its edge map is made."""
    multiple = model.net.config.downsampling_factor
    return coarsen(source, model.grid_factor, multiple), coarsen_mask(mask, model.grid_factor, multiple)


def at_model_resolution(model: HarmonizationModel, image: np.ndarray) -> np.ndarray:
    """``image`` (D, H, W) as the model's grid holds it, back on the harmonization grid: its block means
    interpolated back (``method.grid``); the image itself for a model on the harmonization grid."""
    if model.grid_factor == 1:
        return image
    coarse = coarsen(image, model.grid_factor, model.net.config.downsampling_factor)
    return refine_grid(coarse, image.shape, model.grid_factor)


def generate(model: HarmonizationModel, edge_map: np.ndarray, *, steps: int, solver: str, start_time: float,
             start_image: np.ndarray | None = None, seed: int) -> np.ndarray:
    """The edge-to-image output for a whole volume (eq. 4), in [0, 1] on the grid of ``edge_map`` (D, H, W).

    ``start_time`` 0 integrates from pure noise; t0 > 0 from t0 * ``start_image`` + (1 - t0) * noise.
    """
    device = model.device
    cond = torch.cat([torch.from_numpy(edge_map.astype(np.float32))[None], coordinate_grid(edge_map.shape)])[None]
    cond = cond.to(device)
    if device.type == "cpu":
        cond = cond.contiguous(memory_format=torch.channels_last_3d)
    start = None
    if start_image is not None:
        start = to_flow_space(torch.from_numpy(start_image.astype(np.float32)))[None, None].to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    x1 = sample(model.net, cond, model.parameterization, steps=steps, method=solver, start_time=start_time,
                start_image=start, generator=generator, autocast=device.type == "cuda")
    return from_flow_space(x1)[0, 0].float().cpu().numpy()


def refined_start(matched: np.ndarray, source: np.ndarray, mask: np.ndarray,
                  settings: HarmonizationSettings = T1W) -> np.ndarray:
    """The histogram-matched source ``matched`` (D, H, W) after the paper's NCC refinement towards ``source``
    with the ``refine_step`` fields of ``settings`` (section 3.5): the T1w start (``start_from='refined'``)
    and the best control without the network."""
    return refine(matched, source, mask, "ncc", settings.refine_step, settings.refine_iterations,
                  settings.refine_region, settings.refine_step_rule)[0]


def harmonize(model: HarmonizationModel, source: np.ndarray, mask: np.ndarray,
              settings: HarmonizationSettings = T1W, *, edge_map: np.ndarray | None = None,
              voxel_size: tuple[float, ...] = GRID_SPACING, **overrides) -> dict[str, np.ndarray | list]:
    """Harmonize a preprocessed source image (D, H, W) on the grid, in [0, 1], zero outside ``mask``, in three
    stages: ``start_images``, ``draw`` (from the edge map) and ``combine`` (the refinement).

    ``settings`` (``config.HarmonizationSettings``; keyword ``overrides`` replace single fields) say
    how: with ``start_time`` > 0 the flow starts from the noised ``start_from`` image (the source
    matched to the target histogram, that image refined by NCC towards the source, or the source);
    ``samples`` > 1 averages that many draws (seeds ``seed``, ``seed + 1``, ...), an estimate of the
    posterior mean given the edge map; the refinement then uses ``refine_reference`` (the source, the
    paper's choice; its histogram-matched version; or the start image). ``edge_map`` replaces the
    condition on the model's grid (default: the Canny edge map of the source there, section 3.2; ``model_grid``),
    e.g. by random edges for Table S3's unconditional variant. A coarse-grid model draws on its grid, from the
    start image taken there, and its draws are interpolated back to the harmonization grid; its split keeps the
    low frequencies of the draw's difference from the reference at the model's resolution (``at_model_resolution``).
    The split's ``split_sigma_mm`` is turned into voxels of the harmonization grid along each axis with
    ``voxel_size`` (mm; ``config.GRID_SPACING``, the grid the participant level gives).

    Returns the edge map (on the harmonization grid), the edge-to-image output (``generated``), the refined image
    (``harmonized``), the refinement's similarity history and ``uncertainty``: the per-voxel
    standard deviation over the draws (D, H, W), zero outside the mask; None when ``samples`` is 1.
    """
    s = replace(settings, **overrides)
    if s.refine_reference not in REFINE_REFERENCES:
        raise ValueError(f"unknown refinement reference {s.refine_reference!r}; choose from {REFINE_REFERENCES}")
    if edge_map is None:
        edge_map, _ = canny_edges(model_grid(model, source, mask)[0])
    images = start_images(model, source, mask, s)
    generated, uncertainty = draw(model, edge_map, images["start"], mask, s)
    harmonized, history = combine(model, generated, images[s.refine_reference], mask, s, voxel_size)
    return {"edge_map": refine_grid(edge_map, source.shape, model.grid_factor, order=0), "generated": generated,
            "harmonized": harmonized, "refinement_history": history, "uncertainty": uncertainty}


def start_images(model: HarmonizationModel, source: np.ndarray, mask: np.ndarray,
                 s: HarmonizationSettings) -> dict[str, np.ndarray]:
    """Stage 1, the images the draw may start from and the refinement may use, each (D, H, W): ``source``,
    ``histmatch`` (the source matched to the target histogram), ``refined`` (that image after the paper's NCC step
    towards the source, made only when ``start_from`` asks for it) and ``start``, the ``start_from`` image."""
    if s.start_from not in START_FROM:
        raise ValueError(f"unknown start image {s.start_from!r}; choose from {START_FROM}")
    matched = histogram_matching(source, mask, model.target_quantiles)
    images = {"source": source, "histmatch": matched}
    if s.start_from == "refined":  # the best no-model control: histogram matching + the paper's NCC refinement
        images["refined"] = refined_start(matched, source, mask, s)
    images["start"] = images[s.start_from]
    return images


def draw(model: HarmonizationModel, edge_map: np.ndarray, start: np.ndarray, mask: np.ndarray,
         s: HarmonizationSettings) -> tuple[np.ndarray, np.ndarray | None]:
    """Stage 2, the edge-to-image draws (eq. 4-5): ``samples`` draws on the model's grid from the edge map (and,
    with ``start_time`` > 0, from ``start`` taken to that grid), brought back to the harmonization grid of
    ``start`` (D, H, W). Returns their mean and, for several draws, their per-voxel standard deviation (else
    None), both zero outside ``mask``."""
    factor, multiple = model.grid_factor, model.net.config.downsampling_factor
    start_seen = coarsen(start, factor, multiple) if s.start_time > 0 else None
    draws = [refine_grid(generate(model, edge_map, steps=s.steps, solver=s.solver, start_time=s.start_time,
                                  start_image=start_seen, seed=s.seed + k), start.shape, factor)
             for k in range(s.samples)]
    generated = draws[0] if s.samples == 1 else np.mean(draws, axis=0, dtype=np.float32)
    generated[mask == 0] = 0
    uncertainty = None if s.samples == 1 else np.std(draws, axis=0, dtype=np.float32)
    if uncertainty is not None:
        uncertainty[mask == 0] = 0
    return generated, uncertainty


def combine(model: HarmonizationModel, generated: np.ndarray, reference: np.ndarray, mask: np.ndarray,
            s: HarmonizationSettings, voxel_size: tuple[float, ...] = GRID_SPACING) -> tuple[np.ndarray, list]:
    """Stage 3, the refinement (section 3.5) of the draw ``generated`` with ``reference`` (NCC or MI ascent, or the
    frequency split, which sees the reference at the model's resolution), then the ``finish``; (D, H, W), zero
    outside ``mask``. Returns the harmonized image and the refinement's similarity history."""
    seen = at_model_resolution(model, reference) if s.refinement == "split" else None  # only the split uses it
    harmonized, history = refine(generated, reference, mask, s.refinement, s.refine_step, s.refine_iterations,
                                 s.refine_region, s.refine_step_rule, s.split_sigma_mm, reference_seen=seen,
                                 voxel_size=voxel_size)
    if s.finish == "histmatch":
        harmonized = histogram_matching(harmonized, mask, model.target_quantiles)
    harmonized[mask == 0] = 0
    return harmonized, history


def apply_method(model: HarmonizationModel | None, source: np.ndarray, mask: np.ndarray,
                 settings: HarmonizationSettings = T1W, *, edge_map: np.ndarray | None = None,
                 voxel_size: tuple[float, ...] = GRID_SPACING) -> dict[str, np.ndarray | list]:
    """The participant level's harmonization of one preprocessed image (D, H, W) by ``settings.method``:
    ``bhd`` (``harmonize``), or a blind baseline of section 4.4 (``histmatch``: histogram matching to the
    model's target quantiles; ``ssimh``: the target's low-frequency spectrum) or ``none`` (the source).
    Returns ``harmonize``'s keys; a baseline's ``generated`` is its output and its edge map the source's."""
    if settings.method == "bhd":
        return harmonize(model, source, mask, settings, edge_map=edge_map, voxel_size=voxel_size)
    if settings.method == "histmatch":
        out = histogram_matching(source, mask, model.target_quantiles)
    elif settings.method == "ssimh":
        out = spectrum_swapping(source, mask, model.ssimh_spectrum())
    elif settings.method == "none":
        out = source.copy()
    else:
        raise ValueError(f"unknown method {settings.method!r}")
    return {"edge_map": canny_edges(source)[0], "generated": out, "harmonized": out, "refinement_history": [],
            "uncertainty": None}
