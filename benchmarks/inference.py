"""Inference throughput: images/s of the generators in eager fp32, eager bf16 and ONNX Runtime.

    python benchmarks/inference.py                       # seed and paper designs, 32 and 256 px
    python benchmarks/inference.py --designs seed --sizes 32 --seconds 2

Each row: a design at an image size, one batch repeatedly translated (the generator alone, in
eval mode, no file I/O): `--warmup` untimed batches, then timed batches until `--seconds` have
passed (at least 2). Weights are random (speed does not depend on them).
- eager fp32: `torch.no_grad()`, NCHW.
- eager bf16: the same under `torch.autocast("cpu", torch.bfloat16)` (fast where the CPU has
  AVX512-BF16 / AMX; slower than fp32 where it does not).
- onnxruntime: the file `tinypix2pix export --format onnx` writes (dynamic shapes), run by the
  CPU execution provider with as many threads as torch uses.
Designs: seed (7.8 M parameters, depth 5 at both sizes: 8x8 bottleneck at 256 px) and paper
(ngf 64: depth 5 = 1x1 bottleneck at 32 px, depth 8 = official unet_256 at 256 px).
On a shared machine figures swing with other load: compare rows of one run.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tinypix2pix.models import build_generator, count_parameters, generator_config, init_weights  # noqa: E402

DESIGNS = {  # name -> {size: (generator config, batch)}
    "seed": {32: (dict(arch="seed", depth=5), 64), 256: (dict(arch="seed", depth=5), 4)},
    "paper": {32: (dict(arch="pix2pix", depth=5), 64), 256: (dict(arch="pix2pix", depth=8), 2)},
}


def timed(fn, warmup: int, seconds: float) -> float:
    """Seconds per call."""
    for _ in range(warmup):
        fn()
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS))
    p.add_argument("--sizes", nargs="+", type=int, default=[32, 256], choices=[32, 256])
    p.add_argument("--modes", nargs="+", default=["fp32", "bf16", "onnx"], choices=["fp32", "bf16", "onnx"])
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per row (default: 4)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch and onnxruntime threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} thread(s), {os.cpu_count()} CPU(s), "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'design':<7} {'size':>5} {'params':>8} {'batch':>5} {'mode':<12} {'images/s':>9} {'ms/batch':>9}")
    for design in args.designs:
        for size in args.sizes:
            cfg, batch = DESIGNS[design][size]
            model = build_generator(generator_config(**cfg)).eval()
            init_weights(model)
            x = torch.rand(batch, 3, size, size) * 2 - 1
            for mode in args.modes:
                if mode == "onnx":
                    import onnxruntime as ort

                    from tinypix2pix.export import onnx_bytes

                    opts = ort.SessionOptions()
                    opts.intra_op_num_threads = threads
                    session = ort.InferenceSession(onnx_bytes(model, size, batch), opts, providers=["CPUExecutionProvider"])
                    feed = {"input": x.numpy()}
                    fn = lambda: session.run(None, feed)
                    label = "onnxruntime"
                else:
                    def fn(dtype=torch.bfloat16 if mode == "bf16" else None):
                        with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                            return model(x)
                    label = f"eager {mode}"
                sec = timed(fn, args.warmup, args.seconds)
                print(f"{design:<7} {size:>5} {count_parameters(model) / 1e6:>7.1f}M {batch:>5} {label:<12} "
                      f"{batch / sec:>9.1f} {sec * 1e3:>9.1f}", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
