"""The two data paths of the engine give the same run, and --max-seconds stops a run cleanly.

A folder split held on the device (`--in-memory on`) and the same split streamed from files by
DataLoader workers (`--in-memory off`) must produce bit-identical weights, also across a resume.
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tinypix2pix import engine
from tinypix2pix.config import TrainConfig

TINY = dict(device="cpu", batch_size=4, ngf=4, depth=3, disc_layers=1, ndf=8, eval_images=8, log_interval=1000,
            task_arg=[], augment="flip+crop")


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """36 small images of mixed sizes cut from a real photo (so crops and flips matter)."""
    skimage = pytest.importorskip("skimage.data")
    root = tmp_path_factory.mktemp("photos")
    img = skimage.astronaut()
    for i in range(36):
        y, x, s = (i * 37) % 400, (i * 53) % 400, 40 + (i % 5) * 8
        Image.fromarray(img[y:y + s, x:x + s + i % 3]).save(root / f"p{i:02d}.{'png' if i % 2 else 'jpg'}")
    return root


def train(folder, out, **kw):
    cfg = TrainConfig(dataset=f"folder:{folder}", model_dir=str(out), **{**TINY, **kw}).validate()
    return engine.train(cfg, explicit=set(kw))


def weights(out):
    return load_file(str(out / "generator_last.safetensors"))


def assert_same(w1, w2):
    assert w1.keys() == w2.keys()
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


@pytest.mark.parametrize("task", ["denoise", "identity"])
def test_streamed_and_in_memory_runs_are_identical(photo_folder, tmp_path, task):
    held = train(photo_folder, tmp_path / "held", task=task, in_memory="on", max_steps=9, epochs=2)
    streamed = train(photo_folder, tmp_path / "streamed", task=task, in_memory="off", max_steps=9, epochs=2,
                     num_workers=2 if task == "identity" else 0)
    assert held["loss_g_l1"] == streamed["loss_g_l1"] and held["test_psnr"] == streamed["test_psnr"]
    assert_same(weights(tmp_path / "held"), weights(tmp_path / "streamed"))


def test_streamed_run_resumes_exactly(photo_folder, tmp_path):
    train(photo_folder, tmp_path / "whole", task="superres", in_memory="off", max_steps=10, epochs=2)
    train(photo_folder, tmp_path / "parts", task="superres", in_memory="off", max_steps=5, epochs=2)  # mid-epoch
    train(photo_folder, tmp_path / "parts", task="superres", in_memory="on", max_steps=10, epochs=2, resume="latest")
    assert_same(weights(tmp_path / "whole"), weights(tmp_path / "parts"))


def test_max_seconds_stops_with_a_saved_resumable_state(tmp_path):
    out = tmp_path / "m"
    cfg = TrainConfig(dataset="fake", model_dir=str(out), epochs=1000, max_seconds=3, **TINY).validate()
    last = engine.train(cfg)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == last["step"] > 0 and len(lines) < 1000
    assert list(out.glob("train_state_*.pt"))  # the stop wrote the state, like --max-steps does
    assert np.isfinite(lines[-1]["baseline_psnr"])  # the task's trivial answer is recorded beside the model's
