"""Row batches of a users x items matrix, cut where the matrix lives: on the training device when it fits.

:class:`RowSource` places the training rows once (a CSR as three tensors, or a
dense array as one); every batch is then sliced from those tensors with index
arithmetic, on the device, with no per-batch host-to-device copy and no scipy
work. A :class:`RowBatch` offers the views a model needs (sparse COO, sparse
CSR, dense, the mask of stored entries), each computed on first use.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from aerec.sparse_products import SparsePattern

# A CSR placed on a GPU may take at most this share of the free device memory; beyond it batches are cut
# on the host and copied over one at a time (the model and its activations need the rest).
DEVICE_MEMORY_SHARE = 0.5


class CSRParts(NamedTuple):
    """A CSR batch as tensors: ``crow`` (rows + 1, int64), ``col`` (nnz, int64), ``val`` (nnz, float32)."""

    crow: torch.Tensor
    col: torch.Tensor
    val: torch.Tensor
    shape: tuple[int, int]


@dataclass
class RowBatch:
    """One batch of rows of the training matrix, with views on ``device`` computed on demand.

    Attributes
    ----------
    index : ndarray of int64
        The rows' indices in the source matrix (e.g. user ids for CDAE's user vectors).
    values : CSRParts, csr_matrix, Tensor or ndarray
        The rows themselves: tensors cut by :class:`RowSource` (CSR parts, or a dense tensor),
        or a scipy CSR / numpy slice (converted on first use).
    device : torch.device
    """

    index: np.ndarray
    values: CSRParts | sp.csr_matrix | torch.Tensor | np.ndarray
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __len__(self) -> int:
        return len(self.index)

    @property
    def is_sparse(self) -> bool:
        return isinstance(self.values, CSRParts) or sp.issparse(self.values)

    @cached_property
    def parts(self) -> CSRParts:
        """The batch as CSR tensors on ``device`` (only for sparse sources)."""
        if isinstance(self.values, CSRParts):
            crow, col, val, shape = self.values
            return CSRParts(crow.to(self.device), col.to(self.device), val.to(self.device), shape)
        if not sp.issparse(self.values):
            raise TypeError("a dense batch has no sparse view; pass a CSR matrix to train on sparse input")
        rows = sp.csr_matrix(self.values)
        if not rows.has_canonical_format:
            rows = rows.copy()
            rows.sum_duplicates()
        return CSRParts(torch.from_numpy(rows.indptr.astype(np.int64)).to(self.device),
                        torch.from_numpy(rows.indices.astype(np.int64)).to(self.device),
                        torch.from_numpy(np.asarray(rows.data, dtype=np.float32)).to(self.device), rows.shape)

    @cached_property
    def pattern(self) -> SparsePattern:
        """The batch's stored positions, for :mod:`aerec.sparse_products` (only for sparse sources)."""
        parts = self.parts
        return SparsePattern(parts.crow, parts.col, parts.shape)

    @property
    def row_of_entry(self) -> torch.Tensor:
        """For each stored entry, its row within the batch (int64, CSR order)."""
        return self.pattern.row_of_entry

    @cached_property
    def sparse(self) -> torch.Tensor:
        """The batch as a coalesced torch sparse COO tensor (only for sparse sources)."""
        parts = self.parts
        indices = torch.stack([self.row_of_entry, parts.col])
        return torch.sparse_coo_tensor(indices, parts.val, parts.shape, is_coalesced=True, check_invariants=False)

    @cached_property
    def csr(self) -> torch.Tensor:
        """The batch as a torch sparse CSR tensor (only for sparse sources)."""
        parts = self.parts
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(parts.crow, parts.col, parts.val, size=parts.shape, check_invariants=False)

    @cached_property
    def dense(self) -> torch.Tensor:
        """The batch as a dense float32 (batch, n_cols) tensor."""
        if not self.is_sparse:
            return torch.as_tensor(self.values, dtype=torch.float32, device=self.device)
        parts = self.parts
        out = torch.zeros(parts.shape, dtype=torch.float32, device=self.device)
        out[self.row_of_entry, parts.col] = parts.val
        return out

    @cached_property
    def observed(self) -> torch.Tensor:
        """Boolean (batch, n_cols) mask of the stored entries (all True for a dense source)."""
        if not self.is_sparse:
            return torch.ones(tuple(self.values.shape), dtype=torch.bool, device=self.device)
        parts = self.parts
        out = torch.zeros(parts.shape, dtype=torch.bool, device=self.device)
        out[self.row_of_entry, parts.col] = True
        return out

    @cached_property
    def index_tensor(self) -> torch.Tensor:
        return torch.as_tensor(self.index, dtype=torch.long, device=self.device)


