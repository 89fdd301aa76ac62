"""The one training loop every aerec model uses.

A model supplies an ``nn.Module`` and a ``step_loss(module, batch, state)``
function that returns a dict of scalar tensors with the key ``"loss"`` (what
is minimised) and any other terms worth logging. The loop owns everything
else: the device, row batches of the CSR (or dense array), the optimizer, the
seed, per-epoch history, early stopping on a validation metric with the best
weights restored, a progress bar on stderr, and a clear error on a NaN/inf
loss, and checkpoints: with ``TrainConfig.checkpoint`` the whole training state
(weights, optimizer state, RNG states, epoch and update counters, history, the
best weights so far) is committed atomically every N epochs and at the end, and
a run started again with ``resume`` continues from the last commit to the same
result as an uninterrupted run (:mod:`aerec.checkpoint`). It reads top to bottom
(nanoGPT's habit).
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from aerec._torch import resolve_device
from aerec.data.batching import RowBatch, RowSource
from aerec.distributed import LOSS_REDUCTIONS, data_parallel_step_loss, rank_and_world, rank_share
from aerec.optim import LBFGS, CliminRprop

OPTIMIZERS = ("adam", "adamw", "sgd", "rprop", "climin_rprop", "lbfgs")
PRECISIONS = ("fp32", "bf16")
StepLoss = Callable[[torch.nn.Module, RowBatch, "TrainingState"], dict]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; it stops before the weights are spoiled further."""


@dataclass
class TrainingState:
    """Counters a loss may depend on (the KL anneal reads ``update``)."""

    epoch: int = 0
    update: int = 0


@dataclass
class History:
    """Per-epoch records (loss terms, validation metric, seconds) and the early-stopping outcome."""

    epochs: list = field(default_factory=list)
    updates: int = 0
    best_epoch: int | None = None
    best_validation: float | None = None
    stopped_early: bool = False

    def column(self, name: str) -> list:
        return [record.get(name) for record in self.epochs]


