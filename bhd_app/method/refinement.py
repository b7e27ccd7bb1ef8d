"""The refinement module (section 3.5): gradient ascent on a similarity to the source image.

Starting from the edge-to-image output, each iteration moves the harmonized
image along the gradient of its subject-level similarity with the input source
image, which curbs hallucination (Fig. 6): the source and target contrasts
differ mostly at low frequencies, so the two images stay highly correlated.

* ``ncc``: normalized cross-correlation (the paper's choice);
* ``mi``: mutual information from Parzen-window (Gaussian kernel) histograms,
  256 bins, sigma 0.01 (section 4.7);
* ``split``: not a gradient ascent: the edge-to-image output's low spatial
  frequencies (Gaussian low-pass of ``split_sigma_mm``, normalized inside the
  brain) plus the reference's high frequencies, a subject-specific, learned
  version of SSIMH's low-frequency swap (``frequency_split``);
* ``none``: no refinement.

Two step rules. ``paper``: x += alpha * N * gradient (N voxels in the region; the
per-voxel gradient of a whole-volume similarity scales as 1/N), the paper's
alpha = 0.02 and 6 iterations; it is defined for NCC only (MI's gradient has
another scale: alpha * N * gradient of MI moves voxels by whole intensity units).
``rms``: the gradient scaled to unit RMS over the region, so ``step`` is the
typical intensity change per iteration (in [0, 1] image units).

For NCC the maximum along the gradient is known: the image becomes a linear map
of the source. An ``rms`` step never goes past it (fixed-size steps would jump over the
maximum and oscillate around it, which the paper's step of 0.02 does on images
already this close to the source), so larger steps and more iterations move the
result steadily from the edge-to-image output towards a linear map of the source.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..config import GRID_SPACING, T1W

OBJECTIVES = ("ncc", "mi", "split", "none")
STEP_RULES = ("rms", "paper")


def ncc_gradient(x: np.ndarray, source: np.ndarray) -> tuple[float, np.ndarray]:
    """NCC(x, source) over flat arrays and its gradient with respect to x (closed form)."""
    a = x - x.mean()
    b = source - source.mean()
    na, nb = np.linalg.norm(a) + 1e-12, np.linalg.norm(b) + 1e-12
    value = float(a @ b / (na * nb))
    grad = (b / nb - value * a / na) / na
    return value, grad - grad.mean()


def mi_gradient(x: np.ndarray, source: np.ndarray, bins: int = 256, sigma: float = 0.01,
                chunk: int = 65_536) -> tuple[float, np.ndarray]:
    """Mutual information with Parzen-window histograms (section 4.7) and its gradient at every voxel.

    With Gaussian weights w_ia of voxel i in bin a (normalized over a) and the joint histogram
    p_ab = mean_i w_ia(x_i) u_ib(s_i), the source marginal does not depend on x, so
    dMI/dp_ab = log(p_ab / p_a) and dMI/dx_i = (1/N) sum_a w'_ia sum_b u_ib log(p_ab / p_a).
    Both passes run over all voxels in chunks of ``chunk`` (flat arrays of N voxels in [0, 1]).
    """
    centres = np.linspace(0, 1, bins)

    def weights(values: np.ndarray) -> np.ndarray:
        w = np.exp(-0.5 * ((values[:, None] - centres) / sigma) ** 2)
        return w / (w.sum(1, keepdims=True) + 1e-12)

    n = x.size
    parts = range(0, n, chunk)
    joint = sum(weights(x[i:i + chunk]).T @ weights(source[i:i + chunk]) for i in parts) / n
    px, ps = joint.sum(1), joint.sum(0)
    mi = float((joint * (np.log(joint + 1e-12) - np.log(px[:, None] * ps[None, :] + 1e-12))).sum())
    log_ratio = np.log(joint + 1e-12) - np.log(px[:, None] + 1e-12)  # dMI / dp_ab
    grad = np.empty(n)
    for i in parts:
        xs = x[i:i + chunk]
        w = weights(xs)
        dlog = -(xs[:, None] - centres) / sigma**2  # d log(kernel_a) / dx
        dw = w * (dlog - (w * dlog).sum(1, keepdims=True))  # derivative of the normalized weights
        grad[i:i + chunk] = (dw * (weights(source[i:i + chunk]) @ log_ratio.T)).sum(1) / n
    return mi, grad


def masked_lowpass(image: np.ndarray, mask: np.ndarray, sigma: float | tuple[float, ...]) -> np.ndarray:
    """Gaussian low-pass of ``image`` (D, H, W; ``sigma`` in voxels, one or one per axis) inside ``mask``
    (normalized convolution: no pull towards the zero background at the brain's edge); zero outside the mask."""
    m = (mask > 0).astype(np.float32)
    num = ndimage.gaussian_filter(image.astype(np.float32) * m, sigma)
    den = ndimage.gaussian_filter(m, sigma)
    return np.where(m > 0, num / np.maximum(den, 1e-6), 0).astype(np.float32)


def frequency_split(generated: np.ndarray, reference: np.ndarray, mask: np.ndarray,
                    sigma: float | tuple[float, ...], reference_seen: np.ndarray | None = None) -> np.ndarray:
    """reference + low-pass(generated - ``reference_seen``), clipped to [0, 1], zero outside ``mask`` (D, H, W).

    With ``reference_seen`` the reference itself (the default) this is low-pass(generated) + the reference's
    frequencies above the low-pass. A model on a coarser grid sees the reference as block means: passing the
    reference at that resolution makes the low-passed difference the model's change alone, without the partial
    volume of the coarse voxels at the brain's edge (``harmonize.at_model_resolution``).
    """
    seen = reference if reference_seen is None else reference_seen
    out = reference + masked_lowpass(generated - seen, mask, sigma)
    return np.where(mask > 0, np.clip(out, 0.0, 1.0), 0).astype(np.float32)


def _distance_to_ncc_maximum(x: np.ndarray, value: float) -> float:
    """RMS change that takes x to the NCC maximum along the NCC gradient: std(x) * tan(angle to the source)."""
    return float(x.std() * np.sqrt(max(1.0 - value**2, 0.0)) / max(value, 1e-6))


def check_refinement(objective: str, step_rule: str) -> None:
    """ValueError for an unknown objective or step rule, and for MI under the ``paper`` step rule."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown refinement {objective!r}; choose from {OBJECTIVES}")
    if step_rule not in STEP_RULES:
        raise ValueError(f"unknown refinement step rule {step_rule!r}; choose from {STEP_RULES}")
    if objective == "mi" and step_rule == "paper":
        raise ValueError("the MI refinement needs the rms step rule: the paper's step (x += 0.02 x N x gradient) "
                         "is defined for NCC, and on MI's gradient it moves voxels by whole intensity units")


def split_sigma_voxels(split_sigma_mm: float, voxel_size: tuple[float, ...]) -> tuple[float, ...]:
    """The split's Gaussian low-pass in voxels along each axis of a grid with this voxel size (mm)."""
    return tuple(split_sigma_mm / size for size in voxel_size)


def refine(harmonized: np.ndarray, source: np.ndarray, mask: np.ndarray, objective: str,
           step: float = T1W.refine_step, iterations: int = T1W.refine_iterations, region: str = T1W.refine_region,
           step_rule: str = T1W.refine_step_rule, split_sigma_mm: float = T1W.split_sigma_mm,
           reference_seen: np.ndarray | None = None, voxel_size: tuple[float, ...] = GRID_SPACING
           ) -> tuple[np.ndarray, list[float]]:
    """Gradient ascent on the similarity between the harmonized and the source image (section 3.5).

    ``step_rule`` says what ``step`` means: ``rms``, the RMS intensity change per iteration
    (capped at the NCC maximum); ``paper``, x += step * N * gradient over the N region voxels,
    the paper's plain gradient ascent (alpha = 0.02, 6 iterations; NCC only, ValueError for MI).
    ``split`` ignores the step and returns ``frequency_split`` with ``split_sigma_mm`` in voxels of ``voxel_size``
    (mm, the harmonization grid's by default) along each axis (and ``reference_seen``). ``region``
    is ``brain`` (the similarity and the update use brain voxels only) or ``volume`` (the whole
    grid). The defaults are those of ``config.T1W``. Returns
    (refined image in [0, 1], the similarity before each iteration and after the last).
    """
    check_refinement(objective, step_rule)
    out = harmonized.astype(np.float32).copy()
    if objective == "split":
        return frequency_split(out, source, mask, split_sigma_voxels(split_sigma_mm, voxel_size), reference_seen), []
    if objective == "none" or iterations == 0:
        return out, []
    sel = mask > 0 if region == "brain" else np.ones(out.shape, bool)
    x = out[sel].astype(np.float64)
    s = source[sel].astype(np.float64)
    gradient = ncc_gradient if objective == "ncc" else mi_gradient
    history = []
    for _ in range(iterations):
        value, grad = gradient(x, s)
        history.append(value)
        rms = np.sqrt(np.mean(grad**2))
        if rms < 1e-12:  # already a maximum (x is a linear map of the source): nothing to refine
            break
        if step_rule == "paper":
            x = np.clip(x + step * x.size * grad, 0.0, 1.0)
            continue
        length = min(step, _distance_to_ncc_maximum(x, value)) if objective == "ncc" else step
        x = np.clip(x + length * grad / rms, 0.0, 1.0)
    history.append(gradient(x, s)[0])
    out[sel] = x
    return out, history
