"""The one training loop every aerec model uses.

A model supplies an ``nn.Module`` and a loss, ``batch_loss(module, batch, state)``,
that returns a dict of scalar tensors with the key ``"loss"`` (what is minimised)
and any other terms worth logging; it draws any randomness from
``state.generator``. The loop owns everything else, and reads top to bottom
(nanoGPT's habit):

- the device, row batches of the CSR (or dense array), the seed;
- *phases*: one optimizer per group of parameters and a schedule of which group
  is trained in which epoch (:class:`~aerec.training_state.Phase`; one phase
  over every parameter by default), so that RecVAE's alternating encoder and
  decoder epochs or layer-wise pretraining need no special loop;
- the per-epoch history; validation by a metric (``validation_metric``) with the
  best weights restored; early stopping (``patience``); a wall-clock budget
  (``max_seconds``); *callbacks* that see each epoch's record and may stop
  training (a tuner's pruner); a progress bar on stderr; a clear error on a
  NaN/inf loss;
- checkpoints: with ``TrainConfig.checkpoint`` the whole loop state (weights,
  every optimizer's state, the random generators, epoch and update counters,
  history, the best weights so far) is committed atomically every N epochs and
  at the end, and a run started again with ``resume`` continues from the last
  commit to the same result as an uninterrupted run (:mod:`aerec.checkpoint`);
- warm starts: given the :class:`~aerec.training_state.LoopState` of an earlier
  call, training continues from its weights, optimizer states and generators,
  so that ``epochs=1`` repeated is bit for bit one longer run.

The loop knows no model class.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from aerec._torch import resolve_device
from aerec.checkpoint import CheckpointMismatchError, load_checkpoint, save_checkpoint
from aerec.data.batching import RowBatch, RowSource
from aerec.distributed import LOSS_REDUCTIONS, data_parallel_batch_loss, rank_and_world, rank_share
from aerec.optim import LBFGS, CliminRprop
from aerec.params import BATCH, COUNT, RATE, SECONDS, SEED, WEIGHT, Options, check
from aerec.state import directory_lock
from aerec.training_state import Checkpointing, History, LoopState, Phase, TrainingState

__all__ = ["Checkpointing", "History", "LoopState", "NonFiniteLossError", "OPTIMIZERS", "PRECISIONS", "Phase",
           "TrainConfig", "TrainingState", "train"]

OPTIMIZERS = ("adam", "adamw", "sgd", "rprop", "climin_rprop", "lbfgs")
PRECISIONS = ("fp32", "bf16")
BatchLoss = Callable[[torch.nn.Module, RowBatch, TrainingState], dict]
#: A callback sees each epoch's record and the history; a true return value stops training after that epoch.
Callback = Callable[[dict, History], "bool | None"]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; it stops before the weights are spoiled further."""


