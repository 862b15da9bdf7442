"""Image sources. Each returns uint8 tensors (N, C, H, W) for a train and a test split.

Sources never know about tasks: a task later turns target images B into inputs A. Sources
that already hold pairs (aligned:/paired:) also return the A images.

- cifar10 / cifar100: downloaded through torchvision on first use, then read by our own
  reader, which does not re-check the archive's md5 (so stand-in files in the same layout
  work) and unpickles with an allow-list (numpy arrays only, no code).
- photos: 32x32 crops of the colour photographs shipped inside scikit-image; works offline.
  Train and test are split by source photo, so no test photo is seen in training.
- fake: small deterministic synthetic images for smoke tests.
- folder:PATH, aligned:PATH, paired:PATH_A,PATH_B: image files (see folders.py for the
  formats, the fixed split rule and what happens to bad files). Only these can stream their
  training split from disk (`in_memory`, ImageData.train_stream); the others are small and
  always held in memory.
"""
import io
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from .errors import UserError


@dataclass
class ImageData:
    """The tensors a run trains and evaluates on (uint8, NCHW, values 0..255).

    The training split is either in memory (train_b, and train_a for paired sources) or, for
    file sources too large to keep, `train_stream`: a folders.FolderDataset whose items are
    uint8 (3, S, S), or (6, S, S) = A's channels then B's when paired (read it in batches
    with folders.StreamLoader). The test split is always in memory.
    """

    name: str
    train_b: Optional[torch.Tensor]  # None when streaming
    test_b: torch.Tensor
    train_a: Optional[torch.Tensor] = None  # set by sources that hold real pairs
    test_a: Optional[torch.Tensor] = None
    train_stream: Optional[object] = None  # folders.FolderDataset, set instead of train_a/train_b

    @property
    def paired(self) -> bool:
        return self.train_a is not None or self.test_a is not None

    @property
    def streaming(self) -> bool:
        return self.train_stream is not None

    @property
    def num_train(self) -> int:
        return len(self.train_stream) if self.streaming else len(self.train_b)

    @property
    def channels(self) -> int:
        """Channels of a B image (A images have `channels_a`)."""
        return self.test_b.shape[1]

    @property
    def channels_a(self) -> Optional[int]:
        return self.test_a.shape[1] if self.paired else None

    @property
    def image_size(self) -> int:
        return self.test_b.shape[-1]

    def swap_ab(self) -> None:
        """--direction BtoA: B becomes the input. Call before making a StreamLoader."""
        self.train_a, self.train_b, self.test_a, self.test_b = self.train_b, self.train_a, self.test_b, self.test_a
        if self.streaming:
            self.train_stream.swap = not self.train_stream.swap

    def describe(self) -> str:
        c, h, w = self.test_b.shape[1:]
        where = " (streamed from files)" if self.streaming else ""
        return f"{self.name}: {self.num_train} train{where} / {len(self.test_b)} test images, {c}x{h}x{w}"


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased resize of a uint8 batch to size x size (no-op when already that size)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    y = F.interpolate(x.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)


# --- CIFAR --------------------------------------------------------------------------------

CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz", cls="CIFAR10",
                    train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": dict(folder="cifar-100-python", archive="cifar-100-python.tar.gz", cls="CIFAR100",
                     train=["train"], test=["test"],
                     url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}

