"""Reading image files safely: any common format and mode -> uint8 RGB tensor (3, H, W).

Used by the folder sources (training, evaluation) and by `translate`. One function decides
what "converted sensibly" means, so training and inference see the same pixels:

- grayscale and palette images become RGB; 16-bit images are scaled to 8 bits;
- transparent pixels (RGBA, LA, palette with transparency) are composited onto white, which
  is what a viewer shows for icons and sprites (their hidden RGB is often garbage);
- the header is read first (Pillow, lazily) and images over `max_pixels` are refused
  before any decoding, so a decompression bomb costs nothing;
- JPEG, WebP and GIF are decoded by torchvision.io (libjpeg-turbo, fast); PNG, BMP, TIFF and
  the rest by Pillow. PNG is NOT given to torchvision: its decode_png crashes the whole
  process (SIGSEGV) on about a third of slightly corrupted PNGs (pytorch/vision#3613, still so
  in 0.29.1: `tests/test_bad_inputs.py` keeps a fuzz check of the decoders we do use).

Any failure raises `UnreadableImage` naming the file, which callers collect and report.
"""
import re
import warnings
from pathlib import Path

import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MAX_PIXELS = 64 * 2 ** 20  # 64 Mpx: far above any small-image use, far below a bomb's 10 Gpx
_TORCHVISION_FORMATS = {"JPEG", "MPO", "WEBP", "GIF"}  # not PNG: see the module docstring


HIGH_DEPTH_GRAY = ("I;16", "I;16B", "I;16L", "I", "F")


def gray_unit(im):
    """A 16-bit, 32-bit or float gray PIL image -> float32 array in [0, 1]. The scale is guessed
    from the values: 16-bit modes or values above 255 are 16-bit, float images up to 1.0 are
    already in [0, 1], the rest is 8-bit range."""
    import numpy as np

    a = np.nan_to_num(np.asarray(im, dtype=np.float32))
    top = float(a.max()) if a.size else 0.0
    if im.mode.startswith("I;16") or top > 255:
        peak = 65535.0
    else:
        peak = 1.0 if im.mode == "F" and top <= 1.0 else 255.0
    return np.clip(a / peak, 0.0, 1.0)


class UnreadableImage(Exception):
    """A file that is not a usable image (empty, truncated, not an image, too large)."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason

    def __reduce__(self):  # picklable, so DataLoader workers can report it
        return type(self), (self.path, self.reason)


def list_images(folder) -> list:
    """Image files under `folder`, recursively, sorted (hidden files and folders skipped)."""
    folder = Path(folder)
    found = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(found)


def image_size(path, max_pixels: int = MAX_PIXELS) -> tuple:
    """(width, height, format, has_alpha) from the header alone; refuses bombs and non-images."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise UnreadableImage(path, "empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h, fmt = im.width, im.height, (im.format or "").upper()
                has_alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
    except UnreadableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        claim = f"{int(found.group(1)) / 2 ** 20:.0f} Mpx" if found else "absurd dimensions"
        raise UnreadableImage(path, f"header claims {claim}: refused as a possible decompression bomb") from None
    except UnidentifiedImageError:
        raise UnreadableImage(path, "not an image: unrecognised format") from None
    except PermissionError:
        raise UnreadableImage(path, "cannot be opened (permission denied)") from None
    except FileNotFoundError:
        raise UnreadableImage(path, "no longer exists") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise UnreadableImage(path, f"unreadable header: {_short(e)}") from None
    if w * h > max_pixels:
        raise UnreadableImage(path, f"header claims {w}x{h}, over the {max_pixels // 2 ** 20} Mpx limit: "
                                    f"refused as a possible decompression bomb")
    if w < 1 or h < 1:
        raise UnreadableImage(path, f"has no pixels ({w}x{h})")
    return w, h, fmt, has_alpha


def read_image(path, max_pixels: int = MAX_PIXELS, header: tuple = None) -> torch.Tensor:
    """Decode one file to a uint8 RGB tensor (3, H, W); raises UnreadableImage.

    `header`: what `image_size(path)` returned, when the caller has just checked it.
    """
    path = Path(path)
    _, _, fmt, has_alpha = header or image_size(path, max_pixels)
    try:
        # torchvision's GIF decoder drops transparency (returns RGB): transparent GIFs go to Pillow
        if fmt in _TORCHVISION_FORMATS and not (fmt == "GIF" and has_alpha):
            x = _decode_torchvision(path, has_alpha)
        else:
            x = _decode_pillow(path)
    except UnreadableImage:
        raise
    except Exception as e:  # decoders raise RuntimeError, OSError, ValueError... for damaged data
        raise UnreadableImage(path, f"truncated or damaged: {_short(e)}") from None
    return _to_rgb8(x)


def _short(e: Exception) -> str:
    """A decoder's message without torchvision's C++ source location, on one short line."""
    lines = str(e).strip().splitlines()
    msg = re.sub(r"^.*\.cpp:\d+,\s*", "", lines[-1] if lines else "").strip()[:120]
    return msg or type(e).__name__


def _decode_torchvision(path: Path, has_alpha: bool) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    # Ask for alpha only when the header says there is one: torchvision 0.29 returns
    # uninitialised alpha for palette images without transparency.
    mode = ImageReadMode.RGB_ALPHA if has_alpha else ImageReadMode.RGB
    with warnings.catch_warnings():
        # libjpeg's "corrupt data" warnings (real failures still raise), and torchvision 0.29's
        # DeprecationWarning for its decoders (torchcodec replaces them; not a dependency here)
        warnings.simplefilter("ignore")
        x = decode_image(data, mode=mode)
    if x.dim() == 4:  # animated GIF: the first frame
        x = x[0]
    return x


def _decode_pillow(path: Path) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in HIGH_DEPTH_GRAY:  # 16/32-bit/float gray: keep the precision until scaling
            g = torch.from_numpy((gray_unit(im) * 255.0 + 0.5).astype(np.uint8))[None]
            return g.expand(3, -1, -1).contiguous()
        has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        return torch.from_numpy(np.array(im)).permute(2, 0, 1).contiguous()


def _to_rgb8(x: torch.Tensor) -> torch.Tensor:
    """(1|3|4, H, W) uint8/uint16 -> (3, H, W) uint8, alpha composited onto white."""
    if x.dtype != torch.uint8:
        peak = 65535.0 if x.dtype == torch.uint16 else float(torch.iinfo(x.dtype).max)
        x = (x.float() * (255.0 / peak)).round().clamp(0, 255).to(torch.uint8)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    if x.shape[0] == 4:
        alpha = x[3:].float() / 255.0
        if bool((alpha < 1).any()):
            rgb = x[:3].float() * alpha + 255.0 * (1 - alpha)
            return rgb.round().clamp(0, 255).to(torch.uint8)
        x = x[:3]
    return x.contiguous()
