"""Preprocessing (paper section 4.1) on real images: one IXI whole head (Hammersmith 3T, 2 mm, with skull)
preprocessed once per module (about 20-40 s on 2 cores), plus cheap input checks. No mocks.

The IXI images are CC BY-SA 3.0 (IXI dataset, brain-development.org; see ../shared/data/IXI/SOURCE.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bhd_app.errors import BHDInputError
from bhd_app.pipeline.preprocessing import (
    carry_change_to_native,
    load_anatomical,
    looks_skull_stripped,
    normalize_percentile,
    preprocess,
    template_brain_mask_on_grid,
    to_native,
)
from bhd_app.pipeline.templates import GRID_SHAPE

HEAD = "IXI/IXI014-HH-1236-T1_ds.nii.gz"
STRIPPED_T1 = "IXI/hd_bet_IXI002-Guys-0828-T1.nii.gz"
HDBET_MASK = "IXI/hd_bet_mask_IXI002-Guys-0828-T1.nii.gz"


def dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return float(2.0 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def head(shared_data) -> Path:
    return shared_data / HEAD


@pytest.fixture(scope="module")
def pre(head, tmp_path_factory):
    """The head preprocessed once, with Python's temp dir pointed at an empty folder to catch leftovers."""
    work = tmp_path_factory.mktemp("work")
    private_tmp = tmp_path_factory.mktemp("systemp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(private_tmp))
        result = preprocess(head, work, seed=0, n_threads=1)
    return result, work, private_tmp


def test_image_on_grid_normalized(pre):
    p, _, _ = pre
    assert p.image.shape == GRID_SHAPE and p.image.dtype == np.float32
    assert p.brain_mask.shape == GRID_SHAPE and p.brain_mask.dtype == np.uint8
    assert p.image.min() == 0.0 and p.image.max() == 1.0
    assert not p.image[p.brain_mask == 0].any()  # zero outside the brain
    inside = p.image[p.brain_mask > 0]
    assert 0.005 < (inside == 0).mean() < 0.03 and 0.005 < (inside == 1).mean() < 0.03  # 1st/99th percentile clip


def test_brain_mask_plausible_and_on_template(pre):
    p, _, _ = pre
    mask = np.asarray(p.native_brain_mask.dataobj)
    volume_l = mask.sum() * np.prod(p.native_brain_mask.header.get_zooms()[:3]) / 1e6
    assert 1.0 < volume_l < 1.9
    assert p.settings["brain_extraction"]["method"] == "deepbet"  # a T1w head: the default
    template_dice = dice(p.brain_mask, template_brain_mask_on_grid())
    assert template_dice > 0.85
    assert p.qc["template_dice"] == pytest.approx(template_dice, abs=1e-3)


def test_to_native_overlaps_native_mask(pre, head):
    p, _, _ = pre
    native = nib.load(head)
    back = to_native(p.brain_mask, p.transform_path, head, interpolation="nearest")
    assert back.shape == native.shape[:3] and np.allclose(back.affine, native.affine)
    assert back.get_data_dtype() == np.uint8
    assert dice(back.dataobj, p.native_brain_mask.dataobj) > 0.95
    image = to_native(p.image, p.transform_path, head)
    assert image.get_data_dtype() == np.float32 and 0.9 < float(np.max(image.dataobj)) <= 1.0


def test_native_image_is_the_input_normalized_like_the_grid_image(pre, head):
    p, _, _ = pre
    native = np.asarray(p.native_image.dataobj)
    inside = np.asarray(p.native_brain_mask.dataobj) > 0
    assert p.native_image.shape == nib.load(head).shape[:3] and np.allclose(p.native_image.affine, nib.load(head).affine)
    assert not native[~inside].any() and 0.0 <= native.min() and native.max() <= 1.0
    # the same intensities as the grid image: resampled onto the grid it matches it inside the brain
    back = to_native(p.image, p.transform_path, head)
    core = ndimage.binary_erosion(inside, iterations=2)
    assert np.median(np.abs(np.asarray(back.dataobj)[core] - native[core])) < 0.03


def test_carrying_no_change_returns_the_native_input_exactly(pre, head, tmp_path):
    """Oracle: an unchanged grid image gives the native input voxel for voxel; resampling the grid image
    back (the other route) does not, it blurs."""
    p, _, _ = pre
    native_file = tmp_path / "native.nii.gz"
    nib.save(p.native_image, native_file)
    out = carry_change_to_native(p.image, p.image, native_file, p.native_brain_mask, p.transform_path)
    np.testing.assert_array_equal(np.asarray(out.dataobj), np.asarray(p.native_image.dataobj))
    resampled = np.asarray(to_native(p.image, p.transform_path, head).dataobj)
    inside = np.asarray(p.native_brain_mask.dataobj) > 0
    assert np.abs(resampled[inside] - np.asarray(p.native_image.dataobj)[inside]).mean() > 0.01


def test_a_constant_change_is_added_at_native_resolution(pre, tmp_path):
    p, _, _ = pre
    native_file = tmp_path / "native.nii.gz"
    nib.save(p.native_image, native_file)
    out = np.asarray(carry_change_to_native(p.image + 0.1 * (p.brain_mask > 0), p.image, native_file,
                                            p.native_brain_mask, p.transform_path).dataobj)
    native = np.asarray(p.native_image.dataobj)
    core = ndimage.binary_erosion(np.asarray(p.native_brain_mask.dataobj) > 0, iterations=4) & (native < 0.89)  # the output is clipped at 1
    np.testing.assert_allclose(out[core], native[core] + 0.1, atol=1e-4)


def test_outputs_and_no_temp_leftovers(pre):
    p, work, private_tmp = pre
    assert p.transform_path.parent == work and p.transform_path.name.endswith("GenericAffine.mat")
    assert sorted(f.name for f in work.iterdir()) == [p.transform_path.name]  # intermediate transforms removed
    assert list(Path(private_tmp).iterdir()) == []  # e.g. no tmp*GenericAffine.mat from ants.registration
    json.dumps(p.settings)
    assert set(p.timings) >= {"n4", "brain_extraction", "registration", "resample", "normalize", "total"}


def test_truncated_file_raises_naming_it(shared_data, tmp_path):
    raw = (shared_data / HEAD).read_bytes()
    broken = tmp_path / "sub-01_T1w.nii.gz"
    broken.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BHDInputError, match=str(broken)):
        load_anatomical(broken)
    with pytest.raises(BHDInputError, match="sub-01_T1w.nii.gz"):
        preprocess(broken, tmp_path / "work")
    not_gzip = tmp_path / "bad.nii.gz"
    not_gzip.write_bytes(b"this is not an image")
    with pytest.raises(BHDInputError, match="bad.nii.gz"):
        load_anatomical(not_gzip)


