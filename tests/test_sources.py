"""File sources (folder:, aligned:, paired:): formats and modes, crops, splits, streaming, the CLI."""
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from tinypix2pix import data, folders
from tinypix2pix.errors import UserError


def save(path, arr, mode=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.asarray(arr)) if not isinstance(arr, Image.Image) else arr
    (im.convert(mode) if mode else im).save(path, **kw)
    return path


def solid(value, w=40, h=40):
    """An RGB image of one colour; value is an int (gray ramp code) or an (r, g, b) tuple."""
    rgb = value if isinstance(value, tuple) else (value, 255 - value, (value * 7) % 256)
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


def colours(t):
    """Set of the (r, g, b) colour at the centre of each image of a uint8 batch."""
    s = t.shape[-1] // 2
    return {tuple(x[:, s, s].tolist()) for x in t}


def is_test(key):
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2 ** 64 < 0.1


# --- folder: ----------------------------------------------------------------------------------

def test_folder_uses_train_and_test_subfolders_then_val(tmp_path):
    for i in range(3):
        save(tmp_path / "train" / f"{i}.png", solid(10 + i))
    save(tmp_path / "val" / "v.png", solid(100))
    d = data.load_source(f"folder:{tmp_path}", image_size=32)
    assert d.train_b.shape == (3, 3, 32, 32) and colours(d.test_b) == colours(torch.tensor(solid(100)).permute(2, 0, 1)[None])
    save(tmp_path / "test" / "t.png", solid(200))  # test/ wins over val/
    d = data.load_source(f"folder:{tmp_path}", image_size=32)
    assert len(d.train_b) == 3 and colours(d.test_b) == {tuple(solid(200)[0, 0].tolist())}
    assert not d.paired and d.num_train == 3 and d.channels == 3 and d.image_size == 32


def test_folder_hashed_split_is_fixed_disjoint_and_stable(tmp_path):
    for i in range(60):
        save(tmp_path / ("sub" if i % 3 else "") / f"img{i}.png", solid(i * 4))
    d = data.load_source(f"folder:{tmp_path}", image_size=16)
    keys = [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.rglob("*.png"))]
    expect_test = {tuple(solid(int(k.split("img")[1][:-4]) * 4)[0, 0].tolist()) for k in keys if is_test(k)}
    assert 1 <= len(expect_test) < 20 and colours(d.test_b) == expect_test  # the documented sha1 rule
    assert not colours(d.train_b) & colours(d.test_b) and len(d.train_b) + len(d.test_b) == 60
    save(tmp_path / "sub" / "new.png", solid((1, 2, 3)))  # adding a file moves no other file
    d2 = data.load_source(f"folder:{tmp_path}", image_size=16)
    assert colours(d2.test_b) - {(1, 2, 3)} == expect_test and len(d2.train_b) + len(d2.test_b) == 61
    # the split takes no seed at all: the same call always gives the same tensors
    assert torch.equal(d2.train_b, data.load_source(f"folder:{tmp_path}", image_size=16).train_b)


def test_two_images_always_give_one_train_and_one_test(tmp_path):
    save(tmp_path / "a.png", solid(1))
    save(tmp_path / "b.png", solid(2))
    d = data.load_source(f"folder:{tmp_path}", image_size=32)
    assert len(d.train_b) == 1 and len(d.test_b) == 1


