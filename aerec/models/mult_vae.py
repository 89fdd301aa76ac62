"""Mult-DAE and Mult-VAE: autoencoders with a multinomial likelihood for implicit feedback.

Dawen Liang, Rahul G. Krishnan, Matthew D. Hoffman, Tony Jebara. "Variational
Autoencoders for Collaborative Filtering", WWW 2018.
https://arxiv.org/abs/1802.05814 -- reference code: dawenl/vae_cf,
``VAE_ML20M_WWW2018.ipynb``.

Both models read a user's click row ``x`` and output logits over the whole
catalogue; exactly as vae_cf:

- the input is L2-normalised per row (``tf.nn.l2_normalize``: ``x / sqrt(max(sum x^2, 1e-12))``,
  so a row with no items stays a zero vector, without NaN), then dropout with
  keep probability ``1 - dropout`` (0.5) and the survivors scaled by
  ``1 / (1 - dropout)``, as ``tf.nn.dropout``; only while training;
- architecture [n_items -> 600 -> 200 -> 600 -> n_items] with tanh after every
  layer except the decoder's last (logits). Mult-VAE's encoder ends in one
  layer 600 -> 2 x 200 with no activation, the first half ``mu``, the second
  ``logvar``; ``z = mu + eps * exp(logvar / 2)`` while training, ``z = mu``
  when scoring. Mult-DAE's code is the tanh of the 200-unit layer (vae_cf's
  MultiDAE applies tanh after every layer but the last);
- loss: the multinomial negative log-likelihood
  ``-mean_rows(sum_i log_softmax(logits)_i * x_i)`` (of the raw ``x``),
  plus for Mult-VAE ``beta * mean_rows(KL(q(z|x) || N(0, I)))`` with
  ``beta = min(beta_cap, update_count / total_anneal_steps)``, ``update_count``
  the optimizer updates done before this one; plus vae_cf's weight decay
  ``2 * l2_regularizer(lam) = lam * sum ||W||^2`` over the weight matrices
  (not the biases), ``lam = l2``, 0 by default;
- Adam (lr 1e-3), batches of 500 users shuffled every epoch, 200 epochs,
  Xavier-uniform weights and truncated-normal (std 0.001) biases; the epoch
  with the best NDCG@100 on the validation users is kept (vae_cf saves the
  best checkpoint and runs all epochs; ``patience`` may stop earlier).

Implementation notes (not departures): the first layer is a
:class:`~aerec.core.layers.SparseInputLinear` fed the normalised, dropped-out
batch as a torch sparse COO tensor, so the encoder costs time in proportion to
the stored entries; the decoder and the softmax are dense by nature. Dropout
draws one uniform number per stored entry (unstored entries are zero either
way), which has the distribution of ``tf.nn.dropout`` but not its random stream.
A user unseen in training is scored from its row like any other: the
network is a function of the row.

Departures from the vae_cf notebook, named:

- Mult-DAE follows the paper, [I-600-200-600-I] with no weight decay by
  default; the notebook's Mult-DAE cell trains [I-200-I] with
  ``lam = 0.01 / batch_size`` (pass ``l2=2e-5`` for that weight decay).
- Random streams are torch's (seeded by ``seed``), not TensorFlow's, so runs
  match vae_cf in distribution, not draw for draw.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from aerec._torch import resolve_device
from aerec.core.corruption import MaskingNoise
from aerec.core.layers import DenseStack, weight_matrices
from aerec.core.losses import multinomial_nll
from aerec.core.penalties import l2_weight_decay
from aerec.core.variational import GaussianLatent, LinearAnneal, kl_standard_normal, reparameterize
from aerec.data.batching import RowBatch, iter_row_batches
from aerec.models.base import Recommender, check_positive, check_seed
from aerec.training import PRECISIONS, TrainConfig, TrainingState, train

__all__ = ["MultDAE", "MultDAENet", "MultVAE", "MultVAENet", "l2_normalize_rows"]

# tf.nn.l2_normalize's default epsilon: x * rsqrt(max(sum(x ** 2), epsilon)).
L2_NORMALIZE_EPSILON = 1e-12
# Rows scored per forward pass in score_tensor (bounds the hidden activations' memory).
SCORE_BATCH_ROWS = 4096


def l2_normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row divided by its L2 norm, as ``tf.nn.l2_normalize(x, 1)``; dense or sparse COO in, same layout out.

    ``x / sqrt(max(sum_i x_i^2, 1e-12))``: an all-zero row stays zero (no NaN).
    A sparse COO input is normalised through its stored values only (never
    densified); the result is a coalesced sparse COO tensor.

    Parameters
    ----------
    x : torch.Tensor
        2-D, shape (rows, items), dense or sparse COO, floating point.

    Returns
    -------
    torch.Tensor
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.layout not in (torch.strided, torch.sparse_coo):
        got = f"{x.layout}, shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x is {got}; expected a 2-D dense or sparse COO tensor (rows, items)")
    if x.layout == torch.strided:
        return x * torch.rsqrt(x.square().sum(dim=1, keepdim=True).clamp_min(L2_NORMALIZE_EPSILON))
    x = x.coalesce()  # no work for batches made by csr_to_sparse_tensor, which are coalesced already
    rows, values = x.indices()[0], x.values()
    squares = torch.zeros(x.shape[0], dtype=values.dtype, device=values.device).index_add_(0, rows, values.square())
    scale = torch.rsqrt(squares.clamp_min(L2_NORMALIZE_EPSILON))
    return torch.sparse_coo_tensor(x.indices(), values * scale[rows], x.shape, is_coalesced=True,
                                   check_invariants=False)


class _MultNet(nn.Module):
    """The pieces both networks share: L2 normalisation and input dropout before a sparse-input encoder."""

    def __init__(self, n_items: int, hidden: int, latent: int, dropout: float):
        super().__init__()
        self.n_items, self.hidden, self.latent = int(n_items), int(hidden), int(latent)
        self.input_dropout = MaskingNoise(dropout, rescale=True)  # tf.nn.dropout(h, keep_prob=1 - dropout)
        self.decoder = DenseStack([self.latent, self.hidden, self.n_items], "tanh", "identity", init="xavier")

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """``dropout(l2_normalize(x))`` (dropout in training mode only), in ``x``'s layout."""
        return self.input_dropout(l2_normalize_rows(x))