class RowSource:
    """The rows of a CSR matrix or dense array, placed once, from which :class:`RowBatch` es are cut.

    On a CUDA device the matrix is copied there once when it takes at most
    :data:`DEVICE_MEMORY_SHARE` of the free device memory; otherwise (and on CPU, where
    the scipy arrays are used in place, without a copy) batches are cut on the host and
    each is moved to ``device`` as it is used.

    Parameters
    ----------
    matrix : csr_matrix or ndarray
        2-D; a CSR is brought to canonical form (sorted indices, no duplicates) first.
    device : torch.device
        Where the batches are wanted.
    """

    def __init__(self, matrix, device: torch.device):
        self.device = torch.device(device)
        self.is_sparse = sp.issparse(matrix)
        if self.is_sparse:
            matrix = sp.csr_matrix(matrix)
            if not matrix.has_canonical_format:
                matrix = matrix.copy()
                matrix.sum_duplicates()
        else:
            matrix = np.asarray(matrix)
            if matrix.ndim != 2:
                raise ValueError(f"matrix has shape {matrix.shape}; expected a 2-D array or sparse matrix")
        self.shape = tuple(int(n) for n in matrix.shape)
        self._whole: RowBatch | None = None
        self.nnz = int(matrix.nnz) if self.is_sparse else int(np.count_nonzero(matrix))
        self.placement = self.device if self.fits_on_device(matrix) else torch.device("cpu")
        if self.is_sparse:
            # on the host: zero-copy views of scipy's arrays (int32 indices stay int32 until a batch is cut)
            self.indptr = torch.from_numpy(matrix.indptr.astype(np.int64)).to(self.placement)
            self.indices = torch.from_numpy(matrix.indices).to(self.placement)
            self.data = torch.from_numpy(np.asarray(matrix.data, dtype=np.float32)).to(self.placement)
        else:
            self.array = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32)).to(self.placement)

    @property
    def on_device(self) -> bool:
        """Whether the whole matrix sits on the batches' device (always true on CPU)."""
        return self.placement == self.device

    def fits_on_device(self, matrix) -> bool:
        if self.device.type != "cuda":
            return True  # host memory: the arrays are used where they are
        free, _ = torch.cuda.mem_get_info(self.device)
        size = (matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes * 2) if self.is_sparse else matrix.nbytes
        return size <= DEVICE_MEMORY_SHARE * free

    def batch(self, index: np.ndarray) -> RowBatch:
        """The rows ``index`` (in that order) as a :class:`RowBatch` on the device.

        A batch of all rows in order (full-batch training asks for it every epoch) is cut once
        and returned again, with what it has cached (e.g. its :meth:`RowBatch.pattern`'s groupings).
        """
        index = np.asarray(index, dtype=np.int64)
        whole = len(index) == self.shape[0] and np.array_equal(index, np.arange(self.shape[0]))
        if whole and self._whole is not None:
            return self._whole
        batch = self._cut(index)
        if whole:
            self._whole = batch
        return batch

    def _cut(self, index: np.ndarray) -> RowBatch:
        rows = torch.from_numpy(index).to(self.placement)
        if not self.is_sparse:
            return RowBatch(index, self.array[rows].to(self.device, non_blocking=True), self.device)
        starts = self.indptr[rows]
        counts = self.indptr[rows + 1] - starts
        crow = torch.zeros(len(index) + 1, dtype=torch.int64, device=self.placement)
        torch.cumsum(counts, 0, out=crow[1:])
        total = int(crow[-1])
        positions = torch.repeat_interleave(starts - crow[:-1], counts, output_size=total)
        positions += torch.arange(total, device=self.placement)
        parts = CSRParts(crow, self.indices[positions].long(), self.data[positions], (len(index), self.shape[1]))
        if not self.on_device:
            parts = CSRParts(*(t.to(self.device, non_blocking=True) for t in parts[:3]), parts.shape)
        return RowBatch(index, parts, self.device)

    def batches(self, batch_size: int, shuffle: bool = False, rng: np.random.Generator | None = None,
                rows: np.ndarray | None = None) -> Iterator[RowBatch]:
        """:class:`RowBatch` es of ``batch_size`` rows (the last may be smaller); see :func:`iter_row_batches`."""
        for index in self.batch_indices(batch_size, shuffle, rng, rows):
            yield self.batch(index)

    def batch_indices(self, batch_size: int, shuffle: bool = False, rng: np.random.Generator | None = None,
                      rows: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """The row indices of each batch, in order (see :meth:`batches`)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}; expected an integer >= 1")
        order = np.arange(self.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
        if shuffle:
            if rng is None:
                raise ValueError("shuffle=True needs an rng (np.random.Generator) so that the order is reproducible")
            order = rng.permutation(order)
        for start in range(0, len(order), batch_size):
            yield order[start:start + batch_size]


def iter_row_batches(matrix, batch_size: int, device: torch.device, shuffle: bool = False,
                     rng: np.random.Generator | None = None, rows: np.ndarray | None = None) -> Iterator[RowBatch]:
    """Yield :class:`RowBatch` es of ``batch_size`` rows of ``matrix`` (a CSR, a dense array or a :class:`RowSource`).

    ``rows`` restricts the batches to those row indices (default: all rows);
    with ``shuffle`` their order is permuted by ``rng`` (vae_cf shuffles users every epoch).
    """
    source = matrix if isinstance(matrix, RowSource) else RowSource(matrix, device)
    return source.batches(batch_size, shuffle, rng, rows)
