"""Choosing the device and the autocast precision, shared by training, evaluation and inference."""
import torch

from . import dist
from .errors import UserError


def _has_mps() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(name: str) -> torch.device:
    """cuda falls back to CPU with a one-line warning; auto picks cuda > mps > cpu."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if _has_mps() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            dist.warn0("warning: CUDA is not available; running on the CPU instead")
            return torch.device("cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type == "mps" and not _has_mps():
        raise UserError("--device mps: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_precision(precision: str, device: torch.device):
    """The autocast dtype, or None for fp32. auto = bf16 on CUDA, fp32 elsewhere.

    bf16 on a CPU without native bf16 (no AVX512-BF16/AMX: oneDNN reports no support) makes
    PyTorch fall back to a slow reference convolution, 16-80x slower than fp32: say so."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16" and device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        dist.warn0("warning: this CPU has no native bf16 (AVX512-BF16/AMX); bf16 convolutions fall back to a slow "
                   "path, many times slower than --precision fp32")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