class MultDAENet(_MultNet):
    """Mult-DAE's network: [n_items -> hidden -> latent -> hidden -> n_items], tanh after all but the last layer.

    Parameters
    ----------
    n_items : int
        Catalogue size (input and output width).
    hidden, latent : int
        Widths of the hidden and the code layers (600 and 200 in Liang et al.).
    dropout : float
        Input dropout probability in [0, 1) (0.5 in Liang et al.).

    Notes
    -----
    ``forward`` takes a dense or sparse COO batch of raw click rows and
    returns the logits; input dropout is active in training mode only.
    """

    def __init__(self, n_items: int, hidden: int = 600, latent: int = 200, dropout: float = 0.5):
        super().__init__(n_items, hidden, latent, dropout)
        self.encoder = DenseStack([self.n_items, self.hidden, self.latent], "tanh", "tanh", sparse_input=True,
                                  init="xavier")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (rows, n_items) for raw rows ``x`` (dense or sparse COO)."""
        return self.decoder(self.encoder(self.encoder_input(x)))


class MultVAENet(_MultNet):
    """Mult-VAE's network: encoder [n_items -> hidden -> 2 x latent], decoder [latent -> hidden -> n_items].

    The encoder's last layer (no activation) outputs ``[mu, logvar]``.

    Parameters
    ----------
    n_items : int
        Catalogue size (input and output width).
    hidden, latent : int
        Widths of the hidden layer and of z (600 and 200 in Liang et al.).
    dropout : float
        Input dropout probability in [0, 1) (0.5 in Liang et al.).
    """

    def __init__(self, n_items: int, hidden: int = 600, latent: int = 200, dropout: float = 0.5):
        super().__init__(n_items, hidden, latent, dropout)
        self.encoder = DenseStack([self.n_items, self.hidden], "tanh", "tanh", sparse_input=True, init="xavier")
        self.posterior = GaussianLatent(self.hidden, self.latent, init="xavier")  # one Linear: [mu, logvar]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of q(z | x), each (rows, latent), for raw rows ``x`` (dense or sparse COO)."""
        return self.posterior(self.encoder(self.encoder_input(x)))

    def forward(self, x: torch.Tensor, sample: bool | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits, mu, logvar)`` for raw rows ``x``.

        Parameters
        ----------
        x : torch.Tensor
            Dense or sparse COO (rows, n_items).
        sample : bool, optional
            Decode ``z = mu + eps * std`` (True) or ``z = mu`` (False); default:
            sample in training mode only (vae_cf's ``is_training``).
        generator : torch.Generator, optional
            Source of ``eps``; the global generator when None.
        """
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, sample=self.training if sample is None else bool(sample), generator=generator)
        return self.decoder(z), mu, logvar


class _MultAutoencoder(Recommender):
    """Fitting, scoring and validation shared by :class:`MultDAE` and :class:`MultVAE`."""

    _net_class: type[_MultNet]

    def validate_params(self) -> None:
        check_positive("hidden", self.hidden, integer=True)
        check_positive("latent", self.latent, integer=True)
        _check_number("dropout", self.dropout, 0.0, 1.0, high_open=True)
        check_positive("epochs", self.epochs, integer=True)
        check_positive("batch_size", self.batch_size, integer=True)
        check_positive("lr", self.lr)
        _check_number("l2", self.l2, 0.0, None)
        check_seed(self.seed)
        if self.patience is not None:
            check_positive("patience", self.patience, integer=True)
        if not isinstance(self.progress, bool):
            raise ValueError(f"progress={self.progress!r}; expected True or False")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}; expected one of {PRECISIONS}")
        resolve_device(self.device)

    def build_network(self, n_items: int) -> _MultNet:
        """A freshly initialised network for ``n_items`` items (seeded by ``seed``; ``fit`` calls it)."""
        torch.manual_seed(self.seed)
        return self._net_class(n_items, self.hidden, self.latent, self.dropout)

    def new_module(self) -> _MultNet:
        return self.build_network(self.n_items_)

    def _fit(self, matrix: sp.csr_matrix, validation) -> None:
        self.device_ = resolve_device(self.device)
        validate = self.ranking_validation(validation)  # checks the pair before any training
        self.module_ = self.build_network(matrix.shape[1])  # a re-fit starts from fresh weights
        config = TrainConfig(epochs=int(self.epochs), batch_size=int(self.batch_size), optimizer="adam",
                             lr=float(self.lr), seed=int(self.seed), device=str(self.device_), patience=self.patience,
                             shuffle=True, progress=self.progress, precision=self.precision,
                             checkpoint=self.training_checkpoint())
        self.history_ = train(self.module_, matrix, self.step_loss, config, validate=validate, maximize=True,
                              desc=type(self).__name__)
        self.n_updates_ = self.history_.updates
        self.best_epoch_ = self.history_.best_epoch if validate is not None else len(self.history_.epochs)

    def step_loss(self, module: _MultNet, batch: RowBatch, state: TrainingState,
                  generator: torch.Generator | None = None) -> dict:
        """The loss of one batch, as the training loop calls it: ``{"loss", "nll", ...}`` scalar tensors.

        Parameters
        ----------
        module : MultDAENet or MultVAENet
        batch : RowBatch
            Rows of the training matrix; the network and the likelihood read
            ``batch.sparse`` (the batch is never densified).
        state : TrainingState
            ``state.update`` (optimizer updates done) sets Mult-VAE's KL weight.
        generator : torch.Generator, optional
            Source of Mult-VAE's ``eps`` (the loop passes none: the global
            generator, seeded by ``seed``). Input dropout always draws from the
            global generator; build the network with ``dropout=0`` for a
            deterministic loss.
        """
        raise NotImplementedError

    def weight_decay(self, module: nn.Module) -> torch.Tensor | float:
        """vae_cf's ``2 * l2_regularizer(lam)``: ``l2 * sum ||W||^2`` over the weight matrices (0 when ``l2`` is 0)."""
        if not self.l2:
            return 0.0
        return 2 * l2_weight_decay(weight_matrices(module), float(self.l2))

    def score_tensor(self, user_items) -> torch.Tensor:
        """Logits (rows, n_items) for the given users' rows, the network in eval mode (no dropout; z = mu)."""
        rows = self.check_user_items(user_items)
        module = self.module_
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                parts = [self._logits(module, batch.sparse)
                         for batch in iter_row_batches(rows, SCORE_BATCH_ROWS, self.device_)]
        finally:
            module.train(was_training)
        if not parts:
            return torch.empty((0, self.n_items_), device=self.device_)
        return torch.cat(parts)

    def item_embeddings(self, layer: str = "input") -> np.ndarray:
        """One vector per item, shape (n_items, hidden), float32.

        ``"input"``: the item's column of the first encoder layer (what a like of it adds to
        the hidden layer); ``"output"``: its row of the decoder's last layer (the vector its
        logit is read from).
        """
        self.check_fitted()
        if layer not in ("input", "output"):
            raise ValueError(f"layer={layer!r}; expected 'input' or 'output'")
        linear = self.module_.encoder.layers[0] if layer == "input" else self.module_.decoder.layers[-1]
        weight = linear.weight.detach().float().cpu()
        return (weight.T if layer == "input" else weight).contiguous().numpy()

    @staticmethod
    def _logits(module: _MultNet, x: torch.Tensor) -> torch.Tensor:
        out = module(x)
        return out[0] if isinstance(out, tuple) else out


