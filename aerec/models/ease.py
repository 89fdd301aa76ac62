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

import torch

from aerec._torch import csr_to_sparse_tensor, resolve_device
from aerec.core.closed_form import check_dense_memory, gram_matrix, zero_diagonal_weights
from aerec.models.base import Recommender
from aerec.params import POSITIVE, Device


class EASE(Recommender):
    """Linear item-item autoencoder with a zero diagonal (Steck 2019).

    Parameters
    ----------
    l2 : float
        The L2 weight lambda added to the diagonal of the Gram matrix (the paper
        tunes it in the hundreds to thousands).
    device : str
        "auto" (CUDA when present), "cpu" or "cuda".
    """

    def __init__(self, l2: float = 500.0, device: str = "auto"):
        self.l2 = l2
        self.device = device

    parameter_constraints = {"l2": [POSITIVE], "device": [Device()]}

    def _fit(self, matrix, validation) -> None:
        device = resolve_device(self.device)
        check_memory(matrix.shape[1])
        gram = gram_matrix(matrix, device)
        gram.diagonal().add_(float(self.l2))
        self.weights_ = zero_diagonal_weights(gram)  # B_ij = -P_ij / P_jj, diag(B) = 0
        self.device_ = device

    def score_tensor(self, user_items) -> torch.Tensor:
        rows = self.check_user_items(user_items)
        return torch.sparse.mm(csr_to_sparse_tensor(rows, self.device_), self.weights_)


def check_memory(n_items: int) -> None:
    """Refuse, with the estimate, an items x items fit that cannot fit in memory (see PITFALLS)."""
    # the Gram matrix, its inverse and B, in float64
    check_dense_memory("EASE", n_items, 3, "Filter rare items first (filter_min_counts)")
