"""Training throughput: the seed's pipeline beside ours, measured in one process, one run.

    python benchmarks/throughput.py                      # CPU: batch 8 and 64, seed design
    python benchmarks/throughput.py --device cuda --batch-sizes 64 512 --steps 50
    python benchmarks/throughput.py --configs reference fp32 --profile reference fp32   # + top operations

Configurations (each runs `--warmup` untimed steps, then `--steps` timed ones):
- reference: the seed's pipeline: a CIFAR-style Dataset whose __getitem__ makes a PIL image
  and applies ToTensor + Normalize, a DataLoader with 2 workers, eager fp32, NCHW, plain Adam,
  D's weight gradients computed in G's step too.
- ours fp32 / ours bf16 / ours compiled: tinypix2pix's engine (`gan.Pix2Pix.step`) with the
  split as one uint8 tensor on the device, batched flip augmentation, fused Adam, channels_last,
  no per-step host sync. bf16 rows are skipped on CPUs without native bf16 (there
  PyTorch falls back to a slow reference convolution); the compiled row then runs in fp32.

Reported per configuration: images/s, ms/step, achieved GFLOP/s (FLOPs of one step counted
with torch.utils.flop_counter.FlopCounterMode), share of a matmul peak measured in this run
(fp32 peak for fp32 rows, bf16 peak for bf16 rows), and peak memory (CUDA: max allocated; CPU:
the process's peak RSS so far, which only grows), plus the ratio to the reference.
"""
import argparse
import itertools
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tinypix2pix.config import TrainConfig  # noqa: E402
from tinypix2pix.batches import TrainBatches, epoch_order  # noqa: E402
from tinypix2pix.data import ImageData  # noqa: E402
from tinypix2pix.gan import Pix2Pix  # noqa: E402
from tinypix2pix.tasks import Identity  # noqa: E402
from tinypix2pix.models import PatchGANDiscriminator, build_generator, generator_config, init_weights  # noqa: E402


# --- the seed's pipeline --------------------------------------------------------------------

