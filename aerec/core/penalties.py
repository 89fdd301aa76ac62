"""Regularisation penalties for autoencoders; each returns a scalar tensor to add to the loss.

- :func:`l2_weight_decay`: ``(lam / 2) * sum ||W||_F^2``, AutoRec's weight
  penalty (Sedhain et al. 2015);
- :func:`l1_activity`: an L1 penalty on the codes, the simplest sparse
  autoencoder (Goodfellow, Bengio and Courville, *Deep Learning*, sec. 14.2.1);
- :func:`kl_sparsity`: the KL-divergence sparsity target of Ng's sparse
  autoencoder notes;
- :func:`contractive_sigmoid`, :func:`jacobian_frobenius_sq` and
  :func:`contractive`: the contractive penalty ``||dh/dx||_F^2`` (Rifai et
  al. 2011), in closed form for a sigmoid layer and by autograd for any
  encoder.

Codes ``h`` are 2-D, (batch, n_hidden); batch reductions are means, so a
penalty does not grow with the batch size (the reduction is stated in each
docstring).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from aerec._torch import flat_in_memory_order
from aerec.params import check_real

__all__ = [
    "contractive",
    "contractive_sigmoid",
    "jacobian_frobenius_sq",
    "kl_sparsity",
    "l1_activity",
    "l2_weight_decay",
]


def l2_weight_decay(weights: Iterable[torch.Tensor], lam: float) -> torch.Tensor:
    """``(lam / 2) * sum_k ||W_k||_F^2`` over the given weight matrices.

    This is AutoRec's ``(lambda / 2)(||W||^2 + ||V||^2)``: pass the weight
    matrices only (e.g. :func:`aerec.core.layers.weight_matrices`), not the
    biases. It is not divided by the batch size.

    Parameters
    ----------
    weights : iterable of torch.Tensor
        At least one tensor.
    lam : float
        Penalty strength, ``>= 0``.

    Returns
    -------
    torch.Tensor
        A scalar.
    """
    lam = check_real("lam", lam, low=0.0)
    weights = list(weights)
    if not weights or not all(isinstance(w, torch.Tensor) for w in weights):
        raise ValueError(f"weights holds {len(weights)} item(s); expected at least one, all torch.Tensor")
    return _HalfSquaredNorms.apply(lam, *weights)


class _HalfSquaredNorms(torch.autograd.Function):
    """``(lam / 2) sum_k ||W_k||^2`` with one read of each weight forward and ``lam W_k`` (one pass) backward.

    Autograd through ``w.pow(2).sum()`` makes four passes over every weight (the square, its sum,
    and the backward's ``2 w`` and product), which for U-AutoRec on a large catalogue (2 x 500 x
    items weights) cost more than the data term.
    """

    @staticmethod
    def forward(ctx, lam: float, *weights: torch.Tensor) -> torch.Tensor:
        ctx.lam = lam
        ctx.save_for_backward(*weights)
        total = sum(torch.dot(flat, flat) for flat in map(flat_in_memory_order, weights))
        return total * (lam / 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (None, *(w * (grad * ctx.lam) for w in ctx.saved_tensors))


def l1_activity(h: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam * mean_over_batch(sum_j |h_j|)``: an L1 penalty on the codes.

    Parameters
    ----------
    h : torch.Tensor
        Codes of shape (batch, n_hidden).
    lam : float
        Penalty strength, ``>= 0``.

    Returns
    -------
    torch.Tensor
        A scalar.
    """
    _check_codes(h)
    lam = check_real("lam", lam, low=0.0)
    return lam * h.abs().sum(dim=1).mean()


def kl_sparsity(h: torch.Tensor, rho: float, weight: float) -> torch.Tensor:
    """KL-divergence sparsity penalty pulling each unit's mean activation to ``rho``.

    With ``rho_hat_j`` the mean of ``h_j`` over the batch, returns::

        weight * sum_j [rho log(rho / rho_hat_j) + (1 - rho) log((1 - rho) / (1 - rho_hat_j))]

    which is 0 exactly when every ``rho_hat_j == rho``.

    Parameters
    ----------
    h : torch.Tensor
        Codes of shape (batch, n_hidden) with values in [0, 1], such as
        sigmoid activations. They are not checked (that would synchronise
        the device every batch); ``rho_hat`` is clamped to
        ``[eps, 1 - eps]`` (``eps`` the dtype's machine epsilon) so that the
        logarithms stay finite.
    rho : float
        Target mean activation, in ``(0, 1)``.
    weight : float
        Penalty strength, ``>= 0``.

    Returns
    -------
    torch.Tensor
        A scalar.
    """
    _check_codes(h)
    rho = check_real("rho", rho, low=0.0, high=1.0, low_open=True, high_open=True)
    weight = check_real("weight", weight, low=0.0)
    eps = torch.finfo(h.dtype).eps
    rho_hat = h.mean(dim=0).clamp(eps, 1 - eps)
    kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
    return weight * kl.sum()


