"""The trained model as a model file: the EMA weights, the target statistics and a model card."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .. import __version__
from ..config import card_defaults
from ..method.baselines import target_spectrum
from ..modelfile import save_model
from .trainer import Trainer

# Hand-written fields of an existing card (target domain, licence, chosen defaults, status), kept on export.
CURATED_CARD_FIELDS = ("target_domain", "license", "credit", "width_choice", "validation", "status", "reproduce")


def export_model(path: Path, trainer: Trainer, quantiles: np.ndarray, images: list[np.ndarray],
                 data_desc: dict) -> dict:
    """Write ``trainer``'s EMA network to ``path`` (.pt) with its card (.json): the recipe, the training data,
    the steps, wall time and recent loss, the participant defaults, the target-domain histogram
    ``quantiles`` and SSIMH's low-frequency spectrum of ``images`` (D, H, W each). Returns the card.

    ``validation`` and ``status`` of an existing card describe the model at the step they name; re-measure
    after training.
    """
    recipe = {k: v for k, v in trainer.config.to_dict().items() if k != "steps"}  # a stop step, not steps trained
    card = {"bhd_version": __version__, "training": recipe, "training_data": data_desc, "steps": trainer.step,
            "wall_time_s": round(trainer.wall, 1), "final_loss": recent_loss(trainer.run_dir / "loss.tsv")}
    card = {**curated_card_fields(path), **card, "defaults": card_defaults()}
    return save_model(path, trainer.ema, trainer.config.parameterization, quantiles, card, target_spectrum(images))


def curated_card_fields(model_path: Path) -> dict:
    """The ``CURATED_CARD_FIELDS`` of the card beside ``model_path``, if there is one."""
    card_path = model_path.with_suffix(".json")
    if not card_path.exists():
        return {}
    old = json.loads(card_path.read_text())
    return {k: old[k] for k in CURATED_CARD_FIELDS if k in old}


def recent_loss(log: Path, n: int = 200) -> float:
    """Mean training loss of the last ``n`` steps of a ``loss.tsv``."""
    with open(log) as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f, delimiter="\t")]
    return round(float(np.mean(losses[-n:])), 5)
