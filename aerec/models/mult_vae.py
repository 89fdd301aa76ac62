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

Beyond the paper (off by default, ``side_information=False`` is vae_cf's model): ``side_information=True``
with ``fit(user_features=...)`` makes both networks conditional on the user's side features ``s`` (a conditional
VAE / DAE in the sense of Sohn, Lee and Yan, NeurIPS 2015): ``s`` is appended to the normalised, dropped-out row
before the first encoder layer and to the code before the first decoder layer, never normalised nor dropped
out. A user with no history is then scored from ``s`` alone. The feature table is kept with the model and looked
up by raw user id when scoring (:mod:`aerec.models.conditioning`).

Departures from the vae_cf notebook, named:

- Mult-DAE follows the paper, [I-600-200-600-I] with no weight decay by
  default; the notebook's Mult-DAE cell trains [I-200-I] with
  ``lam = 0.01 / batch_size`` (pass ``l2=2e-5`` for that weight decay).
- Random streams are torch's (seeded by ``seed``), not TensorFlow's, so runs
  match vae_cf in distribution, not draw for draw.
"""

from __future__ import annotations

import torch
from torch import nn

from aerec.core.corruption import MaskingNoise
from aerec.core.layers import DenseStack, l2_normalize_rows, weight_matrices
from aerec.core.losses import multinomial_nll
from aerec.core.penalties import l2_weight_decay
from aerec.core.variational import GaussianLatent, LinearAnneal, kl_standard_normal, reparameterize
from aerec.data.batching import RowBatch
from aerec.models.conditioning import UserConditioned
from aerec.models.torch_base import TorchRecommender, store_params
from aerec.params import PROBABILITY, STEPS, WEIGHT, WIDTH, Boolean
from aerec.search_space import Choice, FloatRange
from aerec.training import TrainingState

__all__ = ["MultDAE", "MultDAENet", "MultVAE", "MultVAENet", "l2_normalize_rows"]


class _MultNet(nn.Module):
    """The pieces both networks share: L2 normalisation and input dropout before a sparse-input encoder.

    ``n_side`` > 0 makes the network conditional (a user's side features ``s`` enter the encoder, appended to the
    normalised, dropped-out row, and the decoder, appended to the code): never normalised nor dropped out.
    """

    def __init__(self, n_items: int, hidden: int, latent: int, dropout: float, generator: torch.Generator | None,
                 n_side: int = 0):
        super().__init__()
        self.n_items, self.hidden, self.latent, self.n_side = int(n_items), int(hidden), int(latent), int(n_side)
        self.input_dropout = MaskingNoise(dropout, rescale=True)  # tf.nn.dropout(h, keep_prob=1 - dropout)
        # drawn first, then the encoder: the order of the draws (and of the state dict) as it always was
        self.decoder = DenseStack([self.latent + self.n_side, self.hidden, self.n_items], "tanh", "identity",
                                  init="xavier", generator=generator)

    def encoder_input(self, x: torch.Tensor, generator: torch.Generator | None = None,
                      side: torch.Tensor | None = None) -> torch.Tensor:
        """``dropout(l2_normalize(x))`` (dropout in training mode only, drawn from ``generator``), in ``x``'s layout,
        then the side features' columns (a conditional network)."""
        h = self.input_dropout(l2_normalize_rows(x), generator)
        if not self.n_side:
            return h
        side = side.to(h.dtype)
        return torch.cat([h.coalesce(), side.to_sparse()], 1).coalesce() if h.is_sparse else torch.cat([h, side], 1)

    def decode(self, code: torch.Tensor, side: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (rows, n_items) of a code (with the side features appended in a conditional network)."""
        return self.decoder(torch.cat([code, side.to(code.dtype)], 1) if self.n_side else code)


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
    generator : torch.Generator, optional
        Source of the initial weights (torch's global generator when None).
    """

    def __init__(self, n_items: int, hidden: int = 600, latent: int = 200, dropout: float = 0.5,
                 generator: torch.Generator | None = None, n_side: int = 0):
        super().__init__(n_items, hidden, latent, dropout, generator, n_side)
        self.encoder = DenseStack([self.n_items + self.n_side, self.hidden, self.latent], "tanh", "tanh",
                                  sparse_input=True, init="xavier", generator=generator)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                side: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of shape (rows, n_items) for raw rows ``x`` (dense or sparse COO); dropout drawn from ``generator``;
        ``side``: the rows' side features (rows, n_side), for a conditional network."""
        return self.decode(self.encoder(self.encoder_input(x, generator, side)), side)


class MultVAENet(_MultNet):
    """Mult-VAE's network: encoder [n_items -> hidden -> 2 x latent], decoder [latent -> hidden -> n_items].

    The encoder's last layer (no activation) outputs ``[mu, logvar]``. Parameters as :class:`MultDAENet`.
    """

    def __init__(self, n_items: int, hidden: int = 600, latent: int = 200, dropout: float = 0.5,
                 generator: torch.Generator | None = None, n_side: int = 0):
        super().__init__(n_items, hidden, latent, dropout, generator, n_side)
        self.encoder = DenseStack([self.n_items + self.n_side, self.hidden], "tanh", "tanh", sparse_input=True,
                                  init="xavier", generator=generator)
        self.posterior = GaussianLatent(self.hidden, self.latent, init="xavier", generator=generator)  # [mu, logvar]

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None,
               side: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of q(z | x[, s]), each (rows, latent), for raw rows ``x`` (dense or sparse COO)."""
        return self.posterior(self.encoder(self.encoder_input(x, generator, side)))

    def forward(self, x: torch.Tensor, sample: bool | None = None, generator: torch.Generator | None = None,
                side: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits, mu, logvar)`` for raw rows ``x`` (dense or sparse COO).

        ``sample``: decode ``z = mu + eps * std`` (True) or ``z = mu`` (False); default: sample in
        training mode only (vae_cf's ``is_training``). Dropout and ``eps`` are drawn from ``generator``
        (torch's global generator when None).
        """
        mu, logvar = self.encode(x, generator, side)
        z = reparameterize(mu, logvar, sample=self.training if sample is None else bool(sample), generator=generator)
        return self.decode(z, side), mu, logvar


class _MultAutoencoder(UserConditioned, TorchRecommender):
    """What :class:`MultDAE` and :class:`MultVAE` share: the network's widths, dropout, vae_cf's weight decay, and
    the users' side features as a condition (``side_information=True``; :mod:`aerec.models.conditioning`)."""

    parameter_constraints = {"hidden": [WIDTH], "latent": [WIDTH], "dropout": [PROBABILITY],
                             "l2": [WEIGHT], "side_information": [Boolean()]}
    #: vae_cf's widths and weight decays (0 for Mult-VAE, 0.01 / 500 in the notebook's Mult-DAE)
    search_space = {"hidden": Choice(200, 600), "latent": Choice(100, 200), "dropout": FloatRange(0.2, 0.8),
                    "l2": Choice(0.0, 2e-5, 1e-4)}
    _net_class: type[_MultNet]

    def build_module(self, generator: torch.Generator) -> _MultNet:
        return self._net_class(self.n_items_, self.hidden, self.latent, self.dropout, generator, self.n_side)

    def weight_decay(self, module: nn.Module) -> torch.Tensor | float:
        """vae_cf's ``2 * l2_regularizer(lam)``: ``l2 * sum ||W||^2`` over the weight matrices (0 when ``l2`` is 0)."""
        if not self.l2:
            return 0.0
        return 2 * l2_weight_decay(weight_matrices(module), float(self.l2))

    def item_embeddings(self, layer: str = "input"):
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
        return (weight.T[:self.n_items_] if layer == "input" else weight).contiguous().numpy()

    def score_batch(self, module: _MultNet, batch: RowBatch) -> torch.Tensor:
        """The logits of a batch being scored (with its users' side features in a conditional network)."""
        side = self.scoring_batch_side(batch)
        out = module(batch.sparse) if side is None else module(batch.sparse, side=side)
        return out[0] if isinstance(out, tuple) else out

    def embed_batch(self, module: _MultNet, batch: RowBatch) -> torch.Tensor:
        """The code layer (rows, latent): Mult-DAE's tanh code, Mult-VAE's posterior mean."""
        side = self.scoring_batch_side(batch)
        if isinstance(module, MultVAENet):
            return module.encode(batch.sparse, side=side)[0]
        return module.encoder(module.encoder_input(batch.sparse, side=side))


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
    l2 : float, default 0.0
        vae_cf's ``lam``: ``l2 * sum ||W||^2`` is added to the loss (the
        notebook's Mult-DAE cell uses ``0.01 / 500``; the paper none).
    side_information : bool, default False
        Condition the network on ``fit``'s ``user_features`` (see the module text); False ignores them.
    epochs=200, batch_size=500, lr=1e-3 (Adam), seed, device, patience, progress, precision, max_seconds
        The shared training parameters (:mod:`aerec.models.torch_base`); vae_cf runs every epoch
        and keeps the best validation NDCG@100.

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
                 patience: int | None = None, progress: bool = False, precision: str = "fp32",
                 max_seconds: float | None = None, side_information: bool = False):
        store_params(self, locals())

    def batch_loss(self, module: MultDAENet, batch: RowBatch, state: TrainingState) -> dict:
        """``{"loss", "nll"}``: the multinomial NLL of the batch's rows (their mean), plus the weight decay."""
        side = self.batch_side(batch)
        logits = module(batch.sparse, state.generator) if side is None else module(batch.sparse, state.generator,
                                                                                   side=side)
        nll = multinomial_nll(logits, batch.sparse).mean()
        return {"loss": nll + self.weight_decay(module), "nll": nll.detach()}


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
    l2 : float, default 0.0
        vae_cf's ``lam``: ``l2 * sum ||W||^2`` is added to the loss.
    side_information : bool, default False
        Condition the network on ``fit``'s ``user_features`` (see the module text); False ignores them.
    epochs=200, batch_size=500, lr=1e-3 (Adam), seed, device, patience, progress, precision, max_seconds
        The shared training parameters (:mod:`aerec.models.torch_base`).

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

    parameter_constraints = {"beta_cap": [WEIGHT], "total_anneal_steps": [STEPS]}
    #: Liang et al. sweep the cap of the KL weight up to 1
    search_space = {"beta_cap": FloatRange(0.05, 1.0)}
    _net_class = MultVAENet

    def __init__(self, hidden: int = 600, latent: int = 200, dropout: float = 0.5, beta_cap: float = 0.2,
                 total_anneal_steps: int = 200_000, epochs: int = 200, batch_size: int = 500, lr: float = 1e-3,
                 l2: float = 0.0, seed: int = 0, device: str = "auto", patience: int | None = None,
                 progress: bool = False, precision: str = "fp32", max_seconds: float | None = None,
                 side_information: bool = False):
        store_params(self, locals())

    def beta(self, update: int) -> float:
        """The KL weight ``min(beta_cap, update / total_anneal_steps)`` of an update preceded by ``update`` others."""
        return LinearAnneal(cap=float(self.beta_cap), total_anneal_steps=int(self.total_anneal_steps))(update)

    def after_fit(self, matrix) -> None:
        self.beta_reached_ = self.beta(max(self.n_updates_ - 1, 0))

    def batch_loss(self, module: MultVAENet, batch: RowBatch, state: TrainingState) -> dict:
        """``{"loss", "nll", "kl", "beta"}``: NLL + beta * KL (means over the rows) + weight decay; beta from ``state.update``."""
        beta = self.beta(state.update)
        logits, mu, logvar = module(batch.sparse, generator=state.generator, side=self.batch_side(batch))
        nll = multinomial_nll(logits, batch.sparse).mean()
        kl = kl_standard_normal(mu.float(), logvar.float()).mean()
        loss = nll + beta * kl + self.weight_decay(module)
        return {"loss": loss, "nll": nll.detach(), "kl": kl.detach(), "beta": torch.tensor(beta, dtype=torch.float64)}