def contractive_sigmoid(h: torch.Tensor, weight_matrix: torch.Tensor, lam: float) -> torch.Tensor:
    """Contractive penalty of a sigmoid layer in closed form (Rifai et al. 2011).

    For ``h = sigmoid(x W^T + b)`` the Jacobian is ``dh_j/dx_i = h_j (1 - h_j) W_ji``,
    so its squared Frobenius norm per sample is
    ``sum_j (h_j (1 - h_j))^2 sum_i W_ji^2``. Returns ``lam`` times its mean
    over the batch; equal to :func:`contractive` on that layer, at the cost
    of one (batch, n_hidden) product.

    Parameters
    ----------
    h : torch.Tensor
        The layer's output, shape (batch, n_hidden).
    weight_matrix : torch.Tensor
        The layer's weight ``W``, shape (n_hidden, n_inputs).
    lam : float
        Penalty strength, ``>= 0``.

    Returns
    -------
    torch.Tensor
        A scalar.
    """
    _check_codes(h)
    lam = check_real("lam", lam, low=0.0)
    if not isinstance(weight_matrix, torch.Tensor) or weight_matrix.ndim != 2 or weight_matrix.shape[0] != h.shape[1]:
        got = tuple(weight_matrix.shape) if isinstance(weight_matrix, torch.Tensor) else type(weight_matrix).__name__
        raise ValueError(f"weight_matrix has shape {got}; expected ({h.shape[1]}, n_inputs) to match h")
    per_sample = (h * (1 - h)).pow(2) @ weight_matrix.pow(2).sum(dim=1)
    return lam * per_sample.mean()


def jacobian_frobenius_sq(encoder: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``||d encoder(x_n) / d x_n||_F^2``, by autograd.

    Each sample's Jacobian is computed with :func:`torch.func.jacrev` under
    :func:`torch.func.vmap`; the result is differentiable with respect to the
    encoder's parameters, so it can be used as a training penalty.

    Parameters
    ----------
    encoder : callable
        Maps a dense (batch, n_inputs) tensor to (batch, n_hidden), treating
        rows independently. It must be deterministic (no dropout in training
        mode: ``vmap`` refuses random operations).
    x : torch.Tensor
        Dense floating-point input, shape (batch, n_inputs).

    Returns
    -------
    torch.Tensor
        A scalar.

    Notes
    -----
    It holds a (batch, n_hidden, n_inputs) Jacobian in memory and runs
    n_hidden backward passes per sample: use :func:`contractive_sigmoid`
    where its closed form applies.
    """
    if not callable(encoder):
        raise TypeError(f"encoder must be callable, got {type(encoder).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.layout != torch.strided or x.ndim != 2 or not x.is_floating_point():
        got = f"shape {tuple(x.shape)}, layout {x.layout}, dtype {x.dtype}"
        raise ValueError(f"x is {got}; expected a dense floating-point tensor of shape (batch, n_inputs)")
    if x.shape[0] == 0:
        raise ValueError("x has an empty batch; expected at least one row")

    def one_sample(row: torch.Tensor) -> torch.Tensor:
        return encoder(row.unsqueeze(0)).squeeze(0)

    jacobians = torch.func.vmap(torch.func.jacrev(one_sample))(x)  # (batch, n_hidden, n_inputs)
    return jacobians.pow(2).sum(dim=(1, 2)).mean()


def contractive(encoder: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, lam: float) -> torch.Tensor:
    """The contractive penalty ``lam * mean_n ||d encoder(x_n) / d x_n||_F^2`` for any encoder.

    See :func:`jacobian_frobenius_sq` for the requirements and the cost.
    """
    lam = check_real("lam", lam, low=0.0)
    return lam * jacobian_frobenius_sq(encoder, x)


def _check_codes(h) -> None:
    if not isinstance(h, torch.Tensor) or h.ndim != 2 or h.shape[0] == 0 or not h.is_floating_point():
        got = f"shape {tuple(h.shape)}, dtype {h.dtype}" if isinstance(h, torch.Tensor) else type(h).__name__
        raise ValueError(f"h is {got}; expected a floating-point tensor of shape (batch >= 1, n_hidden)")