@dataclass
class TrainConfig:
    """Settings of :func:`train`.

    Parameters
    ----------
    epochs : int
        Maximum number of epochs (with a warm start: epochs added to those already run).
    batch_size : int or None
        Rows per batch; None trains full-batch (one batch of all rows, as AutoRec's Rprop / L-BFGS).
    optimizer : {"adam", "adamw", "sgd", "rprop", "climin_rprop", "lbfgs"}
        The phases' optimizer unless a phase names its own. "rprop" is torch's (iRprop-),
        "climin_rprop" climin's (:class:`aerec.optim.CliminRprop`, AutoRec's reference).
        "lbfgs" is full-batch by nature: each pass is one L-BFGS step whose closure sums all batches.
    lr, weight_decay : float
        Passed to the optimizer (weight_decay is torch's, not a paper's penalty: leave it 0 and put
        penalties in the loss to match a paper).
    seed : int
        Seeds the loop's random generator (``state.generator``: corruption, sampling) and the
        batch order. Torch's global generator is neither read nor changed.
    device : str
        "auto" (CUDA when present), "cpu", "cuda".
    patience : int or None
        Stop after this many validations without improvement (None: run all epochs, still
        restoring the best weights when there is a validation metric).
    validate_every : int
        Compute the validation metric every this many epochs (and after the last).
    shuffle : bool
        Permute the rows every pass.
    progress : bool
        Show a tqdm bar on stderr.
    max_seconds : float or None
        A wall-clock budget for this call: training ends after the epoch during which it ran
        out, the best weights kept and ``history.stop_reason == "max_seconds"``.
    checkpoint : Checkpointing, optional
        Commit the training state every ``checkpoint.every`` epochs and resume from it (see :class:`Checkpointing`).
    loss_reduction : {"mean", "sum"}
        Whether the loss is a mean over the batch's rows or a sum (AutoRec); it tells
        distributed training how to weight each process's share (:mod:`aerec.distributed`).
    precision : {"fp32", "bf16"}
        "bf16" runs the loss under ``torch.autocast(dtype=torch.bfloat16)`` (mixed precision:
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
    max_seconds: float | None = None
    checkpoint: Checkpointing | None = None

    def check(self) -> None:
        """Raise a ValueError naming the first setting out of its range."""
        for name in ("epochs", "validate_every"):
            check(name, getattr(self, name), COUNT)
        check("batch_size", self.batch_size, BATCH, None)
        check("patience", self.patience, COUNT, None)
        check("seed", self.seed, SEED)
        check("optimizer", self.optimizer, Options(*OPTIMIZERS))
        check("loss_reduction", self.loss_reduction, Options(*LOSS_REDUCTIONS))
        check("precision", self.precision, Options(*PRECISIONS))
        check("lr", self.lr, RATE)
        check("weight_decay", self.weight_decay, WEIGHT)
        check("max_seconds", self.max_seconds, SECONDS, None)
        if self.weight_decay and self.optimizer in ("rprop", "climin_rprop", "lbfgs"):
            raise ValueError(f"weight_decay={self.weight_decay!r} with optimizer={self.optimizer!r}; "
                             "Rprop and L-BFGS take none: put the penalty in the loss")
        if self.checkpoint is not None:
            check("checkpoint every", self.checkpoint.every, COUNT)
        resolve_device(self.device)

    def validate(self) -> None:
        """Deprecated name of :meth:`check` ("validate" means validation data in aerec)."""
        warnings.warn("TrainConfig.validate() is renamed check(); validate() goes in the next release",
                      DeprecationWarning, stacklevel=2)
        self.check()


def train(module: torch.nn.Module, data, batch_loss: BatchLoss, config: TrainConfig,
          validation_metric: Callable[[torch.nn.Module], float] | None = None, maximize: bool = True,
          rows: np.ndarray | None = None, phases: Sequence[Phase] | None = None, callbacks: Sequence[Callback] = (),
          state: LoopState | None = None, desc: str = "training", validate=None) -> History:
    """Train ``module`` in place on the rows of ``data`` and return the :class:`History`.

    Parameters
    ----------
    module : nn.Module
        Moved to the configured device.
    data : csr_matrix or ndarray
        The rows to train on (users x items, or items x users for I-AutoRec).
    batch_loss : callable
        ``batch_loss(module, batch, state) -> {"loss": tensor, other terms...}`` for one batch.
    config : TrainConfig
    validation_metric : callable, optional
        ``validation_metric(module) -> float`` (run under ``no_grad`` in eval mode); with it the best
        weights are kept and restored at the end.
    maximize : bool
        Whether a larger validation value is better (NDCG: yes; RMSE: no).
    rows : ndarray, optional
        Train on these rows only.
    phases : sequence of Phase, optional
        Parameter groups, their optimizers and schedule; default one phase over every parameter.
    callbacks : sequence of callables
        Each called as ``callback(record, history)`` after every epoch; a true return value stops training.
    state : LoopState, optional
        Filled by this call; pass the same object again to continue (a warm start: ``config.epochs`` more).
    validate : callable, optional
        Deprecated name of ``validation_metric``.
    """
    if validate is not None:
        warnings.warn("train(validate=...) is renamed validation_metric=; validate= goes in the next release",
                      DeprecationWarning, stacklevel=2)
        validation_metric = validate
    config.check()
    phases = check_phases(phases)
    rank, world = rank_and_world()
    device = resolve_device(config.device)
    if world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # torchrun: this process's GPU
    module.to(device)
    loop = state if state is not None else LoopState()
    warm = loop.started
    if warm:
        continue_from(module, loop)
    else:
        loop.training = TrainingState(generator=torch.Generator(device=device).manual_seed(int(config.seed)))
        loop.rng = np.random.default_rng(config.seed)  # the same on every rank: one global batch order
        loop.optimizers = [make_optimizer(phase_parameters(module, phase), phase.optimizer or config.optimizer,
                                          config.lr if phase.lr is None else phase.lr, config.weight_decay)
                           for phase in phases]
    loss_fn = with_precision(batch_loss, device, config.precision)
    loss_fn = data_parallel_batch_loss(module, loss_fn, device) if world > 1 else single_process(loss_fn)
    source = RowSource(data, device)  # on the device once (when it fits); every batch is cut there
    fingerprint = checkpoint_fingerprint(config, module, source, rows, phases, data)
    with contextlib.ExitStack() as held:
        if config.checkpoint is not None and rank == 0:  # the rank that writes it holds its folder's lock throughout
            held.enter_context(directory_lock(config.checkpoint.path))
        return train_epochs(module, loop, loss_fn, source, config, validation_metric, maximize, rows, phases,
                            callbacks, warm, fingerprint, desc, rank, world)


def train_epochs(module, loop: LoopState, loss_fn, source: RowSource, config: TrainConfig, validation_metric,
                 maximize: bool, rows, phases: Sequence[Phase], callbacks, warm: bool, fingerprint: dict, desc: str,
                 rank: int, world: int) -> History:
    """The epochs of :func:`train` (its set-up done): resume from the checkpoint if asked, run, checkpoint, finish."""
    if config.checkpoint is not None and config.checkpoint.resume and not warm:
        load_checkpoint(config.checkpoint.path, fingerprint, module, loop)
    history, training = loop.history, loop.training
    start = len(history.epochs)
    if not warm and start > config.epochs and not history.stopped_early:
        raise CheckpointMismatchError(
            f"the checkpoint in {config.checkpoint.path} has {start} epochs done; epochs={config.epochs} asks for "
            f"fewer: resume with epochs >= {start} (or start without resume)")
    if warm:
        end, history.stopped_early, history.stop_reason = start + config.epochs, False, None
    else:
        end = start if history.stopped_early else max(config.epochs, start)  # a patience stop is final
    began = time.perf_counter()
    bar = tqdm(range(start, end), desc=desc, file=sys.stderr, disable=not config.progress, leave=False,
               initial=start, total=end)
    for epoch in bar:
        training.epoch = epoch
        started = time.perf_counter()
        module.train()
        record = {"epoch": epoch + 1}
        active = [(phase, optimizer) for phase, optimizer in zip(phases, loop.optimizers) if phase.active(epoch)]
        for phase, optimizer in active:
            training.phase = phase.name
            if phase.before is not None:
                phase.before(module, training)
            for _ in range(phase.passes):
                batches = rank_batches(source, config, loop.rng, rows, rank, world)
                terms = run_epoch(module, batches, loss_fn, optimizer, training, isinstance(optimizer, LBFGS))
            if phase.after is not None:
                phase.after(optimizer, training)
            if len(phases) > 1:
                record.update({f"{phase.name}_{name}": value for name, value in terms.items()})
            record.update(terms)
        record["seconds"] = time.perf_counter() - started
        if validation_metric is not None and ((epoch + 1) % config.validate_every == 0 or epoch + 1 == end):
            record["validation"] = run_validation(module, validation_metric)
            if improved(record["validation"], history.best_validation, maximize):
                history.best_epoch, history.best_validation = epoch + 1, record["validation"]
                loop.best_weights, loop.since_best = copy.deepcopy(module.state_dict()), 0
            else:
                loop.since_best += 1
        history.epochs.append(record)
        history.updates = training.update
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in ("loss", "validation")})
        reason = stop_reason(config, loop, record, callbacks, began)
        history.stopped_early = reason == "patience"
        last = reason is not None or epoch + 1 == end
        if last:
            history.stop_reason = reason or "epochs"
        if config.checkpoint is not None and rank == 0 and (last or (epoch + 1) % config.checkpoint.every == 0):
            save_checkpoint(config.checkpoint.path, fingerprint, module, loop)
        if reason is not None:
            break
    bar.close()
    finish(module, loop)
    return history


def stop_reason(config: TrainConfig, loop: LoopState, record: dict, callbacks, began: float) -> str | None:
    """Why training stops after this epoch (patience, a callback, the time budget), or None to go on.

    Every callback sees every epoch, also when an earlier one asked to stop.
    """
    asked = [bool(callback(record, loop.history)) for callback in callbacks]
    if config.patience is not None and loop.since_best >= config.patience:
        return "patience"
    if any(asked):
        return "callback"
    if config.max_seconds is not None and time.perf_counter() - began >= config.max_seconds:
        return "max_seconds"
    return None


def continue_from(module: torch.nn.Module, loop: LoopState) -> None:
    """A warm start: the module's weights (the best epoch's) become the best so far; the last epoch's go back in."""
    if loop.history.best_epoch is not None:
        loop.best_weights = copy.deepcopy(module.state_dict())
    if loop.last_weights is not None:
        module.load_state_dict(loop.last_weights)
        loop.last_weights = None


