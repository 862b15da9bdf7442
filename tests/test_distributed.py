"""torchrun on the CPU (gloo, 2 processes): the replicas agree (weights and BatchNorm buffers),
rank 0 alone writes and logs, and a torchrun run stopped mid-epoch and resumed under torchrun
ends bit-identical to an unbroken torchrun run.

Each rank's own weights are observed through the engine's test hook TINYPIX2PIX_DUMP_RANK_STATE
(every rank saves its G and D state dicts when training ends). Disjoint shards per rank are
checked on batches.epoch_order in test_engine.py.
"""
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from test_resume import (RUN, assert_matches_reference, assert_same, env, newest_state,
                         records, temp_files)
from tinypix2pix.cli import main

WORLD = 2
STEPS_PER_EPOCH = 256 // (4 * WORLD)  # the batch is per process: global batch 8


def torchrun(out, *args, dump=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           str(ROOT / "train.py"), *RUN, "--model-dir", str(out), *map(str, args)]
    extra = {"TINYPIX2PIX_DUMP_RANK_STATE": str(dump)} if dump else {}
    p = subprocess.run(cmd, env=env(**extra), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An unbroken torchrun run, and one stopped mid-epoch by --max-steps then resumed."""
    base = tmp_path_factory.mktemp("torchrun")
    unbroken = torchrun(base / "unbroken", dump=base / "unbroken-ranks")
    stopped = torchrun(base / "resumed", "--max-steps", 20)
    shutil.copytree(base / "resumed", base / "stopped")
    resumed = torchrun(base / "resumed", "--resume", "--max-steps", 0, dump=base / "resumed-ranks")
    return SimpleNamespace(base=base, unbroken=unbroken, stopped=stopped, resumed=resumed)


def _ranks(folder):
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.slow
def test_replicas_hold_identical_weights_and_buffers(runs):
    for name in ("unbroken", "resumed"):
        ranks = _ranks(runs.base / f"{name}-ranks")
        assert_same(ranks[0], ranks[1], f"{name}: rank 0 vs rank 1")
        saved = load_file(runs.base / name / "generator_last.safetensors")  # what rank 0 wrote
        assert saved.keys() == ranks[1]["generator"].keys()
        assert all(torch.equal(saved[k], ranks[1]["generator"][k]) for k in saved)
        assert any("running_mean" in k for k in saved)  # BatchNorm buffers are part of the comparison


@pytest.mark.slow
def test_rank_zero_alone_logs_and_writes(runs):
    out = runs.unbroken.stdout
    assert out.count("device cpu (2 process(es))") == 1 and f"{STEPS_PER_EPOCH} steps/epoch of 4" in out
    for epoch, step in ((1, STEPS_PER_EPOCH), (2, 2 * STEPS_PER_EPOCH)):
        assert out.count(f"epoch {epoch} | step {step} |") == 1
    logged = [line for line in out.splitlines() if line.startswith("step ")]
    assert len(logged) == len(set(logged)) == 2 * STEPS_PER_EPOCH // 50  # --log-interval 50, once each
    assert [r["step"] for r in records(runs.base / "unbroken")] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert temp_files(runs.base / "unbroken") == []


@pytest.mark.slow
def test_a_stopped_and_resumed_torchrun_run_matches_an_unbroken_one(runs):
    stopped = newest_state(runs.base / "stopped")
    assert (stopped["step"], stopped["epoch_step"]) == (20, 20) and len(stopped["ranks"]) == WORLD
    assert not torch.equal(stopped["ranks"][0]["loss_sums"], stopped["ranks"][1]["loss_sums"])  # own batches
    assert runs.resumed.stdout.count("resumed from") == 1
    assert_matches_reference(runs.base / "resumed", runs.base / "unbroken")
    assert_same(_ranks(runs.base / "resumed-ranks"), _ranks(runs.base / "unbroken-ranks"))


def test_a_mid_epoch_state_refuses_another_process_count(runs, tmp_path, capsys):
    out = shutil.copytree(runs.base / "stopped", tmp_path / "m")
    assert main(["train", *RUN, "--model-dir", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "saved in the middle of an epoch by 2 process(es); resume it with 2" in err


def test_an_epoch_end_state_continues_with_another_process_count_and_a_longer_schedule(runs, tmp_path, capsys):
    out = shutil.copytree(runs.base / "unbroken", tmp_path / "m")
    assert main(["train", *RUN, "--model-dir", str(out), "--resume", "--epochs-decay", "2"]) == 0
    assert "saved by 2 process(es), this run has 1: training continues, but not bit-identically" in capsys.readouterr().err
    got = records(out)
    assert [r["epoch"] for r in got] == [1, 2, 3] and got[2]["step"] == 2 * STEPS_PER_EPOCH + 64
    assert got[2]["lr"] == pytest.approx(2e-4 * (1 - 2 / 3), rel=1e-12)  # the new schedule's, not the old one's 0
