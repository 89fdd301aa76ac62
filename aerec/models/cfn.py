"""CFN: collaborative filtering with stacked denoising autoencoders on sparse inputs, with side information.

Florian Strub, Jérémie Mary. "Collaborative Filtering with Stacked Denoising AutoEncoders and Sparse
Inputs", NIPS 2015 Workshop on Machine Learning for eCommerce; Florian Strub, Romaric Gaudel, Jérémie
Mary. "Hybrid Recommender System based on Autoencoders", DLRS 2016 (arXiv 1606.07659). The authors'
code: github.com/fstrub95/Autoencoders_cf (Lua Torch7; "the reference" below).

For a partially observed rating vector (an item's ratings by the users for I-CFN, a user's ratings of
the items for U-CFN) and the row's side features ``s`` (an item's genres, a user's demographics;
none without side information), each layer reads the previous one's output with ``s`` appended
(CFN++: the side information enters every layer, encoder and decoder):

    h_1 = tanh(W_1 [x ; s] + b_1), ..., h_L = tanh(W_L [h_{L-1} ; s] + b_L),
    decoder mirrored, output y = tanh(V [h'_1 ; s] + c)  over the row's entries.

Ratings are mapped onto [-1, 1] (``(r - 3) / 2`` for 1-5 stars) and centred by the row's mean training
rating; a prediction is ``2 (y + mean) + 3``. Training corrupts the input with masking noise: each
observed rating is hidden (set to 0) with probability ``hide`` (a row whose ratings would all be hidden
keeps them all); the loss is the emphasized denoising loss over the observed ratings only, weight
``alpha`` on the hidden ones and ``beta`` on the others, summed over a row's ratings and averaged over
the rows of a batch; unobserved entries never count, the side features are never corrupted nor
reconstructed. SGD on batches of 35 rows with the learning rate ``lr / (1 + epoch * lr_decay)`` (epoch
1, 2, ...) and weight decay ``l2`` on every parameter (biases included), as the reference's
``optim.sgd``. The first layer reads the sparse batch (an ``embedding_bag``) and the decoder's output
is computed at the observed entries only (a sampled product), so an epoch costs time in proportion to
the ratings times the width; the reference densifies both (same values).

Cold start: an item (I-CFN) or user (U-CFN) without training ratings has an empty input; its
prediction comes from its side features alone, its mean being the global mean training rating.

Defaults: the reference's configuration for MovieLens-10M (``conf.movieLens.10M.V.lua`` for I-CFN,
``.U.lua`` for U-CFN), the paper's main data set: one hidden layer of 770 (I) or 700 (U) units and the
genetic search's alpha, beta, hide, lr, lr_decay and weight decay; 50 epochs of batches of 35.

**Departures from the reference, named:**

- The epoch is chosen on ``validation`` ratings (lowest RMSE, best weights kept); the reference reports
  the lowest *test* RMSE over its epochs.
- Side information is concatenated to the first layer's input as the paper describes; the reference's
  first layer writes it over the first ratings' columns (its sparse offset reads a field that is nil).
- Every row with training ratings is visited each epoch (the reference's ``randperm(N - 1)`` skips one
  row and pads its last batch with stale rows); rows without training ratings are left out of the batches,
  as the reference's.
- Ratings on another scale than 1-5 stars are mapped onto [-1, 1] by their range (``rating_range_``):
  ``(r - (low + high) / 2) / ((high - low) / 2)``; for stars this is the reference's ``(r - 3) / 2``.
- Predictions are clipped to ``rating_range_`` with ``clip=True`` (default False: the reference does not
  clip).
- ``pretrain=True`` trains the layers greedily first (each autoencoder on the codes of the ones below,
  its own phase of ``pretrain_epochs``), then the whole stack; the reference's stacked configuration
  also switches its inner noise to Gaussian and gives each phase its own SGD settings (lr, decay restarted
  at epoch 1, weight decay, batch size, momentum), neither of which is done here: one set of settings and
  one decay schedule serve every phase.
- Ranking (``score_tensor``) of users given as rows: U-CFN encodes them; I-CFN, whose outputs are the
  training users, fits each row's output unit by ridge regression on the items' last codes (as
  aerec's I-AutoRec folds users in; the reference scores training users only).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from aerec.core.closed_form import ridge_output_units
from aerec.data.batching import RowBatch
from aerec.data.interactions import Interactions
from aerec.models.autorec import _canonical, _check_indices
from aerec.models.base import as_csr
from aerec.models.torch_base import TorchRecommender, store_params
from aerec.params import MAX_REAL, RATE, WEIGHT, WIDTH, Boolean, Interval, Options, Satisfies
from aerec.search_space import FloatRange
from aerec.sparse_products import SparsePattern, pattern_matmul, sampled_dot
from aerec.training import Phase, TrainConfig

KINDS = ("item", "user")
#: The reference's MovieLens-10M settings (conf.movieLens.10M.V.lua / .U.lua), found by its genetic search.
REFERENCE_SETTINGS = {
    "item": {"hidden": (770,), "alpha": 0.91210902705444, "beta": 0.54054440256139, "hide": 0.25688179776383,
             "lr": 0.069180836029247, "lr_decay": 0.29623809751744, "l2": 0.052745726597668},
    "user": {"hidden": (700,), "alpha": 1.0336864752695, "beta": 0.38166233734228, "hide": 0.25525745830964,
             "lr": 0.061005359655246, "lr_decay": 0.54645854830742, "l2": 0.00570531450212},
}
_ROWS_PER_BATCH = 2048  # rows encoded at a time when predicting


class CFNNet(nn.Module):
    """The stacked autoencoder: encoder layers ``widths``, the decoder mirrored, ``n_side`` features appended to
    every layer's input. Initialised as torch7's ``nn.Linear``: weights and biases uniform in
    ``(-1/sqrt(fan_in), 1/sqrt(fan_in))``, ``fan_in`` counting the side features."""

    def __init__(self, n_inputs: int, widths: tuple, n_side: int, generator: torch.Generator):
        super().__init__()
        self.n_inputs, self.widths, self.n_side = int(n_inputs), tuple(int(w) for w in widths), int(n_side)
        encoder_in = [self.n_inputs, *self.widths[:-1]]
        decoder = [*reversed(self.widths)]
        decoder_out = [*reversed(self.widths[:-1]), self.n_inputs]
        self.encoders = nn.ModuleList(self._layer(a, b, generator) for a, b in zip(encoder_in, self.widths))
        self.decoders = nn.ModuleList(self._layer(a, b, generator) for a, b in zip(decoder, decoder_out))

    def _layer(self, fan_in: int, out: int, generator: torch.Generator) -> nn.Linear:
        layer = torch.nn.utils.skip_init(nn.Linear, fan_in + self.n_side, out)
        bound = 1.0 / math.sqrt(fan_in + self.n_side)
        if layer.weight.device.type != "meta":
            with torch.no_grad():
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
        return layer

    def _join(self, h: torch.Tensor, side: torch.Tensor | None) -> torch.Tensor:
        return h if side is None or self.n_side == 0 else torch.cat([h, side], 1)

    def encode(self, inputs: SparsePattern, values: torch.Tensor, side: torch.Tensor | None,
               upto: int | None = None) -> torch.Tensor:
        """The code of the rows whose ratings are ``values`` at ``inputs`` (CSR order), through ``upto`` encoder
        layers (default all). The first layer reads the stored entries only."""
        first = self.encoders[0]
        weight = first.weight[:, :self.n_inputs]
        h = pattern_matmul(inputs, values, weight.t()) + first.bias
        if self.n_side:
            h = h + side @ first.weight[:, self.n_inputs:].t()
        h = torch.tanh(h)
        for layer in self.encoders[1:upto]:
            h = torch.tanh(layer(self._join(h, side)))
        return h

    def last_code(self, code: torch.Tensor, side: torch.Tensor | None) -> torch.Tensor:
        """The input of the output layer (the last decoder's hidden units, then the side features)."""
        h = code
        for layer in self.decoders[:-1]:
            h = torch.tanh(layer(self._join(h, side)))
        return self._join(h, side)

    def observed(self, inputs: SparsePattern, values: torch.Tensor, side: torch.Tensor | None,
                 at: SparsePattern) -> torch.Tensor:
        """The output (in [-1, 1]) at the stored entries of ``at`` only, in CSR order."""
        z = self.last_code(self.encode(inputs, values, side), side)
        if at.nnz == 0:
            return z.new_zeros(0)
        out = self.decoders[-1]
        return torch.tanh(sampled_dot(at, z, out.weight) + out.bias[at.col])

    def forward(self, inputs: SparsePattern, values: torch.Tensor, side: torch.Tensor | None) -> torch.Tensor:
        """The dense output (rows, n_inputs) in [-1, 1]."""
        return torch.tanh(self.decoders[-1](self.last_code(self.encode(inputs, values, side), side)))


def _widths(hidden) -> tuple:
    return (int(hidden),) if isinstance(hidden, (int, np.integer)) else tuple(int(w) for w in hidden)


class CFN(TorchRecommender):
    """I-CFN (``kind="item"``) or U-CFN (``kind="user"``) for explicit ratings, with optional side features.

    Parameters
    ----------
    kind : {"item", "user"}
        I-CFN (one vector per item over the users; the paper's better model) or U-CFN.
    hidden : int or tuple of int, optional
        Encoder widths (the decoder mirrors them). None: the reference's (770 for I, 700 for U).
    alpha, beta : float, optional
        Loss weights of the hidden (corrupted) and of the other observed ratings. None: the reference's.
    hide : float, optional
        Probability of hiding each observed input rating while training. None: the reference's (about 0.26).
    lr, lr_decay : float, optional
        SGD's learning rate at epoch ``e`` (1, 2, ...) is ``lr / (1 + e * lr_decay)``. None: the reference's.
    l2 : float, optional
        SGD's weight decay on every parameter. None: the reference's.
    epochs : int
        Epochs (default 50, the reference's for MovieLens-10M); with ``validation`` the epoch of lowest
        validation RMSE is kept.
    batch_size : int
        Rows per update (default 35, the reference's).
    patience : int or None
        With validation: stop after this many epochs without a lower RMSE (None: run every epoch).
    side_information : bool
        Use the side features given to ``fit`` (``item_features`` for I-CFN, ``user_features`` for
        U-CFN); False ignores them (CFN without side information).
    pretrain : bool
        With several layers: first train each layer greedily as its own autoencoder (see the module text).
    pretrain_epochs : int
        Epochs of each layer's greedy phase.
    clip : bool
        Clip predictions to ``rating_range_`` (the reference does not).
    rating_range : (float, float), optional
        The ratings' ``(low, high)``; None: the training ratings' (min, max).
    seed, device, progress, max_seconds, precision
        As every torch model (:mod:`aerec.models.torch_base`).

    Attributes
    ----------
    module_ : CFNNet
    ratings_ : csr_matrix
        The training ratings (users x items).
    row_means_ : ndarray
        Each input row's mean training rating in [-1, 1] (the global mean for rows without ratings).
    side_ : csr_matrix or None
        The side features of the input rows (items for I-CFN), aligned to the training ids.
    side_names_ : list
        The side features' names.
    """

    fitted_dtypes = {"user_seen_": "bool", "item_seen_": "bool"}
    parameter_constraints = {
        "kind": [Options(*KINDS)],
        "hidden": [None, WIDTH, Satisfies(lambda v: isinstance(v, (tuple, list)) and 0 < len(v) <= 8 and all(
            WIDTH.is_satisfied_by(w) for w in v), "a tuple of 1 to 8 positive widths")],
        "alpha": [WEIGHT, None], "beta": [WEIGHT, None], "hide": [Interval(float, 0.0, 1.0, closed="left"), None],
        "lr": [RATE, None], "lr_decay": [WEIGHT, None], "l2": [WEIGHT, None],
        "side_information": [Boolean()], "pretrain": [Boolean()], "pretrain_epochs": [WIDTH], "clip": [Boolean()],
        "rating_range": [None, Satisfies(lambda pair: isinstance(pair, (tuple, list)) and len(pair) == 2
                                         and all(Interval(float, -MAX_REAL, MAX_REAL).is_satisfied_by(v) for v in pair)
                                         and pair[0] < pair[1], "(low, high), two finite numbers with low < high")],
    }
    search_space = {"alpha": FloatRange(0.5, 1.5), "beta": FloatRange(0.1, 1.0), "hide": FloatRange(0.0, 0.5),
                    "lr": FloatRange(0.005, 0.2, log=True), "l2": FloatRange(1e-4, 0.1, log=True)}
    loss_reduction = "mean"
    maximize_validation = False

    def __init__(self, kind: str = "item", hidden=None, alpha: float | None = None, beta: float | None = None,
                 hide: float | None = None, lr: float | None = None, lr_decay: float | None = None,
                 l2: float | None = None, epochs: int = 50, batch_size: int = 35, patience: int | None = None,
                 side_information: bool = True, pretrain: bool = False, pretrain_epochs: int = 10,
                 clip: bool = False, rating_range: tuple | None = None, seed: int = 0, device: str = "auto",
                 progress: bool = False, max_seconds: float | None = None, precision: str = "fp32"):
        store_params(self, locals())

    def setting(self, name: str):
        """A hyper-parameter's value, the reference's where it is None."""
        value = getattr(self, name)
        return REFERENCE_SETTINGS[self.kind][name] if value is None else value

    # -- fitting ---------------------------------------------------------------------------------------
    def fit(self, train, validation=None, checkpoint=None, callbacks=(), warm_start: bool = False, *,
            item_features=None, user_features=None, user: str = "user", item: str = "item",
            rating: str | bool | None = None) -> "CFN":
        """Learn from ``train`` (users x items ratings: Interactions, sparse matrix or frame); returns ``self``.

        ``item_features`` / ``user_features``: :class:`~aerec.data.features.SideFeatures` (aligned here to
        ``train``'s ids: ids without features get zero rows) or a matrix with one row per training item /
        user. I-CFN uses the item features, U-CFN the user features (the other is ignored).
        ``validation``: held-out ratings of the same shape (or a frame), for the epoch count.
        """
        train, validation = self.fit_inputs(train, validation, user, item, rating)
        self.check_params()
        self._side_table = self._side_input(train, item_features if self.kind == "item" else user_features)
        ratings = _canonical(as_csr(train, "train"))
        if ratings.nnz and ratings.data.min() == ratings.data.max():
            warnings.warn(f"train's {ratings.nnz} ratings are all {float(ratings.data[0])!r}: CFN is a rating model",
                          UserWarning, stacklevel=2)
        if validation is not None:
            validation = _canonical(as_csr(validation, "validation"))
            if validation.shape != ratings.shape or validation.nnz == 0:
                raise ValueError(f"validation has shape {validation.shape} and {validation.nnz} ratings; expected "
                                 f"held-out ratings of train's shape {ratings.shape}")
            if ratings.multiply(validation.astype(bool)).nnz:
                raise ValueError("validation shares (user, item) pairs with train; expected held-out ratings only")
        return super().fit(train, validation, checkpoint, callbacks, warm_start)

    def _side_input(self, train, features):
        """The side features of the input rows (items for I-CFN), as (csr, names, source) or None."""
        if features is None or not self.side_information:
            return None
        from aerec.data.features import SideFeatures

        n_rows = as_csr(train, "train").shape[1 if self.kind == "item" else 0]
        if isinstance(features, SideFeatures):
            if not isinstance(train, Interactions):
                raise TypeError("SideFeatures are lined up by id: pass train as a frame or Interactions (or give "
                                "the features as a matrix with one row per training "
                                f"{'item' if self.kind == 'item' else 'user'})")
            ids = train.item_ids if self.kind == "item" else train.user_ids
            aligned = features.align(ids, what=self.kind)
            return aligned.matrix.astype(np.float32), list(aligned.names), features
        matrix = sp.csr_matrix(features, dtype=np.float32)
        if matrix.shape[0] != n_rows:
            raise ValueError(f"{self.kind}_features has {matrix.shape[0]} rows; expected one per training "
                             f"{self.kind} ({n_rows})")
        if not np.isfinite(matrix.data).all():
            raise ValueError(f"{self.kind}_features holds NaN or infinite values; expected finite numbers")
        return matrix, [f"feature_{j}" for j in range(matrix.shape[1])], None

    def _fit(self, matrix: sp.csr_matrix, validation) -> None:
        ratings = _canonical(matrix)
        self.ratings_ = ratings
        self.rating_range_ = (tuple(float(v) for v in self.rating_range) if self.rating_range is not None
                              else (float(ratings.data.min()), float(ratings.data.max())))
        low, high = self.rating_range_
        self.scale_ = ((low + high) / 2, max((high - low) / 2, 1e-12))  # rating -> (rating - center) / half
        side = self._side_table
        self.side_ = side[0] if side is not None else None
        self.side_names_ = side[1] if side is not None else []
        self.side_spec_ = side[2].spec if side is not None and side[2] is not None else []
        rows = _canonical(ratings.T.tocsr() if self.kind == "item" else ratings)
        _, self.row_means_, self.input_rows_ = self._scaled_rows(rows, self._training_mean(ratings))
        self.user_seen_ = np.diff(ratings.indptr) > 0
        self.item_seen_ = np.bincount(ratings.indices, minlength=ratings.shape[1]) > 0
        super()._fit(ratings, validation)

    def training_rows(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        return self.input_rows_

    def batched_rows(self, rows: sp.csr_matrix) -> np.ndarray:
        """The rows with training ratings: the reference skips the others, so each batch holds ``batch_size``
        rows that have a loss."""
        return np.flatnonzero(np.diff(rows.indptr) > 0)

    def build_module(self, generator: torch.Generator) -> CFNNet:
        rows = self.input_rows_
        return CFNNet(rows.shape[1], _widths(self.setting("hidden")), self._side_tensor.shape[1], generator)

    def learning_rate(self) -> float:
        return float(self.setting("lr")) / (1.0 + float(self.setting("lr_decay")))  # epoch 1's rate

    def train_config(self) -> TrainConfig:
        config = super().train_config()
        return TrainConfig(**{**vars(config), "optimizer": "sgd", "weight_decay": float(self.setting("l2"))})

    def phases(self, module: CFNNet) -> list[Phase]:
        lr, decay = float(self.setting("lr")), float(self.setting("lr_decay"))

        def schedule(optimizer, state) -> None:  # after epoch e (0-based) comes epoch e + 2 (1-based)
            for group in optimizer.param_groups:
                group["lr"] = lr / (1.0 + (state.epoch + 2) * decay)

        layers = len(module.encoders)
        if not self.pretrain or layers == 1:
            return [Phase(after=schedule)]
        phases, start = [], 0
        for depth in range(layers):
            def parameters(net, depth=depth):
                return [*net.encoders[depth].parameters(), *net.decoders[layers - 1 - depth].parameters()]

            stop = start + int(self.pretrain_epochs)
            phases.append(Phase(name=f"layer{depth + 1}", parameters=parameters, epochs=(start, stop), after=schedule))
            start = stop
        phases.append(Phase(name="stack", epochs=(start, None), after=schedule))
        return phases

    @property
    def _side_tensor(self) -> torch.Tensor:
        """The side features as a dense tensor (rows x features; 0 wide without side information), kept once made."""
        cached = self.__dict__.get("_side_cache")
        if cached is None or cached[0] is not self.side_:
            width = 0 if self.side_ is None else self.side_.shape[1]
            dense = (torch.from_numpy(self.side_.toarray()) if width else
                     torch.zeros((self.input_rows_.shape[0], 0)))
            self.__dict__["_side_cache"] = cached = (self.side_, dense)
        return cached[1]

    def side_rows(self, index) -> torch.Tensor | None:
        if self.side_ is None or self.side_.shape[1] == 0:
            return None
        return self._side_tensor[torch.as_tensor(np.asarray(index), dtype=torch.long)].to(self.device_)

    def batch_loss(self, module: CFNNet, batch: RowBatch, state) -> dict:
        """The emphasized denoising loss of the batch (masking noise on the observed input ratings)."""
        parts = batch.parts
        values = parts.val
        rows = batch.row_of_entry
        hide = float(self.setting("hide"))
        hidden = torch.rand(values.shape, generator=state.generator, device="cpu").to(values.device) < hide
        kept = torch.zeros(len(batch), device=values.device).index_add_(0, rows, (~hidden).float())
        hidden &= (kept[rows] > 0)  # a row whose ratings would all be hidden keeps them all
        side = self.side_rows(batch.index)
        depth = self._pretraining_depth(state)
        if depth is not None:
            return self._layer_loss(module, batch, side, depth, hidden, state)
        pred = module.observed(batch.pattern, values * (~hidden), side, batch.pattern)
        weights = torch.where(hidden, float(self.setting("alpha")), float(self.setting("beta")))
        per_entry = weights * (pred - values) ** 2
        loss = torch.zeros(len(batch), device=values.device).index_add_(0, rows, per_entry).mean()
        return {"loss": loss}

    def _pretraining_depth(self, state) -> int | None:
        name = getattr(state, "phase", "all")
        return int(name[5:]) - 1 if isinstance(name, str) and name.startswith("layer") else None

    def _layer_loss(self, module: CFNNet, batch: RowBatch, side, depth: int, hidden, state) -> dict:
        """Greedy pre-training of layer ``depth``: its encoder and the mirrored decoder reconstruct the codes
        below (the ratings, as the full loss, for the first layer), masking noise on the input."""
        values = batch.parts.val
        if depth == 0:
            code = module.encode(batch.pattern, values * (~hidden), side, upto=1)
            out = module.decoders[-1]
            z = module._join(code, side)
            pred = torch.tanh(sampled_dot(batch.pattern, z, out.weight) + out.bias[batch.pattern.col])
            weights = torch.where(hidden, float(self.setting("alpha")), float(self.setting("beta")))
            loss = torch.zeros(len(batch), device=values.device).index_add_(
                0, batch.row_of_entry, weights * (pred - values) ** 2).mean()
            return {"loss": loss}
        with torch.no_grad():
            below = module.encode(batch.pattern, values, side, upto=depth)
        mask = torch.rand(below.shape, generator=state.generator) >= float(self.setting("hide"))
        code = torch.tanh(module.encoders[depth](module._join(below * mask.to(below.device), side)))
        rebuilt = torch.tanh(module.decoders[len(module.encoders) - 1 - depth](module._join(code, side)))
        return {"loss": ((rebuilt - below) ** 2).sum(1).mean()}

    def validation_metric(self, validation):
        if validation is None:
            return None
        coo = validation.tocoo()
        users, items, truth = coo.row, coo.col, coo.data.astype(np.float64)

        def rmse(module):
            return float(np.sqrt(np.mean((self._predict_pairs(module, users, items) - truth) ** 2)))

        return rmse

    def after_fit(self, matrix: sp.csr_matrix) -> None:
        if self.history_.best_epoch is None:
            self.best_epoch_ = None
        self.last_codes_ = self._codes(self.module_, np.arange(self.input_rows_.shape[0]))

    # -- prediction -----------------------------------------------------------------------------------------
    def predict(self, users, items) -> np.ndarray:
        """Ratings for (user index, item index) pairs of the training matrix, from the training ratings only (an
        item or user without training ratings is predicted from its side features, or its mean)."""
        self.check_fitted()
        users, items = _check_indices(users, items, self.ratings_.shape)
        return self._predict_pairs(self.module_, users, items)

    def _predict_pairs(self, module: CFNNet, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        rows, cols = (items, users) if self.kind == "item" else (users, items)
        out = self._output_at(module, rows, cols)
        predicted = self.scale_[1] * (out + self.row_means_[rows].astype(np.float64)) + self.scale_[0]
        return np.clip(predicted, *self.rating_range_) if self.clip else predicted

    @torch.no_grad()
    def _output_at(self, module: CFNNet, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        if len(rows) == 0:
            return np.zeros(0)
        n_rows, n_cols = self.input_rows_.shape
        keys, inverse = np.unique(rows.astype(np.int64) * n_cols + cols, return_inverse=True)
        key_rows, key_cols = np.divmod(keys, n_cols)
        pattern = sp.csr_matrix((np.ones(len(keys), np.float32), key_cols,
                                 np.searchsorted(key_rows, np.arange(n_rows + 1))), shape=(n_rows, n_cols))
        needed = np.unique(key_rows)
        was_training = module.training
        module.eval()
        values = []
        try:
            for start in range(0, len(needed), _ROWS_PER_BATCH):
                chunk = needed[start:start + _ROWS_PER_BATCH]
                inputs = RowBatch(chunk, self.input_rows_[chunk], self.device_)
                at = RowBatch(chunk, pattern[chunk], self.device_)
                values.append(module.observed(inputs.pattern, inputs.parts.val, self.side_rows(chunk),
                                              at.pattern).double().cpu().numpy())
        finally:
            module.train(was_training)
        return np.concatenate(values)[inverse.ravel()]

    @torch.no_grad()
    def _codes(self, module: CFNNet, rows: np.ndarray) -> torch.Tensor:
        """The output layer's input (last hidden units and side features) of the given input rows."""
        parts = []
        for start in range(0, len(rows), _ROWS_PER_BATCH):
            chunk = rows[start:start + _ROWS_PER_BATCH]
            batch = RowBatch(chunk, self.input_rows_[chunk], self.device_)
            side = self.side_rows(chunk)
            parts.append(module.last_code(module.encode(batch.pattern, batch.parts.val, side), side))
        return torch.cat(parts) if parts else torch.zeros((0, 1))

    # -- representations -----------------------------------------------------------------------------------
    @torch.no_grad()
    def item_embeddings(self) -> np.ndarray:
        """One vector per item, float32: I-CFN's code of the item's training ratings (and side features), the last
        encoder layer's units; U-CFN's column of the first layer's weights (what the item's rating adds)."""
        self.check_fitted()
        if self.kind == "user":
            weight = self.module_.encoders[0].weight[:, :self.module_.n_inputs].T
            return weight.detach().float().cpu().contiguous().numpy()
        rows = np.arange(self.input_rows_.shape[0])
        parts = []
        for start in range(0, len(rows), _ROWS_PER_BATCH):
            chunk = rows[start:start + _ROWS_PER_BATCH]
            batch = RowBatch(chunk, self.input_rows_[chunk], self.device_)
            parts.append(self.module_.encode(batch.pattern, batch.parts.val, self.side_rows(chunk)))
        return torch.cat(parts).float().cpu().numpy()

    @torch.no_grad()
    def user_embeddings(self, user_items) -> np.ndarray:
        """One vector per row (folded in), float32: U-CFN's code of the row (no side features: zeros); I-CFN's
        fitted output unit, the ridge weights on the items' last codes (zeros for an empty row)."""
        rows = _canonical(self.check_user_items(user_items))
        scaled, means, centred = self._scaled_rows(rows, self._training_mean(self.ratings_))
        if self.kind == "item":
            units = ridge_output_units(self.last_codes_.to(self.device_), scaled, float(self.setting("l2")))
            return units[:, :-1].float().cpu().numpy()
        codes = []
        for start in range(0, rows.shape[0], _ROWS_PER_BATCH):
            batch = RowBatch(np.arange(start, min(start + _ROWS_PER_BATCH, rows.shape[0])),
                             centred[start:start + _ROWS_PER_BATCH], self.device_)
            codes.append(self.module_.encode(batch.pattern, batch.parts.val, self._blank_side(len(batch))))
        width = self.module_.widths[-1]
        return (torch.cat(codes) if codes else torch.zeros((0, width))).float().cpu().numpy()

    def _scaled(self, rows: sp.csr_matrix) -> sp.csr_matrix:
        """Ratings mapped onto [-1, 1]."""
        scaled = rows.copy()
        scaled.data = ((rows.data.astype(np.float64) - self.scale_[0]) / self.scale_[1]).astype(np.float32)
        return scaled

    def _training_mean(self, ratings: sp.csr_matrix) -> float:
        """The mean training rating on [-1, 1]: the mean of a row without ratings (the module text's cold row)."""
        return float(np.mean(self._scaled(ratings).data, dtype=np.float64)) if ratings.nnz else 0.0

    def _scaled_rows(self, rows: sp.csr_matrix, empty_mean: float):
        """``(scaled, means, centred)``: rows of ratings mapped onto [-1, 1], each row's mean there (``empty_mean``
        for a row without ratings), and the scaled rows less their means (what the network reads)."""
        scaled = self._scaled(rows)
        counts = np.diff(scaled.indptr)
        means = np.full(rows.shape[0], empty_mean, dtype=np.float64)
        rated = counts > 0
        if scaled.nnz:  # reduceat over the rated rows' starts (an empty last row's start is past the data)
            means[rated] = np.add.reduceat(scaled.data.astype(np.float64), scaled.indptr[:-1][rated]) / counts[rated]
        means = means.astype(np.float32)
        centred = scaled.copy()
        centred.data = (scaled.data - np.repeat(means, counts)).astype(np.float32)
        return scaled, means, centred

    def _blank_side(self, n_rows: int) -> torch.Tensor | None:
        """Side features of rows given at scoring time (none are known: zeros), or None without side information."""
        if self.side_ is None or self.side_.shape[1] == 0:
            return None
        return torch.zeros((n_rows, self.side_.shape[1]), device=self.device_)

    # -- ranking -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def score_tensor(self, user_items) -> torch.Tensor:
        """Predicted ratings of every item for the given users' rows (n_rows, n_items); see the module text."""
        rows = _canonical(self.check_user_items(user_items))
        scaled, means, centred = self._scaled_rows(rows, self._training_mean(self.ratings_))
        if self.kind == "user":
            out = []
            for start in range(0, rows.shape[0], _ROWS_PER_BATCH):
                batch = RowBatch(np.arange(start, min(start + _ROWS_PER_BATCH, rows.shape[0])),
                                 centred[start:start + _ROWS_PER_BATCH], self.device_)
                dense = self.module_(batch.pattern, batch.parts.val, self._blank_side(len(batch)))
                out.append(self.scale_[1] * (dense + torch.from_numpy(means[batch.index]).to(self.device_)[:, None])
                           + self.scale_[0])
            return torch.cat(out).float() if out else torch.zeros((0, self.n_items_), device=self.device_)
        codes = self.last_codes_.to(self.device_)
        units = ridge_output_units(codes, scaled, float(self.setting("l2")))
        weights = torch.cat([codes.double(), torch.ones((codes.shape[0], 1), dtype=torch.float64,
                                                        device=self.device_)], 1)
        return (self.scale_[1] * (units @ weights.T) + self.scale_[0]).float()

