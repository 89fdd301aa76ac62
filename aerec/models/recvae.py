"""RecVAE: a variational autoencoder with a composite prior and alternating updates for top-N recommendation.

Ilya Shenbin, Anton Alekseev, Elena Tutubalina, Valentin Malykh, Sergey I.
Nikolenko. "RecVAE: A New Variational Autoencoder for Top-N Recommendations
with Implicit Feedback", WSDM 2020. https://arxiv.org/abs/1912.11160 --
reference code: ilya-shenbin/RecVAE (master, commit 05fdd52: ``model.py``,
``run.py``), whose README command for ML-20M (``--n-epochs 50 --gamma 0.005``)
gives the defaults here. A port of that code, run on the same splits, is
``evaluation/recvae_reference.py``.

Exactly as the reference code:

- input: each row L2-normalised, then dropout (probability ``dropout``, 0.5,
  survivors scaled by ``1 / (1 - dropout)``, as ``F.dropout``) in the encoder
  phase only;
- encoder: five densely connected layers of width ``hidden`` (600),
  ``h_i = LayerNorm(swish(W_i h_{i-1} + b_i + h_1 + ... + h_{i-1}))`` with
  LayerNorm's epsilon 0.1, then two linear maps to ``mu`` and ``logvar``
  (``latent``, 200); decoder: one linear map ``latent -> n_items`` (logits);
  PyTorch's default Linear initialisation everywhere;
- loss of a batch: ``-mean_rows(sum_i log_softmax(logits)_i x_i)`` plus
  ``mean_rows(w_u * sum_j [log q(z_j | x) - log p(z_j)])`` with one sample
  ``z ~ q(z | x)`` and ``w_u = gamma * sum_i x_ui`` (the KL weight grows with
  the user's number of interactions; with ``gamma=None`` a constant ``beta``
  instead, the reference's ``--beta``);
- the composite prior, per latent dimension: the mixture
  ``0.15 N(0, 1) + 0.75 q_old(z | x) + 0.1 N(0, e^10)`` where ``q_old`` is the
  encoder as it was at the end of the last encoder phase (without dropout);
  before the first decoder phase it is a network of its own drawn at random,
  as the reference's (``copy_prior_at_start=True`` starts it as a copy of the
  encoder instead);
- each epoch: ``encoder_passes`` (3) passes over the shuffled training users
  in batches of 500 that step only the encoder's Adam (lr 5e-4), then the
  encoder is copied into the prior, then ``decoder_passes`` (1) pass without
  input dropout that steps only the decoder's Adam; z is sampled in both;
- 50 epochs, keeping the epoch with the best NDCG@100 on the validation users;
  scores are the logits decoded from ``z = mu``, so users unseen in training
  are scored from their rows.

Implementation notes (not departures): the first encoder layer takes the
batch as a sparse tensor (:class:`~aerec.core.layers.SparseInputLinear`), so
its cost grows with the stored entries; in the encoder phase the decoder's
weights take no gradient, and in the decoder phase the encoder runs without
autograd (the reference computes both gradients and discards the unused one:
the updates are the same). ``mu`` and ``logvar`` come from one linear layer of
``2 * latent`` outputs (two layers of the same fan-in in the reference: the
same initial distribution, other state-dict names).

Departures from the reference, named:

- An all-zero row is normalised to zero (``aerec.core.layers.l2_normalize_rows``);
  the reference divides by a zero norm and scores it NaN.
- Random streams are torch's from ``seed`` (the reference seeds numpy and
  torch's global generator with 1337), so runs match in distribution, not
  draw for draw. Batch order is drawn by aerec's loop, not ``np.random.shuffle``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from aerec.core.corruption import MaskingNoise
from aerec.core.layers import SparseInputLinear, dense_linear, l2_normalize_rows
from aerec.core.losses import multinomial_nll
from aerec.core.variational import GaussianLatent, reparameterize
from aerec.data.batching import RowBatch
from aerec.models.torch_base import TorchRecommender, store_params
from aerec.params import COUNT, LAYERS, MAX_REAL, PROBABILITY, RATE, WIDTH, Boolean, Satisfies
from aerec.search_space import Choice, FloatRange
from aerec.training import Phase, TrainingState

__all__ = ["RecVAE", "RecVAENet", "RecVAEEncoder", "gaussian_log_pdf"]

#: The reference's mixture weights of the composite prior: standard normal, old posterior, wide normal.
MIXTURE_WEIGHTS = (3 / 20, 3 / 4, 1 / 10)
#: Log-variance of the prior's wide component (the reference's ``logvar_uniform_prior``).
WIDE_LOGVAR = 10.0
#: LayerNorm's epsilon in the reference's encoder.
LAYER_NORM_EPS = 0.1
_LOG_2PI = math.log(2 * math.pi)


def gaussian_log_pdf(z: torch.Tensor, mu: torch.Tensor | float, logvar: torch.Tensor | float) -> torch.Tensor:
    """Elementwise ``log N(z; mu, exp(logvar))`` (no sum over dimensions), as the reference's ``log_norm_pdf``."""
    logvar = torch.as_tensor(logvar, dtype=z.dtype, device=z.device)
    return -0.5 * (logvar + _LOG_2PI + (z - mu).square() / logvar.exp())


