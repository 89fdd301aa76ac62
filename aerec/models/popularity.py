"""Popularity: every user gets the items that most training users interacted with."""

from __future__ import annotations

import numpy as np
import torch

from aerec.models.base import Recommender


class Popularity(Recommender):
    """Scores each item by the number of training users who interacted with it.

    The same scores for every row; a user's own items are excluded at ranking time.
    """

    def __init__(self):
        pass

    def _fit(self, matrix, validation) -> None:
        self.item_counts_ = np.bincount(matrix.indices, minlength=matrix.shape[1]).astype(np.float32)

    def score_tensor(self, user_items) -> torch.Tensor:
        rows = self.check_user_items(user_items)
        return torch.from_numpy(self.item_counts_).expand(rows.shape[0], -1).clone()
