"""Bayesian Personalized Ranking (Rendle et al., UAI 2009), wrapped from the implicit library.

Training is implicit's CPU ``BayesianPersonalizedRanking`` (SGD with sampled
negatives; the last item factor is an item bias). implicit cannot fold in a
new user for BPR, so aerec does: the user vectors of a batch of rows are fitted
by full-batch gradient ascent on the same objective (each of the row's items
against ``fold_in_negatives`` uniformly sampled items that the row does not
hold, L2 weight ``regularization``), with the item factors frozen. This is
applied to every row given to ``score``, so a training user is scored from its
row as well, not from its stored training vector.
"""

from __future__ import annotations

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from aerec._torch import csr_to_dense_tensor
from aerec.models.als import quiet_implicit
from aerec.models.base import Recommender
from aerec.params import COUNT, FOLD_IN_STEPS, RATE, SAMPLES, SEED, THREADS, WIDTH
from aerec.search_space import Choice, FloatRange


class BPR(Recommender):
    """Matrix factorisation trained on the BPR pairwise objective.

    Parameters
    ----------
    factors, learning_rate, regularization, iterations : as implicit's ``BayesianPersonalizedRanking``.
    random_state : int
        Seed of training and of the fold-in's negative samples.
    num_threads : int
        implicit's SGD threads. Its parallel SGD is lock-free (Hogwild), so only
        ``num_threads=1`` (the default here) gives the same model for the same seed.
    fold_in_steps, fold_in_lr, fold_in_negatives : fold-in optimisation (Adam steps, step size, negatives per item).
    """

    def __init__(self, factors: int = 100, learning_rate: float = 0.01, regularization: float = 0.01,
                 iterations: int = 100, random_state: int = 0, num_threads: int = 1,
                 fold_in_steps: int = 100, fold_in_lr: float = 0.05, fold_in_negatives: int = 8):
        self.factors = factors
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.iterations = iterations
        self.random_state = random_state
        self.num_threads = num_threads
        self.fold_in_steps = fold_in_steps
        self.fold_in_lr = fold_in_lr
        self.fold_in_negatives = fold_in_negatives

    parameter_constraints = {"factors": [WIDTH], "iterations": [COUNT], "fold_in_steps": [FOLD_IN_STEPS],
                             "fold_in_negatives": [SAMPLES], "learning_rate": [RATE],
                             "regularization": [RATE], "fold_in_lr": [RATE], "random_state": [SEED],
                             "num_threads": [THREADS]}
    search_space = {"factors": Choice(64, 128), "learning_rate": FloatRange(1e-3, 0.1, log=True),
                    "regularization": FloatRange(1e-4, 0.1, log=True)}

    def _fit(self, matrix, validation) -> None:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        self.model_ = quiet_implicit(lambda: BayesianPersonalizedRanking(
            factors=self.factors, learning_rate=self.learning_rate, regularization=self.regularization,
            iterations=self.iterations, random_state=self.random_state, num_threads=self.num_threads))
        with threadpool_limits(1, "blas"):
            self.model_.fit(matrix, show_progress=False)
        self.item_factors_ = torch.from_numpy(np.asarray(self.model_.item_factors, dtype=np.float32))

    def fitted_state(self) -> dict:
        """Without implicit's model object: scoring reads ``item_factors_`` only."""
        return {name: value for name, value in super().fitted_state().items() if name != "model_"}

    def user_factors(self, user_items) -> torch.Tensor:
        """Fold in the given rows: user vectors maximising BPR against the frozen item factors."""
        rows = self.check_user_items(user_items)
        items = self.item_factors_
        positives = csr_to_dense_tensor(rows, items.device) > 0
        row_of, item_of = positives.nonzero(as_tuple=True)
        self._check_fold_in_memory(len(row_of), items.shape[1])
        generator = torch.Generator().manual_seed(int(self.random_state))
        n_free = items.shape[1] - 1  # the last column multiplies the item bias and stays 1
        free = torch.zeros(rows.shape[0], n_free, requires_grad=True)
        optimizer = torch.optim.Adam([free], lr=self.fold_in_lr)
        ones = torch.ones(rows.shape[0], 1)
        with torch.enable_grad():  # callers (the evaluator) may run under no_grad
            self._ascend(free, ones, optimizer, positives, row_of, item_of, generator)
        return torch.cat([free.detach(), ones], dim=1)

    def _check_fold_in_memory(self, n_positives: int, width: int) -> None:
        """Refuse a fold-in whose negative samples cannot fit: each step holds (positives x fold_in_negatives)
        indices, gathered item vectors and their gradients (about 3 float32 copies of ``width``)."""
        from aerec._torch import available_memory_bytes

        needed = n_positives * int(self.fold_in_negatives) * (8 + 3 * 4 * width)
        available = available_memory_bytes()
        if available is not None and needed > available:
            raise MemoryError(
                f"BPR's fold-in of {n_positives} interactions with fold_in_negatives={self.fold_in_negatives} needs "
                f"about {needed / 2**30:.1f} GiB per step; {available / 2**30:.1f} GiB is available: lower "
                "fold_in_negatives or score fewer rows at once")

    def _ascend(self, free, ones, optimizer, positives, row_of, item_of, generator) -> None:
        items = self.item_factors_
        for _ in range(self.fold_in_steps):
            negatives = torch.randint(0, items.shape[0], (len(row_of), self.fold_in_negatives), generator=generator)
            valid = ~positives[row_of[:, None], negatives]
            users = torch.cat([free, ones], dim=1)[row_of]
            margin = (users[:, None, :] * (items[item_of][:, None, :] - items[negatives])).sum(-1)
            loss = -(torch.nn.functional.logsigmoid(margin) * valid).sum() + self.regularization * (free**2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def item_embeddings(self) -> np.ndarray:
        """implicit's item factors (the last column is the item bias), (n_items, factors + 1) float32."""
        self.check_fitted()
        return self.item_factors_.float().cpu().numpy()

    def user_embeddings(self, user_items) -> np.ndarray:
        """The rows' folded-in user factors (:meth:`user_factors`; the last column is the bias's 1), float32."""
        return self.user_factors(user_items).float().cpu().numpy()

    def score_tensor(self, user_items) -> torch.Tensor:
        return self.user_factors(user_items) @ self.item_factors_.T
