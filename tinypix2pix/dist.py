"""Distributed helpers that also work in a single process (after NVlabs/edm's `torch_utils/distributed.py`).

`torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything below degrades to
rank 0 of 1 and no process group is created.
"""
import os
import sys
from contextlib import contextmanager

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


_control_group = None  # a gloo group for small host-side messages (no GPU sync under nccl)


def init(device_type: str) -> None:
    """Create the process group when launched by torchrun (nccl on CUDA, gloo otherwise)."""
    global _control_group
    if is_distributed() and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        _control_group = dist.new_group(backend="gloo") if backend == "nccl" else None


def cleanup() -> None:
    global _control_group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _control_group = None


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def print0(*args, **kwargs) -> None:
    """Print on rank 0 only, so logs of an N-process run are not repeated N times."""
    if is_main():
        print(*args, **kwargs, flush=True)


def warn0(message: str) -> None:
    """A one-line warning on rank 0, to stderr: stdout stays the run's log, and a warning is
    still seen when stdout goes to a file."""
    if is_main():
        print(message, file=sys.stderr, flush=True)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier(group=_control_group)  # gloo beside nccl: no NCCL timeout while a rank downloads


@contextmanager
def local_main_first():
    """Local rank 0 runs the block first, then the other processes of its machine: one writer per
    machine for downloads and extraction, the others then read the finished files."""
    if local_rank() != 0:
        barrier()
    yield
    if local_rank() == 0:
        barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over all ranks (identity in a single process)."""
    if dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t)
        t /= world_size()
    return t


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] (pickled over the gloo control group; [obj] in one process).
    Put tensors on the CPU first."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj, group=_control_group)
    return out


def any_rank(value: int) -> int:
    """The largest of an integer flag over all ranks, exchanged on the CPU (no GPU sync)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group)
    return int(t.item())
