"""Export a generator to ONNX or TorchScript, and check the file against PyTorch before keeping it.

The exported model is the generator itself: input (N, C_in, H, W) float32 in [-1, 1], output
(N, C_out, H, W) in [-1, 1], H and W multiples of 2**depth (pad by reflection and crop back, as
`infer.pad_to_multiple` does, for other sizes). Batch and spatial size are dynamic.

- ONNX goes through `torch.onnx.export(dynamo=True)` (torch.export + onnxscript). The
  generators' forward checks `side % 2**depth` in Python; declaring each spatial dim as
  2**depth times a free dim (`torch.export.Dim`) makes that check provably pass for every size,
  so it leaves no guard and no specialisation in the graph. The weights are embedded (one
  self-contained file); the model's info is stored as ONNX metadata (`tinypix2pix` key).
- TorchScript uses `torch.jit.trace` (deprecated by PyTorch but still what LibTorch loads); the
  size check becomes a constant, and a wrong size fails inside the graph instead.

Both are verified before the file is written (atomically): the serialized bytes are run by
onnxruntime (or reloaded by torch.jit.load) on a random batch at the traced size and at a
different batch and size (e.g. 2 x 32 x 32 and 3 x 64 x 96 for a 32 px model), and compared to
PyTorch; a max abs difference above TOLERANCE fails the export.
"""
import contextlib
import copy
import io
import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from . import checkpoint as ckpt
from .errors import UserError

TOLERANCE = 1e-4
FORMATS = ("onnx", "torchscript")
ONNX_MISSING = ("ONNX export needs the optional packages onnx, onnxscript and onnxruntime: "
                "pip install 'tinypix2pix[onnx]' (or pip install onnx onnxscript onnxruntime)")


class ExportCheckFailed(UserError):
    """The exported file disagrees with PyTorch."""


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UserError(ONNX_MISSING) from None


def check_shapes(model: nn.Module, image_size: int, batch: int) -> list:
    """The example shape and one with a different batch and a different, non-square size."""
    m = 2 ** model.depth
    return [(batch, model.in_channels, image_size, image_size),
            (batch + 1, model.in_channels, image_size + m, image_size + 2 * m)]


def onnx_bytes(model: nn.Module, image_size: int, batch: int = 2) -> bytes:
    """Serialized ONNX model with dynamic batch, height and width (multiples of 2**depth)."""
    _require_onnx()
    import onnx
    from torch.export import Dim

    m = 2 ** model.depth
    # torch.export specialises dims whose example value is 1, so trace with >= 2 blocks per side
    # and >= 2 images; the graph then accepts 1 as well (verify_onnx checks the smaller sizes).
    size = image_size if image_size >= 2 * m else 2 * m
    x = torch.rand(max(batch, 2), model.in_channels, size, size) * 2 - 1
    dims = {0: Dim("batch", min=1), 2: m * Dim("h_blocks", min=1), 3: m * Dim("w_blocks", min=1)}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), dynamo=True, external_data=False, dynamic_shapes=(dims,),
                                    input_names=["input"], output_names=["output"], verbose=False)
    proto = program.model_proto
    info = getattr(model, "info", {})
    props = {"tinypix2pix": json.dumps({**info, "input_range": [-1, 1], "size_multiple": m}, default=str),
             "size_multiple": str(m)}
    onnx.helper.set_model_props(proto, props)
    return proto.SerializeToString()


def verify_onnx(data: bytes, model: nn.Module, shapes, threads: int = 0) -> list:
    """Max abs difference between onnxruntime and PyTorch for each input shape."""
    _require_onnx()
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return _compare(model, shapes, lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0]))


def torchscript_bytes(model: nn.Module, image_size: int, batch: int = 2) -> bytes:
    x = torch.rand(batch, model.in_channels, image_size, image_size) * 2 - 1
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # deprecation notices, and the size check traced as a constant
        traced = torch.jit.trace(model, (x,), check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
    return buf.getvalue()


def verify_torchscript(data: bytes, model: nn.Module, shapes) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
    return _compare(model, shapes, lambda x: loaded(x))


@torch.no_grad()
def _compare(model, shapes, run) -> list:
    g = torch.Generator().manual_seed(0)
    diffs = []
    for shape in shapes:
        x = torch.rand(shape, generator=g) * 2 - 1
        ref, got = model(x), run(x)
        if tuple(got.shape) != tuple(ref.shape):
            raise ExportCheckFailed(f"exported model returned shape {tuple(got.shape)} for input {shape}, "
                                    f"PyTorch {tuple(ref.shape)}")
        diffs.append((shape, float((got.float() - ref.float()).abs().max())))
    return diffs


def export(model: nn.Module, out, fmt: str = "onnx", image_size: int = 0, batch: int = 2) -> dict:
    """Export `model` (CPU, eval mode) to `out`, verify it, write atomically.

    Returns {"path", "format", "bytes", "checks": [(shape, max_abs_diff)], "size_multiple"}.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    model = copy.deepcopy(model).cpu().eval()  # the caller's model keeps its device and mode
    m = 2 ** model.depth
    if not image_size:
        recorded = getattr(model, "info", {}).get("image_size") or m
        image_size = recorded if recorded % m == 0 else m
    if image_size < 0 or image_size % m:
        raise UserError(f"--image-size {image_size} must be a positive multiple of {m} (2**depth, depth={model.depth})")
    if batch < 1:
        raise UserError(f"--batch-size must be positive, got {batch}")
    shapes = check_shapes(model, image_size, batch)
    if fmt == "onnx":
        data = onnx_bytes(model, image_size, batch)
        checks = verify_onnx(data, model, shapes)
    else:
        data = torchscript_bytes(model, image_size, batch)
        checks = verify_torchscript(data, model, shapes)
    worst = max(d for _, d in checks)
    if not worst <= TOLERANCE:  # `not <=` so NaN fails too
        detail = ", ".join(f"{'x'.join(map(str, s))}: {d:.3g}" for s, d in checks)
        raise ExportCheckFailed(f"the exported {fmt} model differs from PyTorch by up to {worst:.3g} "
                                f"(limit {TOLERANCE:g}; {detail}); {out} was not written")
    try:
        path = ckpt.atomic_write(out, lambda f: f.write(data))
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    return {"path": Path(path), "format": fmt, "bytes": len(data), "checks": checks, "size_multiple": m}
