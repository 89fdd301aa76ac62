"""CDAE: Collaborative Denoising Auto-Encoders for top-N recommendation.

Yao Wu, Christopher DuBois, Alice X. Zheng, Martin Ester. "Collaborative
Denoising Auto-Encoders for Top-N Recommender Systems", WSDM 2016,
https://doi.org/10.1145/2835776.2835837

The model, as the paper writes it (``y_u`` a user's binary row over the I items):

- corruption: ``y~_u`` is ``y_u`` with each entry dropped with probability ``q``
  and the kept ones scaled by ``1 / (1 - q)`` (the paper's unbiased dropout);
- hidden layer: ``z_u = h(W^T y~_u + V_u + b)``, where ``V_u`` is a learned
  K-vector for user ``u``: the *user node* that makes the auto-encoder
  collaborative (an auto-encoder without it is not CDAE);
- output: ``y^_ui = f(W'_i z_u + b'_i)``;
- objective: ``(1/U) sum_u l(y_u, y^_u) + (lambda/2)(||W||^2 + ||W'||^2 +
  ||V||^2 + ||b||^2 + ||b'||^2)`` with ``l`` the logistic (cross-entropy) or
  squared loss summed over the user's observed items and a sample of the
  unobserved ones (negative sampling; or over all items);
- prediction: the clean (uncorrupted) row goes in, items are ranked by ``y^_u``.

How users unseen in training are scored
---------------------------------------
``V_u`` exists only for the training users, and ``score_tensor`` /
``recommend`` receive rows without user ids. Every row given to them is
therefore scored by *fold-in* (``fold_in="fit"``, the default): its user
vector is fitted with the network frozen, from a zero start, by
``fold_in_steps`` Adam steps on that user's part of the training objective,
``l_u(v) + (U lambda / 2) ||v||^2`` (the objective puts ``(1/U) l_u`` and
``(lambda/2) ||V_u||^2`` on one user; multiplied by ``U``). With negative
sampling, ``l_u`` is the sampled loss's *expectation*: the positives count
fully and every unobserved item with weight ``n_negatives / n_unobserved``,
so the fold-in is deterministic. ``fold_in="zero"`` uses ``V_u = 0`` instead.
A training user's learned ``V_u`` is used by :meth:`CDAE.score_known_users`.

Choices the paper leaves open or that depart from it (each a parameter)
-----------------------------------------------------------------------
- ``optimizer="adam"`` over mini-batches of 64 users, lr 1e-2 (the best of
  1e-3 / 3e-3 / 1e-2 / 3e-2 and batches of 32 / 64 / 128 in a pilot on ML-100K's
  validation users); the paper uses per-user SGD with AdaGrad.
  ``optimizer="sgd"`` is available; the shared training loop offers no AdaGrad.
- Defaults ``hidden_activation="sigmoid"``, ``output_activation="sigmoid"``,
  ``loss="logistic"``: the paper's best combination on MovieLens in its
  comparison of the mappings and losses, as we read it.
  With the logistic loss the output is read as a logit whatever ``f`` is
  (``log(1 + exp(-y a))`` on ``a = W'_i z_u + b'_i`` for ``f`` = identity,
  the cross-entropy of ``sigmoid(a)`` for ``f`` = sigmoid: the same
  function), so ``f`` matters only for the squared loss.
- Negative sampling: per user and per epoch, ``negative_ratio`` unobserved
  items per observed item (rounded to the nearest integer, at most all the
  unobserved ones), drawn uniformly without replacement, 5 per positive by
  default. This is our reading of the paper's sampling of a number of
  negatives proportional to the user's observed items (the exact ratio is
  not restated here from the paper). ``negative_sampling="fixed"`` draws
  ``n_negatives`` per user; ``None`` sums the loss over every item.
- The squared loss is ``sum (y - y^)^2`` (no 1/2 factor).
- Initialisation (unspecified in the paper): torch's ``nn.Linear`` default
  for ``W``, ``b``, ``W'``, ``b'`` (``init="torch"``; on ML-100K it trained far
  better than vae_cf's Xavier initialisation, ``init="xavier"``, with which the
  full-row loss stayed at the popularity solution), and ``V = 0`` (the point
  the fold-in starts from).
- Every stored entry of a row counts as a 1 (implicit feedback): the values
  themselves are ignored.
- ``score_tensor`` returns the output's pre-activation ``a``, which ``f``
  maps monotonically to ``y^``: the same ranking, without the ties a
  saturated sigmoid would make among the top items (:meth:`CDAE.reconstruct`
  gives ``y^``).

Beyond the paper (off by default, ``side_information=False`` is Wu et al.'s model): ``side_information=True``
with ``fit(user_features=...)`` makes the network conditional on the user's side features ``s``, which enter
the hidden layer and the decoder as in the conditional Mult-VAE / Mult-DAE (:mod:`aerec.models.mult_vae`):
``z_u = h(W^T y~_u + V_u + S s_u + b)``, ``y^_u = f(W' [z_u ; s_u] + b')``; ``S`` and the decoder's side
columns are in the L2 term, ``s`` is never corrupted. A user with no history is scored from ``s`` (and the
fold-in of an empty row); the feature table is kept with the model and looked up by raw user id when scoring
(:mod:`aerec.models.conditioning`).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from aerec._torch import csr_to_dense_tensor, csr_to_sparse_tensor
from aerec.core.corruption import MaskingNoise
from aerec.core.layers import SparseInputLinear, dense_linear, init_linear_, make_activation
from aerec.core.losses import bernoulli_nll, masked_squared_error
from aerec.core.penalties import l2_weight_decay
from aerec.models.conditioning import UserConditioned
from aerec.models.torch_base import TorchRecommender, store_params
from aerec.params import COUNT, FOLD_IN_STEPS, PROBABILITY, RATE, SAMPLES, WEIGHT, WIDTH, Boolean, Options
from aerec.search_space import Choice, FloatRange
from aerec.training import OPTIMIZERS

ACTIVATIONS = ("sigmoid", "identity")
LOSSES = ("logistic", "squared")
NEGATIVE_SAMPLING = ("proportional", "fixed", None)
FOLD_IN = ("fit", "zero")
SCORE_BATCH = 1024


class CDAENet(nn.Module):
    """The CDAE network: input dropout, ``W`` / ``b``, user vectors ``V`` and the decoder ``W'`` / ``b'``.

    Parameters
    ----------
    n_users, n_items, hidden : int
        Training users (rows of ``V``), items and the hidden size K.
    corruption : float
        Input dropout probability q (kept entries scaled by 1 / (1 - q)).
    hidden_activation : {"sigmoid", "identity"}
        h.
    init : {"torch", "xavier"}
        Initialisation of ``W``, ``b``, ``W'``, ``b'`` (see :func:`aerec.core.layers.init_linear_`); ``V`` starts at 0.
    generator : torch.Generator, optional
        Source of the initial weights (torch's global generator when None).
    n_side : int
        Side features of a conditional network (0: Wu et al.'s): ``S`` (hidden x n_side, no bias) adds
        ``S s`` to the hidden layer's input and the decoder reads ``[z ; s]``; drawn after the other weights.
    """

    def __init__(self, n_users: int, n_items: int, hidden: int, corruption: float, hidden_activation: str,
                 init: str = "torch", generator: torch.Generator | None = None, n_side: int = 0):
        super().__init__()
        self.corruption = MaskingNoise(corruption, rescale=True)
        self.encoder = SparseInputLinear(n_items, hidden, init=init, generator=generator)  # W^T (K x I), b
        # V starts at 0; nn.Embedding's normal draws are still taken (and discarded), and the decoder's torch
        # initialisation before its own, so that every seed gives the weights it always gave
        self.user_embedding = torch.nn.utils.skip_init(nn.Embedding, n_users, hidden)
        nn.init.normal_(self.user_embedding.weight, generator=generator)
        nn.init.zeros_(self.user_embedding.weight)
        self.n_side = int(n_side)
        self.decoder = dense_linear(hidden + self.n_side, n_items, "torch", generator)  # W' (I x K[+side]), b'
        init_linear_(self.decoder.weight, self.decoder.bias, init, generator)
        self.hidden_activation = make_activation(hidden_activation)
        if self.n_side:
            self.side_encoder = torch.nn.utils.skip_init(nn.Linear, self.n_side, hidden, bias=False,
                                                         device=torch.empty(0).device)  # S
            init_linear_(self.side_encoder.weight, None, init, generator)

    def forward(self, x: torch.Tensor, users: torch.Tensor, generator: torch.Generator | None = None,
                side: torch.Tensor | None = None) -> torch.Tensor:
        """Output pre-activations ``W' h(W^T x~ + V_u + b) + b'`` of training users (x~: x, dropped out in training);
        ``side``: the rows' side features (rows, n_side) of a conditional network."""
        return self.decode(self.encode(self.corruption(x, generator), side) + self.user_embedding(users), side)

    def encode(self, x: torch.Tensor, side: torch.Tensor | None = None) -> torch.Tensor:
        """``W^T x + b`` (``+ S s`` in a conditional network): the hidden layer's input without the user node."""
        base = self.encoder(x)
        return base + self.side_encoder(side.to(base.dtype)) if self.n_side else base

    def decode(self, hidden_input: torch.Tensor, side: torch.Tensor | None = None) -> torch.Tensor:
        """``W' h(hidden_input) + b'`` (``W' [h(hidden_input) ; s] + b'`` in a conditional network): the output
        pre-activations for the hidden layer's input."""
        hidden = self.hidden_activation(hidden_input)
        return self.decoder(torch.cat([hidden, side.to(hidden.dtype)], 1) if self.n_side else hidden)

    def penalized(self) -> list[torch.Tensor]:
        """The tensors of the paper's L2 term: W, W', V, b, b' (and S in a conditional network)."""
        extra = [self.side_encoder.weight] if self.n_side else []
        return [self.encoder.weight, self.decoder.weight, self.user_embedding.weight, self.encoder.bias,
                self.decoder.bias, *extra]


class CDAE(UserConditioned, TorchRecommender):
    """Collaborative Denoising Auto-Encoder (Wu et al., WSDM 2016), with fold-in of unseen users.

    See the module docstring for the model and its departures.

    Parameters
    ----------
    hidden : int
        K, the hidden units (the paper's default 50). ``hidden_size``, its former name, still
        works for one release, with a DeprecationWarning.
    corruption : float
        Input dropout probability q in [0, 1).
    l2 : float
        lambda of ``(lambda/2)(||W||^2 + ||W'||^2 + ||V||^2 + ||b||^2 + ||b'||^2)``, added to the mean loss
        over the batch's users (the objective's ``1/U`` mean).
    loss : {"logistic", "squared"}
    hidden_activation, output_activation : {"sigmoid", "identity"}
        h and f.
    negative_sampling : {"proportional", "fixed", None}
        Which unobserved items the loss counts, per user and epoch: ``negative_ratio`` per observed item,
        ``n_negatives`` per user, or (None) all of them.
    negative_ratio : float
        Negatives per observed item for "proportional".
    n_negatives : int
        Negatives per user for "fixed".
    fold_in : {"fit", "zero"}
        How a row's user vector is found when scoring: fitted with the network frozen, or zero.
    fold_in_steps : int
        Adam steps of the fold-in.
    fold_in_lr : float
        Adam step size of the fold-in.
    init : {"torch", "xavier"}
        Initialisation of the weights and biases (torch's ``nn.Linear`` default, or vae_cf's).
    side_information : bool, default False
        Condition the network on ``fit``'s ``user_features`` (see the module docstring); False ignores them.
    optimizer : str
        The training loop's optimizer (:class:`aerec.training.TrainConfig`).
    validate_every : int
        Compute the validation NDCG every this many epochs.
    epochs=100, batch_size=64 (users), lr=1e-2, seed, device, patience=10, progress, precision, max_seconds
        The shared training parameters (:mod:`aerec.models.torch_base`); under "bf16" the loss
        itself, the scores and the fold-in of new users stay float32.

    Attributes
    ----------
    module_ : CDAENet
    n_train_users_ : int
    history_ : aerec.training.History
    """

    parameter_constraints = {
        "hidden": [WIDTH], "corruption": [PROBABILITY], "l2": [WEIGHT], "loss": [Options(*LOSSES)],
        "hidden_activation": [Options(*ACTIVATIONS)], "output_activation": [Options(*ACTIVATIONS)],
        "negative_sampling": [Options(*NEGATIVE_SAMPLING)], "negative_ratio": [RATE],
        "n_negatives": [SAMPLES], "fold_in": [Options(*FOLD_IN)], "fold_in_steps": [FOLD_IN_STEPS],
        "fold_in_lr": [RATE], "optimizer": [Options(*OPTIMIZERS)], "validate_every": [COUNT],
        "init": [Options("torch", "xavier")], "side_information": [Boolean()],
    }
    #: Wu et al. sweep the corruption level and the L2 weight; our strong-split script also the negatives
    search_space = {"hidden": Choice(50, 100, 200), "corruption": FloatRange(0.0, 0.8),
                    "l2": FloatRange(1e-6, 1e-2, log=True), "negative_sampling": Choice("proportional", None)}
    def __init__(self, hidden: int = 50, corruption: float = 0.2, l2: float = 1e-4, loss: str = "logistic",
                 hidden_activation: str = "sigmoid", output_activation: str = "sigmoid",
                 negative_sampling: str | None = "proportional", negative_ratio: float = 5.0, n_negatives: int = 100,
                 fold_in: str = "fit", fold_in_steps: int = 50, fold_in_lr: float = 0.1, epochs: int = 100,
                 batch_size: int = 64, lr: float = 1e-2, optimizer: str = "adam", seed: int = 0, device: str = "auto",
                 patience: int | None = 10, validate_every: int = 1, init: str = "torch", progress: bool = False,
                 precision: str = "fp32", max_seconds: float | None = None, side_information: bool = False,
                 **deprecated):
        if "hidden_size" in deprecated:
            warnings.warn("CDAE(hidden_size=...) is renamed hidden=; hidden_size goes in the next release",
                          DeprecationWarning, stacklevel=2)
            hidden = deprecated.pop("hidden_size")
        if deprecated:
            raise TypeError(f"CDAE got unexpected keyword argument(s) {sorted(deprecated)}")
        arguments = dict(locals())
        del arguments["deprecated"]
        store_params(self, arguments)

    @property
    def hidden_size(self) -> int:
        """Deprecated name of ``hidden``."""
        warnings.warn("CDAE.hidden_size is renamed hidden", DeprecationWarning, stacklevel=2)
        return self.hidden

    # -- training --------------------------------------------------------------------
    def build_module(self, generator: torch.Generator) -> CDAENet:
        return CDAENet(self.n_train_users_, self.n_items_, self.hidden, self.corruption, self.hidden_activation,
                       self.init, generator, self.n_side)

    def _fit(self, matrix: sp.csr_matrix, validation) -> None:
        self.n_train_users_ = matrix.shape[0]
        super()._fit(matrix, validation)

    def batch_loss(self, module: CDAENet, batch, state) -> dict:
        """``{"loss", "reconstruction", "penalty"}``: the mean loss of the batch's users on their observed items and
        sampled negatives (drawn from ``state.generator``), plus the paper's L2 term."""
        clicks = batch.sparse
        observed = batch.observed
        binary = torch.sparse_coo_tensor(clicks.indices(), torch.ones_like(clicks.values()), clicks.shape,
                                         is_coalesced=True, check_invariants=False)  # implicit feedback: 1 per entry
        logits = module(binary, batch.index_tensor, state.generator, side=self.batch_side(batch))
        if self.negative_sampling is None:
            mask = None
        else:
            mask = observed | sample_negatives(observed, self.negative_counts(observed), state.generator)
        per_user = self.row_loss(logits.float(), observed, mask)  # the loss in float32 under bf16 autocast
        penalty = l2_weight_decay(module.penalized(), self.l2)
        reconstruction = per_user.mean()
        return {"loss": reconstruction + penalty, "reconstruction": reconstruction.detach(),
                "penalty": penalty.detach()}

    def negative_counts(self, observed: torch.Tensor) -> torch.Tensor:
        """Negatives to draw for each row of a boolean (rows, items) matrix, at most its unobserved items."""
        n_observed = observed.sum(dim=1)
        if self.negative_sampling == "fixed":
            wanted = torch.full_like(n_observed, int(self.n_negatives))
        else:
            wanted = torch.round(n_observed.to(torch.float64) * float(self.negative_ratio)).to(n_observed.dtype)
        return torch.minimum(wanted, observed.shape[1] - n_observed)

    def expected_weights(self, observed: torch.Tensor) -> torch.Tensor:
        """Each entry's weight in the expected training loss of a row: 1 if observed, else the chance to be sampled.

        That chance is ``n_negatives / n_unobserved`` of the row (1 without negative sampling), so
        ``(item_losses(logits, observed) * expected_weights(observed)).sum(1)`` is the expectation of
        ``row_loss`` over the negative samples.
        """
        if self.negative_sampling is None:
            return torch.ones(observed.shape, device=observed.device)
        unobserved = (observed.shape[1] - observed.sum(dim=1)).clamp(min=1)
        chance = self.negative_counts(observed).to(torch.float32) / unobserved
        return torch.where(observed, 1.0, chance[:, None].expand(observed.shape))

    def item_losses(self, logits: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """The loss of every (row, item) entry: what :meth:`row_loss` sums over its mask."""
        target = observed.to(logits.dtype)
        if self.loss == "logistic":
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return (self._output(logits) - target).square()

    def row_loss(self, logits: torch.Tensor, observed: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Per-row loss of output pre-activations against the binary rows, over ``mask`` (None: all items)."""
        target = observed.to(logits.dtype)
        if self.loss == "logistic":
            return bernoulli_nll(logits, target, mask)
        if mask is None:
            mask = torch.ones_like(observed)
        return masked_squared_error(self._output(logits), target, mask)

    # -- scoring ---------------------------------------------------------------------
    def score_tensor(self, user_items, user_features=None) -> torch.Tensor:
        """Output pre-activations (n_rows, n_items) for the given rows, each folded in (see the module docstring);
        ``user_features`` as :meth:`recommend`'s, for a conditional model."""
        user_items, side = self.scoring_rows(user_items, user_features)
        rows = self.check_user_items(user_items)
        module, device = self._module_and_device()
        parts = []
        for base, vectors, batch_side in self._folded_in(rows, side):
            with torch.no_grad():
                parts.append(module.decode(base + vectors, batch_side))
        return torch.cat(parts) if parts else torch.empty(0, self.n_items_, device=device)

    def user_vectors(self, user_items, user_features=None) -> torch.Tensor:
        """The folded-in user vectors (n_rows, hidden) of the given rows (zeros for ``fold_in="zero"``)."""
        user_items, side = self.scoring_rows(user_items, user_features)
        parts = [vectors for _, vectors, _ in self._folded_in(self.check_user_items(user_items), side)]
        return torch.cat(parts) if parts else torch.empty(0, self.hidden, device=self._module_and_device()[1])

    def user_embeddings(self, user_items, user_features=None) -> np.ndarray:
        """The hidden layer ``h(W^T x + V_u + b)`` (n_rows, hidden) of the given rows, ``V_u`` folded in (``+ S s``
        with the rows' side features in a conditional model)."""
        user_items, side = self.scoring_rows(user_items, user_features)
        rows = self.check_user_items(user_items)
        module, device = self._module_and_device()
        parts = [module.hidden_activation(base + vectors).detach() for base, vectors, _ in self._folded_in(rows, side)]
        return (torch.cat(parts) if parts else torch.empty(0, self.hidden, device=device)).float().cpu().numpy()

    def item_embeddings(self, layer: str = "input") -> np.ndarray:
        """One vector per item, (n_items, hidden), float32: ``"input"``, its column of ``W`` (what a like of
        it adds to the hidden layer); ``"output"``, its row of ``W'`` (the vector its score is read from)."""
        self.check_fitted()
        if layer not in ("input", "output"):
            raise ValueError(f"layer={layer!r}; expected 'input' or 'output'")
        weight = self.module_.encoder.weight.T if layer == "input" else self.module_.decoder.weight
        return weight.detach().float().cpu().contiguous().numpy()

    def _folded_in(self, rows: sp.csr_matrix, side: torch.Tensor | None = None):
        """``(W^T x + b [+ S s], V_u, s)`` for each batch of the (checked) rows and their side features ``side``
        (None: not conditioned), ``V_u`` folded in."""
        module, device = self._module_and_device()
        for start in range(0, rows.shape[0], SCORE_BATCH):
            batch = binary_rows(rows[start:start + SCORE_BATCH])
            batch_side = None if side is None else side[start:start + SCORE_BATCH].to(device)
            with torch.no_grad():
                base = module.encode(csr_to_sparse_tensor(batch, device), batch_side)
            observed = csr_to_dense_tensor(batch, device, dtype=torch.bool)
            yield base, self._fold_in(module, base, observed, batch_side), batch_side

    def score_known_users(self, users, user_items, user_features=None) -> np.ndarray:
        """Scores (as :meth:`score`) of training users from their learned ``V_u`` instead of a fold-in.

        Parameters
        ----------
        users : array-like of int
            Row indices of the training matrix, one per row of ``user_items``.
        user_items : Interactions or sparse matrix
            Those users' rows (normally their training rows).
        user_features : optional
            As :meth:`recommend`'s, for a conditional model (by default looked up by ``user_items``' ids).
        """
        user_items, side = self.scoring_rows(user_items, user_features)
        rows = self.check_user_items(user_items)
        users = np.asarray(users)
        if users.ndim != 1 or len(users) != rows.shape[0] or not np.issubdtype(users.dtype, np.integer):
            raise ValueError(f"users has shape {users.shape} and dtype {users.dtype}; expected {rows.shape[0]} integer "
                             "training-user indices, one per row of user_items")
        if len(users) and (users.min() < 0 or users.max() >= self.n_train_users_):
            bad = int(users.min() if users.min() < 0 else users.max())
            raise ValueError(f"users holds {bad}; expected training-user indices from 0 to {self.n_train_users_ - 1}")
        module, device = self._module_and_device()
        with torch.no_grad():
            vectors = module.user_embedding(torch.as_tensor(users, dtype=torch.long, device=device))
            side = None if side is None else side.to(device)
            logits = module.decode(module.encode(csr_to_sparse_tensor(binary_rows(rows), device), side) + vectors, side)
        return logits.float().cpu().numpy()

    def reconstruct(self, user_items) -> np.ndarray:
        """``y^ = f(a)`` for the given rows (folded in): probabilities for the sigmoid output."""
        return self._output(self.score_tensor(user_items)).float().cpu().numpy()

    def _fold_in(self, module: CDAENet, base: torch.Tensor, observed: torch.Tensor,
                 side: torch.Tensor | None = None) -> torch.Tensor:
        """User vectors minimising each row's part of the objective, the network frozen (see the module docstring)."""
        vectors = torch.zeros(base.shape[0], self.hidden, device=base.device)
        if self.fold_in == "zero" or base.shape[0] == 0:
            return vectors
        weights = self.expected_weights(observed)
        penalty_weight = self.n_train_users_ * float(self.l2) / 2
        vectors.requires_grad_(True)
        optimizer = torch.optim.Adam([vectors], lr=float(self.fold_in_lr))
        with torch.enable_grad():  # callers (the evaluator, the validation hook) run under no_grad
            for _ in range(self.fold_in_steps):
                logits = module.decode(base + vectors, side)
                loss = (self.item_losses(logits, observed) * weights).sum() + penalty_weight * vectors.pow(2).sum()
                (gradient,) = torch.autograd.grad(loss, [vectors])  # the network's weights get no gradient
                vectors.grad = gradient
                optimizer.step()
        return vectors.detach()

    def _output(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.output_activation == "sigmoid" else logits

    def _module_and_device(self) -> tuple[CDAENet, torch.device]:
        module = self.module_
        return module, next(module.parameters()).device


def sample_negatives(observed: torch.Tensor, counts: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``counts[r]`` unobserved items of each row uniformly without replacement.

    Parameters
    ----------
    observed : torch.Tensor of bool, shape (rows, items)
        True where the user has the item.
    counts : torch.Tensor of int, shape (rows,)
        How many to draw per row; at most the row's unobserved items.
    generator : torch.Generator, optional
        Source of randomness (torch's global generator by default).

    Returns
    -------
    torch.Tensor of bool, shape (rows, items)
        True at the drawn items; never where ``observed`` is True.
    """
    if not isinstance(observed, torch.Tensor) or observed.dtype != torch.bool or observed.ndim != 2:
        got = getattr(observed, "dtype", type(observed).__name__)
        raise ValueError(f"observed is {got}; expected a 2-D bool tensor")
    if counts.shape != observed.shape[:1]:
        raise ValueError(f"counts has shape {tuple(counts.shape)}; expected ({observed.shape[0]},), one per row")
    available = observed.shape[1] - observed.sum(dim=1)
    if bool((counts < 0).any()) or bool((counts > available).any()):
        raise ValueError(f"counts={counts.tolist()}; expected from 0 to each row's unobserved items "
                         f"{available.tolist()}")
    keys = torch.rand(observed.shape, generator=generator, device=observed.device)
    keys = keys.masked_fill(observed, 2.0)  # observed items sort last and are never among the first counts[r]
    # the counts[r] smallest keys of row r: a uniform draw without replacement (topk is ~6x cheaper than a full sort)
    k = int(counts.max()) if counts.numel() else 0
    order = torch.topk(keys, k, dim=1, largest=False, sorted=True).indices
    chosen = torch.arange(k, device=observed.device)[None, :] < counts[:, None]
    return torch.zeros_like(observed).scatter_(1, order, chosen)


def binary_rows(rows: sp.csr_matrix) -> sp.csr_matrix:
    """The CSR rows with every stored entry (whatever its value, 0 included) set to 1.0: implicit feedback."""
    if not rows.has_canonical_format:
        rows = sp.csr_matrix(rows, copy=True)
        rows.sum_duplicates()  # on a copy: the caller's matrix is left as it is
    return sp.csr_matrix((np.ones(rows.nnz, dtype=np.float32), rows.indices, rows.indptr), shape=rows.shape)
