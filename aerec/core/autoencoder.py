"""A general autoencoder estimator over the core pieces: embedding, denoising, anomaly scoring.

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

scikit-learn habits: hyper-parameters in ``__init__``, learned state ends in
``_``, ``fit`` returns ``self``, ``transform`` is ``embed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from aerec._torch import resolve_device
from aerec.core.corruption import make_corruption
from aerec.core.layers import DenseStack, weight_matrices
from aerec.core.losses import bernoulli_nll, gaussian_nll, multinomial_nll
from aerec.core.penalties import contractive, contractive_sigmoid, kl_sparsity, l1_activity, l2_weight_decay
from aerec.core.variational import GaussianLatent, iwae_bound, kl_standard_normal, make_beta_schedule, reparameterize
from aerec.data.batching import iter_row_batches
from aerec.training import TrainConfig, train

KINDS = ("undercomplete", "sparse", "denoising", "contractive", "variational")
LOSSES = ("gaussian", "bernoulli", "multinomial")
RECONSTRUCTION = {"gaussian": gaussian_nll, "bernoulli": bernoulli_nll, "multinomial": multinomial_nll}


class NotFittedError(ValueError):
    """The estimator was used before ``fit``."""


class AutoencoderNet(nn.Module):
    """Encoder (optionally a Gaussian latent), decoder and input corruption."""

    def __init__(self, n_features: int, hidden: tuple[int, ...], activation: str, tied: bool, variational: bool,
                 corruption: nn.Module):
        super().__init__()
        self.corruption = corruption
        self.variational = variational
        if variational:
            body = (n_features, *hidden[:-1])
            self.encoder = DenseStack(body, activation, final_activation=activation) if len(body) > 1 else nn.Identity()
            self.latent = GaussianLatent(body[-1], hidden[-1])
            self.decoder = DenseStack((*reversed(hidden), n_features), activation, final_activation="identity")
        else:
            self.encoder = DenseStack((n_features, *hidden), activation, final_activation=activation)
            self.decoder = (self.encoder.tied_decoder("identity") if tied else
                            DenseStack((*reversed(hidden), n_features), activation, final_activation="identity"))

    def encode(self, x: torch.Tensor):
        """The code, or (mu, logvar) for the variational kind."""
        h = self.encoder(x)
        return self.latent(h) if self.variational else h


@dataclass
class _Terms:
    """What one forward pass produced, for the loss and for scoring."""

    reconstruction: torch.Tensor  # per row
    penalty: torch.Tensor  # scalar


class Autoencoder:
    """One estimator for the autoencoder family (see the module docstring).

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
    epochs, batch_size, lr, optimizer, seed, device, patience, progress : training settings
        (see :class:`aerec.training.TrainConfig`).
    """

    def __init__(self, kind: str = "undercomplete", hidden: tuple = (32,), activation: str = "tanh",
                 loss: str = "gaussian", tied_weights: bool = False, corruption: str | None = None,
                 corruption_level: float = 0.25, sparsity: str = "kl", sparsity_weight: float = 1.0, rho: float = 0.05,
                 contractive_weight: float = 0.1, beta=1.0, iwae_samples: int = 1, l2: float = 0.0,
                 epochs: int = 100, batch_size: int = 128, lr: float = 1e-3, optimizer: str = "adam", seed: int = 0,
                 device: str = "auto", patience: int | None = None, progress: bool = False):
        self.kind = kind
        self.hidden = hidden
        self.activation = activation
        self.loss = loss
        self.tied_weights = tied_weights
        self.corruption = corruption
        self.corruption_level = corruption_level
        self.sparsity = sparsity
        self.sparsity_weight = sparsity_weight
        self.rho = rho
        self.contractive_weight = contractive_weight
        self.beta = beta
        self.iwae_samples = iwae_samples
        self.l2 = l2
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.seed = seed
        self.device = device
        self.patience = patience
        self.progress = progress

    # -- fitting -------------------------------------------------------------------
    def fit(self, X, validation=None) -> "Autoencoder":
        """Learn from the rows of ``X`` (dense array or CSR); with ``validation`` rows, keep the best epoch."""
        self._validate_params()
        X = _check_matrix(X, "X")
        self.n_features_in_ = X.shape[1]
        self.beta_schedule_ = make_beta_schedule(self.beta) if self.kind == "variational" else None
        torch.manual_seed(self.seed)  # the initial weights depend on the seed only
        self.module_ = AutoencoderNet(self.n_features_in_, tuple(self.hidden), self.activation, self.tied_weights,
                                      self.kind == "variational", make_corruption(*self._corruption_setting()))
        config = TrainConfig(epochs=self.epochs, batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr,
                             seed=self.seed, device=self.device, patience=self.patience, progress=self.progress)
        validate = None
        if validation is not None:
            held = self._check_input(validation, "validation")
            validate = lambda module: float(self._score_rows(held).mean())  # noqa: E731
        self.history_ = train(self.module_, X, self._step_loss, config, validate=validate, maximize=False,
                              desc=f"{self.kind} autoencoder")
        return self

    def _step_loss(self, module, batch, state) -> dict:
        x = batch.dense
        terms = self._forward(module, module.corruption(x), x, state.update, sample=True)
        loss = terms.reconstruction.mean() + terms.penalty
        if self.l2:
            loss = loss + l2_weight_decay(weight_matrices(module), self.l2) / len(x)
        return {"loss": loss, "reconstruction": terms.reconstruction.mean().detach(), "penalty": terms.penalty.detach()}

    def _forward(self, module, x_in, x, update: int, sample: bool, iwae_samples: int | None = None) -> _Terms:
        reconstruction = RECONSTRUCTION[self.loss]
        if module.variational:
            mu, logvar = module.encode(x_in)
            k = iwae_samples or self.iwae_samples
            if k > 1:
                bound = iwae_bound(lambda z: -reconstruction(module.decoder(z), x.repeat(k, 1)), mu, logvar, k)
                return _Terms(-bound, torch.zeros((), device=x.device))
            z = reparameterize(mu, logvar, sample=sample)
            beta = self.beta_schedule_(update)
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
            _check_int("iwae_samples", iwae_samples, 1)
        rows = self._check_input(X, "X")
        return self._score_rows(rows, iwae_samples).cpu().numpy().astype(np.float64)

    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """Draw ``n`` rows from the generative model (variational kind only): decode z ~ N(0, I)."""
        self._check_fitted()
        if self.kind != "variational":
            raise ValueError(f"sample() needs kind='variational'; this autoencoder is kind={self.kind!r}")
        _check_int("n", n, 1)
        generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
        z = torch.randn(n, self.hidden[-1], generator=generator).to(_device_of(self.module_))
        with torch.no_grad():
            return _output(self.loss, self.module_.decoder(z)).cpu().numpy()

    # -- helpers -------------------------------------------------------------------------
    def _code(self, module, x):
        code = module.encode(x)
        return code[0] if module.variational else code

    def _score_rows(self, rows, iwae_samples: int | None = None) -> torch.Tensor:
        module = self.module_
        module.eval()
        scores = []
        device = _device_of(module)
        # the variational scores draw samples: the same draws every call, and the training RNG left as it was
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            for batch in iter_row_batches(rows, 4096, device):
                x = batch.dense
                sample = module.variational
                terms = self._forward(module, x, x, update=10**12, sample=sample, iwae_samples=iwae_samples)
                scores.append(terms.reconstruction)
        return torch.cat(scores)

    def _map_rows(self, X, function) -> np.ndarray:
        rows = self._check_input(X, "X")
        module = self.module_
        module.eval()
        with torch.no_grad():
            parts = [function(module, batch.dense).cpu() for batch in iter_row_batches(rows, 4096, _device_of(module))]
        return torch.cat(parts).numpy()

    def _check_input(self, X, name: str):
        self._check_fitted()
        X = _check_matrix(X, name)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"{name} has {X.shape[1]} columns; expected {self.n_features_in_}, as in fit")
        return X

    def _check_fitted(self) -> None:
        if not hasattr(self, "module_"):
            raise NotFittedError("this Autoencoder is not fitted yet; call fit(X) first")

    def _corruption_setting(self) -> tuple:
        if self.kind == "denoising":
            return (self.corruption or "masking", self.corruption_level)
        return (self.corruption, self.corruption_level)

    def _validate_params(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}; expected one of {KINDS}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r}; expected one of {LOSSES}")
        hidden = tuple(self.hidden) if isinstance(self.hidden, (tuple, list)) else None
        if not hidden or any(isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1 for h in hidden):
            raise ValueError(f"hidden={self.hidden!r}; expected a non-empty tuple of positive integers")
        if self.kind == "variational" and self.tied_weights:
            raise ValueError("tied_weights=True is not available for kind='variational'")
        if self.sparsity not in ("kl", "l1"):
            raise ValueError(f"sparsity={self.sparsity!r}; expected 'kl' or 'l1'")
        if not 0 < self.rho < 1:
            raise ValueError(f"rho={self.rho!r}; expected a target activation in (0, 1)")
        for name in ("sparsity_weight", "contractive_weight", "l2"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
                raise ValueError(f"{name}={value!r}; expected a number >= 0")
        if isinstance(self.beta, (int, float)) and self.beta < 0:
            raise ValueError(f"beta={self.beta!r}; expected a KL weight >= 0")
        _check_int("iwae_samples", self.iwae_samples, 1)
        resolve_device(self.device)

    def get_params(self) -> dict:
        import inspect

        return {name: getattr(self, name) for name in inspect.signature(type(self).__init__).parameters if name != "self"}

    def __repr__(self) -> str:
        defaults = type(self)().get_params()
        changed = {k: v for k, v in self.get_params().items() if v != defaults[k]}
        return f"Autoencoder({', '.join(f'{k}={v!r}' for k, v in changed.items())})"


def _output(loss: str, raw: torch.Tensor) -> torch.Tensor:
    if loss == "bernoulli":
        return torch.sigmoid(raw)
    if loss == "multinomial":
        return torch.softmax(raw, dim=1)
    return raw


def _check_matrix(X, name: str):
    """A 2-D finite float32 array, or a CSR matrix; clear errors otherwise."""
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


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}={value!r}; expected an integer >= {low}")


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
