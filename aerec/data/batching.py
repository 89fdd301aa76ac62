"""Row batches of a users x items matrix (CSR or dense array), densified one batch at a time."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp
import torch

from aerec._torch import csr_to_dense_tensor, csr_to_sparse_tensor


@dataclass
class RowBatch:
    """One batch of rows of the training matrix, with views on ``device`` computed on demand.

    Attributes
    ----------
    index : ndarray of int64
        The rows' indices in the source matrix (e.g. user ids for CDAE's user vectors).
    values : csr_matrix or ndarray
        The rows themselves (a CSR slice, or a slice of a dense array).
    device : torch.device
    """

    index: np.ndarray
    values: sp.csr_matrix | np.ndarray
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __len__(self) -> int:
        return len(self.index)

    @cached_property
    def dense(self) -> torch.Tensor:
        """The batch as a dense float32 (batch, n_cols) tensor."""
        if sp.issparse(self.values):
            return csr_to_dense_tensor(self.values, self.device)
        return torch.as_tensor(np.asarray(self.values, dtype=np.float32), device=self.device)

    @cached_property
    def sparse(self) -> torch.Tensor:
        """The batch as a coalesced torch sparse COO tensor (only for CSR sources)."""
        if not sp.issparse(self.values):
            raise TypeError("a dense batch has no sparse view; pass a CSR matrix to train on sparse input")
        return csr_to_sparse_tensor(self.values, self.device)

    @cached_property
    def observed(self) -> torch.Tensor:
        """Boolean (batch, n_cols) mask of the stored entries (all True for a dense source)."""
        if sp.issparse(self.values):
            return csr_to_dense_tensor(self.values, self.device, dtype=torch.bool)
        return torch.ones(self.values.shape, dtype=torch.bool, device=self.device)

    @cached_property
    def index_tensor(self) -> torch.Tensor:
        return torch.as_tensor(self.index, dtype=torch.long, device=self.device)


def iter_row_batches(matrix, batch_size: int, device: torch.device, shuffle: bool = False,
                     rng: np.random.Generator | None = None, rows: np.ndarray | None = None) -> Iterator[RowBatch]:
    """Yield :class:`RowBatch` es of ``batch_size`` rows (the last may be smaller).

    ``rows`` restricts the batches to those row indices (default: all rows);
    with ``shuffle`` their order is permuted by ``rng`` (vae_cf shuffles users every epoch).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; expected an integer >= 1")
    order = np.arange(matrix.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    if shuffle:
        if rng is None:
            raise ValueError("shuffle=True needs an rng (np.random.Generator) so that the order is reproducible")
        order = rng.permutation(order)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        yield RowBatch(index, matrix[index], device)
