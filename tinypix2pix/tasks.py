"""Translation tasks: each turns a batch of target images B (float, [-1, 1], on the training
device) into the input images A the generator sees. Batched tensor ops only, randomness
from an explicit torch.Generator so a seed fixes the corruption (evaluation pairs are
built once with a fixed seed and are the same in every run).

Tasks never know about files or sources; the engine calls `task(b, generator)`.
"""
import dataclasses
from dataclasses import dataclass

import torch

from .errors import UserError


@dataclass
class Task:
    """Base task: A = B (the seed's demonstration, each image paired with itself)."""

    name = "identity"
    residual_default = False  # identity: a residual generator would be trivially perfect

    def input_channels(self, channels: int) -> int:
        return channels

    def __call__(self, b: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return b

    def baseline(self, a: torch.Tensor, out_channels: int) -> torch.Tensor:
        """The trivial answer a model must beat: the input itself, as an image like B."""
        a = a[:, :out_channels]
        return a.expand(-1, out_channels, -1, -1) if a.shape[1] == 1 else a


class Identity(Task):
    pass


@dataclass
class Pairing(Task):
    """For sources that hold real pairs (aligned:, paired:): A comes from the data, not from B."""

    name = "pairing"
    residual_default = False


TASKS = {"identity": Identity}


def parse_task_args(task_cls, args) -> dict:
    """`["sigma=0.2", ...]` -> typed kwargs for the task's dataclass; unknown keys list the valid ones."""
    fields = {f.name: f for f in dataclasses.fields(task_cls)}
    out = {}
    for item in args or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise UserError(f"--task-arg {item!r} is not of the form key=value")
        if key not in fields:
            valid = ", ".join(f"{k} (default {f.default})" for k, f in fields.items()) or "none"
            raise UserError(f"task {task_cls.name!r} has no parameter {key!r}; valid parameters: {valid}")
        kind = type(fields[key].default)
        try:
            out[key] = (value.lower() in ("1", "true", "yes", "on")) if kind is bool else kind(value)
        except ValueError:
            raise UserError(f"--task-arg {key}={value!r}: expected a {kind.__name__}") from None
    return out


def build_task(name: str, args=None) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    cls = TASKS[name]
    return cls(**parse_task_args(cls, args))
