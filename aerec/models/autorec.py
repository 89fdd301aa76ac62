"""AutoRec: item-based (I-AutoRec) and user-based (U-AutoRec) autoencoders for explicit ratings.

Suvash Sedhain, Aditya Krishna Menon, Scott Sanner, Lexing Xie. "AutoRec:
Autoencoders Meet Collaborative Filtering", WWW 2015 (companion).
https://doi.org/10.1145/2740908.2742726 ; the authors' code: github.com/mesuvash/NNRec
(``nn/autorec``, "the reference" below).

For a partially observed vector ``r`` (an item's ratings by all users for
I-AutoRec, a user's ratings of all items for U-AutoRec; unobserved entries are
0 in the input) the network is

    h(r) = g(W f(V r + mu) + b),   f = sigmoid, g = identity, hidden size k = 500,

and the objective, exactly the paper's, is

    sum over vectors r, over the observed entries of r, of (r - h(r))^2
        + (lambda / 2) (||W||_F^2 + ||V||_F^2)                   (biases unregularised).

The loss is evaluated at the observed entries only: the decoder's outputs are
computed there and nowhere else (a sampled dense x dense product, as the
reference's "partial" output layer), so an epoch costs time in proportion to the
number of ratings times ``k``; the first layer reads a sparse batch.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from aerec._torch import csr_to_sparse_tensor
from aerec.core.closed_form import ridge_output_units
from aerec.core.layers import SparseInputLinear, weight_matrices
from aerec.core.losses import masked_squared_error, reduce_rows
from aerec.core.penalties import l2_weight_decay
from aerec.data.batching import RowBatch
from aerec.data.interactions import Interactions
from aerec.models.base import as_csr
from aerec.models.torch_base import TorchRecommender, store_params
from aerec.params import BATCH, MAX_REAL, RATE, WIDTH, Boolean, Interval, Options, Satisfies
from aerec.search_space import Choice, FloatRange
from aerec.sparse_products import SparsePattern, pattern_matmul, sampled_dot
from aerec.training import Phase, TrainConfig

KINDS = ("item", "user")
OPTIMIZERS = ("climin_rprop", "rprop", "lbfgs", "adam")
FULL_BATCH = ("climin_rprop", "rprop")
#: The initial step / learning rate per optimizer when ``lr=None`` (see :class:`AutoRec`).
DEFAULT_LR = {"climin_rprop": 2e-6, "rprop": 2e-6, "lbfgs": 1.0, "adam": 1e-3}

# The reference's initialisation (nn/blocks/nn.py): weights 0.01 * N(0, 1), biases 0.001 * N(0, 1).
_WEIGHT_STD, _BIAS_STD = 0.01, 0.001
# The reference's Rprop schedule (climin.Rprop with NNRec's learner.py): step sizes clipped to [1e-6, 1],
# shrink 0.5; growth 5.0 for the first iterations, 1.2 from the 7th on.
_RPROP_STEP_SIZES = (1e-6, 1.0)
_RPROP_FAST_GROWTH, _RPROP_GROWTH, _RPROP_SHRINK, _RPROP_FAST_UNTIL = 5.0, 1.2, 0.5, 6
_ROWS_PER_BATCH = 2048  # rows encoded at a time when predicting / scoring (never the whole matrix)


class AutoRecNet(nn.Module):
    """One hidden layer: ``h(r) = W sigmoid(V r + mu) + b`` over ``n_inputs`` entries.

    ``encoder`` holds ``V`` (as a (k, n_inputs) weight) and ``mu``; ``decoder``
    holds ``W`` (n_inputs, k) and ``b``. Initialised as the reference: weights
    N(0, 0.01^2), biases N(0, 0.001^2), drawn from ``generator``.

    Parameters
    ----------
    n_inputs : int
        Length of the rating vectors (users for I-AutoRec, items for U-AutoRec).
    hidden : int
        Hidden units ``k``.
    generator : torch.Generator, optional
        Source of the initial weights (a seeded one makes fits reproducible).
    """

    def __init__(self, n_inputs: int, hidden: int, generator: torch.Generator | None = None):
        super().__init__()
        # the layers' own initialisation is drawn from a throwaway generator: the reference's, below, replaces it
        self.encoder = SparseInputLinear(n_inputs, hidden, generator=torch.Generator())
        self.decoder = torch.nn.utils.skip_init(nn.Linear, hidden, n_inputs)
        with torch.no_grad():
            for layer in (self.encoder, self.decoder):
                layer.weight.normal_(0.0, _WEIGHT_STD, generator=generator)
                layer.bias.normal_(0.0, _BIAS_STD, generator=generator)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``sigmoid(V r + mu)`` of shape (batch, k) for a dense or sparse COO batch of rating vectors."""
        return torch.sigmoid(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The dense reconstruction ``h(r)`` of shape (batch, n_inputs)."""
        return self.decoder(self.encode(x))

    def encode_entries(self, inputs: SparsePattern, values: torch.Tensor) -> torch.Tensor:
        """:meth:`encode` of rows given as their stored ``values`` at ``inputs`` (CSR order); cost: entries x k."""
        return torch.sigmoid(pattern_matmul(inputs, values, self.encoder.weight.t()) + self.encoder.bias)

    def observed(self, inputs: SparsePattern, values: torch.Tensor, at: SparsePattern) -> torch.Tensor:
        """``h(r)`` at the stored entries of ``at`` only, in CSR order (row by row, columns ascending).

        The rows ``r`` hold ``values`` at ``inputs``; ``at`` has the same rows. The encoder
        reads the stored entries and the decoder's product is computed at ``at``'s entries
        alone (:func:`aerec.sparse_products.sampled_dot`), so the cost grows with the
        entries of both, times ``k``, never with rows x columns.
        """
        codes = self.encode_entries(inputs, values)
        if at.nnz == 0:
            return codes.new_zeros(0)
        return sampled_dot(at, codes, self.decoder.weight) + self.decoder.bias[at.col]


def autorec_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, weights, l2: float) -> dict:
    """AutoRec's objective: ``sum_{observed} (target - pred)^2 + (l2 / 2) sum_k ||W_k||_F^2``.

    Parameters
    ----------
    pred, target : torch.Tensor
        Reconstructions and ratings of shape (rows, columns).
    mask : torch.Tensor of bool
        True at the observed ratings; every other entry adds exactly nothing (whatever
        ``pred`` and ``target`` hold there) and gets zero gradient.
    weights : iterable of torch.Tensor
        The weight matrices ``V`` and ``W`` (not the biases).
    l2 : float
        ``lambda``.

    Returns
    -------
    dict
        ``{"loss": ..., "squared_error": ..., "penalty": ...}``, scalar tensors.
    """
    squared_error = reduce_rows(masked_squared_error(pred, target, mask), "sum")
    penalty = l2_weight_decay(weights, l2)
    return {"loss": squared_error + penalty, "squared_error": squared_error, "penalty": penalty}


def autorec_objective(module: AutoRecNet, rows: sp.csr_matrix | RowBatch, l2: float,
                      device: torch.device | None = None) -> dict:
    """The paper's objective over the stored ratings of ``rows`` (a batch of rating vectors).

    ``sum_{stored (j, c)} (rows[j, c] - h(rows[j])[c])^2 + (l2 / 2)(||W||^2 + ||V||^2)``: each row is
    encoded from its stored ratings (unstored entries are 0 in the input) and the output layer is
    evaluated at the stored entries only; the sum is :func:`autorec_loss`'s masked squared error.

    Parameters
    ----------
    module : AutoRecNet
    rows : RowBatch or csr_matrix
        A batch cut by the training loop, or a canonical CSR (sorted indices, no duplicates),
        with ``module``'s number of columns.
    l2 : float
        ``lambda``.
    device : torch.device, optional
        Where ``module`` lives, for a CSR ``rows`` (default: the device of its parameters).

    Returns
    -------
    dict
        ``{"loss", "squared_error", "penalty"}``, scalar tensors.
    """
    if not isinstance(rows, RowBatch):
        device = device if device is not None else next(module.parameters()).device
        rows = RowBatch(np.arange(rows.shape[0]), rows, device)
    pred = module.observed(rows.pattern, rows.parts.val, rows.pattern)
    target = rows.parts.val
    mask = torch.ones((1, target.numel()), dtype=torch.bool, device=target.device)  # every stored entry is observed
    return autorec_loss(pred[None], target[None], mask, weight_matrices(module), l2)


class AutoRec(TorchRecommender):
    """I-AutoRec (``kind="item"``) or U-AutoRec (``kind="user"``) for explicit ratings.

    The caller always passes users x items matrices; I-AutoRec trains on the
    transpose (one vector per item, over the training users) inside the model.
    The model keeps the training ratings (``ratings_``): ``predict`` reconstructs
    from them.

    Parameters
    ----------
    kind : {"item", "user"}
        I-AutoRec (the paper's better model) or U-AutoRec.
    hidden : int
        Hidden units ``k`` (paper: 500).
    l2 : float
        ``lambda`` of the paper's objective (see the module docstring); default 100, the
        value the reference's grid picked. The reference code minimises
        ``0.5 * squared error + (lambda / 2) ||W||^2``, half the paper's squared error: its
        ``lambda`` equals this ``l2 / 2`` (``l2=200`` here is its ``lambda=100``).
    epochs : int
        Optimiser iterations (full-batch: one iteration = one epoch). With ``validation``
        the iteration of lowest validation RMSE is kept.
    optimizer : {"climin_rprop", "rprop", "lbfgs", "adam"}
        "climin_rprop" (the default): full-batch Rprop with the reference's update rule
        (climin's, :class:`aerec.optim.CliminRprop`) and schedule. "rprop": full-batch
        torch Rprop (iRprop-) with the same schedule. "lbfgs": full-batch
        L-BFGS (the reference's other optimiser, strong Wolfe line search).
        "adam": Adam on minibatches of ``batch_size`` rows (not the paper's).
    lr : float, optional
        Rprop's first step size, L-BFGS's step, Adam's learning rate. None: 2e-6 for Rprop
        (the reference's first step), 1.0 for L-BFGS, 1e-3 for Adam.
    batch_size : int, optional
        Rows per batch. None: all rows at once. With "lbfgs" the gradient is still the
        full-batch one (summed over batches, to bound memory); the Rprops take None only.
    patience : int or None, default 20
        With ``validation``: stop after this many iterations without a lower validation
        RMSE (None: run all ``epochs``; the best iteration is kept either way). The paper
        chooses the iteration count on validation data; 20 ends a run that has passed its
        best instead of running the other ``epochs`` for nothing. With Rprop's
        schedule the first steps are tiny: the outputs start near 0, the clipped predictions
        sit at the bottom of the rating range and the validation RMSE does not move for
        about 6 iterations, so a patience under ~10 can stop inside that plateau.
    default_rating : float, optional
        Prediction for a (user, item) pair whose user or item has no training rating, on the
        ratings' scale. None (the default): 3 stars, as the paper (following LLORMA) and the
        reference, that is 3.0 unless the ratings are rescaled (``rescale``), where it is the
        rating that 3 stars maps back to (50 on 0-100). Returned as given, not clipped.
    rating_range : (float, float), optional
        Allowed ratings ``(low, high)``; training ratings outside it are refused, and
        predictions are clipped to it. None: the training ratings' (min, max).
    rescale : bool or None
        Train on the ratings mapped linearly from ``rating_range_`` onto the 1-5 stars the
        reference's settings were made for (``l2``, Rprop's first steps); predictions and
        scores are mapped back. None (the default): rescale only a scale that is not
        stars, that is when the ratings do not lie within [0, 5] or span less than 3
        (0-100, 1-10, 0-1); 1-5 and 0.5-5 stars are used as they are, the reference
        exactly. False: never (the reference on any scale).
    seed : int
        Seeds the initial weights (and Adam's batch order).
    device : str
        "auto" (CUDA when present), "cpu" or "cuda".
    progress : bool
        Show a progress bar on stderr while training.
    max_seconds : float, optional
        A wall-clock budget per ``fit`` (:mod:`aerec.models.torch_base`).

    Attributes
    ----------
    module_ : AutoRecNet
        The network (``net_``, its former name, still works for one release, with a DeprecationWarning).
    ratings_ : csr_matrix
        The training ratings (users x items).
    rating_range_ : (float, float)
        Where predictions are clipped.
    scale_ : (float, float)
        ``(a, b)``: the network sees ``a * rating + b``; ``(1.0, 0.0)`` when not rescaled.
    history_ : aerec.training.History
        Per-iteration loss terms, seconds and validation RMSE; ``history_.best_epoch``.
    best_epoch_ : int or None
        The kept iteration when fitted with ``validation``, else None.
    item_codes_ : torch.Tensor
        I-AutoRec only: ``sigmoid(V r_i + mu)`` of every item's training vector, (n_items, k).

    Notes
    -----
    **Prediction** (``predict``): I-AutoRec reconstructs item ``i``'s training vector and
    reads entry ``u``; U-AutoRec reconstructs user ``u``'s training vector and reads entry
    ``i``. Only the needed rows are encoded, in batches, and the output layer is evaluated
    at the requested entries only. Held-out ratings never enter the network.

    **Ranking** (``score_tensor(user_items)``, rows that may be unseen users):
    U-AutoRec reconstructs the given rows (fold-in). I-AutoRec's network has one output
    unit per *training* user, so a row given at score time is treated as a new user whose
    output unit (decoder row ``w`` and bias ``c``) is fitted to the row's ratings by the
    paper's objective restricted to those parameters, the rest of the network fixed:
    ``min_{w,c} sum_{i rated} (r_i - w . z_i - c)^2 + (l2 / 2) ||w||^2`` with ``z_i`` the item
    codes (``item_codes_``), a ridge regression solved exactly; scores are ``w . z_i + c``
    for every item. A training user's row is folded in the same way (the training
    reconstruction is not looked up: rows carry no user id). A row without ratings scores
    ``default_rating`` everywhere under I-AutoRec, the reconstruction of the zero vector
    under U-AutoRec. Scores are not clipped (clipping would tie the top of the ranking).
    Under I-AutoRec a row whose ratings are all one value (or none) is fitted by ``c`` alone
    and every item would score alike (top-N in catalogue order): its scores get the item's
    training popularity as a tie-break, at most ``POPULARITY_TIE_BREAK`` (1e-3) added.

    **Departures from the reference, named:**

    - None in the optimizer: the default Rprop is climin's update rule with the
      reference's schedule (first step 2e-6, growth 5.0 up to the 6th iteration then 1.2,
      shrink 0.5, steps clipped to [1e-6, 1]). ``optimizer="rprop"`` swaps in torch's
      iRprop- (after a sign change the step shrinks and no update is made); on ML-100K
      90/10 (5 seeds, λ=100) it gave test RMSE 0.8896 against climin's 0.8893.
    - The reference's objective halves the squared error (see ``l2``); the paper's is used.
    - The reference's 1M configuration files set ``binary: True`` on the hidden layer
      (hidden units thresholded at 0.5 in the forward pass); the paper describes a plain
      sigmoid layer, which is what this is.
    - The iteration count: the reference prints test RMSE every 5 iterations; here it is
      chosen on ``validation`` ratings, every iteration, and the best weights are kept.
    - With minibatches (``adam``, or chunked ``lbfgs``) the penalty of a batch is weighted
      by its share of the rows, so the batches' losses add up to the paper's objective.
    - Ratings on another scale than stars are rescaled onto 1-5 inside (``rescale``): on
      ML-100K's ratings mapped onto 0-100 the reference's settings trained to an RMSE
      worse than the ratings' standard deviation; rescaled, the model is the 1-5 one's
      with its predictions mapped back. Star ratings are untouched.
    """

    fitted_dtypes = {"user_seen_": "bool", "item_seen_": "bool"}
    parameter_constraints = {
        "kind": [Options(*KINDS)], "hidden": [WIDTH], "l2": [RATE], "optimizer": [Options(*OPTIMIZERS)],
        "lr": [RATE, None], "batch_size": [BATCH, None], "default_rating": [Interval(float, -MAX_REAL, MAX_REAL), None],
        "rating_range": [None, Satisfies(lambda pair: isinstance(pair, (tuple, list)) and len(pair) == 2
                                   and all(Interval(float, -MAX_REAL, MAX_REAL).is_satisfied_by(v) for v in pair) and pair[0] < pair[1],
                                   "(low, high), two finite numbers with low < high")],
        "rescale": [None, Boolean()],
    }
    #: Sedhain et al. tune lambda in {0.001, 0.01, 0.1, 1, 100, 1000}; Rprop takes no learning rate
    search_space = {"l2": FloatRange(1e-3, 1000.0, log=True), "hidden": Choice(100, 300, 500), "lr": None}
    loss_reduction = "sum"
    maximize_validation = False

    def __init__(self, kind: str = "item", hidden: int = 500, l2: float = 100.0, epochs: int = 200,
                 optimizer: str = "climin_rprop", lr: float | None = None, batch_size: int | None = None,
                 patience: int | None = 20, default_rating: float | None = None, rating_range: tuple | None = None,
                 rescale: bool | None = None, seed: int = 0, device: str = "auto", progress: bool = False,
                 max_seconds: float | None = None):
        store_params(self, locals())

    def check_param_combinations(self) -> None:
        if self.lr is not None and self.optimizer == "climin_rprop" and self.lr < 2 * _RPROP_STEP_SIZES[0]:
            raise ValueError(f"lr={self.lr!r} with optimizer='climin_rprop'; expected at least "
                             f"{2 * _RPROP_STEP_SIZES[0]:g} (2 x the minimum step size, climin's first step)")
        if self.batch_size is not None and self.optimizer in FULL_BATCH:
            raise ValueError(f"batch_size={self.batch_size!r} with optimizer={self.optimizer!r}; Rprop is full-batch "
                             "(the paper's): use batch_size=None, or optimizer='adam' for minibatches")

    @property
    def net_(self) -> AutoRecNet:
        """Deprecated name of ``module_``."""
        warnings.warn("AutoRec.net_ is renamed module_; net_ goes in the next release", DeprecationWarning, stacklevel=2)
        return self.module_

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, train, validation=None, checkpoint=None, callbacks=(), warm_start: bool = False, *,
            user: str = "user", item: str = "item", rating: str | bool | None = None) -> "AutoRec":
        """Learn from ``train`` (users x items ratings); returns ``self``.

        Parameters
        ----------
        train : Interactions, scipy.sparse matrix or pandas DataFrame
            Users x items ratings (stored entries are the observed ratings); a frame has one row
            per rating, its columns named by ``user``, ``item`` and ``rating`` (default ``"rating"``).
        validation : Interactions, scipy.sparse matrix or DataFrame, optional
            Held-out ratings of the same shape (a frame: lined up with ``train``'s users and
            items), none of them in ``train``: the iteration with the lowest RMSE on them
            (predicted from ``train`` only) is kept.
        checkpoint, callbacks, warm_start
            As :meth:`Recommender.fit`.
        """
        # every input is checked before the base class records anything on the model
        train, validation = self.fit_inputs(train, validation, user, item, rating)
        self.check_params()
        ratings = _canonical(as_csr(train, "train"))
        self._check_ratings(ratings, "train")
        if ratings.nnz and ratings.data.min() == ratings.data.max():
            warnings.warn(f"train's {ratings.nnz} ratings are all {float(ratings.data[0])!r}: AutoRec is a rating "
                          "model and learns little from one value (every prediction tends to it); give it the ratings "
                          "(a frame's rating= column, the ratings protocol), or use an implicit model (mult_vae, "
                          "ease, ...)", UserWarning, stacklevel=2)
        self._validation_matrix(validation, ratings)
        return super().fit(train, validation, checkpoint, callbacks, warm_start)

    def _fit(self, matrix: sp.csr_matrix, validation) -> None:
        ratings = _canonical(matrix)
        self.ratings_ = ratings
        self.rating_range_ = (tuple(float(v) for v in self.rating_range) if self.rating_range is not None
                              else (float(ratings.data.min()), float(ratings.data.max())))
        self.scale_ = reference_scale(*self.rating_range_) if self._rescales() else (1.0, 0.0)
        self.user_seen_ = np.diff(ratings.indptr) > 0
        self.item_seen_ = np.bincount(ratings.indices, minlength=ratings.shape[1]) > 0
        internal = self._internal(ratings)
        self.input_rows_ = _canonical(internal.T.tocsr()) if self.kind == "item" else internal
        super()._fit(ratings, validation)

    def _rescales(self) -> bool:
        if self.rescale is not None:
            return bool(self.rescale)
        low, high = self.rating_range_
        return not (low >= 0.0 and high <= REFERENCE_SCALE[1] and high - low >= 3.0)

    def _internal(self, rows: sp.csr_matrix) -> sp.csr_matrix:
        """``rows`` with each rating as the network sees it (``a * r + b``; the same object when not rescaled)."""
        a, b = getattr(self, "scale_", (1.0, 0.0))
        if (a, b) == (1.0, 0.0):
            return rows
        mapped = rows.copy()
        mapped.data = (a * rows.data.astype(np.float64) + b).astype(rows.dtype)
        return mapped

    def fallback_rating(self) -> float:
        """``default_rating``, or 3 stars on the ratings' scale."""
        if self.default_rating is not None:
            return float(self.default_rating)
        return float(self._external(REFERENCE_DEFAULT_RATING))

    def _external(self, values):
        """The network's outputs back on the ratings' scale."""
        a, b = getattr(self, "scale_", (1.0, 0.0))
        return values if (a, b) == (1.0, 0.0) else (values - b) / a

    def training_rows(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        return self.input_rows_  # I-AutoRec: one row per item

    def learning_rate(self) -> float:
        return float(self.lr if self.lr is not None else DEFAULT_LR[self.optimizer])

    def train_config(self) -> TrainConfig:
        return dataclasses.replace(super().train_config(), shuffle=self.optimizer == "adam")  # Rprop: full batch

    def phases(self, module: AutoRecNet) -> list[Phase] | None:
        return [Phase(after=_reference_rprop_schedule)] if self.optimizer in FULL_BATCH else None

    def batch_loss(self, module: AutoRecNet, batch: RowBatch, state) -> dict:
        """The paper's objective over the batch's ratings; the penalty weighted by the batch's share of the rows."""
        return autorec_objective(module, batch, float(self.l2) * len(batch) / self.input_rows_.shape[0])

    def validation_metric(self, validation):
        held_out = self._validation_matrix(validation, self.ratings_)
        if held_out is None:
            return None
        coo = held_out.tocoo()
        users, items, truth = coo.row, coo.col, coo.data.astype(np.float64)

        def rmse(module):
            predicted = self._predict_pairs(module, users, items)
            return float(np.sqrt(np.mean((predicted - truth) ** 2)))

        return rmse

    def after_fit(self, matrix: sp.csr_matrix) -> None:
        if self.history_.best_epoch is None:
            self.best_epoch_ = None  # no validation ratings: no iteration was chosen
        if self.kind == "item":
            self.item_codes_ = self._encode_rows(self.module_, np.arange(self.input_rows_.shape[0]))
        elif hasattr(self, "item_codes_"):
            del self.item_codes_  # from an earlier item-kind fit of this object

    def build_module(self, generator: torch.Generator) -> AutoRecNet:
        """The network for the fitted input width, initialised as the reference from ``generator``."""
        return AutoRecNet(self.input_rows_.shape[1], int(self.hidden), generator)

    def _check_ratings(self, ratings: sp.csr_matrix, name: str) -> None:
        if self.rating_range is None or ratings.nnz == 0:
            return
        low, high = self.rating_range
        outside = ratings.data[(ratings.data < low) | (ratings.data > high)]
        if outside.size:
            raise ValueError(f"{name} holds rating {float(outside[0])!r} outside rating_range=({low}, {high}); "
                             f"{outside.size} rating(s) fall outside it")

    def _validation_matrix(self, validation, ratings: sp.csr_matrix) -> sp.csr_matrix | None:
        if validation is None:
            return None
        if not isinstance(validation, Interactions) and not sp.issparse(validation):
            raise ValueError(f"validation must be held-out ratings (Interactions or a scipy.sparse matrix of the "
                             f"training shape {ratings.shape}), got {type(validation).__name__}")
        held_out = _canonical(as_csr(validation, "validation"))
        if held_out.shape != ratings.shape:
            raise ValueError(f"validation has shape {held_out.shape}; expected {ratings.shape}, the shape of train "
                             "(same users and items)")
        if held_out.nnz == 0:
            raise ValueError("validation holds no ratings; expected held-out ratings to pick the iteration count")
        self._check_ratings(held_out, "validation")
        overlap = ratings.multiply(held_out.astype(bool)).nnz
        if overlap:
            raise ValueError(f"validation shares {overlap} (user, item) pair(s) with train; expected held-out ratings "
                             "only (a rating both trained on and validated on leaks)")
        return held_out

    # -- prediction ------------------------------------------------------------------------
    def predict(self, users, items) -> np.ndarray:
        """Ratings for (user index, item index) pairs, from the training ratings only.

        Parameters
        ----------
        users, items : array-like of int
            1-D, equal length; indices into the training matrix's rows and columns.

        Returns
        -------
        ndarray of float64
            Clipped to ``rating_range_``; ``default_rating`` where the user or the item has
            no training rating.
        """
        self.check_fitted()
        users, items = _check_indices(users, items, self.ratings_.shape)
        return self._predict_pairs(self.module_, users, items)

    def _predict_pairs(self, module: AutoRecNet, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        rows, cols = (items, users) if self.kind == "item" else (users, items)
        known = self.user_seen_[users] & self.item_seen_[items]
        out = np.full(len(users), self.fallback_rating())
        if known.any():
            out[known] = np.clip(self._external(self._output_at(module, rows[known], cols[known])), *self.rating_range_)
        return out

    @torch.no_grad()
    def _output_at(self, module: AutoRecNet, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The network's output at (row, column) pairs of ``input_rows_``, encoding each needed row once."""
        n_rows, n_cols = self.input_rows_.shape
        keys, inverse = np.unique(rows.astype(np.int64) * n_cols + cols, return_inverse=True)
        key_rows, key_cols = np.divmod(keys, n_cols)
        pattern = sp.csr_matrix((np.ones(len(keys), np.float32), key_cols, np.searchsorted(key_rows, np.arange(n_rows + 1))),
                                shape=(n_rows, n_cols))
        needed = np.unique(key_rows)
        values = []
        for start in range(0, len(needed), _ROWS_PER_BATCH):
            chunk = needed[start:start + _ROWS_PER_BATCH]
            inputs, at = RowBatch(chunk, self.input_rows_[chunk], self.device_), RowBatch(chunk, pattern[chunk], self.device_)
            values.append(module.observed(inputs.pattern, inputs.parts.val, at.pattern).double().cpu().numpy())
        return np.concatenate(values)[inverse.ravel()]

    @torch.no_grad()
    def _encode_rows(self, module: AutoRecNet, rows: np.ndarray) -> torch.Tensor:
        codes = [module.encode(csr_to_sparse_tensor(self.input_rows_[rows[start:start + _ROWS_PER_BATCH]], self.device_))
                 for start in range(0, len(rows), _ROWS_PER_BATCH)]
        return torch.cat(codes)

    # -- ranking ---------------------------------------------------------------------------
    @torch.no_grad()
    def score_tensor(self, user_items) -> torch.Tensor:
        """Predicted ratings (unclipped) of every item for the given users' rows, (n_rows, n_items).

        See the class Notes for how each kind treats rows (unseen users are folded in).
        """
        rows = _canonical(self.check_user_items(user_items))
        self._check_ratings(rows, "user_items")
        if self.kind == "user":
            internal = self._internal(rows)
            blocks = [self.module_(csr_to_sparse_tensor(internal[start:start + _ROWS_PER_BATCH], self.device_))
                      for start in range(0, rows.shape[0], _ROWS_PER_BATCH)]
            return self._external(torch.cat(blocks)) if blocks else torch.zeros((0, self.n_items_), device=self.device_)
        return self._fold_in_item_model(rows)

    # -- representations -------------------------------------------------------------------
    def item_embeddings(self, layer: str = "input") -> np.ndarray:
        """One vector per item, (n_items, hidden), float32.

        I-AutoRec: the item's code ``sigmoid(V r_i + mu)`` from its training ratings (``layer`` is
        not used). U-AutoRec: ``"input"``, the item's column of ``V`` (what its rating adds to the
        hidden layer); ``"output"``, its row of ``W`` (the vector its rating is read from).
        """
        self.check_fitted()
        if layer not in ("input", "output"):
            raise ValueError(f"layer={layer!r}; expected 'input' or 'output'")
        if self.kind == "item":
            weight = self.item_codes_
        else:
            weight = self.module_.encoder.weight.T if layer == "input" else self.module_.decoder.weight
        return weight.detach().float().cpu().contiguous().numpy()

    @torch.no_grad()
    def user_embeddings(self, user_items) -> np.ndarray:
        """One vector per row (folded in), float32: U-AutoRec's code ``sigmoid(V r + mu)`` (n_rows, hidden);
        I-AutoRec's fitted output unit, the row's ridge weights on the item codes (n_rows, hidden; zeros
        for an empty row), of which its scores are the inner products with :meth:`item_embeddings`."""
        rows = _canonical(self.check_user_items(user_items))
        self._check_ratings(rows, "user_items")
        rows = self._internal(rows)
        if self.kind == "item":
            return self._item_model_units(rows)[:, :-1].float().cpu().numpy()
        blocks = [self.module_.encode(csr_to_sparse_tensor(rows[start:start + _ROWS_PER_BATCH], self.device_))
                  for start in range(0, rows.shape[0], _ROWS_PER_BATCH)]
        return (torch.cat(blocks) if blocks else torch.zeros((0, int(self.hidden)))).float().cpu().numpy()

    def _fold_in_item_model(self, rows: sp.csr_matrix) -> torch.Tensor:
        """I-AutoRec: fit each row's own output unit (ridge on the item codes) and score every item."""
        units = self._item_model_units(self._internal(rows))
        codes = torch.cat([self.item_codes_.double(), torch.ones((self.n_items_, 1), dtype=torch.float64,
                                                                  device=self.device_)], 1)
        scores = self._external(units @ codes.T).float()
        scores[torch.from_numpy(np.diff(rows.indptr) == 0).to(self.device_)] = self.fallback_rating()
        # a row whose ratings are all one value (or none) is fitted by the bias alone: every item scores
        # alike, and top-N would be catalogue order; its items are ranked by training popularity instead
        flat = np.array([np.ptp(rows.data[a:b]) == 0 if b > a else True for a, b in zip(rows.indptr[:-1],
                                                                                     rows.indptr[1:])], dtype=bool)
        if flat.any():
            popularity = np.bincount(self.ratings_.indices, minlength=self.n_items_).astype(np.float32)
            tie_break = torch.from_numpy(POPULARITY_TIE_BREAK * popularity / max(popularity.max(), 1.0))
            scores[torch.from_numpy(flat).to(self.device_)] += tie_break.to(self.device_)
        return scores

    def _item_model_units(self, rows: sp.csr_matrix) -> torch.Tensor:
        """I-AutoRec's fold-in: each row's output unit (weights on the item codes, then the bias), (n_rows, k + 1)."""
        return ridge_output_units(self.item_codes_, rows, float(self.l2) / 2)


#: The star scale the reference's settings were made for; other scales are mapped onto it (``rescale``).
REFERENCE_SCALE = (1.0, 5.0)
#: The paper's (and LLORMA's) prediction for a user or item without training ratings, in stars.
REFERENCE_DEFAULT_RATING = 3.0


def reference_scale(low: float, high: float) -> tuple[float, float]:
    """``(a, b)`` mapping ``low`` to 1 and ``high`` to 5 linearly: ``a * r + b``."""
    a = (REFERENCE_SCALE[1] - REFERENCE_SCALE[0]) / (high - low) if high > low else 1.0
    return float(a), float(REFERENCE_SCALE[0] - a * low)


#: The most an I-AutoRec score of a flat history (all ratings one value) gains from its item's popularity.
POPULARITY_TIE_BREAK = 1e-3


def _reference_rprop_schedule(optimizer, state) -> None:
    """NNRec's Rprop schedule on torch's Rprop: growth 5.0 until the 6th iteration, then 1.2; steps in [1e-6, 1]."""
    group = optimizer.param_groups[0]
    if state.epoch + 1 == 1:
        group["step_sizes"] = _RPROP_STEP_SIZES
        group["etas"] = (_RPROP_SHRINK, _RPROP_FAST_GROWTH)
    elif state.epoch + 1 == _RPROP_FAST_UNTIL:
        group["etas"] = (_RPROP_SHRINK, _RPROP_GROWTH)


def _canonical(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Sorted column indices, duplicates summed (a copy only when needed)."""
    if not matrix.has_canonical_format:
        matrix = matrix.copy()
        matrix.sum_duplicates()
    return matrix


def _check_indices(users, items, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name, values in (("users", users), ("items", items)):
        array = np.asarray(values)
        if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"{name} has shape {array.shape} and dtype {array.dtype}; expected a 1-D array of integer indices")
        arrays.append(array.astype(np.int64))
    users, items = arrays
    if users.shape != items.shape:
        raise ValueError(f"users and items have lengths {len(users)} and {len(items)}; expected equal lengths (pairs)")
    for name, index, size in (("users", users, shape[0]), ("items", items, shape[1])):
        bad = index[(index < 0) | (index >= size)]
        if bad.size:
            raise ValueError(f"{name} holds index {int(bad[0])}; expected indices from 0 to {size - 1}")
    return users, items
