"""The training loop: D then G each step, as in the paper, plus what makes a run dependable.

`train(cfg)` does everything a run needs: device and data set-up, the models, the loop,
per-epoch evaluation, samples, checkpoints and exact resume. The CLI only builds the config.

Speed by construction: the data split lives on the device as one uint8 tensor; each step
samples indices, augments and corrupts with batched tensor ops; losses stay on the device
and are read back only at log intervals (CPU runs also check them every step, which costs
nothing there). Multi-process runs use torchrun + DistributedDataParallel (see README).

The GAN and its step are gan.py's, the batches batches.py's. Test hooks: TINYPIX2PIX_FAULT_NAN_STEP
(see gan.py); TINYPIX2PIX_DUMP_RANK_STATE=DIR makes every rank save its own G and D state dicts to
DIR/rank<R>.pt when training ends (to check that the replicas of a torchrun run agree).
"""
import dataclasses
import json
import math
import os
import random
import signal
import time
from contextlib import closing
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint as ckpt
from . import dist
from .config import TrainConfig, changed_from_default
from .batches import TrainBatches, epoch_order
from .data import ImageData, load_source
from .devices import resolve_device, resolve_precision
from .gan import Pix2Pix
from .errors import UserError
from .images import sample_grid, save_png, to_model
from .metrics import evaluate
from .models import PatchGANDiscriminator, build_generator, count_parameters, generator_config
from .tasks import Pairing, build_task

EVAL_SEED = 1234  # fixes the corruption of the evaluation pairs in every run
N_SAMPLES = 8  # test images shown in each epoch's sample grid
# Fields that may differ when resuming; every other field must match the saved run.
# in_memory: streamed and device-held splits give the same batches.
RESUME_MUTABLE = {"epochs", "epochs_decay", "max_steps", "model_dir", "device", "log_interval", "save_every",
                  "num_workers", "resume", "eval_images", "dry_run", "nan_policy", "max_nan_skips", "dataset_root",
                  "compile", "max_seconds", "in_memory"}


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; the state was saved. The CLI exits with 128 + signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class NonFiniteLoss(UserError):
    pass


# --- resume -----------------------------------------------------------------------------------

def merge_resume_config(saved: dict, cfg: TrainConfig, explicit: set) -> TrainConfig:
    """The saved run's settings, updated with flags given now; changing a setting that would
    make the resumed run a different run is an error naming the flag."""
    merged = TrainConfig(**{**cfg.to_dict(), **{k: v for k, v in saved.items() if k in cfg.to_dict()}})
    for name in explicit:
        now, before = getattr(cfg, name), saved.get(name)
        if name not in RESUME_MUTABLE and now != before:
            raise UserError(f"--{name.replace('_', '-')} {now} differs from the run being resumed ({before}); "
                            f"resume with the same setting or start a new --model-dir")
        setattr(merged, name, now)
    for name in ("model_dir", "resume"):  # not device: a CPU run resumes on the CPU unless --device says otherwise
        setattr(merged, name, getattr(cfg, name))
    return merged.validate()


def rng_state(data_gen: torch.Generator) -> dict:
    s = {"python": random.getstate(), "torch": torch.get_rng_state(), "data": data_gen.get_state(),
         "data_device": str(data_gen.device)}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict, data_gen: torch.Generator) -> None:
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in s["python"]))
    torch.set_rng_state(s["torch"])
    if s.get("data_device") == str(data_gen.device):
        data_gen.set_state(s["data"])
    else:
        dist.warn0(f"warning: the state was saved on {s.get('data_device')}, resuming on {data_gen.device}: "
                   f"data sampling continues, but not bit-identically")
    if "cuda" in s and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])


# --- the run ----------------------------------------------------------------------------------

