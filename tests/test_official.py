"""Official pix2pix checkpoints: a state_dict made by an independent re-implementation of the
official U-Net recipe (DESIGN.md section 2) converts, and the converted model computes the same
outputs; foreign, damaged and malicious files are refused with a clear message."""
import json
import math

import pytest
import torch
import torch.nn as nn

from tinypix2pix import load_generator, translate
from tinypix2pix.errors import UserError
from tinypix2pix.official import import_official

from conftest import run_cli



# --- the official recipe, written from DESIGN.md, independent of tinypix2pix.models ---------------

class OfficialBlock(nn.Module):
    """UnetSkipConnectionBlock. Its in-place LeakyReLU also rewrites the skip half of the
    concatenation (x itself); harmless, since the parent's ReLU comes next and LeakyReLU keeps signs."""

    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False, innermost=False,
                 norm="batch", use_dropout=False):
        super().__init__()
        self.outermost = outermost
        use_bias = norm == "instance"
        make_norm = (lambda c: nn.BatchNorm2d(c)) if norm == "batch" else \
            (lambda c: nn.InstanceNorm2d(c, affine=False, track_running_stats=False))
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu, uprelu = nn.LeakyReLU(0.2, True), nn.ReLU(True)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, uprelu, upconv, make_norm(outer_nc)]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, make_norm(inner_nc), submodule, uprelu, upconv, make_norm(outer_nc)]
            if use_dropout:
                model.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class OfficialUnet(nn.Module):
    """UnetGenerator(input_nc, output_nc, num_downs, ngf, norm, use_dropout)."""

    def __init__(self, input_nc, output_nc, num_downs, ngf, norm="batch", use_dropout=False):
        super().__init__()
        block = OfficialBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            block = OfficialBlock(ngf * 8, ngf * 8, submodule=block, norm=norm, use_dropout=use_dropout)
        block = OfficialBlock(ngf * 4, ngf * 8, submodule=block, norm=norm)
        block = OfficialBlock(ngf * 2, ngf * 4, submodule=block, norm=norm)
        block = OfficialBlock(ngf, ngf * 2, submodule=block, norm=norm)
        self.model = OfficialBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True, norm=norm)

    def forward(self, x):
        return self.model(x)


