"""The fast path: precisions, the device-resident sampler, augmentation, compiled checkpoints."""
import json

import pytest
import torch

from conftest import run_cli
from tinypix2pix.config import TrainConfig
from tinypix2pix.batches import augment, epoch_order
from tinypix2pix.devices import resolve_precision
from tinypix2pix.gan import Pix2Pix
from tinypix2pix.models import UNetGenerator, generator_config

TINY = dict(generator="seed", ngf=4, depth=3, disc_layers=1, ndf=8)


def make_model(precision: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = TrainConfig(**TINY, batch_size=4, precision=precision)
    gen = generator_config("seed", ngf=4, depth=3)
    return Pix2Pix(cfg, gen, torch.device("cpu"), resolve_precision(precision, torch.device("cpu")), False)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_each_precision_trains_with_finite_losses(precision):
    model = make_model(precision)
    g = torch.Generator().manual_seed(0)
    b = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    for step in range(1, 4):
        losses = model.step(b, b, step, check_finite=True)
        assert torch.isfinite(losses).all(), (precision, losses)
    assert all(p.dtype == torch.float32 for p in model.G.parameters())  # weights stay fp32


def test_bf16_and_fp32_agree_on_the_first_output():
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    outs = {}
    for precision in ("fp32", "bf16"):
        model = make_model(precision)
        with model.autocast():
            outs[precision] = model.G(x).float()
    diff = (outs["fp32"] - outs["bf16"]).abs()
    assert diff.mean() < 0.02 and diff.max() < 0.2


@pytest.mark.parametrize("n, batch, world", [(100, 8, 1), (96, 8, 1), (100, 4, 2), (103, 5, 3)])
def test_sampler_draws_each_index_at_most_once_and_ranks_are_disjoint(n, batch, world):
    steps = n // (batch * world)
    shards = [epoch_order(n, epoch=3, seed=42, batch=batch, rank=r, world=world) for r in range(world)]
    assert all(len(s) == steps * batch for s in shards)  # every rank takes the same number of steps
    drawn = torch.cat(shards)
    assert len(set(drawn.tolist())) == len(drawn)
    if n % (batch * world) == 0:
        assert sorted(drawn.tolist()) == list(range(n))  # the whole split, once per epoch
    assert torch.equal(shards[0], epoch_order(n, 3, 42, batch, 0, world))  # fixed by (seed, epoch)
    assert not torch.equal(shards[0], epoch_order(n, 4, 42, batch, 0, world))


def test_augmentation_is_batched_and_seeded():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    a = augment(x.repeat(16, 1, 1, 1), "flip", torch.Generator().manual_seed(0))
    flipped = [(torch.equal(a[i], x[i % 2].flip(-1))) for i in range(32)]
    unchanged = [(torch.equal(a[i], x[i % 2])) for i in range(32)]
    assert all(f or u for f, u in zip(flipped, unchanged)) and any(flipped) and any(unchanged)
    c1 = augment(x, "flip+crop", torch.Generator().manual_seed(5))
    c2 = augment(x, "flip+crop", torch.Generator().manual_seed(5))
    assert torch.equal(c1, c2) and c1.shape == x.shape


def test_compiled_run_writes_checkpoints_an_uncompiled_model_loads(tmp_path):
    out = tmp_path / "m"
    run_cli("--dataset", "fake", "--device", "cpu", "--compile", "--max-steps", "2", "--batch-size", "4",
            "--ngf", "4", "--depth", "3", "--disc-layers", "1", "--eval-images", "8", "--model-dir", out,
            timeout=600, check=True)
    state = torch.load(out / "generator_epoch_1.pt", weights_only=True)
    assert not any("_orig_mod" in k or k.startswith("module.") for k in state)
    UNetGenerator(ngf=4, depth=3).load_state_dict(state)
    assert json.loads((out / "metrics.jsonl").read_text())["step"] == 2
