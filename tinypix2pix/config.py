"""The training configuration: one dataclass, every default with its reason.

`train.py --help` is generated from these fields, so a default lives in exactly one
place. Flags are kebab-case (`--batch-size`), fields snake_case (`batch_size`).
"""
import argparse
import dataclasses
import math
from dataclasses import dataclass, field

from .errors import UserError


def _opt(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # --- data --------------------------------------------------------------------------
    dataset: str = _opt("cifar10", "data source: cifar10, cifar100, photos, fake, folder:PATH, aligned:PATH, paired:PATH_A,PATH_B")
    dataset_root: str = _opt("./data", "where cifar10/cifar100 are downloaded to (and read from)")
    task: str = _opt("identity", "what makes the input A from each image B: identity (the seed's demonstration: A = B), colorize, superres, denoise, inpaint, deblur, edges")
    task_arg: list = _opt(None, "task parameter k=v (repeatable), e.g. --task-arg factor=4 for superres; an unknown key lists the task's parameters", action="append", metavar="K=V")
    direction: str = _opt("AtoB", "for aligned:/paired: data, which side is the input", choices=["AtoB", "BtoA"])
    image_size: int = _opt(32, "training image size in pixels (must be divisible by 2**depth of the generator)")
    augment: str = _opt("flip", "training augmentation on the device: none, flip, or flip+crop (pad 4, random crop)", choices=["none", "flip", "flip+crop"])
    num_workers: int = _opt(2, "worker processes that decode image folders (and stream those too large to keep on the device)")
    in_memory: str = _opt("auto", "keep the decoded training split on the device as one uint8 tensor: auto (when it fits), on, off (stream from files)", choices=["auto", "on", "off"])
    # --- models ------------------------------------------------------------------------
    generator: str = _opt("seed", "generator design: seed (3x3 double conv U-Net, 16..256) or pix2pix (paper's 4x4 stride-2 U-Net)", choices=["seed", "pix2pix"])
    ngf: int = _opt(0, "generator base width (0 = design default: 16 for seed, 64 for pix2pix)")
    depth: int = _opt(5, "generator down-samplings; 5 takes 32 px to a 1x1 bottleneck")
    norm: str = _opt("batch", "normalisation in both networks", choices=["batch", "instance"])
    dropout: float = _opt(-1.0, "generator dropout near the bottleneck (-1 = design default: 0 seed, 0.5 pix2pix)")
    residual: str = _opt("auto", "predict out = clamp(input + G(input)): auto (per task), on, off", choices=["auto", "on", "off"])
    disc_layers: int = _opt(3, "PatchGAN depth: 3 = seed (70 px field), 2 = 34 px, 1 = 16 px")
    ndf: int = _opt(64, "discriminator base width")
    # --- optimisation ------------------------------------------------------------------
    epochs: int = _opt(1, "epochs at the full learning rate")
    epochs_decay: int = _opt(0, "extra epochs with the learning rate decaying linearly to 0 (paper's schedule; 0 = seed)")
    batch_size: int = _opt(4, "images per step (per process under torchrun)")
    learning_rate: float = _opt(2e-4, "Adam learning rate for both networks (paper)")
    beta1: float = _opt(0.5, "Adam beta1 (paper)")
    lambda_l1: float = _opt(100.0, "weight of the L1 term in the generator loss (paper)")
    max_steps: int = _opt(0, "stop after this many steps in total (0 = no limit); for smoke runs")
    max_seconds: float = _opt(0.0, "stop after this many seconds of training in this process (0 = no limit); runs that stop by time do not repeat exactly")
    # --- engine ------------------------------------------------------------------------
    device: str = _opt("cuda", "cuda, cuda:N, cpu, mps or auto; cuda falls back to cpu with a warning")
    precision: str = _opt("auto", "fp32, bf16, fp16 (autocast; weights stay fp32) or auto (bf16 on cuda, fp32 elsewhere)", choices=["auto", "fp32", "bf16", "fp16"])
    compile: bool = _opt(False, "torch.compile both networks (slow first step, faster after)")
    channels_last: str = _opt("auto", "channels_last memory format: auto (on for cuda and cpu; on a 2-core CPU ~15%% faster at batch 64, 4-13%% slower at 4-16), on, off", choices=["auto", "on", "off"])
    seed: int = _opt(42, "random seed; CPU runs with the same seed repeat exactly")
    # --- outputs -----------------------------------------------------------------------
    model_dir: str = _opt("models", "where checkpoints, samples and metrics.jsonl are written")
    log_interval: int = _opt(50, "print losses every N steps (losses are read from the device only then)")
    eval_images: int = _opt(0, "evaluate on at most this many test images each epoch (0 = the whole test split)")
    save_every: int = _opt(0, "also write the full training state every N steps (0 = at epoch ends only)")
    resume: str = _opt(None, "resume from PATH, or from the newest valid state in --model-dir when given without a value", nargs="?", const="latest", metavar="PATH")
    nan_policy: str = _opt("stop", "on a non-finite loss: stop (keep the last good state, exit 1) or skip the step", choices=["stop", "skip"])
    max_nan_skips: int = _opt(10, "with --nan-policy skip, stop after this many skipped steps")
    dry_run: bool = _opt(False, "print the resolved configuration and exit")

    def validate(self) -> "TrainConfig":
        """Reject values no run could use, with a message naming the flag."""
        positive = ["batch_size", "image_size", "log_interval", "depth", "disc_layers", "ndf"]
        non_negative = ["epochs", "epochs_decay", "max_steps", "num_workers", "eval_images", "save_every", "ngf", "max_nan_skips"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"--{flag(name)} must be positive, got {getattr(self, name)}")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise UserError(f"--{flag(name)} must be >= 0, got {getattr(self, name)}")
        if self.epochs + self.epochs_decay == 0:
            raise UserError("--epochs and --epochs-decay are both 0: nothing to train")
        for name in ("learning_rate", "beta1", "lambda_l1", "max_seconds", "dropout"):
            if not math.isfinite(getattr(self, name)):
                raise UserError(f"--{flag(name)} must be a finite number, got {getattr(self, name)}")
        if self.max_seconds < 0:
            raise UserError(f"--max-seconds must be >= 0, got {self.max_seconds}")
        if self.learning_rate <= 0:
            raise UserError(f"--learning-rate must be positive, got {self.learning_rate}")
        if not 0 <= self.beta1 < 1:
            raise UserError(f"--beta1 must be in [0, 1), got {self.beta1}")
        if self.lambda_l1 < 0:
            raise UserError(f"--lambda-l1 must be >= 0, got {self.lambda_l1}")
        if self.dropout > 1:
            raise UserError(f"--dropout must be at most 1, got {self.dropout}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def flag(name: str) -> str:
    return name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls=TrainConfig, suppress: bool = False) -> None:
    """One argparse option per dataclass field, with the field's default and help text.

    suppress=True leaves unset flags out of the namespace (to learn which flags were given)."""
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        help_text = meta.pop("help")
        kwargs = {"dest": f.name, "default": f.default}
        if f.type is bool or isinstance(f.default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif "action" in meta or "nargs" in meta:
            kwargs.update(meta)
            meta = {}
        else:
            kwargs["type"] = type(f.default) if f.default is not None else str
        kwargs.update(meta)
        if kwargs.get("action") == "append":
            kwargs["default"] = None
        if suppress:
            kwargs["default"] = argparse.SUPPRESS
        shown = f.default if f.default not in (None, []) else "none"
        parser.add_argument(f"--{flag(f.name)}", help=f"{help_text} (default: {shown})", **kwargs)


def from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    if cfg.task_arg is None:
        cfg.task_arg = []
    return cfg.validate()


def changed_from_default(cfg: TrainConfig) -> dict:
    """Fields whose value differs from the default (marked in the saved options, as the official code does)."""
    default = TrainConfig()
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if getattr(cfg, f.name) != getattr(default, f.name) and not (f.name == "task_arg" and not cfg.task_arg)}
