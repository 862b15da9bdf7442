"""Using a trained generator: load any checkpoint, translate tensors and PIL images.

    model = tinypix2pix.load_generator("models/generator_best.safetensors")
    out = tinypix2pix.translate(model, images)      # tensor -> tensor, PIL -> PIL, list -> list

Image files and folders (and the index.html page) are translate_files.py's.

`load_generator` accepts what training writes (`generator_*.safetensors` with its JSON, or the
config kept in the safetensors metadata when the JSON is missing; `generator_epoch_N.pt` with
`options.json` beside it; `train_state_*.pt`), an official `latest_net_G.pth` (detected from
its keys) or a model folder. The model comes back in eval mode with `model.info` (task,
image size, generator config, source file).

Translation works at any image size: each image is padded to a multiple of 2**depth by
reflection (replication where the pad is wider than the image) and the output cropped back.
Input channels are decided in one place (`model_input`):

- with a task, the images are clean targets B and the task builds the model's input A from
  them (colour -> gray for colorize, holes and mask for inpaint...), as in training;
- without one, the images *are* the inputs: used as they are when the channel counts agree,
  reduced to luma for a 1-channel model, replicated for a 3-channel model given gray; any other
  mismatch (e.g. an inpainting model's image + mask) asks for the task.
"""
import json
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import official
from .errors import UserError
from .imagefiles import HIGH_DEPTH_GRAY, gray_unit
from .models import build_generator
from .devices import resolve_device
from .tasks import build_task, luma

EPOCH_PT = re.compile(r"^generator_epoch_\d+\.pt$")
PREFERRED = ("generator_best.safetensors", "generator_last.safetensors", "latest_net_G.pth")


# --- loading ----------------------------------------------------------------------------------

def load_generator(path, device="cpu") -> nn.Module:
    """Rebuild the generator stored at `path` (see module docstring), in eval mode, with `.info`."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in PREFERRED if (path / name).is_file()]
        if not found:
            raise UserError(f"{path} holds no generator ({', '.join(PREFERRED)})")
        path = found[0]
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        model, info = _load_safetensors(path)
    else:
        model, info = _load_pickle(path)
    info = {"task": "identity", "task_args": [], "image_size": 2 ** info["generator"]["depth"],
            "source": "tinypix2pix", **info, "checkpoint": str(path)}
    if str(info.get("dataset") or "").startswith(("aligned:", "paired:")):
        info["task"] = "pairing"  # real pairs: training records --task (identity), but no task made the inputs
    model.info = info
    return model.to(resolve_device(device) if isinstance(device, str) else device).eval()


def _load_safetensors(path: Path):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: not a valid safetensors file ({e})") from None
    sd = official.strip_prefixes(sd)
    side = path.with_suffix(".json")
    info = None
    if side.is_file():
        try:
            info = json.loads(side.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {side} (the configuration of {path.name}): {e}") from None
    elif "generator" in meta:  # the JSON was lost: training also keeps it in the metadata
        try:
            info = {k: json.loads(v) for k, v in meta.items() if k != "format"}
        except ValueError as e:
            raise UserError(f"{path}: its metadata is not valid JSON ({e})") from None
    elif official.looks_official(sd):  # official weights converted to safetensors by someone else
        model, cfg = official.convert(sd, path)
        return model, official.official_info(cfg, path)
    if not isinstance(info, dict) or not isinstance(info.get("generator"), dict):
        raise UserError(f"{path}: no generator configuration found (neither {side.name} beside it nor "
                        f"tinypix2pix metadata inside)")
    return _build(info, sd, path), info


def _load_pickle(path: Path):
    obj = ckpt.load_torch(path)  # weights_only=True: a pickle that would run code is refused here
    if isinstance(obj, dict) and obj.get("format") == ckpt.STATE_FORMAT:  # train_state_*.pt
        info = {**_run_info(obj.get("config", {}), obj["generator_config"]), "epoch": obj.get("epoch"), "step": obj.get("step")}
        return _build(info, obj["generator"], path), info
    if not official.is_state_dict(obj):
        return official.convert(obj, path)  # raises, naming what the file holds
    sd = official.strip_prefixes(obj)
    options = path.parent / "options.json"
    seed_style = EPOCH_PT.match(path.name) or (options.is_file() and not official.looks_official(sd))
    if seed_style:
        if not options.is_file():
            raise UserError(f"{path} holds bare weights and there is no options.json beside it to say how the "
                            f"generator was configured; use generator_best.safetensors from the same run")
        try:
            opts = json.loads(options.read_text())
            info = _run_info(opts["config"], opts["generator"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot read the configuration of {path.name} from {options}: {type(e).__name__}: {e}") from None
        if EPOCH_PT.match(path.name):
            info["epoch"] = int(re.search(r"\d+", path.name).group())
        return _build(info, sd, path), info
    model, cfg = official.convert(sd, path)  # names the first missing/unexpected keys if it is not one
    return model, official.official_info(cfg, path)


def _run_info(cfg: dict, gen_cfg: dict) -> dict:
    """The inference info (as engine._record_epoch writes it) from a run's TrainConfig dict."""
    return {"generator": gen_cfg, "task": cfg.get("task", "identity"), "task_args": list(cfg.get("task_arg") or []),
            "dataset": cfg.get("dataset"), "direction": cfg.get("direction"), "image_size": cfg.get("image_size")}