class MultDAE(_MultAutoencoder):
    """Mult-DAE (Liang et al. 2018): a denoising autoencoder with a multinomial likelihood.

    [n_items -> hidden -> latent -> hidden -> n_items] with tanh, L2-normalised
    input with dropout, loss ``-mean_rows(sum log_softmax(logits) * x) + l2 * sum ||W||^2``.
    Scores are the logits of a row, so users unseen in training are scored
    from their rows. See the module docstring for the details and departures.

    Parameters
    ----------
    hidden : int, default 600
        Width of the two hidden layers.
    latent : int, default 200
        Width of the code layer.
    dropout : float, default 0.5
        Input dropout probability in [0, 1) (vae_cf's ``keep_prob`` 0.5).
    epochs : int, default 200
        Training epochs (all are run unless ``patience`` stops earlier).
    batch_size : int, default 500
        Users per Adam update.
    lr : float, default 1e-3
        Adam's learning rate.
    l2 : float, default 0.0
        vae_cf's ``lam``: ``l2 * sum ||W||^2`` is added to the loss (the
        notebook's Mult-DAE cell uses ``0.01 / 500``; the paper none).
    seed : int, default 0
        Seeds the initial weights, the dropout and the batch order.
    device : str, default "auto"
        "auto" (CUDA when present), "cpu" or "cuda".
    patience : int or None, default None
        Stop after this many epochs without a better validation NDCG@100;
        None runs every epoch (vae_cf). The best epoch's weights are kept either way.
    progress : bool, default False
        Show a progress bar on stderr.
    precision : {"fp32", "bf16"}, default "fp32"
        "bf16": train with bfloat16 autocast (mixed precision, see
        :class:`aerec.training.TrainConfig`); scores are always computed in float32 (bfloat16
        logits would tie in the ranking).

    Attributes
    ----------
    module_ : MultDAENet
        The trained network (the best validation epoch's weights with ``validation``).
    history_ : aerec.training.History
        Per-epoch loss terms, validation NDCG@100 and seconds.
    best_epoch_ : int
        The epoch whose weights were kept (the last one without validation).
    n_updates_ : int
        Optimizer updates done.
    """

    _net_class = MultDAENet

    def __init__(self, hidden: int = 600, latent: int = 200, dropout: float = 0.5, epochs: int = 200,
                 batch_size: int = 500, lr: float = 1e-3, l2: float = 0.0, seed: int = 0, device: str = "auto",
                 patience: int | None = None, progress: bool = False, precision: str = "fp32"):
        self.hidden = hidden
        self.latent = latent
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.l2 = l2
        self.seed = seed
        self.device = device
        self.patience = patience
        self.progress = progress
        self.precision = precision

    def step_loss(self, module: MultDAENet, batch: RowBatch, state: TrainingState,
                  generator: torch.Generator | None = None) -> dict:
        nll = multinomial_nll(module(batch.sparse), batch.sparse).mean()
        return {"loss": nll + self.weight_decay(module), "nll": nll.detach()}

    step_loss.__doc__ = _MultAutoencoder.step_loss.__doc__


