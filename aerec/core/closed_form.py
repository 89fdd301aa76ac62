"""Closed forms of linear item-item autoencoders (EASE, DLAE, EDLAE): the Gram matrix, the solves, the memory check.

Each model ``scores = X B`` with an items x items ``B`` learned from the Gram
matrix ``G = X^T X`` plus a diagonal penalty. Computed in float64 (the
penalised Gram matrix is symmetric positive definite: a Cholesky inverse), on
the model's device, and kept as float32.
"""

from __future__ import annotations

import scipy.sparse as sp
import torch

from aerec._torch import available_memory_bytes

__all__ = ["check_dense_memory", "gram_matrix", "ridge_weights", "zero_diagonal_weights"]


def gram_matrix(matrix: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    """``X^T X`` as a dense float64 tensor on ``device``."""
    return torch.from_numpy((matrix.T @ matrix).toarray()).to(device=device, dtype=torch.float64)


def spd_inverse(matrix: torch.Tensor) -> torch.Tensor:
    """The inverse of a symmetric positive definite matrix, through its Cholesky factor."""
    return torch.cholesky_inverse(torch.linalg.cholesky(matrix))


def zero_diagonal_weights(penalised_gram: torch.Tensor) -> torch.Tensor:
    """EASE's solution ``B = I - P dMat(1 / diag(P))`` with ``P = (G + penalty)^-1``: ``B_ij = -P_ij / P_jj``, zero diagonal.

    ``penalised_gram`` is consumed (freed as soon as it is inverted); float32, row-major result.
    """
    precision = spd_inverse(penalised_gram)
    del penalised_gram
    weights = precision / (-precision.diagonal())
    weights.diagonal().zero_()
    # row-major: cholesky_inverse returns column-major, which makes sparse.mm ~30x slower
    return weights.to(torch.float32).contiguous()


def ridge_weights(penalised_gram: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """The unconstrained solution ``B = (G + dMat(penalty))^-1 G = I - P dMat(penalty)``; float32, row-major.

    ``penalised_gram`` is ``G + dMat(penalty)``, consumed.
    """
    precision = spd_inverse(penalised_gram)
    del penalised_gram
    weights = precision.mul_(-penalty)  # column j scaled by -penalty_j
    weights.diagonal().add_(1.0)
    return weights.to(torch.float32).contiguous()


def check_dense_memory(model: str, n_items: int, copies: int, advice: str) -> None:
    """Refuse, with the estimate, a fit needing ``copies`` dense float64 items x items matrices that cannot fit."""
    needed = copies * 8 * n_items * n_items
    available = available_memory_bytes()
    if available is not None and needed > available:
        raise MemoryError(
            f"{model} on {n_items} items needs about {needed / 2**30:.1f} GiB for its dense items x items "
            f"matrices; {available / 2**30:.1f} GiB is available. {advice}"
        )