def _build(info: dict, sd: dict, path) -> nn.Module:
    cfg = info["generator"]
    try:
        model = build_generator(cfg)
    except TypeError as e:
        raise UserError(f"{path}: unusable generator configuration {cfg} ({e})") from None
    desc = f"the {cfg.get('arch')} generator its configuration describes (ngf {cfg.get('ngf')}, depth {cfg.get('depth')})"
    official.load_checked(model, official.strip_prefixes(sd), path, desc)
    return model


# --- channels, tasks, padding -------------------------------------------------------------------

def _adapt(x: torch.Tensor, channels: int, what: str, hint: str) -> torch.Tensor:
    """(N, C, H, W) -> (N, channels, H, W) where unambiguous: same count, 3 -> 1 luma, 1 -> 3."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 3 and channels == 1:
        return luma(x)
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    raise UserError(f"{what} takes {channels}-channel images, got {c} channels; {hint}")


def resolve_task(model: nn.Module, task=None, task_args=None):
    """None -> no task; "trained" -> the task (and arguments) recorded with the model; a name or
    a tasks.Task instance."""
    if task is None or task == "none":
        return None
    if task == "trained":
        info = getattr(model, "info", {})
        name = info.get("task", "identity")
        if name == "pairing":
            raise UserError("the checkpoint was trained on real (A, B) pairs, so there is no task to apply; "
                            "give it input images directly (no --task)")
        return build_task(name, info.get("task_args") if task_args is None else task_args)
    if isinstance(task, str):
        return build_task(task, task_args)
    return task


def model_input(model: nn.Module, image: torch.Tensor, task=None, generator=None):
    """[0, 1] images (N, C, H, W) -> (A, B) in [-1, 1]: the model's input and the target (or None)."""
    in_ch, out_ch = model.in_channels, model.out_channels
    x = image.float() * 2 - 1
    if task is None:
        recorded = getattr(model, "info", {}).get("task", "identity")
        hint = (f"pass --task {recorded} to build its input from clean images" if recorded not in ("identity", "pairing")
                else "pass --task NAME to build its input from clean images")
        return _adapt(x, in_ch, "the model", hint), None
    b = _adapt(x, out_ch, f"task {task.name} (on images like the model's {out_ch}-channel outputs)",
               "give colour or gray images")
    a = task(b, generator)
    if a.shape[1] != in_ch:
        raise UserError(f"task {task.name} builds {a.shape[1]}-channel inputs but the model takes {in_ch}; "
                        f"is it the task the model was trained for (--task trained)?")
    return a, b