def test_modes_formats_and_sizes_all_become_rgb_uint8(tmp_path):
    rng = np.random.default_rng(0)
    save(tmp_path / "rgb.jpg", solid((200, 30, 60), 50, 70), quality=95)
    save(tmp_path / "gray.png", np.full((40, 40), 77, np.uint8))
    save(tmp_path / "gray16.png", np.full((40, 40), 32768, np.uint16))  # 16-bit gray: half scale -> 128
    save(tmp_path / "rgb16.tif", np.full((40, 40), 65535, np.uint16))
    save(tmp_path / "palette.png", Image.fromarray(solid((10, 200, 90))).convert("P", palette=Image.ADAPTIVE))
    save(tmp_path / "photo.webp", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), lossless=True)
    save(tmp_path / "pic.bmp", solid((5, 6, 7), 33, 90))
    save(tmp_path / "pic.tiff", solid((250, 128, 0), 128, 32))
    save(tmp_path / "la.png", np.dstack([np.full((40, 40), 50, np.uint8), np.full((40, 40), 255, np.uint8)]))
    rgba = np.dstack([solid((0, 0, 255)), np.full((40, 40), 255, np.uint8)])
    rgba[:, :20, 3] = 0  # left half transparent: must be white, whatever its hidden RGB
    save(tmp_path / "rgba.png", rgba)
    d = data.load_source(f"folder:{tmp_path}", image_size=32)
    x = torch.cat([d.train_b, d.test_b])
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.uint8
    found = colours(x)
    for expect in [(77, 77, 77), (128, 128, 128), (255, 255, 255), (10, 200, 90), (5, 6, 7), (250, 128, 0), (50, 50, 50)]:
        assert expect in found, (expect, found)
    assert any(abs(np.array(c) - (200, 30, 60)).max() <= 3 for c in found)  # JPEG: close, not exact
    rgba_out = folders.fit(folders.read_image(tmp_path / "rgba.png"), 32)
    assert (rgba_out[:, :, :14] == 255).all() and (rgba_out[:, :, 18:] == torch.tensor([0, 0, 255])[:, None, None]).all()
    sprite = Image.new("P", (40, 40), 0)  # a GIF sprite: red palette entry 0 is the transparent background
    sprite.putpalette([255, 0, 0, 0, 0, 255])
    sprite.paste(1, (20, 0, 40, 40))
    sprite.save(tmp_path / "sprite.gif", transparency=0)
    gif = folders.read_image(tmp_path / "sprite.gif")
    assert (gif[:, :, :20] == 255).all() and (gif[:, :, 20:] == torch.tensor([0, 0, 255])[:, None, None]).all()


def test_non_square_images_are_centre_cropped(tmp_path):
    wide = np.zeros((32, 96, 3), np.uint8)
    wide[:, :32] = (255, 0, 0)
    wide[:, 32:64] = (0, 255, 0)
    wide[:, 64:] = (0, 0, 255)
    tall = wide.transpose(1, 0, 2).copy()
    save(tmp_path / "wide.png", wide)
    save(tmp_path / "tall.png", tall)
    d = data.load_source(f"folder:{tmp_path}", image_size=16)
    for x in torch.cat([d.train_b, d.test_b]):  # exactly the green middle square, no bleeding edges
        assert (x == torch.tensor([0, 255, 0], dtype=torch.uint8)[:, None, None]).all()
    x = folders.fit(torch.arange(6 * 10, dtype=torch.uint8).reshape(1, 6, 10), 6)
    assert torch.equal(x[0], torch.arange(60, dtype=torch.uint8).reshape(6, 10)[:, 2:8])  # no resize needed


# --- aligned: and paired: -----------------------------------------------------------------------