def _save(tmp_path: Path, data: np.ndarray, zooms=(1.0, 1.0, 1.0), name="img.nii.gz") -> Path:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.diag([*zooms, 1.0])), path)
    return path


def test_input_checks(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.random((32, 32, 32)).astype(np.float32)
    with pytest.raises(BHDInputError, match="3D"):
        load_anatomical(_save(tmp_path, np.stack([vol, vol], axis=-1), name="four_d.nii.gz"))
    assert load_anatomical(_save(tmp_path, vol[..., None], (3.0, 3.0, 3.0), "one_volume.nii.gz")).shape == (32, 32, 32)
    with pytest.raises(BHDInputError, match="all zeros"):
        load_anatomical(_save(tmp_path, np.zeros_like(vol), (3.0, 3.0, 3.0), "zeros.nii.gz"))
    with pytest.raises(BHDInputError, match="anisotropic"):
        load_anatomical(_save(tmp_path, vol, zooms=(1.0, 1.0, 6.0), name="aniso.nii.gz"))
    with pytest.raises(BHDInputError, match="not found"):
        load_anatomical(tmp_path / "missing.nii.gz")
    with pytest.raises(BHDInputError, match=r"covers only 96 x 96 x 20 mm"):  # a 20-slice slab
        load_anatomical(_save(tmp_path, vol[:, :, :20], (3.0, 3.0, 1.0), "slab.nii.gz"))
    with_nan = vol.copy()
    with_nan[0, 0, :4] = np.nan
    with pytest.warns(UserWarning, match="NaN"):
        img = load_anatomical(_save(tmp_path, with_nan, (3.0, 3.0, 3.0), "nan.nii.gz"))
    assert np.isfinite(img.get_fdata()).all() and img.get_fdata()[0, 0, 0] == 0


def test_skull_stripped_detection(shared_data):
    for rel, expected in ((HEAD, False), (STRIPPED_T1, True)):
        img = load_anatomical(shared_data / rel)
        assert looks_skull_stripped(img.get_fdata(), img.header.get_zooms()[:3]) is expected


def test_normalize_percentile():
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, (20, 20, 20)).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[5:15, 5:15, 5:15] = True
    out, low, high = normalize_percentile(image, mask)
    assert low == pytest.approx(np.percentile(image[mask], 1))
    assert high == pytest.approx(np.percentile(image[mask], 99))
    assert out.dtype == np.float32 and out.min() == 0 and out.max() == 1 and not out[~mask].any()


