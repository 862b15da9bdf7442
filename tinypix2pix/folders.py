"""File sources: folder:PATH, aligned:PATH and paired:PATH_A,PATH_B -> data.ImageData.

Every file goes through `imagefiles` (header checked first, then any mode -> uint8 RGB) and
`fit`: the centred square of side min(H, W) is cut out and resized to S x S (antialiased
bicubic, `data.resize_uint8`). That is "resize the shorter side to S, then centre crop",
except that pixels outside the square cannot bleed into its edges.

- folder:  every image under PATH, recursively; unpaired (a task makes the inputs).
- aligned: the official pix2pix format, A on the left half of each file and B on the right.
- paired:  two folders whose files match by relative path without extension
           (a/x/1.png <-> b/x/1.jpg); A and B of a pair must have the same pixel size.

Split, never dependent on --seed: PATH (both PATHs for paired) with train/ and test/ (or
val/ when there is no test/) subfolders -> those (other files under PATH are ignored; a
test/ or val/ without train/ is an error rather than a test set trained on). Otherwise each file is keyed by its path
relative to PATH ('/'-separated; for paired without the extension), sha1(key) is read as a
number in [0, 1) and keys below TEST_FRACTION form the test split, so adding or removing
files never moves the others. With >= 2 usable files and none hashed into test, the file
with the smallest hash is the test split (and with none in train, the largest trains).

Bad files (empty, truncated, not images, decompression bombs, smaller than S) are skipped
and named in ONE stderr line, `warning: skipped N of M files in PATH: a.png (why), ...`;
a folder with nothing usable, a missing partner or a pair of different sizes is a
UserError. Header checks come first (cheap), decoding after, both through a DataLoader
with workers when a split has PARALLEL_MIN_FILES files or more. A streamed train split is
only header-checked: a file whose pixel data turns out to be damaged is replaced by the
next readable one, with one warning per file (FolderDataset.__getitem__).

The training split is decoded into one tensor when it fits (`in_memory`: "on", "off",
"auto" = under IN_MEMORY_LIMIT bytes decoded); otherwise ImageData.train_stream holds a
`FolderDataset` that decodes on demand, read in batches by `StreamLoader`.
"""
import hashlib
import os
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from . import dist
from .data import ImageData, resize_uint8
from .errors import UserError
from .imagefiles import IMAGE_EXTENSIONS, UnreadableImage, list_images, read_image
from .imagefiles import image_size as read_header

TEST_FRACTION = 0.1  # share of hashed keys in the test split
PARALLEL_MIN_FILES = 256  # below this, worker start-up costs more than it saves
IN_MEMORY_LIMIT = 2 * 2 ** 30  # "auto" keeps a decoded train split up to 2 GiB in memory
WORKER_TIMEOUT_S = 120  # a DataLoader batch that takes longer means a stuck worker
MAX_SUBSTITUTES = 16  # a streamed item tries this many following files before giving up
LIST_MAX = 10  # files named in one message
FORMS = "folder:PATH, aligned:PATH or paired:PATH_A,PATH_B"


class TooSmall(UnreadableImage):
    def __init__(self, path, reason: str, short: int):
        super().__init__(path, reason)
        self.short = short  # the side that would have to reach image_size

    def __reduce__(self):
        return type(self), (self.path, self.reason, self.short)


class SizeMismatch(UnreadableImage):
    pass


@contextmanager
def one_thread():
    """Per-image ops are tiny: waking torch's thread pool for them costs more than they do
    (50x on a busy 2-core machine). DataLoader workers run single-threaded already."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fit(x: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) uint8 -> (C, size, size): centred square crop, then antialiased resize."""
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return resize_uint8(x[None, :, top:top + s, left:left + s], size)[0]


