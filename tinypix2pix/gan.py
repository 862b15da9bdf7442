"""The pix2pix GAN: generator, discriminator, their optimizers and one training step.

The step reads like the paper: (1) update D on (a, b) as real and (a, G(a)) as fake, loss
halved; (2) update G with BCE(D(a, G(a)), real) + lambda * L1(G(a), b). Losses stay on the
device (no host sync) unless the caller asks for a finiteness check.

Test hook: TINYPIX2PIX_FAULT_NAN_STEP=N (or N,M,...) makes D's loss of those global steps
non-finite; with a "g" suffix ("5g") G's loss instead, after D has stepped.
"""
import os
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import dist
from .config import TrainConfig
from .models import PatchGANDiscriminator, build_generator, init_weights, zero_last_layer


class Pix2Pix:
    """Generator, discriminator, their optimizers and one training step."""

    def __init__(self, cfg: TrainConfig, gen_cfg: dict, device, autocast_dtype, channels_last: bool):
        self.cfg, self.device, self.dtype = cfg, device, autocast_dtype
        self.G = build_generator(gen_cfg).to(device)
        self.D = PatchGANDiscriminator(gen_cfg["in_channels"] + gen_cfg["out_channels"], cfg.ndf,
                                       cfg.disc_layers, cfg.norm).to(device)
        init_weights(self.G)
        init_weights(self.D)
        if gen_cfg["residual"]:
            zero_last_layer(self.G)
        if channels_last:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        if dist.world_size() > 1 and device.type == "cuda":  # SyncBatchNorm works on CUDA only
            self.G = nn.SyncBatchNorm.convert_sync_batchnorm(self.G)
            self.D = nn.SyncBatchNorm.convert_sync_batchnorm(self.D)
        # Fused Adam (one kernel for all parameters) on CUDA and CPU: 20% faster CPU steps at batch 8.
        fast = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
        betas = (cfg.beta1, 0.999)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.learning_rate, betas=betas, **fast)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.learning_rate, betas=betas, **fast)
        # Paper's schedule: constant for `epochs`, then linear decay to 0 over `epochs_decay`.
        rule = lambda e: 1.0 - max(0, e + 1 - cfg.epochs) / float(cfg.epochs_decay + 1)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, rule)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, rule)
        self.scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
        # What the loop calls: DDP and/or compiled wrappers; self.G / self.D stay plain for saving.
        self.g_train, self.d_train, self.d_frozen = self.G, self.D, self.D
        if dist.world_size() > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            # broadcast_buffers=False: D runs twice per step; BatchNorm statistics are averaged per epoch instead.
            self.g_train = DDP(self.G, device_ids=ids, broadcast_buffers=False)
            self.d_train = DDP(self.D, device_ids=ids, broadcast_buffers=False)
        if cfg.compile:
            self.g_train = torch.compile(self.g_train)
            self.d_train = torch.compile(self.d_train)
            self.d_frozen = self.d_train if dist.world_size() == 1 else torch.compile(self.D)
        elif dist.world_size() == 1:
            self.d_frozen = self.d_train
        self.bce = nn.BCEWithLogitsLoss()
        self.faults = parse_faults(os.environ.get("TINYPIX2PIX_FAULT_NAN_STEP", ""))
        self.skipped = False  # whether the last step() was dropped for a non-finite loss

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def step(self, a, b, step: int, check_finite: bool) -> torch.Tensor:
        """One update of D then G; returns the detached losses [d, g_gan, g_l1]. No host sync
        unless check_finite: then a non-finite loss on any rank drops the step on every rank
        (self.skipped), and under --nan-policy skip nothing the step changed is kept."""
        fault = self.faults.get(step)
        self.skipped = False
        undo = self._snapshot() if check_finite and self.cfg.nan_policy == "skip" else None
        # (1) update D: maximize log D(a, b) + log(1 - D(a, G(a)))
        self.D.requires_grad_(True)
        with self.autocast():
            fake = self.g_train(a)
            pred_real = self.d_train(a, b)
            pred_fake = self.d_train(a, fake.detach())
            loss_d = 0.5 * (self.bce(pred_real, torch.ones_like(pred_real)) +
                            self.bce(pred_fake, torch.zeros_like(pred_fake)))
            if fault == "d":
                loss_d = loss_d * float("nan")
        if check_finite and self._non_finite(loss_d):
            return self._drop(undo, torch.stack([loss_d.detach().float()] * 3))
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler.scale(loss_d).backward()
        self.scaler.step(self.opt_d)
        # (2) update G: first, G(a) should fake the discriminator; second, G(a) = b (L1)
        self.D.requires_grad_(False)  # no weight gradients for D in G's backward
        with self.autocast():
            pred_fake = self.d_frozen(a, fake)
            loss_g_gan = self.bce(pred_fake, torch.ones_like(pred_fake))
            if fault == "g":
                loss_g_gan = loss_g_gan * float("nan")
            loss_g_l1 = F.l1_loss(fake.float(), b)
            loss_g = loss_g_gan + self.cfg.lambda_l1 * loss_g_l1
        losses = torch.stack([loss_d.detach().float(), loss_g_gan.detach().float(), loss_g_l1.detach().float()])
        if check_finite and self._non_finite(loss_g):
            self.scaler.update()  # D's scaler.step was recorded; update() closes this iteration
            return self._drop(undo, losses)  # D has stepped already: the snapshot undoes it
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        self.scaler.step(self.opt_g)
        self.scaler.update()
        return losses

    @staticmethod
    def _non_finite(loss: torch.Tensor) -> bool:
        """Decided over all ranks, so that every rank drops (or stops at) the same step."""
        return bool(dist.any_rank(int(not torch.isfinite(loss).all().item())))

    def _snapshot(self):
        """Copies of what a step changes before G's loss is known: D's weights and Adam state, both
        networks' BatchNorm statistics (updated by the forward passes) and the grad scaler."""
        live = [*self.D.parameters(), *self.G.buffers(), *self.D.buffers()]
        opt = {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for p, s in self.opt_d.state.items()}
        return live, [t.detach().clone() for t in live], opt, self.scaler.state_dict()

    def _drop(self, undo, losses: torch.Tensor) -> torch.Tensor:
        self.skipped = True
        if undo is not None:
            live, copies, opt, scaler = undo
            with torch.no_grad():
                for t, c in zip(live, copies):
                    t.copy_(c)
            self.opt_d.state.clear()
            self.opt_d.state.update(opt)
            if scaler:
                self.scaler.load_state_dict(scaler)
        return losses

    def buffers_state(self) -> dict:
        """This rank's BatchNorm statistics (they differ between ranks until the epoch-end average)."""
        return {f"{who}.{n}": b.detach().cpu().clone() for who, m in (("G", self.G), ("D", self.D))
                for n, b in m.named_buffers()}

    def load_buffers(self, saved: dict) -> None:
        with torch.no_grad():
            for who, m in (("G", self.G), ("D", self.D)):
                for n, b in m.named_buffers():
                    b.copy_(saved[f"{who}.{n}"])

    def state_dict(self) -> dict:
        return {"generator": self.G.state_dict(), "discriminator": self.D.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        self.G.load_state_dict(s["generator"])
        self.D.load_state_dict(s["discriminator"])
        self.opt_g.load_state_dict(s["opt_g"])
        self.opt_d.load_state_dict(s["opt_d"])
        self.sched_g.load_state_dict(s["sched_g"])
        self.sched_d.load_state_dict(s["sched_d"])
        self.scaler.load_state_dict(s["scaler"])
        # The saved lr follows the saved schedule; a resume may change --epochs / --epochs-decay, so take
        # this epoch's rate from the current one (LambdaLR's own expression: unchanged runs stay bit-identical).
        for opt, sched in ((self.opt_g, self.sched_g), (self.opt_d, self.sched_d)):
            for group, base, rule in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas):
                group["lr"] = base * rule(sched.last_epoch)

    def sync_buffers(self) -> None:
        """Average BatchNorm running statistics over ranks (DDP runs without buffer broadcasts)."""
        if dist.world_size() > 1:
            import torch.distributed as tdist

            for module in (self.G, self.D):
                for buf in module.buffers():
                    if buf.is_floating_point():
                        tdist.all_reduce(buf)
                        buf /= dist.world_size()


def parse_faults(text: str) -> dict:
    """TINYPIX2PIX_FAULT_NAN_STEP: "5" or "5,9g" -> {5: "d", 9: "g"} (which loss to poison at which step)."""
    faults = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        faults[int(item.rstrip("gd"))] = "g" if item.endswith("g") else "d"
    return faults
