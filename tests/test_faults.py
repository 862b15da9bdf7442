"""Faults a run must survive or refuse cleanly: SIGINT/SIGTERM, corrupt, truncated and malicious
checkpoints, an unwritable --model-dir, non-finite losses.

Every case calls the CLI's `main` in this process: the code path of `python train.py ...`
without paying a torch import per case (runs that fail before training, short NaN runs, a
two-step resume). Signals and SIGKILL are tested on real processes in test_resume.py.

`make_malicious_checkpoint(path, marker)` is meant for reuse by the tests of other loaders
(eval, translate, official import): load the file through them and assert `not marker.exists()`.
"""
import os
import pickle
import re
import shlex
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_resume import (RUN, assert_matches_reference, assert_same, newest_state,
                         records, reference)
from tinypix2pix import checkpoint as ckpt
from tinypix2pix.cli import main
from tinypix2pix.config import TrainConfig
from tinypix2pix.gan import Pix2Pix
from tinypix2pix.models import generator_config


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> Path:
    return reference(tmp_path_factory)




def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def one_error(stderr: str) -> str:
    """The single error line of stderr; the warnings before it are checked separately."""
    return one_line("\n".join(line for line in stderr.splitlines() if not line.startswith("warning: ")))


# --- malicious pickles ----------------------------------------------------------------------

class _RunsCode:
    """Unpickling this runs `touch MARKER` (os.system): what a hostile checkpoint can do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def make_malicious_checkpoint(path, marker, fmt: str = "torch") -> Path:
    """A file shaped like a tinypix2pix training state whose loading with plain pickle (or
    torch.load(weights_only=False)) creates `marker`. fmt: "torch" (torch.save's zip) or
    "pickle" (a bare pickle, which torch.load also reads)."""
    path = Path(path)
    obj = {"format": ckpt.STATE_FORMAT, "step": 9, "generator": {"w": torch.zeros(2)}, "payload": _RunsCode(marker)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torch":
        torch.save(obj, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    return path


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_the_malicious_checkpoint_is_real_and_the_loaders_refuse_it(fmt, tmp_path):
    path = make_malicious_checkpoint(tmp_path / "train_state_000000009.pt", tmp_path / "MARKER", fmt)
    for load in (ckpt.load_torch, ckpt.load_state):
        with pytest.raises(ckpt.UserError, match="refusing to load checkpoint .*train_state_000000009.pt"):
            load(path)
    assert not (tmp_path / "MARKER").exists()
    # The test is not vacuous: an unsafe load does run the payload.
    proof = make_malicious_checkpoint(tmp_path / "x.pt", tmp_path / "PROOF", fmt)
    if fmt == "torch":
        torch.load(proof, weights_only=False)
    else:
        with open(proof, "rb") as f:
            pickle.load(f)
    assert (tmp_path / "PROOF").exists()


def test_resume_path_refuses_a_malicious_state(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    bad = make_malicious_checkpoint(tmp_path / "elsewhere" / "train_state_000000009.pt", marker)
    assert main(["train", *RUN, "--model-dir", str(tmp_path / "m"), "--resume", str(bad)]) == 2
    out, err = capsys.readouterr()
    assert f"refusing to load checkpoint {bad}: it holds posix.system" in one_line(err)
    assert not marker.exists() and out == ""


def test_resume_latest_skips_a_malicious_state_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    make_malicious_checkpoint(tmp_path / "m" / "train_state_000000009.pt", marker)
    assert main(["train", *RUN, "--model-dir", str(tmp_path / "m"), "--resume"]) == 2
    out, err = capsys.readouterr()
    assert "warning: skipping train_state_000000009.pt: refusing to load" in err
    assert "no training state in" in one_error(err) and not marker.exists()


# --- corrupt and truncated states -------------------------------------------------------------

def _flip_a_tensor_byte(path: Path) -> None:
    """Flip one byte in the middle of the largest tensor's data (torch.load alone would not notice)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    data[info.header_offset + 30 + name_len + extra_len + info.file_size // 2] ^= 0x40
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "flipped-byte": _flip_a_tensor_byte,
    "empty": lambda p: p.write_bytes(b""),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_state_gives_a_one_line_error_naming_it(damage, ref, tmp_path, capsys):
    bad = Path(shutil.copy(ckpt.list_states(ref)[0], tmp_path / "train_state_000000128.pt"))
    DAMAGE[damage](bad)
    assert main(["train", *RUN, "--model-dir", str(tmp_path / "m"), "--resume", str(bad)]) == 2
    out, err = capsys.readouterr()
    assert f"cannot load checkpoint {bad}: it is" in one_line(err) and "corrupt" in err
    assert out == ""  # nothing else happened


def test_resume_skips_a_truncated_newest_state_and_uses_the_previous_one(ref, tmp_path, capsys):
    out = shutil.copytree(ref, tmp_path / "m")
    newest, previous = ckpt.list_states(out)
    DAMAGE["truncated"](newest)
    assert main(["train", *RUN, "--model-dir", str(out), "--resume"]) == 0
    captured = capsys.readouterr()
    assert f"warning: skipping {newest.name}: cannot load checkpoint" in captured.err
    assert f"resumed from {previous}" in captured.out
    assert_matches_reference(out, ref)  # the two steps after `previous` replayed exactly


# --- an unwritable --model-dir -----------------------------------------------------------------

@pytest.mark.parametrize("where", ["below-a-file", "proc"])
def test_an_unwritable_model_dir_fails_before_training(where, tmp_path, capsys):
    # Tests run as root, so chmod would not stop a write: use paths no one can create.
    (tmp_path / "file").write_text("not a folder")
    model_dir = tmp_path / "file" / "models" if where == "below-a-file" else Path("/proc/tinypix2pix-test/models")
    assert main(["train", *RUN, "--model-dir", str(model_dir)]) == 2
    out, err = capsys.readouterr()
    assert f"cannot write to --model-dir {model_dir}" in one_line(err)
    assert out == ""  # before loading data, building models or any step


def test_a_new_run_refuses_a_model_dir_that_holds_a_run(tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["train", *RUN, "--model-dir", str(out), "--max-steps", "4"]) == 0
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["train", *RUN, "--model-dir", str(out), "--max-steps", "2"]) == 2  # forgot --resume
    err = one_line(capsys.readouterr().err)
    assert f"--model-dir {out} already holds a training run" in err and "--resume" in err
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing touched
    assert main(["train", *RUN, "--model-dir", str(out), "--max-steps", "6", "--resume"]) == 0


