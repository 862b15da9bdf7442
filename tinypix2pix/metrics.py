"""Image-quality metrics on [0, 1] images (MAE is also reported in the seed's [-1, 1] units).

PSNR and MAE are averaged per image (the usual convention in super-resolution papers).
"""
import torch


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return (x.float() + 1) / 2


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for [0, 1] images, shape (N,). Identical images are capped at 100 dB."""
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).clamp(max=100.0)


def mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image mean absolute error, shape (N,), in the units of the inputs."""
    return (pred.float() - target.float()).abs().flatten(1).mean(1)


@torch.no_grad()
def evaluate(generator, a: torch.Tensor, b: torch.Tensor, baseline=None, batch_size: int = 256,
             autocast_dtype=None) -> dict:
    """Model (and optionally baseline) metrics over fixed evaluation pairs in [-1, 1].

    The generator is put in eval mode (BatchNorm running statistics, no dropout) and restored
    to its previous mode afterwards. `baseline(a)` returns the trivial answer to compare with.
    """
    was_training = generator.training
    generator.eval()
    sums = {}
    try:
        for i in range(0, len(a), batch_size):
            ai, bi = a[i:i + batch_size], b[i:i + batch_size]
            with torch.autocast(ai.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out = generator(ai)
            preds = {"model": out.float()}
            if baseline is not None:
                preds["baseline"] = baseline(ai).float()
            for who, pred in preds.items():
                for name, value in (("mae", mae(pred, bi)), ("psnr", psnr(to_unit(pred), to_unit(bi)))):
                    key = f"{who}_{name}"
                    sums[key] = sums.get(key, 0.0) + value.sum()
    finally:
        generator.train(was_training)
    return {k: float(v) / len(a) for k, v in sums.items()}
