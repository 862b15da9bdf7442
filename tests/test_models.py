"""Model shapes, sizes and the checks users meet when they pick an image size."""
import pytest
import torch

from tinypix2pix.errors import UserError
from tinypix2pix.models import (PatchGANDiscriminator, Pix2PixUNet, UNetGenerator, build_generator,
                                count_parameters, generator_config, init_weights, zero_last_layer)


def test_seed_generator_matches_the_seed_design():
    g = UNetGenerator()
    assert count_parameters(g) == 7_778_643  # 7.78 M, as the seed's PyTorch port
    assert [blk[0].out_channels for blk in g.down] == [16, 32, 64, 128, 256]
    assert g.bottleneck[0].out_channels == 512
    y = g(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 3, 32, 32) and y.abs().max() <= 1


def test_seed_discriminator_matches_the_seed_design():
    d = PatchGANDiscriminator()
    assert count_parameters(d) == 2_768_705  # 2.77 M
    out = d(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 1, 2, 2)
    assert (d.output_size(32), d.receptive_field()) == (2, 70)


@pytest.mark.parametrize("n_layers, grid, field", [(1, 14, 16), (2, 6, 34), (3, 2, 70)])
def test_patchgan_depth_sets_grid_and_receptive_field(n_layers, grid, field):
    d = PatchGANDiscriminator(n_layers=n_layers)
    assert d(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)).shape[-1] == grid == d.output_size(32)
    assert d.receptive_field() == field


def test_paper_generator_size_and_shapes():
    g = Pix2PixUNet()
    assert count_parameters(g) == 16_659_075  # the official 32 px U-Net (ngf 64, 5 down-samplings)
    assert g(torch.randn(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    assert Pix2PixUNet(ngf=8, depth=7)(torch.randn(1, 3, 128, 128)).shape == (1, 3, 128, 128)


@pytest.mark.parametrize("size", [64, 96])
def test_any_multiple_of_two_to_the_depth_works(size):
    assert UNetGenerator(ngf=4)(torch.randn(1, 3, size, size)).shape == (1, 3, size, size)
    assert UNetGenerator(ngf=4, depth=3)(torch.randn(1, 3, 24, 40)).shape == (1, 3, 24, 40)


@pytest.mark.parametrize("size", [8, 16, 32, 64])
def test_patchgan_grid_size_is_known_before_building(size):
    for n in range(1, 6):
        grid = PatchGANDiscriminator.grid_size(size, n)
        if grid >= 1:
            d = PatchGANDiscriminator(6, 4, n).eval()
            assert d(torch.zeros(1, 3, size, size), torch.zeros(1, 3, size, size)).shape[-1] == grid == d.output_size(size)
        else:
            with pytest.raises(RuntimeError):  # what training would hit: the CLI refuses such a depth first
                PatchGANDiscriminator(6, 4, n).eval()(torch.zeros(1, 3, size, size), torch.zeros(1, 3, size, size))


def test_bad_size_names_nearest_valid_sizes():
    with pytest.raises(UserError, match=r"40x40 .* 32 or 64"):
        UNetGenerator(ngf=4)(torch.randn(1, 3, 40, 40))


def test_channels_and_residual_start_at_identity():
    g = build_generator(generator_config("seed", in_channels=1, out_channels=3, ngf=4))
    assert g(torch.randn(2, 1, 32, 32)).shape == (2, 3, 32, 32)
    r = build_generator(generator_config("seed", ngf=4, residual=True))
    init_weights(r)
    zero_last_layer(r)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(r(x), x)  # a fresh residual model is exactly the trivial baseline


def test_weights_initialised_as_in_the_paper():
    torch.manual_seed(0)
    g = UNetGenerator()
    init_weights(g)
    w = torch.cat([m.weight.flatten() for m in g.modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(w.mean()) < 1e-3 and abs(w.std() - 0.02) < 1e-3
    bn = torch.cat([m.weight for m in g.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert abs(bn.mean() - 1) < 5e-3


def test_residual_output_learns_at_saturated_pixels():
    """A residual model's output is clamped to [-1, 1], but a pure white/black input pixel must
    still receive gradient (a plain clamp gives none at its bounds)."""
    r = build_generator(generator_config("seed", in_channels=1, out_channels=3, ngf=4, depth=3, residual=True))
    init_weights(r)
    zero_last_layer(r)
    head = [m for m in r.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    for level in (1.0, -1.0):  # all white, then all black, each pulled half-way to gray
        r.zero_grad()
        x = torch.full((2, 1, 16, 16), level)
        out = r(x)
        assert torch.equal(out, x.expand(-1, 3, -1, -1))  # starts exactly at the input, within [-1, 1]
        (out - level / 2).abs().mean().backward()
        assert (head.bias.grad * level > 0).all()  # the step would move every channel inwards


def test_residual_output_is_not_pushed_past_its_bounds():
    """The gradient that would push a saturated pixel further outside [-1, 1] is blocked, so pixels
    cannot drift beyond the range where nothing would pull them back."""
    r = build_generator(generator_config("seed", ngf=4, depth=3, residual=True))
    init_weights(r)
    zero_last_layer(r)
    head = [m for m in r.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    for level in (1.0, -1.0):  # ask white to get whiter and black to get blacker
        r.zero_grad()
        (-level * r(torch.full((2, 3, 16, 16), level))).mean().backward()
        assert torch.count_nonzero(head.bias.grad) == 0
    r.zero_grad()  # a mid-gray image is not clamped: the same loss reaches the head
    (-r(torch.zeros(2, 3, 16, 16))).mean().backward()
    assert (head.bias.grad < 0).all()
    with torch.no_grad():  # inference uses a plain clamp (exportable), with the same values
        x = torch.rand(2, 3, 16, 16) * 2 - 1
        assert torch.equal(r(x), (x + 0).clamp(-1, 1))
