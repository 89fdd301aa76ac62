"""Closed forms of linear item-item autoencoders (EASE, DLAE, EDLAE): the Gram matrix, the solves, the memory check.

Each model ``scores = X B`` with an items x items ``B`` learned from the Gram
matrix ``G = X^T X`` plus a diagonal penalty (symmetric positive definite: a
Cholesky inverse). Two paths, the model's ``precision``:

- ``"float64"``: torch on the model's device, the Gram matrix, its inverse and
  B in float64 (about ``24 * items^2`` bytes at the peak), B kept as float32;
- ``"float32"``: one items x items float32 array, worked in place by LAPACK's
  ``spotrf`` / ``spotri`` (Cholesky factor, then inverse) and turned into B
  where it lies (about ``4 * items^2`` bytes: an MSD-sized catalogue of 41,140
  items in 6.8 GB instead of 41 GB), on the CPU. Steck's notebooks compute in
  float32 as well.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.linalg import lapack

from aerec._torch import available_memory_bytes

__all__ = ["PRECISIONS", "check_dense_memory", "dense_gram_float32", "dense_memory_bytes", "gram_matrix",
           "in_place_weights", "ridge_weights", "zero_diagonal_weights"]

#: The closed forms' precisions (see the module docstring).
PRECISIONS = ("float64", "float32")
#: Bytes per items x items entry at the peak of each path: three float64 matrices, or one float32 in place.
PEAK_BYTES_PER_ENTRY = {"float64": 24, "float32": 4}
# Items x block of the float32 Gram matrix made at a time, and rows of B scaled at a time.
_BLOCK = 1024


def gram_matrix(matrix: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    """``X^T X`` as a dense float64 tensor on ``device``."""
    return torch.from_numpy((matrix.T @ matrix).toarray()).to(device=device, dtype=torch.float64)


def spd_inverse(matrix: torch.Tensor) -> torch.Tensor:
    """The inverse of a symmetric positive definite matrix, through its Cholesky factor."""
    return torch.cholesky_inverse(torch.linalg.cholesky(matrix))


def zero_diagonal_weights(penalised_gram: torch.Tensor) -> torch.Tensor:
    """EASE's ``B = I - P dMat(1 / diag(P))``, ``P = (G + penalty)^-1``: ``B_ij = -P_ij / P_jj``, zero diagonal.

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


def dense_gram_float32(matrix: sp.csr_matrix) -> np.ndarray:
    """``X^T X`` as a C-ordered float32 numpy array, made a block of columns at a time (no sparse Gram matrix whole)."""
    n_items = matrix.shape[1]
    gram = np.empty((n_items, n_items), dtype=np.float32)
    transposed, columns = sp.csr_matrix(matrix.T), sp.csc_matrix(matrix)
    for start in range(0, n_items, _BLOCK):
        stop = min(start + _BLOCK, n_items)
        gram[:, start:stop] = (transposed @ columns[:, start:stop]).toarray()
    return gram


def in_place_weights(gram: np.ndarray, penalty: np.ndarray, emphasized: bool) -> torch.Tensor:
    """B from a float32 Gram matrix, in its own memory: EASE/EDLAE's (``emphasized``) or DLAE's.

    ``gram`` (C-ordered float32, symmetric) becomes ``G + dMat(penalty)``, then its inverse P
    (LAPACK ``spotrf`` + ``spotri`` on the same memory, then the lower triangle mirrored), then
    ``-P / diag(P)`` with a zero diagonal (``emphasized``) or ``I - P dMat(penalty)``. Returned as a
    float32 tensor sharing ``gram``'s memory.
    """
    n_items = gram.shape[0]
    gram[np.diag_indices(n_items)] += penalty.astype(np.float32)
    with lapack_threads(n_items):
        # The transpose of a C-ordered symmetric matrix is the same matrix in Fortran order: LAPACK works on it in
        # place.
        factor, info = lapack.spotrf(gram.T, lower=1, clean=0, overwrite_a=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"the penalised Gram matrix is not positive definite in float32 (spotrf "
                                        f"info {info}); raise l2 or use precision='float64'")
        inverse, info = lapack.spotri(factor, lower=1, overwrite_c=1)
    if info != 0 or not np.shares_memory(inverse, gram):
        raise np.linalg.LinAlgError(f"spotri failed (info {info})")
    # spotri filled the Fortran view's lower triangle, i.e. gram's upper one: mirror it block by block.
    for start in range(0, n_items, _BLOCK):
        stop = min(start + _BLOCK, n_items)
        gram[start:stop, :start] = gram[:start, start:stop].T
        block = gram[start:stop, start:stop]
        lower = np.tril_indices(stop - start, -1)
        block[lower] = block.T[lower]
    diagonal = gram.diagonal().copy()
    scale = (-1.0 / diagonal if emphasized else -penalty).astype(np.float32)
    for start in range(0, n_items, _BLOCK):
        gram[start:start + _BLOCK] *= scale  # column j times scale_j
    gram[np.diag_indices(n_items)] = 0.0 if emphasized else gram.diagonal() + 1.0
    return torch.from_numpy(gram)


