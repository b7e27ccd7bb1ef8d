"""The model file: one ``.pt`` file (weights of the EMA network, its U-Net config, the target-domain
histogram and, for SSIMH, the low-frequency DCT block of the target average) plus a JSON model card
beside it that records the file's sha256; and the choice of device to run it on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from .config import DEVICE, default_model_path
from .errors import BHDInputError
from .method.harmonize import HarmonizationModel
from .method.model import EdgeToImageUNet, UNetConfig


def select_device(name: str = DEVICE) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BHDInputError("--device cuda: no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def check_model_file(path: Path | None = None) -> HarmonizationModel:
    """``load_model`` on one thread, for a process that forks workers afterwards: no OpenMP thread pool is started
    before the fork (libgomp's pool does not survive it, and a worker's first parallel region would hang)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return load_model(path, "cpu")
    finally:
        torch.set_num_threads(threads)


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
                              digest, device, spectrum, card.get("training", {}).get("grid_factor", 1))
