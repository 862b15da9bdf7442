"""Files a run writes and reads: atomic writes, full training state, inference weights.

- Every file is written to a temporary name in the same folder, flushed, fsynced and then
  renamed, so a crash or kill leaves either the old file or the new one, never half of one.
- Training state (`train_state_<step>.pt`: models, optimizers, scaler, schedulers, RNG,
  position in the epoch, config) is loaded with `torch.load(weights_only=True)`, which
  refuses pickles that would run code.
- Inference weights are safetensors plus a JSON config (`generator_best.safetensors` +
  `generator_best.json`): no pickle at all.
"""
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Optional

import torch

from .errors import UserError

STATE_FORMAT = "tinypix2pix-train-state"
STATE_PATTERN = re.compile(r"^train_state_(\d+)\.pt$")
KEEP_STATES = 2  # the newest and one before it, so a corrupt newest file still leaves a valid one


def atomic_write(path, write: Callable[[object], None], mode: str = "wb") -> Path:
    """Write through `write(fileobj)` to a temp file beside `path`, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def save_torch(obj, path) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


def save_json(obj, path) -> Path:
    return atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"))


def load_torch(path, map_location="cpu"):
    """torch.load with weights_only=True; a truncated, corrupt or unsafe file raises UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle, zip and unpickler errors all mean: do not trust this file
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load checkpoint {path}: it is truncated, corrupt or not a safe "
                        f"weights-only file ({type(e).__name__}: {msg})") from None


def check_writable(folder) -> Path:
    """Fail before training, not after the first epoch, when outputs cannot be written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UserError(f"cannot write to --model-dir {folder}: {e.strerror or e}") from None
    return folder


# --- training state ---------------------------------------------------------------------

def state_path(model_dir, step: int) -> Path:
    return Path(model_dir) / f"train_state_{step:09d}.pt"


def list_states(model_dir) -> list:
    """Training-state files in a folder, newest (highest step) first."""
    folder = Path(model_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STATE_PATTERN.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save_state(state: dict, model_dir, step: int) -> Path:
    """Write the training state, then drop all but the newest KEEP_STATES files."""
    path = save_torch({"format": STATE_FORMAT, **state}, state_path(model_dir, step))
    for old in list_states(model_dir)[KEEP_STATES:]:
        old.unlink(missing_ok=True)
    return path


def load_state(path) -> dict:
    state = load_torch(path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserError(f"{path} is not a tinypix2pix training state (a weights-only or foreign checkpoint?)")
    return state


def find_resume_state(resume: str, model_dir, warn=print) -> Optional[tuple]:
    """`--resume PATH` loads that file; `--resume` alone takes the newest valid state in model_dir,
    skipping (and naming) corrupt newer ones. Returns (path, state)."""
    if resume != "latest":
        return Path(resume), load_state(resume)
    candidates = list_states(model_dir)
    if not candidates:
        raise UserError(f"--resume: no training state (train_state_*.pt) in {model_dir}; "
                        f"start without --resume, or pass --resume PATH")
    for path in candidates:
        try:
            return path, load_state(path)
        except UserError as e:
            warn(f"warning: skipping {path.name}: {e}")
    raise UserError(f"--resume: every training state in {model_dir} is corrupt; start a new run")


# --- inference weights --------------------------------------------------------------------

def save_inference(model: torch.nn.Module, config: dict, path_stem) -> Path:
    """`<stem>.safetensors` (weights and buffers, contiguous fp32) and `<stem>.json` (how to rebuild)."""
    from safetensors.torch import save as st_save

    stem = Path(path_stem)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "tinypix2pix-generator", **{k: json.dumps(v) for k, v in config.items()}}
    data = st_save(tensors, metadata={k: str(v) for k, v in meta.items()})
    atomic_write(stem.with_suffix(".safetensors"), lambda f: f.write(data))
    save_json(config, stem.with_suffix(".json"))
    return stem.with_suffix(".safetensors")
