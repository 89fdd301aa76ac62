"""Reconstruction losses of the autoencoder recommenders, one value per row.

Every loss takes (rows x columns) tensors and returns a tensor of shape
``(rows,)``: the negative log-likelihood (or squared error) of each row,
summed over its columns. How the rows are then combined is the paper's
choice, made with :func:`reduce_rows`:

- ``masked_squared_error``: AutoRec (Sedhain et al., WWW 2015), "sum" over
  all observed ratings of the data set;
- ``multinomial_nll``: Mult-DAE / Mult-VAE (Liang et al., WWW 2018; the
  vae_cf notebook's ``neg_ll``), "mean" over the rows of a batch;
- ``bernoulli_nll``: CDAE's logistic loss (Wu et al., WSDM 2016), "mean"
  (its objective is ``(1/U) sum_u l(y_u, y_hat_u)``);
- ``gaussian_nll``: the Gaussian likelihood Liang et al. 2018 compare
  against, "mean" as the multinomial one.

Entries outside a ``mask`` are removed with :func:`torch.where`, not by a
multiplication: they contribute exactly zero and get zero gradient. In
``masked_squared_error`` that holds whatever ``target`` holds there (NaN
included), as the difference is masked before it is squared; the other
losses expect finite inputs everywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

REDUCTIONS = ("sum", "mean")


def masked_squared_error(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row sum of ``(pred - target)^2`` over the observed entries (AutoRec).

    Sedhain, Menon, Sanner, Xie. "AutoRec: Autoencoders Meet Collaborative
    Filtering", WWW 2015: the objective's ``sum_r ||r - h(r)||^2_O``, the error on
    observed ratings only; the paper sums it over all rows (``reduce_rows(..., "sum")``).

    Parameters
    ----------
    pred, target : torch.Tensor
        Reconstruction and ratings, both of shape (rows, columns).
    mask : torch.Tensor of bool
        Same shape; True where a rating is observed. Unobserved entries add
        exactly nothing and get zero gradient, whatever ``target`` holds there.

    Returns
    -------
    torch.Tensor
        Shape (rows,).
    """
    check_pair("pred", pred, "target", target)
    check_mask(mask, pred.shape)
    error = torch.where(mask, pred - target, 0.0)
    return error.square().sum(dim=-1)


