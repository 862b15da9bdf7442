"""Using a trained model: loading every checkpoint kind, the translate API (types, sizes,
padding, channels, tasks) and `tinypix2pix translate` on a folder of assorted files."""
import hashlib
import json
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import run_cli
from tinypix2pix import load_generator, translate
from tinypix2pix.checkpoint import load_torch
from tinypix2pix.errors import UserError
from tinypix2pix.infer import pad_to_multiple
from tinypix2pix.translate_files import output_names, translate_files
from tinypix2pix.models import build_generator, generator_config, init_weights, zero_last_layer



@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step training run (tiny seed U-Net, depth 3) once for the whole module."""
    d = tmp_path_factory.mktemp("run")
    run_cli("--dataset", "fake", "--device", "cpu", "--max-steps", "2", "--batch-size", "4", "--ngf", "4",
            "--depth", "3", "--disc-layers", "1", "--ndf", "8", "--eval-images", "8", "--model-dir", d, check=True)
    return d


def random_model(seed=0, **cfg):
    """A generator with random weights and BatchNorm statistics (eval mode), so outputs vary."""
    torch.manual_seed(seed)
    gen_cfg = generator_config(**{"arch": "seed", "ngf": 4, "depth": 3, **cfg})
    model = build_generator(gen_cfg)
    init_weights(model)
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):  # fan-in scaled: outputs neither ~0 nor saturated
            fan_in = m.weight[0].numel() if isinstance(m, torch.nn.Conv2d) else m.weight.shape[0] * m.weight[0, 0].numel()
            m.weight.data.normal_(0, (2.0 / fan_in) ** 0.5)
        elif isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    model.info = {"generator": gen_cfg, "task": "identity", "task_args": []}
    return model.eval()


def identity_model(**cfg):
    """A residual generator whose correction is exactly 0: out = input, to check crops exactly."""
    model = random_model(residual=True, **cfg)
    zero_last_layer(model)
    return model


# --- loading ----------------------------------------------------------------------------------

def test_every_checkpoint_kind_loads_the_same_generator(trained):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    state = load_torch(sorted(trained.glob("train_state_*.pt"))[-1])
    reference = build_generator(state["generator_config"])  # built from the training state directly
    reference.load_state_dict(state["generator"])
    expected = (reference.eval()(x * 2 - 1).detach() + 1) / 2
    for path in ("generator_last.safetensors", "generator_best.safetensors", "generator_epoch_1.pt",
                 sorted(trained.glob("train_state_*.pt"))[-1].name, "."):
        model = load_generator(trained / path)
        assert not model.training
        assert model.info["task"] == "identity" and model.info["image_size"] == 32
        assert model.info["generator"]["depth"] == 3 and model.info["generator"]["ngf"] == 4
        assert torch.equal(translate(model, x), expected), path


def test_safetensors_without_json_falls_back_to_its_metadata(trained, tmp_path):
    shutil.copy(trained / "generator_last.safetensors", tmp_path / "g.safetensors")
    model = load_generator(tmp_path / "g.safetensors")
    assert model.info["generator"] == json.loads((trained / "generator_last.json").read_text())["generator"]
    assert model.info["dataset"] == "fake" and model.info["step"] == 2


def test_mismatched_or_missing_configuration_is_named(trained, tmp_path):
    shutil.copy(trained / "generator_last.safetensors", tmp_path / "g.safetensors")
    info = json.loads((trained / "generator_last.json").read_text())
    info["generator"]["depth"] = 4
    (tmp_path / "g.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match=r"g\.safetensors: the weights do not fit the seed generator.*missing keys: down\.3"):
        load_generator(tmp_path / "g.safetensors")
    shutil.copy(trained / "generator_epoch_1.pt", tmp_path / "generator_epoch_1.pt")  # no options.json beside it
    with pytest.raises(UserError, match=r"generator_epoch_1\.pt holds bare weights and there is no options\.json"):
        load_generator(tmp_path / "generator_epoch_1.pt")
    with pytest.raises(UserError, match="does not exist"):
        load_generator(tmp_path / "nothing.safetensors")


# --- the Python API -----------------------------------------------------------------------------

def test_translate_types_shapes_and_sizes():
    model = random_model()
    assert translate(model, torch.rand(3, 37, 50)).shape == (3, 37, 50)
    batch = translate(model, torch.rand(2, 3, 16, 24))
    assert batch.shape == (2, 3, 16, 24) and batch.dtype == torch.float32 and 0 <= batch.min() <= batch.max() <= 1
    u8 = translate(model, (torch.rand(3, 9, 9) * 255).to(torch.uint8))
    assert u8.dtype == torch.uint8 and u8.shape == (3, 9, 9)
    for mode in ("RGB", "L", "RGBA", "P", "I;16"):
        out = translate(model, Image.new(mode, (50, 37)))
        assert isinstance(out, Image.Image) and out.size == (50, 37) and out.mode == "RGB"
    mixed = translate(model, [torch.rand(3, 1, 1), Image.new("RGB", (5, 3)), torch.rand(1, 40, 3)])
    assert mixed[0].shape == (3, 1, 1) and mixed[1].size == (5, 3) and mixed[2].shape == (3, 40, 3)
    with pytest.raises(UserError, match="expected a"):
        translate(model, torch.rand(32, 32))


def test_high_depth_gray_images_mean_the_same_through_the_api_and_from_files(tmp_path):
    """A float image in [0, 1], a 16-bit and an 8-bit one of the same gray give the same output,
    in memory (PIL) and read from a file by `translate`."""
    same = identity_model()
    images = {"F": Image.fromarray(np.full((8, 8), 0.5, np.float32), mode="F"),
              "I;16": Image.fromarray(np.full((8, 8), 32768, np.uint16)), "L": Image.new("L", (8, 8), 128)}
    for mode, im in images.items():
        im.save(tmp_path / f"{mode.replace(';', '')}.tiff")
        assert np.abs(np.asarray(translate(same, im), np.int16) - 128).max() <= 1, mode
    written = translate_files(same, [tmp_path], tmp_path / "out", log=lambda m: None)["written"]
    for p in written:
        assert np.abs(np.asarray(Image.open(p), np.int16) - 128).max() <= 1, p.name


def test_padding_is_cropped_back_exactly():
    model = identity_model()  # out = in, so any misaligned crop shows
    for h, w in ((37, 50), (1, 1), (3, 40), (8, 8), (9, 17)):
        x = torch.rand(2, 3, h, w)
        assert torch.allclose(translate(model, x), x, atol=1e-6), (h, w)
    # reflection where the pad fits inside the image, replication where it does not
    x = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 3, 5)
    padded, box = pad_to_multiple(x, 8)
    assert padded.shape[-2:] == (8, 8) and box == (2, 1, 3, 5)
    assert padded[0, 0, 2].tolist() == [1, 0, 1, 2, 3, 4, 3, 2]  # reflect along the width
    assert padded[0, 0, :, 0].tolist() == [1] * 8  # height 3 needs 5 rows: replicated
    # a non-trivial model sees the reflection-padded image
    model = random_model(seed=1)
    x = torch.rand(1, 3, 37, 50)
    with torch.no_grad():
        full = model(F.pad(x * 2 - 1, (3, 3, 1, 2), mode="reflect"))[..., 1:38, 3:53]  # 37x50 -> 40x56
    assert 0.05 < full.std() and (full.abs() > 0.99).float().mean() < 0.5  # a real test: outputs vary
    assert torch.allclose(translate(model, x), (full + 1) / 2, atol=1e-6)


def test_channel_rules_and_tasks():
    gray_model = random_model(in_channels=1)
    rgb = torch.rand(3, 16, 16)
    luma = (rgb * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
    assert torch.allclose(translate(gray_model, rgb), translate(gray_model, luma), atol=1e-6)  # colour -> luma
    assert torch.allclose(translate(gray_model, rgb, task="colorize"), translate(gray_model, luma), atol=1e-6)
    rgb_model = random_model()
    assert torch.allclose(translate(rgb_model, luma), translate(rgb_model, luma.expand(3, -1, -1)))  # gray -> RGB
    inpaint = random_model(in_channels=4)
    inpaint.info["task"] = "inpaint"
    with pytest.raises(UserError, match="4-channel.*--task inpaint"):
        translate(inpaint, rgb)
    assert translate(inpaint, rgb, task="trained").shape == (3, 16, 16)
    with pytest.raises(UserError, match="task colorize builds 1-channel inputs but the model takes 4"):
        translate(inpaint, rgb, task="colorize")
    noisy = random_model()
    noisy.info.update(task="denoise", task_args=["sigma=0.3"])
    a, b = translate(noisy, rgb, task="trained", seed=3), translate(noisy, rgb, task="trained", seed=3)
    assert torch.equal(a, b) and not torch.allclose(a, translate(noisy, rgb), atol=1e-3)
    assert not torch.allclose(a, translate(noisy, rgb, task="denoise", task_args=["sigma=0.05"], seed=3), atol=1e-4)


def test_output_names_never_collide():
    from pathlib import Path

    rels = [Path("a.png"), Path("a.jpg"), Path("A.PNG"), Path("b.tif"), Path("sub/a.png"), Path("a_jpg.png")]
    names = [str(n) for n in output_names(rels)]
    assert len({n.lower() for n in names}) == len(names)
    assert names[3] == "b.png" and names[4] == "sub/a.png" and all(n.endswith(".png") for n in names)


def test_inputs_are_never_overwritten(tmp_path):
    from tinypix2pix.images import save_png

    save_png(torch.rand(3, 8, 8), tmp_path / "x.png")
    before = (tmp_path / "x.png").read_bytes()
    with pytest.raises(UserError, match="would overwrite the input"):
        translate_files(random_model(), [tmp_path], tmp_path, log=lambda m: None)
    assert (tmp_path / "x.png").read_bytes() == before and not (tmp_path / "index.html").exists()
    # an output folder inside the input folder is not read back in on the next run
    for _ in range(2):
        result = translate_files(random_model(), [tmp_path], tmp_path / "out", log=lambda m: None)
        assert [p.name for p in result["written"]] == ["x.png"]
    # nor are the page's own copies of the inputs, when those are given as inputs
    page_copy = tmp_path / "out" / "index_files" / "input" / "x.png"
    before = page_copy.read_bytes()
    with pytest.raises(UserError, match="would overwrite the input"):
        translate_files(random_model(), [page_copy], tmp_path / "out", log=lambda m: None)
    assert page_copy.read_bytes() == before


def test_outputs_never_replace_the_checkpoint(trained, tmp_path):
    """`eval --out` / `export --out` naming the checkpoint or its JSON fail before writing."""
    ck = tmp_path / "g.safetensors"
    shutil.copy(trained / "generator_last.safetensors", ck)
    shutil.copy(trained / "generator_last.json", tmp_path / "g.json")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for cmd in (["eval", "--checkpoint", ck, "--eval-images", "4", "--out", tmp_path / "g.json"],
                ["export", "--checkpoint", ck, "--format", "torchscript", "--out", ck]):
        proc = run_cli(*cmd, script=None)
        assert proc.returncode == 2 and "would overwrite the checkpoint" in proc.stderr and "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    proc = run_cli("eval", "--checkpoint", ck, "--eval-images", "4", "--out", tmp_path, script=None)
    assert proc.returncode == 2 and "is a folder" in proc.stderr


# --- the command line -----------------------------------------------------------------------

def write_assorted(folder):
    """Mixed sizes and modes, a name clash, odd characters, a broken and an empty file."""
    rng = np.random.default_rng(0)
    sub = folder / "sub"
    sub.mkdir(parents=True)
    rgb = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb(32, 32)).save(folder / "a.png")
    Image.fromarray(rgb(37, 50)).save(folder / "a.jpg", quality=90)  # same stem as a.png
    Image.fromarray(rng.integers(0, 256, (20, 28), dtype=np.uint8), "L").save(sub / "gray.png")
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0], rgba[4:12, 4:12, 3] = 255, 255
    Image.fromarray(rgba, "RGBA").save(sub / "rgba.png")
    Image.fromarray((np.linspace(0, 65535, 30 * 40).reshape(30, 40)).astype(np.uint16)).save(sub / "deep16.png")
    Image.fromarray(rgb(5, 7)).convert("P").save(sub / "palette.gif")
    Image.fromarray(rgb(1, 1)).save(folder / "tiny & <odd> #1.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    return {"a_png.png": (32, 32), "a_jpg.png": (50, 37), "sub/gray.png": (28, 20), "sub/rgba.png": (16, 16),
            "sub/deep16.png": (40, 30), "sub/palette.png": (7, 5), "tiny & <odd> #1.png": (1, 1)}


def digest(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cli_translates_a_folder_of_assorted_images(trained, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    expected = write_assorted(src)
    before = digest(src)
    proc = run_cli("translate", "--checkpoint", trained / "generator_best.safetensors", src, "--out", out,
                   "--batch-size", "2", "--device", "cpu", script=None, check=True)
    assert "translated 7 image(s)" in proc.stdout and "skipped 2" in proc.stdout
    assert "broken.png" in proc.stderr and "empty.jpg" in proc.stderr
    assert digest(src) == before  # inputs untouched
    for name, size in expected.items():
        with Image.open(out / name) as im:
            assert im.size == size and im.mode == "RGB", name
        assert (out / "index_files" / "input" / name).is_file()
    assert not list(out.rglob("*.tmp")) and not (out / "index_files" / "target").exists()
    page = (out / "index.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    from urllib.parse import unquote

    import html as html_lib

    outputs = {unquote(html_lib.unescape(s)) for s in srcs if not s.startswith("index_files/")}
    assert outputs == set(expected)  # every output, linked relatively
    for s in srcs:
        assert (out / unquote(html_lib.unescape(s))).is_file()
    assert "<odd>" not in page and "&lt;odd&gt;" in page  # names are escaped
    assert "broken.png" in page and "empty.jpg" in page and "generator_best.safetensors" in page


def test_translate_files_with_a_task_shows_targets(tmp_path):
    from tinypix2pix.images import save_png

    save_png(torch.rand(3, 20, 12), tmp_path / "in" / "c.png")
    model = random_model(in_channels=1, residual=True)
    result = translate_files(model, [tmp_path / "in" / "c.png"], tmp_path / "out", task="colorize", log=lambda m: None)
    with Image.open(tmp_path / "out" / "index_files" / "input" / "c.png") as im:
        a = np.asarray(im.convert("RGB")).astype(int)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()  # the model saw gray
    with Image.open(tmp_path / "out" / "index_files" / "target" / "c.png") as im:
        assert im.size == (12, 20)
    assert "target" in result["html"].read_text() and "colorize" in result["html"].read_text()
    with pytest.raises(UserError, match="does not exist"):
        translate_files(model, [tmp_path / "missing"], tmp_path / "out")