# --- non-finite losses -------------------------------------------------------------------------

def test_nan_policy_stop_keeps_the_last_good_state(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TINYPIX2PIX_FAULT_NAN_STEP", "8")
    out = tmp_path / "m"
    assert main(["train", *RUN, "--model-dir", str(out), "--max-steps", "12"]) == 1
    err = one_line(capsys.readouterr().err)
    assert "non-finite loss at step 8 (loss_d=nan" in err and "the last good training state" in err
    states = ckpt.list_states(out)
    assert [int(ckpt.STATE_PATTERN.match(p.name).group(1)) for p in states] == [6, 3]  # nothing at or after 8
    for p in states:
        s = ckpt.load_state(p)
        assert all(torch.isfinite(t).all() for t in [*s["generator"].values(), *s["discriminator"].values()]
                   if t.is_floating_point())
    s = ckpt.load_state(states[0])
    assert (s["step"], s["epoch_step"]) == (6, 6)


def test_nan_policy_skip_drops_and_counts_steps_then_gives_up(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TINYPIX2PIX_FAULT_NAN_STEP", "3,5g")  # D's loss at step 3, G's loss at step 5
    out = tmp_path / "m"
    assert main(["train", *RUN, "--model-dir", str(out), "--max-steps", "8", "--nan-policy", "skip",
                 "--log-interval", "1"]) == 0
    captured = capsys.readouterr()
    assert "warning: step 3 skipped: non-finite loss (loss_d=nan" in captured.err
    assert "warning: step 5 skipped: non-finite loss (loss_d=" in captured.err and "loss_g_gan=nan" in captured.err
    assert records(out)[-1]["nan_skips"] == 2 and newest_state(out)["nan_skips"] == 2
    logged = {int(m[1]): float(m[2]) for m in re.finditer(r"step +(\d+) \| epoch 1 \| loss_d ([0-9.]+)", captured.out)}
    kept = [logged[s] for s in range(1, 9) if s not in (3, 5)]
    assert abs(records(out)[-1]["loss_d"] - sum(kept) / len(kept)) < 1e-3  # the mean of the kept steps only
    assert all(torch.isfinite(t).all() for t in load_file(out / "generator_last.safetensors").values())
    assert main(["train", *RUN, "--model-dir", str(tmp_path / "m2"), "--max-steps", "8", "--nan-policy", "skip",
                 "--max-nan-skips", "1"]) == 1
    err = one_error(capsys.readouterr().err)
    assert "non-finite loss at step 5" in err and "--max-nan-skips 1" in err


@pytest.mark.parametrize("which", ["d", "g"])
def test_a_skipped_step_changes_nothing(which, monkeypatch):
    """A dropped step leaves G, D, both Adam states and the BatchNorm statistics as they were,
    also when G's loss is the non-finite one and D has already stepped."""
    def make(fault):
        monkeypatch.setenv("TINYPIX2PIX_FAULT_NAN_STEP", fault)
        torch.manual_seed(0)
        cfg = TrainConfig(generator="seed", ngf=4, depth=3, disc_layers=1, ndf=8, nan_policy="skip")
        return Pix2Pix(cfg, generator_config("seed", ngf=4, depth=3), torch.device("cpu"), None, False)

    g = torch.Generator().manual_seed(1)
    batches = [torch.rand(4, 3, 32, 32, generator=g) * 2 - 1 for _ in range(3)]
    faulty, clean = make("2" + (which if which == "g" else "")), make("")
    for step, b in enumerate(batches, 1):
        faulty.step(b, b, step, check_finite=True)
        assert faulty.skipped == (step == 2)
        if step != 2:
            clean.step(b, b, step, check_finite=True)
    assert_same(faulty.state_dict(), clean.state_dict())
