"""Harmonization of one preprocessed image (eq. 4 and section 3.5), and the model file.

x_har = E2I(D(x_src)): the source's edge map conditions the rectified flow,
which is integrated over the whole volume; the refinement module then pulls
the result towards the source. A trained model is one ``.pt`` file (weights of
the EMA network, its config, the target-domain histogram) plus a JSON model
card beside it that records the file's sha256. Knows nothing of BIDS.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .baselines import histogram_matching
from ..config import T1W, HarmonizationSettings, default_model_path
from .edges import canny_edges
from ..errors import BHDInputError
from .flow import from_flow_space, sample, to_flow_space
from .model import EdgeToImageUNet, UNetConfig, coordinate_grid
from .refinement import refine


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BHDInputError("--device cuda: no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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

    def ssimh_spectrum(self) -> np.ndarray:
        """The target spectrum that ``--method ssimh`` needs; a one-line error for models saved without it."""
        if self.target_spectrum is None:
            raise BHDInputError(f"{self.path}: this model stores no target spectrum for --method ssimh; "
                                "re-export it with bhd-train or choose another method")
        return self.target_spectrum


def save_model(path: Path, net: EdgeToImageUNet, parameterization: str, target_quantiles: np.ndarray,
               card: dict, target_spectrum: np.ndarray | None = None) -> dict:
    """Write the model file and its card (``path`` with ``.json``); returns the card with the sha256.

    Beside the network, the file holds what the blind baselines need from the target domain: the
    histogram (``target_quantiles``) and, for SSIMH, the low-frequency DCT block of the average image.
    """
    path = Path(path)
    # Half precision on disk halves the package; the network runs in float32 after loading.
    state = {k: v.detach().cpu().half() for k, v in net.state_dict().items()}
    blob = {"state_dict": state, "unet": json.dumps(net.config.to_dict()), "parameterization": parameterization,
            "target_quantiles": torch.from_numpy(np.asarray(target_quantiles, np.float32))}
    if target_spectrum is not None:
        blob["target_spectrum"] = torch.from_numpy(np.asarray(target_spectrum, np.float32))
    torch.save(blob, path)
    card = dict(card, file=path.name, sha256=sha256_of(path), unet=net.config.to_dict(),
                parameterization=parameterization)
    path.with_suffix(".json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return card


def load_model(path: Path | None = None, device: torch.device | str = "cpu") -> HarmonizationModel:
    """Load a model file, checking its sha256 against the model card beside it (weights only, no pickle)."""
    path = Path(path) if path else default_model_path()
    card_path = path.with_suffix(".json")
    if not path.exists():
        raise BHDInputError(f"{path}: model file not found; pass --model PATH or reinstall bhd")
    if not card_path.exists():
        raise BHDInputError(f"{card_path}: model card missing next to the model file; keep the .json with the .pt")
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as err:
        raise BHDInputError(f"{card_path}: model card is not valid JSON ({err.msg}); restore it") from None
    digest = sha256_of(path)
    if digest != card.get("sha256"):
        raise BHDInputError(f"{path}: sha256 {digest[:12]}... does not match the model card "
                            f"({str(card.get('sha256'))[:12]}...); the file is damaged or tampered with, restore it")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling problem is a bad file
        raise BHDInputError(f"{path}: not a loadable bhd model ({type(err).__name__}); restore it") from None
    device = torch.device(device)
    try:
        net = EdgeToImageUNet(UNetConfig.from_dict(json.loads(blob["unet"])))
        net.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise BHDInputError(f"{path}: not a bhd model ({type(err).__name__}: {err}); pass a model written by "
                            "bhd-train --export") from None
    net = net.to(device).eval()
    if device.type == "cpu":
        net = net.to(memory_format=torch.channels_last_3d)
    spectrum = blob["target_spectrum"].numpy() if "target_spectrum" in blob else None
    return HarmonizationModel(net, blob["parameterization"], blob["target_quantiles"].numpy(), card, path,
                              digest, device, spectrum)


def generate(model: HarmonizationModel, edge_map: np.ndarray, *, steps: int = T1W.steps, solver: str = T1W.solver,
             start_time: float = 0.0, start_image: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
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


def harmonize(model: HarmonizationModel, source: np.ndarray, mask: np.ndarray,
              settings: HarmonizationSettings = T1W, *, edge_map: np.ndarray | None = None,
              **overrides) -> dict[str, np.ndarray | list]:
    """Harmonize a preprocessed source image (D, H, W) on the grid, in [0, 1], zero outside ``mask``.

    ``settings`` (``config.HarmonizationSettings``; keyword ``overrides`` replace single fields) say
    how: with ``start_time`` > 0 the flow starts from the noised ``start_from`` image (the source
    matched to the target histogram, or the source); ``samples`` > 1 averages that many draws
    (seeds ``seed``, ``seed + 1``, ...), an estimate of the posterior mean given the edge map;
    the refinement then climbs the similarity with ``refine_reference`` (the source, the paper's
    choice, or its histogram-matched version: the same structure in intensities closer to the
    target's). ``edge_map`` replaces the condition (default: the source's Canny edge map,
    section 3.2), e.g. by random edges for Table S3's unconditional variant.

    Returns the edge map, the edge-to-image output (``generated``), the refined image
    (``harmonized``), the refinement's similarity history and ``uncertainty``: the per-voxel
    standard deviation over the draws (D, H, W), zero outside the mask; None when ``samples`` is 1.
    """
    s = replace(settings, **overrides)
    if s.refine_reference not in ("source", "histmatch"):
        raise ValueError(f"unknown refinement reference {s.refine_reference!r}; choose source or histmatch")
    if edge_map is None:
        edge_map, _ = canny_edges(source)
    matched = histogram_matching(source, mask, model.target_quantiles)
    start_image = None
    if s.start_time > 0:
        start_image = matched if s.start_from == "histmatch" else source
    draws = [generate(model, edge_map, steps=s.steps, solver=s.solver, start_time=s.start_time,
                      start_image=start_image, seed=s.seed + k) for k in range(s.samples)]
    generated = draws[0] if s.samples == 1 else np.mean(draws, axis=0, dtype=np.float32)
    generated[mask == 0] = 0
    uncertainty = None if s.samples == 1 else np.std(draws, axis=0, dtype=np.float32)
    if uncertainty is not None:
        uncertainty[mask == 0] = 0
    reference = matched if s.refine_reference == "histmatch" else source
    harmonized, history = refine(generated, reference, mask, s.refinement, s.refine_step, s.refine_iterations,
                                 s.refine_region, s.refine_step_rule, s.split_sigma)
    harmonized[mask == 0] = 0
    return {"edge_map": edge_map, "generated": generated, "harmonized": harmonized, "refinement_history": history,
            "uncertainty": uncertainty}
