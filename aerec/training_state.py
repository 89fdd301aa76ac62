"""What the training loop and its checkpoints share: counters, history, phases, the loop's whole state.

:mod:`aerec.training` (the loop) and :mod:`aerec.checkpoint` (its files) both
import this module, and it imports neither: no cycle.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

#: Why training ended: every epoch ran, patience ran out, the time budget, or a callback asked.
STOP_REASONS = ("epochs", "patience", "max_seconds", "callback")


@dataclass
class TrainingState:
    """What a loss may read: the epoch, the optimizer updates done, the phase, and the loop's random generator.

    ``generator`` (a ``torch.Generator`` on the training device, seeded by the loop's seed)
    is the one source of training-time randomness: corruption, sampling, ``eps``. Drawing
    from it, not from torch's global generator, keeps runs reproducible, resumable bit for
    bit, and independent of whatever else the process draws.
    """

    epoch: int = 0
    update: int = 0
    phase: str = "all"
    generator: torch.Generator | None = field(default=None, repr=False, compare=False)


@dataclass
class History:
    """Per-epoch records (loss terms, validation metric, seconds), the best epoch, and why training stopped.

    With several phases a record holds each phase's terms as ``"<phase>_<term>"`` and the
    last phase's terms unprefixed (so ``"loss"`` is always there).
    """

    epochs: list = field(default_factory=list)
    updates: int = 0
    best_epoch: int | None = None
    best_validation: float | None = None
    stopped_early: bool = False
    stop_reason: str | None = None  # one of STOP_REASONS once training has ended

    def column(self, name: str) -> list:
        return [record.get(name) for record in self.epochs]


def check_history(history: History) -> None:
    """Refuse a history read back from a file whose fields are not what the loop writes (a ValueError naming the
    field): a crafted ``"updates": "3"`` would otherwise surface later as "can only concatenate str..."."""
    def number(value) -> bool:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)

    def count(value) -> bool:
        return not isinstance(value, bool) and isinstance(value, int) and value >= 0

    if not isinstance(history.epochs, list) or not all(
            isinstance(record, dict) and all(isinstance(key, str) and (value is None or number(value))
                                             for key, value in record.items()) for record in history.epochs):
        raise ValueError("a history whose epochs are not records of named numbers")
    problems = [
        ("updates", history.updates, count(history.updates)),
        ("best_epoch", history.best_epoch, history.best_epoch is None or (
            count(history.best_epoch) and 1 <= history.best_epoch <= len(history.epochs))),
        ("best_validation", history.best_validation, history.best_validation is None or number(history.best_validation)),
        ("stopped_early", history.stopped_early, isinstance(history.stopped_early, bool)),
        ("stop_reason", history.stop_reason, history.stop_reason is None or history.stop_reason in STOP_REASONS),
    ]
    for name, value, fine in problems:
        if not fine:
            raise ValueError(f"a history whose {name} is {str(value)[:60]!r}")


@dataclass
class Checkpointing:
    """Where and how often :func:`aerec.training.train` commits its whole state, and whether it resumes from there.

    Parameters
    ----------
    path : str or PathLike
        A directory (created when needed) for ``checkpoint.json`` and its tensor file.
    every : int
        Commit every this many epochs, and always after the last one (or an early stop).
    resume : bool
        Continue from the checkpoint in ``path`` when there is one (a fresh start when there is none).
        A checkpoint written by a run with other settings or data is refused, never silently mixed in.
    tag : dict
        JSON-like values that must match for a resume (models put their class and hyper-parameters here).
    """

    path: str | os.PathLike
    every: int = 1
    resume: bool = False
    tag: dict = field(default_factory=dict)


@dataclass
class Phase:
    """One group of parameters with its own optimizer, and when it is trained.

    Each epoch of :func:`aerec.training.train` runs its active phases in order; a phase
    makes ``passes`` passes over the rows, stepping only its own optimizer (built once,
    its state kept across epochs and in checkpoints). RecVAE alternates an encoder phase
    (3 passes) and a decoder phase (1 pass); greedy layer-wise pretraining gives each
    layer a phase active in some epochs only.

    Parameters
    ----------
    name : str
        Shown in the history (``"<name>_loss"``) and passed to the loss as ``state.phase``.
    parameters : callable, optional
        ``parameters(module) -> iterable of tensors`` this phase updates; None: every trainable one.
    passes : int
        Passes over the rows per epoch.
    optimizer, lr : optional
        This phase's optimizer and learning rate; None: the :class:`~aerec.training.TrainConfig`'s.
    epochs : (int, int or None)
        The epochs (0-based, ``stop`` excluded; None: to the end) in which the phase runs.
    before : callable, optional
        ``before(module, state)``, called before the phase's passes in each epoch it runs
        (e.g. RecVAE's copy of the encoder into its prior).
    after : callable, optional
        ``after(optimizer, state)``, called after them (e.g. AutoRec's Rprop schedule).
    """

    name: str = "all"
    parameters: Callable[[torch.nn.Module], Sequence[torch.Tensor]] | None = None
    passes: int = 1
    optimizer: str | None = None
    lr: float | None = None
    epochs: tuple[int, int | None] = (0, None)
    before: Callable | None = None
    after: Callable | None = None

    def active(self, epoch: int) -> bool:
        start, stop = self.epochs
        return epoch >= start and (stop is None or epoch < stop)


@dataclass
class LoopState:
    """Everything :func:`aerec.training.train` needs to continue a run: in memory for ``warm_start``, on disk as a checkpoint.

    Empty until a run fills it. ``last_weights`` holds the weights the last epoch ended with
    when the best validation epoch's weights were loaded into the module instead.
    """

    training: TrainingState = field(default_factory=TrainingState)
    history: History = field(default_factory=History)
    optimizers: list = field(default_factory=list)
    rng: np.random.Generator | None = None
    best_weights: dict | None = None
    since_best: int = 0
    last_weights: dict | None = None

    @property
    def started(self) -> bool:
        return bool(self.optimizers)
