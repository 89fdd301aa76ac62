"""The base of every model trained by epochs: shared hyper-parameters, their checks, the loop's settings, scoring.

implicit's habit (``implicit/cpu/matrix_factorization_base.py`` holds what its
factor models share): a model on this base declares only

- its hyper-parameters in ``__init__`` and their ``parameter_constraints``
  (the shared ones, below, are declared here once);
- ``build_module(generator)``: its network for the fitted shapes, drawn from ``generator``;
- ``batch_loss(module, batch, state)``: its loss, drawing randomness from ``state.generator``;
- optionally ``phases(module)`` (several optimizers and a schedule), ``score_batch(module, batch)``,
  ``validation_metric(validation)``, ``training_rows(matrix)``, ``batched_rows(rows)`` and ``after_fit(matrix)``.

The base checks the parameters, builds the :class:`~aerec.training.TrainConfig`,
seeds a generator of its own for the initial weights (torch's global
generator is never reseeded), runs the one loop (with checkpoints,
callbacks, a time budget and warm starts), and scores rows in bounded batches.

Shared hyper-parameters
-----------------------
epochs : int
    Training epochs (all are run unless ``patience``, ``max_seconds`` or a callback stops earlier).
batch_size : int
    Rows per optimizer update.
lr : float
    The optimizer's learning rate.
seed : int
    Seeds the initial weights (a generator of the model's own), the loop's generator
    (corruption, sampling) and the batch order.
device : str
    "auto" (CUDA when present), "cpu" or "cuda[:N]".
patience : int or None
    With validation data: stop after this many validations without improvement (None: run
    every epoch). The best validation epoch's weights are kept either way.
progress : bool
    Show a progress bar on stderr.
precision : {"fp32", "bf16"}
    "bf16": train under bfloat16 autocast (see :class:`aerec.training.TrainConfig`); scores stay float32.
max_seconds : float or None
    A wall-clock budget per ``fit``: training ends after the epoch during which it ran out.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import scipy.sparse as sp
import torch

from aerec._torch import resolve_device
from aerec.data.batching import RowBatch, iter_row_batches
from aerec.models.base import Recommender
from aerec.params import BATCH, COUNT, RATE, SECONDS, SEED, Boolean, Device, Options
from aerec.search_space import FloatRange
from aerec.training import PRECISIONS, LoopState, Phase, TrainConfig, TrainingState, train

__all__ = ["TorchRecommender", "store_params"]


class TorchRecommender(Recommender):
    """A recommender trained by epochs through :func:`aerec.training.train` (see the module docstring)."""

    parameter_constraints = {
        "epochs": [COUNT], "batch_size": [BATCH], "lr": [RATE], "seed": [SEED],
        "device": [Device()], "patience": [COUNT, None], "progress": [Boolean()],
        "precision": [Options(*PRECISIONS)], "max_seconds": [SECONDS, None],
    }
    search_space = {"lr": FloatRange(1e-4, 1e-2, log=True)}
    #: "mean" or "sum": how the loss reduces over a batch's rows (distributed training weighs ranks by it).
    loss_reduction = "mean"
    #: Whether a larger validation metric is better (NDCG) or a smaller (RMSE).
    maximize_validation = True
    #: Rows scored per forward pass by score_tensor (bounds the activations' memory).
    score_batch_rows = 4096

    # -- what a model defines ----------------------------------------------------------------
    def build_module(self, generator: torch.Generator) -> torch.nn.Module:
        """The network for the fitted shapes (``n_items_``, ...), its initial weights drawn from ``generator``."""
        raise NotImplementedError

    def batch_loss(self, module: torch.nn.Module, batch: RowBatch, state: TrainingState) -> dict:
        """``{"loss": scalar tensor, other terms...}`` of one batch; randomness from ``state.generator``."""
        raise NotImplementedError

    def phases(self, module: torch.nn.Module) -> list[Phase] | None:
        """Parameter groups with their optimizers and schedule; None: one phase over every parameter."""
        return None

    def score_batch(self, module: torch.nn.Module, batch: RowBatch) -> torch.Tensor:
        """Scores (rows, n_items) of one batch of rows, the module in eval mode: its output (the first, if a tuple)."""
        out = module(batch.sparse)
        return out[0] if isinstance(out, tuple) else out

    def validation_metric(self, validation):
        """``metric(module) -> float`` for the loop, or None; by default NDCG@100 of the validation users."""
        return self.ranking_validation(validation)

    def training_rows(self, matrix: sp.csr_matrix):
        """The rows the loop trains on (the users' rows; I-AutoRec trains on the items')."""
        return matrix

    def batched_rows(self, rows) -> np.ndarray | None:
        """The indices of :meth:`training_rows`' rows the batches are cut from (None: every row)."""
        return None

    def after_fit(self, matrix: sp.csr_matrix) -> None:
        """Work after training (item codes, summaries)."""

    def step_loss(self, module: torch.nn.Module, batch: RowBatch, state: TrainingState,
                  generator: torch.Generator | None = None) -> dict:
        """Deprecated name of :meth:`batch_loss` (``generator`` now travels in ``state.generator``)."""
        warnings.warn(f"{type(self).__name__}.step_loss() is renamed batch_loss(); step_loss goes in the next release",
                      DeprecationWarning, stacklevel=2)
        if generator is not None:
            state = dataclasses.replace(state, generator=generator)
        return self.batch_loss(module, batch, state)

    # -- fitting -----------------------------------------------------------------------------
    def new_module(self) -> torch.nn.Module:
        """A freshly built network of the fitted shape, initialised from ``seed`` by a generator of its own."""
        return self.build_module(torch.Generator().manual_seed(int(self.seed)))

    def check_training_memory(self, rows) -> None:
        """Refuse, before anything is allocated, a fit whose network and batches cannot fit on the device: the
        network (built on "meta", which allocates nothing) in float32 five times over (weights, gradients, two
        Adam moments, the best epoch's copy) and each batch's dense rows four times (input, output, their
        gradients). A hidden=10**6 or a batch_size=10**7 is told, not an allocator's failure half-way."""
        from aerec._torch import device_room_bytes

        with torch.device("meta"):
            parameters = sum(tensor.numel() for tensor in self.new_module().state_dict().values())
        batch_rows = rows.shape[0] if self.batch_size is None else min(int(self.batch_size), rows.shape[0])
        needed = 5 * 4 * parameters + 4 * 4 * batch_rows * rows.shape[1]
        room = device_room_bytes(self.device_)
        if room is not None and needed > room:
            sizes = ", ".join(f"{name}={getattr(self, name)!r}" for name in ("hidden", "latent", "factors")
                              if hasattr(self, name))
            raise MemoryError(
                f"{type(self).__name__}'s training needs about {needed / 2**30:.1f} GiB on {self.device_} "
                f"({parameters:,} parameters with {sizes or 'these settings'}: weights, gradients, Adam's moments "
                f"and the best epoch's copy; batches of {batch_rows:,} rows x {rows.shape[1]:,} columns); "
                f"{room / 2**30:.1f} GiB is free: lower the widths or batch_size")

    def learning_rate(self) -> float:
        """The optimizer's learning rate (``lr``; a model with per-optimizer defaults overrides this)."""
        return float(self.lr)

    def train_config(self) -> TrainConfig:
        """The loop's settings, from the hyper-parameters (a model adjusts them by overriding this)."""
        return TrainConfig(epochs=int(self.epochs), batch_size=self.batch_size, optimizer=getattr(self, "optimizer", "adam"),
                           lr=self.learning_rate(), seed=int(self.seed), device=str(self.device_), patience=self.patience,
                           validate_every=getattr(self, "validate_every", 1), shuffle=True, progress=self.progress,
                           precision=getattr(self, "precision", "fp32"), loss_reduction=self.loss_reduction,
                           max_seconds=self.max_seconds, checkpoint=self.training_checkpoint())

    def _fit(self, matrix: sp.csr_matrix, validation) -> None:
        metric = self.validation_metric(validation)  # checks the validation data before any training
        warm = self._warm_start and getattr(self, "_loop", None) is not None and hasattr(self, "module_")
        if warm and self._fitted_shape != matrix.shape:
            raise ValueError(f"warm_start=True with train of shape {matrix.shape}; the model was fitted on "
                             f"{self._fitted_shape}: continue on the same rows and items, or fit afresh")
        self.device_ = resolve_device(self.device)
        rows = self.training_rows(matrix)
        if not warm:  # a re-fit starts from fresh weights
            self.check_training_memory(rows)
            self.module_ = self.new_module().to(self.device_)
            self._loop = LoopState()
        self._fitted_shape = matrix.shape
        config = self.train_config()
        if metric is None:
            config = dataclasses.replace(config, patience=None)
        self.history_ = train(self.module_, rows, self.batch_loss, config, rows=self.batched_rows(rows),
                              validation_metric=metric, maximize=self.maximize_validation,
                              phases=self.phases(self.module_), callbacks=self._callbacks, state=self._loop,
                              desc=type(self).__name__)
        self.module_.zero_grad(set_to_none=True)  # the last step's gradients are of no further use
        self.n_updates_ = self.history_.updates
        self.best_epoch_ = self.history_.best_epoch if metric is not None else len(self.history_.epochs)
        self.after_fit(matrix)

    # -- scoring -----------------------------------------------------------------------------
    def score_tensor(self, user_items) -> torch.Tensor:
        """Scores (rows, n_items) of the given users' rows, in batches of ``score_batch_rows``, in eval mode."""
        return self.map_batches(user_items, self.score_batch)

    def user_embeddings(self, user_items) -> np.ndarray:
        """The code of each row, folded in with the module in eval mode (:meth:`embed_batch`), float32."""
        return self.map_batches(user_items, self.embed_batch, 0).float().cpu().numpy()

    def embed_batch(self, module: torch.nn.Module, batch: RowBatch) -> torch.Tensor:
        """The code (rows, dimensions) of one batch of rows, the module in eval mode."""
        raise TypeError(f"{type(self).__name__} names no code of a user; user_embeddings needs a model that does")

    def map_batches(self, user_items, function, empty_width: int | None = None) -> torch.Tensor:
        """``function(module, batch)`` over the rows in batches of ``score_batch_rows``, in eval mode, concatenated
        (no rows: an empty tensor ``empty_width`` wide, by default the catalogue's)."""
        rows = self.check_user_items(user_items)
        module = self.module_
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                batches = iter_row_batches(rows, self.score_batch_rows, self.device_)
                parts = [function(module, batch) for batch in batches]
        finally:
            module.train(was_training)
        if not parts:
            return torch.empty((0, self.n_items_ if empty_width is None else empty_width), device=self.device_)
        return torch.cat(parts)


def store_params(model, arguments: dict) -> None:
    """Set each ``__init__`` argument as an attribute of the same name (scikit-learn's convention, in one line)."""
    for name, value in arguments.items():
        if name not in ("self", "__class__"):
            setattr(model, name, value)

