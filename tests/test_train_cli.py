"""The seed's command line, run for real in a subprocess on tiny data."""
import json

import pytest
import torch
from PIL import Image

from conftest import run_cli
from tinypix2pix.models import PatchGANDiscriminator, UNetGenerator

FAST = ["--device", "cpu", "--batch-size", "4", "--log-interval", "2"]


def test_cifar_run_writes_checkpoints_metrics_and_samples(cifar_root, tmp_path):
    out = tmp_path / "models"
    p = run_cli("--dataset-root", cifar_root, "--model-dir", out, "--epochs", "2", *FAST, check=True)
    assert "7.78 M parameters" in p.stdout and "2.77 M parameters" in p.stdout
    assert "2x2 logits at 32 px, receptive field 70 px" in p.stdout
    for n in (1, 2):
        g = UNetGenerator()
        g.load_state_dict(torch.load(out / f"generator_epoch_{n}.pt", weights_only=True))
        PatchGANDiscriminator().load_state_dict(torch.load(out / f"discriminator_epoch_{n}.pt", weights_only=True))
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2]
    for l in lines:
        assert {"loss_d", "loss_g_gan", "loss_g_l1", "test_mae", "test_psnr", "seconds", "images_per_sec"} <= set(l)
        assert 0 <= l["test_mae"] <= 2 and l["test_psnr"] > 0
    grid = Image.open(out / "samples" / "epoch_002.png")
    assert grid.size[0] > grid.size[1] / 8  # 3 columns (input | output | target) of 8 rows
    assert json.loads((out / "options.json").read_text())["changed_from_default"]["epochs"] == 2
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))  # no temporary files left behind


def test_same_seed_same_losses(tmp_path):
    def losses(name):
        run_cli("--dataset", "fake", "--model-dir", tmp_path / name, "--max-steps", "6", *FAST, check=True)
        line = json.loads((tmp_path / name / "metrics.jsonl").read_text())
        return [line[k] for k in ("loss_d", "loss_g_gan", "loss_g_l1", "test_mae", "test_psnr")]

    assert losses("a") == losses("b")


def test_offline_cifar_gives_clear_message(tmp_path):
    p = run_cli("--dataset-root", tmp_path / "nothing", "--model-dir", tmp_path / "m", "--device", "cpu")
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert "cifar-10-batches-py" in p.stderr and "--dataset photos" in p.stderr and "cifar-10-python.tar.gz" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, needle", [
    (["--epochs", "-1"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "x"], "--batch-size"),
    (["--dataset", "imagenet"], "choose one of"),
    (["--learning-rate", "0"], "--learning-rate"),
    (["--image-size", "40", "--dataset", "fake"], "32 or 64"),
    (["--device", "tpu"], "--device"),
    (["--no-such-flag"], "unrecognized"),
    (["--dataset", "fake", "--image-size", "16", "--depth", "4"], "--disc-layers 3 is too deep for 16 px images; use --disc-layers 2"),
    (["--dataset", "fake", "--disc-layers", "6"], "use --disc-layers 3 or less"),
    (["--dataset", "photos", "--image-size", "512"], "photos are too small"),
])
def test_bad_flags_fail_in_one_line(args, needle, tmp_path):
    p = run_cli(*args, "--model-dir", tmp_path / "m", "--device" if "--device" not in args else "--seed", "cpu" if "--device" not in args else "1")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert needle in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_help_lists_every_option_with_default():
    p = run_cli("--help", check=True)
    for flag in ("--dataset-root", "--epochs", "--batch-size", "--learning-rate", "--beta1", "--lambda-l1",
                 "--model-dir", "--device", "--num-workers", "--seed", "--log-interval", "--dataset", "--max-steps"):
        assert flag in p.stdout
    text = " ".join(p.stdout.split())  # argparse wraps lines
    assert "(default: 0.0002)" in text and "(default: models)" in text and "(default: cifar10)" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on machines without CUDA")
def test_cuda_falls_back_to_cpu_with_a_warning(tmp_path):
    p = run_cli("--dataset", "fake", "--device", "cuda", "--max-steps", "1", "--batch-size", "4",
                "--model-dir", tmp_path / "m", check=True)
    assert "warning: CUDA is not available" in p.stderr and "warning" not in p.stdout


def test_module_and_info_entry_points():
    p = run_cli("info", script=None, check=True)
    assert "7.78 M" in p.stdout and "receptive field 70 px" in p.stdout
