"""ONNX and TorchScript export: the files match PyTorch at other batch sizes and image sizes
than the traced ones, hold everything in one file, and a failed check writes nothing."""
import json
import sys

import pytest
import torch

from conftest import run_cli
from tinypix2pix import load_generator
from tinypix2pix.checkpoint import save_inference
from tinypix2pix.errors import UserError
from tinypix2pix import export as ex
from tinypix2pix.models import build_generator, generator_config, init_weights

ort = pytest.importorskip("onnxruntime")



def random_generator(**cfg):
    torch.manual_seed(0)
    gen_cfg = generator_config(**cfg)
    model = build_generator(gen_cfg)
    init_weights(model, gain=0.2)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval(), gen_cfg


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`tinypix2pix export --format onnx` once, on a seed U-Net saved as training saves it."""
    d = tmp_path_factory.mktemp("export")
    model, gen_cfg = random_generator(arch="seed", ngf=4, depth=3)
    save_inference(model, {"generator": gen_cfg, "task": "identity", "task_args": [], "image_size": 16}, d / "gen")
    proc = run_cli("export", "--checkpoint", d / "gen.safetensors", "--format", "onnx", "--out", d / "out" / "gen.onnx",
                   script=None, check=True)
    return d, proc


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def test_cli_onnx_export_checks_itself_and_runs_at_other_sizes(exported):
    d, proc = exported
    assert "max abs difference" in proc.stdout and "2x3x16x16" in proc.stdout and "3x3x24x32" in proc.stdout
    assert sorted(p.name for p in (d / "out").iterdir()) == ["gen.onnx"]  # self-contained: no external data
    model = load_generator(d / "gen.safetensors")
    for shape in ((1, 3, 8, 8), (5, 3, 40, 24)):  # neither the traced batch nor the traced size
        x = torch.rand(shape) * 2 - 1
        with torch.no_grad():
            expected = model(x)
        assert expected.std() > 0.05
        assert torch.allclose(run_onnx(d / "out" / "gen.onnx", x), expected, atol=1e-4)
    import onnx

    props = {p.key: p.value for p in onnx.load(str(d / "out" / "gen.onnx")).metadata_props}
    assert props["size_multiple"] == "8" and json.loads(props["tinypix2pix"])["generator"]["depth"] == 3


def test_pix2pix_residual_one_channel_onnx_and_torchscript(tmp_path):
    model, _ = random_generator(arch="pix2pix", in_channels=1, out_channels=3, ngf=4, depth=5, norm="instance", residual=True)
    r = ex.export(model, tmp_path / "p.onnx", "onnx", image_size=32, batch=2)
    assert [s for s, _ in r["checks"]] == [(2, 1, 32, 32), (3, 1, 64, 96)]  # traced at 32 px, run at 64x96
    assert max(d for _, d in r["checks"]) <= ex.TOLERANCE
    x = torch.rand(1, 1, 96, 32) * 2 - 1
    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(run_onnx(tmp_path / "p.onnx", x), expected, atol=1e-4)
    r = ex.export(model, tmp_path / "p.pt", "torchscript", image_size=32, batch=2)
    loaded = torch.jit.load(str(tmp_path / "p.pt"))
    assert torch.allclose(loaded(x), expected, atol=1e-5)


def test_failed_check_writes_nothing_and_bad_requests_are_named(tmp_path, monkeypatch):
    model, _ = random_generator(arch="seed", ngf=4, depth=3)
    monkeypatch.setattr(ex, "TOLERANCE", -1.0)  # every check fails
    with pytest.raises(ex.ExportCheckFailed, match="differs from PyTorch.*was not written"):
        ex.export(model, tmp_path / "bad.pt", "torchscript", image_size=8)
    assert not list(tmp_path.iterdir())
    monkeypatch.undo()
    with pytest.raises(UserError, match="must be a positive multiple of 8"):
        ex.export(model, tmp_path / "x.onnx", "onnx", image_size=12)
    with pytest.raises(UserError, match="unknown export format"):
        ex.export(model, tmp_path / "x.tflite", "tflite")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the [onnx] extra were not installed
    with pytest.raises(UserError, match=r"pip install 'tinypix2pix\[onnx\]'"):
        ex.export(model, tmp_path / "x.onnx", "onnx", image_size=8)
