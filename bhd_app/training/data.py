"""Target-domain training data (section 4.2): images on the harmonization grid, brain masks, edge maps.

Two sources: the T1w images of a BIDS dataset, each through the participant level's own
preprocessing (so training sees what inference sees), or the physics simulator's target protocol.
The prepared data are cached in one compact file (``save_cache`` / ``load_cache``): each subject's
bounding box (brain, edges and non-zero voxels), the image quantized to 8 bits, the mask and the edge map bit-packed, so that
a few dozen subjects fit in tens of MB and a run can be resumed or moved to a GPU machine without
redoing the preprocessing.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import BHDInputError
from ..method.edges import canny_edges
from ..method.grid import coarsen

SYNTHETIC_SEED0 = 1000
CACHE_FORMAT = 2  # cropped uint8 images, packed masks and edge maps


def synthetic_target_subject(k: int, lesions: int):
    """Synthetic training subject ``k`` rendered by the target protocol: (image, brain mask, edge map, anatomy)."""
    from ..evaluation.simulation import PROTOCOLS, TARGET_PROTOCOL, make_anatomy, render_on_grid

    seed = SYNTHETIC_SEED0 + k
    anatomy = make_anatomy(seed, lesions=lesions)
    image, mask = render_on_grid(anatomy, PROTOCOLS[TARGET_PROTOCOL], seed)
    return image, mask, canny_edges(image)[0], anatomy


def synthetic_target_data(n: int, lesion_every: int) -> tuple[list, list, list, dict]:
    """``n`` simulated target-domain subjects; every ``lesion_every``-th one carries 3 WM lesions."""
    from ..evaluation.simulation import TARGET_PROTOCOL

    images, masks, edges = [], [], []
    for k in range(n):
        lesions = 3 if lesion_every and k % lesion_every == lesion_every - 1 else 0
        image, mask, edge_map, _ = synthetic_target_subject(k, lesions)
        images.append(image)
        masks.append(mask)
        edges.append(edge_map)
        print(f"rendered synthetic subject {k + 1}/{n}", file=sys.stderr)
    desc = {"source": "synthetic", "protocol": TARGET_PROTOCOL, "subjects": n,
            "seeds": [SYNTHETIC_SEED0, SYNTHETIC_SEED0 + n - 1],
            "description": "physics-rendered MNI152 2009a anatomy (bhd_app.evaluation.simulation), target protocol "
                           "modelled on a Siemens TIM Trio 3T MPRAGE (paper Table S1)"}
    return images, masks, edges, desc


def _preprocess_one(path: Path, work_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from ..pipeline.preprocessing import preprocess

    pre = preprocess(path, work_dir)
    return pre.image, pre.brain_mask, canny_edges(pre.image)[0]


def bids_target_data(bids_dir: Path, labels, work_dir: Path, nprocs: int = 1, minimum: int = 2,
                     exclude=()) -> tuple[list, list, list, dict]:
    """Every T1w image of ``bids_dir`` (or of the ``labels`` subjects; none of the ``exclude`` subjects),
    preprocessed on ``nprocs`` processes; BHDInputError for fewer than ``minimum`` images (training needs two,
    validation one)."""
    from ..pipeline.bids import collect_jobs, load_layout, normalize_label

    held_out = {normalize_label(label, "sub") for label in exclude}
    jobs = [j for j in collect_jobs(load_layout(bids_dir), participant_labels=labels) if j.subject not in held_out]
    if len(jobs) < minimum:
        raise BHDInputError(f"{bids_dir}: {len(jobs)} T1w image selected; at least {minimum} needed (training "
                            "needs two); add images or select more participants")
    with ProcessPoolExecutor(max(1, nprocs)) as pool:
        futures = [pool.submit(_preprocess_one, job.path, work_dir / job.name) for job in jobs]
        results = []
        for k, (job, future) in enumerate(zip(jobs, futures)):
            results.append(future.result())
            print(f"preprocessed {job.name} ({k + 1}/{len(jobs)})", file=sys.stderr)
    images, masks, edges = (list(r) for r in zip(*results))
    with open(Path(bids_dir) / "dataset_description.json") as f:
        dataset = json.load(f)
    desc = {"source": "bids", "dataset": dataset.get("Name", str(bids_dir)), "license": dataset.get("License"),
            "acknowledgements": dataset.get("Acknowledgements"), "subjects": len({j.subject for j in jobs}),
            "images": [j.path.name for j in jobs]}
    return images, masks, edges, desc


def on_model_grid(images: list[np.ndarray], edges: list[np.ndarray], factor: int,
                  multiple: int = 8) -> tuple[list, list]:
    """The training images (D, H, W each) and their edge maps on the model's grid (``method.grid``): block means,
    and edge maps found anew there, as harmonization finds them. ``factor`` 1 returns the inputs."""
    if factor == 1:
        return images, edges
    coarse = [coarsen(image, factor, multiple) for image in images]
    return coarse, [canny_edges(image)[0] for image in coarse]


def save_cache(path: Path, images: list[np.ndarray], masks: list[np.ndarray], edges: list[np.ndarray],
               desc: dict) -> None:
    """Write the compact cache atomically: per subject the brain's bounding box, 8-bit image, packed bits."""
    arrays = {"format": CACHE_FORMAT, "n": len(images), "desc": json.dumps(desc),
              "shape": np.array(images[0].shape)}
    for k, (image, mask, edge_map) in enumerate(zip(images, masks, edges)):
        nz = np.argwhere((mask > 0) | (edge_map > 0) | (image > 0))
        lo, hi = nz.min(0), nz.max(0) + 1
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        arrays.update({f"box{k}": np.stack([lo, hi]),
                       f"image{k}": np.round(np.clip(image[box], 0, 1) * 255).astype(np.uint8),
                       f"mask{k}": np.packbits(mask[box] > 0), f"edge{k}": np.packbits(edge_map[box] > 0)})
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def load_cache(path: Path) -> tuple[list, list, list, dict]:
    """Read a cache written by ``save_cache``: (images in [0, 1], masks uint8, edge maps uint8, description)."""
    blob = np.load(path, allow_pickle=False)
    if "format" not in blob:  # a cache of full-grid float32 arrays, as bhd-train wrote before the compact one
        n = int(blob["n"])
        return ([blob[f"image{k}"] for k in range(n)], [blob[f"mask{k}"] for k in range(n)],
                [blob[f"edge{k}"] for k in range(n)], json.loads(str(blob["desc"])))
    shape = tuple(int(s) for s in blob["shape"])
    images, masks, edges = [], [], []
    for k in range(int(blob["n"])):
        lo, hi = blob[f"box{k}"]
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        size = tuple(int(b - a) for a, b in zip(lo, hi))
        n = int(np.prod(size))
        image, mask, edge_map = np.zeros(shape, np.float32), np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
        image[box] = blob[f"image{k}"].astype(np.float32) / 255
        mask[box] = np.unpackbits(blob[f"mask{k}"])[:n].reshape(size)
        edge_map[box] = np.unpackbits(blob[f"edge{k}"])[:n].reshape(size)
        images.append(image)
        masks.append(mask)
        edges.append(edge_map)
    return images, masks, edges, json.loads(str(blob["desc"]))
