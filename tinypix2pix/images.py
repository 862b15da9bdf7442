"""Conversions between model tensors ([-1, 1] floats) and viewable images, and PNG writing.

Written with torch and Pillow only: importing torchvision costs about two seconds of every
training start, for two small functions.
"""
import io
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoint import atomic_write


def to_model(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float [-1, 1]."""
    return x_uint8.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 0..255."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def visible(x: torch.Tensor) -> torch.Tensor:
    """Any channel count -> 3-channel [-1, 1] image to look at (gray is replicated; extra
    channels, such as an inpainting mask, are dropped)."""
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] == 2:
        return x[:, :1].expand(-1, 3, -1, -1)
    return x[:, :3]


def sample_grid(a: torch.Tensor, fake: torch.Tensor, b: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """Rows of input | output | target, as one [0, 1] image (3, H, W); small images are enlarged."""
    tiles = torch.stack([visible(a), visible(fake), visible(b)], dim=1).flatten(0, 1).float().cpu()
    if scale > 1:
        tiles = F.interpolate(tiles, scale_factor=scale, mode="nearest")
    return tile_grid(((tiles + 1) / 2).clamp(0, 1), columns=3)


def tile_grid(tiles: torch.Tensor, columns: int, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """(N, C, h, w) -> one (C, H, W) image of `columns` tiles per row, with a `padding`-pixel border."""
    n, c, h, w = tiles.shape
    rows = -(-n // columns)
    grid = torch.full((c, rows * (h + padding) + padding, columns * (w + padding) + padding), pad_value,
                      dtype=tiles.dtype)
    for i in range(n):  # a few dozen tiles at most
        y, x = padding + (i // columns) * (h + padding), padding + (i % columns) * (w + padding)
        grid[:, y:y + h, x:x + w] = tiles[i]
    return grid


def save_png(image: torch.Tensor, path) -> Path:
    """Atomically write a [0, 1] (C, H, W) image as PNG."""
    from PIL import Image

    pixels = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    if pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1)
    buf = io.BytesIO()
    Image.fromarray(pixels[:3].permute(1, 2, 0).contiguous().numpy()).save(buf, format="png")
    return atomic_write(path, lambda f: f.write(buf.getvalue()))
