"""Physics-rendered brain MRI for examples, training data and benchmarks.

Anatomy comes from the MNI152 2009a tissue maps shipped by nilearn (GM, WM, and
CSF as the rest of the brain), deformed per subject with a random affine and a
smooth displacement field, optionally with white-matter lesions, and wrapped in
CSF rim, skull, marrow and scalp shells. Each *protocol* renders the same
anatomy with an MR signal equation and field-strength-dependent relaxation times:

* MPRAGE: inversion recovery read out with a small-angle gradient echo,
  ``S = PD sin a |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2*)``;
* FLASH (spoiled gradient echo): ``S = PD sin a (1-E1)/(1 - cos a E1) exp(-TE/T2*)``;
* TSE (T2-weighted): ``S = PD (1 - exp(-TR/T1)) exp(-TE/T2)``.

Scanner effects follow: a point-spread blur, a smooth multiplicative bias field,
Rician noise, the scanner's voxel size, orientation and head position.
The protocols mirror the paper's Table S1 (target Siemens Trio 3T; sources Sonata
1.5T, BioGraph 3T, Vision 1.5T FLASH as the large gap, Vida 3T) plus a T2w.
Knows nothing of BIDS or files: it returns arrays and affines.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..method.intensity import normalize_percentile  # the very normalization of the pipeline (section 4.1)
from ..pipeline.templates import Grid, harmonization_grid, load_template

TISSUES = ("csf", "gm", "wm", "lesion", "skull", "marrow", "scalp")

# Relaxation times in ms at 1.5 T and 3 T (T1), T2* / T2 in ms, proton density.
# Values in the range of Rooney et al. 2007 and Wansapura et al. 1999.
_T1_15 = {"csf": 4000, "gm": 1100, "wm": 650, "lesion": 1050, "skull": 250, "marrow": 300, "scalp": 280}
_T1_30 = {"csf": 4200, "gm": 1350, "wm": 850, "lesion": 1300, "skull": 250, "marrow": 380, "scalp": 380}
_T2 = {"csf": 1500, "gm": 95, "wm": 75, "lesion": 150, "skull": 1, "marrow": 60, "scalp": 70}
_PD = {"csf": 1.0, "gm": 0.80, "wm": 0.68, "lesion": 0.85, "skull": 0.05, "marrow": 0.8, "scalp": 0.9}


@dataclass(frozen=True)
class Protocol:
    """One scanner and sequence, modelled on a column of the paper's Table S1."""

    name: str
    sequence: str  # "MPRAGE", "FLASH" or "TSE"
    field_strength: float  # tesla
    tr: float  # ms
    te: float  # ms
    flip_angle: float  # degrees
    ti: float = 0.0  # ms, MPRAGE only
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    orientation: str = "RAS"  # axis codes of the stored array
    noise: float = 0.02  # Rician sigma relative to the white-matter signal
    bias: float = 0.15  # peak-to-peak amplitude of the log bias field
    blur: float = 0.5  # point-spread sigma in voxels
    suffix: str = "T1w"
    manufacturer: str = "Siemens"
    model: str = ""


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        # The target domain: Siemens TIM Trio 3T MPRAGE (Table S1, first column).
        Protocol("trio3t", "MPRAGE", 3.0, 2400, 3.16, 8, ti=1000, voxel_size=(1.0, 1.0, 1.0),
                 orientation="PIR", noise=0.015, bias=0.25, model="TrioTim"),
        Protocol("sonata15t", "MPRAGE", 1.5, 1900, 3.93, 15, ti=1100, voxel_size=(1.0, 1.0, 1.0),
                 orientation="ASL", noise=0.03, bias=0.2, model="Sonata"),
        Protocol("biograph3t", "MPRAGE", 3.0, 2300, 2.95, 9, ti=900, voxel_size=(1.2, 1.05, 1.05),
                 orientation="PIR", noise=0.02, bias=0.3, model="Biograph_mMR"),
        # The large gap: a 1.5T Vision spoiled gradient echo (FLASH), little grey/white contrast.
        Protocol("vision15t", "FLASH", 1.5, 9.7, 4.0, 10, voxel_size=(1.25, 1.0, 1.0),
                 orientation="LAS", noise=0.03, bias=0.2, model="Vision"),
        Protocol("vida3t", "MPRAGE", 3.0, 2300, 2.95, 9, ti=900, voxel_size=(1.2, 1.05, 1.05),
                 orientation="PIR", noise=0.012, bias=0.35, model="MAGNETOM_Vida"),
        Protocol("t2w3t", "TSE", 3.0, 3200, 100, 90, voxel_size=(1.0, 1.0, 1.0),
                 orientation="RAS", noise=0.02, bias=0.25, suffix="T2w", model="TrioTim"),
    )
}
TARGET_PROTOCOL = "trio3t"