def write_aligned(root, split, n, w=64, h=32):
    for i in range(n):
        ab = np.zeros((h, w, 3), np.uint8)
        ab[:, : w // 2] = (200, i, 0)  # A: red
        ab[:, w // 2:] = (0, i, 200)  # B: blue
        save(root / split / f"{i}.png", ab)


def test_aligned_splits_halves_into_a_and_b(tmp_path):
    write_aligned(tmp_path, "train", 6)
    write_aligned(tmp_path, "val", 2)
    d = data.load_source(f"aligned:{tmp_path}", image_size=32)
    assert d.paired and d.train_a.shape == d.train_b.shape == (6, 3, 32, 32) and d.test_a.shape == (2, 3, 32, 32)
    assert (d.train_a[:, 0] == 200).all() and (d.train_a[:, 2] == 0).all()
    assert (d.train_b[:, 0] == 0).all() and (d.train_b[:, 2] == 200).all()
    assert sorted(d.test_b[:, 1, 0, 0].tolist()) == [0, 1]  # val/ is the test split when there is no test/
    d.swap_ab()
    assert (d.train_a[:, 2] == 200).all() and (d.test_b[:, 0] == 200).all()


def test_paired_matches_by_stem_across_extensions(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for i in range(5):
        save(a / "x" / f"{i}.png", solid((i * 40, 0, 0)))
        save(b / "x" / f"{i}.jpg", solid((0, i * 40, 0)), quality=98)
    d = data.load_source(f"paired:{a},{b}", image_size=32)
    assert d.paired and len(d.train_a) + len(d.test_a) == 5
    for xa, xb in zip(torch.cat([d.train_a, d.test_a]), torch.cat([d.train_b, d.test_b])):
        assert abs(int(xa[0, 5, 5]) - int(xb[1, 5, 5])) <= 3  # each A beside its own B
    for side, root in (("A", a), ("B", b)):  # train/ and test/ in both folders: used as given
        for split, n in (("train", 3), ("test", 1)):
            for i in range(n):
                save(tmp_path / "split" / side / split / f"{i}.png", solid((i, n, 7)))
    d = data.load_source(f"paired:{tmp_path / 'split' / 'A'},{tmp_path / 'split' / 'B'}", image_size=32)
    assert len(d.train_a) == 3 and len(d.test_b) == 1 and torch.equal(d.train_a, d.train_b)
    (b / "x" / "3.jpg").unlink()
    save(b / "extra.png", solid(9))
    with pytest.raises(UserError, match=r"1 of 5 files in .*a have no partner.*x/3\.png.*1 of 5 files in .*b.*extra\.png"):
        data.load_source(f"paired:{a},{b}", image_size=32)
    (b / "extra.png").unlink()
    save(b / "x" / "3.jpg", solid(9, 48, 40))
    with pytest.raises(UserError, match=r"differ in pixel size for 1 pairs: x/3 \(A 40x40, B 48x40\)"):
        data.load_source(f"paired:{a},{b}", image_size=32)


# --- streaming --------------------------------------------------------------------------------

def test_streaming_items_equal_the_in_memory_tensors(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    for i in range(12):
        save(tmp_path / "train" / f"{i}.png", rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8))
    save(tmp_path / "test" / "t.png", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    mem = data.load_source(f"folder:{tmp_path}", image_size=32, in_memory="on")
    off = data.load_source(f"folder:{tmp_path}", image_size=32, in_memory="off")
    assert off.train_b is None and off.streaming and off.num_train == 12 and not off.train_stream.paired
    assert torch.equal(torch.stack([off.train_stream[i] for i in range(12)]), mem.train_b)
    assert torch.equal(off.test_b, mem.test_b) and "streamed" in off.describe()
    monkeypatch.setattr(folders, "IN_MEMORY_LIMIT", 0)  # auto streams what does not fit
    assert data.load_source(f"folder:{tmp_path}", image_size=32).streaming
    order = torch.tensor([5, 0, 11, 3, 7, 2, 9, 1])
    loader = folders.StreamLoader(off.train_stream, batch_size=4, num_workers=2)
    for epoch in range(2):  # persistent workers follow each epoch's order
        got = torch.cat(list(loader.epoch(order.flip(0) if epoch else order)))
        assert torch.equal(got, mem.train_b[order.flip(0) if epoch else order])
    loader.close()


def test_streaming_paired_items_are_a_then_b(tmp_path, monkeypatch):
    write_aligned(tmp_path, "train", 4)
    write_aligned(tmp_path, "test", 1)
    monkeypatch.setattr(folders, "PARALLEL_MIN_FILES", 2)  # decode through DataLoader workers
    mem = data.load_source(f"aligned:{tmp_path}", image_size=32, num_workers=2)
    off = data.load_source(f"aligned:{tmp_path}", image_size=32, in_memory="off")
    assert off.paired and off.train_stream.paired and off.channels_a == 3
    assert torch.equal(torch.stack([off.train_stream[i] for i in range(4)]), torch.cat([mem.train_a, mem.train_b], 1))
    off.swap_ab()
    assert torch.equal(off.train_stream[0], torch.cat([mem.train_b[0], mem.train_a[0]]))


# --- the CLI ------------------------------------------------------------------------------------

SMALL = ["--device", "cpu", "--max-steps", "2", "--batch-size", "4", "--ngf", "4", "--depth", "3",
         "--disc-layers", "1", "--ndf", "8", "--eval-images", "8"]


def test_cli_trains_on_aligned_btoa_and_paired(tmp_path):
    write_aligned(tmp_path / "ab", "train", 8)
    write_aligned(tmp_path / "ab", "test", 2)
    run_cli("--dataset", f"aligned:{tmp_path / 'ab'}", "--direction", "BtoA", *SMALL,
            "--model-dir", tmp_path / "m1", check=True)
    assert json.loads((tmp_path / "m1" / "metrics.jsonl").read_text().splitlines()[-1])
    a, b = tmp_path / "a", tmp_path / "b"
    for i in range(10):
        save(a / f"{i}.png", solid((i * 20, 0, 0)))
        save(b / f"{i}.jpg", solid((0, i * 20, 0)))
    proc = run_cli("--dataset", f"paired:{a},{b}", *SMALL, "--model-dir", tmp_path / "m2", check=True)
    assert (tmp_path / "m2" / "metrics.jsonl").is_file() and "Traceback" not in proc.stderr