class MultVAE(_MultAutoencoder):
    """Mult-VAE (Liang et al. 2018): a variational autoencoder with a multinomial likelihood and annealed KL.

    Encoder [n_items -> hidden -> 2 x latent] (mu, logvar), decoder
    [latent -> hidden -> n_items], tanh between layers, L2-normalised input
    with dropout; loss ``nll + beta * KL + l2 * sum ||W||^2`` with
    ``beta = min(beta_cap, update / total_anneal_steps)``. Scores are the
    logits decoded from ``z = mu``, so users unseen in training are scored
    from their rows. See the module docstring for the details and departures.

    Parameters
    ----------
    hidden : int, default 600
        Width of the encoder's and the decoder's hidden layer.
    latent : int, default 200
        Dimension of z (the encoder's last layer has 2 x latent outputs).
    dropout : float, default 0.5
        Input dropout probability in [0, 1) (vae_cf's ``keep_prob`` 0.5).
    beta_cap : float, default 0.2
        Largest KL weight (vae_cf's ``anneal_cap``).
    total_anneal_steps : int, default 200_000
        The KL weight grows by ``1 / total_anneal_steps`` per update, so it
        reaches ``beta_cap`` after ``beta_cap * total_anneal_steps`` updates
        (40,000 with the defaults; on a small data set, a few updates per
        epoch, it stays far below the cap, as in vae_cf).
    epochs : int, default 200
        Training epochs (all are run unless ``patience`` stops earlier).
    batch_size : int, default 500
        Users per Adam update.
    lr : float, default 1e-3
        Adam's learning rate.
    l2 : float, default 0.0
        vae_cf's ``lam``: ``l2 * sum ||W||^2`` is added to the loss.
    seed : int, default 0
        Seeds the initial weights, the dropout, eps and the batch order.
    device : str, default "auto"
        "auto" (CUDA when present), "cpu" or "cuda".
    patience : int or None, default None
        Stop after this many epochs without a better validation NDCG@100;
        None runs every epoch (vae_cf). The best epoch's weights are kept either way.
    progress : bool, default False
        Show a progress bar on stderr.
    precision : {"fp32", "bf16"}, default "fp32"
        "bf16": train with bfloat16 autocast (mixed precision, see
        :class:`aerec.training.TrainConfig`); scores are always computed in float32 (bfloat16
        logits would tie in the ranking).

    Attributes
    ----------
    module_ : MultVAENet
        The trained network (the best validation epoch's weights with ``validation``).
    history_ : aerec.training.History
        Per-epoch loss terms (loss, nll, kl, beta as the epoch's mean), validation NDCG@100 and seconds.
    best_epoch_ : int
        The epoch whose weights were kept (the last one without validation).
    n_updates_ : int
        Optimizer updates done.
    beta_reached_ : float
        The KL weight of the last update done.
    """

    _net_class = MultVAENet

    def __init__(self, hidden: int = 600, latent: int = 200, dropout: float = 0.5, beta_cap: float = 0.2,
                 total_anneal_steps: int = 200_000, epochs: int = 200, batch_size: int = 500, lr: float = 1e-3,
                 l2: float = 0.0, seed: int = 0, device: str = "auto", patience: int | None = None,
                 progress: bool = False, precision: str = "fp32"):
        self.hidden = hidden
        self.latent = latent
        self.dropout = dropout
        self.beta_cap = beta_cap
        self.total_anneal_steps = total_anneal_steps
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.l2 = l2
        self.seed = seed
        self.device = device
        self.patience = patience
        self.progress = progress
        self.precision = precision

    def validate_params(self) -> None:
        super().validate_params()
        _check_number("beta_cap", self.beta_cap, 0.0, None)
        check_positive("total_anneal_steps", self.total_anneal_steps, integer=True)

    def beta(self, update: int) -> float:
        """The KL weight ``min(beta_cap, update / total_anneal_steps)`` of an update preceded by ``update`` others."""
        return LinearAnneal(cap=float(self.beta_cap), total_anneal_steps=int(self.total_anneal_steps))(update)

    def _fit(self, matrix: sp.csr_matrix, validation) -> None:
        super()._fit(matrix, validation)
        self.beta_reached_ = self.beta(max(self.n_updates_ - 1, 0))

    def step_loss(self, module: MultVAENet, batch: RowBatch, state: TrainingState,
                  generator: torch.Generator | None = None) -> dict:
        beta = self.beta(state.update)
        logits, mu, logvar = module(batch.sparse, generator=generator)
        nll = multinomial_nll(logits, batch.sparse).mean()
        kl = kl_standard_normal(mu.float(), logvar.float()).mean()
        loss = nll + beta * kl + self.weight_decay(module)
        return {"loss": loss, "nll": nll.detach(), "kl": kl.detach(), "beta": torch.tensor(beta, dtype=torch.float64)}

    step_loss.__doc__ = _MultAutoencoder.step_loss.__doc__


def _check_number(name: str, value, low: float | None, high: float | None, high_open: bool = False) -> None:
    ok = (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
          and math.isfinite(value))
    ok = ok and (low is None or value >= low) and (high is None or (value < high if high_open else value <= high))
    if not ok:
        bound = f" and {'<' if high_open else '<='} {high}" if high is not None else ""
        raise ValueError(f"{name}={value!r}; expected a finite number >= {low}{bound}")