def randomised(net: nn.Module, seed: int) -> nn.Module:
    """Weights scaled to keep activations O(1) in eval mode, and non-trivial BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_in = m.weight[0].numel() if isinstance(m, nn.Conv2d) else m.weight.shape[0] * 4
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(1.0 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.num_batches_tracked.fill_(7)
    return net.eval()


# (in, out, num_downs, ngf, norm, dropout, image size, batch)
CONFIGS = [
    (3, 3, 5, 8, "batch", False, 32, 2),
    (1, 3, 5, 8, "instance", False, 32, 2),
    (3, 3, 6, 4, "batch", True, 64, 2),
    (3, 1, 7, 8, "instance", True, 128, 1),
    (3, 3, 7, 4, "batch", False, 128, 2),
    (3, 3, 8, 4, "batch", True, 256, 1),  # unet_256
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"in{c[0]}-out{c[1]}-d{c[2]}-ngf{c[3]}-{c[4]}-drop{int(c[5])}")
def test_official_state_dict_converts_with_identical_outputs(tmp_path, cfg):
    cin, cout, depth, ngf, norm, dropout, size, batch = cfg
    ref = randomised(OfficialUnet(cin, cout, depth, ngf, norm, dropout), seed=depth * 10 + ngf)
    path = tmp_path / "latest_net_G.pth"
    torch.save(ref.state_dict(), path)
    model = load_generator(path)  # auto-detected from the keys
    assert set(model.state_dict()) == set(ref.state_dict())  # the key layout maps 1:1
    g = model.info["generator"]
    assert (g["arch"], g["in_channels"], g["out_channels"], g["depth"], g["ngf"], g["norm"], g["residual"]) == \
        ("pix2pix", cin, cout, depth, ngf, norm, False)
    assert g["dropout"] == (0.5 if depth > 5 else 0.0)
    assert model.info["source"] == "official" and not model.training
    x = torch.rand(batch, cin, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected = ref(x.clone())  # clone: the official in-place LeakyReLU may touch its input
        got = model(x.clone())
    assert expected.std() > 0.05  # a comparison of saturated or constant outputs would prove little
    assert torch.allclose(got, expected, atol=1e-5), float((got - expected).abs().max())
    out = translate(model, (x + 1) / 2)  # the public API on [0, 1] images
    assert torch.allclose(out, (expected + 1) / 2, atol=1e-5)


def test_dataparallel_prefix_old_buffers_and_odd_sizes(tmp_path):
    ref = randomised(OfficialUnet(3, 3, 5, 4, "batch"), seed=3)
    sd = {f"module.{k}": v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "latest_net_G.pth")
    model = load_generator(tmp_path / "latest_net_G.pth")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(model(x.clone()), ref(x.clone()), atol=1e-5)
    # PyTorch < 0.4 InstanceNorm checkpoints carry unused running statistics: ignored
    inst = randomised(OfficialUnet(3, 3, 5, 4, "instance"), seed=4)
    sd = dict(inst.state_dict())
    sd["model.model.1.model.2.running_mean"] = torch.zeros(8)
    sd["model.model.1.model.2.running_var"] = torch.ones(8)
    torch.save(sd, tmp_path / "old_net_G.pth")
    model = load_generator(tmp_path / "old_net_G.pth")
    assert model.info["generator"]["norm"] == "instance"
    # any image size: a 50x37 image is padded to 64x64 and cropped back
    out = translate(model, torch.rand(3, 37, 50))
    assert out.shape == (3, 37, 50)


def test_import_official_cli_then_translate_and_reload(tmp_path):
    ref = randomised(OfficialUnet(3, 3, 5, 8, "batch"), seed=5)
    src = tmp_path / "ckpt" / "latest_net_G.pth"
    src.parent.mkdir()
    torch.save(ref.state_dict(), src)
    proc = run_cli("import-official", src, "--out", tmp_path / "conv", script=None, check=True)
    assert "depth 5" in proc.stdout and "ngf 8" in proc.stdout and "batch norm" in proc.stdout
    st, js = tmp_path / "conv" / "latest_net_G.safetensors", tmp_path / "conv" / "latest_net_G.json"
    info = json.loads(js.read_text())
    assert info["source"] == "official" and info["original_file"] == str(src.resolve())
    assert info["generator"]["arch"] == "pix2pix" and info["image_size"] == 32
    model = load_generator(st)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(model(x.clone()), ref(x.clone()), atol=1e-5)
    # and it translates files (the in-process twin of `tinypix2pix translate`)
    from tinypix2pix.images import save_png
    from tinypix2pix.translate_files import translate_files

    save_png(torch.rand(3, 40, 24), tmp_path / "imgs" / "a.png")
    result = translate_files(model, [tmp_path / "imgs"], tmp_path / "out", log=lambda m: None)
    assert [p.name for p in result["written"]] == ["a.png"] and result["html"].is_file()
    # dotted names keep every part: two epochs' files never become one
    for name in ("net_G.e5", "net_G.e10"):
        run_cli("import-official", src, "--out", tmp_path / "conv", "--name", name, script=None, check=True)
    assert {"net_G.e5.safetensors", "net_G.e5.json", "net_G.e10.safetensors", "net_G.e10.json"} <= \
        {p.name for p in (tmp_path / "conv").iterdir()}
    assert torch.allclose(load_generator(tmp_path / "conv" / "net_G.e10.safetensors")(x.clone()), ref(x.clone()), atol=1e-5)


def test_foreign_and_damaged_state_dicts_are_named(tmp_path):
    from tinypix2pix.models import UNetGenerator

    torch.save(UNetGenerator(ngf=4, depth=3).state_dict(), tmp_path / "latest_net_G.pth")
    with pytest.raises(UserError, match=r"latest_net_G\.pth.*missing key.*model\.model\.0\.weight.*first keys are: down\.0"):
        load_generator(tmp_path / "latest_net_G.pth")
    sd = randomised(OfficialUnet(3, 3, 5, 4, "batch"), seed=6).state_dict()
    del sd["model.model.1.model.3.model.5.weight"]
    sd["model.model.9.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "cut_net_G.pth")
    with pytest.raises(UserError, match=r"cut_net_G\.pth.*missing keys: model\.model\.1\.model\.3\.model\.5\.weight.*"
                                        r"unexpected keys: model\.model\.9\.weight"):
        load_generator(tmp_path / "cut_net_G.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor_net_G.pth")
    with pytest.raises(UserError, match="not a state_dict"):
        import_official(tmp_path / "tensor_net_G.pth", tmp_path / "out")
    (tmp_path / "trunc_net_G.pth").write_bytes((tmp_path / "cut_net_G.pth").read_bytes()[:200])
    with pytest.raises(UserError, match=r"trunc_net_G\.pth.*(truncated|corrupt)"):
        load_generator(tmp_path / "trunc_net_G.pth")


class Evil:
    """Unpickling this creates a file: what a malicious checkpoint would do (worse)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickles_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "PWNED"
    official = tmp_path / "official" / "latest_net_G.pth"
    ours = tmp_path / "run" / "generator_epoch_1.pt"
    for path in (official, ours):
        path.parent.mkdir()
        torch.save({"model.model.0.weight": Evil(marker)}, path)
    (ours.parent / "options.json").write_text(json.dumps(
        {"config": {"task": "identity"}, "generator": {"arch": "seed", "ngf": 4, "depth": 3}}))
    for path in (official, ours):
        with pytest.raises(UserError, match="weights-only"):
            load_generator(path)
    with pytest.raises(UserError, match="weights-only"):
        import_official(official, tmp_path / "out")
    proc = run_cli("import-official", official, "--out", tmp_path / "out", script=None)
    assert proc.returncode == 2 and "latest_net_G.pth" in proc.stderr and "weights-only" in proc.stderr
    assert "Traceback" not in proc.stderr
    (tmp_path / "imgs").mkdir()
    from tinypix2pix.images import save_png

    save_png(torch.rand(3, 8, 8), tmp_path / "imgs" / "a.png")
    proc = run_cli("translate", "--checkpoint", ours, tmp_path / "imgs", "--out", tmp_path / "o", script=None)
    assert proc.returncode == 2 and "generator_epoch_1.pt" in proc.stderr and "weights-only" in proc.stderr
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()