_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; allow the few numpy globals they need and nothing that runs code."""

    def find_class(self, module, name):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batch(path: Path) -> torch.Tensor:
    """One `cifar-*-python` batch file -> uint8 tensor (N, 3, 32, 32)."""
    try:
        with open(path, "rb") as f:
            entry = _SafeUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
        data = entry["data"] if "data" in entry else entry[b"data"]
        return torch.as_tensor(data, dtype=torch.uint8).reshape(-1, 3, 32, 32).clone()
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, RuntimeError, EOFError, TypeError) as e:
        raise UserError(f"{path} is not a readable CIFAR batch file ({type(e).__name__}: {e})") from None


def _download_cifar(name: str, root: Path) -> None:
    spec = CIFAR[name]
    where = root / spec["folder"]
    offline = (f"{name} was not found at {where} and could not be downloaded. Either download {spec['url']} "
               f"by hand and put {spec['archive']} in {root} (it is extracted on the next run), "
               f"or train offline on the photos shipped with scikit-image: --dataset photos")
    if os.environ.get("TINYPIX2PIX_NO_DOWNLOAD"):
        raise UserError(offline + " (downloads are disabled by TINYPIX2PIX_NO_DOWNLOAD)")
    import torchvision

    try:
        getattr(torchvision.datasets, spec["cls"])(root=str(root), train=True, download=True)
    except Exception as e:  # network errors come in many types (URLError, socket, ssl, http)
        raise UserError(f"{offline} (download error: {type(e).__name__}: {str(e)[:200]})") from None


def load_cifar(name: str, root: str) -> ImageData:
    spec, root = CIFAR[name], Path(root).expanduser()
    folder = root / spec["folder"]
    if not all((folder / f).is_file() for f in spec["train"] + spec["test"]):
        archive = root / spec["archive"]
        if archive.is_file():  # placed by hand: extract without touching the network
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(root, filter="data")
            except (tarfile.TarError, OSError, EOFError) as e:
                raise UserError(f"{archive} could not be extracted ({e}); download it again") from None
        else:
            root.mkdir(parents=True, exist_ok=True)
            _download_cifar(name, root)
    missing = [f for f in spec["train"] + spec["test"] if not (folder / f).is_file()]
    if missing:
        raise UserError(f"{folder} is missing {', '.join(missing)}; expected the standard {spec['folder']} layout")
    train = torch.cat([read_cifar_batch(folder / f) for f in spec["train"]])
    test = torch.cat([read_cifar_batch(folder / f) for f in spec["test"]])
    return ImageData(name, train, test)


# --- photos shipped with scikit-image ----------------------------------------------------

# Stereo left/right show the same scene, so they count as one source photo.
PHOTO_GROUPS = {
    "astronaut": ["astronaut"], "rocket": ["rocket"], "hubble_deep_field": ["hubble_deep_field"],
    "immunohistochemistry": ["immunohistochemistry"], "retina": ["retina"], "colorwheel": ["colorwheel"],
    "stereo_motorcycle": ["stereo_motorcycle:0", "stereo_motorcycle:1"],
    "chelsea": ["chelsea"], "coffee": ["coffee"],
}
PHOTO_TEST = ("chelsea", "coffee")  # held out: never seen in training
PHOTO_SHORT_SIDES = (64, 128, 256, 384)  # each photo is resized to these shorter sides, then tiled


def _skimage_photo(spec: str) -> torch.Tensor:
    try:
        import skimage.data
    except ImportError:
        raise UserError("--dataset photos needs scikit-image: pip install 'tinypix2pix[photos]' "
                        "(or pip install scikit-image)") from None
    name, _, index = spec.partition(":")
    img = getattr(skimage.data, name)()
    if index:
        img = img[int(index)]
    return torch.as_tensor(img[..., :3].copy()).permute(2, 0, 1)  # (3, H, W) uint8


def photo_crops(spec: str, size: int) -> torch.Tensor:
    """Deterministic size x size tiles of one photo at several scales, plus their mirror images.

    Flat tiles (std < 4/255, e.g. the black border of `retina`) are dropped.
    """
    img = _skimage_photo(spec).float()[None]
    h, w = img.shape[-2:]
    tiles = []
    for short in PHOTO_SHORT_SIDES:
        scale = short / min(h, w)
        if scale > 1 or short < size:
            continue
        nh, nw = round(h * scale), round(w * scale)
        x = F.interpolate(img, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)[0]
        t = x.unfold(1, size, size).unfold(2, size, size)  # (3, nh//size, nw//size, size, size)
        tiles.append(t.permute(1, 2, 0, 3, 4).reshape(-1, 3, size, size))
    if not tiles:  # the photo is smaller than `size` at every scale
        return torch.empty(0, 3, size, size, dtype=torch.uint8)
    t = torch.cat(tiles).round().clamp(0, 255)
    t = t[t.flatten(1).std(dim=1) >= 4.0]
    return torch.cat([t, t.flip(-1)]).to(torch.uint8)


def load_photos(size: int) -> ImageData:
    train = [photo_crops(s, size) for g, specs in PHOTO_GROUPS.items() if g not in PHOTO_TEST for s in specs]
    test = [photo_crops(s, size) for g in PHOTO_TEST for s in PHOTO_GROUPS[g]]
    train, test = torch.cat(train), torch.cat(test)
    if not len(train) or not len(test):  # 3928 / 936 crops at 32 px, 36 / 8 at 256
        raise UserError(f"--dataset photos has {len(train)} train / {len(test)} test crops at --image-size {size}: "
                        f"its photos are too small for that; use --image-size 256 or less, or folder:PATH")
    return ImageData("photos", train, test)


# --- synthetic ---------------------------------------------------------------------------

def fake_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth colour gradients with a bright rectangle: structure a U-Net can learn in a few steps."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    coef = torch.rand(n, 3, 3, generator=g)
    img = coef[..., 0, None, None] * xx + coef[..., 1, None, None] * yy + coef[..., 2, None, None] * 0.5
    corners = (torch.rand(n, 4, generator=g) * size).long().sort(dim=1).values
    for i in range(n):  # n is tiny; clarity beats vectorising here
        y0, x0, y1, x1 = corners[i, 0], corners[i, 1], corners[i, 2] + 1, corners[i, 3] + 1
        img[i, :, y0:y1, x0:x1] = 1 - img[i, :, y0:y1, x0:x1]
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def load_fake(size: int, n_train: int = 256, n_test: int = 64) -> ImageData:
    return ImageData("fake", fake_images(n_train, size, seed=0), fake_images(n_test, size, seed=1))


# --- registry ------------------------------------------------------------------------------

SOURCES = ["cifar10", "cifar100", "photos", "fake", "folder:PATH", "aligned:PATH", "paired:PATH_A,PATH_B"]
FILE_SOURCES = ("folder", "aligned", "paired")


def load_source(dataset: str, root: str = "./data", image_size: int = 32, num_workers: int = 0,
                in_memory: str = "auto") -> ImageData:
    """Parse a --dataset value and load it; malformed or unknown values list the valid forms.

    num_workers and in_memory ("auto", "on", "off") concern the file sources only.
    """
    kind, sep, arg = dataset.partition(":")
    if sep and kind in FILE_SOURCES:
        from . import folders  # imports this module

        return folders.load(kind, arg, image_size, num_workers, in_memory, name=dataset)
    if dataset in CIFAR:
        data = load_cifar(dataset, root)
        data.train_b, data.test_b = resize_uint8(data.train_b, image_size), resize_uint8(data.test_b, image_size)
        return data
    if dataset == "photos":
        return load_photos(image_size)
    if dataset == "fake":
        return load_fake(image_size)
    hint = ""
    if dataset in FILE_SOURCES:
        hint = f" ({dataset} needs a path: {'paired:PATH_A,PATH_B' if dataset == 'paired' else dataset + ':PATH'})"
    elif Path(dataset).expanduser().is_dir():
        hint = f" (for a folder of images use folder:{dataset})"
    raise UserError(f"unknown dataset {dataset!r}{hint}; choose one of {', '.join(SOURCES)}")
