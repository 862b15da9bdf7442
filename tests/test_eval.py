"""`tinypix2pix eval`: model beside the trivial baseline, on the same pairs training evaluates on."""
import json

import pytest
import torch

from conftest import run_cli
from test_faults import make_malicious_checkpoint
from tinypix2pix import engine
from tinypix2pix.config import TrainConfig
from tinypix2pix.evaluation import evaluate_checkpoint, format_table
from tinypix2pix.errors import UserError

TINY = dict(device="cpu", batch_size=4, ngf=4, depth=3, disc_layers=1, ndf=8, eval_images=16, log_interval=1000)


@pytest.fixture(scope="module")
def superres_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("superres")
    cfg = TrainConfig(dataset="fake", task="superres", task_arg=["factor=2"], max_steps=6, model_dir=str(out), **TINY)
    last = engine.train(cfg.validate())
    return out, last


def test_eval_cli_prints_table_and_writes_json(superres_run, tmp_path):
    out, last = superres_run
    p = run_cli("eval", "--checkpoint", out / "generator_last.safetensors", "--eval-images", "16",
                "--out", tmp_path / "e.json", script=None, check=True)
    lines = p.stdout.splitlines()
    assert "task superres factor=2" in lines[0] and "16 images" in lines[0]
    assert [l.split()[0] for l in lines[2:5]] == ["model", "baseline", "delta"] and "SSIM" in lines[1]
    r = json.loads((tmp_path / "e.json").read_text())
    assert r["task"] == "superres" and r["task_args"] == ["factor=2"] and r["n_images"] == 16
    for who in ("model", "baseline", "delta"):
        assert set(r[who]) == {"psnr", "ssim", "mae"}
    assert r["delta"]["psnr"] == pytest.approx(r["model"]["psnr"] - r["baseline"]["psnr"])
    assert 0 < r["baseline"]["ssim"] <= 1 and r["baseline"]["psnr"] > 15


def test_eval_sees_the_pairs_training_evaluated_on(superres_run):
    """The corruption is fixed by a seed: eval's model PSNR is the last test_psnr of training."""
    out, last = superres_run
    r = evaluate_checkpoint(out / "generator_last.safetensors", eval_images=16)
    assert r["model"]["psnr"] == pytest.approx(last["test_psnr"], abs=1e-4)
    assert r["baseline"]["psnr"] == pytest.approx(last["baseline_psnr"], abs=1e-4)
    assert r["model"]["mae"] == pytest.approx(last["test_mae"], abs=1e-6)
    again = evaluate_checkpoint(out / "generator_last.safetensors", eval_images=16)
    assert again == r  # deterministic
    assert "baseline" in format_table(r)


def test_eval_other_task_and_checkpoint_kinds(superres_run):
    out, _ = superres_run
    pt = evaluate_checkpoint(out / "generator_epoch_1.pt", eval_images=16)  # seed-style weights + options.json
    st = evaluate_checkpoint(out / "generator_last.safetensors", eval_images=16)
    assert pt["model"] == st["model"]
    other = evaluate_checkpoint(out / "generator_last.safetensors", task="denoise", eval_images=8)
    assert other["task"] == "denoise" and other["task_args"] == [] and other["n_images"] == 8
    with pytest.raises(UserError, match="1-channel inputs"):
        evaluate_checkpoint(out / "generator_last.safetensors", task="colorize", eval_images=8)


def test_eval_refuses_unsafe_and_unknown_checkpoints(tmp_path):
    marker = tmp_path / "MARKER"
    bad = make_malicious_checkpoint(tmp_path / "generator_epoch_1.pt", marker)
    p = run_cli("eval", "--checkpoint", bad, "--dataset", "fake", script=None)
    assert p.returncode != 0 and "Traceback" not in p.stderr and not marker.exists()
    assert str(bad) in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = run_cli("eval", "--checkpoint", tmp_path / "nothing.safetensors", script=None)
    assert p.returncode == 2 and "does not exist" in p.stderr


@pytest.mark.parametrize("side", [1, 2, 4, 5, 8, 32])
def test_ssim_works_at_every_image_size(side):
    """The 11 px window shrinks to fit small images (it used to crash at 5 px and below)."""
    from tinypix2pix.metrics import ssim

    torch.manual_seed(side)
    a = torch.rand(2, 3, side, side)
    b = (a + 0.2 * torch.randn_like(a)).clamp(0, 1)
    assert torch.allclose(ssim(a, a), torch.ones(2)) and (ssim(a, b) < 0.999).all() and (ssim(a, b) > 0).all()