def pad_to_multiple(x: torch.Tensor, multiple: int):
    """Pad (N, C, H, W) on all sides to H, W multiples of `multiple`; returns (padded, crop box)."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    top, left = ph // 2, pw // 2
    # reflection needs the pad to be narrower than the image; otherwise (1x1, 3x40) that side replicates
    if pw:
        x = F.pad(x, (left, pw - left, 0, 0), mode="reflect" if pw - left < w else "replicate")
    if ph:
        x = F.pad(x, (0, 0, top, ph - top), mode="reflect" if ph - top < h else "replicate")
    return x, (top, left, h, w)


@torch.no_grad()
def run_model(model: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """G(a) for [-1, 1] inputs of any size, in eval mode (restored afterwards)."""
    was_training = model.training
    model.eval()
    try:
        padded, (top, left, h, w) = pad_to_multiple(a, 2 ** model.depth)
        out = model(padded)
    finally:
        model.train(was_training)
    return out[..., top:top + h, left:left + w]


def _generator(model, seed: int) -> torch.Generator:
    device = next(model.parameters()).device
    return torch.Generator(device=device).manual_seed(seed)


# --- the Python API ------------------------------------------------------------------------------

def _pil_to_tensor(im) -> torch.Tensor:
    """PIL image -> float [0, 1] (1 or 3, H, W); alpha onto white, 16-bit scaled."""
    import numpy as np

    if im.mode in HIGH_DEPTH_GRAY:
        return torch.from_numpy(gray_unit(im))[None]
    if im.mode in ("RGBA", "LA", "PA", "P") or "transparency" in im.info:
        im = im.convert("RGBA")
        x = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
        return x[:3] * x[3:] + (1 - x[3:])
    if im.mode != "L":
        im = im.convert("RGB")
    x = torch.from_numpy(np.array(im)).float() / 255
    return x[None] if x.dim() == 2 else x.permute(2, 0, 1)


def _tensor_to_pil(x: torch.Tensor):
    from PIL import Image

    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if u8.shape[0] == 1:
        return Image.fromarray(u8[0].numpy(), mode="L")
    return Image.fromarray(u8[:3].permute(1, 2, 0).numpy(), mode="RGB")


def translate(model: nn.Module, images, task=None, task_args=None, seed: int = 0, batch_size: int = 16):
    """Translate images with a generator.

    images: a float tensor in [0, 1] (C, H, W) or (N, C, H, W) (uint8 tensors: 0..255) ->
    a tensor of the same kind and shape with the model's output channels; a PIL image -> a PIL
    image (RGB, or L for a 1-channel model); a list of either -> a list. Any H x W.
    task: None (the images are the model's inputs; see the module docstring for channels),
    a task name, "trained" (the task recorded with the model) or a tasks.Task: the images are
    clean targets and the task corrupts them first (randomness fixed by `seed`, per image).
    """
    task = resolve_task(model, task, task_args)
    device = next(model.parameters()).device
    if isinstance(images, (list, tuple)):
        items, kind = list(images), "list"
    elif isinstance(images, torch.Tensor) and images.dim() == 4:
        items, kind = list(images), "batch"
    elif isinstance(images, torch.Tensor) and images.dim() == 3:
        items, kind = [images], "single"
    elif isinstance(images, torch.Tensor):
        raise UserError(f"translate: expected a (C, H, W) or (N, C, H, W) tensor, got shape {tuple(images.shape)}")
    else:
        items, kind = [images], "single"
    unit, back = [], []
    for im in items:
        if isinstance(im, torch.Tensor):
            if im.dim() != 3:
                raise UserError(f"translate: expected (C, H, W) images in the list, got shape {tuple(im.shape)}")
            uint8 = im.dtype == torch.uint8
            unit.append(im.float() / 255 if uint8 else im.float())
            back.append("uint8" if uint8 else im.dtype)
        elif hasattr(im, "mode") and hasattr(im, "size"):
            unit.append(_pil_to_tensor(im))
            back.append("pil")
        else:
            raise UserError(f"translate: expected tensors or PIL images, got {type(im).__name__}")
    outs = [o for o, _, _ in translate_tensors(model, [u.to(device) for u in unit], task, [seed + i for i in range(len(unit))], batch_size)]
    results = []
    for o, how in zip(outs, back):
        o = (o + 1) / 2
        results.append(_tensor_to_pil(o) if how == "pil" else (o.clamp(0, 1) * 255).round().to(torch.uint8)
                       if how == "uint8" else o.to(how))
    if kind == "batch":
        return torch.stack(results)
    return results if kind == "list" else results[0]


def translate_tensors(model, images, task, seeds, batch_size):
    """[0, 1] (C, H, W) tensors -> [(output, input A, target B or None)] in [-1, 1], batching
    images of equal size; the task's randomness is drawn per image from its own seed."""
    results = [None] * len(images)
    groups = {}
    for i, im in enumerate(images):
        groups.setdefault((im.shape[0], *im.shape[-2:]), []).append(i)
    for idx in groups.values():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            pairs = [model_input(model, images[i][None], task, _generator(model, seeds[i])) for i in chunk]
            a = torch.cat([p[0] for p in pairs])
            out = run_model(model, a).float()
            for j, i in enumerate(chunk):
                results[i] = (out[j], a[j], None if pairs[j][1] is None else pairs[j][1][0])
    return results