class _Signals:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, saves and stops."""

    def __init__(self):
        self.received = None
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a notebook worker)
                pass
        return self

    def _handle(self, signum, frame):
        if self.received is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def prepare_data(cfg: TrainConfig, device, in_memory: str = None):
    """Load the source, build the task and the fixed evaluation pairs (in_memory overrides
    cfg.in_memory: evaluation streams the training split it never reads)."""
    data: ImageData = load_source(cfg.dataset, cfg.dataset_root, cfg.image_size, num_workers=cfg.num_workers,
                                  in_memory=in_memory or cfg.in_memory)
    if data.paired:
        if cfg.task != "identity":
            raise UserError(f"--dataset {cfg.dataset} holds its own pairs; leave --task at identity (got {cfg.task!r})")
        if cfg.direction == "BtoA":
            data.swap_ab()
        task = Pairing()
    else:
        task = build_task(cfg.task, cfg.task_arg)
    if len(data.test_b) == 0:
        raise UserError(f"{cfg.dataset}: the test split is empty")
    test_b = data.test_b if not cfg.eval_images else data.test_b[: cfg.eval_images]
    # Corrupted on the CPU, once: CUDA's generator draws other numbers for the same seed, and the
    # pairs must be the same wherever a model is trained or evaluated.
    g = torch.Generator().manual_seed(EVAL_SEED)
    eval_b, eval_a = [], []
    for i in range(0, len(test_b), 1024):
        b = to_model(test_b[i:i + 1024].cpu())
        eval_b.append(b.to(device))
        eval_a.append(to_model(data.test_a[i:i + 1024].cpu()).to(device) if data.paired else task(b, g).to(device))
    return data, task, torch.cat(eval_a), torch.cat(eval_b)


def check_sizes(cfg: TrainConfig) -> None:
    """--image-size must suit both networks: a multiple of 2**depth for G, logits left for D."""
    if cfg.image_size % 2 ** cfg.depth:  # raises with the nearest valid sizes
        build_generator(generator_config(cfg.generator, ngf=cfg.ngf, depth=cfg.depth)).check_size(cfg.image_size, cfg.image_size)
    if PatchGANDiscriminator.grid_size(cfg.image_size, cfg.disc_layers) < 1:
        fits = [n for n in range(1, cfg.disc_layers) if PatchGANDiscriminator.grid_size(cfg.image_size, n) >= 1]
        raise UserError(f"--disc-layers {cfg.disc_layers} is too deep for {cfg.image_size} px images; "
                        + (f"use --disc-layers {fits[-1]} or less" if fits else "use a larger --image-size"))


def train(cfg: TrainConfig, explicit: set = frozenset()) -> dict:
    """Run training as configured; returns the last epoch's metrics."""
    device = resolve_device(cfg.device)
    dist.init(device.type)
    try:
        return _train(cfg, explicit, device)
    finally:
        dist.cleanup()


