"""Offline evaluation: rating errors and full-catalogue ranking metrics.

Rating prediction is scored with :func:`rmse` and :func:`mae`. Ranking is
scored from a boolean *hits* matrix, ``hits[u, r]`` being true when the item
that user ``u`` got at rank ``r`` is one of the user's held-out items; each
metric function returns one float64 value per user. :func:`evaluate_ranking`
builds that matrix batch by batch on the device from a model's scores, with
the items the model was given masked out (``-inf``) before ranking.

Definitions (binary relevance; ``h_r`` the hit at rank ``r = 0, 1, ...``,
``R`` the number of held-out items of the user):

- Recall@k = sum_{r<k} h_r / min(k, R), as in Liang et al. (2018), *Variational
  Autoencoders for Collaborative Filtering* (vae_cf). ``denominator="all"``
  gives sum_{r<k} h_r / R, as in RecBole, Cornac and Elliot.
- NDCG@k = DCG / IDCG with DCG = sum_{r<k} h_r / log2(r + 2) and IDCG the DCG
  of min(k, R) hits at the top (vae_cf's ``NDCG_binary_at_k_batch``).
- Precision@k = sum_{r<k} h_r / k.
- HitRate@k = 1 if any h_r for r < k, else 0.
- MRR@k = 1 / (r + 1) for the first hit r < k, else 0.
- MAP@k = sum_{r<k} h_r * Precision@(r+1) / min(k, R), the definition of the
  ``implicit`` library.
- Coverage@k = share of the catalogue that appears in at least one top-k list.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np
import scipy.sparse as sp
import torch

from aerec._torch import csr_to_dense_tensor, resolve_device
from aerec.ranking import _check_int_in_range, mark_unavailable, top_n

__all__ = [
    "rmse",
    "mae",
    "recall_at_k",
    "ndcg_at_k",
    "precision_at_k",
    "hit_rate_at_k",
    "mrr_at_k",
    "map_at_k",
    "coverage",
    "evaluate_ranking",
    "RankingResult",
    "ScoringModel",
    "RANKING_METRICS",
    "RECALL_DENOMINATORS",
]

RECALL_DENOMINATORS = ("min", "all")


# --------------------------------------------------------------------------- rating errors


def rmse(y_true, y_pred) -> float:
    """Root mean squared error between two 1-D arrays of equal, non-zero length.

    Parameters
    ----------
    y_true, y_pred : array-like
        Finite observed and predicted ratings.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If the arrays are not 1-D, differ in length, are empty or not finite.
    """
    y_true, y_pred = _check_rating_pair(y_true, y_pred)
    return float(np.sqrt(np.mean((y_true - y_pred) ** 2)))


def mae(y_true, y_pred) -> float:
    """Mean absolute error between two 1-D arrays of equal, non-zero length.

    Parameters
    ----------
    y_true, y_pred : array-like
        Finite observed and predicted ratings.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If the arrays are not 1-D, differ in length, are empty or not finite.
    """
    y_true, y_pred = _check_rating_pair(y_true, y_pred)
    return float(np.mean(np.abs(y_true - y_pred)))


def _check_rating_pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        values = np.asarray(_to_numpy(values), dtype=np.float64)
        if values.ndim != 1 or values.size == 0:
            raise ValueError(f"{name} must be a non-empty 1-D array, got shape {values.shape}")
        if not np.isfinite(values).all():
            raise ValueError(f"{name} contains {int((~np.isfinite(values)).sum())} non-finite value(s)")
        arrays.append(values)
    if arrays[0].shape != arrays[1].shape:
        raise ValueError(f"y_true has {arrays[0].size} values but y_pred has {arrays[1].size}; expected equal lengths")
    return arrays[0], arrays[1]


# --------------------------------------------------------------------------- per-user ranking metrics
#
# Each function takes ``hits`` (n_users, >= k) bool and ``n_relevant`` (n_users,)
# ints >= 1, numpy or torch, and returns a float64 numpy array of length n_users.


def recall_at_k(hits, n_relevant, k: int, denominator: str = "min") -> np.ndarray:
    """Recall@k per user: hits in the top ``k`` over ``min(k, R)`` or ``R``.

    Parameters
    ----------
    hits : array-like of bool, shape (n_users, >= k)
        ``hits[u, r]`` is true when the item at rank ``r`` is held out for ``u``.
    n_relevant : array-like of int, shape (n_users,)
        Number ``R`` of held-out items per user, at least 1.
    k : int
        Cut-off, ``1 <= k <= hits.shape[1]``.
    denominator : {"min", "all"}
        ``"min"``: divide by ``min(k, R)`` (Liang et al. 2018, vae_cf), so that a
        perfect ranking scores 1. ``"all"``: divide by ``R`` (RecBole, Cornac,
        Elliot).

    Returns
    -------
    numpy.ndarray of float64, shape (n_users,)
    """
    if denominator not in RECALL_DENOMINATORS:
        raise ValueError(f"denominator={denominator!r} is not one of {RECALL_DENOMINATORS}")
    top, n_relevant = _top_hits(hits, n_relevant, k)
    divisor = np.minimum(k, n_relevant) if denominator == "min" else n_relevant
    return top.sum(axis=1) / divisor


def ndcg_at_k(hits, n_relevant, k: int) -> np.ndarray:
    """NDCG@k per user with binary relevance (vae_cf's ``NDCG_binary_at_k_batch``).

    DCG = sum_{r<k} hits[r] / log2(r + 2); IDCG is the DCG of ``min(k, R)``
    hits at the top. Parameters and return value as in :func:`recall_at_k`.
    """
    top, n_relevant = _top_hits(hits, n_relevant, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    ideal = np.cumsum(discounts)[np.minimum(k, n_relevant) - 1]
    return (top @ discounts) / ideal


def precision_at_k(hits, n_relevant, k: int) -> np.ndarray:
    """Precision@k per user: hits in the top ``k`` over ``k``.

    Parameters and return value as in :func:`recall_at_k`.
    """
    top, _ = _top_hits(hits, n_relevant, k)
    return top.sum(axis=1) / k


def hit_rate_at_k(hits, n_relevant, k: int) -> np.ndarray:
    """HitRate@k per user: 1.0 if any held-out item is in the top ``k``, else 0.0.

    Parameters and return value as in :func:`recall_at_k`.
    """
    top, _ = _top_hits(hits, n_relevant, k)
    return top.any(axis=1).astype(np.float64)


def mrr_at_k(hits, n_relevant, k: int) -> np.ndarray:
    """Reciprocal rank of the first hit within the top ``k`` (0.0 if none).

    Parameters and return value as in :func:`recall_at_k`.
    """
    top, _ = _top_hits(hits, n_relevant, k)
    first = top.argmax(axis=1)
    return np.where(top.any(axis=1), 1.0 / (first + 1.0), 0.0)


def map_at_k(hits, n_relevant, k: int) -> np.ndarray:
    """Average precision@k per user, normalised by ``min(k, R)`` (``implicit``'s MAP).

    AP@k = sum_{r<k} hits[r] * Precision@(r+1) / min(k, R). Parameters and
    return value as in :func:`recall_at_k`.
    """
    top, n_relevant = _top_hits(hits, n_relevant, k)
    precision_at_rank = np.cumsum(top, axis=1) / np.arange(1, k + 1)
    return (precision_at_rank * top).sum(axis=1) / np.minimum(k, n_relevant)


def coverage(top_ids, n_items: int) -> float:
    """Share of the ``n_items`` catalogue that appears in any recommended list.

    Parameters
    ----------
    top_ids : array-like of int
        Recommended item indices, any shape; ``-1`` marks an empty slot and is
        ignored.
    n_items : int
        Catalogue size, at least 1.

    Returns
    -------
    float
        Number of distinct recommended items divided by ``n_items``.
    """
    _check_int_in_range("n_items", n_items, 1, None)
    ids = np.asarray(_to_numpy(top_ids)).ravel()
    if ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < -1 or ids.max() >= n_items):
        raise ValueError(f"top_ids must be integers in [-1, {n_items}), got values in [{ids.min()}, {ids.max()}]")
    return np.unique(ids[ids >= 0]).size / n_items


_METRIC_FUNCTIONS = {
    "recall": recall_at_k,
    "ndcg": ndcg_at_k,
    "precision": precision_at_k,
    "map": map_at_k,
    "hit_rate": hit_rate_at_k,
    "mrr": mrr_at_k,
}
RANKING_METRICS = tuple(_METRIC_FUNCTIONS)
"""The metric names :func:`evaluate_ranking` accepts."""


def _top_hits(hits, n_relevant, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate the inputs; return the first ``k`` hit columns as float64 and ``n_relevant`` as int64."""
    hits = np.asarray(_to_numpy(hits))
    n_relevant = np.asarray(_to_numpy(n_relevant))
    if hits.ndim != 2 or hits.dtype != np.bool_:
        raise ValueError(f"hits must be a 2-D boolean array, got shape {hits.shape} and dtype {hits.dtype}")
    if n_relevant.shape != (hits.shape[0],) or not np.issubdtype(n_relevant.dtype, np.integer):
        raise ValueError(
            f"n_relevant must be a 1-D integer array of length {hits.shape[0]}, "
            f"got shape {n_relevant.shape} and dtype {n_relevant.dtype}"
        )
    if n_relevant.size and n_relevant.min() < 1:
        raise ValueError(f"n_relevant must be >= 1 for every user, got minimum {n_relevant.min()}")
    if np.any(hits.sum(axis=1) > n_relevant):
        raise ValueError("hits has more hits in a row than that user's n_relevant")
    _check_int_in_range("k", k, 1, hits.shape[1])
    return hits[:, :k].astype(np.float64), n_relevant.astype(np.int64)


# --------------------------------------------------------------------------- full evaluation


class ScoringModel(Protocol):
    """What :func:`evaluate_ranking` needs from a model."""

    def score_tensor(self, user_items: sp.csr_matrix) -> torch.Tensor | np.ndarray:
        """Dense ``(n_rows, n_items)`` scores for the given user rows."""


@dataclass(frozen=True)
class RankingResult:
    """Outcome of :func:`evaluate_ranking`.

    Attributes
    ----------
    metrics : dict[str, float]
        ``"name@k"`` -> mean over evaluated users (e.g. ``"recall@20"``), plus
        ``"coverage@k"`` for every ``k``.
    per_user : dict[str, numpy.ndarray]
        ``"name@k"`` -> float64 value per evaluated user, in the order of ``users``.
    users : numpy.ndarray
        Row indices of the evaluated users (those with held-out items).
    n_users_evaluated : int
    n_users_skipped : int
        Rows with no held-out items, left out of every mean.
    recall_denominator : str
        Which Recall@k was computed: ``"min"`` (Liang et al.) or ``"all"``.
    """

    metrics: dict[str, float]
    per_user: dict[str, np.ndarray]
    users: np.ndarray
    n_users_evaluated: int
    n_users_skipped: int
    recall_denominator: str

    def std_error(self, name: str) -> float:
        """Standard error of the mean of a per-user metric, ``std(ddof=1) / sqrt(n)``.

        Parameters
        ----------
        name : str
            A key of ``per_user``, e.g. ``"ndcg@100"``.

        Returns
        -------
        float
            NaN when fewer than two users were evaluated.
        """
        if name not in self.per_user:
            raise KeyError(f"no per-user metric {name!r}; available: {sorted(self.per_user)}")
        values = self.per_user[name]
        if values.size < 2:
            return math.nan
        return float(values.std(ddof=1) / math.sqrt(values.size))

    def to_dict(self, include_per_user: bool = False) -> dict:
        """Plain-Python, JSON-ready summary (per-user values only on request)."""
        out = {
            "metrics": dict(self.metrics),
            "std_error": {name: self.std_error(name) for name in self.per_user},
            "n_users_evaluated": self.n_users_evaluated,
            "n_users_skipped": self.n_users_skipped,
            "recall_denominator": self.recall_denominator,
        }
        if include_per_user:
            out["users"] = self.users.tolist()
            out["per_user"] = {name: values.tolist() for name, values in self.per_user.items()}
        return out


def evaluate_ranking(
    model: ScoringModel,
    fold_in: sp.csr_matrix,
    heldout: sp.csr_matrix,
    ks: Sequence[int] = (20, 50, 100),
    metrics: Sequence[str] = ("recall", "ndcg"),
    batch_size: int = 1024,
    device: str | torch.device = "auto",
    recall_denominator: str = "min",
    user_features=None,
) -> RankingResult:
    """Rank the whole catalogue for every user with held-out items and score it.

    For each batch of users the model scores ``fold_in[batch]``, the fold-in
    items are set to ``-inf``, :func:`aerec.ranking.top_n` takes the top
    ``max(ks)`` items, and hits are read on the device from that batch's
    held-out rows. Only one batch is ever densified.

    Parameters
    ----------
    model : object with ``score_tensor(user_items) -> Tensor | ndarray``
        Returns dense ``(n_rows, n_items)`` scores for a CSR batch of user
        rows. The evaluator writes ``-inf`` into the returned scores in place.
    fold_in : scipy.sparse.csr_matrix, shape (n_users, n_items)
        What the model is given; every stored entry is masked before ranking.
    heldout : scipy.sparse.csr_matrix, shape (n_users, n_items)
        What is ranked against: every stored entry (whatever its value) is a
        relevant item. Must not share any (user, item) pair with ``fold_in``.
    ks : sequence of int
        Cut-offs, each ``1 <= k <= n_items``.
    metrics : sequence of str
        Names from :data:`RANKING_METRICS`: recall, ndcg, precision, map,
        hit_rate, mrr. ``coverage@k`` is always reported.
    batch_size : int
        Users per batch, at least 1.
    device : str or torch.device
        Where ranking and hits are computed; ``"auto"`` picks CUDA when present.
    recall_denominator : {"min", "all"}
        See :func:`recall_at_k`.
    user_features : array or sparse matrix, optional
        One row of side features per row of ``fold_in``, for a model fitted with ``side_information=True``
        (passed to its ``score_tensor``); :func:`conditioning_rows` gives them from a split's user ids.

    Returns
    -------
    RankingResult

    Raises
    ------
    TypeError
        If the matrices are not scipy sparse or the model's scores are neither
        a tensor nor an array.
    ValueError
        On mismatched shapes, overlapping fold-in and held-out entries, an
        empty ``heldout``, a bad ``ks``, metric name, ``batch_size`` or
        ``recall_denominator``, or a score batch with the wrong shape or NaN.
    """
    fold_in, heldout = _check_matrices(fold_in, heldout)
    n_items = fold_in.shape[1]
    ks = _check_ks(ks, n_items)
    functions = _metric_functions(metrics, recall_denominator)
    _check_int_in_range("batch_size", batch_size, 1, None)
    device = resolve_device(device)

    n_relevant = np.diff(heldout.indptr)
    users = np.flatnonzero(n_relevant > 0)
    per_user: dict[str, list[np.ndarray]] = {f"{name}@{k}": [] for name in functions for k in ks}
    recommended = {k: np.empty(0, dtype=np.int64) for k in ks}
    for start in range(0, users.size, batch_size):
        batch = users[start : start + batch_size]
        side = None if user_features is None else user_features[batch]
        ids, hits = _rank_batch(model, fold_in[batch], heldout[batch], max(ks), device, side)
        for name, function in functions.items():
            for k in ks:
                per_user[f"{name}@{k}"].append(function(hits, n_relevant[batch], k))
        for k in ks:
            recommended[k] = np.union1d(recommended[k], ids[:, :k])

    per_user_values = {key: np.concatenate(chunks) for key, chunks in per_user.items()}
    means = {key: float(values.mean()) for key, values in per_user_values.items()}
    means.update({f"coverage@{k}": coverage(recommended[k], n_items) for k in ks})
    return RankingResult(
        metrics=means,
        per_user=per_user_values,
        users=users,
        n_users_evaluated=int(users.size),
        n_users_skipped=int(fold_in.shape[0] - users.size),
        recall_denominator=recall_denominator,
    )


def _rank_batch(
    model: ScoringModel, fold_in: sp.csr_matrix, heldout: sp.csr_matrix, n: int, device: torch.device, side=None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``n`` ids (``-1`` where unavailable) and the boolean hits of one batch, as numpy."""
    with torch.no_grad():
        scores = model.score_tensor(fold_in) if side is None else model.score_tensor(fold_in, user_features=side)
    scores = _as_score_tensor(scores, fold_in.shape, device)
    ids, top_scores = top_n(scores, fold_in, n)
    ids = mark_unavailable(ids, top_scores)
    relevant = csr_to_dense_tensor(heldout, device, dtype=torch.bool)
    hits = relevant.gather(1, ids.clamp(min=0)) & (ids >= 0)
    return ids.cpu().numpy(), hits.cpu().numpy()


def _as_score_tensor(scores, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    if isinstance(scores, np.ndarray):
        scores = torch.from_numpy(scores)
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"model.score_tensor must return a torch.Tensor or numpy array, got {type(scores).__name__}")
    if tuple(scores.shape) != shape:
        raise ValueError(f"model.score_tensor returned shape {tuple(scores.shape)} for a batch of shape {shape}")
    return scores.detach().to(device)


def _check_matrices(fold_in, heldout) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """CSR ``fold_in`` and a 0/1 CSR of ``heldout``'s stored entries (duplicates merged)."""
    for name, matrix in (("fold_in", fold_in), ("heldout", heldout)):
        if not sp.issparse(matrix):
            raise TypeError(f"{name} must be a scipy sparse matrix, got {type(matrix).__name__}")
        if matrix.ndim != 2:
            raise ValueError(f"{name} must be 2-D (users x items), got shape {matrix.shape}")
    if fold_in.shape != heldout.shape:
        raise ValueError(f"fold_in has shape {fold_in.shape} but heldout has {heldout.shape}; expected equal shapes")
    fold_in = sp.csr_matrix(fold_in)
    heldout = _stored_pattern(heldout)
    if heldout.nnz == 0:
        raise ValueError("heldout has no stored entries; there is nothing to rank against")
    n_shared = _stored_pattern(fold_in).multiply(heldout).nnz
    if n_shared:
        raise ValueError(
            f"fold_in and heldout share {n_shared} (user, item) pair(s); a held-out item the model "
            "was given is masked and can never be a hit"
        )
    return fold_in, heldout


def _stored_pattern(matrix) -> sp.csr_matrix:
    pattern = sp.csr_matrix(matrix, copy=True)
    pattern.sum_duplicates()
    pattern.data = np.ones_like(pattern.data, dtype=np.float32)
    return pattern


def _check_ks(ks, n_items: int) -> tuple[int, ...]:
    ks = (ks,) if isinstance(ks, (int, np.integer)) else tuple(ks)
    if not ks:
        raise ValueError("ks is empty; expected at least one cut-off k")
    for k in ks:
        _check_int_in_range("k", k, 1, n_items)
    return tuple(sorted({int(k) for k in ks}))


def _metric_functions(metrics: Iterable[str], recall_denominator: str) -> dict:
    if recall_denominator not in RECALL_DENOMINATORS:
        raise ValueError(f"recall_denominator={recall_denominator!r} is not one of {RECALL_DENOMINATORS}")
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    if not metrics:
        raise ValueError(f"metrics is empty; expected names from {RANKING_METRICS}")
    for name in metrics:
        if name not in _METRIC_FUNCTIONS:
            raise ValueError(f"unknown metric {name!r}; expected one of {RANKING_METRICS}")
    functions = {name: _METRIC_FUNCTIONS[name] for name in metrics}
    if "recall" in functions:
        functions["recall"] = partial(recall_at_k, denominator=recall_denominator)
    return functions


def _to_numpy(values):
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return values


def conditioning_rows(model, fold_in, user_ids=None):
    """The side features of ``fold_in``'s users (the ids of an :class:`~aerec.data.Interactions`, or
    ``user_ids``, one per row) for a model fitted with ``side_information=True`` (looked up in the table it was
    fitted with), else None: what ``evaluate_ranking(..., user_features=)`` takes."""
    if not getattr(model, "conditioned", False):
        return None
    ids = getattr(fold_in, "user_ids", None) if user_ids is None else user_ids
    return model.user_feature_rows(ids, fold_in.shape[0])
