"""The variational pieces of Mult-VAE: Gaussian latent, reparameterisation, KL, beta schedules, ELBO and IWAE.

Liang, Krishnan, Hoffman, Jebara. "Variational Autoencoders for Collaborative
Filtering", WWW 2018, as its reference notebook (dawenl/vae_cf,
``VAE_ML20M_WWW2018.ipynb``):

- the last encoder layer outputs ``[mu, logvar]`` concatenated, ``2 * latent_dim``
  values (:class:`GaussianLatent`);
- ``z = mu + is_training * eps * exp(0.5 * logvar)``, ``eps ~ N(0, I)``
  (:func:`reparameterize`);
- ``KL = mean_rows(sum_j 0.5 * (-logvar + exp(logvar) + mu^2 - 1))``
  (:func:`kl_standard_normal`, before the mean over rows);
- ``anneal = min(anneal_cap, update_count / total_anneal_steps)``
  (:class:`LinearAnneal`).

The importance-weighted bound is that of Burda, Grosse, Salakhutdinov,
"Importance Weighted Autoencoders", ICLR 2016 (:func:`iwae_bound`).

A ``log_likelihood`` callable, as :func:`elbo` and :func:`iwae_bound` take it,
maps latent codes ``z`` of shape (n, latent_dim) to ``log p(x | z)`` of shape
(n,), e.g. ``lambda z: -multinomial_nll(decoder(z), x)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from aerec.core.layers import dense_linear, init_linear_
from aerec.core.losses import check_pair, gaussian_nll
from aerec.params import POSITIVE_INT, check, check_real

LogLikelihood = Callable[[torch.Tensor], torch.Tensor]
INITS = ("torch", "xavier")


class GaussianLatent(nn.Module):
    """The diagonal Gaussian posterior q(z|x): one Linear whose outputs are ``[mu, logvar]``.

    As the vae_cf notebook, whose last encoder layer has ``2 * latent_dim``
    outputs, the first half the mean and the second the log-variance (RecBole
    instead halves its ``latent_dimension``; here ``latent_dim`` is the
    dimension of z).

    Parameters
    ----------
    in_features : int
        Width of the hidden layer feeding the latent layer.
    latent_dim : int
        Dimension of z (200 in Liang et al. 2018).
    init : {"torch", "xavier"}
        "torch": PyTorch's default Linear initialisation. "xavier": vae_cf's,
        see :func:`vae_cf_init_`.
    generator : torch.Generator, optional
        Source of the initial draws (torch's global generator when None).
    """

    def __init__(self, in_features: int, latent_dim: int, init: str = "torch",
                 generator: torch.Generator | None = None):
        super().__init__()
        check("in_features", in_features, POSITIVE_INT)
        check("latent_dim", latent_dim, POSITIVE_INT)
        if init not in INITS:
            raise ValueError(f"init={init!r}; expected one of {INITS}")
        self.in_features = int(in_features)
        self.latent_dim = int(latent_dim)
        self.linear = dense_linear(self.in_features, 2 * self.latent_dim, init, generator)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)``, each of shape (..., latent_dim), for activations ``h`` of shape (..., in_features)."""
        if not isinstance(h, torch.Tensor) or h.ndim < 1 or h.shape[-1] != self.in_features:
            shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise ValueError(f"h has shape {shape}; expected a tensor whose last dimension is "
                             f"in_features={self.in_features}")
        mu, logvar = self.linear(h).split(self.latent_dim, dim=-1)
        return mu, logvar


def vae_cf_init_(linear: nn.Linear) -> nn.Linear:
    """Initialise ``linear`` in place as vae_cf does every layer; returns it.

    Weights: Glorot/Xavier uniform (TensorFlow's ``xavier_initializer``, whose
    default is uniform). Biases: ``truncated_normal_initializer(stddev=0.001)``,
    a normal with standard deviation 0.001 truncated at two standard deviations
    (TensorFlow's truncation).
    """
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"linear is {type(linear).__name__}; expected a torch.nn.Linear")
    init_linear_(linear.weight, linear.bias, "xavier")
    return linear


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, sample: bool,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """``mu + eps * exp(0.5 * logvar)`` with ``eps ~ N(0, I)`` when ``sample``, else ``mu``.

    Kingma and Welling's reparameterisation, as vae_cf's
    ``sampled_z = mu_q + is_training * epsilon * std_q`` with a standard normal
    ``epsilon`` (RecBole's MultiVAE draws it with standard deviation 0.01).

    Parameters
    ----------
    mu, logvar : torch.Tensor
        Shape (rows, latent_dim).
    sample : bool
        True while training; False returns ``mu`` itself (scoring).
    generator : torch.Generator, optional
        Source of ``eps``, for reproducible draws.
    """
    check_latent(mu, logvar)
    if not isinstance(sample, bool):
        raise ValueError(f"sample={sample!r}; expected True (draw z) or False (return mu)")
    if not sample:
        return mu
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + eps * torch.exp(0.5 * logvar)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-row ``KL(N(mu, diag exp(logvar)) || N(0, I))``, shape (rows,).

    ``sum_j 0.5 * (-logvar_j + exp(logvar_j) + mu_j^2 - 1)``, vae_cf's KL
    before its mean over the rows (Liang et al. 2018).
    """
    check_latent(mu, logvar)
    return (0.5 * (-logvar + torch.exp(logvar) + mu.square() - 1.0)).sum(dim=-1)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-row ``log N(z; mu, diag exp(logvar))`` (summed over the dimensions), shape (rows,)."""
    check_latent(mu, logvar)
    check_pair("mu", mu, "z", z)
    return -gaussian_nll(mu, z, log_sigma=0.5 * logvar)


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """Per-row ``log N(z; 0, I)``, shape (rows,)."""
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
    return -gaussian_nll(torch.zeros_like(z), z)


