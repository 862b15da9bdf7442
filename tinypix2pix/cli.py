"""Command line: `tinypix2pix train | info | eval | translate | export | import-official` (and `python train.py ...` = `tinypix2pix train ...`).

Each command is a (add_arguments, run) pair in COMMANDS. Mistakes a user can fix end with a
one-line `error: ...` and a non-zero exit code, never a traceback.
"""
import argparse
import sys

from .config import add_arguments, from_args
from .errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (not usage + error)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def add_train(p: argparse.ArgumentParser) -> None:
    add_arguments(p)


def run_train(args, argv) -> int:
    cfg = from_args(args)  # before importing torch, so a typo fails in a fraction of a second
    from . import engine

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


TRANSLATE_HELP = """Translate image files with a trained generator: one PNG per input under --out (same
relative path; a.png and a.jpg in one folder become a_png.png and a_jpg.png) and an index.html
page showing input | output (| target) side by side. Any image size works (padded to a multiple
of 2**depth by reflection, cropped back); grayscale, palette, RGBA (onto white) and 16-bit files
are read; unreadable files are listed and skipped.

Which images are inputs: by default (--task none) your images ARE the model's inputs, as for
real use: gray photos into a colorize model, blurry ones into a deblur model, edge drawings into
an edges model. Channels are matched where that is unambiguous (a 1-channel model gets the
luma of colour images, a 3-channel model gets gray images replicated); otherwise (e.g. an
inpainting model's image + mask) you are asked for --task. To test a model on clean images,
give --task NAME (or --task trained, the task recorded in the checkpoint): the task makes the
input from each image first (colour -> gray for colorize, noise for denoise, holes + mask for
inpaint; randomness fixed by --seed and the file name) and the page then shows the clean image
as the target."""


def add_translate(p: argparse.ArgumentParser) -> None:
    p.description = TRANSLATE_HELP
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (searched recursively) or globs")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="generator_*.safetensors, generator_epoch_N.pt (with options.json beside it), "
                        "train_state_*.pt, an official latest_net_G.pth, or a model folder")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (inputs are never overwritten)")
    p.add_argument("--task", default="none", metavar="NAME",
                   help="none (default: images are the model's inputs), trained (the checkpoint's task), or a task "
                        "name (identity, colorize, superres, denoise, inpaint, deblur, edges) applied to clean images first")
    p.add_argument("--task-arg", action="append", metavar="K=V", default=None,
                   help="task parameter (repeatable); with --task trained, the recorded ones are the default")
    p.add_argument("--batch-size", type=int, default=16, help="images of equal size per forward pass (default: 16)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the task's randomness (default: 0)")


def run_translate(args, argv) -> int:
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    if args.task_arg and args.task == "none":
        raise UserError("--task-arg needs a --task (NAME or trained) to apply to")
    from . import infer
    from .translate_files import translate_files

    model = infer.load_generator(args.checkpoint, device=args.device)
    task = infer.resolve_task(model, args.task, args.task_arg)
    recorded = model.info.get("task", "identity")
    if task is None and recorded not in ("identity", "pairing"):
        print(f"note: the images are used as the model's inputs; to test the {recorded} model on clean images, "
              f"pass --task {recorded}", file=sys.stderr)
    result = translate_files(model, args.inputs, args.out, task=task, batch_size=args.batch_size,
                                   seed=args.seed, log=lambda m: print(m, file=sys.stderr))
    n, k = len(result["written"]), len(result["skipped"])
    print(f"translated {n} image(s) into {args.out}{f', skipped {k}' if k else ''}; page: {result['html']}")
    return 0 if n else 1


def add_eval(p: argparse.ArgumentParser) -> None:
    from . import evaluation

    evaluation.add_arguments(p)


def run_eval(args, argv) -> int:
    from . import evaluation

    return evaluation.main(args)


