"""Translation tasks: each turns a batch of target images B into the input images A the generator sees.

identity (the seed's demonstration), colorize, superres, denoise, inpaint, deblur and edges.
A task is a small dataclass whose fields are its user parameters (`--task-arg k=v`); calling it
on B (float, [-1, 1], (N, C, H, W), on the training device) returns A. Everything is batched
tensor ops on B's device with no host syncs, so corrupting a batch costs next to nothing beside
the training step, and all randomness comes from the explicit torch.Generator passed in: a fixed
seed fixes the corruption (evaluation pairs are built once with a fixed seed, the same in every
run). The same tasks corrupt arbitrary user images at inference time, so any H x W must work.
`baseline(a, out_channels)` is the trivial answer a model must beat (usually the input itself).

Tasks never know about files or sources; the engine calls `task(b, generator)`.
"""
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import UserError

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights for R, G, B
NMS_TIE = 1e-3  # relative difference below which two gradient magnitudes count as equal
# Weakest gradient that can be an edge ([-1, 1] units per pixel, ~2.5/255 in [0, 1]): without
# it the relative threshold would turn the faint noise of a flat image into lines.
EDGE_FLOOR = 0.02


@dataclass
class Task:
    """Base task: A = B (the seed's demonstration, each image paired with itself)."""

    name = "identity"
    # Residual (out = clamp(input + G(input))) pays off when input and output share a domain:
    # the generator then starts at the baseline instead of below it (DESIGN.md section 3).
    residual_default = False  # identity: a residual generator would be trivially perfect

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise UserError naming a parameter outside its valid range."""

    def input_channels(self, channels: int) -> int:
        return channels

    def __call__(self, b: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return b

    def baseline(self, a: torch.Tensor, out_channels: int) -> torch.Tensor:
        """The trivial answer a model must beat: the input itself (extra channels dropped, gray
        replicated), as an image like B."""
        a = a[:, :out_channels]
        return a.expand(-1, out_channels, -1, -1) if a.shape[1] == 1 else a


class Identity(Task):
    """A = B, the seed's demonstration: the model learns to reproduce its input. No parameters."""


@dataclass
class Pairing(Task):
    """For sources that hold real pairs (aligned:, paired:): A comes from the data, not from B."""

    name = "pairing"
    residual_default = False


def _check(ok: bool, message: str) -> None:
    if not ok:  # a NaN parameter fails every range comparison, so it lands here too
        raise UserError(message)


def luma(b: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 1, H, W) luma in float32; sources with other than 3 channels average."""
    b = b.float()
    if b.shape[1] == 3:  # Python-scalar weights: no host-to-device copy (that would sync CUDA)
        return LUMA[0] * b[:, 0:1] + LUMA[1] * b[:, 1:2] + LUMA[2] * b[:, 2:3]
    return b.mean(1, keepdim=True)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a float32 batch, kernel radius ceil(3 sigma), reflect padding."""
    n, c, h, w = x.shape
    # reflect padding needs pad < side; tiny images get a truncated (still normalised) kernel
    r = min(math.ceil(3 * sigma), h - 1, w - 1)
    t = torch.arange(-r, r + 1, device=x.device, dtype=torch.float32)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    k = k / k.sum()
    # channels folded into the batch: one 1-channel conv (grouped convs are ~100x slower on CPU)
    x = x.reshape(n * c, 1, h, w)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1)).view(n, c, h, w)


@dataclass
class Colorize(Task):
    """Grayscale -> colour. A is the BT.601 luma of B in [-1, 1]; `replicate` (bool, default
    False) repeats it to B's channel count instead of giving a 1-channel input."""

    name = "colorize"
    residual_default = True  # the gray image is already the right luminance
    replicate: bool = False

    def input_channels(self, channels: int) -> int:
        return channels if self.replicate else 1

    def __call__(self, b, generator):
        a = luma(b)
        return (a.expand(-1, b.shape[1], -1, -1).contiguous() if self.replicate else a).to(b.dtype)


