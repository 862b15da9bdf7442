"""Command line: `tinypix2pix train | info` (and `python train.py ...` = `tinypix2pix train ...`).

Each command is a (add_arguments, run) pair in COMMANDS. Mistakes a user can fix end with a
one-line `error: ...` and a non-zero exit code, never a traceback.
"""
import argparse
import sys

from .config import TrainConfig, add_arguments, from_args
from .errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (not usage + error)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def add_train(p: argparse.ArgumentParser) -> None:
    add_arguments(p)


def run_train(args, argv) -> int:
    from . import engine

    cfg = from_args(args)
    explicit = set(vars(_given_flags(argv)))
    try:
        engine.train(cfg, explicit)
    except engine.TrainingInterrupted as e:
        print(e, file=sys.stderr, flush=True)
        return 128 + e.signum
    except engine.NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


def _given_flags(argv) -> argparse.Namespace:
    """The train flags present on the command line (to know what a resume overrides)."""
    p = Parser(add_help=False)
    add_arguments(p, suppress=True)
    known, _ = p.parse_known_args(argv)
    return known


def add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-size", type=int, default=32, help="image size for the model summary (default: 32)")


def run_info(args, argv) -> int:
    """Versions, devices and the default models' sizes: what to paste into a bug report."""
    import torch

    from . import __version__
    from .models import PatchGANDiscriminator, UNetGenerator, Pix2PixUNet, count_parameters

    print(f"tinypix2pix {__version__}, torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    for name, g in (("seed U-Net", UNetGenerator()), ("pix2pix U-Net", Pix2PixUNet())):
        print(f"{name:>14}: {count_parameters(g) / 1e6:.2f} M parameters")
    for n in (1, 2, 3):
        d = PatchGANDiscriminator(n_layers=n)
        print(f"PatchGAN n={n}: {count_parameters(d) / 1e6:.2f} M parameters, {d.output_size(args.image_size)}^2 "
              f"logits, receptive field {d.receptive_field()} px")
    return 0


COMMANDS = {
    "train": (add_train, run_train, "train a pix2pix model"),
    "info": (add_info, run_info, "print versions and model sizes"),
}


def main(argv=None, prog: str = "tinypix2pix") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = Parser(prog=prog, description="pix2pix for small images")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, (add, _, help_text) in COMMANDS.items():
        kw = {"prog": prog} if prog != "tinypix2pix" and name == "train" else {}  # train.py --help reads as train.py
        add(sub.add_parser(name, help=help_text, description=help_text, **kw))
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][1](args, argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130


def train_main() -> None:
    """Entry point of train.py: the seed's interface, i.e. `tinypix2pix train`."""
    raise SystemExit(main(["train", *sys.argv[1:]], prog="train.py"))