def add_export(p: argparse.ArgumentParser) -> None:
    p.description = ("Export a generator to one self-contained file. It takes (N, C_in, H, W) float32 in [-1, 1], "
                     "H and W multiples of 2**depth (batch and size are dynamic), and returns (N, C_out, H, W) in "
                     "[-1, 1]. Before the file is written it is run (onnxruntime / torch.jit.load) at the example "
                     "shape and at a different batch and size, and compared to PyTorch: the max abs difference is "
                     "printed, and above 1e-4 the export fails (exit 1) and nothing is written.")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="any checkpoint translate accepts")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript"],
                   help="onnx (dynamic batch and size, checked with onnxruntime; needs the [onnx] extra) or "
                        "torchscript (torch.jit.trace, checked by reloading) (default: onnx)")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write (atomically, only after the check passes)")
    p.add_argument("--image-size", type=int, default=0,
                   help="size of the example input (default: the training size); any multiple of 2**depth runs after")
    p.add_argument("--batch-size", type=int, default=2, help="batch of the example input (default: 2)")


def run_export(args, argv) -> int:
    from . import checkpoint, export, infer

    checkpoint.check_not_checkpoint(args.out, args.checkpoint)
    model = infer.load_generator(args.checkpoint, device="cpu")
    try:
        r = export.export(model, args.out, args.format, args.image_size, args.batch_size)
    except export.ExportCheckFailed as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    checks = ", ".join(f"{'x'.join(map(str, s))}: {d:.2g}" for s, d in r["checks"])
    print(f"wrote {r['path']} ({r['format']}, {r['bytes'] / 1e6:.2f} MB): input (N, {model.in_channels}, H, W) "
          f"float32 in [-1, 1], H and W multiples of {r['size_multiple']}; output (N, {model.out_channels}, H, W)")
    runner = "onnxruntime" if r["format"] == "onnx" else "torch.jit.load"
    print(f"check ({runner} vs PyTorch): max abs difference {max(d for _, d in r['checks']):.2g} "
          f"(limit {export.TOLERANCE:g}; {checks})")
    return 0


def add_import_official(p: argparse.ArgumentParser) -> None:
    p.description = ("Convert a U-Net generator saved by the official pix2pix code (junyanz/pytorch-CycleGAN-and-"
                     "pix2pix, latest_net_G.pth: any number of down-samplings, any ngf, batch or instance norm) into "
                     "this project's safetensors + JSON. The configuration is read from the keys and shapes.")
    p.add_argument("path", metavar="PATH", help="the official state_dict (.pth), loaded with weights_only=True")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for <name>.safetensors and <name>.json")
    p.add_argument("--name", default=None, help="file name stem (default: the input's, e.g. latest_net_G)")
    p.add_argument("--dropout", type=float, default=None,
                   help="dropout of the middle blocks; not stored in a state_dict and used only in train mode "
                        "(default: the official 0.5 when depth > 5)")


def run_import_official(args, argv) -> int:
    from . import official
    from .models import count_parameters

    path, info, model = official.import_official(args.path, args.out, args.name, args.dropout)
    g = info["generator"]
    print(f"official U-Net: depth {g['depth']} (1x1 bottleneck at {2 ** g['depth']} px), ngf {g['ngf']}, "
          f"{g['in_channels']} -> {g['out_channels']} channels, {g['norm']} norm, "
          f"{count_parameters(model) / 1e6:.2f} M parameters")
    print(f"wrote {path} and {path.with_suffix('.json')}; use: tinypix2pix translate --checkpoint {path} INPUT --out DIR")
    return 0


COMMANDS = {
    "train": (add_train, run_train, "train a pix2pix model"),
    "info": (add_info, run_info, "print versions and model sizes"),
    "eval": (add_eval, run_eval, "PSNR, SSIM and MAE of a generator on a test split, beside the trivial baseline"),
    "translate": (add_translate, run_translate, "translate image files and folders with a trained generator"),
    "export": (add_export, run_export, "export a generator to ONNX or TorchScript, checked against PyTorch"),
    "import-official": (add_import_official, run_import_official,
                        "convert an official pix2pix U-Net checkpoint (latest_net_G.pth)"),
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