def _header(path: Path, size: int, halves: bool = False, header: tuple = None) -> tuple:
    """The file's header, refusing images too small to fill size x size (each half, if halves)."""
    header = header or read_header(path)
    w, h = header[:2]
    short = min(w // 2 if halves else w, h)
    if short < size:
        what = f"{w}x{h} (halves {w // 2}x{h})" if halves else f"{w}x{h}"
        raise TooSmall(path, f"{what}, smaller than --image-size {size}", short)
    return header


class FolderDataset(Dataset):
    """Images decoded from files, cropped and resized to S x S on demand.

    kind "image": ds[i] is uint8 (3, S, S); "aligned" (A|B side by side in one file) and
    "pair" (files[i] = (path_a, path_b)): (6, S, S), A's channels then B's, or B's then A's
    after `swap = True` (--direction BtoA). `ds.paired` tells which.

    ds.load(i) raises UnreadableImage. ds[i], used when streaming, never does for a file
    that broke since it was checked: it warns once per file (per worker process) and
    returns the next decodable item instead, so a run neither crashes nor hangs.
    """

    def __init__(self, files: list, image_size: int, kind: str = "image", where: str = ""):
        assert kind in ("image", "aligned", "pair")
        self.files, self.image_size, self.kind, self.where = list(files), image_size, kind, where
        self.swap = False
        self._warned = set()

    @property
    def paired(self) -> bool:
        return self.kind != "image"

    @property
    def channels(self) -> int:
        return 6 if self.paired else 3

    def __len__(self) -> int:
        return len(self.files)

    def check(self, i: int) -> None:
        """Header checks only (size, bombs, non-images; partners of equal size)."""
        if self.kind == "pair":
            pa, pb = self.files[i]
            ha, hb = read_header(pa), read_header(pb)
            if ha[:2] != hb[:2]:
                raise SizeMismatch(pb, f"A {ha[0]}x{ha[1]}, B {hb[0]}x{hb[1]}")
            _header(pa, self.image_size, header=ha)
        else:
            _header(self.files[i], self.image_size, halves=self.kind == "aligned")

    def load(self, i: int) -> torch.Tensor:
        with one_thread():
            return self._load(i)

    def _load(self, i: int) -> torch.Tensor:
        s = self.image_size
        if self.kind == "image":
            path = self.files[i]
            return fit(read_image(path, header=_header(path, s)), s)
        if self.kind == "aligned":
            path = self.files[i]
            x = read_image(path, header=_header(path, s, halves=True))
            half = x.shape[-1] // 2
            a, b = fit(x[..., :half], s), fit(x[..., half:2 * half], s)
        else:
            pa, pb = self.files[i]
            a, b = read_image(pa, header=_header(pa, s)), read_image(pb, header=_header(pb, s))
            if a.shape != b.shape:
                raise SizeMismatch(pb, f"A {a.shape[2]}x{a.shape[1]}, B {b.shape[2]}x{b.shape[1]}")
            a, b = fit(a, s), fit(b, s)
        return torch.cat([b, a] if self.swap else [a, b])

    def __getitem__(self, i: int) -> torch.Tensor:
        n, failed = len(self), []
        for k in range(min(n, MAX_SUBSTITUTES)):
            try:
                return self.load((i + k) % n)
            except UnreadableImage as e:
                failed.append(e)
                if e.path not in self._warned:
                    self._warned.add(e.path)
                    print(f"warning: {e.path} could not be read during training ({e.reason}); "
                          f"the next readable file stands in for it", file=sys.stderr, flush=True)
        raise UserError(f"{len(failed)} files in a row could not be read during training, from {failed[0].path} "
                        f"({failed[0].reason}); has {self.where or 'the data folder'} changed since the run started?")


class _Scan(Dataset):
    """The loading pass over some items of a FolderDataset: item k -> (k, tensor or None, error or None)."""

    def __init__(self, ds: FolderDataset, indices: list, decode: bool):
        self.ds, self.indices, self.decode = ds, indices, decode

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, k):
        try:
            i = self.indices[k]
            return k, (self.ds.load(i) if self.decode else self.ds.check(i)), None
        except UnreadableImage as e:
            return k, None, e


def _collate(batch):
    """Stack a batch's good items in the worker: one shared-memory block per batch, not per image."""
    good = [(k, x) for k, x, e in batch if e is None]
    x = torch.stack([x for _, x in good]) if good and good[0][1] is not None else None
    return [k for k, _ in good], x, [(k, e) for k, _, e in batch if e is not None]