def relaxation(tissue: str, field_strength: float) -> tuple[float, float, float]:
    """(T1, T2, PD) of a tissue; T1 interpolated log-linearly in field strength."""
    t1a, t1b = _T1_15[tissue], _T1_30[tissue]
    slope = np.log(t1b / t1a) / np.log(2.0)
    t1 = t1a * (field_strength / 1.5) ** slope
    return float(t1), float(_T2[tissue]), float(_PD[tissue])


def tissue_signal(protocol: Protocol) -> dict[str, float]:
    """Noise-free signal of every tissue under a protocol's signal equation."""
    a = np.deg2rad(protocol.flip_angle)
    signal = {}
    for tissue in TISSUES:
        t1, t2, pd = relaxation(tissue, protocol.field_strength)
        if protocol.sequence == "MPRAGE":
            s = np.sin(a) * abs(1 - 2 * np.exp(-protocol.ti / t1) + np.exp(-protocol.tr / t1))
        elif protocol.sequence == "FLASH":
            e1 = np.exp(-protocol.tr / t1)
            s = np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1)
        elif protocol.sequence == "TSE":
            s = 1 - np.exp(-protocol.tr / t1)
        else:
            raise ValueError(f"unknown sequence {protocol.sequence!r}")
        signal[tissue] = float(pd * s * np.exp(-protocol.te / t2))
    return signal


@dataclass
class Anatomy:
    """Tissue fractions of one subject on the template's 1 mm grid (padded for the head)."""

    fractions: dict[str, np.ndarray]
    affine: np.ndarray  # voxel -> template world (mm)
    texture: np.ndarray  # small multiplicative tissue heterogeneity (around 1)
    subject_affine: np.ndarray = field(default_factory=lambda: np.eye(4))  # template world -> subject head world

    @property
    def brain(self) -> np.ndarray:
        return self.fractions["gm"] + self.fractions["wm"] + self.fractions["csf"] + self.fractions["lesion"]


def _smooth_field(rng: np.random.Generator, shape, sigma: float, amplitude: float) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return (noise / (np.abs(noise).max() + 1e-8) * amplitude).astype(np.float32)


