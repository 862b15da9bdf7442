"""Files a run writes and reads: atomic writes, full training state, inference weights.

- Every file is written to a temporary name in the same folder, flushed, fsynced and then
  renamed, so a crash or kill leaves either the old file or the new one, never half of one.
- Training state (`train_state_<step>.pt`: models, optimizers, scaler, schedulers, RNG,
  position in the epoch, config) is loaded with `torch.load(weights_only=True)`, which
  refuses pickles that would run code. It carries a sha256 of its own contents, checked on
  load: a flipped byte inside tensor data would otherwise load silently.
- Inference weights are safetensors plus a JSON config (`generator_best.safetensors` +
  `generator_best.json`): no pickle at all.
"""
import hashlib
import json
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch

from .errors import UserError

STATE_FORMAT = "tinypix2pix-train-state"
STATE_PATTERN = re.compile(r"^train_state_(\d+)\.pt$")
KEEP_STATES = 2  # the newest and one before it, so a corrupt newest file still leaves a valid one


_UMASK = os.umask(0)
os.umask(_UMASK)  # read the process umask once (it can only be read by setting it)


def atomic_write(path, write: Callable[[object], None], mode: str = "wb") -> Path:
    """Write through `write(fileobj)` to a temp file beside `path`, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give what open() would
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
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle, zip and unpickler errors all mean: do not trust this file
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
        if "Weights only load failed" in text:
            # torch's message suggests weights_only=False; that would run whatever the file holds.
            found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", text)
            what = f"it holds {found.group(1)}" if found else "it is corrupt or holds Python objects"
            raise UserError(f"refusing to load checkpoint {path}: {what}, not only tensors and plain data, and "
                            f"unpickling it could run code; only weights-only files are loaded") from None
        msg = text.strip().splitlines()[0].split(". ")[0][:200] if text.strip() else type(e).__name__
        raise UserError(f"cannot load checkpoint {path}: it is truncated or corrupt ({type(e).__name__}: {msg})") from None
    if isinstance(obj, dict) and (obj.get("format") == STATE_FORMAT or "sha256" in obj):
        saved = obj.pop("sha256", None)
        if content_digest(obj) != saved:
            raise UserError(f"cannot load checkpoint {path}: it is corrupt (its contents do not match the "
                            f"checksum saved with it{'' if saved else ': there is none'})")
    return obj


def content_digest(obj) -> str:
    """sha256 over every tensor's dtype, shape and bytes and every other value's repr, in order."""
    h = hashlib.sha256()

    def walk(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(x, dict):
            h.update(b"{")
            for k, v in x.items():
                walk(k)
                walk(v)
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[" if isinstance(x, list) else b"(")
            for v in x:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode() + b";")

    walk(obj)
    return h.hexdigest()


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


RUN_FILES = re.compile(r"(train_state_\d+\.pt|metrics\.jsonl|generator_(best|last)\.safetensors|generator_epoch_\d+\.pt)$")


def check_no_run(folder) -> None:
    """A new run must not replace an earlier run's files (its states, metrics and best weights
    would be overwritten or trimmed as the new run saves): continue it or use another folder."""
    folder = Path(folder)
    found = sorted(p.name for p in folder.iterdir() if RUN_FILES.match(p.name)) if folder.is_dir() else []
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise UserError(f"--model-dir {folder} already holds a training run ({shown}); continue it with --resume, "
                        f"or pass a new --model-dir (or delete those files to start over there)")


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
    """Write the training state, then drop all but the newest KEEP_STATES files.

    States of higher steps belong to a timeline this run abandoned (an earlier run in the same
    folder, or the corrupt state a resume skipped): they go too, or a later `--resume` would
    pick them, and keeping them would make the pruning delete this run's own states."""
    state = {"format": STATE_FORMAT, **state}
    path = save_torch({**state, "sha256": content_digest(state)}, state_path(model_dir, step))
    states = list_states(model_dir)
    newer = [p for p in states if int(STATE_PATTERN.match(p.name).group(1)) > step]
    for old in newer + [p for p in states if p not in newer][KEEP_STATES:]:
        old.unlink(missing_ok=True)
    return path


TEMP_PATTERN = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # atomic_write's mkstemp names


def remove_temp_files(model_dir) -> list:
    """Delete temporary files a killed run left half-written (atomic_write's own names only)."""
    folder = Path(model_dir)
    found = [p for p in folder.iterdir() if TEMP_PATTERN.match(p.name) and p.is_file()] if folder.is_dir() else []
    for p in found:
        p.unlink(missing_ok=True)
    return found


def load_state(path) -> dict:
    state = load_torch(path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserError(f"{path} is not a tinypix2pix training state (a weights-only or foreign checkpoint?)")
    return state


def find_resume_state(resume: str, model_dir, warn=lambda m: print(m, file=sys.stderr, flush=True)) -> Optional[tuple]:
    """`--resume PATH` loads that file; `--resume` alone (or `--resume FOLDER`) takes the newest valid
    state in model_dir (FOLDER), skipping (and naming) corrupt newer ones. Returns (path, state)."""
    if resume != "latest" and not Path(resume).is_dir():
        return Path(resume), load_state(resume)
    if resume != "latest":  # a folder: its newest valid state
        model_dir = resume
    candidates = list_states(model_dir)
    if not candidates:
        raise UserError(f"--resume: no training state (train_state_*.pt) in {model_dir}; "
                        f"start without --resume, or pass --resume PATH")
    for path in candidates:
        try:
            return path, load_state(path)
        except UserError as e:
            warn(f"warning: skipping {path.name}: {e}")
    raise UserError(f"--resume: no training state in {model_dir} can be loaded (see the warnings above); "
                    f"start a new run or pass --resume PATH")


# --- inference weights --------------------------------------------------------------------

def save_inference(model: torch.nn.Module, config: dict, path_stem) -> Path:
    """`<stem>.safetensors` (weights and buffers, contiguous fp32) and `<stem>.json` (how to rebuild)."""
    from safetensors.torch import save as st_save

    stem = Path(path_stem)  # appended, not with_suffix: "net.e5" and "net.e10" stay two files
    weights, sidecar = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "tinypix2pix-generator", **{k: json.dumps(v) for k, v in config.items()}}
    data = st_save(tensors, metadata={k: str(v) for k, v in meta.items()})
    atomic_write(weights, lambda f: f.write(data))
    save_json(config, sidecar)
    return weights


def check_not_checkpoint(out, checkpoint) -> None:
    """An output path must not replace the checkpoint it was made from, or its JSON sidecar."""
    ck = Path(checkpoint).resolve()
    if Path(out).resolve() in (ck, ck.with_suffix(".json")):
        raise UserError(f"--out {out} would overwrite the checkpoint {checkpoint} (or its .json); choose another --out")