def _preprocess_in_a_process_of_its_own(head: Path, work: Path) -> dict:
    """``preprocess(head, work, seed=0, n_threads=1)`` in a new Python process, as each bhd-app job runs: ITK fixes
    its thread count at its first use in a process, which in the test process may have come earlier, with more
    threads, from another test. Returns the grid image and brain mask."""
    work.mkdir(parents=True)
    out = work / "result.npz"
    code = ("import sys, numpy as np; from bhd_app.pipeline.preprocessing import preprocess; "
            "p = preprocess(sys.argv[1], sys.argv[2], seed=0, n_threads=1); "
            "np.savez(sys.argv[3], image=p.image, mask=p.brain_mask)")
    run = subprocess.run([sys.executable, "-c", code, str(head), str(work), str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    return dict(np.load(out))


def test_bias_correction_removes_a_known_coil_field(head):
    """A ring of surface-coil profiles (40 % range over the head) multiplied into a real raw head: after N4 the
    corrected changed head over the corrected original leaves under a third of the field's spread in the brain."""
    from bhd_app.evaluation.head_changes import coil_field
    from bhd_app.pipeline.preprocessing.bias import bias_correct, head_mask

    img = load_anatomical(head)
    data = img.get_fdata(dtype=np.float32)
    field = coil_field(data.shape, img.header.get_zooms()[:3], head_mask(data), 0.4, seed=3)
    (original, k), (changed, _) = (bias_correct(x, head_mask(x), img.affine) for x in (data, data * field))
    assert k == 3 and original.shape == data.shape and original.dtype == np.float32  # 2 mm voxels: shrunk by 3
    brain = ndimage.binary_erosion(head_mask(data), iterations=8) & (original > 0)
    left, put_in = np.std(np.log(changed[brain] / original[brain])), np.std(np.log(field[brain]))
    assert left < put_in / 3, (left, put_in)


def test_deepbet_at_its_own_input_size_is_deepbets_run(shared_data, monkeypatch):
    """Oracle: at deepbet's own 256^3 input, extract_brain_deepbet is deepbet's ``run`` voxel for voxel, on a
    head stored in PSR order (so the reorientation to RAS and back is exercised); at DEEPBET_SHAPE the mask
    stays within Dice 0.98 of it."""
    from bhd_app.pipeline.preprocessing import brain

    img = load_anatomical(shared_data / "IXI/IXI013-HH-1212-T1_ds.nii.gz")
    assert nib.aff2axcodes(img.affine) != ("R", "A", "S")
    data = img.get_fdata(dtype=np.float32)
    _, reference, _ = brain._deepbet_model().run(nib.Nifti1Image(data, img.affine))  # deepbet's BrainExtraction
    reference = np.asarray(reference.dataobj) > 0
    shipped = brain.extract_brain_deepbet(data, img.affine)
    monkeypatch.setattr(brain, "DEEPBET_SHAPE", (256, 256, 256))
    np.testing.assert_array_equal(brain.extract_brain_deepbet(data, img.affine), reference)
    assert dice(shipped, reference) > 0.98


@pytest.mark.slow
def test_deterministic(head, tmp_path):
    first = _preprocess_in_a_process_of_its_own(head, tmp_path / "a")
    again = _preprocess_in_a_process_of_its_own(head, tmp_path / "b")
    assert np.array_equal(again["image"], first["image"]) and np.array_equal(again["mask"], first["mask"])


@pytest.mark.slow
def test_stripped_input_keeps_its_mask(shared_data, tmp_path):
    path = shared_data / STRIPPED_T1
    p = preprocess(path, tmp_path)
    assert p.settings["brain_extraction"]["method"] == "nonzero"
    assert dice(p.native_brain_mask.dataobj, nib.load(shared_data / HDBET_MASK).dataobj) > 0.99
    assert p.qc["template_dice"] > 0.9


@pytest.mark.slow
def test_template_method_on_a_head(head, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback, no poor-overlap warning
        p = preprocess(head, tmp_path, brain_extraction="template")
    assert p.settings["brain_extraction"]["method"] == "template"
    assert p.qc["template_dice"] > 0.9 and 1.0 < p.qc["brain_volume_ml"] / 1000 < 1.9


def test_tissue_fit_tells_brains_of_any_contrast_from_a_phantom():
    from bhd_app.pipeline.preprocessing import MIN_TISSUE_FIT, template_brain_mask_on_grid, tissue_fit
    from bhd_app.pipeline.templates import template_on_grid

    t1, mask = template_on_grid(), template_brain_mask_on_grid() > 0
    assert tissue_fit(t1, mask) > 0.9 and tissue_fit(t1.max() - t1, mask) > 0.9  # T1-like and inverted (T2-like)
    phantom = np.random.default_rng(0).normal(1.0, 0.05, t1.shape)
    assert tissue_fit(phantom, mask) < MIN_TISSUE_FIT