@dataclass
class SuperRes(Task):
    """Super-resolution by `factor` (2 or 4, default 2): B is area down-sampled to
    floor(H/f) x floor(W/f), then bicubic up-sampled back to exactly H x W, so A has B's size."""

    name = "superres"
    residual_default = True  # the bicubic image is the classic baseline
    factor: int = 2

    def validate(self):
        _check(self.factor in (2, 4), f"superres factor must be 2 or 4, got {self.factor}")

    def __call__(self, b, generator):
        h, w = b.shape[-2:]
        small = F.interpolate(b.float(), size=(max(1, h // self.factor), max(1, w // self.factor)), mode="area")
        # bicubic overshoots at sharp edges; clamping keeps A a valid image
        return F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False).clamp(-1, 1).to(b.dtype)


@dataclass
class Denoise(Task):
    """Additive Gaussian noise of std `sigma` in [0, 1] pixel units (default 0.1, i.e. 25.5/255);
    the model works in [-1, 1], where the std is 2 * sigma. A is clamped to [-1, 1]."""

    name = "denoise"
    residual_default = True  # the noisy image is the right picture plus a small error
    sigma: float = 0.1

    def validate(self):
        _check(0 < self.sigma <= 1, f"denoise sigma must be in (0, 1] (pixel units of [0, 1] images), got {self.sigma}")

    def __call__(self, b, generator):
        noise = torch.randn(b.shape, generator=generator, device=b.device, dtype=torch.float32)
        return (b.float() + 2 * self.sigma * noise).clamp(-1, 1).to(b.dtype)


@dataclass
class Inpaint(Task):
    """Fill rectangular holes. Each image gets `holes` rectangles (default 1, may overlap) whose
    height and width are drawn uniformly between `min_size` and `max_size` (fractions of the
    image side, defaults 0.25 and 0.5), placed uniformly inside the image. Hole pixels are 0
    (mid gray); the mask is appended as a last channel: +1 inside holes, -1 outside (the model's
    [-1, 1] range), so A has C + 1 channels."""

    name = "inpaint"
    residual_default = True  # outside the holes the input is already the answer
    holes: int = 1
    min_size: float = 0.25
    max_size: float = 0.5

    def validate(self):
        _check(1 <= self.holes <= 64, f"inpaint holes must be in [1, 64], got {self.holes}")
        _check(0 < self.min_size <= self.max_size <= 1,
               f"inpaint sizes must satisfy 0 < min_size <= max_size <= 1 (fractions of the side), "
               f"got min_size={self.min_size}, max_size={self.max_size}")

    def input_channels(self, channels: int) -> int:
        return channels + 1

    def __call__(self, b, generator):
        n, _, h, w = b.shape
        u = torch.rand(n, self.holes, 4, generator=generator, device=b.device, dtype=torch.float32)
        u = u[..., None, None]  # (n, holes, 4, 1, 1): broadcasts against the pixel grid
        frac = self.min_size + (self.max_size - self.min_size) * u[:, :, :2]
        hh, ww = (frac[:, :, 0] * h).round().clamp(min=1), (frac[:, :, 1] * w).round().clamp(min=1)
        # top-left corner drawn so the hole fits inside (minimum: float rounding of u * k can reach k)
        y0 = torch.minimum((u[:, :, 2] * (h - hh + 1)).floor(), h - hh)
        x0 = torch.minimum((u[:, :, 3] * (w - ww + 1)).floor(), w - ww)
        ys = torch.arange(h, device=b.device, dtype=torch.float32).view(h, 1)
        xs = torch.arange(w, device=b.device, dtype=torch.float32).view(1, w)
        inside = ((ys >= y0) & (ys < y0 + hh) & (xs >= x0) & (xs < x0 + ww)).any(1, keepdim=True)  # (n, 1, h, w)
        a = torch.where(inside, 0.0, b.float())
        return torch.cat([a, inside.float() * 2 - 1], 1).to(b.dtype)


@dataclass
class Deblur(Task):
    """Gaussian blur of std `sigma` in pixels (default 1.0, valid (0, 10]); separable kernel of
    radius ceil(3 sigma), reflect padding at the borders."""

    name = "deblur"
    residual_default = True  # the blurred image keeps colours and layout
    sigma: float = 1.0

    def validate(self):
        _check(0 < self.sigma <= 10, f"deblur sigma must be in (0, 10] pixels, got {self.sigma}")

    def __call__(self, b, generator):
        return _blur(b.float(), self.sigma).clamp(-1, 1).to(b.dtype)


@dataclass
class Edges(Task):
    """Edge map -> photo, like the pix2pix edges2shoes data: dark lines (-1) on white (+1).

    Luma, Gaussian smoothing of std `smooth` pixels (default 1.0), Sobel gradient magnitude,
    thinned to one-pixel lines (non-maximum suppression along the gradient direction), then a
    pixel is an edge where the magnitude exceeds `threshold` (default 0.25) times that image's
    maximum, so the drawing adapts to contrast; a fixed floor keeps flat images blank.
    `replicate` (bool, default False) repeats the 1-channel map to B's channel count.
    """

    name = "edges"
    residual_default = False  # a line drawing is a different domain from the photo
    threshold: float = 0.25
    smooth: float = 1.0
    replicate: bool = False

    def validate(self):
        _check(0 <= self.threshold <= 1, f"edges threshold must be in [0, 1] (fraction of the image's strongest "
                                         f"edge), got {self.threshold}")
        _check(0 < self.smooth <= 10, f"edges smooth must be in (0, 10] pixels, got {self.smooth}")

    def input_channels(self, channels: int) -> int:
        return channels if self.replicate else 1

    def __call__(self, b, generator):
        g = _blur(luma(b), self.smooth)
        # Sobel by slicing (no kernel tensor to copy to the device): central difference along
        # one axis, [1, 2, 1] smoothing along the other; / 8 makes a -1 -> 1 step read 1 per pixel
        p = F.pad(g, (1, 1, 1, 1), mode="replicate")[:, 0]  # (n, h + 2, w + 2)
        dx, dy = p[:, :, 2:] - p[:, :, :-2], p[:, 2:] - p[:, :-2]
        gx = (dx[:, :-2] + 2 * dx[:, 1:-1] + dx[:, 2:]) / 8  # (n, h, w)
        gy = (dy[:, :, :-2] + 2 * dy[:, :, 1:-1] + dy[:, :, 2:]) / 8
        mag = torch.hypot(gx, gy)
        # Non-maximum suppression: keep a pixel only if it is a peak among its two neighbours
        # along the gradient, quantised to 0, 45, 90 or 135 degrees. Offsets as (rows, cols).
        angle = torch.atan2(gy, gx) % math.pi
        sector = ((angle + math.pi / 8) // (math.pi / 4)).long() % 4
        padded = F.pad(mag.unsqueeze(1), (1, 1, 1, 1)).squeeze(1)
        h, w = mag.shape[-2:]
        keep = torch.zeros_like(mag, dtype=torch.bool)
        for s, (oy, ox) in enumerate([(0, 1), (1, 1), (1, 0), (1, -1)]):
            fwd = padded[:, 1 + oy:1 + oy + h, 1 + ox:1 + ox + w]
            bwd = padded[:, 1 - oy:1 - oy + h, 1 - ox:1 - ox + w]
            # strict on one side, with a relative tolerance: of two (nearly) equal neighbours,
            # as across a sharp step, exactly one is kept whatever the rounding
            keep |= (sector == s) & (mag > fwd * (1 + NMS_TIE)) & (mag * (1 + NMS_TIE) >= bwd)
        limit = (self.threshold * mag.amax(dim=(1, 2), keepdim=True)).clamp(min=EDGE_FLOOR)
        edge = (keep & (mag > limit)).unsqueeze(1)  # (n, 1, h, w)
        a = torch.where(edge, -1.0, 1.0)
        return (a.expand(-1, b.shape[1], -1, -1).contiguous() if self.replicate else a).to(b.dtype)


TASKS = {cls.name: cls for cls in (Identity, Colorize, SuperRes, Denoise, Inpaint, Deblur, Edges)}

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_task_args(task_cls, args) -> dict:
    """`["sigma=0.2", ...]` -> typed kwargs for the task's dataclass; unknown keys list the valid ones."""
    fields = {f.name: f for f in dataclasses.fields(task_cls)}
    out = {}
    for item in args or []:
        key, sep, value = item.partition("=")
        key, value = key.strip().replace("-", "_"), value.strip()
        if not sep:
            raise UserError(f"--task-arg {item!r} is not of the form key=value")
        if key not in fields:
            valid = ", ".join(f"{k} (default {f.default})" for k, f in fields.items()) or "none"
            raise UserError(f"task {task_cls.name!r} has no parameter {key!r}; valid parameters: {valid}")
        kind = type(fields[key].default)
        if kind is bool:
            if value.lower() not in _TRUE + _FALSE:
                raise UserError(f"--task-arg {key}={value!r}: expected true or false")
            out[key] = value.lower() in _TRUE
            continue
        try:
            out[key] = kind(value)
        except ValueError:
            raise UserError(f"--task-arg {key}={value!r}: expected a {kind.__name__}") from None
    return out


def build_task(name: str, args=None) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    cls = TASKS[name]
    return cls(**parse_task_args(cls, args))
