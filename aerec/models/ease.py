"""EASE: Embarrassingly Shallow Autoencoders for Sparse Data.

Harald Steck. WWW 2019. https://arxiv.org/abs/1905.03375

The closed form, as the paper's listing:
``G = X^T X + l2 I;  P = G^-1;  B = -P / diag(P) (column-wise);  diag(B) = 0``.
Scores are ``X_u B``. X is used as given (the protocols binarize it first;
Cornac, by contrast, fits raw ratings and clips negative weights). The
items x items inverse is computed in float64 through a Cholesky factorisation
(G is symmetric positive definite), on the GPU when one is present.
"""

from __future__ import annotations

import numpy as np
import torch

from aerec._torch import csr_to_sparse_tensor, resolve_device
from aerec.core.closed_form import (
    PRECISIONS,
    check_dense_memory,
    dense_gram_float32,
    gram_matrix,
    in_place_weights,
    zero_diagonal_weights,
)
from aerec.models.base import Recommender
from aerec.params import RATE, Device, Options
from aerec.search_space import FloatRange


class EASE(Recommender):
    """Linear item-item autoencoder with a zero diagonal (Steck 2019).

    Parameters
    ----------
    l2 : float
        The L2 weight lambda added to the diagonal of the Gram matrix (the paper
        tunes it in the hundreds to thousands).
    device : str
        "auto" (CUDA when present), "cpu" or "cuda".
    precision : {"float64", "float32"}
        "float64": the inverse in float64 on ``device`` (about 24 bytes per items x items entry at
        the peak); "float32": in place in one float32 array on the CPU (4 bytes per entry, for large
        catalogues; see :mod:`aerec.core.closed_form`).
    """

    def __init__(self, l2: float = 500.0, device: str = "auto", precision: str = "float64"):
        self.l2 = l2
        self.device = device
        self.precision = precision

    parameter_constraints = {"l2": [RATE], "device": [Device()], "precision": [Options(*PRECISIONS)]}
    #: Steck (2019) tunes lambda over hundreds to thousands
    search_space = {"l2": FloatRange(10.0, 10_000.0, log=True)}

    def _fit(self, matrix, validation) -> None:
        device = resolve_device(self.device)
        check_dense_memory("EASE", matrix.shape[1], self.precision)
        if self.precision == "float32":
            penalty = np.full(matrix.shape[1], float(self.l2))
            self.weights_ = in_place_weights(dense_gram_float32(matrix), penalty, emphasized=True).to(device)
        else:
            gram = gram_matrix(matrix, device)
            gram.diagonal().add_(float(self.l2))
            self.weights_ = zero_diagonal_weights(gram)  # B_ij = -P_ij / P_jj, diag(B) = 0
        self.device_ = device

    similarity_metrics = ("weight", "cosine", "dot")

    def item_similarities(self, columns: np.ndarray, metric: str) -> torch.Tensor:
        """``"weight"``: item ``j``'s column of ``B``; else as :meth:`Recommender.item_similarities`."""
        if metric == "weight":
            return self.weights_[:, torch.from_numpy(columns).to(self.weights_.device)].T
        return super().item_similarities(columns, metric)

    def item_embeddings(self) -> np.ndarray:
        """Item ``j``'s column of ``B`` (how every item's presence scores ``j``), (n_items, n_items) float32."""
        self.check_fitted()
        return self.weights_.T.float().cpu().contiguous().numpy()

    def score_tensor(self, user_items) -> torch.Tensor:
        rows = self.check_user_items(user_items)
        return torch.sparse.mm(csr_to_sparse_tensor(rows, self.device_), self.weights_)