def _train(cfg: TrainConfig, explicit: set, device) -> dict:
    rank, world = dist.rank(), dist.world_size()
    if world > 1 and device.type == "cuda":
        if dist.local_rank() >= torch.cuda.device_count():
            raise UserError(f"torchrun started process {dist.local_rank()} of this machine, but it has "
                            f"{torch.cuda.device_count()} GPU(s): use --nproc_per_node={torch.cuda.device_count()} or less")
        device = torch.device("cuda", dist.local_rank())
        torch.cuda.set_device(device)
    resumed = None
    if cfg.resume:
        path, state = ckpt.find_resume_state(cfg.resume, cfg.model_dir, warn=dist.warn0)
        if cfg.resume != "latest" and "model_dir" not in explicit and cfg.model_dir == TrainConfig().model_dir:
            cfg = dataclasses.replace(cfg, model_dir=str(path.parent))  # continue beside the state, not in ./models
        cfg = merge_resume_config(state["config"], cfg, explicit)
        resumed = (path, state)
    out = Path(cfg.model_dir)
    if dist.is_main():
        ckpt.check_writable(out)
        if not resumed:
            ckpt.check_no_run(out)
        ckpt.remove_temp_files(out)  # what a killed run was writing when it died
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    check_sizes(cfg)  # before loading anything
    with dist.local_main_first():  # under torchrun, one process per machine downloads CIFAR
        data, task, eval_a, eval_b = prepare_data(cfg, device)
    # Seeded after loading, so that nothing a source does (DataLoader workers draw seeds from the
    # global generator) changes the initial weights. Per-rank seeds: different dropout per process.
    random.seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed + rank)
    data_gen = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + rank)
    in_ch, out_ch = eval_a.shape[1], data.channels
    residual = {"on": True, "off": False, "auto": task.residual_default}[cfg.residual]
    if residual and in_ch < out_ch and in_ch != 1:
        raise UserError(f"--residual on needs the input to have the output's {out_ch} channels (or 1); it has {in_ch}")
    gen_cfg = generator_config(cfg.generator, in_ch, out_ch, cfg.ngf, cfg.depth, cfg.norm, cfg.dropout, residual)
    steps_per_epoch = data.num_train // (cfg.batch_size * world)
    if steps_per_epoch == 0:
        raise UserError(f"{cfg.dataset} has {data.num_train} training images, fewer than one batch "
                        f"(--batch-size {cfg.batch_size} x {world} process(es))")
    autocast_dtype = resolve_precision(cfg.precision, device)
    channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type in ("cuda", "cpu"))
    model = Pix2Pix(cfg, gen_cfg, device, autocast_dtype, channels_last)
    total_epochs = cfg.epochs + cfg.epochs_decay

    dist.print0(f"device {device} ({world} process(es)), precision {cfg.precision if autocast_dtype else 'fp32'}"
                f"{', compiled' if cfg.compile else ''}")
    dist.print0(f"data   {data.describe()}; task {task.name}; {steps_per_epoch} steps/epoch of {cfg.batch_size}")
    dist.print0(f"G      {cfg.generator} U-Net, {count_parameters(model.G) / 1e6:.2f} M parameters "
                f"({in_ch} -> {out_ch} channels, residual {'on' if residual else 'off'})")
    grid, rf = model.D.output_size(cfg.image_size), model.D.receptive_field()
    scope = "sees the whole image" if rf >= cfg.image_size else "judges patches"
    dist.print0(f"D      PatchGAN, {count_parameters(model.D) / 1e6:.2f} M parameters, {grid}x{grid} logits at "
                f"{cfg.image_size} px, receptive field {rf} px ({scope})")
    if cfg.dry_run:
        dist.print0(json.dumps(cfg.to_dict(), indent=2))
        return {}

    epoch, epoch_step, step, best, nan_skips = 0, 0, 0, -math.inf, 0
    epoch_skips = 0  # steps of this epoch dropped by --nan-policy skip: not in the epoch's mean losses
    sums = torch.zeros(3, device=device)
    if resumed:
        path, state = resumed
        epoch, epoch_step, step = state["epoch"], state["epoch_step"], state["step"]
        saved_world = len(state["ranks"])
        if saved_world != world and epoch_step:
            raise UserError(f"{path} was saved in the middle of an epoch by {saved_world} process(es); resume it with "
                            f"{saved_world} (or from a state saved at an epoch end)")
        model.load_state_dict(state)
        best, nan_skips, epoch_skips = state["best_psnr"], state["nan_skips"], state.get("epoch_nan_skips", 0)
        if saved_world == world:  # each rank continues its own sampling, loss sums and BatchNorm statistics
            mine = state["ranks"][rank]
            set_rng_state(mine["rng"], data_gen)
            sums = mine["loss_sums"].to(device)
            model.load_buffers(mine["buffers"])
        else:  # at an epoch end the models agree; each rank starts fresh random streams
            random.seed(cfg.seed + rank + 1_000_003 * step)
            torch.manual_seed(cfg.seed + rank + 1_000_003 * step)
            data_gen.manual_seed(cfg.seed * 7919 + rank + 1_000_003 * step)
            dist.warn0(f"warning: the state was saved by {saved_world} process(es), this run has {world}: "
                       f"training continues, but not bit-identically")
        dist.print0(f"resumed from {path} at epoch {epoch + 1}, step {step}")
    if resumed and (epoch >= total_epochs or (cfg.max_steps and step >= cfg.max_steps)):
        more = ("--epochs (or --epochs-decay)" if epoch >= total_epochs else "--max-steps (0: all epochs)")
        dist.print0(f"nothing to do: the run in {out} has done {epoch} of {total_epochs} epochs and {step} steps; "
                    f"resume with a larger {more} to train on")
        return {}  # before anything in the folder is rewritten
    if dist.is_main():
        ckpt.save_json({"config": cfg.to_dict(), "changed_from_default": changed_from_default(cfg),
                        "generator": gen_cfg}, out / "options.json")
        _trim_metrics(out / "metrics.jsonl", keep_before=epoch + 1)

    def check_losses_finite():
        """Every loss since the epoch began (GPU runs check single steps only every check_every)."""
        if dist.any_rank(int(not torch.isfinite(sums).all().item())):
            raise NonFiniteLoss(f"non-finite loss in epoch {epoch + 1} before step {step + 1}; the last good training "
                                f"state in {out} was kept; lower --learning-rate or try --precision fp32")

    def save_training_state():
        check_losses_finite()  # never write a state that holds NaN weights
        ranks = dist.all_gather_object({"rng": rng_state(data_gen), "loss_sums": sums.cpu().clone(),
                                        "buffers": model.buffers_state()})
        if dist.is_main():
            ckpt.save_state({**model.state_dict(), "config": cfg.to_dict(), "generator_config": gen_cfg,
                             "epoch": epoch, "epoch_step": epoch_step, "step": step, "best_psnr": best,
                             "nan_skips": nan_skips, "epoch_nan_skips": epoch_skips, "ranks": ranks}, out, step)

    check_every = 1 if device.type == "cpu" or cfg.nan_policy == "skip" else cfg.log_interval
    last = {}
    batches = TrainBatches(data, task, cfg, device, data_gen, channels_last)
    run_t0 = time.perf_counter()

    def out_of_time() -> bool:
        """--max-seconds, decided by all ranks together (their clocks differ)."""
        return bool(cfg.max_seconds) and bool(dist.any_rank(int(time.perf_counter() - run_t0 >= cfg.max_seconds)))

    with _Signals() as signals, closing(batches):
        while epoch < total_epochs:
            order = epoch_order(data.num_train, epoch, cfg.seed, cfg.batch_size, rank, world)
            pairs = batches.epoch(order, epoch_step)
            t0, images, stop = time.perf_counter(), 0, False
            bar = tqdm(total=steps_per_epoch, initial=epoch_step, desc=f"epoch {epoch + 1}/{total_epochs}",
                       disable=None if dist.is_main() else True, leave=False, dynamic_ncols=True)
            while epoch_step < steps_per_epoch:
                if (cfg.max_steps and step >= cfg.max_steps) or out_of_time():
                    stop = True
                    break
                a, b = next(pairs)
                check = (step + 1) % check_every == 0
                losses = model.step(a, b, step + 1, check_finite=check)
                if check and model.skipped:
                    names = ", ".join(f"{n}={v:.4g}" for n, v in zip(("loss_d", "loss_g_gan", "loss_g_l1"), losses.tolist()))
                    if cfg.nan_policy == "stop" or nan_skips + 1 > cfg.max_nan_skips:
                        why = "" if cfg.nan_policy == "stop" else f" ({nan_skips} steps skipped already, --max-nan-skips {cfg.max_nan_skips})"
                        bar.close()
                        raise NonFiniteLoss(f"non-finite loss at step {step + 1} ({names}){why}; the last good training "
                                            f"state in {out} was kept; lower --learning-rate or try --precision fp32")
                    nan_skips, epoch_skips = nan_skips + 1, epoch_skips + 1
                    dist.warn0(f"warning: step {step + 1} skipped: non-finite loss ({names}); {nan_skips} skipped so far")
                    losses = torch.zeros_like(losses)
                sums += losses
                step, epoch_step, images = step + 1, epoch_step + 1, images + cfg.batch_size * world
                bar.update(1)
                if step % cfg.log_interval == 0:
                    d, gg, l1 = dist.all_reduce_mean(losses).tolist()
                    bar.set_postfix(loss_d=f"{d:.3f}", loss_g=f"{gg:.3f}", l1=f"{l1:.4f}")
                    if dist.is_main():
                        tqdm.write(f"step {step:>7} | epoch {epoch + 1} | loss_d {d:.4f} | loss_g_gan {gg:.4f} | "
                                   f"loss_g_l1 {l1:.4f} | {images / (time.perf_counter() - t0):.0f} img/s")
                if cfg.save_every and step % cfg.save_every == 0:
                    save_training_state()
                if _stop_requested(signals):
                    bar.close()
                    save_training_state()
                    name = signal.Signals(signals.received).name
                    how = (f"python train.py --resume --model-dir {out}" if world == 1
                           else "the same torchrun command with --resume added")
                    raise TrainingInterrupted(signals.received, f"{name} received: stopped after step {step}, training "
                                              f"state saved in {out}; resume with: {how}")
            bar.close()
            seconds = time.perf_counter() - t0
            if stop and epoch_step == 0:
                break  # --max-steps/--max-seconds reached exactly at an epoch end: that epoch was already recorded
            # --- end of epoch (or of a --max-steps/--max-seconds run): evaluate, record, save ---------
            if stop:  # before sync_buffers, so that a resumed run continues from each rank's own statistics
                save_training_state()
            check_losses_finite()
            model.sync_buffers()
            done = epoch_step / steps_per_epoch
            mean = (dist.all_reduce_mean(sums) / max(epoch_step - epoch_skips, 1)).tolist()  # all ranks' kept steps
            result = {"epoch": epoch + 1, "step": step, "loss_d": mean[0], "loss_g_gan": mean[1], "loss_g_l1": mean[2],
                      "lr": model.opt_g.param_groups[0]["lr"], "seconds": round(seconds, 3),
                      "images_per_sec": round(images / seconds, 1) if seconds > 0 else None}
            if done < 1:
                result["partial_epoch"] = round(done, 4)
            if dist.is_main():
                metrics = evaluate(model.G, eval_a, eval_b, baseline=lambda x: task.baseline(x, out_ch),
                                   autocast_dtype=autocast_dtype)
                result.update(test_mae=metrics["model_mae"], test_psnr=metrics["model_psnr"],
                              baseline_psnr=metrics["baseline_psnr"])
                result["nan_skips"] = nan_skips
                _record_epoch(out, result, model, gen_cfg, cfg, eval_a, eval_b, best)
                best = max(best, result["test_psnr"])
                dist.print0(f"epoch {epoch + 1} | step {step} | test MAE {result['test_mae']:.4f} | test PSNR "
                            f"{result['test_psnr']:.2f} dB | {result['seconds']:.1f} s | {result['images_per_sec']} img/s")
            last = result
            if stop:
                break
            model.sched_g.step()
            model.sched_d.step()
            epoch, epoch_step, epoch_skips = epoch + 1, 0, 0
            sums.zero_()
            save_training_state()
            dist.barrier()
            resumed = None
    if os.environ.get("TINYPIX2PIX_DUMP_RANK_STATE"):  # test hook, see the module docstring
        ckpt.save_torch({"generator": model.G.state_dict(), "discriminator": model.D.state_dict()},
                        Path(os.environ["TINYPIX2PIX_DUMP_RANK_STATE"]) / f"rank{rank}.pt")
    return last


