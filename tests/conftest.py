"""Shared fixtures for the numerics tests: one simulated subject per session and the real example images.

The simulated subject is the MNI152 2009a anatomy deformed by ``simulation.make_anatomy(0)`` (about 10-15 s,
built once per session) and rendered on the harmonization grid under the target protocol (``trio3t``), the
large-gap source (``vision15t``, FLASH) and a T2-weighted protocol (``t2w3t``). The real images are the stroke
T1w/T2w pair of /work/shared/data/VolumeRenderingData (MIT; see its SOURCE.md). CI clones the repository with
``../shared`` beside it; tests that need it are skipped with a reason when it is absent.

The tests run single-threaded (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``) so that they leave a core
to a training run on small machines.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from bhd_app import simulation  # noqa: E402
from bhd_app.templates import GRID_CENTER, Grid  # noqa: E402

torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STROKE = SHARED / "VolumeRenderingData" / "stroke"


def normalize01(image: np.ndarray) -> np.ndarray:
    """Min-max normalization of a whole image to [0, 1] (float32)."""
    image = np.asarray(image, np.float32)
    lo, hi = float(image.min()), float(image.max())
    return (image - lo) / (hi - lo)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """/work/shared/data (``../shared/data`` beside the repository)."""
    if not SHARED.is_dir():
        pytest.skip(f"the shared example data are missing: {SHARED} (clone ../shared beside the repository)")
    return SHARED


@pytest.fixture(scope="session")
def stroke(shared_data) -> dict[str, np.ndarray]:
    """The real stroke T1w and T2w images (same subject, same 1 mm grid, brain-extracted), each in [0, 1]."""
    import nibabel as nib

    out = {}
    for name in ("T1", "T2"):
        path = STROKE / f"{name}.nii.gz"
        if not path.exists():
            pytest.skip(f"the real stroke example {path} is missing")
        out[name] = normalize01(nib.load(path).get_fdata())
    return out


@pytest.fixture(scope="session")
def anatomy() -> simulation.Anatomy:
    """One simulated subject (seed 0), built once per session (about 10-15 s)."""
    return simulation.make_anatomy(0)


class SimulatedSubject:
    """The session's anatomy rendered on the harmonization grid; renders are made on first use and cached."""

    def __init__(self, anatomy: simulation.Anatomy):
        self.anatomy = anatomy
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def render(self, protocol: str) -> tuple[np.ndarray, np.ndarray]:
        """(image in [0, 1], brain mask) under ``protocol``; the noise seed depends on the protocol only."""
        if protocol not in self._cache:
            seed = sorted(simulation.PROTOCOLS).index(protocol) + 1
            self._cache[protocol] = simulation.render_on_grid(self.anatomy, simulation.PROTOCOLS[protocol], seed)
        return self._cache[protocol]

    def image(self, protocol: str) -> np.ndarray:
        return self.render(protocol)[0]

    @property
    def mask(self) -> np.ndarray:
        return self.render(simulation.TARGET_PROTOCOL)[1]


@pytest.fixture(scope="session")
def subject(anatomy) -> SimulatedSubject:
    """The simulated subject on the 128 x 160 x 136 grid: ``subject.image('trio3t')``, ``subject.mask``."""
    return SimulatedSubject(anatomy)


@pytest.fixture(scope="session")
def small_grid() -> Grid:
    """A coarse 32^3 grid (4.8 x 6.0 x 5.0 mm) centred like the harmonization grid, covering the whole brain."""
    spacing = np.array([4.8, 6.0, 5.0])
    shape = np.array([32, 32, 32])
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = np.asarray(GRID_CENTER) - (shape - 1) / 2.0 * spacing
    return Grid((32, 32, 32), affine)