def _three_positive_weights(weights) -> bool:
    return len(weights) == 3 and all(isinstance(w, (int, float)) and not isinstance(w, bool) and 0 < w <= MAX_REAL
                                     for w in weights)


class RecVAEEncoder(nn.Module):
    """RecVAE's densely connected encoder: ``layers`` swish + LayerNorm layers with residual sums, then (mu, logvar).

    Takes the already normalised (and dropped-out) rows, dense or sparse COO.
    """

    def __init__(self, n_items: int, hidden: int, latent: int, layers: int = 5,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.linears = nn.ModuleList([SparseInputLinear(n_items, hidden, generator=generator)]
                                     + [dense_linear(hidden, hidden, generator=generator) for _ in range(layers - 1)])
        self.norms = nn.ModuleList([nn.LayerNorm(hidden, eps=LAYER_NORM_EPS) for _ in range(layers)])
        self.posterior = GaussianLatent(hidden, latent, generator=generator)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, total = x, None  # total: h_1 + ... + h_{i-1}
        for linear, norm in zip(self.linears, self.norms):
            pre = linear(h) if total is None else linear(h) + total
            h = norm(F.silu(pre))
            total = h if total is None else total + h
        return self.posterior(h)


class RecVAENet(nn.Module):
    """RecVAE's network: the encoder, the frozen copy of it that the composite prior reads, and a linear decoder.

    Parameters
    ----------
    n_items, hidden, latent : int
        Catalogue size, encoder width (600) and latent dimension (200).
    dropout : float
        Input dropout probability of the encoder phase (0.5).
    layers : int
        Densely connected encoder layers (5).
    mixture_weights : (float, float, float)
        Prior weights of the standard normal, the old posterior and the wide normal.
    generator : torch.Generator, optional
        Source of the initial weights (torch's global generator when None).
    """

    def __init__(self, n_items: int, hidden: int = 600, latent: int = 200, dropout: float = 0.5, layers: int = 5,
                 mixture_weights=MIXTURE_WEIGHTS, copy_prior: bool = False,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.n_items, self.latent = int(n_items), int(latent)
        self.input_dropout = MaskingNoise(dropout, rescale=True)
        self.encoder = RecVAEEncoder(n_items, hidden, latent, layers, generator)
        self.prior_encoder = RecVAEEncoder(n_items, hidden, latent, layers, generator)  # drawn as the reference's
        if copy_prior:
            self.update_prior()
        self.prior_encoder.requires_grad_(False)
        self.decoder = dense_linear(latent, n_items, generator=generator)
        self.register_buffer("log_mixture_weights", torch.tensor(mixture_weights, dtype=torch.float32).log())

    def update_prior(self) -> None:
        """Copy the encoder into the prior (the reference's ``update_prior``, before each decoder phase)."""
        self.prior_encoder.load_state_dict(self.encoder.state_dict())

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None,
               dropout: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of q(z | x) for raw rows ``x``; input dropout (training mode only) when ``dropout``."""
        x = l2_normalize_rows(x)
        return self.encoder(self.input_dropout(x, generator) if dropout else x)

    def prior_log_density(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Elementwise ``log p(z | x)`` of the composite prior, shape of ``z``."""
        with torch.no_grad():
            old_mu, old_logvar = self.prior_encoder(l2_normalize_rows(x))
        components = torch.stack([gaussian_log_pdf(z, 0.0, 0.0), gaussian_log_pdf(z, old_mu, old_logvar),
                                  gaussian_log_pdf(z, 0.0, WIDE_LOGVAR)], dim=-1)
        return torch.logsumexp(components + self.log_mixture_weights.to(z.dtype), dim=-1)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                dropout: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits, mu, logvar)``; z is sampled in training mode and is ``mu`` in eval mode."""
        mu, logvar = self.encode(x, generator, dropout)
        z = reparameterize(mu, logvar, sample=self.training, generator=generator)
        return self.decoder(z), mu, logvar


class RecVAE(TorchRecommender):
    """RecVAE (Shenbin et al. 2020): composite prior, per-user KL weight, alternating encoder and decoder phases.

    See the module docstring for the algorithm as the reference code runs it and the named departures.

    Parameters
    ----------
    hidden : int, default 600
        Width of the encoder's layers.
    latent : int, default 200
        Dimension of z.
    dropout : float, default 0.5
        Input dropout probability in the encoder phase, in [0, 1).
    gamma : float or None, default 0.005
        The KL weight of a user is ``gamma`` times their number of interactions (their row's sum).
    beta : float or None, default None
        A constant KL weight instead (set ``gamma=None``); exactly one of the two is set.
    encoder_passes, decoder_passes : int, default 3 and 1
        Passes of each phase per epoch (the reference's ``--n-enc_epochs``, ``--n-dec_epochs``).
    layers : int, default 5
        Densely connected encoder layers.
    mixture_weights : tuple of 3 floats, default (0.15, 0.75, 0.1)
        Composite prior weights: standard normal, previous posterior, wide normal (log-variance 10).
    copy_prior_at_start : bool, default False
        Start the prior's encoder as a copy of the encoder (False: a network of its own drawn at random, as the
        reference's, until the first copy before the first decoder phase).
    epochs=50, batch_size=500, lr=5e-4 (Adam, one per phase), seed, device, patience, progress, precision, max_seconds
        The shared training parameters (:mod:`aerec.models.torch_base`).

    Attributes
    ----------
    module_ : RecVAENet
        The trained network (the best validation epoch's weights with ``validation``).
    history_ : aerec.training.History
        Per-epoch terms of each phase (``encoder_loss``, ``decoder_nll``, ...), validation NDCG@100, seconds.
    best_epoch_, n_updates_ : int
        The epoch kept, and the optimizer updates done (both phases).
    """

    parameter_constraints = {
        "hidden": [WIDTH], "latent": [WIDTH], "dropout": [PROBABILITY], "gamma": [RATE, None], "beta": [RATE, None],
        "encoder_passes": [COUNT], "decoder_passes": [COUNT], "layers": [LAYERS],
        "mixture_weights": [Satisfies(_three_positive_weights, f"a sequence of three positive weights up to {MAX_REAL:g}")],
        "copy_prior_at_start": [Boolean()],
    }
    # lr, dropout and latent over the Mult models' ranges, gamma around the reference's 0.005. lr's upper end was
    # 3e-3 until the strong tables chose 1.6e-3 to 2.9e-3 on validation in 8 of their 10 cells (ML-100K and
    # ml-latest-small: git show a8fcb7c:evaluation/results/strong_ml_latest_small_report/report.md)
    search_space = {"gamma": FloatRange(1e-3, 0.05, log=True), "dropout": FloatRange(0.2, 0.8),
                    "lr": FloatRange(1e-4, 1e-2, log=True), "latent": Choice(100, 200)}

    def __init__(self, hidden: int = 600, latent: int = 200, dropout: float = 0.5, gamma: float | None = 0.005,
                 beta: float | None = None, encoder_passes: int = 3, decoder_passes: int = 1, layers: int = 5,
                 mixture_weights=MIXTURE_WEIGHTS, copy_prior_at_start: bool = False, epochs: int = 50,
                 batch_size: int = 500, lr: float = 5e-4, seed: int = 0, device: str = "auto",
                 patience: int | None = None, progress: bool = False, precision: str = "fp32",
                 max_seconds: float | None = None):
        store_params(self, locals())

    def check_param_combinations(self) -> None:
        if (self.gamma is None) == (self.beta is None):
            raise ValueError(f"gamma={self.gamma!r}, beta={self.beta!r}; expected exactly one of them set "
                             "(gamma: KL weight per interaction, beta: a constant KL weight)")

    def build_module(self, generator: torch.Generator) -> RecVAENet:
        return RecVAENet(self.n_items_, self.hidden, self.latent, self.dropout, self.layers,
                         tuple(float(w) for w in self.mixture_weights), self.copy_prior_at_start, generator)

    def phases(self, module: RecVAENet) -> list[Phase]:
        return [Phase("encoder", lambda m: m.encoder.parameters(), passes=self.encoder_passes),
                Phase("decoder", lambda m: m.decoder.parameters(), passes=self.decoder_passes,
                      before=lambda m, state: m.update_prior())]

    def kl_weights(self, x: torch.Tensor) -> torch.Tensor | float:
        """Per-row KL weights ``gamma * sum_i x_ui`` (or the constant ``beta``)."""
        if self.gamma is None:
            return float(self.beta)
        counts = torch.sparse.sum(x, dim=1).to_dense() if x.is_sparse else x.sum(dim=1)
        return float(self.gamma) * counts

    def batch_loss(self, module: RecVAENet, batch: RowBatch, state: TrainingState) -> dict:
        """``{"loss", "nll", "kl"}``: NLL + weighted KL to the composite prior (means over the rows)."""
        x = batch.sparse
        encoder_phase = state.phase != "decoder"
        with torch.set_grad_enabled(encoder_phase and torch.is_grad_enabled()):
            mu, logvar = module.encode(x, state.generator, dropout=encoder_phase)
            z = reparameterize(mu, logvar, sample=True, generator=state.generator)
        weight, bias = module.decoder.weight, module.decoder.bias
        if encoder_phase:  # the decoder is not stepped: no gradient for it
            weight, bias = weight.detach(), bias.detach()
        nll = multinomial_nll(F.linear(z, weight, bias), x).mean()
        with torch.set_grad_enabled(encoder_phase and torch.is_grad_enabled()):
            z = z.float()
            log_ratio = gaussian_log_pdf(z, mu.float(), logvar.float()) - module.prior_log_density(x, z)
            kl = (log_ratio.sum(dim=-1) * self.kl_weights(x)).mean()
        return {"loss": nll + kl, "nll": nll.detach(), "kl": kl.detach()}

    def item_embeddings(self, layer: str = "input"):
        """One vector per item, float32: ``"input"``, its column of the first encoder layer (n_items, hidden);
        ``"output"``, its row of the decoder (n_items, latent)."""
        self.check_fitted()
        if layer not in ("input", "output"):
            raise ValueError(f"layer={layer!r}; expected 'input' or 'output'")
        weight = (self.module_.encoder.linears[0].weight.T if layer == "input" else self.module_.decoder.weight)
        return weight.detach().float().cpu().contiguous().numpy()

    def embed_batch(self, module: RecVAENet, batch: RowBatch) -> torch.Tensor:
        """The posterior mean (rows, latent) of each row."""
        return module.encode(batch.sparse, dropout=False)[0]