def elbo(log_likelihood: LogLikelihood, mu: torch.Tensor, logvar: torch.Tensor, beta: float = 1.0,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-row single-sample evidence lower bound ``log p(x | z) - beta * KL``, shape (rows,).

    Liang et al. 2018's beta-weighted objective (beta = 1: the ELBO; beta < 1:
    their partially regularised objective), with one reparameterised draw ``z`` and
    the analytic KL of :func:`kl_standard_normal`. Training minimises
    ``-reduce_rows(elbo(...), "mean")``.

    Parameters
    ----------
    log_likelihood : callable
        ``z`` of shape (rows, latent_dim) -> ``log p(x | z)`` of shape (rows,).
    mu, logvar : torch.Tensor
        The posterior's parameters, shape (rows, latent_dim).
    beta : float
        KL weight, >= 0 (a schedule's value for this update).
    generator : torch.Generator, optional
        Source of the draw.
    """
    check_callable(log_likelihood)
    check_real("beta", beta, low=0.0)
    z = reparameterize(mu, logvar, True, generator)
    return call_log_likelihood(log_likelihood, z) - beta * kl_standard_normal(mu, logvar)


def iwae_bound(log_likelihood: LogLikelihood, mu: torch.Tensor, logvar: torch.Tensor, k: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-row importance-weighted bound on ``log p(x)`` with ``k`` samples, shape (rows,).

    Burda, Grosse, Salakhutdinov, ICLR 2016:
    ``log (1/k) sum_s w_s`` with ``w_s = p(x | z_s) p(z_s) / q(z_s | x)`` and
    ``z_s ~ q(z | x) = N(mu, diag exp(logvar))``, computed as
    ``logsumexp_s(log w_s) - log k``. k = 1 is a single-sample ELBO (with a
    sampled KL); the bound rises towards ``log p(x)`` as ``k`` grows.

    Parameters
    ----------
    log_likelihood : callable
        Called once, on all samples at once: ``z`` of shape
        (k * rows, latent_dim), sample-major (rows ``s * rows`` to
        ``(s + 1) * rows - 1`` hold sample ``s`` of every row, so the data
        to compare with is ``x.repeat(k, 1)``); returns ``log p(x | z)`` of
        shape (k * rows,).
    mu, logvar : torch.Tensor
        Shape (rows, latent_dim).
    k : int
        Number of importance samples, >= 1.
    generator : torch.Generator, optional
        Source of the draws.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k={k!r}; expected an integer >= 1, the number of importance samples")
    check_callable(log_likelihood)
    check_latent(mu, logvar)
    k = int(k)
    rows, dim = mu.shape
    eps = torch.randn((k, rows, dim), generator=generator, dtype=mu.dtype, device=mu.device)
    z = (mu + eps * torch.exp(0.5 * logvar)).reshape(k * rows, dim)
    log_q = gaussian_log_density(z, mu.repeat(k, 1), logvar.repeat(k, 1))
    log_w = call_log_likelihood(log_likelihood, z) + standard_normal_log_density(z) - log_q
    return torch.logsumexp(log_w.reshape(k, rows), dim=0) - math.log(k)


# -- KL weight (beta) schedules --------------------------------------------------
class BetaSchedule:
    """A KL weight as a function of the number of optimizer updates already done.

    Subclasses implement ``beta_at(update)``; calling the schedule validates
    ``update`` (an integer >= 0) first.
    """

    def __call__(self, update: int) -> float:
        if isinstance(update, bool) or not isinstance(update, (int, np.integer)) or update < 0:
            raise ValueError(f"update={update!r}; expected an integer >= 0, the number of updates done before this one")
        return float(self.beta_at(int(update)))

    def beta_at(self, update: int) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class ConstantBeta(BetaSchedule):
    """The same KL weight at every update.

    ``beta = 1`` is the ELBO (the plain VAE); other values give a beta-VAE
    (Higgins et al., ICLR 2017), ``beta < 1`` Liang et al.'s partially
    regularised objective with a fixed weight.

    Parameters
    ----------
    beta : float
        KL weight, >= 0.
    """

    beta: float = 1.0

    def __post_init__(self):
        check_real("beta", self.beta, low=0.0)

    def beta_at(self, update: int) -> float:
        return self.beta


@dataclass(frozen=True)
class LinearAnneal(BetaSchedule):
    """vae_cf's annealing: ``beta = min(cap, update / total_anneal_steps)``.

    Liang et al. 2018's KL annealing, exactly as the vae_cf notebook's
    ``anneal = min(anneal_cap, 1. * update_count / total_anneal_steps)``,
    where ``update_count`` is the number of optimizer updates done before
    this one (0 for the first). The slope is ``1 / total_anneal_steps``:
    ``total_anneal_steps`` is where an uncapped beta would reach 1, so with
    the defaults beta reaches its cap 0.2 at update 40,000 and stays there.
    (vae_cf's ``total_anneal_steps = 0`` branch, beta = cap throughout, is
    ``ConstantBeta(cap)``.)

    Parameters
    ----------
    cap : float
        Largest beta, >= 0 (``anneal_cap``, 0.2 in vae_cf).
    total_anneal_steps : int
        Updates over which beta would grow from 0 to 1, >= 1 (200,000 in vae_cf).
    """

    cap: float = 0.2
    total_anneal_steps: int = 200_000

    def __post_init__(self):
        check_real("cap", self.cap, low=0.0)
        steps = self.total_anneal_steps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"total_anneal_steps={steps!r}; expected an integer >= 1")

    def beta_at(self, update: int) -> float:
        return min(self.cap, 1.0 * update / self.total_anneal_steps)


def make_beta_schedule(spec: float | BetaSchedule) -> BetaSchedule:
    """A schedule from a number (a :class:`ConstantBeta`) or a :class:`BetaSchedule` (returned as is)."""
    if isinstance(spec, BetaSchedule):
        return spec
    if isinstance(spec, bool) or not isinstance(spec, (int, float, np.integer, np.floating)):
        raise ValueError(f"beta schedule {spec!r}; expected a number >= 0 or a BetaSchedule "
                         "such as LinearAnneal(cap=0.2, total_anneal_steps=200_000)")
    return ConstantBeta(float(spec))


# -- validation helpers ----------------------------------------------------------
def check_latent(mu, logvar) -> None:
    """Raise unless ``mu`` and ``logvar`` are floating tensors of one shape (rows, latent_dim)."""
    check_pair("mu", mu, "logvar", logvar)


def check_callable(log_likelihood) -> None:
    """Raise unless ``log_likelihood`` is callable."""
    if not callable(log_likelihood):
        raise ValueError(f"log_likelihood is {type(log_likelihood).__name__}; expected a callable z -> log p(x | z)")


def call_log_likelihood(log_likelihood: LogLikelihood, z: torch.Tensor) -> torch.Tensor:
    """``log_likelihood(z)``, checked to be one value per row of ``z``."""
    out = log_likelihood(z)
    if not isinstance(out, torch.Tensor) or out.shape != (z.shape[0],):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"log_likelihood returned {shape}; expected shape ({z.shape[0]},), one value per row of z")
    return out
