"""The solver operator against direct convolution, its adjoint, layer weights, the renderer."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d

from cadfd_ros.forward import LayeredBlur, depth_to_layer_coord, layer_coord_to_depth, soft_layer_weights
from cadfd_ros.forward.render import render_occlusion_aware



@pytest.fixture(autouse=True)
def float64_default():
    """Exactness checks run in float64; restore the default so other modules are unaffected."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _operator(bank, height=23, width=31, channels=1):
    psfs = torch.from_numpy(bank.psfs_for_channels(channels)).double()
    return LayeredBlur(psfs, height, width)


def test_forward_matches_direct_spatial_convolution(small_bank, rng):
    op = _operator(small_bank, channels=3)
    x = rng.random((1, 3, *op.padded_shape))
    coord = rng.uniform(0, small_bank.num_layers - 1, size=(1, op.height, op.width))
    weights = soft_layer_weights(torch.from_numpy(coord), small_bank.num_layers).numpy()
    expected = np.zeros((3, op.height, op.width))
    for k in range(small_bank.num_layers):
        for c in range(3):
            expected[c] += weights[0, k] * convolve2d(x[0, c], small_bank.psfs[k, 0], mode="valid")
    got = op(torch.from_numpy(x), torch.from_numpy(weights))[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-10)


def test_fourier_grid_is_fft_friendly_and_keeps_the_valid_model(small_bank, rng):
    """The padded size 31 + 2p is prime-heavy; the FFTs run on the next 5-smooth size, and the valid block is
    still the linear convolution (x's extra band is zero, so nothing wraps into it)."""
    op = _operator(small_bank, height=29, width=37)
    assert all(f >= p for f, p in zip(op.fft_shape, op.padded_shape))
    for size in op.fft_shape:
        rest = size
        for prime in (2, 3, 5):
            while rest % prime == 0:
                rest //= prime
        assert rest == 1, op.fft_shape
    assert op.fft_shape != op.padded_shape  # the case this test is about
    x = rng.random((1, 1, *op.padded_shape))
    weights = soft_layer_weights(torch.full((1, op.height, op.width), 2.0, dtype=torch.float64), small_bank.num_layers)
    expected = convolve2d(x[0, 0], small_bank.psfs[2, 0], mode="valid")
    np.testing.assert_allclose(op(torch.from_numpy(x), weights)[0, 0].numpy(), expected, atol=1e-10)


def test_adjoint_dot_product(small_bank, rng):
    op = _operator(small_bank, channels=3)
    x = torch.from_numpy(rng.standard_normal((2, 3, *op.padded_shape)))
    y = torch.from_numpy(rng.standard_normal((2, 3, op.height, op.width)))
    weights = soft_layer_weights(torch.from_numpy(rng.uniform(0, 7, (2, op.height, op.width))), 8)
    lhs = torch.sum(op(x, weights) * y)
    rhs = torch.sum(x * op.A_adjoint(y, weights))
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-10)


def test_selected_layers_equal_the_full_operator_where_the_rest_weigh_nothing(small_bank, rng):
    op = _operator(small_bank, channels=3)
    layers = torch.tensor([1, 2, 3])
    sub = op.select_layers(layers)
    assert sub.num_layers == 3 and sub.otf.shape[0] == 3 and op.num_layers == small_bank.num_layers
    x = torch.from_numpy(rng.random((1, 3, *op.padded_shape)))
    y = torch.from_numpy(rng.random((1, 3, op.height, op.width)))
    coord = torch.from_numpy(rng.uniform(1, 3, size=(1, op.height, op.width)))  # layers 1..3 only
    weights = soft_layer_weights(coord, small_bank.num_layers)
    torch.testing.assert_close(sub(x, weights[:, layers]), op(x, weights))
    torch.testing.assert_close(sub.A_adjoint(y, weights[:, layers]), op.A_adjoint(y, weights))


