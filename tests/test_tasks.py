"""Translation tasks: shapes, ranges, determinism, what each corruption does, parameter errors, and
a 2-step CLI run per task on the fake data set."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli
from tinypix2pix.errors import UserError
from tinypix2pix.metrics import psnr, to_unit
from tinypix2pix.tasks import TASKS, build_task, parse_task_args

RANDOM = ["denoise", "inpaint"]
RESIDUAL = {"identity": False, "colorize": True, "superres": True, "denoise": True, "inpaint": True,
            "deblur": True, "edges": False}
# Every task with its defaults, plus the variants whose shapes or code paths differ.
CASES = [(name, []) for name in TASKS] + [("colorize", ["replicate=true"]), ("superres", ["factor=4"]),
                                          ("inpaint", ["holes=3"]), ("edges", ["replicate=yes"])]
IDS = [" ".join([n, *a]) for n, a in CASES]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def images(n=4, c=3, h=32, w=32, seed=0):
    """Smooth random images in [-1, 1] with some structure (low-res noise up-sampled)."""
    small = torch.rand(n, c, max(2, h // 4), max(2, w // 4), generator=gen(seed)) * 2 - 1
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def test_registry_and_residual_defaults():
    assert set(TASKS) == set(RESIDUAL)
    for name, cls in TASKS.items():
        assert cls.name == name
        assert cls.residual_default is RESIDUAL[name], name
        assert cls.__doc__


@pytest.mark.parametrize("name,args", CASES, ids=IDS)
@pytest.mark.parametrize("n,h,w", [(4, 32, 32), (1, 37, 50)])
def test_shape_dtype_range_determinism(name, args, n, h, w):
    task = build_task(name, args)
    b = images(n, 3, h, w)
    before = b.clone()
    a = task(b, gen(7))
    assert a.shape == (n, task.input_channels(3), h, w)
    assert a.dtype == torch.float32 and a.device == b.device
    assert torch.isfinite(a).all() and a.min() >= -1 and a.max() <= 1
    assert torch.equal(b, before), "the task changed its input in place"
    torch.manual_seed(123)  # global RNG state must not matter: all randomness comes from the generator
    assert torch.equal(task(b, gen(7)), a)
    base = task.baseline(a, 3)
    assert base.shape == b.shape


@pytest.mark.parametrize("name", RANDOM)
def test_different_seed_gives_different_corruption(name):
    task, b = build_task(name), images()
    assert not torch.equal(task(b, gen(1)), task(b, gen(2)))
    # one draw per image: images of a batch are corrupted differently
    same = images(n=1).expand(2, -1, -1, -1)
    a = task(same, gen(3))
    assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize("name", list(TASKS))
def test_bfloat16_and_gray_inputs(name):
    task = build_task(name)
    b = images().to(torch.bfloat16)
    a = task(b, gen())
    assert a.dtype == torch.bfloat16 and a.shape[1] == task.input_channels(3)
    gray = images(c=1)
    a = task(gray, gen())
    assert a.shape == (4, task.input_channels(1), 32, 32)
    assert task.baseline(a, 1).shape == gray.shape


def test_colorize_is_bt601_luma():
    b = images()
    luma = 0.299 * b[:, 0:1] + 0.587 * b[:, 1:2] + 0.114 * b[:, 2:3]
    a = build_task("colorize")(b, gen())
    torch.testing.assert_close(a, luma)
    rep = build_task("colorize", ["replicate=true"])
    a3 = rep(b, gen())
    assert rep.input_channels(3) == 3
    torch.testing.assert_close(a3, luma.expand(-1, 3, -1, -1))
    torch.testing.assert_close(build_task("colorize").baseline(a, 3), luma.expand(-1, 3, -1, -1))
    white = torch.ones(1, 3, 8, 8)
    torch.testing.assert_close(build_task("colorize")(white, gen()), torch.ones(1, 1, 8, 8))


def test_superres_smooth_image_and_baseline():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 37), torch.linspace(0, 1, 50), indexing="ij")
    smooth = torch.stack([0.8 * torch.sin(3 * xx + 2 * yy), 0.6 * torch.cos(2 * xx - yy), xx - yy])[None]
    for factor in (2, 4):
        task = build_task("superres", [f"factor={factor}"])
        a = task(smooth, gen())
        assert a.shape == smooth.shape
        assert psnr(to_unit(a), to_unit(smooth)).item() > 30
        assert torch.equal(task.baseline(a, 3), a)
    # detail is lost: a checkerboard cannot survive area down-sampling
    checker = ((torch.arange(32)[:, None] + torch.arange(32)) % 2).float().mul(2).sub(1).expand(1, 3, 32, 32)
    assert build_task("superres")(checker, gen()).abs().max() < 0.1
    flat = torch.full((2, 3, 9, 9), 0.3)
    torch.testing.assert_close(build_task("superres", ["factor=4"])(flat, gen()), flat)


def test_denoise_noise_std():
    for sigma in (0.05, 0.1, 0.2):
        task = build_task("denoise", [f"sigma={sigma}"])
        b = torch.zeros(4, 3, 64, 64)
        noise = task(b, gen()) - b
        assert abs(noise.std().item() - 2 * sigma) < 0.05 * 2 * sigma
        assert abs(noise.mean().item()) < 0.01
        assert torch.equal(task.baseline(b + noise, 3), b + noise)
    loud = build_task("denoise", ["sigma=1"])(torch.ones(2, 3, 16, 16), gen())
    assert loud.max() <= 1 and loud.min() >= -1  # clamped


def test_inpaint_mask_matches_holes_and_size_bounds():
    task = build_task("inpaint", ["min_size=0.25", "max_size=0.5"])
    n, h, w = 64, 40, 36
    b = torch.rand(n, 3, h, w, generator=gen(5)) * 1.8 - 0.9 + 0.05  # no pixel is exactly 0
    a = task(b, gen(6))
    image, mask = a[:, :3], a[:, 3]
    assert set(mask.unique().tolist()) <= {-1.0, 1.0}
    inside = mask > 0
    differs = (image != b).any(1)
    assert torch.equal(differs, inside)
    assert (image.permute(1, 0, 2, 3)[:, inside] == 0).all()  # holes are mid gray
    rows, cols = inside.any(2).sum(1), inside.any(1).sum(1)  # extent of the (single) hole
    assert (inside.flatten(1).sum(1) == rows * cols).all()  # a filled rectangle
    assert rows.min() >= round(0.25 * h) and rows.max() <= round(0.5 * h)
    assert cols.min() >= round(0.25 * w) and cols.max() <= round(0.5 * w)
    assert rows.float().std() > 0  # sizes vary between images
    torch.testing.assert_close(task.baseline(a, 3), image)
    many = build_task("inpaint", ["holes=4", "max_size=0.3"])(b, gen())
    area = (many[:, 3] > 0).flatten(1).float().mean(1)
    assert area.max() <= 4 * 0.3 ** 2 + 0.02 and area.min() >= 0.25 ** 2 - 0.02
    full = build_task("inpaint", ["min_size=1", "max_size=1"])(b[:2], gen())
    assert (full[:, 3] == 1).all() and (full[:, :3] == 0).all()


def test_deblur_constant_is_noop_and_checkerboard_loses_high_frequencies():
    task = build_task("deblur")
    flat = torch.full((2, 3, 37, 50), -0.4)
    torch.testing.assert_close(task(flat, gen()), flat)
    checker = ((torch.arange(32)[:, None] + torch.arange(32)) % 2).float().mul(2).sub(1).expand(2, 3, 32, 32)
    blurred = task(checker, gen())
    assert blurred.var() < 0.01 * checker.var()
    weak = build_task("deblur", ["sigma=0.5"])(checker, gen())
    assert blurred.var() < weak.var() < checker.var()
    tiny = build_task("deblur", ["sigma=5"])(images(1, 3, 3, 4), gen())  # kernel wider than the image
    assert tiny.shape == (1, 3, 3, 4) and torch.isfinite(tiny).all()
    smooth = images()
    assert (task(smooth, gen()) - smooth).abs().mean() < 0.05  # mostly low frequencies: little change


def test_edges_find_square_border_and_nothing_on_flat():
    task = build_task("edges")
    b = torch.full((1, 3, 37, 50), -0.8)
    b[..., 10:25, 12:40] = 0.8
    a = task(b, gen())
    assert set(a.unique().tolist()) <= {-1.0, 1.0}
    edge = a[0, 0] < 0
    border = torch.zeros(37, 50, dtype=torch.bool)
    border[9:26, 11:41] = True
    border[11:24, 13:39] = False  # a ring two pixels wide around the step
    assert edge.sum() >= 0.8 * 2 * (15 + 28)  # most of the perimeter is drawn
    assert not (edge & ~border).any()  # and nothing elsewhere
    assert (a[0, 0, 0] == 1).all() and (a[0, 0, 16, 20:30] == 1).all()  # white background and inside
    for flat in (torch.zeros(2, 3, 32, 32), torch.full((2, 3, 32, 32), 0.5) + 0.002 * images(2)):
        assert (task(flat, gen()) == 1).all(), "a (nearly) flat image should give an empty drawing"
    # the threshold is relative: a low-contrast copy gives the same drawing
    torch.testing.assert_close(task(b * 0.3, gen()), a)
    rep = build_task("edges", ["replicate=true"])
    torch.testing.assert_close(rep(b, gen()), a.expand(-1, 3, -1, -1))
    torch.testing.assert_close(task.baseline(a, 3), a.expand(-1, 3, -1, -1))


@pytest.mark.parametrize("name,args,words", [
    ("superres", ["factor=3"], ["factor", "2 or 4"]),
    ("denoise", ["sigma=0"], ["sigma", "(0, 1]"]),
    ("denoise", ["sigma=1.5"], ["sigma", "(0, 1]"]),
    ("denoise", ["sigma=nan"], ["sigma"]),
    ("deblur", ["sigma=-1"], ["sigma", "pixels"]),
    ("inpaint", ["holes=0"], ["holes"]),
    ("inpaint", ["min_size=0.6", "max_size=0.5"], ["min_size", "max_size"]),
    ("inpaint", ["max_size=1.5"], ["max_size"]),
    ("edges", ["threshold=2"], ["threshold", "[0, 1]"]),
    ("edges", ["smooth=0"], ["smooth"]),
])
def test_bad_parameters_name_parameter_and_range(name, args, words):
    with pytest.raises(UserError) as err:
        build_task(name, args)
    assert all(w in str(err.value) for w in words), str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_task_and_task_arg_errors():
    with pytest.raises(UserError, match="unknown task 'sharpen'; choose one of identity, colorize, superres"):
        build_task("sharpen")
    with pytest.raises(UserError, match=r"no parameter 'sigmaa'; valid parameters: sigma \(default 0.1\)"):
        build_task("denoise", ["sigmaa=0.2"])
    with pytest.raises(UserError, match="valid parameters: none"):
        build_task("identity", ["x=1"])
    with pytest.raises(UserError, match="not of the form key=value"):
        build_task("denoise", ["sigma"])
    with pytest.raises(UserError, match="expected a float"):
        build_task("denoise", ["sigma=big"])
    with pytest.raises(UserError, match="expected a int"):
        build_task("superres", ["factor=2.5"])
    with pytest.raises(UserError, match="expected true or false"):
        build_task("colorize", ["replicate=maybe"])
    cls = TASKS["inpaint"]
    parsed = parse_task_args(cls, ["holes=2", "min-size=0.1", " max_size = 0.2"])
    assert parsed == {"holes": 2, "min_size": 0.1, "max_size": 0.2}
    assert parse_task_args(TASKS["colorize"], ["replicate=off"]) == {"replicate": False}
    assert parse_task_args(TASKS["colorize"], ["replicate=1"]) == {"replicate": True}
    assert build_task("denoise", None).sigma == 0.1
    with pytest.raises(UserError):
        TASKS["superres"](factor=8)  # direct construction is validated too


def test_cli_trains_with_a_task(tmp_path):
    """The real command line with the task that changes the input channels (3 + mask)."""
    out = tmp_path / "inpaint"
    proc = run_cli("--dataset", "fake", "--task", "inpaint", "--task-arg", "holes=2", "--device", "cpu",
                   "--max-steps", "2", "--batch-size", "4", "--ngf", "4", "--depth", "3", "--disc-layers", "1",
                   "--ndf", "8", "--eval-images", "8", "--model-dir", out, check=True)
    assert "task inpaint" in proc.stdout and "(4 -> 3 channels" in proc.stdout
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["step"] == 2 and math.isfinite(line["test_psnr"])
    assert (out / "samples" / "epoch_001.png").stat().st_size > 0


@pytest.mark.parametrize("name", [n for n in TASKS if n not in ("identity", "inpaint")])
def test_engine_trains_two_steps(name, tmp_path):
    """Every task through the training loop (in-process: the CLI costs seconds of imports per run)."""
    from tinypix2pix import engine
    from tinypix2pix.config import TrainConfig

    out = tmp_path / name
    cfg = TrainConfig(dataset="fake", task=name, device="cpu", max_steps=2, batch_size=4, ngf=4, depth=3,
                      disc_layers=1, ndf=8, eval_images=8, model_dir=str(out), task_arg=[]).validate()
    last = engine.train(cfg)
    assert last["step"] == 2 and math.isfinite(last["test_psnr"])
    assert (out / "samples" / "epoch_001.png").stat().st_size > 0
    info = json.loads((out / "generator_last.json").read_text())
    assert info["task"] == name and info["generator"]["residual"] == TASKS[name].residual_default
