"""Trust: broken, hostile and odd files never crash, hang or silently vanish.

One generated folder holds every kind of bad file next to odd-but-valid and good images.
Loading must skip exactly the bad ones with one warning naming each (and why), a folder of
only bad files must give one clear error, and the real CLI must train on the mixed folder.
"""
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, cli_env, run_cli
from tinypix2pix import data, folders
from tinypix2pix.errors import UserError


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def fake_png(width: int, height: int) -> bytes:
    """A well-formed PNG whose header claims width x height RGB, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + png_chunk(b"IEND", b""))


def encoded(arr, fmt, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


# name -> (bytes, a word the skip reason must contain)
def bad_files(rng) -> dict:
    photo = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    png, jpg = encoded(photo, "PNG"), encoded(photo, "JPEG", quality=90)
    return {
        "empty.png": (b"", "empty"),
        "empty.jpg": (b"", "empty"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "truncated.jpg": (jpg[: len(jpg) // 2], "truncated"),
        "random.png": (rng.bytes(2000), "not an image"),
        "random.jpg": (rng.bytes(2000), "not an image"),
        "notes.jpg": (b"this is a text file, not a photo\n" * 20, "not an image"),
        "bomb.png": (fake_png(100_000, 100_000), "decompression bomb"),
        # a plausible size with too little pixel data: torchvision's decode_png would SIGSEGV here
        "short_idat.png": (fake_png(600, 600), "truncated"),
        "tiny.png": (encoded(photo[:1, :1], "PNG"), "smaller than --image-size"),
        "tiny.bmp": (encoded(photo[:1, :1], "BMP"), "smaller than --image-size"),
    }


@pytest.fixture
def mixed(tmp_path):
    """(folder, names of bad files -> reason word, number of usable files)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "mixed"
    (folder / "nested").mkdir(parents=True)
    bad = bad_files(rng)
    del bad["tiny.bmp"]  # ten bad files: the warning names each (it names ten, then "and K more")
    for name, (body, _) in bad.items():
        (folder / name).write_bytes(body)
    photo = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(rng.integers(0, 65535, (40, 40)).astype(np.uint16)).save(folder / "gray16.png")
    Image.fromarray(photo).convert("P", palette=Image.ADAPTIVE).save(folder / "palette.png")
    Image.fromarray(photo).convert("CMYK").save(folder / "cmyk.jpg")
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (36 + i, 44, 3), dtype=np.uint8)).save(folder / "nested" / f"good{i}.png")
    return folder, {n: why for n, (_, why) in bad.items()}, 11


@pytest.mark.parametrize("workers", [0, 2])
def test_loading_skips_exactly_the_bad_files_with_one_warning(mixed, capsys, monkeypatch, workers):
    folder, bad, usable = mixed
    monkeypatch.setattr(folders, "PARALLEL_MIN_FILES", 4)  # let this small folder use the worker path too
    d = data.load_source(f"folder:{folder}", image_size=32, num_workers=workers)
    assert len(d.train_b) + len(d.test_b) == usable  # 16-bit, palette and CMYK load; the bad ones do not
    assert d.train_b.dtype == torch.uint8 and d.train_b.shape[1:] == (3, 32, 32)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"warning: skipped {len(bad)} of {len(bad) + usable} files in {folder}")
    warning = lines[0]
    for name in bad:  # each with its reason
        assert f"{name} (" in warning and bad[name] in warning.split(f"{name} (", 1)[1].split("), ")[0], name
    for good in ("gray16.png", "palette.png", "cmyk.jpg", "good"):
        assert good not in warning


def test_streaming_skips_them_and_survives_files_that_fail_later(mixed, capsys):
    folder, bad, usable = mixed
    d = data.load_source(f"folder:{folder}", image_size=32, in_memory="off")
    # a streamed train split is header-checked only: damaged pixel data shows up when it is read
    late = {"truncated.png", "truncated.jpg", "short_idat.png"}
    ds = d.train_stream
    in_stream = {f.name for f in ds.files} & late
    assert d.num_train + len(d.test_b) == usable + len(in_stream) and "truncated.png (" not in capsys.readouterr().err
    items = [ds[i] for i in range(len(ds))] + [ds[i] for i in range(len(ds))]  # two epochs
    assert all(x.shape == (3, 32, 32) and x.dtype == torch.uint8 for x in items)
    err = capsys.readouterr().err
    assert err.count("warning:") == len(in_stream) and all(name in err for name in in_stream)  # once per file
    victim = next(f for f in ds.files if f.name.startswith("good"))
    i = ds.files.index(victim)
    expected = ds[(i + 1) % len(ds)]
    victim.write_bytes(victim.read_bytes()[:60])  # a file breaks mid-training: the next one stands in
    assert torch.equal(ds[i], expected) and victim.name in capsys.readouterr().err
    for f in ds.files:
        f.write_bytes(b"")
    with pytest.raises(UserError, match="could not be read during training"):  # bounded: no endless retry
        ds[0]


