"""Baseline predictor for explicit ratings: global mean + user bias + item bias.

Koren, "Factor in the Neighbors: Scalable and Accurate Collaborative
Filtering", ACM TKDD 2010, section 2.1: ``r_ui ~ mu + b_u + b_i`` with L2
weights on the biases, fitted here by alternating exact least-squares steps
(each step has a closed form: ``b_i = sum_u (r_ui - mu - b_u) / (reg_item + n_i)``,
then ``b_u`` likewise). It is the reference every rating model must beat.
"""

from __future__ import annotations

import numpy as np
import torch

from aerec.models.base import Recommender
from aerec.params import COUNT, RATE
from aerec.search_space import FloatRange


class BiasBaseline(Recommender):
    """Rating predictor ``mu + b_u + b_i``, clipped to the training rating range.

    A user or item without training ratings gets bias 0 (so a pair of two such
    gets the global mean). For ranking, a row's score is ``mu + b_u + b_i``
    with ``b_u`` folded in from the row (it does not change the order).

    Parameters
    ----------
    reg_user, reg_item : float
        L2 weights of the user and item biases (Koren's damping terms).
    iterations : int
        Alternating steps (item biases, then user biases).
    """

    def __init__(self, reg_user: float = 15.0, reg_item: float = 10.0, iterations: int = 10):
        self.reg_user = reg_user
        self.reg_item = reg_item
        self.iterations = iterations

    parameter_constraints = {"reg_user": [RATE], "reg_item": [RATE], "iterations": [COUNT]}
    search_space = {"reg_user": FloatRange(0.1, 100.0, log=True), "reg_item": FloatRange(0.1, 100.0, log=True)}
    fitted_dtypes = {"user_bias_": "float64", "item_bias_": "float64"}

    def _fit(self, matrix, validation) -> None:
        coo = matrix.tocoo()
        self.mean_ = float(coo.data.mean())
        self.rating_range_ = (float(coo.data.min()), float(coo.data.max()))
        user_bias = np.zeros(matrix.shape[0])
        item_bias = np.zeros(matrix.shape[1])
        for _ in range(self.iterations):
            item_bias = _damped_mean(coo.col, coo.data - self.mean_ - user_bias[coo.row], matrix.shape[1], self.reg_item)
            user_bias = _damped_mean(coo.row, coo.data - self.mean_ - item_bias[coo.col], matrix.shape[0], self.reg_user)
        self.user_bias_, self.item_bias_ = user_bias, item_bias

    def predict(self, users, items) -> np.ndarray:
        """Ratings for (user index, item index) pairs of the training matrix, clipped to its range."""
        self.check_fitted()
        users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
        if users.shape != items.shape or users.ndim != 1:
            raise ValueError(f"users and items must be 1-D arrays of equal length, got shapes {users.shape} and {items.shape}")
        for name, index, size in (("users", users, len(self.user_bias_)), ("items", items, self.n_items_)):
            if index.size and (index.min() < 0 or index.max() >= size):
                raise ValueError(f"{name} holds index {int(index.max() if index.max() >= size else index.min())}; "
                                 f"expected indices from 0 to {size - 1}")
        raw = self.mean_ + self.user_bias_[users] + self.item_bias_[items]
        return np.clip(raw, *self.rating_range_)

    def score_tensor(self, user_items) -> torch.Tensor:
        rows = self.check_user_items(user_items)
        coo = rows.tocoo()
        residual = coo.data - self.mean_ - self.item_bias_[coo.col]
        user_bias = _damped_mean(coo.row, residual, rows.shape[0], self.reg_user)
        scores = self.mean_ + user_bias[:, None] + self.item_bias_[None, :]
        return torch.from_numpy(scores.astype(np.float32))


def _damped_mean(index: np.ndarray, residual: np.ndarray, size: int, reg: float) -> np.ndarray:
    """sum of residuals per index / (reg + count per index)."""
    return np.bincount(index, weights=residual, minlength=size) / (reg + np.bincount(index, minlength=size))
