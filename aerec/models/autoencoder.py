"""A general autoencoder estimator over the core pieces: embedding, denoising, anomaly scoring, recommending.

The family as surveyed by Bank, Koenigstein and Giryes ("Autoencoders", 2020)
and Goodfellow, Bengio and Courville (Deep Learning, ch. 14):

- ``undercomplete``: a narrow code, reconstruction loss only (with linear
  layers and squared error it learns the principal subspace);
- ``sparse``: plus an activity penalty on the code, KL towards a target
  activation ``rho`` (Ng's sparse autoencoder; needs codes in (0, 1)) or L1;
- ``denoising``: the input is corrupted while training, the clean input is the
  target (Vincent et al. 2008);
- ``contractive``: plus the squared Frobenius norm of the encoder's Jacobian
  (Rifai et al. 2011; closed form for one sigmoid layer, autograd otherwise);
- ``variational``: a Gaussian posterior, the ELBO with a KL weight ``beta``
  (beta-VAE when != 1, or a linear anneal), or the importance-weighted bound
  with ``iwae_samples`` > 1 (Burda et al. 2016).

It is a model like the recommenders (:class:`~aerec.models.torch_base.TorchRecommender`):
trained by the one loop, saved and loaded by :func:`aerec.save` / :func:`aerec.load`,
registered as ``"autoencoder"``. Given users' rows it recommends the items of
highest reconstruction. scikit-learn habits: ``fit(X)`` takes a dense array or a
sparse matrix, ``transform`` is ``embed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from aerec.core.corruption import CORRUPTIONS, make_corruption
from aerec.core.layers import ACTIVATIONS, DenseStack, weight_matrices
from aerec.core.losses import bernoulli_nll, gaussian_nll, multinomial_nll
from aerec.core.penalties import contractive, contractive_sigmoid, kl_sparsity, l1_activity, l2_weight_decay
from aerec.core.variational import (BetaSchedule, GaussianLatent, iwae_bound, kl_standard_normal, make_beta_schedule,
                                    reparameterize)
from aerec.data.batching import RowBatch, iter_row_batches
from aerec.data.interactions import Interactions
from aerec.models.torch_base import TorchRecommender, store_params
from aerec.params import BATCH, MAX_LAYERS, MAX_WIDTH, POSITIVE_INT, SAMPLES, WEIGHT, WIDTH, Boolean, Interval, Options, Satisfies, check
from aerec.training import OPTIMIZERS

__all__ = ["Autoencoder", "AutoencoderNet"]

KINDS = ("undercomplete", "sparse", "denoising", "contractive", "variational")
LOSSES = ("gaussian", "bernoulli", "multinomial")
RECONSTRUCTION = {"gaussian": gaussian_nll, "bernoulli": bernoulli_nll, "multinomial": multinomial_nll}


class AutoencoderNet(nn.Module):
    """Encoder (optionally a Gaussian latent), decoder and input corruption; initial weights from ``generator``."""

    def __init__(self, n_features: int, hidden: tuple[int, ...], activation: str, tied: bool, variational: bool,
                 corruption: nn.Module, generator: torch.Generator | None = None):
        super().__init__()
        self.corruption = corruption
        self.variational = variational
        if variational:
            body = (n_features, *hidden[:-1])
            self.encoder = (DenseStack(body, activation, final_activation=activation, generator=generator)
                            if len(body) > 1 else nn.Identity())
            self.latent = GaussianLatent(body[-1], hidden[-1], generator=generator)
            self.decoder = DenseStack((*reversed(hidden), n_features), activation, final_activation="identity",
                                      generator=generator)
        else:
            self.encoder = DenseStack((n_features, *hidden), activation, final_activation=activation,
                                      generator=generator)
            self.decoder = (self.encoder.tied_decoder("identity", generator) if tied else
                            DenseStack((*reversed(hidden), n_features), activation, final_activation="identity",
                                       generator=generator))

    def encode(self, x: torch.Tensor):
        """The code, or (mu, logvar) for the variational kind."""
        h = self.encoder(x)
        return self.latent(h) if self.variational else h


@dataclass
class _Terms:
    """What one forward pass produced, for the loss and for scoring."""

    reconstruction: torch.Tensor  # per row
    penalty: torch.Tensor  # scalar


def _is_widths(hidden) -> bool:
    return (isinstance(hidden, (tuple, list)) and 0 < len(hidden) <= MAX_LAYERS
            and all(WIDTH.is_satisfied_by(width) for width in hidden))


class Autoencoder(TorchRecommender):
    """A general autoencoder: undercomplete, sparse, denoising, contractive or variational (module docstring).

    Parameters
    ----------
    kind : {"undercomplete", "sparse", "denoising", "contractive", "variational"}
    hidden : tuple of int
        Encoder widths after the input; the last is the code (latent) size.
    activation : str
        Activation of every encoder / decoder layer but the decoder's last
        (which is linear: a mean for "gaussian", logits otherwise).
    loss : {"gaussian", "bernoulli", "multinomial"}
        Reconstruction likelihood: squared error (unit-variance Gaussian),
        logistic (data in [0, 1]) or multinomial (counts, as Mult-VAE).
    tied_weights : bool
        Decoder = encoder transposed (not for the variational kind).
    corruption, corruption_level : training-time input noise ("gaussian" std,
        "masking" / "masking_no_rescale" / "salt_and_pepper" probability);
        the denoising kind defaults to masking noise of 0.25.
    sparsity, sparsity_weight, rho : the sparse kind's penalty, "kl" (towards
        mean activation ``rho``) or "l1".
    contractive_weight : the contractive kind's penalty weight.
    beta : float or schedule
        KL weight of the variational kind (1.0 is the VAE; a
        :class:`~aerec.core.variational.LinearAnneal` anneals it).
    iwae_samples : int
        Importance samples of the variational bound (1: the ELBO).
    l2 : float
        (l2 / 2) * sum of squared weight norms, as AutoRec writes it.
    optimizer : str
        The loop's optimizer (:class:`aerec.training.TrainConfig`).
    batch_size : int or None
        Rows per update; None trains full-batch.
    epochs=100, lr=1e-3, seed, device, patience, progress, max_seconds
        The shared training parameters (:mod:`aerec.models.torch_base`); with validation
        rows, the epoch of lowest mean anomaly score on them is kept.
    """

    parameter_constraints = {
        "kind": [Options(*KINDS)], "hidden": [Satisfies(_is_widths, f"a tuple of 1 to {MAX_LAYERS} positive integers up to {MAX_WIDTH}")],
        "activation": [Options(*ACTIVATIONS)], "loss": [Options(*LOSSES)], "tied_weights": [Boolean()],
        "corruption": [None, Options(*CORRUPTIONS)], "corruption_level": [WEIGHT],
        "sparsity": [Options("kl", "l1")], "sparsity_weight": [WEIGHT],
        "rho": [Interval(float, 0, 1, closed="neither")], "contractive_weight": [WEIGHT],
        "beta": [WEIGHT, Satisfies(lambda value: isinstance(value, BetaSchedule), "a BetaSchedule")],
        "iwae_samples": [SAMPLES], "l2": [WEIGHT], "optimizer": [Options(*OPTIMIZERS)],
        "batch_size": [BATCH, None],
    }
    maximize_validation = False

    def __init__(self, kind: str = "undercomplete", hidden: tuple = (32,), activation: str = "tanh",
                 loss: str = "gaussian", tied_weights: bool = False, corruption: str | None = None,
                 corruption_level: float = 0.25, sparsity: str = "kl", sparsity_weight: float = 1.0, rho: float = 0.05,
                 contractive_weight: float = 0.1, beta=1.0, iwae_samples: int = 1, l2: float = 0.0,
                 epochs: int = 100, batch_size: int = 128, lr: float = 1e-3, optimizer: str = "adam", seed: int = 0,
                 device: str = "auto", patience: int | None = None, progress: bool = False,
                 max_seconds: float | None = None):
        store_params(self, locals())

    def check_param_combinations(self) -> None:
        if self.kind == "variational" and self.tied_weights:
            raise ValueError("tied_weights=True is not available for kind='variational'")
        make_corruption(*self._corruption_setting())  # a level out of the corruption's range is named there

    # -- the model's pieces ----------------------------------------------------------------
    def as_training_matrix(self, train):
        """Rows of features: a dense array, a sparse matrix or :class:`~aerec.data.Interactions`."""
        return _check_matrix(train, "X")

    @property
    def n_features_in_(self) -> int:
        """Input width (scikit-learn's name): the fitted number of columns."""
        self.check_fitted()
        return self.n_items_

    def build_module(self, generator: torch.Generator) -> AutoencoderNet:
        return AutoencoderNet(self.n_items_, tuple(self.hidden), self.activation, self.tied_weights,
                              self.kind == "variational", make_corruption(*self._corruption_setting()), generator)

    def batch_loss(self, module: AutoencoderNet, batch: RowBatch, state) -> dict:
        """``{"loss", "reconstruction", "penalty"}``: mean reconstruction NLL (or negative bound) + the kind's penalty."""
        x = batch.dense
        terms = self._forward(module, module.corruption(x, state.generator), x, state.update, True, state.generator)
        loss = terms.reconstruction.mean() + terms.penalty
        if self.l2:
            loss = loss + l2_weight_decay(weight_matrices(module), self.l2) / len(x)
        return {"loss": loss, "reconstruction": terms.reconstruction.mean().detach(), "penalty": terms.penalty.detach()}

    def validation_metric(self, validation):
        if validation is None:
            return None
        rows = self._check_input(validation, "validation")
        return lambda module: float(self._score_rows(rows).mean())

    def score_batch(self, module: AutoencoderNet, batch: RowBatch) -> torch.Tensor:
        """A row's reconstruction before the output function (logits, or means): items ranked by it."""
        return module.decoder(self._code(module, batch.dense))

    def _forward(self, module, x_in, x, update: int, sample: bool, generator: torch.Generator | None,
                 iwae_samples: int | None = None) -> _Terms:
        reconstruction = RECONSTRUCTION[self.loss]
        if module.variational:
            mu, logvar = module.encode(x_in)
            k = iwae_samples or self.iwae_samples
            if k > 1:
                bound = iwae_bound(lambda z: -reconstruction(module.decoder(z), x.repeat(k, 1)), mu, logvar, k,
                                   generator=generator)
                return _Terms(-bound, torch.zeros((), device=x.device))
            z = reparameterize(mu, logvar, sample=sample, generator=generator)
            beta = make_beta_schedule(self.beta)(update)
            return _Terms(reconstruction(module.decoder(z), x) + beta * kl_standard_normal(mu, logvar),
                          torch.zeros((), device=x.device))
        code = module.encode(x_in)
        return _Terms(reconstruction(module.decoder(code), x), self._penalty(module, code, x_in))

    def _penalty(self, module, code, x_in) -> torch.Tensor:
        if self.kind == "sparse":
            if self.sparsity == "kl":
                return kl_sparsity(code, self.rho, self.sparsity_weight)
            return l1_activity(code, self.sparsity_weight)
        if self.kind == "contractive":
            layers = module.encoder.layers
            if len(layers) == 1 and self.activation == "sigmoid":
                return contractive_sigmoid(code, layers[0].weight, self.contractive_weight)
            return contractive(module.encode, x_in, self.contractive_weight)
        return torch.zeros((), device=code.device)

    # -- using a fitted model ---------------------------------------------------------
    def embed(self, X) -> np.ndarray:
        """The code of each row (the posterior mean for the variational kind)."""
        return self._map_rows(X, lambda module, x: self._code(module, x))

    transform = embed

    def user_embeddings(self, user_items) -> np.ndarray:
        """:meth:`embed` of the given rows (the posterior mean for the variational kind)."""
        return self.embed(self.check_user_items(user_items))

    def item_embeddings(self) -> np.ndarray:
        """Each feature's (item's) row of the decoder's last layer, (n_items, first hidden width), float32."""
        self.check_fitted()
        return self.module_.decoder.layers[-1].weight.detach().float().cpu().contiguous().numpy()

    def reconstruct(self, X) -> np.ndarray:
        """Decoded rows (probabilities for "bernoulli", a softmax for "multinomial", means for "gaussian")."""
        return self._map_rows(X, lambda module, x: _output(self.loss, module.decoder(self._code(module, x))))

    def denoise(self, X) -> np.ndarray:
        """Reconstruct noisy or partly masked rows without corrupting them further (eval mode)."""
        return self.reconstruct(X)

    def anomaly_score(self, X, iwae_samples: int | None = None) -> np.ndarray:
        """Per-row negative log-likelihood of the reconstruction; for the variational kind the
        negative ELBO, or the negative importance-weighted bound with ``iwae_samples`` > 1."""
        if iwae_samples is not None:
            check("iwae_samples", iwae_samples, POSITIVE_INT)
        rows = self._check_input(X, "X")
        return self._score_rows(rows, iwae_samples).cpu().numpy().astype(np.float64)

    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """Draw ``n`` rows from the generative model (variational kind only): decode z ~ N(0, I)."""
        self.check_fitted()
        if self.kind != "variational":
            raise ValueError(f"sample() needs kind='variational'; this autoencoder is kind={self.kind!r}")
        check("n", n, POSITIVE_INT)
        generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
        z = torch.randn(n, self.hidden[-1], generator=generator).to(self.device_)
        with torch.no_grad():
            return _output(self.loss, self.module_.decoder(z)).cpu().numpy()

    # -- helpers -------------------------------------------------------------------------
    def _code(self, module, x):
        code = module.encode(x)
        return code[0] if module.variational else code

    def _score_rows(self, rows, iwae_samples: int | None = None) -> torch.Tensor:
        """Per-row scores; the variational ones draw from a generator seeded by ``seed``: the same every call."""
        module, device = self.module_, self.device_
        was_training = module.training
        module.eval()
        generator = torch.Generator(device=device).manual_seed(int(self.seed))
        try:
            with torch.no_grad():
                scores = [self._forward(module, batch.dense, batch.dense, update=10**12, sample=module.variational,
                                        generator=generator, iwae_samples=iwae_samples).reconstruction
                          for batch in iter_row_batches(rows, self.score_batch_rows, device)]
        finally:
            module.train(was_training)
        return torch.cat(scores)

    def _map_rows(self, X, function) -> np.ndarray:
        rows = self._check_input(X, "X")
        module = self.module_
        module.eval()
        with torch.no_grad():
            parts = [function(module, batch.dense).cpu() for batch in iter_row_batches(rows, self.score_batch_rows, self.device_)]
        return torch.cat(parts).numpy()

    def _check_input(self, X, name: str):
        self.check_fitted()
        X = _check_matrix(X, name)
        if X.shape[1] != self.n_items_:
            raise ValueError(f"{name} has {X.shape[1]} columns; expected {self.n_items_}, as in fit")
        return X

    def _corruption_setting(self) -> tuple:
        if self.kind == "denoising":
            return (self.corruption or "masking", self.corruption_level)
        return (self.corruption, self.corruption_level)


def _output(loss: str, raw: torch.Tensor) -> torch.Tensor:
    if loss == "bernoulli":
        return torch.sigmoid(raw)
    if loss == "multinomial":
        return torch.softmax(raw, dim=1)
    return raw


def _check_matrix(X, name: str):
    """A 2-D finite float32 array, or a CSR matrix (from a sparse matrix or Interactions); clear errors otherwise."""
    if isinstance(X, Interactions):
        X = X.matrix
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float32)
        values = X.data
    else:
        try:
            X = np.asarray(X, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be a numeric 2-D array or a scipy sparse matrix: {exc}") from exc
        values = X
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows x features), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {X.shape}); expected at least one row and one column")
    if not np.isfinite(values).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(values)).sum())} NaN or inf value(s); expected finite numbers")
    return X
