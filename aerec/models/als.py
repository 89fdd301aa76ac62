"""Implicit-feedback ALS (Hu, Koren, Volinsky, ICDM 2008), wrapped from the implicit library.

Training is implicit's CPU ``AlternatingLeastSquares`` (conjugate-gradient
solver, as implicit's default). A user row given to ``score`` is folded in by
implicit's exact least-squares step against the fixed item factors
(``recalculate_user``), so users unseen in training are scored from their rows.
For training users that is the ALS user step, not the stored CG factor: the
two differ by the CG approximation only.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from aerec.models.base import Recommender
from aerec.params import COUNT, RATE, SEED, THREADS, WIDTH

#: The cores this process may use: more threads are never faster (a model file asking 4096 made OpenMP start
#: 4096 threads, which fails where the address space is capped).
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
from aerec.search_space import Choice, FloatRange


class ALS(Recommender):
    """Weighted matrix factorisation for implicit feedback (confidence ``1 + alpha * r``).

    Parameters
    ----------
    factors, regularization, alpha, iterations : as implicit's ``AlternatingLeastSquares``.
    random_state : int
        Seed of the initial factors.
    num_threads : int
        Threads for implicit (0: all cores; more than the cores this process may use are capped to them, which
        changes no result: ALS solves each row on its own).
    """

    def __init__(self, factors: int = 100, regularization: float = 0.01, alpha: float = 1.0, iterations: int = 15,
                 random_state: int = 0, num_threads: int = 0):
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.random_state = random_state
        self.num_threads = num_threads

    parameter_constraints = {"factors": [WIDTH], "iterations": [COUNT], "regularization": [RATE], "alpha": [RATE],
                             "random_state": [SEED], "num_threads": [THREADS]}
    search_space = {"factors": Choice(64, 128, 200), "regularization": FloatRange(0.01, 100.0, log=True),
                    "alpha": FloatRange(1.0, 100.0, log=True)}

    def _fit(self, matrix, validation) -> None:
        self.model_ = self.new_implicit_model()
        with threadpool_limits(1, "blas"):
            self.model_.fit(matrix, show_progress=False)

    def new_implicit_model(self):  # ALS's least squares give the same factors on any number of threads
        """An unfitted implicit ``AlternatingLeastSquares`` with this model's hyper-parameters."""
        from implicit.cpu.als import AlternatingLeastSquares

        return quiet_implicit(lambda: AlternatingLeastSquares(
            factors=self.factors, regularization=self.regularization, alpha=self.alpha, iterations=self.iterations,
            random_state=self.random_state, num_threads=min(self.num_threads or CORES, CORES)))

    def fitted_state(self) -> dict:
        """The factors in place of implicit's model object (a model file holds arrays only)."""
        state = super().fitted_state()
        implicit_model = state.pop("model_")
        return {**state, "item_factors_": np.asarray(implicit_model.item_factors),
                "user_factors_": np.asarray(implicit_model.user_factors)}

    def restore_fitted_state(self, state: dict) -> None:
        state = dict(state)
        item_factors, user_factors = state.pop("item_factors_"), state.pop("user_factors_")
        for name, factors in (("item_factors_", item_factors), ("user_factors_", user_factors)):
            if getattr(factors, "ndim", 0) != 2 or factors.shape[1] != self.factors:  # scoring sizes by factors
                raise ValueError(f"{name} of shape {getattr(factors, 'shape', None)} do not match factors="
                                 f"{self.factors}: the hyper-parameters and the weights come from different models")
        super().restore_fitted_state(state)
        self.model_ = self.new_implicit_model()
        self.model_.item_factors, self.model_.user_factors = item_factors, user_factors

    def user_factors(self, user_items) -> np.ndarray:
        """Fold in the given rows: their least-squares user factors against the fitted item factors."""
        rows = self.check_user_items(user_items)
        with threadpool_limits(1, "blas"):
            return self.model_.recalculate_user(np.arange(rows.shape[0]), rows)

    def item_embeddings(self) -> np.ndarray:
        """implicit's item factors, (n_items, factors) float32."""
        self.check_fitted()
        return np.asarray(self.model_.item_factors, dtype=np.float32)

    def user_embeddings(self, user_items) -> np.ndarray:
        """The rows' least-squares user factors (:meth:`user_factors`), float32."""
        return np.asarray(self.user_factors(user_items), dtype=np.float32)

    def score_tensor(self, user_items) -> torch.Tensor:
        factors = self.user_factors(user_items)
        return torch.from_numpy(factors @ self.model_.item_factors.T)


def quiet_implicit(build):
    """Build an implicit model without its BLAS-threads warning (we limit BLAS threads ourselves)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(OpenBLAS|MKL|BLAS).*")
        return build()
