"""Sources: the CIFAR reader on stand-in files, the offline photos set, the fake set."""
import pickle

import pytest
import torch

from conftest import write_cifar10
from tinypix2pix import data
from tinypix2pix.errors import UserError


def test_cifar_reader_accepts_standin_files_without_md5(tmp_path):
    root = write_cifar10(tmp_path, n_train=20, n_test=8)
    d = data.load_source("cifar10", str(root))
    assert d.train_b.shape == (20, 3, 32, 32) and d.test_b.shape == (8, 3, 32, 32)
    assert d.train_b.dtype == torch.uint8


def test_cifar_resized_to_image_size(tmp_path):
    d = data.load_source("cifar10", str(write_cifar10(tmp_path, 10, 5)), image_size=64)
    assert d.train_b.shape[-2:] == (64, 64)


def test_cifar_reader_refuses_pickles_that_run_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "batch"
    bad.write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(UserError, match="not a readable CIFAR batch"):
        data.read_cifar_batch(bad)
    assert not marker.exists()


def test_cifar_archive_placed_by_hand_is_extracted(tmp_path):
    import tarfile

    src = write_cifar10(tmp_path / "src", 10, 5)
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    assert len(data.load_source("cifar10", str(root)).train_b) == 10


def test_photos_split_by_source_photo():
    pytest.importorskip("skimage")
    assert not set(data.PHOTO_TEST) & {g for g in data.PHOTO_GROUPS if g not in data.PHOTO_TEST}
    d = data.load_source("photos")
    assert len(d.train_b) > 1000 and len(d.test_b) > 200
    train = {bytes(t.flatten().numpy()) for t in d.train_b}
    assert not any(bytes(t.flatten().numpy()) in train for t in d.test_b)
    assert torch.equal(d.test_b, data.load_source("photos").test_b)  # deterministic


def test_fake_is_deterministic_and_unknown_names_list_choices():
    assert torch.equal(data.load_source("fake").train_b, data.load_source("fake").train_b)
    with pytest.raises(UserError, match="choose one of"):
        data.load_source("imagenet")
