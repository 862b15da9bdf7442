"""Training batches on the device: the epoch's sample order, augmentation, and the two ways a
split reaches the model (indexed from one uint8 tensor on the device, or streamed from files).

Everything after the indices is batched tensor ops on the device with randomness from one
explicit generator, so a run repeats exactly and a resume continues mid-epoch.
"""
import torch
import torch.nn.functional as F

from .config import TrainConfig
from .data import ImageData
from .images import to_model


def augment(x: torch.Tensor, mode: str, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flip (and pad-4 random crop) of a float batch, one draw per image."""
    if mode == "none":
        return x
    n, _, h, w = x.shape
    flip = torch.rand(n, device=x.device, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if mode == "flip+crop":
        pad = 4
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dy, dx = torch.randint(0, 2 * pad + 1, (2, n), device=x.device, generator=g)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (n, 1, h, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (n, 1, 1, w)
        x = padded[torch.arange(n, device=x.device)[:, None, None, None],
                   torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]
    return x


def epoch_order(n: int, epoch: int, seed: int, batch: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's sample order for one epoch: a permutation fixed by (seed, epoch), sharded so
    ranks draw disjoint indices; whole batches only (the remainder waits for the next epoch)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    steps = n // (batch * world)
    return perm[rank::world][: steps * batch]


class TrainBatches:
    """This rank's training pairs (a, b) in [-1, 1] on the device, one step at a time, in the
    epoch's order: indexed from the split held on the device, or decoded from files by
    DataLoader workers (folders.StreamLoader) when the split is too large to keep. Both paths
    apply the same augmentation and corruption on the device, so they give the same batches.
    Paired sources augment A and B together (same flip and crop)."""

    def __init__(self, data: ImageData, task, cfg: TrainConfig, device, data_gen, channels_last: bool):
        self.task, self.cfg, self.device, self.gen, self.channels_last = task, cfg, device, data_gen, channels_last
        self.paired, self.out_ch = data.paired, data.channels
        self.stream = self.train_a = self.train_b = None
        if data.streaming:
            from .folders import StreamLoader

            self.stream = StreamLoader(data.train_stream, cfg.batch_size, cfg.num_workers,
                                       pin_memory=device.type == "cuda")
        else:
            self.train_b = data.train_b.to(device)
            self.train_a = data.train_a.to(device) if data.paired else None

    def epoch(self, order: torch.Tensor, start: int):
        """Yield the (a, b) of steps start, start + 1, ... of an epoch whose sample order is `order`."""
        bs = self.cfg.batch_size
        if self.stream is not None:
            batches = (x.to(self.device, non_blocking=True) for x in self.stream.epoch(order[start * bs:]))
        else:
            order = order.to(self.device)
            batches = (self._gather(order[i:i + bs]) for i in range(start * bs, len(order), bs))
        for x in batches:
            b = to_model(x[:, -self.out_ch:])
            if self.paired:  # x holds A's channels, then B's
                ab = augment(torch.cat([to_model(x[:, :-self.out_ch]), b], 1), self.cfg.augment, self.gen)
                a, b = ab[:, :-self.out_ch], ab[:, -self.out_ch:]
            else:
                b = augment(b, self.cfg.augment, self.gen)
                a = self.task(b, self.gen)
            if self.channels_last:
                a, b = a.contiguous(memory_format=torch.channels_last), b.contiguous(memory_format=torch.channels_last)
            yield a, b

    def _gather(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.train_a[idx], self.train_b[idx]], 1) if self.paired else self.train_b[idx]

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
