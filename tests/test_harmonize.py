"""Tests of bhd_app.modelfile (the model file and card, device choice) and bhd_app.method.harmonize
(generation and harmonization, eq. 4).

The networks are small untrained U-Nets with seeded random weights; the images are the session's simulated
subject rendered on a coarse 32^3 grid (conftest ``small_grid``).
"""

from __future__ import annotations

import copy
from dataclasses import replace
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import bhd_app
from bhd_app import config
from bhd_app.errors import BHDInputError
from bhd_app.method.metrics import ncc
from bhd_app.method.baselines import histogram_matching, target_quantiles
from bhd_app.method.flow import from_flow_space, to_flow_space
from bhd_app.method.harmonize import HarmonizationModel, generate, harmonize
from bhd_app.method.model import EdgeToImageUNet, UNetConfig
from bhd_app.method.refinement import refine
from bhd_app.modelfile import load_model, save_model, select_device, sha256_of


def random_net(seed: int = 0, zero_head: bool = False) -> EdgeToImageUNet:
    """A width-4 U-Net with seeded weights; the head is randomized too unless ``zero_head`` (zero velocity)."""
    torch.manual_seed(seed)
    net = EdgeToImageUNet(UNetConfig(base_width=4, time_dim=16))
    if not zero_head:
        torch.nn.init.normal_(net.head.weight, std=0.5)
    return net.eval()


def in_memory(net: EdgeToImageUNet, parameterization: str = "velocity",
              quantiles: np.ndarray | None = None) -> HarmonizationModel:
    q = np.linspace(0, 1, 11, dtype=np.float32) if quantiles is None else quantiles
    return HarmonizationModel(net, parameterization, q, {}, None, "", torch.device("cpu"))


@pytest.fixture
def saved(tmp_path):
    net = random_net(1)
    quantiles = np.linspace(0.0, 1.0, 101, dtype=np.float32) ** 2
    path = tmp_path / "model.pt"
    card = save_model(path, net, "image", quantiles, {"name": "test", "steps": 0})
    return path, net, quantiles, card


def edge_cube(n: int = 16) -> np.ndarray:
    e = np.zeros((n, n, n), np.uint8)
    e[4:12, 4:12, [4, 11]] = 1
    e[4:12, [4, 11], 4:12] = 1
    return e


def test_save_writes_a_card_with_the_sha256(saved):
    path, net, _, card = saved
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk == json.loads(json.dumps(card))  # the returned card has tuples where JSON has lists
    assert card["sha256"] == sha256_of(path) and len(card["sha256"]) == 64
    assert card["file"] == "model.pt" and card["name"] == "test" and card["parameterization"] == "image"
    assert UNetConfig.from_dict(card["unet"]) == net.config


def test_load_round_trip_reproduces_the_output(saved):
    path, net, quantiles, card = saved
    model = load_model(path)
    assert model.parameterization == "image" and model.sha256 == card["sha256"]
    assert model.card == json.loads(json.dumps(card))
    np.testing.assert_array_equal(model.target_quantiles, quantiles)
    # The file stores half precision: the loaded weights are the network's, rounded to float16.
    for k, v in net.state_dict().items():
        assert torch.equal(model.net.state_dict()[k], v.half().float()), k
    rounded = copy.deepcopy(net)
    rounded.load_state_dict({k: v.half().float() for k, v in net.state_dict().items()})
    edge_map = edge_cube()
    draw = dict(steps=2, solver="midpoint", start_time=0.0)
    recorded = generate(in_memory(rounded, "image"), edge_map, **draw, seed=3)  # before saving: the reference
    out = generate(model, edge_map, **draw, seed=3)
    np.testing.assert_allclose(out, recorded, atol=1e-5)
    # Loaded twice, generated twice with the same seed: identical; another seed differs.
    again = generate(load_model(path), edge_map, **draw, seed=3)
    np.testing.assert_array_equal(again, out)
    assert np.abs(generate(model, edge_map, **draw, seed=4) - out).max() > 0.01
    assert out.shape == edge_map.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1 and out.std() > 0.01


def test_a_model_trained_on_the_coarse_grid_loads_with_its_grid(tmp_path):
    path = tmp_path / "coarse.pt"
    save_model(path, random_net(1), "image", np.linspace(0, 1, 11, dtype=np.float32), {"training": {"grid_factor": 2}})
    assert load_model(path).grid_factor == 2
    save_model(path, random_net(1), "image", np.linspace(0, 1, 11, dtype=np.float32), {"training": {}})
    assert load_model(path).grid_factor == 1