def _stop_requested(signals: _Signals) -> bool:
    """Every rank stops at the same step: under torchrun the flag is combined across ranks."""
    received = dist.any_rank(signals.received or 0)
    if received and signals.received is None:
        signals.received = received
    return bool(received)


def _trim_metrics(path: Path, keep_before: int) -> None:
    """On resume, drop lines of epochs that will be re-run, so each epoch is recorded once."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("epoch", 0) < keep_before:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    ckpt.atomic_write(path, lambda f: f.write("".join(l + "\n" for l in keep).encode()))


def _record_epoch(out: Path, result: dict, model: Pix2Pix, gen_cfg: dict, cfg: TrainConfig, eval_a, eval_b, best: float):
    """metrics.jsonl line, sample grid, seed-style weights, inference weights (last and best)."""
    n = result["epoch"]
    lines = (out / "metrics.jsonl").read_bytes() if (out / "metrics.jsonl").exists() else b""
    ckpt.atomic_write(out / "metrics.jsonl", lambda f: f.write(lines + json.dumps(result).encode() + b"\n"))
    model.G.eval()
    with torch.no_grad():
        fake = model.G(eval_a[:N_SAMPLES]).float()
    model.G.train()
    save_png(sample_grid(eval_a[:N_SAMPLES], fake, eval_b[:N_SAMPLES]), out / "samples" / f"epoch_{n:03d}.png")
    ckpt.save_torch(model.G.state_dict(), out / f"generator_epoch_{n}.pt")
    ckpt.save_torch(model.D.state_dict(), out / f"discriminator_epoch_{n}.pt")
    paired = cfg.dataset.startswith(("aligned:", "paired:"))  # real pairs: no task made the inputs
    info = {"generator": gen_cfg, "task": "pairing" if paired else cfg.task, "task_args": list(cfg.task_arg or []),
            "dataset": cfg.dataset,
            "direction": cfg.direction, "image_size": cfg.image_size, "epoch": n, "step": result["step"],
            "test_psnr": result["test_psnr"], "test_mae": result["test_mae"]}
    ckpt.save_inference(model.G, info, out / "generator_last")
    if result["test_psnr"] > best:
        ckpt.save_inference(model.G, info, out / "generator_best")