def _loader_failure(e: RuntimeError, workers: int, what: str) -> UserError:
    """A dead or stuck DataLoader worker -> one line; anything else stays a bug."""
    if "DataLoader" not in str(e):
        raise e
    first = str(e).strip().splitlines()[0][:200]
    return UserError(f"decoding {what} with --num-workers {workers} failed ({first}); retry with --num-workers 0")


def _scan(ds: FolderDataset, indices: list, decode: bool, num_workers: int):
    """Check, or check and decode, ds[indices] -> (good indices, their images (N, C, S, S) uint8
    or None, [(index, UnreadableImage)]). Workers only when there are enough files to pay off."""
    workers = num_workers if len(indices) >= PARALLEL_MIN_FILES else 0
    loader = DataLoader(_Scan(ds, indices, decode), batch_size=32, num_workers=workers, collate_fn=_collate,
                        generator=torch.Generator().manual_seed(0),  # leave the global RNG alone
                        timeout=WORKER_TIMEOUT_S if workers else 0)
    s, n = ds.image_size, len(indices)
    out = torch.empty(n, ds.channels, s, s, dtype=torch.uint8) if decode else None
    good, failures = torch.zeros(n, dtype=torch.bool), []
    try:
        for ks, x, errors in loader:
            good[ks] = True
            if decode and ks:
                out[ks] = x
            failures += [(indices[k], e) for k, e in errors]
    except RuntimeError as e:
        raise _loader_failure(e, workers, ds.where) from None
    kept = [i for i, g in zip(indices, good.tolist()) if g]
    if decode and len(kept) < n:
        out = out[good]
    return kept, out, failures


# --- finding files and splits ------------------------------------------------------------

def _folder(path: str, form: str) -> Path:
    if not path.strip():
        raise UserError(f"--dataset {form}: the path is empty; use {FORMS}")
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"--dataset {form}: {p} does not exist")
    if not p.is_dir():
        raise UserError(f"--dataset {form}: {p} is a file, not a folder of images")
    return p


def _images(folder: Path) -> list:
    """Image files under folder (recursive, sorted); a UserError when there are none."""
    found = list_images(folder)
    if not found:
        others = [p for p in folder.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(folder).parts)]
        if not others:
            raise UserError(f"{folder} is empty: no image files in it or its subfolders")
        exts = Counter(p.suffix.lower() or "(no extension)" for p in others)
        seen = ", ".join(f"{e} ({c})" for e, c in exts.most_common(5))
        raise UserError(f"{folder} has no image files ({len(others)} other files: {seen}); "
                        f"supported: {' '.join(IMAGE_EXTENSIONS)}")
    return found


def _split_dirs(root: Path):
    """(train_dir, test_dir) when root holds train/ and test/ (or val/), else None."""
    train, test = root / "train", root / "test"
    if not test.is_dir():
        test = root / "val"
    if train.is_dir() and test.is_dir():
        return train, test
    if test.is_dir():
        raise UserError(f"{root} has a {test.name}/ subfolder but no train/; add train/, or point at a "
                        f"folder without split subfolders to split it by file name")
    return None