def test_tampered_model_file_is_refused(saved):
    path = saved[0]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BHDInputError, match="sha256"):
        load_model(path)


def test_missing_or_broken_card_is_refused(saved):
    path = saved[0]
    card = path.with_suffix(".json")
    text = card.read_text()
    card.write_text(text[: len(text) // 2])
    with pytest.raises(BHDInputError, match="not valid JSON"):
        load_model(path)
    card.unlink()
    with pytest.raises(BHDInputError, match="card missing"):
        load_model(path)


def test_missing_model_file_is_refused(tmp_path):
    with pytest.raises(BHDInputError, match="not found"):
        load_model(tmp_path / "nothing.pt")


def test_unloadable_file_with_matching_card_is_refused(tmp_path):
    """A file that matches its card but is no model (a pickle of arbitrary code is never unpickled)."""
    path = tmp_path / "model.pt"
    path.write_bytes(b"not a torch file")
    path.with_suffix(".json").write_text(json.dumps({"sha256": sha256_of(path)}))
    with pytest.raises(BHDInputError, match="not a loadable"):
        load_model(path)


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")
def test_select_cuda_without_gpu_is_a_user_error():
    with pytest.raises(BHDInputError, match="no CUDA GPU"):
        select_device("cuda")


def test_harmonize_on_a_small_grid(small_subject):
    source, mask = small_subject["vision15t"], small_subject["mask"]
    assert source.shape == (32, 32, 32) and mask.sum() > 2000
    model = in_memory(random_net(2))
    paper = dict(steps=2, seed=0, start_from="histmatch", refinement="ncc", refine_reference="source")
    out = harmonize(model, source, mask, **paper)
    assert out["edge_map"].shape == source.shape and set(np.unique(out["edge_map"])) == {0, 1}
    for key in ("generated", "harmonized"):
        image = out[key]
        assert image.shape == source.shape and image.dtype == np.float32
        assert image.min() >= 0 and image.max() <= 1
        assert (image[mask == 0] == 0).all()
        assert image[mask > 0].std() > 0.01
    history = out["refinement_history"]
    assert len(history) == 7 and history[-1] > history[0]
    # The refinement pulls the generated image towards the source.
    assert ncc(out["harmonized"], source, mask) > ncc(out["generated"], source, mask)
    again = harmonize(model, source, mask, **paper)
    np.testing.assert_array_equal(again["harmonized"], out["harmonized"])


def test_harmonize_without_refinement_returns_the_generated_image(small_subject):
    source, mask = small_subject["vision15t"], small_subject["mask"]
    out = harmonize(in_memory(random_net(3)), source, mask, steps=2, refinement="none")
    np.testing.assert_array_equal(out["harmonized"], out["generated"])
    assert out["refinement_history"] == []


def start_image(start_from: str, source: np.ndarray, mask: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """The start images by their definitions: the source, matched to the target quantiles, and (``refined``)
    that image after the paper's NCC refinement towards the source (alpha 0.02, 6 iterations)."""
    matched = histogram_matching(source, mask, quantiles)
    return {"source": source, "histmatch": matched,
            "refined": refine(matched, source, mask, "ncc", 0.02, 6, step_rule="paper")[0]}[start_from]


@pytest.mark.parametrize("start_from", ["histmatch", "refined", "source"])
def test_start_time_mixes_the_start_image_into_the_noise(small_subject, start_from):
    """With a zero velocity (untrained, zero head) the output is x_t0 = t0 * start + (1 - t0) * noise."""
    source, mask, target = small_subject["vision15t"], small_subject["mask"], small_subject["trio3t"]
    quantiles = target_quantiles([target], [mask])
    model = in_memory(random_net(4, zero_head=True), quantiles=quantiles)
    out = harmonize(model, source, mask, steps=2, start_time=0.7, start_from=start_from, refinement="none", seed=5,
                    refine_step=0.02, refine_iterations=6, refine_step_rule="paper")
    start = start_image(start_from, source, mask, quantiles)
    noise = torch.randn((1, 1, *source.shape), generator=torch.Generator().manual_seed(5))[0, 0]
    expected = from_flow_space(0.7 * to_flow_space(torch.from_numpy(start)) + 0.3 * noise).numpy()
    expected[mask == 0] = 0
    np.testing.assert_allclose(out["generated"], expected, atol=1e-6)


def test_a_coarse_grid_model_draws_there_from_the_coarsened_start_and_returns_to_the_harmonization_grid(
        small_subject):
    """grid_factor 2, zero velocity: the draw is x_t0 on the 16^3 block-mean grid, interpolated back to 32^3; the
    edge map is the coarse source's, each coarse voxel repeated over its block."""
    from bhd_app.method.edges import canny_edges
    from bhd_app.method.grid import coarsen, refine_grid
    from bhd_app.method.refinement import frequency_split

    source, mask = small_subject["vision15t"], small_subject["mask"]
    model = in_memory(random_net(4, zero_head=True))
    model.grid_factor = 2
    out = harmonize(model, source, mask, steps=1, start_time=0.7, start_from="source", refinement="none", seed=5)
    noise = torch.randn((1, 1, 16, 16, 16), generator=torch.Generator().manual_seed(5))[0, 0]
    coarse = from_flow_space(0.7 * to_flow_space(torch.from_numpy(coarsen(source, 2))) + 0.3 * noise).numpy()
    expected = refine_grid(coarse, source.shape, 2)
    expected[mask == 0] = 0
    assert out["generated"].shape == source.shape
    np.testing.assert_allclose(out["generated"], expected, atol=1e-6)
    edges = canny_edges(coarsen(source, 2))[0]
    np.testing.assert_array_equal(out["edge_map"], edges.repeat(2, 0).repeat(2, 1).repeat(2, 2))
    # The split's width is in mm, whatever the model's grid: 3.6 mm are 3 voxels of a 1.2 mm harmonization grid.
    split = harmonize(model, source, mask, steps=1, start_time=0.7, start_from="source", refinement="split",
                      refine_reference="source", split_sigma_mm=3.6, seed=5, voxel_size=(1.2, 1.2, 1.2))
    expected = frequency_split(out["generated"], source, mask, 3.0, refine_grid(coarsen(source, 2), source.shape, 2))
    np.testing.assert_allclose(split["harmonized"], expected, atol=1e-6)


def test_a_coarse_grid_draw_that_returns_the_start_it_saw_leaves_the_start_unchanged(small_subject):
    """Oracle: zero velocity from t0 0.999 returns the start as the 2x coarser grid holds it (block means, a
    thousandth of noise); the split then adds no change, at the brain's edge too, where the blocks are part
    background and darker than the start's voxels inside the brain."""
    source, mask = small_subject["vision15t"], small_subject["mask"]
    model = in_memory(random_net(4, zero_head=True))
    model.grid_factor = 2
    out = harmonize(model, source, mask, steps=1, start_time=0.999, start_from="source", refinement="split",
                    refine_reference="start", split_sigma_mm=2.4, seed=1)
    assert np.abs(out["harmonized"] - source)[mask > 0].max() < 0.005


def test_samples_average_the_draws_of_consecutive_seeds(small_subject):
    """With a zero velocity each draw is its own x_t0; ``samples=2`` averages the draws of seeds 5 and 6."""
    source, mask = small_subject["vision15t"], small_subject["mask"]
    model = in_memory(random_net(4, zero_head=True))
    out = harmonize(model, source, mask, steps=2, start_time=0.7, start_from="source", refinement="none",
                    seed=5, samples=2)
    draws = []
    for seed in (5, 6):
        noise = torch.randn((1, 1, *source.shape), generator=torch.Generator().manual_seed(seed))[0, 0]
        draws.append(from_flow_space(0.7 * to_flow_space(torch.from_numpy(source)) + 0.3 * noise).numpy())
    expected = np.mean(draws, axis=0)
    expected[mask == 0] = 0
    np.testing.assert_allclose(out["generated"], expected, atol=1e-6)
    single = harmonize(model, source, mask, steps=2, start_time=0.7, start_from="source", refinement="none", seed=5)
    assert np.abs(single["generated"] - out["generated"]).max() > 0.01
    # The uncertainty map is the per-voxel standard deviation of those draws, zero outside the brain.
    spread = np.std(draws, axis=0)
    spread[mask == 0] = 0
    np.testing.assert_allclose(out["uncertainty"], spread, atol=1e-6)
    assert single["uncertainty"] is None


def test_refinement_towards_the_histogram_matched_source(small_subject):
    source, mask, target = small_subject["vision15t"], small_subject["mask"], small_subject["trio3t"]
    quantiles = target_quantiles([target], [mask])
    model = in_memory(random_net(6), quantiles=quantiles)
    out = harmonize(model, source, mask, steps=2, refinement="ncc", refine_step=0.02, refine_step_rule="rms",
                    refine_reference="histmatch")
    expected, _ = refine(out["generated"], histogram_matching(source, mask, quantiles), mask, "ncc", 0.02,
                         step_rule="rms")
    expected[mask == 0] = 0
    np.testing.assert_allclose(out["harmonized"], expected, atol=1e-6)
    towards_source = harmonize(model, source, mask, steps=2, refinement="ncc", refine_step=0.02,
                               refine_step_rule="rms", refine_reference="source")
    np.testing.assert_array_equal(towards_source["generated"], out["generated"])
    assert np.abs(towards_source["harmonized"] - out["harmonized"]).max() > 1e-3
    with pytest.raises(ValueError, match="reference"):
        harmonize(model, source, mask, steps=2, refine_reference="target")


def test_split_against_the_refined_start_keeps_its_detail_and_the_draws_low_frequencies(small_subject):
    """refinement split with reference ``start``: the start's detail above the low-pass, the draw's below it."""
    from bhd_app.method.refinement import frequency_split

    source, mask, target = small_subject["vision15t"], small_subject["mask"], small_subject["trio3t"]
    quantiles = target_quantiles([target], [mask])
    model = in_memory(random_net(7), parameterization="image", quantiles=quantiles)
    settings = dict(steps=1, solver="euler", start_time=0.9, start_from="refined", refinement="split",
                    refine_reference="start", split_sigma_mm=2.4, refine_step=0.02, refine_iterations=6,
                    refine_step_rule="paper", seed=3)
    out = harmonize(model, source, mask, **settings, voxel_size=(1.2, 1.2, 1.2))
    start = start_image("refined", source, mask, quantiles)
    expected = frequency_split(out["generated"], start, mask, 2.0)
    np.testing.assert_allclose(out["harmonized"], expected, atol=1e-6)
    assert np.abs(out["harmonized"] - frequency_split(out["generated"], source, mask, 2.0)).max() > 1e-3
    with pytest.raises(ValueError, match="start image"):
        harmonize(model, source, mask, **{**settings, "start_from": "target"})


def test_finish_histmatch_gives_the_refined_brain_the_target_histogram(small_subject):
    """``finish`` histmatch: the split's output with its brain mapped onto the target quantiles (closed form:
    its brain quantiles are the target's; the order of its voxels is the refined image's)."""
    source, mask, target = small_subject["vision15t"], small_subject["mask"], small_subject["trio3t"]
    quantiles = target_quantiles([target], [mask])
    model = in_memory(random_net(7), parameterization="image", quantiles=quantiles)
    settings = dict(steps=1, solver="euler", start_time=0.0, refinement="split", refine_reference="histmatch",
                    split_sigma_mm=2.4, seed=3)
    refined = harmonize(model, source, mask, **settings, voxel_size=(1.2, 1.2, 1.2))["harmonized"]
    finished = harmonize(model, source, mask, **settings, finish="histmatch", voxel_size=(1.2, 1.2, 1.2))
    brain = mask > 0
    np.testing.assert_allclose(np.quantile(finished["harmonized"][brain], np.linspace(0, 1, len(quantiles))),
                               quantiles, atol=2e-3)
    assert np.all(np.diff(finished["harmonized"][brain][np.argsort(refined[brain], kind="stable")]) >= -1e-6)
    assert np.all(finished["harmonized"][~brain] == 0)
    assert np.abs(finished["harmonized"] - refined).max() > 1e-3


def test_a_given_edge_map_replaces_the_source_edges(small_subject):
    source, mask = small_subject["vision15t"], small_subject["mask"]
    model = in_memory(random_net(7))
    edges = np.zeros(source.shape, np.uint8)
    edges[8:24, 8:24, 16] = 1
    out = harmonize(model, source, mask, steps=2, start_time=0.0, refinement="none", edge_map=edges)
    assert out["edge_map"] is edges
    expected = generate(model, edges, steps=2, solver=config.T1W.solver, start_time=0.0, seed=config.T1W.seed)
    expected[mask == 0] = 0
    np.testing.assert_array_equal(out["generated"], expected)
    own = harmonize(model, source, mask, steps=2, start_time=0.0, refinement="none")
    assert np.abs(own["generated"] - out["generated"]).max() > 0.01


def test_generate_from_an_edge_map_is_edge_dependent():
    model = in_memory(random_net(5))
    a = generate(model, edge_cube(), steps=2, solver="midpoint", start_time=0.0, seed=0)
    b = generate(model, np.zeros((16, 16, 16), np.uint8), steps=2, solver="midpoint", start_time=0.0, seed=0)
    assert np.abs(a - b).max() > 0.01


def test_the_method_imports_nothing_of_bids_nifti_or_the_pipeline():
    """``bhd_app.method`` works on arrays: importing all of it loads neither BIDS, NIfTI, nipype nor the layers above."""
    code = ("import sys, bhd_app.method.harmonize, bhd_app.method.baselines, bhd_app.method.intensity; "
            "print(' '.join(m for m in ('bids', 'nibabel', 'nipype', 'ants', 'bhd_app.pipeline', 'bhd_app.training', "
            "'bhd_app.evaluation', 'bhd_app.modelfile', 'bhd_app.cli') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(bhd_app.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert loaded.stdout.strip() == ""
    # The check sees a loaded module: the pipeline does load nibabel.
    code_pipeline = code.replace("bhd_app.method.harmonize,", "bhd_app.pipeline.group,")
    loaded = subprocess.run([sys.executable, "-c", code_pipeline], capture_output=True, text=True, check=True,
                            env=env)
    assert "nibabel" in loaded.stdout.split()


def test_at_the_defaults_the_default_models_image_depends_on_the_edge_map(subject):
    """The T1w defaults start early (t0 0.1), so the image's coarse tissue contrast comes from the edge map: random
    edges change the default model's output several times more than when it starts late (t0 0.9), where the
    network only denoises the start (BENCHMARKS.md, "what the edge map carries at each start time")."""
    from bhd_app.config import default_model_path
    from bhd_app.method.baselines import random_edges
    from bhd_app.method.harmonize import model_grid

    model = load_model(default_model_path())
    source, mask = subject.image("vision15t"), subject.mask
    inside = mask > 0
    edges = random_edges(*model_grid(model, source, mask), 0)

    def random_edges_change(**settings) -> float:
        real = harmonize(model, source, mask, **settings)["harmonized"]
        fake = harmonize(model, source, mask, edge_map=edges, **settings)["harmonized"]
        return float(np.sqrt(np.mean((real - fake)[inside] ** 2)))

    assert random_edges_change() > 3 * random_edges_change(start_time=0.9, split_sigma_mm=4.8)


def _conv_on_two_threads(queue) -> None:
    torch.set_num_threads(2)
    x = torch.randn(1, 64, 64, 64, 64)
    queue.put(float(torch.nn.functional.conv3d(x, torch.randn(8, 64, 3, 3, 3)).abs().mean()))


def test_a_worker_forked_after_the_model_check_runs_torch_on_several_threads():
    """bhd-app checks the model in the parent and then forks its job processes (nipype MultiProc): the check must
    not start an OpenMP pool there, or a job on more than one thread hangs in its first parallel region."""
    import multiprocessing

    from bhd_app.modelfile import check_model_file

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # as bhd-app runs on a machine of several cores (the tests run on one thread)
    try:
        check_model_file()
    finally:
        torch.set_num_threads(threads)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    worker = context.Process(target=_conv_on_two_threads, args=(queue,))
    worker.start()
    worker.join(60)
    hung = worker.is_alive()
    if hung:
        worker.kill()
    assert not hung and worker.exitcode == 0 and queue.get(timeout=5) > 0


def test_apply_method_runs_each_method_as_the_participant_level_does(small_subject):
    source, mask = small_subject["vision15t"], small_subject["mask"]
    quantiles = np.linspace(0.0, 1.0, 101, dtype=np.float32) ** 2
    model = in_memory(random_net(4), quantiles=quantiles)
    from bhd_app.config import T1W
    from bhd_app.method.harmonize import apply_method

    none = apply_method(model, source, mask, replace(T1W, method="none"))
    np.testing.assert_array_equal(none["harmonized"], source)
    matched = apply_method(model, source, mask, replace(T1W, method="histmatch"))["harmonized"]
    np.testing.assert_array_equal(matched, histogram_matching(source, mask, quantiles))
    bhd = apply_method(model, source, mask, replace(T1W, method="bhd", start_from="histmatch"))
    np.testing.assert_array_equal(bhd["harmonized"], harmonize(model, source, mask, T1W, start_from="histmatch")
                                  ["harmonized"])
    with pytest.raises(ValueError, match="unknown method"):
        apply_method(model, source, mask, replace(T1W, method="histogram"))