#: Above this many items the in-place factorisation runs on one BLAS thread: scipy's OpenBLAS (0.3.x, pthreads)
#: crashed with a segmentation fault inside a two-thread ``spotrf``/``spotri`` on 41,140 items (EASE float32, the
#: MSD-shaped set), the same call on one thread finished (``evaluation/linear_scale.py``), and two threads were fine
#: on 20,108 items; OpenBLAS issue #352 reports the same class of crash for ``dpotrf`` of order 50,000.
LAPACK_SINGLE_THREAD_ABOVE = 32_768


def lapack_threads(n_items: int):
    """The BLAS thread limit for factorising an ``n_items`` square matrix in place (see
    :data:`LAPACK_SINGLE_THREAD_ABOVE`): one thread above it, the pool as it is below."""
    import contextlib

    if n_items <= LAPACK_SINGLE_THREAD_ABOVE:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def dense_memory_bytes(n_items: int, precision: str) -> int:
    """Bytes of items x items matrices at the peak of a closed-form fit in ``precision``."""
    return PEAK_BYTES_PER_ENTRY[precision] * n_items * n_items


def check_dense_memory(model: str, n_items: int, precision: str) -> None:
    """Refuse, with the estimates, a closed form whose dense items x items matrices cannot fit in memory."""
    needed = dense_memory_bytes(n_items, precision)
    available = available_memory_bytes()
    if available is not None and needed > available:
        lean = dense_memory_bytes(n_items, "float32")
        advice = (f"precision='float32' works in place in about {lean / 2**30:.1f} GiB; or " if precision != "float32"
                  else "")
        raise MemoryError(
            f"{model} on {n_items} items needs about {needed / 2**30:.1f} GiB for its dense items x items "
            f"matrices in {precision}; {available / 2**30:.1f} GiB is available. {advice}filter rare items first "
            "(filter_min_counts)"
        )


#: Rows x longest row gathered at a time by :func:`ridge_output_units`.
FOLD_IN_BUDGET = 8192


def ridge_output_units(codes: torch.Tensor, rows: sp.csr_matrix, penalty: float) -> torch.Tensor:
    """One output unit per row, fitted to the row's stored values by ridge regression on the items' codes.

    For row ``u`` with values ``r_i`` at items ``i``: ``min_{w, c} sum_i (r_i - w . z_i - c)^2 + penalty ||w||^2``
    (the bias ``c`` unpenalised), ``z_i = codes[i]``; solved exactly in float64. This is how an item-based
    autoencoder (I-AutoRec, I-CFN), whose outputs are the training users, scores a user it has no unit for.

    Returns
    -------
    Tensor of float64, (n_rows, k + 1): the weights, then the bias; zeros for a row without values.
    """
    device, k = codes.device, codes.shape[1]
    n_items = codes.shape[0]
    with_bias = torch.cat([codes.double(), torch.ones((n_items, 1), dtype=torch.float64, device=device)], 1)
    padded = torch.cat([with_bias, torch.zeros((1, k + 1), dtype=torch.float64, device=device)])  # index n_items: padding
    diagonal = torch.full((k + 1,), float(penalty), dtype=torch.float64, device=device)
    diagonal[-1] = 0.0  # the bias is not regularised
    units = torch.zeros((rows.shape[0], k + 1), dtype=torch.float64, device=device)
    counts = np.diff(rows.indptr)
    order = np.argsort(counts, kind="stable")
    order = order[counts[order] > 0]
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and stop - start < 64 and (stop - start + 1) * counts[order[stop]] <= FOLD_IN_BUDGET:
            stop += 1
        chunk = order[start:stop]
        longest = counts[chunk].max()
        block = rows[chunk]
        lengths = np.diff(block.indptr)
        which = np.repeat(np.arange(len(chunk)), lengths)
        position = np.arange(block.nnz) - np.repeat(block.indptr[:-1], lengths)
        index = torch.full((len(chunk), longest), n_items, dtype=torch.long, device=device)
        target = torch.zeros((len(chunk), longest), dtype=torch.float64, device=device)
        where = (torch.from_numpy(which).to(device), torch.from_numpy(position).to(device))
        index[where] = torch.from_numpy(block.indices.astype(np.int64)).to(device)
        target[where] = torch.from_numpy(block.data.astype(np.float64)).to(device)
        gathered = padded[index]  # (rows, longest, k + 1)
        gram = gathered.transpose(1, 2) @ gathered + torch.diag(diagonal)
        # gram is symmetric positive definite (penalty > 0, at least one value). Cholesky, not linalg.solve:
        # torch's batched LU solve with MKL fails on 2+ threads here ("DLASWP parameter 6", torch 2.13 CPU).
        right = gathered.transpose(1, 2) @ target[..., None]
        factor, failed = torch.linalg.cholesky_ex(gram)
        solved = torch.cholesky_solve(right, factor)
        if bool(failed.any()):  # a penalty so small (1e-300) that a short row's gram is singular in float64:
            bad = failed.nonzero()[:, 0]  # its minimum-norm solution (the limit as penalty -> 0) by pseudo-inverse
            solved[bad] = torch.linalg.pinv(gram[bad], hermitian=True) @ right[bad]
        units[torch.from_numpy(chunk).to(device)] = solved[..., 0]
        start = stop
    return units