def multinomial_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-row multinomial negative log-likelihood ``-sum_i x_i log softmax(logits)_i`` (Mult-DAE / Mult-VAE).

    Liang, Krishnan, Hoffman, Jebara. "Variational Autoencoders for
    Collaborative Filtering", WWW 2018, the multinomial log-likelihood up to the constant
    multinomial coefficient; as the vae_cf notebook,
    ``neg_ll = -mean_rows(sum(log_softmax(logits) * x))``, i.e. this loss
    followed by ``reduce_rows(..., "mean")``.

    Parameters
    ----------
    logits : torch.Tensor
        Unnormalised scores, shape (rows, items).
    x : torch.Tensor
        Counts (clicks), same shape; dense, or sparse COO (then never densified: the loss is
        ``(sum_i x_i) logsumexp(logits) - sum_{stored i} x_i logits_i``, the same value, with
        the softmax over the catalogue the only dense work).

    Returns
    -------
    torch.Tensor
        Shape (rows,), in float32 or wider even for bfloat16 logits (the softmax is taken in float32).
    """
    check_pair("logits", logits, "x", x)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if x.layout == torch.sparse_coo:
        x = x.coalesce()
        (rows, cols), counts = x.indices(), x.values().to(logits.dtype)
        return _SparseMultinomialNLL.apply(logits, rows, cols, counts)
    return -(F.log_softmax(logits, dim=-1) * x).sum(dim=-1)


class _SparseMultinomialNLL(torch.autograd.Function):
    """Per row ``(sum_i x_i) logsumexp(logits) - sum_{stored i} x_i logits_i``, with a one-tensor backward.

    The gradient, ``softmax(logits) * sum_i x_i - x``, is written into one dense tensor (autograd
    through ``logsumexp`` and the gather makes three of the batch x catalogue size, which on an
    ML-20M catalogue is 38 MiB each per 500 rows).
    """

    @staticmethod
    def forward(ctx, logits, rows, cols, counts):
        totals = torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device).index_add_(0, rows, counts)
        picked = torch.zeros_like(totals).index_add_(0, rows, counts * logits[rows, cols])
        lse = torch.logsumexp(logits, dim=-1)
        ctx.save_for_backward(logits, lse, totals, rows, cols, counts)
        return totals * lse - picked

    @staticmethod
    def backward(ctx, grad):
        logits, lse, totals, rows, cols, counts = ctx.saved_tensors
        grad_logits = grad_counts = None
        if ctx.needs_input_grad[0]:
            grad_logits = torch.sub(logits, lse[:, None]).exp_().mul_((grad * totals)[:, None])
            grad_logits.index_put_((rows, cols), -(grad[rows] * counts), accumulate=True)
        if ctx.needs_input_grad[3]:
            grad_counts = grad[rows] * (lse[rows] - logits[rows, cols])
        return grad_logits, None, None, grad_counts


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row sum of binary cross-entropy with logits, the logistic loss of CDAE.

    Wu, DuBois, Zheng, Ester. "Collaborative Denoising Auto-Encoders for Top-N
    Recommender Systems", WSDM 2016, its logistic loss
    ``-y log sigma(z) - (1 - y) log(1 - sigma(z))``; its objective is a mean
    over users (``reduce_rows(..., "mean")``).

    Parameters
    ----------
    logits : torch.Tensor
        Pre-sigmoid outputs, shape (rows, items).
    x : torch.Tensor
        Targets in [0, 1], same shape.
    mask : torch.Tensor of bool, optional
        Same shape; only entries where it is True count (CDAE's negative
        sampling: the observed items plus the sampled negatives). None: all.

    Returns
    -------
    torch.Tensor
        Shape (rows,).
    """
    check_pair("logits", logits, "x", x)
    return masked_row_sum(F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none"), mask)


def gaussian_nll(mean: torch.Tensor, x: torch.Tensor, log_sigma: float | torch.Tensor = 0.0,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row Gaussian negative log-likelihood, constants included.

    ``sum_i 0.5 ((x_i - mean_i) / sigma_i)^2 + log sigma_i + 0.5 log(2 pi)``,
    the Gaussian likelihood of Liang et al. 2018, here with its
    normalising constants so that the value is an exact ``-log N(x; mean, sigma^2)``.

    Parameters
    ----------
    mean, x : torch.Tensor
        Shape (rows, columns).
    log_sigma : float or torch.Tensor
        Log standard deviation: a number, or a tensor that broadcasts to
        ``mean``'s shape (one per column, per row or per entry).
    mask : torch.Tensor of bool, optional
        Same shape as ``mean``; only entries where it is True count. None: all.

    Returns
    -------
    torch.Tensor
        Shape (rows,).
    """
    check_pair("mean", mean, "x", x)
    log_sigma = check_log_sigma(log_sigma, mean)
    z = (x - mean) * torch.exp(-log_sigma)
    return masked_row_sum(0.5 * z.square() + log_sigma + 0.5 * math.log(2 * math.pi), mask)


def reduce_rows(per_row: torch.Tensor, how: str) -> torch.Tensor:
    """Combine per-row losses into the scalar a paper minimises.

    Parameters
    ----------
    per_row : torch.Tensor
        Shape (rows,), as returned by the losses of this module.
    how : {"sum", "mean"}
        "sum": AutoRec (Sedhain et al. 2015) sums over all observed ratings.
        "mean": vae_cf / Liang et al. 2018 (mean over the batch's rows) and
        CDAE (Wu et al. 2016, ``1/U`` over users).

    Returns
    -------
    torch.Tensor
        A 0-dimensional tensor.
    """
    if how not in REDUCTIONS:
        raise ValueError(f"how={how!r}; expected one of {REDUCTIONS}")
    if not isinstance(per_row, torch.Tensor) or per_row.ndim != 1:
        shape = tuple(per_row.shape) if isinstance(per_row, torch.Tensor) else type(per_row).__name__
        raise ValueError(f"per_row has shape {shape}; expected a 1-D tensor, one loss per row")
    return per_row.sum() if how == "sum" else per_row.mean()


# -- helpers (also used by aerec.core.variational) ------------------------------
def masked_row_sum(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Sum each row of ``values`` over the entries where ``mask`` is True (all of them when None)."""
    if mask is None:
        return values.sum(dim=-1)
    check_mask(mask, values.shape)
    return torch.where(mask, values, 0.0).sum(dim=-1)


def check_pair(name_a: str, a, name_b: str, b) -> None:
    """Raise unless ``a`` and ``b`` are tensors of one 2-D shape (rows x columns) and ``a`` is floating point."""
    for name, value in ((name_a, a), (name_b, b)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if a.ndim != 2:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)}; expected a 2-D tensor (rows, columns)")
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; "
                         "expected the same shape")
    if not a.is_floating_point():
        raise ValueError(f"{name_a} has dtype {a.dtype}; expected a floating-point tensor")


def check_mask(mask, shape: torch.Size) -> None:
    """Raise unless ``mask`` is a bool tensor of ``shape``."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        kind = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask is {kind}; expected a torch.bool tensor (True where an entry counts)")
    if mask.shape != shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}; expected {tuple(shape)}, the shape of the values")


def check_log_sigma(log_sigma, like: torch.Tensor) -> torch.Tensor:
    """``log_sigma`` as a tensor on ``like``'s device and dtype, checked to broadcast to it.

    A number must be finite; a tensor (often a learned parameter) is not
    scanned, which would cost a device synchronisation at every step.
    """
    if isinstance(log_sigma, bool) or not isinstance(log_sigma, (int, float, torch.Tensor)):
        raise ValueError(f"log_sigma={log_sigma!r}; expected a number or a torch.Tensor")
    if not isinstance(log_sigma, torch.Tensor) and not math.isfinite(log_sigma):
        raise ValueError(f"log_sigma={log_sigma!r}; expected a finite log standard deviation")
    log_sigma = torch.as_tensor(log_sigma, dtype=like.dtype, device=like.device)
    try:
        broadcast = torch.broadcast_shapes(log_sigma.shape, like.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != like.shape:
        raise ValueError(f"log_sigma has shape {tuple(log_sigma.shape)}; expected a shape that broadcasts to "
                         f"{tuple(like.shape)}")
    return log_sigma