def finish(module: torch.nn.Module, loop: LoopState) -> None:
    """Load the best validation epoch's weights, keeping the last epoch's for a warm start when they differ."""
    history = loop.history
    if loop.best_weights is not None and history.best_epoch != len(history.epochs):
        loop.last_weights = copy.deepcopy(module.state_dict())
        module.load_state_dict(loop.best_weights)
    loop.best_weights = None  # the module holds them now
    module.eval()


def check_phases(phases: Sequence[Phase] | None) -> list[Phase]:
    phases = [Phase()] if phases is None else list(phases)
    if not phases or not all(isinstance(phase, Phase) for phase in phases):
        raise ValueError(f"phases={phases!r}; expected a non-empty sequence of aerec.training.Phase")
    names = [phase.name for phase in phases]
    if len(set(names)) != len(names):
        raise ValueError(f"phase names {names}; expected each name once")
    for phase in phases:
        check(f"phase {phase.name!r} passes", phase.passes, COUNT)
        check(f"phase {phase.name!r} optimizer", phase.optimizer, Options(*OPTIMIZERS), None)
        check(f"phase {phase.name!r} lr", phase.lr, RATE, None)
    return phases


def phase_parameters(module: torch.nn.Module, phase: Phase) -> list[torch.Tensor]:
    chosen = module.parameters() if phase.parameters is None else phase.parameters(module)
    params = [p for p in chosen if p.requires_grad]
    if not params:
        raise ValueError(f"phase {phase.name!r} of {type(module).__name__} has no trainable parameters")
    return params


