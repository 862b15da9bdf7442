"""Image-quality metrics: PSNR and SSIM on [0, 1] images, MAE in the seed's [-1, 1] units.

All three are computed per image and averaged (the usual convention in super-resolution
papers). SSIM comes from torchmetrics (Gaussian 11x11 window, sigma 1.5, as in Wang et al.
2004), imported only when asked for because the import takes seconds.
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


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM for [0, 1] images, shape (N,). The window shrinks for images under 11 px."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    side = min(pred.shape[-2:])
    kernel = 11 if side >= 11 else max(1, side - (1 - side % 2))  # odd, at most the image side
    if kernel == 11:  # the standard window: Gaussian, sigma 1.5
        window = {}
    elif kernel >= 3:  # torchmetrics sizes a Gaussian window from sigma alone: 2 * int(3.5 sigma + 0.5) + 1
        window = {"sigma": (kernel - 1) / 7}
    else:
        window = {"gaussian_kernel": False, "kernel_size": 1}
    return structural_similarity_index_measure(pred.float(), target.float(), data_range=1.0, reduction="none", **window)


METRICS = {"mae": lambda p, t: mae(p, t), "psnr": lambda p, t: psnr(to_unit(p), to_unit(t)),
           "ssim": lambda p, t: ssim(to_unit(p).clamp(0, 1), to_unit(t).clamp(0, 1))}


@torch.no_grad()
def evaluate(generator, a: torch.Tensor, b: torch.Tensor, baseline=None, batch_size: int = 256,
             autocast_dtype=None, metrics=("mae", "psnr")) -> dict:
    """Model (and optionally baseline) metrics over fixed evaluation pairs in [-1, 1].

    Returns {"model_mae": ..., "model_psnr": ..., "baseline_mae": ...} for the names in
    `metrics` (mae, psnr, ssim). The generator is put in eval mode (BatchNorm running
    statistics, no dropout) and restored to its previous mode afterwards. `baseline(a)`
    returns the trivial answer to compare with.
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
                for name in metrics:
                    key = f"{who}_{name}"
                    sums[key] = sums.get(key, 0.0) + METRICS[name](pred, bi).sum()
    finally:
        generator.train(was_training)
    return {k: float(v) / len(a) for k, v in sums.items()}
