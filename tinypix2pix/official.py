"""Generators saved by the official pix2pix code (junyanz/pytorch-CycleGAN-and-pix2pix).

Its `latest_net_G.pth` is a plain state_dict. For the U-Net family (`unet_128`, `unet_256`, or
any `num_downs`) the layer recipe and key nesting are those of this project's `Pix2PixUNet`
(DESIGN.md section 2), so the weights load 1:1 once the configuration is known. It is read
from the keys and shapes alone:

- depth: how deep the nesting goes. The outermost block's submodule is `model.model.1`, every
  further one is index 3 of its parent (`model.model.1.model.3.model...`); the innermost
  block has none. One block = one down-sampling.
- ngf and input channels: the first conv `model.model.0.weight` (ngf, in, 4, 4); output
  channels: the last transposed conv `model.model.3.weight` (2 ngf, out, 4, 4).
- norm: BatchNorm has a scale (`...model.2.weight` beside the second conv); InstanceNorm
  (affine=False) has no parameters, and then the convs carry biases.
- dropout cannot be seen (nn.Dropout has no parameters). The official default (use_dropout,
  0.5 in the 512-wide middle blocks, which exist when depth > 5) is assumed; it only matters
  in train mode, never for translation.

Also handled: a `module.` prefix (saved from DataParallel), missing `num_batches_tracked`
buffers and InstanceNorm running statistics (checkpoints from PyTorch < 0.4). The model ends
in tanh and is not residual, as the official one.
"""
from pathlib import Path

import torch
import torch.nn as nn

from . import checkpoint as ckpt
from .errors import UserError
from .models import build_generator, generator_config

FIRST_KEY = "model.model.0.weight"
OFFICIAL_DROPOUT = 0.5  # the official --no_dropout default (off) means Dropout(0.5) in the middle blocks


def strip_prefixes(sd: dict) -> dict:
    """Drop a `module.` (DataParallel) or `_orig_mod.` (torch.compile) prefix common to every key."""
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def looks_official(sd: dict) -> bool:
    """True when the keys have the official U-Net's outermost layout."""
    sd = strip_prefixes(sd)
    w = sd.get(FIRST_KEY)
    return isinstance(w, torch.Tensor) and w.dim() == 4 and "model.model.1.model.1.weight" in sd


def first_keys(keys, n: int = 5) -> str:
    keys = list(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def infer_config(sd: dict, path="state_dict", dropout=None) -> dict:
    """The generator configuration (models.generator_config) that this official state_dict needs."""
    sd = strip_prefixes(sd)
    if FIRST_KEY not in sd or "model.model.1.model.1.weight" not in sd:
        hint = ""
        if "model.1.weight" in sd and any(".conv_block." in k for k in sd):
            hint = " (it looks like the official ResNet generator, resnet_6blocks/resnet_9blocks, which is not supported)"
        missing = [k for k in (FIRST_KEY, "model.model.1.model.1.weight") if k not in sd]
        raise UserError(f"{path} is not an official pix2pix U-Net generator state_dict{hint}: missing key(s) "
                        f"{', '.join(missing)}; its first keys are: {first_keys(sd)}")
    first, last = sd[FIRST_KEY], sd.get("model.model.3.weight")
    if first.dim() != 4 or last is None or last.dim() != 4:
        raise UserError(f"{path}: {FIRST_KEY} and model.model.3.weight must be 4-d conv weights "
                        f"(got {tuple(first.shape)} and {None if last is None else tuple(last.shape)})")
    depth, prefix = 1, "model.model.1.model."
    while any(k.startswith(prefix) for k in sd):  # one more nested block
        depth += 1
        prefix += "3.model."
    if depth < 5:
        raise UserError(f"{path}: the U-Net nests only {depth} blocks deep; the official U-Net has at least 5")
    level1 = "model.model.1.model."
    if level1 + "2.weight" in sd:
        norm = "batch"
    elif level1 + "1.bias" in sd:
        norm = "instance"
    else:
        raise UserError(f"{path}: the U-Net has neither BatchNorm scales nor conv biases (official --norm none?); "
                        f"only batch and instance norm are supported")
    if dropout is None:
        dropout = OFFICIAL_DROPOUT if depth > 5 else 0.0
    return generator_config("pix2pix", in_channels=first.shape[1], out_channels=last.shape[1], ngf=first.shape[0],
                            depth=depth, norm=norm, dropout=dropout, residual=False)


def load_official_weights(model: nn.Module, sd: dict, path) -> None:
    """Load an official state_dict into a Pix2PixUNet built for it; mismatches name the keys."""
    sd = dict(strip_prefixes(sd))
    own = model.state_dict()
    modules = dict(model.named_modules())
    for key in list(sd):
        owner, _, buf = key.rpartition(".")
        if buf in ("running_mean", "running_var", "num_batches_tracked") and isinstance(modules.get(owner), nn.InstanceNorm2d):
            del sd[key]  # PyTorch < 0.4 InstanceNorm kept (unused) running statistics
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in sd and key.replace("num_batches_tracked", "running_mean") in sd:
            sd[key] = torch.zeros_like(value)  # saved before PyTorch 0.4.1 added the counter
    load_checked(model, sd, path, what="the official U-Net it describes")


def load_checked(model: nn.Module, sd: dict, path, what: str) -> None:
    """model.load_state_dict(sd) with a one-line UserError naming the first missing, unexpected
    or mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} (file {tuple(sd[k].shape)}, model {tuple(own[k].shape)})" for k in own
              if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{name}: {first_keys(keys, 4)}" for name, keys in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if keys]
        raise UserError(f"{path}: the weights do not fit {what}; " + "; ".join(parts))
    model.load_state_dict(sd)


def convert(sd: dict, path="state_dict", dropout=None):
    """(Pix2PixUNet with the official weights, its generator config)."""
    if not is_state_dict(sd):
        kind = type(sd).__name__
        raise UserError(f"{path} is not a state_dict (a dict of tensors) but a {kind}"
                        + (f" with keys {first_keys(map(str, sd))}" if isinstance(sd, dict) and sd else ""))
    cfg = infer_config(sd, path, dropout)
    model = build_generator(cfg)
    load_official_weights(model, sd, path)
    return model, cfg


def official_info(cfg: dict, path) -> dict:
    """What an official checkpoint's JSON records: no task (the official models learn from real
    pairs), the smallest image size its bottleneck reaches 1x1 at, and where it came from."""
    return {"generator": cfg, "task": "pairing", "task_args": [], "dataset": None, "direction": None,
            "image_size": 2 ** cfg["depth"], "source": "official", "original_file": str(Path(path).resolve())}


def load_official(path, dropout=None):
    """Read `latest_net_G.pth` (weights_only=True) -> (model in eval mode, info)."""
    sd = ckpt.load_torch(path)
    model, cfg = convert(sd, path, dropout)
    return model.eval(), official_info(cfg, path)


def import_official(path, out_dir, name=None, dropout=None) -> tuple:
    """Convert to `<out_dir>/<name>.safetensors` + `.json`; returns (safetensors path, info, model)."""
    model, info = load_official(path, dropout)
    stem = Path(out_dir) / (name or Path(path).stem)
    try:
        written = ckpt.save_inference(model, info, stem)
    except OSError as e:
        raise UserError(f"cannot write {stem}.safetensors: {e.strerror or e}") from None
    return written, info, model