def test_normal_operator_is_symmetric_and_positive(small_bank, rng):
    op = _operator(small_bank, channels=3)
    x = torch.from_numpy(rng.standard_normal((1, 3, *op.padded_shape)))
    z = torch.from_numpy(rng.standard_normal((1, 3, *op.padded_shape)))
    weights = soft_layer_weights(torch.from_numpy(rng.uniform(0, 7, (1, op.height, op.width))), 8)
    normal_x = op.A_adjoint_A(x, weights)
    assert float((normal_x * z).sum()) == pytest.approx(float((x * op.A_adjoint_A(z, weights)).sum()), rel=1e-10)
    assert float((normal_x * x).sum()) == pytest.approx(float((op(x, weights) ** 2).sum()), rel=1e-10)


def test_prox_is_exact_where_depth_is_constant(small_bank, rng):
    """With one layer everywhere the per-layer closed form is the exact minimiser, up to the frame
    border, where the capture grid's reflection stands in for the unknown scene."""
    height, width = 72, 80
    op = _operator(small_bank, height, width)
    x_true = torch.from_numpy(rng.random((1, 1, *op.padded_shape)))
    coord = torch.full((1, height, width), 5.0)
    weights = soft_layer_weights(coord, small_bank.num_layers)
    y = op(x_true, weights) + 0.01 * torch.from_numpy(rng.standard_normal((1, 1, height, width)))
    x_ref, rho = op.pad_image(y), 5e-2
    x_prox = op.prox_l2(x_ref, coord, rho, op.capture_spectra(y))
    x_exact, _ = op.least_squares(y, coord, x_ref, rho, x_prox, 300, tolerance=1e-9)
    gap = (x_prox - x_exact).abs()[0, 0]
    k = op.kernel_size
    # measured: max 0.0036 two PSF widths in, mean 0.0064 half a width in (the border effect decays)
    assert float(gap[2 * k : -2 * k, 2 * k : -2 * k].max()) < 0.01
    assert float(gap[2 * k : -2 * k, 2 * k : -2 * k].mean()) < 0.3 * float(gap[k // 2 : -(k // 2), k // 2 : -(k // 2)].mean())

    def objective(x):
        return float(0.5 * ((op(x, weights) - y) ** 2).sum() + 0.5 * rho * ((x - x_ref) ** 2).sum())

    assert objective(x_exact) <= objective(x_prox) < 0.8 * objective(x_ref)  # measured 0.72


def test_rgb_least_squares_solves_the_normal_equations_channel_by_channel(small_bank, rng):
    """The RGB solve runs one channel at a time; with different PSFs per channel, a depth edge and a
    gradient pull, it must still reach the joint normal equations (A^T A + R) x = A^T y + R x_ref."""
    height, width = 64, 72
    psfs = torch.from_numpy(small_bank.psfs_for_channels(3)).double().clone()
    psfs[:, 1] = psfs[:, 1].transpose(-1, -2)  # channels differ: a chromatic lens
    psfs[:, 2] = psfs[:, 2].flip(-1)
    op = LayeredBlur(psfs, height, width)
    coord = torch.where(torch.arange(width) < width // 2, 1.0, 6.0).double().expand(1, height, width)
    weights = soft_layer_weights(coord, small_bank.num_layers)
    x_true = torch.from_numpy(rng.random((1, 3, *op.padded_shape)))
    y = op(x_true, weights) + 0.01 * torch.from_numpy(rng.standard_normal((1, 3, height, width)))
    x_ref, rho, g = op.pad_image(y), 5e-2, 1.0
    x, iterations = op.least_squares(y, coord, x_ref, rho, x_ref, 400, tolerance=1e-10, gradient_weight=g)
    lhs = op.A_adjoint_A(x, weights) + op.regulariser(x, rho, g)
    rhs = op.A_adjoint(y, weights) + op.regulariser(x_ref, rho, g)
    assert 0 < iterations < 400
    assert float((lhs - rhs).norm() / rhs.norm()) < 1e-6
    for c in range(3):  # and each channel is its own system: the mono operator of that channel agrees
        xc, _ = op.select_channel(c).least_squares(y[:, c : c + 1], coord, x_ref[:, c : c + 1], rho,
                                                   x_ref[:, c : c + 1], 400, 1e-10, g)
        torch.testing.assert_close(xc, x[:, c : c + 1])


def test_rgb_least_squares_in_the_opponent_basis_when_channels_share_psfs(small_bank, rng):
    """With the same PSFs in every channel the solve runs in a luminance / opponent basis: at a tight tolerance it
    reaches the same normal-equation solution as the RGB one, and at the sampler's tolerance the chroma
    solves (stopping at the luminance's absolute residual) take fewer iterations than the RGB channels did.
    A chromatic bank has no such basis."""
    height, width = 64, 72
    psfs = torch.from_numpy(small_bank.psfs_for_channels(3)).double()
    op = LayeredBlur(psfs, height, width)
    assert op.colour_basis() is not None
    basis = op.colour_basis()
    torch.testing.assert_close(basis @ basis.T, torch.eye(3, dtype=basis.dtype))
    chromatic = psfs.clone()
    chromatic[:, 2] = chromatic[:, 2].flip(-1)
    assert LayeredBlur(chromatic, height, width).colour_basis() is None
    coord = torch.where(torch.arange(width) < width // 2, 1.0, 6.0).double().expand(1, height, width)
    weights = soft_layer_weights(coord, small_bank.num_layers)
    grey = torch.from_numpy(rng.random((1, 1, *op.padded_shape)))
    x_true = grey * torch.tensor([1.0, 0.9, 0.8], dtype=grey.dtype).view(1, 3, 1, 1)  # mostly luminance
    y = op(x_true, weights) + 0.01 * torch.from_numpy(rng.standard_normal((1, 3, height, width)))
    x_ref, rho = op.pad_image(y), 5e-2
    x, _ = op.least_squares(y, coord, x_ref, rho, x_ref, 400, tolerance=1e-10, gradient_weight=1.0)
    per_channel = torch.cat([op.select_channel(c).least_squares(y[:, c : c + 1], coord, x_ref[:, c : c + 1], rho,
                                                                x_ref[:, c : c + 1], 400, 1e-10, 1.0)[0]
                             for c in range(3)], dim=1)
    torch.testing.assert_close(x, per_channel, rtol=1e-6, atol=1e-7)
    # at the sampler's tolerance: the chroma solves stop early, the luminance is solved as in RGB
    rgb = [op.select_channel(c).least_squares(y[:, c : c + 1], coord, x_ref[:, c : c + 1], rho, x_ref[:, c : c + 1],
                                              100, 2e-2, 1.0) for c in range(3)]
    in_basis = [torch.einsum("dc,bchw->bdhw", basis, v) for v in (y, x_ref)]
    lum, lum_n, lum_power = op.select_channel(0)._least_squares_one(
        in_basis[0][:, :1], coord, in_basis[1][:, :1], rho, in_basis[1][:, :1], 100, 2e-2, 1.0, None)
    chroma_n = [op.select_channel(c)._least_squares_one(
        in_basis[0][:, c : c + 1], coord, in_basis[1][:, c : c + 1], rho, in_basis[1][:, c : c + 1], 100, 2e-2, 1.0,
        None, lum_power)[1] for c in (1, 2)]
    assert max(chroma_n) < min(n for _, n in rgb) <= lum_n + 1
    x_fast, _ = op.least_squares(y, coord, x_ref, rho, x_ref, 100, tolerance=2e-2, gradient_weight=1.0)
    x_rgb = torch.cat([x for x, _ in rgb], dim=1)
    assert float((x_fast - x).norm() / x.norm()) < 1.5 * float((x_rgb - x).norm() / x.norm()) + 1e-4


def test_least_squares_beats_the_per_layer_blend_at_a_depth_edge(default_bank):
    """Across a depth edge the per-layer Fourier prox is only approximate; conjugate gradients on the
    exact layered model must lower the prox objective further, monotonically in the iterations."""
    from cadfd_ros.bench.scenes import fit_photo, load_photo

    height, width = 64, 96
    sharp = torch.from_numpy(fit_photo(load_photo("brick"), height, width)).double()
    sharp = sharp.mean(dim=-1) if sharp.ndim == 3 else sharp
    op = _operator(default_bank, height, width)
    x_true = op.pad_image(sharp[None, None])
    coord = torch.full((1, height, width), 2.0)
    coord[:, :, width // 2 :] = 13.0  # a near layer beside a far one
    weights = soft_layer_weights(coord, default_bank.num_layers)
    noise = 0.01 * torch.randn(1, 1, height, width, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = op(x_true, weights) + noise
    x_ref = op.pad_image(y)  # a blurry reference, as a weak prior estimate would be
    rho = 100 * 0.01**2
    x_prox = op.prox_l2(x_ref, coord, rho, op.capture_spectra(y))

    def objective(x):
        return float(0.5 * ((op(x, weights) - y) ** 2).sum() + 0.5 * rho * ((x - x_ref) ** 2).sum())

    values = [objective(op.least_squares(y, coord, x_ref, rho, x_prox, n)[0]) for n in (0, 5, 20)]
    assert values[0] == pytest.approx(objective(x_prox))
    assert values[2] < values[1] < values[0]
    assert values[2] < 0.9 * values[0]
    # the tolerance stops it early, and only where the residual has fallen that far
    _, loose = op.least_squares(y, coord, x_ref, rho, x_prox, 100, tolerance=0.1)
    _, tight = op.least_squares(y, coord, x_ref, rho, x_prox, 100, tolerance=0.001)
    assert 1 <= loose < tight <= 100


def test_capture_grid_round_trip_and_same_convolution(small_bank, rng):
    """The capture grid holds the capture at its centre, and its OTFs are 'same' convolutions."""
    op = _operator(small_bank, 23, 31)
    y = torch.from_numpy(rng.random((1, 1, 23, 31)))
    padded = op.pad_capture(y)
    assert tuple(padded.shape[-2:]) == op.capture_grid and op.capture_grid[0] >= 23 + 2 * op.kernel_size
    torch.testing.assert_close(op.crop_capture(padded), y)
    blurred = torch.fft.irfft2(torch.fft.rfft2(padded) * op.capture_otf[3], s=op.capture_grid)
    expected = convolve2d(padded[0, 0].numpy(), small_bank.psfs[3, 0], mode="same", boundary="wrap")
    np.testing.assert_allclose(op.crop_capture(blurred)[0, 0].numpy(), op.crop_capture(torch.from_numpy(expected)
                                                                                       ).numpy(), atol=1e-10)


def test_forward_is_differentiable_in_depth(small_bank, rng):
    op = _operator(small_bank)
    x = torch.from_numpy(rng.random((1, 1, *op.padded_shape)))
    coord = torch.full((1, op.height, op.width), 3.3, requires_grad=True)
    op(x, soft_layer_weights(coord, 8)).sum().backward()
    # hat weights: at 3.3 a pixel is 0.7 (h_3 * x) + 0.3 (h_4 * x), so d/du is (h_4 * x) - (h_3 * x)
    expected = (convolve2d(x[0, 0].numpy(), small_bank.psfs[4, 0], mode="valid")
                - convolve2d(x[0, 0].numpy(), small_bank.psfs[3, 0], mode="valid"))
    np.testing.assert_allclose(coord.grad[0].numpy(), expected, atol=1e-10)


def test_soft_weights_sum_to_one_and_depth_round_trip(small_bank):
    coord = torch.linspace(0, small_bank.num_layers - 1, 57).view(1, 3, 19)
    weights = soft_layer_weights(coord, small_bank.num_layers)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones_like(coord))
    depths = torch.from_numpy(small_bank.depths).double()
    back = depth_to_layer_coord(layer_coord_to_depth(coord, depths), depths)
    torch.testing.assert_close(back, coord, atol=1e-9, rtol=0)
    # layer centres map to the bank's depths exactly
    torch.testing.assert_close(layer_coord_to_depth(torch.arange(8.0), depths), depths, rtol=1e-6, atol=0)


def test_renderer_matches_plain_convolution_for_one_layer(small_bank, rng):
    image = rng.random((40, 48)).astype(np.float32)
    depth = np.full(image.shape, small_bank.depths[3], np.float32)
    capture = render_occlusion_aware(image, depth, small_bank)
    expected = convolve2d(np.pad(image, small_bank.half_size, mode="edge"), small_bank.psfs[3, 0], mode="valid")
    np.testing.assert_allclose(capture, expected, atol=1e-4)


def test_renderer_has_no_dark_seams_at_occlusions(small_bank):
    """A uniform scene stays uniform whatever the depth edges; the plain layered sum does not."""
    image = np.full((48, 48), 0.6, np.float32)
    depth = np.full(image.shape, small_bank.depths[-1], np.float32)
    depth[12:36, 12:36] = small_bank.depths[0]
    capture = render_occlusion_aware(image, depth, small_bank)
    np.testing.assert_allclose(capture, 0.6, atol=1e-3)
    plain = np.zeros_like(image)
    for index, d in enumerate((small_bank.depths[0], small_bank.depths[-1])):
        alpha = (depth == d).astype(np.float64)
        psf = small_bank.psfs[0 if index == 0 else -1, 0]
        plain += convolve2d(np.pad(alpha * image, small_bank.half_size, mode="edge"), psf, mode="valid")
    assert plain.min() < 0.55  # the seam the occlusion-aware model removes


def test_fast_guided_filter_matches_full_resolution_on_smooth_input():
    from cadfd_ros.solvers.filters import box_filter, fast_guided_filter, guided_filter

    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    guide = (0.3 + 0.4 * xx + 0.2 * yy).view(1, 1, 64, 64)
    source = torch.stack([xx * 2, yy - xx]).unsqueeze(0)
    full = guided_filter(guide, source, 8, 1e-4)
    fast = fast_guided_filter(guide, torch.nn.functional.interpolate(source, size=(16, 16), mode="area"), 2, 1e-4)
    core = (..., slice(12, -12), slice(12, -12))
    torch.testing.assert_close(fast[core], full[core], atol=0.03, rtol=0)
    # the integral-image box filter equals a direct windowed mean
    x = torch.rand(1, 2, 20, 23)
    direct = torch.nn.functional.avg_pool2d(x, 7, stride=1, padding=3, count_include_pad=False)
    torch.testing.assert_close(box_filter(x, 3), direct)
    wide = torch.nn.functional.avg_pool2d(x, 15, stride=1, padding=7, count_include_pad=False)
    torch.testing.assert_close(box_filter(x, 7), wide)


def test_rgb_prox_is_the_per_channel_prox(small_bank, rng):
    """The RGB per-layer prox runs channel by channel on views of the frame's spectra: each channel must be
    the mono prox of that channel's capture, with and without the gradient pull."""
    height, width = 40, 52
    psfs = torch.from_numpy(small_bank.psfs_for_channels(3)).double().clone()
    psfs[:, 2] = psfs[:, 2].flip(-1)  # a chromatic bank: channels differ
    op = LayeredBlur(psfs, height, width)
    y = torch.from_numpy(rng.random((1, 3, height, width)))
    x_ref = op.pad_image(y) * 0.8
    coord = torch.linspace(0, small_bank.num_layers - 1, width).double().expand(1, height, width).contiguous()
    for g in (0.0, 1.0):
        x = op.prox_l2(x_ref, coord, 0.3, op.capture_spectra(y), g)
        for c in range(3):
            mono = LayeredBlur(psfs[:, c : c + 1].contiguous(), height, width)
            expected = mono.prox_l2(x_ref[:, c : c + 1], coord, 0.3, mono.capture_spectra(y[:, c : c + 1]), g)
            torch.testing.assert_close(x[:, c : c + 1], expected)
        assert not torch.allclose(x[:, 0], x[:, 2])