def make_anatomy(seed: int, lesions: int = 0, pad: int = 16, warp_mm: float = 3.0) -> Anatomy:
    """A random subject: the template's tissues, smoothly deformed, with head shells.

    ``lesions`` white-matter hyperintensity blobs (T1-hypointense) are drawn into WM.
    The random affine that places the head in the scanner is kept in ``subject_affine``.
    """
    rng = np.random.default_rng(seed)
    t1, affine = load_template("t1")
    gm, _ = load_template("gm")
    wm, _ = load_template("wm")
    brain = (t1 > 0).astype(np.float32)
    gm, wm = gm / gm.max() * brain, wm / wm.max() * brain
    gm, wm = np.pad(gm, pad), np.pad(wm, pad)
    brain = np.pad(brain, pad)
    affine = affine.copy()
    affine[:3, 3] -= pad * np.diag(affine)[:3]

    # Nonlinear anatomy: one smooth displacement field (in voxels) shared by all tissues.
    coarse = tuple(s // 4 for s in brain.shape)
    disp = [ndimage.zoom(_smooth_field(rng, coarse, 3.0, warp_mm / 1.0), 4, order=1) for _ in range(3)]
    disp = [d[: brain.shape[0], : brain.shape[1], : brain.shape[2]] for d in disp]
    disp = [np.pad(d, [(0, s - d.shape[i]) for i, s in enumerate(brain.shape)], mode="edge") for d in disp]
    grid = np.indices(brain.shape, dtype=np.float32)
    coords = [grid[i] + disp[i] for i in range(3)]

    def warp(x: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(x, coords, order=1, mode="constant").astype(np.float32)

    gm, wm, brain = warp(gm), warp(wm), warp(brain)
    # Atrophy varies between subjects: part of the grey matter turns to CSF.
    gm *= rng.uniform(0.85, 1.0)
    csf = np.clip(brain - gm - wm, 0, 1)
    lesion = np.zeros_like(wm)
    if lesions:
        candidates = np.argwhere(wm > 0.95)
        for centre in candidates[rng.choice(len(candidates), lesions, replace=False)]:
            radii = rng.uniform(2.5, 6.0, 3)
            lo = np.maximum(centre - 8, 0)
            hi = np.minimum(centre + 9, wm.shape)
            sl = tuple(slice(a, b) for a, b in zip(lo, hi))
            idx = np.indices(tuple(hi - lo)).astype(np.float32)
            d2 = sum(((idx[i] + lo[i] - centre[i]) / radii[i]) ** 2 for i in range(3))
            blob = np.clip(1.5 - d2, 0, 1)
            lesion[sl] = np.maximum(lesion[sl], blob * wm[sl])
        wm = wm - lesion

    # Head shells from the distance (mm) to the brain: CSF rim, skull, marrow, skull, scalp.
    outside = ndimage.distance_transform_edt(brain < 0.5).astype(np.float32)
    thickness = rng.uniform(0.9, 1.2)
    shells = {"csf": (0, 2.5), "skull": (2.5, 4.5), "marrow": (4.5, 6.5), "skull2": (6.5, 8.0), "scalp": (8.0, 13.0)}
    out = brain < 0.5
    fractions = {"gm": gm, "wm": wm, "csf": csf, "lesion": lesion,
                 "skull": np.zeros_like(gm), "marrow": np.zeros_like(gm), "scalp": np.zeros_like(gm)}
    for name, (a, b) in shells.items():
        layer = out & (outside > a * thickness) & (outside <= b * thickness)
        # The CSF rim fills what the brain's partial-volume voxels leave, so that fractions sum to 1.
        fill = 1.0 - (gm + wm + lesion)[layer] if name == "csf" else 1.0
        fractions["skull" if name == "skull2" else name][layer] = fill
    texture = 1.0 + _smooth_field(rng, brain.shape, 1.5, 0.04)
    theta = rng.uniform(-8, 8, 3) * np.pi / 180
    subject_affine = _rotation(theta)
    subject_affine[:3, :3] *= rng.uniform(0.92, 1.08)
    subject_affine[:3, 3] = rng.uniform(-6, 6, 3)
    return Anatomy(fractions, affine, texture, subject_affine)


def _rotation(theta) -> np.ndarray:
    cx, cy, cz = np.cos(theta)
    sx, sy, sz = np.sin(theta)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    out = np.eye(4)
    out[:3, :3] = rz @ ry @ rx
    return out


def _orientation_affine(codes: str, shape, voxel_size) -> np.ndarray:
    """Voxel -> scanner world affine for an array stored in the given axis codes, centred on 0."""
    axis_of = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    affine = np.zeros((4, 4))
    affine[3, 3] = 1
    for i, c in enumerate(codes):
        axis, sign = axis_of[c]
        affine[axis, i] = sign * voxel_size[i]
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def _render_tissues(anatomy: Anatomy, protocol: Protocol, world_to_anatomy: np.ndarray,
                    voxel_affine: np.ndarray, shape) -> np.ndarray:
    """Noise-free signal sampled at the voxels of (voxel_affine, shape) (world = subject head world)."""
    signal = tissue_signal(protocol)
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    to_anat = np.linalg.inv(anatomy.affine) @ world_to_anatomy @ voxel_affine
    coords = to_anat[:3, :3] @ idx + to_anat[:3, 3:4]
    total = np.zeros(idx.shape[1], np.float32)
    for tissue, frac in anatomy.fractions.items():
        if signal[tissue] == 0 or not frac.any():
            continue
        total += signal[tissue] * ndimage.map_coordinates(frac, coords, order=1, mode="constant")
    total *= ndimage.map_coordinates(anatomy.texture, coords, order=1, mode="nearest")
    return total.reshape(shape)


def acquire(anatomy: Anatomy, protocol: Protocol, seed: int,
            fov_mm: tuple[float, float, float] = (160.0, 200.0, 184.0)) -> tuple[np.ndarray, np.ndarray]:
    """Scan a subject: returns (8-bit image, voxel->world affine) as the scanner stores it.

    ``fov_mm`` is the field of view along R, A, S; the array axes follow ``protocol.orientation``.
    """
    rng = np.random.default_rng(seed)
    axis_of = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
    shape = tuple(int(round(fov_mm[axis_of[c]] / protocol.voxel_size[i])) for i, c in enumerate(protocol.orientation))
    voxel_affine = _orientation_affine(protocol.orientation, shape, protocol.voxel_size)
    voxel_affine[:3, 3] += (0.0, -18.0, 0.0)  # the head sits slightly posterior in the coil
    # The head is placed in the scanner by subject_affine (anatomy world -> scanner world).
    image = _render_tissues(anatomy, protocol, np.linalg.inv(anatomy.subject_affine), voxel_affine, shape)
    image = ndimage.gaussian_filter(image, protocol.blur)
    log_bias = _smooth_field(rng, tuple(max(s // 8, 2) for s in shape), 1.0, protocol.bias / 2)
    image *= np.exp(ndimage.zoom(log_bias, np.asarray(shape) / np.asarray(log_bias.shape), order=1))
    wm_signal = tissue_signal(protocol)["wm"] if protocol.suffix == "T1w" else tissue_signal(protocol)["csf"] * 0.5
    sigma = protocol.noise * wm_signal
    image = np.hypot(image + sigma * rng.standard_normal(shape), sigma * rng.standard_normal(shape))
    scale = 250.0 / np.percentile(image, 99.9)
    return np.clip(np.rint(image * scale), 0, 255).astype(np.uint8), voxel_affine


def render_on_grid(anatomy: Anatomy, protocol: Protocol, seed: int, grid: Grid | None = None,
                   noise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A subject as the preprocessing would deliver it: on the harmonization grid, brain only, normalized.

    The global head position is undone (as affine registration does); only the
    subject's nonlinear anatomy remains. Returns (image in [0, 1], brain mask).
    Used to make training, validation and benchmark data without running ANTs.
    """
    grid = grid or harmonization_grid()
    rng = np.random.default_rng(seed)
    image = _render_tissues(anatomy, protocol, np.eye(4), grid.affine, grid.shape)
    idx = np.indices(grid.shape, dtype=np.float32).reshape(3, -1)
    to_anat = np.linalg.inv(anatomy.affine) @ grid.affine
    brain = ndimage.map_coordinates(anatomy.brain, to_anat[:3, :3] @ idx + to_anat[:3, 3:4], order=1)
    mask = (brain.reshape(grid.shape) > 0.5).astype(np.uint8)
    if noise:
        log_bias = _smooth_field(rng, tuple(s // 8 for s in grid.shape), 1.0, protocol.bias / 4)
        image *= np.exp(ndimage.zoom(log_bias, 8, order=1))
        ref = tissue_signal(protocol)["wm"] if protocol.suffix == "T1w" else tissue_signal(protocol)["gm"]
        sigma = protocol.noise * ref
        image = np.hypot(image + sigma * rng.standard_normal(grid.shape), sigma * rng.standard_normal(grid.shape))
    return normalize_percentile(image, mask)[0], mask
