"""`tinypix2pix eval`: a trained generator against the trivial baseline on a test split.

The evaluation pairs are built exactly as training builds them each epoch (same source,
same task, corruption fixed by engine.EVAL_SEED), so the numbers here match the `test_psnr`
in metrics.jsonl and compare across runs. The baseline is the task's trivial answer (the
input itself; bicubic up-sampling for super-resolution; gray for colorization): a model
that does not beat it has learned nothing useful.
"""
from pathlib import Path


from . import checkpoint as ckpt
from .config import TrainConfig
from .errors import UserError

METRIC_NAMES = ("psnr", "ssim", "mae")
LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "mae": "MAE [-1,1]"}


def evaluate_checkpoint(checkpoint, dataset=None, task=None, task_args=None, dataset_root="./data", image_size=None,
                        direction=None, device="cpu", eval_images=0, batch_size=256, precision="fp32") -> dict:
    """Load a generator, rebuild the test pairs of its task and return model/baseline/delta metrics.

    Arguments left as None come from the checkpoint's own record (what it was trained on)."""
    from .devices import resolve_device, resolve_precision
    from .engine import prepare_data
    from .infer import load_generator
    from .metrics import evaluate

    dev = resolve_device(device)
    model = load_generator(checkpoint, device=dev)
    info = model.info
    dataset = dataset or info.get("dataset")
    if not dataset:
        raise UserError(f"{checkpoint} does not record the data it was trained on; pass --dataset (and --task)")
    task = task or info.get("task") or "identity"
    if task == "pairing":  # trained on real (A, B) pairs: the data holds the inputs
        task = "identity"
    if task_args is None:
        task_args = list(info.get("task_args") or []) if task == info.get("task") else []
    cfg = TrainConfig(dataset=dataset, dataset_root=dataset_root, task=task, task_arg=list(task_args),
                      image_size=image_size or info.get("image_size") or 32,
                      direction=direction or info.get("direction") or "AtoB", eval_images=eval_images,
                      device=str(dev), num_workers=0).validate()
    _, task_obj, eval_a, eval_b = prepare_data(cfg, dev, in_memory="off")  # the train split: headers only
    want_in = model.in_channels
    if eval_a.shape[1] != want_in:
        raise UserError(f"task {task_obj.name!r} on {dataset} gives {eval_a.shape[1]}-channel inputs, but the model in "
                        f"{checkpoint} takes {want_in}; pass the --task (and --task-arg) it was trained with")
    out_ch = eval_b.shape[1]
    dtype = resolve_precision(precision, dev)
    m = evaluate(model, eval_a, eval_b, baseline=lambda a: task_obj.baseline(a, out_ch), batch_size=batch_size,
                 autocast_dtype=dtype, metrics=METRIC_NAMES)
    result = {
        "checkpoint": str(checkpoint), "dataset": dataset, "task": task_obj.name, "task_args": list(task_args),
        "direction": cfg.direction, "image_size": cfg.image_size, "n_images": len(eval_a), "eval_seed_fixed": True,
        "model": {k: m[f"model_{k}"] for k in METRIC_NAMES},
        "baseline": {k: m[f"baseline_{k}"] for k in METRIC_NAMES},
    }
    result["delta"] = {k: result["model"][k] - result["baseline"][k] for k in METRIC_NAMES}
    return result


def format_table(result: dict) -> str:
    """A fixed-width table: rows model / baseline / delta, columns PSNR, SSIM, MAE."""
    head = f"{'':<10}" + "".join(f"{LABELS[k]:>12}" for k in METRIC_NAMES)
    fmt = {"psnr": "{:>12.2f}", "ssim": "{:>12.4f}", "mae": "{:>12.4f}"}
    sign = {"psnr": "{:>+12.2f}", "ssim": "{:>+12.4f}", "mae": "{:>+12.4f}"}
    rows = [head]
    for who in ("model", "baseline", "delta"):
        f = sign if who == "delta" else fmt
        rows.append(f"{who:<10}" + "".join(f[k].format(result[who][k]) for k in METRIC_NAMES))
    title = (f"{result['dataset']} test split, task {result['task']}"
             f"{' ' + ' '.join(result['task_args']) if result['task_args'] else ''}, {result['n_images']} images "
             f"at {result['image_size']} px")
    return "\n".join([title, *rows])


def default_json_path(checkpoint) -> Path:
    p = Path(checkpoint)
    return p.with_name(p.stem + ".eval.json")


def main(args) -> int:
    """The `eval` command: print the table, write the JSON."""
    if args.eval_images < 0:
        raise UserError(f"--eval-images must be >= 0, got {args.eval_images}")
    if args.batch_size <= 0:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    if args.image_size is not None and args.image_size <= 0:
        raise UserError(f"--image-size must be positive, got {args.image_size}")
    out = Path(args.out) if args.out else default_json_path(args.checkpoint)
    ckpt.check_not_checkpoint(out, args.checkpoint)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give the JSON file to write, e.g. {out / 'eval.json'}")
    result = evaluate_checkpoint(args.checkpoint, dataset=args.dataset, task=args.task, task_args=args.task_arg,
                                 dataset_root=args.dataset_root, image_size=args.image_size, direction=args.direction,
                                 device=args.device, eval_images=args.eval_images, batch_size=args.batch_size,
                                 precision=args.precision)
    print(format_table(result))
    try:
        ckpt.save_json(result, out)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    print(f"wrote {out}")
    return 0


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True, help="generator_*.safetensors, generator_epoch_N.pt (with options.json "
                                                       "beside it), train_state_*.pt or an official latest_net_G.pth")
    p.add_argument("--dataset", default=None, help="data source (default: the one the checkpoint was trained on)")
    p.add_argument("--dataset-root", default="./data", help="where cifar10/cifar100 live (default: ./data)")
    p.add_argument("--task", default=None, help="task (default: the checkpoint's)")
    p.add_argument("--task-arg", action="append", default=None, metavar="K=V",
                   help="task parameter (default: the checkpoint's, when --task is its task)")
    p.add_argument("--image-size", type=int, default=None, help="evaluation image size (default: the training size)")
    p.add_argument("--direction", default=None, choices=["AtoB", "BtoA"], help="for aligned:/paired: data (default: the checkpoint's)")
    p.add_argument("--eval-images", type=int, default=0, help="at most this many test images (default: 0 = all)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: 256)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast dtype (default: fp32)")
    p.add_argument("--out", default=None, help="JSON file to write (default: <checkpoint>.eval.json beside the checkpoint)")