def hash_fraction(key: str) -> float:
    """sha1 of the key as a number in [0, 1): the fixed, seed-independent split rule."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64


def _stems(folder: Path) -> dict:
    """relative path without extension -> file, refusing two files with the same stem."""
    out, dupes = {}, []
    for p in _images(folder):
        key = p.relative_to(folder).with_suffix("").as_posix()
        if key in out:
            dupes.append(f"{out[key].name} and {p.name}")
        out[key] = p
    if dupes:
        raise UserError(f"{folder}: files differ only by extension, so their partner is ambiguous: "
                        f"{_listing(dupes)}; keep one of each")
    return out


def _listing(items: list) -> str:
    shown = ", ".join(str(x) for x in items[:LIST_MAX])
    return shown + (f" and {len(items) - LIST_MAX} more" if len(items) > LIST_MAX else "")


def _entries(kind: str, roots: list) -> list:
    """[(key, file or (file_a, file_b), split)] with split 'train'/'test' or None (hashed)."""
    layouts = [_split_dirs(r) for r in roots]
    if len(roots) == 2 and (layouts[0] is None) != (layouts[1] is None):
        has = roots[0] if layouts[0] else roots[1]
        raise UserError(f"paired: {has} has train/ and test/ subfolders but the other folder does not; "
                        f"give both the same layout")
    parts = [(None, roots)] if layouts[0] is None else [
        ("train", [lay[0] for lay in layouts]), ("test", [lay[1] for lay in layouts])]
    entries = []
    for split, dirs in parts:
        if kind != "pair":
            entries += [(p.relative_to(dirs[0]).as_posix(), p, split) for p in _images(dirs[0])]
            continue
        a, b = _stems(dirs[0]), _stems(dirs[1])
        only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        if only_a or only_b:
            why = [f"{len(keys)} of {len(side)} files in {d} have no partner in {other}: "
                   f"{_listing([side[k].relative_to(d).as_posix() for k in keys])}"
                   for keys, side, d, other in ((only_a, a, dirs[0], dirs[1]), (only_b, b, dirs[1], dirs[0])) if keys]
            raise UserError(f"paired: {'; '.join(why)} (files pair up by relative path without extension)")
        entries += [(k, (a[k], b[k]), split) for k in sorted(a)]
    return entries


# --- loading --------------------------------------------------------------------------------

def load(kind: str, arg: str, image_size: int, num_workers: int = 0, in_memory: str = "auto",
         name: str = "") -> ImageData:
    """--dataset kind:arg (kind folder, aligned or paired) -> ImageData; bad input -> UserError."""
    with one_thread():
        return _load(kind, arg, image_size, num_workers, in_memory, name)


def _load(kind, arg, image_size, num_workers, in_memory, name) -> ImageData:
    form = f"{kind}:{arg}"
    if kind == "paired":
        paths = arg.split(",")
        if len(paths) != 2 or not all(p.strip() for p in paths):
            raise UserError(f"--dataset {form}: paired needs two folders separated by a comma; use {FORMS}")
        roots = [_folder(p, form) for p in paths]
    else:
        roots = [_folder(arg, form)]
    if in_memory not in ("auto", "on", "off"):
        raise UserError(f"in_memory must be auto, on or off, got {in_memory!r}")
    ds_kind = {"folder": "image", "aligned": "aligned", "paired": "pair"}[kind]
    where = ",".join(str(r) for r in roots)
    entries = _entries(ds_kind, roots)
    ds = FolderDataset([e[1] for e in entries], image_size, ds_kind, where)
    base = os.path.commonpath([os.path.abspath(r) for r in roots]) if len(roots) == 2 else roots[0]
    unit = "pairs" if ds_kind == "pair" else "files"

    # 1. headers: sizes, bombs, non-images, partners of different sizes
    ok, _, failures = _scan(ds, list(range(len(ds))), False, num_workers)
    keys = [e[0] for e in entries]
    mismatched = [f"{keys[i]} ({f.reason})" for i, f in failures if isinstance(f, SizeMismatch)]
    if mismatched:
        raise UserError(f"paired: A and B differ in pixel size for {len(mismatched)} pairs: {_listing(mismatched)}; "
                        f"each pair must have one size")
    hashed = entries[0][2] is None
    rank = {i: hash_fraction(keys[i]) for i in ok}
    is_test = {i: rank[i] < TEST_FRACTION if hashed else entries[i][2] == "test" for i in ok}
    train, test = [i for i in ok if not is_test[i]], [i for i in ok if is_test[i]]
    if hashed and len(ok) >= 2 and not (train and test):  # tiny folders: one file each way at least
        if not test:
            test = [train.pop(min(range(len(train)), key=lambda r: rank[train[r]]))]
        else:
            train = [test.pop(max(range(len(test)), key=lambda r: rank[test[r]]))]
    # 2. decode: the test split always, the train split when it is kept in memory
    size = len(train) * ds.channels * image_size ** 2
    keep = in_memory == "on" or (in_memory == "auto" and size <= IN_MEMORY_LIMIT)
    test, test_x, more = _scan(ds, test, True, num_workers)
    failures += more
    train_x = None
    if keep:
        train, train_x, more = _scan(ds, train, True, num_workers)
        failures += more

    # 3. report: one warning line, or a UserError when a split has nothing usable
    def named(f: UnreadableImage) -> str:
        return f"{Path(os.path.relpath(f.path, base)).as_posix()} ({f.reason})"

    if not train or not test:
        bad = failures
        if not train and not test:
            msg = f"all {len(ds)} {unit} in {where} are unusable: "
        elif hashed and len(ok) < 2:
            msg = f"{where} has only 1 usable {unit[:-1]}, and a train and a test split need 2; skipped: "
        else:
            split = "train" if not train else "test"
            bad = failures if hashed else [(i, f) for i, f in failures if entries[i][2] == split]
            msg = f"the {split} split of {where} has no usable {unit}: "
        msg += _listing([named(f) for _, f in bad]) if bad else "none"
        small = [f for _, f in bad if isinstance(f, TooSmall)]
        if small:
            best = max(f.short for f in small)
            fits = 2 ** max(0, best.bit_length() - 1)
            msg += f"; {len(small)} of them are smaller than --image-size {image_size}"
            if fits >= 8:  # a size worth training at
                msg += f": try --image-size {fits} or smaller (the largest of them allows {best})"
        raise UserError(msg)
    if failures and dist.is_main():
        print(f"warning: skipped {len(failures)} of {len(ds)} {unit} in {where}: "
              f"{_listing([named(f) for _, f in sorted(failures, key=lambda t: t[0])])}", file=sys.stderr, flush=True)

    def halves(x):  # (N, 6, S, S) -> A (N, 3, S, S), B (N, 3, S, S); (N, 3, S, S) -> None, itself
        return (x[:, :3].contiguous(), x[:, 3:].contiguous()) if ds.paired else (None, x)

    test_a, test_b = halves(test_x)
    data = ImageData(name or form, None, test_b, test_a=test_a)
    if keep:
        data.train_a, data.train_b = halves(train_x)
    else:
        data.train_stream = FolderDataset([ds.files[i] for i in train], image_size, ds_kind, where)
    return data


# --- streaming the training split -----------------------------------------------------------

class _OrderBatches:
    """A batch sampler reading the current epoch's order from its StreamLoader."""

    def __init__(self, owner: "StreamLoader"):
        self.owner = owner

    def __iter__(self):
        order, b = self.owner.order, self.owner.batch_size
        return iter([order[i:i + b] for i in range(0, len(order), b)])

    def __len__(self):
        return -(-len(self.owner.order) // self.owner.batch_size)


class StreamLoader:
    """Training batches decoded from files by persistent workers, in the engine's own order.

        loader = StreamLoader(data.train_stream, cfg.batch_size, cfg.num_workers, pin_memory=cuda)
        for batch in loader.epoch(order):  # order: this epoch's indices (a tensor or list)
            ...                            # batch: uint8 (B, C, S, S), C = 6 when paired (A then B)

    Set `ds.swap` before creating the loader: workers hold a copy of the dataset.
    """

    def __init__(self, ds: FolderDataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False):
        self.ds, self.batch_size, self.num_workers, self.order = ds, batch_size, num_workers, []
        self.loader = DataLoader(ds, batch_sampler=_OrderBatches(self), num_workers=num_workers,
                                 generator=torch.Generator().manual_seed(0),  # leave the global RNG alone
                                 persistent_workers=num_workers > 0, pin_memory=pin_memory,
                                 timeout=WORKER_TIMEOUT_S if num_workers else 0,
                                 prefetch_factor=4 if num_workers else None)

    def epoch(self, order):
        self.order = order.tolist() if torch.is_tensor(order) else list(order)
        try:
            yield from self.loader
        except UserError as e:  # raised in a worker: the DataLoader prefixes the worker's traceback
            raise UserError(str(e).strip().splitlines()[-1].split("UserError: ", 1)[-1]) from None
        except RuntimeError as e:
            raise _loader_failure(e, self.num_workers, self.ds.where) from None

    def close(self) -> None:
        """Stop the persistent workers now rather than when the loader is garbage collected."""
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None
