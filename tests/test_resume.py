"""Exact resume: a run stopped by --max-steps (mid-epoch, at an epoch end) or killed with SIGKILL,
then resumed, ends bit-identical to an unbroken run with the same seed; the LR schedule; what a
resume may not change. The helpers here are shared with test_faults.py and test_distributed.py."""
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, cli_env, run_cli
from tinypix2pix import checkpoint as ckpt
from tinypix2pix.cli import main
from tinypix2pix.config import TrainConfig
from tinypix2pix.gan import Pix2Pix
from tinypix2pix.models import generator_config

TINY = ["--dataset", "fake", "--device", "cpu", "--batch-size", "4", "--ngf", "4", "--depth", "3",
        "--disc-layers", "1", "--ndf", "8", "--eval-images", "8"]
# Two epochs of 64 steps (the fake set's 256 images in batches of 4); the second decays the LR.
RUN = [*TINY, "--epochs", "1", "--epochs-decay", "1", "--save-every", "3"]
STEPS_PER_EPOCH = 64
RECORDED = ("epoch", "step", "loss_d", "loss_g_gan", "loss_g_l1", "lr", "test_mae", "test_psnr", "nan_skips")


def env(**extra) -> dict:
    """One thread per process: the test machine is shared, and bit-identity must not depend on load."""
    return cli_env(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)


def train(out, *args, **kw):
    return run_cli(*RUN, "--model-dir", out, *args, env=kw.pop("env", None) or env(), **kw)


