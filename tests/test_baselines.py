"""Tests of the blind baselines (section 4.4): histogram matching and SSIMH spectrum swapping.

Images are the session's simulated subject on the coarse 32^3 grid (conftest ``small_grid``), rendered by the
target protocol (trio3t) and by the large-gap source (vision15t).
"""

from __future__ import annotations

import numpy as np
import pytest

from bhd_app.errors import BHDInputError
from bhd_app.evaluation import simulation
from bhd_app.method.metrics import psnr
from bhd_app.method.baselines import histogram_matching, spectrum_swapping, target_quantiles, target_spectrum
from bhd_app.method.model import EdgeToImageUNet, UNetConfig
from bhd_app.modelfile import load_model, save_model


@pytest.fixture(scope="module")
def renders(anatomy, small_grid):
    target, mask = simulation.render_on_grid(anatomy, simulation.PROTOCOLS["trio3t"], 1, small_grid)
    source, _ = simulation.render_on_grid(anatomy, simulation.PROTOCOLS["vision15t"], 2, small_grid)
    return target, source, mask


def test_histogram_matching_gives_the_target_distribution(renders):
    target, source, mask = renders
    q = target_quantiles([target], [mask])
    matched = histogram_matching(source, mask, q)
    inside = mask > 0
    np.testing.assert_allclose(np.quantile(matched[inside], [0.1, 0.5, 0.9]),
                               np.quantile(target[inside], [0.1, 0.5, 0.9]), atol=0.02)
    assert np.all(matched[~inside] == 0)
    # Monotone: the rank order of the source's voxels is kept.
    order = np.argsort(source[inside], kind="stable")
    assert np.all(np.diff(matched[inside][order]) >= -1e-6)
    assert psnr(matched, target, mask) > psnr(source, target, mask)


def test_spectrum_swapping_with_the_image_own_spectrum_is_the_identity(renders):
    target, _, mask = renders
    out = spectrum_swapping(target, mask, target_spectrum([target]), cutoff=16)
    np.testing.assert_allclose(out[mask > 0], target[mask > 0], atol=1e-4)


def test_spectrum_swapping_removes_a_low_frequency_bias(renders):
    target, _, mask = renders
    z = np.linspace(-1, 1, target.shape[2], dtype=np.float32)
    biased = np.clip(target * (1 + 0.3 * z)[None, None, :] + 0.1, 0, 1) * (mask > 0)
    out = spectrum_swapping(biased, mask, target_spectrum([target]), cutoff=4)
    assert psnr(out, target, mask) > psnr(biased, target, mask) + 5


def test_target_spectrum_is_the_average_of_the_targets(renders):
    target, source, _ = renders
    avg = target_spectrum([target, source], block=8)
    np.testing.assert_allclose(avg, (target_spectrum([target], 8) + target_spectrum([source], 8)) / 2, atol=1e-4)
    with pytest.raises(ValueError, match="cutoff"):
        spectrum_swapping(target, target > 0, avg, cutoff=9)


def test_the_model_file_stores_the_target_spectrum(renders, tmp_path):
    target, _, mask = renders
    spectrum = target_spectrum([target])
    net = EdgeToImageUNet(UNetConfig(base_width=4, time_dim=16))
    save_model(tmp_path / "m.pt", net, "image", target_quantiles([target], [mask]), {}, spectrum)
    np.testing.assert_array_equal(load_model(tmp_path / "m.pt").target_spectrum, spectrum)
    save_model(tmp_path / "old.pt", net, "image", target_quantiles([target], [mask]), {})
    assert load_model(tmp_path / "old.pt").target_spectrum is None
    with pytest.raises(BHDInputError, match="no target spectrum"):
        load_model(tmp_path / "old.pt").ssimh_spectrum()