class CifarLikeDataset(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: HWC uint8 -> PIL -> transform."""

    def __init__(self, images_hwc, transform):
        self.data, self.transform = images_hwc, transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        from PIL import Image

        img = self.transform(Image.fromarray(self.data[i]))
        return img, img  # the seed pairs each image with itself


def reference_run(images_hwc, arch, batch, device):
    """(one training step with its data loading, one step on given tensors for the FLOP count)."""
    import torchvision.transforms as T

    tf = T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
    loader = torch.utils.data.DataLoader(CifarLikeDataset(images_hwc, tf), batch_size=batch, shuffle=True,
                                         num_workers=2, drop_last=True, persistent_workers=True)
    G = build_generator(generator_config(arch)).to(device)
    D = PatchGANDiscriminator().to(device)
    init_weights(G)
    init_weights(D)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()

    def step(a, b):
        fake = G(a)
        pr, pf = D(a, b), D(a, fake.detach())
        loss_d = 0.5 * (bce(pr, torch.ones_like(pr)) + bce(pf, torch.zeros_like(pf)))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        pf = D(a, fake)
        loss_g = bce(pf, torch.ones_like(pf)) + 100 * F.l1_loss(fake, b)
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        return loss_d.item(), loss_g.item()  # the seed reads losses back every step

    it = iter(loader)

    def one():
        nonlocal it
        try:
            a, b = next(it)
        except StopIteration:
            it = iter(loader)
            a, b = next(it)
        step(a.to(device), b.to(device))

    return one, (lambda: step(*[torch.randn(batch, 3, 32, 32, device=device)] * 2))


# --- ours ----------------------------------------------------------------------------------------

def ours_run(images_nchw, arch, batch, device, precision, compile_, channels_last):
    """The engine's own path: gan.Pix2Pix.step fed by batches.TrainBatches (the split on the device)."""
    cfg = TrainConfig(generator=arch, batch_size=batch, precision=precision, compile=compile_, device=str(device))
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    model = Pix2Pix(cfg, generator_config(arch), device, dtype, channels_last)
    data = ImageData("bench", train_b=images_nchw, test_b=images_nchw[:1])
    batches = TrainBatches(data, Identity(), cfg, device, torch.Generator(device=device).manual_seed(0), channels_last)

    def pairs():
        for epoch in itertools.count():
            yield from batches.epoch(epoch_order(len(images_nchw), epoch, 0, batch), 0)

    stream = pairs()

    def one():
        model.step(*next(stream), step=0, check_finite=False)

    return one, (lambda: model.step(*next(stream), step=0, check_finite=False))


# --- measuring -----------------------------------------------------------------------------------

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_top(fn, device, steps: int = 5, rows: int = 12) -> str:
    """torch.profiler's table of the operations taking the most time over `steps` calls."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(steps):
            fn()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=rows, max_name_column_width=28,
                                                              max_shapes_column_width=60)


def timed(fn, steps, warmup, device):
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    seconds = time.perf_counter() - t0
    mem = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return seconds / steps, mem


def count_flops(step_fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step_fn()
    return counter.get_total_flops()


def matmul_peak(device, dtype, n=None, seconds=1.0) -> float:
    """FLOP/s of a large square matmul: the ceiling convolutions can approach."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--arch", nargs="+", default=["seed"], choices=["seed", "pix2pix"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 64])
    p.add_argument("--steps", type=int, default=0, help="timed steps per configuration (0: 40 at batch <= 16, else 10)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--configs", nargs="+", default=["reference", "fp32", "bf16", "compiled"])
    p.add_argument("--compile-precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="precision of the compiled row; auto: bf16 where the device has native bf16, else fp32")
    p.add_argument("--force-bf16", action="store_true", help="run bf16 rows even without native bf16 (very slow)")
    p.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"],
                   help="memory format of our rows: auto = as train.py (on for CUDA and CPU)")
    p.add_argument("--profile", nargs="*", default=[], metavar="CONFIG",
                   help="after the table, print torch.profiler's top operations of these configurations")
    p.add_argument("--images", type=int, default=4096, help="size of the synthetic CIFAR-sized data set")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8)
    cl = {"auto": device.type in ("cuda", "cpu"), "on": True, "off": False}[args.channels_last]
    native_bf16 = device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if args.compile_precision == "auto":
        args.compile_precision = "bf16" if native_bf16 else "fp32"
    peaks = {"fp32": matmul_peak(device, torch.float32), "bf16": matmul_peak(device, torch.bfloat16)}
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"matmul peak: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s "
          f"({'native' if native_bf16 else 'no native'} bf16), compiled row in {args.compile_precision}")
    profiles = []
    header = f"{'arch':<8} {'batch':>5} {'config':<10} {'img/s':>8} {'ms/step':>8} {'GFLOP/s':>8} {'% peak':>7} {'peak MiB':>9} {'vs ref':>7}"
    print(header)
    print("-" * len(header))
    for arch in args.arch:
        for batch in args.batch_sizes:
            steps = args.steps or (40 if batch <= 16 else 10)
            ref_ips = None
            for name in args.configs:
                if name == "bf16" and not native_bf16 and not args.force_bf16:
                    print(f"{arch:<8} {batch:>5} {name:<10} skipped: this CPU has no native bf16 (AVX512-BF16/AMX), "
                          f"where PyTorch's bf16 convolutions are many times slower than fp32 (--force-bf16 runs it)")
                    continue
                warmup = args.warmup + (2 if name == "compiled" else 0)
                if name == "reference":
                    one, flop_fn = reference_run(images.permute(0, 2, 3, 1).numpy(), arch, batch, device)
                    prec = "fp32"
                else:
                    prec = {"fp32": "fp32", "bf16": "bf16", "compiled": args.compile_precision}[name]
                    one, flop_fn = ours_run(images, arch, batch, device, prec, name == "compiled", cl)
                sec, mem = timed(one, steps, warmup, device)
                if name in args.profile:
                    profiles.append((f"{arch}, batch {batch}, {name}", profile_top(one, device)))
                flops = count_flops(flop_fn) if name != "compiled" else flops_cache.get((arch, batch))
                flops_cache[(arch, batch)] = flops_cache.get((arch, batch)) or flops
                ips = batch / sec
                ref_ips = ref_ips or (ips if name == "reference" else None)
                gflops = flops / sec / 1e9 if flops else float("nan")
                ratio = f"{ips / ref_ips:.2f}x" if ref_ips else "-"
                print(f"{arch:<8} {batch:>5} {name:<10} {ips:>8.1f} {sec * 1e3:>8.1f} {gflops:>8.1f} "
                      f"{100 * gflops * 1e9 / peaks[prec]:>6.0f}% {mem / 2 ** 20:>9.0f} {ratio:>7}", flush=True)
    for title, table in profiles:
        print(f"\ntop operations, {title}:\n{table}")


flops_cache = {}

if __name__ == "__main__":
    main()