def test_only_bad_files_give_one_clear_error(tmp_path):
    rng = np.random.default_rng(1)
    for name, (body, _) in bad_files(rng).items():
        (tmp_path / name).write_bytes(body)
    with pytest.raises(UserError) as e:
        data.load_source(f"folder:{tmp_path}", image_size=32)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"all 11 files in {tmp_path} are unusable: ")
    assert "bomb.png (header claims" in msg and "empty.jpg (empty file)" in msg and " and 1 more; 2 of them are smaller" in msg


def test_an_explicit_split_with_no_usable_file_is_named(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), i, np.uint8)).save(tmp_path / "train" / f"{i}.png")
    (tmp_path / "test" / "t.png").write_bytes(b"")
    with pytest.raises(UserError, match=r"the test split of .* has no usable files: test/t\.png \(empty file\)"):
        data.load_source(f"folder:{tmp_path}", image_size=32)
    (tmp_path / "test" / "t.png").unlink()
    with pytest.raises(UserError, match=r"test has no image files|test is empty"):
        data.load_source(f"folder:{tmp_path}", image_size=32)


def test_images_too_small_suggest_an_image_size(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((20, 24 + i, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
    with pytest.raises(UserError, match=r"all 3 files .* 3 of them are smaller than --image-size 32: try --image-size 16"):
        data.load_source(f"folder:{tmp_path}", image_size=32)


def test_path_and_dataset_mistakes_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hi")
    (tmp_path / "docs" / "table.csv").write_text("1,2")
    (tmp_path / "one.png").write_bytes(b"x")
    cases = {
        f"folder:{tmp_path / 'missing'}": "does not exist",
        f"folder:{tmp_path / 'one.png'}": "is a file, not a folder",
        f"folder:{tmp_path / 'empty'}": "is empty",
        f"aligned:{tmp_path / 'docs'}": r"has no image files \(2 other files: \.txt \(1\), \.csv \(1\)\)",
        "folder:": "the path is empty; use folder:PATH, aligned:PATH or paired:PATH_A,PATH_B",
        f"paired:{tmp_path}": "paired needs two folders",
        "paired": "paired needs a path",
        "zip:/x": "choose one of .*folder:PATH, aligned:PATH, paired:PATH_A,PATH_B",
        str(tmp_path): f"for a folder of images use folder:{tmp_path}",
    }
    for value, pattern in cases.items():
        with pytest.raises(UserError, match=pattern) as e:
            data.load_source(value, image_size=32)
        assert "\n" not in str(e.value)


def test_unreadable_permissions_are_skipped(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "0.png").chmod(0)
    d = data.load_source(f"folder:{tmp_path}", image_size=32)
    assert len(d.train_b) + len(d.test_b) == 2 and "0.png (cannot be opened" in capsys.readouterr().err


DECODE_ALL = r"""
import sys, time, io
import numpy as np
from PIL import Image
from tinypix2pix.imagefiles import UnreadableImage, read_image
folder = sys.argv[1]
for name in sys.argv[2:]:
    t = time.perf_counter()
    try:
        read_image(f"{folder}/{name}")
        print("DECODED", name)
    except UnreadableImage as e:
        print("REFUSED", name, round(time.perf_counter() - t, 3))
# mutated copies of real files through the decoders we use: each must decode or be refused
rng = np.random.default_rng(5)
photo = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
for ext, fmt in ((".png", "PNG"), (".jpg", "JPEG"), (".webp", "WEBP"), (".bmp", "BMP"), (".tif", "TIFF")):
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format=fmt)
    good = buf.getvalue()
    for i in range(40):
        b = bytearray(good)
        if i % 2:
            b = b[: rng.integers(1, len(b))]
        else:
            for _ in range(4):
                b[rng.integers(0, len(b))] = rng.integers(0, 256)
        path = f"{folder}/mutant{ext}"
        open(path, "wb").write(bytes(b))
        try:
            read_image(path)
        except UnreadableImage:
            pass
print("FUZZ DONE")
"""


def test_read_image_refuses_each_bad_file_quickly_and_never_crashes(tmp_path):
    bad = bad_files(np.random.default_rng(2))
    for name, (body, _) in bad.items():
        (tmp_path / name).write_bytes(body)
    proc = subprocess.run([sys.executable, "-c", DECODE_ALL, str(tmp_path), *bad], capture_output=True, text=True,
                          timeout=120, env=cli_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]  # a decoder crash (SIGSEGV) would show here
    refused = {line.split()[1] for line in proc.stdout.splitlines() if line.startswith("REFUSED")}
    assert refused == set(bad) - {"tiny.png", "tiny.bmp"}  # 1x1 images are valid; the sources skip them as too small
    assert "FUZZ DONE" in proc.stdout


def test_cli_trains_on_the_mixed_folder_with_one_warning(mixed, tmp_path):
    folder, bad, _ = mixed
    proc = run_cli("--dataset", f"folder:{folder}", "--device", "cpu", "--max-steps", "2", "--batch-size", "4",
                   "--ngf", "4", "--depth", "3", "--disc-layers", "1", "--ndf", "8", "--eval-images", "8",
                   "--model-dir", tmp_path / "m", check=True)
    assert "Traceback" not in proc.stderr and proc.stderr.count(f"warning: skipped {len(bad)} of") == 1
    assert (tmp_path / "m" / "metrics.jsonl").is_file()