def checkpoint_fingerprint(config: TrainConfig, module, source: RowSource, rows, phases: Sequence[Phase],
                           data=None) -> dict:
    """What a checkpoint must agree on to be resumed: settings, data (shape and content), parameter shapes, phases,
    the caller's tag.

    The epoch count, device, progress bar and time budget may change between the runs (training longer is a resume
    too). The data's content is a SHA-256 of its arrays (and of ``rows``), taken only when checkpointing: two files
    of one shape and size (two item ids swapped, every rating changed) are not the same run.
    """
    settings = {name: getattr(config, name) for name in ("batch_size", "optimizer", "lr", "weight_decay", "seed",
                                                         "patience", "validate_every", "shuffle", "precision",
                                                         "loss_reduction")}
    content = content_digest(data, rows) if config.checkpoint is not None and data is not None else None
    return {"settings": settings, "data": {"shape": list(source.shape), "nnz": source.nnz,
                                           "rows": None if rows is None else int(len(rows)), "sha256": content},
            "parameters": {name: list(p.shape) for name, p in module.named_parameters()},
            "phases": [[phase.name, phase.passes, phase.optimizer, phase.lr, list(phase.epochs)] for phase in phases],
            "tag": config.checkpoint.tag if config.checkpoint is not None else {}}


def content_digest(data, rows) -> str:
    """SHA-256 of the training data's values and pattern (a CSR's indptr, indices and data in canonical order,
    or a dense array's bytes) and of the rows trained on."""
    import hashlib

    import scipy.sparse as sp

    digest = hashlib.sha256()
    if sp.issparse(data):
        matrix = sp.csr_matrix(data)
        if not matrix.has_canonical_format:
            matrix = matrix.copy()
            matrix.sum_duplicates()
        arrays = (matrix.indptr.astype(np.int64), matrix.indices.astype(np.int64), matrix.data.astype(np.float32))
    else:
        arrays = (np.asarray(data, dtype=np.float32),)
    for array in (*arrays, *(() if rows is None else (np.asarray(rows, dtype=np.int64),))):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def single_process(batch_loss: BatchLoss):
    """``batch_loss`` with the distributed signature ``(module, batch, state, weight)``; one process weighs 1."""
    return lambda module, batch, state, weight: batch_loss(module, batch, state)


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


