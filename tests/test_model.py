"""Tests of bhd_app.method.model: the edge-to-image 3D U-Net (supplement S3.1) and the coordinate channels (section 3.3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from bhd_app.method.model import Down, EdgeToImageUNet, RMSNorm, UNetConfig, coordinate_grid, time_embedding
from bhd_app.pipeline.templates import harmonization_grid


def small_net(width: int = 4, seed: int = 0) -> EdgeToImageUNet:
    torch.manual_seed(seed)
    return EdgeToImageUNet(UNetConfig(base_width=width, time_dim=16))


@pytest.mark.parametrize("size,batch", [(16, 2), (32, 1)])
def test_output_shape(size, batch):
    net = small_net()
    x = torch.randn(batch, 5, size, size, size)
    out = net(x, torch.rand(batch))
    assert out.shape == (batch, 1, size, size, size)
    assert out.dtype == torch.float32


def test_anisotropic_shape_and_zero_initialized_head():
    """The head starts at zero (the initial velocity is 0); a non-cubic input keeps its shape."""
    net = small_net()
    out = net(torch.randn(1, 5, 16, 24, 8), torch.tensor([0.3]))
    assert out.shape == (1, 1, 16, 24, 8)
    assert torch.count_nonzero(out) == 0


def test_paper_default_config():
    config = UNetConfig()
    assert (config.base_width, config.multipliers, config.in_channels) == (64, (1, 2, 4, 8), 5)
    assert config.downsampling_factor == 8
    assert UNetConfig.from_dict(config.to_dict()) == config


def test_harmonization_grid_divides_by_downsampling_factor():
    factor = UNetConfig().downsampling_factor
    assert all(s % factor == 0 for s in harmonization_grid().shape)


@pytest.mark.parametrize("size", [12, 18, 20])
def test_size_not_divisible_by_eight_fails(size):
    """Documented in EdgeToImageUNet: spatial sizes must divide by 8; other sizes raise instead of misaligning."""
    net = small_net()
    with pytest.raises((RuntimeError, ValueError)):
        net(torch.randn(1, 5, size, 16, 16), torch.zeros(1))


def test_down_is_an_exact_space_to_channel_rearrangement():
    torch.manual_seed(1)
    c = 3
    x = torch.randn(2, c, 4, 6, 8)
    down = Down(c, 8 * c)
    with torch.no_grad():
        down.proj.weight.copy_(torch.eye(8 * c)[:, :, None, None, None])
        down.proj.bias.zero_()
    y = down(x)
    assert y.shape == (2, 8 * c, 2, 3, 4)
    # Channel c * 8 + 4 i + 2 j + k at (d, h, w) holds x[c, 2 d + i, 2 h + j, 2 w + k].
    for ch in range(c):
        for i in range(2):
            for j in range(2):
                for k in range(2):
                    torch.testing.assert_close(y[:, ch * 8 + 4 * i + 2 * j + k], x[:, ch, i::2, j::2, k::2],
                                               rtol=0, atol=0)
    # The rearrangement is invertible: undo it and get x back exactly.
    b, _, d, h, w = y.shape
    back = y.view(b, c, 2, 2, 2, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(x.shape)
    torch.testing.assert_close(back, x, rtol=0, atol=0)


def test_down_applies_its_projection_to_the_rearrangement():
    torch.manual_seed(2)
    x = torch.randn(1, 2, 4, 4, 4)
    down = Down(2, 5)
    blocks = torch.cat([x[:, ch:ch + 1, i::2, j::2, k::2]
                        for ch in range(2) for i in range(2) for j in range(2) for k in range(2)], dim=1)
    expected = F.conv3d(blocks, down.proj.weight, down.proj.bias)
    torch.testing.assert_close(down(x), expected)
    # The same on a channels-last input (the CPU training layout).
    torch.testing.assert_close(down(x.contiguous(memory_format=torch.channels_last_3d)), expected)


def test_coordinate_grid_range_and_corners():
    shape = (4, 6, 5)
    g = coordinate_grid(shape)
    assert g.shape == (3, *shape)
    assert g.min() == -1 and g.max() == 1
    for corner in np.ndindex(2, 2, 2):
        index = tuple(-1 if c else 0 for c in corner)
        expected = torch.tensor([1.0 if c else -1.0 for c in corner])
        torch.testing.assert_close(g[(slice(None), *index)], expected, rtol=0, atol=0)
    # Channel a varies along axis a only, evenly spaced.
    for a, n in enumerate(shape):
        values = g[a].movedim(a, 0).reshape(n, -1)
        assert (values == values[:, :1]).all()
        torch.testing.assert_close(values[:, 0], torch.linspace(-1, 1, n))


def test_rms_norm_has_unit_rms_over_channels():
    norm = RMSNorm(6)
    x = torch.randn(2, 6, 3, 3, 3) * 5 + 1
    rms = norm(x).pow(2).mean(dim=1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms))


def test_time_embedding_distinguishes_times():
    emb = time_embedding(torch.tensor([0.0, 0.5, 1.0]), 16)
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb[0], torch.cat([torch.zeros(8), torch.ones(8)]))
    assert (emb[1] - emb[2]).abs().max() > 0.1


def test_gradients_reach_every_parameter():
    net = small_net(seed=3)
    torch.nn.init.normal_(net.head.weight, std=0.1)  # the zero head would block the gradient below it
    x = torch.randn(2, 5, 16, 16, 16)
    out = net(x, torch.tensor([0.2, 0.7]))
    (out - torch.randn_like(out)).pow(2).mean().backward()
    names = [name for name, p in net.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not names, f"no gradient reaches {names}"


def test_zero_head_still_learns():
    """From the zero initialization, the head gets a gradient (so training can start)."""
    net = small_net(seed=4)
    out = net(torch.randn(1, 5, 16, 16, 16), torch.tensor([0.5]))
    (out - 1).pow(2).mean().backward()
    assert net.head.weight.grad.abs().max() > 0


def test_output_depends_on_every_input_channel():
    net = small_net(seed=5)
    torch.nn.init.normal_(net.head.weight, std=0.1)
    x = torch.randn(1, 5, 16, 16, 16)
    with torch.no_grad():
        ref = net(x, torch.tensor([0.5]))
        for ch in range(5):
            y = x.clone()
            y[:, ch] += 1
            assert (net(y, torch.tensor([0.5])) - ref).abs().max() > 1e-4, ch
        assert (net(x, torch.tensor([0.9])) - ref).abs().max() > 1e-4