def popen(out, *args, env_extra=None) -> subprocess.Popen:
    """`train.py RUN --model-dir out ARGS` in the background, stdout and stderr piped (text)."""
    cmd = [sys.executable, str(ROOT / "train.py"), *RUN, "--model-dir", str(out), *map(str, args)]
    return subprocess.Popen(cmd, env=env(**(env_extra or {})), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def reference(tmp_path_factory) -> Path:
    """The unbroken run that interrupted ones are compared with: run once per session, kept on disk
    (a session-wide folder, so every test module shares it)."""
    out = tmp_path_factory.getbasetemp() / "reference-run"
    if not (out / "complete").exists():
        shutil.rmtree(out, ignore_errors=True)
        train(out, check=True)
        (out / "complete").touch()
    return out


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> Path:
    return reference(tmp_path_factory)



def records(out) -> list:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def newest_state(out) -> dict:
    return ckpt.load_state(ckpt.list_states(out)[0])


def assert_same(a, b, where="state"):
    """Recursive equality, tensors bit for bit (torch.equal); the config (paths, flags) is skipped."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            if k != "config":
                assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def temp_files(out) -> list:
    return [p for p in Path(out).rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]


def assert_matches_reference(out, ref, epochs=(1, 2)):
    """Same recorded losses and LR per epoch, each epoch once; bit-identical final generator and
    full final training state (G, D, both Adam states, schedulers, RNG, loss sums)."""
    got, want = records(out), records(ref)
    assert [r["epoch"] for r in got] == list(epochs) and not any("partial_epoch" in r for r in got)
    assert [{k: r[k] for k in RECORDED} for r in got] == [{k: r[k] for k in RECORDED} for r in want]
    g, g_ref = load_file(out / "generator_last.safetensors"), load_file(ref / "generator_last.safetensors")
    assert g.keys() == g_ref.keys() and all(torch.equal(g[k], g_ref[k]) for k in g)
    assert_same(newest_state(out), newest_state(ref))
    assert temp_files(out) == []


def test_reference_run_records_the_paper_lr_schedule(ref):
    # Official lambda_rule with epoch_count=1, the scheduler stepped at each epoch end.
    n, decay, lr = 1, 1, 2e-4
    assert [r["lr"] for r in records(ref)] == pytest.approx(
        [lr * (1 - max(0, e + 1 - n) / (decay + 1)) for e in range(n + decay)], rel=1e-12)
    state = newest_state(ref)
    assert (state["epoch"], state["epoch_step"], state["step"]) == (2, 0, 2 * STEPS_PER_EPOCH)  # saved at the end


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_lr_schedule_constant_then_linear_decay():
    cfg = TrainConfig(generator="seed", ngf=4, depth=3, disc_layers=1, ndf=8, epochs=2, epochs_decay=3)
    model = Pix2Pix(cfg, generator_config("seed", ngf=4, depth=3), torch.device("cpu"), None, False)
    seen = []
    for _ in range(cfg.epochs + cfg.epochs_decay):
        seen.append(model.opt_g.param_groups[0]["lr"])
        assert model.opt_d.param_groups[0]["lr"] == seen[-1]
        model.sched_g.step()
        model.sched_d.step()
    assert seen == pytest.approx([2e-4, 2e-4, 1.5e-4, 1e-4, 0.5e-4], rel=1e-12)


def _wait_for_state(out, proc, min_step, timeout=240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = ckpt.list_states(out)
        if states and int(ckpt.STATE_PATTERN.match(states[0].name).group(1)) >= min_step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before saving step {min_step}: {proc.stderr.read()}")
        time.sleep(0.01)
    raise AssertionError(f"no training state for step >= {min_step} after {timeout} s")


def _signal_once_stepping(out, sig, *args):
    """Start a run, send `sig` once it has logged a step; returns (exit code, stdout, stderr)."""
    proc = popen(out, "--log-interval", "1", *args)
    lines, stepping = [], threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("step"):
                stepping.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while not stepping.wait(0.05):
            assert proc.poll() is None and time.monotonic() < deadline, f"no step logged: {proc.stderr.read()}"
        proc.send_signal(sig)
        proc.wait(timeout=120)
    finally:
        proc.kill()
    reader.join(10)
    return SimpleNamespace(returncode=proc.returncode, stdout="".join(lines), stderr=proc.stderr.read())


def _kill_once_saved(out, min_step, *args):
    proc = popen(out, *args)
    try:
        _wait_for_state(out, proc, min_step)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """One run of the reference's configuration, interrupted every way there is, each time resumed:
    SIGINT early in epoch 1, SIGKILL later in epoch 1, --max-steps at the epoch end, --max-steps in
    the middle of the (decaying) epoch 2, SIGTERM, then to the end. Each stage's output and newest
    state are kept for the tests below."""
    out = tmp_path_factory.mktemp("broken") / "m"
    stages = {}

    def keep(name, proc):
        stages[name] = SimpleNamespace(proc=proc, state=newest_state(out), records=records(out)
                                       if (out / "metrics.jsonl").exists() else [])

    keep("sigint", _signal_once_stepping(out, signal.SIGINT))
    first = stages["sigint"].state["step"]
    code = _kill_once_saved(out, first + 6, "--resume")
    keep("sigkill", SimpleNamespace(returncode=code))
    (out / f".train_state_{stages['sigkill'].state['step'] + 3:09d}.pt.abcd1234.tmp").write_bytes(b"half")
    keep("epoch-end", train(out, "--resume", "--max-steps", STEPS_PER_EPOCH))
    keep("mid-decay", train(out, "--resume", "--max-steps", 100))
    keep("sigterm", _signal_once_stepping(out, signal.SIGTERM, "--resume", "--max-steps", 0))
    keep("end", train(out, "--resume"))
    return SimpleNamespace(out=out, **{k.replace("-", "_"): v for k, v in stages.items()})


@pytest.mark.slow
@pytest.mark.parametrize("stage, sig, code", [("sigint", signal.SIGINT, 130), ("sigterm", signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_finishes_the_step_saves_and_says_how_to_resume(broken, stage, sig, code):
    run = getattr(broken, stage)
    assert run.proc.returncode == code, run.proc.stderr
    line = run.proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"{sig.name} received: stopped after step ") and "Traceback" not in run.proc.stderr
    assert f"resume with: python train.py --resume --model-dir {broken.out}" in line
    step = int(line.split("stopped after step ")[1].split(",")[0])
    assert run.state["step"] == step and 0 < run.state["epoch_step"] < STEPS_PER_EPOCH  # the step it finished


@pytest.mark.slow
def test_sigkill_mid_epoch_resumes_from_the_last_saved_state(broken):
    assert broken.sigkill.proc.returncode == -signal.SIGKILL
    killed = broken.sigkill.state
    assert killed["epoch"] == 0 and broken.sigint.state["step"] < killed["step"]  # really mid-epoch 1
    assert f"resumed from {ckpt.state_path(broken.out, killed['step'])} at epoch 1" in broken.epoch_end.proc.stdout


@pytest.mark.slow
def test_max_steps_stops_at_an_epoch_end_or_mid_epoch_and_resume_continues(broken):
    for name, run, where in (("epoch-end", broken.epoch_end, (1, 0, 64)), ("mid-decay", broken.mid_decay, (1, 36, 100))):
        assert run.proc.returncode == 0, (name, run.proc.stderr)
        assert (run.state["epoch"], run.state["epoch_step"], run.state["step"]) == where, name
    assert "at epoch 2, step 64" in broken.mid_decay.proc.stdout
    assert [r["epoch"] for r in broken.mid_decay.records] == [1, 2]
    assert broken.mid_decay.records[-1]["partial_epoch"] == pytest.approx(36 / 64, abs=1e-4)
    assert f"resumed from {ckpt.state_path(broken.out, 100)} at epoch 2, step 100" in broken.sigterm.proc.stdout


@pytest.mark.slow
def test_the_interrupted_run_ends_bit_identical_to_an_unbroken_one(broken, ref):
    assert broken.end.proc.returncode == 0, broken.end.proc.stderr
    assert_matches_reference(broken.out, ref)  # also: each epoch once in metrics.jsonl, no temp files left


def test_resume_with_a_changed_setting_names_the_flag(ref, tmp_path, capsys):
    out = shutil.copytree(ref, tmp_path / "m")
    code = main(["train", *RUN, "--model-dir", str(out), "--resume", "--batch-size", "8"])
    out_err = capsys.readouterr()
    assert code == 2 and "Traceback" not in out_err.err
    assert out_err.err.strip().splitlines() == [out_err.err.strip()]
    assert "--batch-size 8 differs from the run being resumed (4)" in out_err.err
    assert "step" not in out_err.out


def test_resume_path_without_model_dir_continues_beside_the_state(ref, tmp_path, capsys):
    out = shutil.copytree(ref, tmp_path / "m")
    first = ckpt.list_states(out)[-1]  # step 126: two steps before the end
    assert main(["train", *RUN, "--resume", str(first)]) == 0  # no --model-dir: not ./models, but out
    assert f"resumed from {first}" in capsys.readouterr().out
    assert_matches_reference(out, ref)


def test_a_new_state_drops_states_of_an_abandoned_run_and_keeps_two(tmp_path):
    for step in (50, 100):  # an earlier, longer run in the same folder
        ckpt.save_state({"step": step}, tmp_path, step)
    ckpt.save_state({"step": 3}, tmp_path, 3)
    assert [p.name for p in ckpt.list_states(tmp_path)] == ["train_state_000000003.pt"]
    for step in (6, 9):
        ckpt.save_state({"step": step}, tmp_path, step)
    assert [ckpt.load_state(p)["step"] for p in ckpt.list_states(tmp_path)] == [9, 6]


def test_resume_keeps_the_saved_device_unless_told_otherwise():
    from tinypix2pix.engine import merge_resume_config

    saved = TrainConfig(device="cpu", batch_size=8).to_dict()
    assert merge_resume_config(saved, TrainConfig(resume="latest"), {"resume"}).device == "cpu"  # not the CLI's "cuda"
    assert merge_resume_config(saved, TrainConfig(resume="latest", device="auto"), {"resume", "device"}).device == "auto"
    assert merge_resume_config(saved, TrainConfig(resume="latest"), {"resume"}).batch_size == 8


def test_resuming_a_finished_run_says_there_is_nothing_to_do(tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["train", *TINY, "--model-dir", str(out), "--max-steps", "3"]) == 0
    metrics = (out / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["train", *TINY, "--model-dir", str(out), "--resume"]) == 0  # still --max-steps 3
    said = capsys.readouterr().out
    assert "nothing to do: the run in" in said and "larger --max-steps" in said
    assert (out / "metrics.jsonl").read_bytes() == metrics  # not re-evaluated, nothing rewritten