def with_precision(batch_loss: BatchLoss, device: torch.device, precision: str) -> BatchLoss:
    """``batch_loss`` run under bfloat16 autocast for "bf16" (the forward pass only: backward and step stay outside)."""
    if precision == "fp32":
        return batch_loss

    def autocast_batch_loss(module, batch, state):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return batch_loss(module, batch, state)

    return autocast_batch_loss


def run_epoch(module, batches, batch_loss: BatchLoss, optimizer, state: TrainingState, full_batch_closure: bool) -> dict:
    """One pass; returns the mean of each loss term over the batches."""
    if full_batch_closure:
        return lbfgs_epoch(module, list(batches), batch_loss, optimizer, state)
    sums: dict[str, float] = {}
    n_batches = 0
    for batch, weight in batches:
        module.zero_grad(set_to_none=True)
        terms = batch_loss(module, batch, state, weight)
        check_finite(terms, state)
        terms["loss"].backward()
        optimizer.step()
        state.update += 1
        n_batches += 1
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
    return {name: total / max(n_batches, 1) for name, total in sums.items()}


def lbfgs_epoch(module, batches: list, batch_loss: BatchLoss, optimizer, state: TrainingState) -> dict:
    """One full-batch L-BFGS step: the closure sums the loss terms over every batch.

    The line search evaluates the closure several times; the terms recorded are those of
    the first evaluation, at the weights the epoch started from (as the other optimizers'
    epoch means are taken along the way, not after the last update).
    """
    evaluations: list[dict[str, float]] = []

    def closure():
        module.zero_grad(set_to_none=True)
        total, sums = None, {}
        for batch, weight in batches:
            terms = batch_loss(module, batch, state, weight)
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
        raise ValueError(f"the loss must return a dict with a 'loss' entry, got keys {sorted(terms)}")
    loss = float(terms["loss"].detach())
    if not math.isfinite(loss):
        shown = ", ".join(f"{name}={float(value.detach()):.4g}" for name, value in terms.items())
        raise NonFiniteLossError(
            f"the loss became {loss} at epoch {state.epoch + 1}, update {state.update} ({shown}); training "
            "stopped. Lower the learning rate, or check the input for extreme values"
        )


def run_validation(module, validation_metric) -> float:
    module.eval()
    with torch.no_grad():
        value = float(validation_metric(module))
    module.train()
    if not math.isfinite(value):
        raise NonFiniteLossError(f"the validation metric is {value}; expected a finite number")
    return value


def improved(value: float, best: float | None, maximize: bool) -> bool:
    if best is None:
        return True
    return value > best if maximize else value < best


def make_optimizer(params: list, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``params``."""
    if name in ("adam", "adamw"):
        # the fused kernel (one pass over each tensor; 5x faster than the per-op loop on CPU) where torch has one
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) or None
        adam = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return adam(params, lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "rprop":
        return torch.optim.Rprop(params, lr=lr)
    if name == "climin_rprop":
        return CliminRprop(params, lr=lr)
    # one iteration per pass; max_eval must leave the line search room (torch's default, 1.25 x max_iter, stalls it)
    return LBFGS(params, lr=lr, max_iter=1, max_eval=25, history_size=20, line_search_fn="strong_wolfe")