@dataclass
class Checkpointing:
    """Where and how often :func:`train` commits its whole state, and whether it resumes from there.

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
class TrainConfig:
    """Settings of :func:`train`.

    Parameters
    ----------
    epochs : int
        Maximum number of passes over the rows.
    batch_size : int or None
        Rows per batch; None trains full-batch (one batch of all rows, as AutoRec's Rprop / L-BFGS).
    optimizer : {"adam", "adamw", "sgd", "rprop", "climin_rprop", "lbfgs"}
        "rprop" is torch's (iRprop-), "climin_rprop" climin's (:class:`aerec.optim.CliminRprop`,
        AutoRec's reference). "lbfgs" is full-batch by nature: each epoch is one L-BFGS step whose closure sums all batches.
    lr, weight_decay : float
        Passed to the optimizer (weight_decay is torch's, not a paper's penalty: leave it 0 and put
        penalties in ``step_loss`` to match a paper).
    seed : int
        Seeds torch's global RNG (initialisation, corruption, sampling) and the batch order.
    device : str
        "auto" (CUDA when present), "cpu", "cuda".
    patience : int or None
        Stop after this many validations without improvement (None: run all epochs, still
        restoring the best weights when there is a validation function).
    validate_every : int
        Validate every this many epochs (and after the last).
    shuffle : bool
        Permute the rows every epoch.
    progress : bool
        Show a tqdm bar on stderr.
    checkpoint : Checkpointing, optional
        Commit the training state every ``checkpoint.every`` epochs and resume from it (see :class:`Checkpointing`).
    loss_reduction : {"mean", "sum"}
        Whether ``step_loss`` is a mean over the batch's rows or a sum (AutoRec); it tells
        distributed training how to weight each process's share (:mod:`aerec.distributed`).
    precision : {"fp32", "bf16"}
        "bf16" runs ``step_loss`` under ``torch.autocast(dtype=torch.bfloat16)`` (mixed precision:
        matrix products in bfloat16, weights, gradients and optimizer state in float32). Worth it
        on GPUs and on CPUs with bfloat16 units (AVX512-BF16, AMX); elsewhere slower.
    """

    epochs: int = 100
    batch_size: int | None = 500
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    patience: int | None = None
    validate_every: int = 1
    shuffle: bool = True
    progress: bool = True
    precision: str = "fp32"
    loss_reduction: str = "mean"
    checkpoint: Checkpointing | None = None

    def validate(self) -> None:
        for name in ("epochs", "validate_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}={value!r}; expected an integer >= 1")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, (int, np.integer)) or self.batch_size < 1):
            raise ValueError(f"batch_size={self.batch_size!r}; expected an integer >= 1 or None (full batch)")
        if self.patience is not None and (not isinstance(self.patience, (int, np.integer)) or self.patience < 1):
            raise ValueError(f"patience={self.patience!r}; expected an integer >= 1 or None")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r}; expected one of {OPTIMIZERS}")
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction={self.loss_reduction!r}; expected one of {LOSS_REDUCTIONS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}; expected one of {PRECISIONS}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr={self.lr!r}; expected a positive number")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay={self.weight_decay!r}; expected a number >= 0")
        if self.weight_decay and self.optimizer in ("rprop", "climin_rprop", "lbfgs"):
            raise ValueError(f"weight_decay={self.weight_decay!r} with optimizer={self.optimizer!r}; "
                             "Rprop and L-BFGS take none: put the penalty in the loss")
        if self.checkpoint is not None:
            every = self.checkpoint.every
            if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
                raise ValueError(f"checkpoint every={every!r}; expected an integer >= 1")
        resolve_device(self.device)


def train(module: torch.nn.Module, data, step_loss: StepLoss, config: TrainConfig,
          validate: Callable[[torch.nn.Module], float] | None = None, maximize: bool = True,
          rows: np.ndarray | None = None, on_epoch_end: Sequence[Callable] = (), desc: str = "training") -> History:
    """Train ``module`` in place on the rows of ``data`` and return the :class:`History`.

    Parameters
    ----------
    module : nn.Module
        Moved to the configured device.
    data : csr_matrix or ndarray
        The rows to train on (users x items, or items x users for I-AutoRec).
    step_loss : callable
        ``step_loss(module, batch, state) -> {"loss": tensor, other terms...}`` for one batch.
    config : TrainConfig
    validate : callable, optional
        ``validate(module) -> float`` (run under ``no_grad`` in eval mode); with it the best
        weights are kept and restored at the end.
    maximize : bool
        Whether a larger validation value is better (NDCG: yes; RMSE: no).
    rows : ndarray, optional
        Train on these rows only.
    on_epoch_end : sequence of callables
        Each called as ``fn(state, module, optimizer, record)`` after every epoch (checkpoints hook here).
    """
    config.validate()
    rank, world = rank_and_world()
    device = resolve_device(config.device)
    if world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # torchrun: this process's GPU
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)  # the same on every rank: one global batch order
    module.to(device)
    optimizer = make_optimizer(module, config)
    loss_fn = with_precision(step_loss, device, config.precision)
    loss_fn = data_parallel_step_loss(module, loss_fn, device) if world > 1 else single_process(loss_fn)
    source = RowSource(data, device)  # on the device once (when it fits); every batch is cut there
    state, history = TrainingState(), History()
    best_weights, since_best = None, 0
    fingerprint = checkpoint_fingerprint(config, module, source, rows)
    if config.checkpoint is not None and config.checkpoint.resume:
        from aerec.checkpoint import load_checkpoint  # checkpoint imports this module's dataclasses

        resumed = load_checkpoint(config.checkpoint.path, fingerprint, module, optimizer, rng)
        if resumed is not None:
            state, history, best_weights, since_best = resumed
    start = len(history.epochs) if not history.stopped_early else config.epochs
    bar = tqdm(range(start, config.epochs), desc=desc, file=sys.stderr, disable=not config.progress, leave=False,
               initial=start, total=config.epochs)
    for epoch in bar:
        state.epoch = epoch
        started = time.perf_counter()
        module.train()
        batches = rank_batches(source, config, rng, rows, rank, world)
        terms = run_epoch(module, batches, loss_fn, optimizer, state, config.optimizer == "lbfgs")
        record = {"epoch": epoch + 1, **terms, "seconds": time.perf_counter() - started}
        if validate is not None and ((epoch + 1) % config.validate_every == 0 or epoch + 1 == config.epochs):
            record["validation"] = run_validation(module, validate)
            if improved(record["validation"], history.best_validation, maximize):
                history.best_epoch, history.best_validation = epoch + 1, record["validation"]
                best_weights, since_best = copy.deepcopy(module.state_dict()), 0
            else:
                since_best += 1
        history.epochs.append(record)
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in ("loss", "validation")})
        for callback in on_epoch_end:
            callback(state, module, optimizer, record)
        history.updates = state.update
        history.stopped_early = config.patience is not None and since_best >= config.patience
        last = history.stopped_early or epoch + 1 == config.epochs
        if config.checkpoint is not None and rank == 0 and (last or (epoch + 1) % config.checkpoint.every == 0):
            from aerec.checkpoint import save_checkpoint

            save_checkpoint(config.checkpoint.path, fingerprint, module, optimizer, rng, state, history,
                            best_weights, since_best)
        if history.stopped_early:
            break
    bar.close()
    if best_weights is not None:
        module.load_state_dict(best_weights)
    module.eval()
    return history


def checkpoint_fingerprint(config: TrainConfig, module, source: RowSource, rows) -> dict:
    """What a checkpoint must agree on to be resumed: settings, data shape, parameter shapes, the caller's tag.

    The epoch count, device and progress bar may change between the runs (training longer is a resume too).
    """
    settings = {name: getattr(config, name) for name in ("batch_size", "optimizer", "lr", "weight_decay", "seed",
                                                         "patience", "validate_every", "shuffle", "precision",
                                                         "loss_reduction")}
    return {"settings": settings, "data": {"shape": list(source.shape), "nnz": source.nnz,
                                           "rows": None if rows is None else int(len(rows))},
            "parameters": {name: list(p.shape) for name, p in module.named_parameters()},
            "tag": config.checkpoint.tag if config.checkpoint is not None else {}}


def single_process(step_loss: StepLoss):
    """``step_loss`` with the distributed signature ``(module, batch, state, weight)``; one process weighs 1."""
    return lambda module, batch, state, weight: step_loss(module, batch, state)


def rank_batches(source: RowSource, config: TrainConfig, rng, rows, rank: int, world: int):
    """``(batch, weight)`` per update: this rank's share of each global batch and its loss weight."""
    for index in source.batch_indices(config.batch_size or source.shape[0], config.shuffle, rng, rows):
        if world == 1:
            yield source.batch(index), 1.0
            continue
        share, weight = rank_share(index, rank, world)
        if config.loss_reduction == "sum":
            weight = float(world) if weight else 0.0
        yield source.batch(share), weight


def with_precision(step_loss: StepLoss, device: torch.device, precision: str) -> StepLoss:
    """``step_loss`` run under bfloat16 autocast for "bf16" (the forward pass only: backward and step stay outside)."""
    if precision == "fp32":
        return step_loss

    def autocast_step_loss(module, batch, state):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return step_loss(module, batch, state)

    return autocast_step_loss


def run_epoch(module, batches, step_loss: StepLoss, optimizer, state: TrainingState, full_batch_closure: bool) -> dict:
    """One pass; returns the mean of each loss term over the batches."""
    if full_batch_closure:
        return lbfgs_epoch(module, list(batches), step_loss, optimizer, state)
    sums: dict[str, float] = {}
    n_batches = 0
    for batch, weight in batches:
        optimizer.zero_grad(set_to_none=True)
        terms = step_loss(module, batch, state, weight)
        check_finite(terms, state)
        terms["loss"].backward()
        optimizer.step()
        state.update += 1
        n_batches += 1
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
    return {name: total / max(n_batches, 1) for name, total in sums.items()}


def lbfgs_epoch(module, batches: list, step_loss: StepLoss, optimizer, state: TrainingState) -> dict:
    """One full-batch L-BFGS step: the closure sums the loss terms over every batch.

    The line search evaluates the closure several times; the terms recorded are those of
    the first evaluation, at the weights the epoch started from (as the other optimizers'
    epoch means are taken along the way, not after the last update).
    """
    evaluations: list[dict[str, float]] = []

    def closure():
        optimizer.zero_grad(set_to_none=True)
        total, sums = None, {}
        for batch, weight in batches:
            terms = step_loss(module, batch, state, weight)
            check_finite(terms, state)
            terms["loss"].backward()
            total = terms["loss"].detach() if total is None else total + terms["loss"].detach()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
        evaluations.append(sums)
        return total

    optimizer.step(closure)
    state.update += 1
    return evaluations[0]


def check_finite(terms: dict, state: TrainingState) -> None:
    if "loss" not in terms:
        raise ValueError(f"step_loss must return a dict with a 'loss' entry, got keys {sorted(terms)}")
    loss = float(terms["loss"].detach())
    if not math.isfinite(loss):
        shown = ", ".join(f"{name}={float(value.detach()):.4g}" for name, value in terms.items())
        raise NonFiniteLossError(
            f"the loss became {loss} at epoch {state.epoch + 1}, update {state.update} ({shown}); training "
            "stopped. Lower the learning rate, or check the input for extreme values"
        )


def run_validation(module, validate) -> float:
    module.eval()
    with torch.no_grad():
        value = float(validate(module))
    module.train()
    if not math.isfinite(value):
        raise NonFiniteLossError(f"the validation metric is {value}; expected a finite number")
    return value


def improved(value: float, best: float | None, maximize: bool) -> bool:
    if best is None:
        return True
    return value > best if maximize else value < best


def make_optimizer(module: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(module).__name__} has no trainable parameters")
    if config.optimizer in ("adam", "adamw"):
        # the fused kernel (one pass over each tensor; 5x faster than the per-op loop on CPU) where torch has one
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) or None
        adam = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        return adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "rprop":
        return torch.optim.Rprop(params, lr=config.lr)
    if config.optimizer == "climin_rprop":
        return CliminRprop(params, lr=config.lr)
    # one iteration per epoch; max_eval must leave the line search room (torch's default, 1.25 x max_iter, stalls it)
    return LBFGS(params, lr=config.lr, max_iter=1, max_eval=25, history_size=20, line_search_fn="strong_wolfe")
