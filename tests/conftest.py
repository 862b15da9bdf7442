"""Shared fixtures: run the real CLI in a subprocess, and tiny data in CIFAR-10's on-disk format."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def cli_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["TINYPIX2PIX_NO_DOWNLOAD"] = "1"  # tests never touch the network
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")  # tiny models: a second thread only adds contention
    env.update(extra)
    return env


def run_cli(*args, script="train.py", timeout=300, env=None, cwd=None, check=False):
    """Run `python train.py ARGS` (or `python -m tinypix2pix ARGS` with script=None)."""
    cmd = [sys.executable, str(ROOT / script)] if script else [sys.executable, "-m", "tinypix2pix"]
    proc = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=env or cli_env(), cwd=cwd or ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def write_cifar10(root: Path, n_train: int = 40, n_test: int = 16, seed: int = 0) -> Path:
    """Stand-in CIFAR-10 files (cifar-10-batches-py layout, real pickle format, random smooth images)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def images(n):
        base = rng.integers(0, 256, size=(n, 3, 4, 4)).astype(np.float32)
        big = base.repeat(8, axis=2).repeat(8, axis=3)  # blocky but structured 32x32 images
        return big.astype(np.uint8).reshape(n, 3072)

    per_batch = max(1, n_train // 5)
    for i in range(1, 6):
        entry = {b"batch_label": f"training batch {i} of 5".encode(), b"labels": [0] * per_batch,
                 b"data": images(per_batch), b"filenames": [b"x.png"] * per_batch}
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(entry, f, protocol=2)
    entry = {b"batch_label": b"testing batch 1 of 1", b"labels": [0] * n_test, b"data": images(n_test),
             b"filenames": [b"x.png"] * n_test}
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(entry, f, protocol=2)
    return Path(root)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """In-process runs use one thread, like the CLI subprocesses (OMP_NUM_THREADS=1 in cli_env):
    resume tests compare the two bit for bit, and tiny models only lose from a second thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cifar_root(tmp_path) -> Path:
    return write_cifar10(tmp_path / "data")
