"""Products of a sparse pattern with dense tables, costing time in proportion to the pattern's stored entries.

For a pattern of stored positions ``(r, c)`` of an ``(n_rows, n_cols)`` matrix:

- :func:`pattern_matmul`: ``X @ T`` where ``X`` holds ``values`` at the pattern (``T`` is
  ``(n_cols, k)``): each row sums the table rows of its stored columns, weighted;
- :func:`sampled_dot`: ``A[r] . B[c]`` at every stored position (``A`` is ``(n_rows, k)``,
  ``B`` is ``(n_cols, k)``): the product ``A @ B.T`` at the pattern only.

Both are autograd functions whose backward passes are again one of the two, so forward and
backward cost ``stored entries x k``. Each gathers whole table rows by index
(``embedding_bag``, ``sampled_addmm``); when the table is larger than the CPU's cache, those
gathers miss it at every entry and get 3x slower, which made AutoRec's cost grow faster than its
data. So on the CPU the entries are regrouped once per pattern (:meth:`SparsePattern.grouping`)
into blocks that each read one cache-sized slice of the table (:data:`BLOCK_BYTES`), and the
blocks' partial results are added. On a GPU the table is read whole.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["BLOCK_BYTES", "SparsePattern", "pattern_matmul", "sampled_dot"]

#: Bytes of a table one block reads on the CPU: 4 MiB gathered 3.2x faster than one 60 MB table
#: (3M entries x 500 floats, one core of this project's AMD EPYC; 8 MiB: 3.0x, 16 MiB: 1.6x).
BLOCK_BYTES = 4 * 2**20


@dataclass
class Block:
    """The entries of a pattern that read table rows ``lo:hi``, grouped by the index they are summed into."""

    lo: int
    hi: int
    index: torch.Tensor  # table row - lo, per entry
    offsets: torch.Tensor  # where each bag starts among the entries (n_bags)
    order: torch.Tensor | None  # the entries' positions in the pattern's (CSR) order; None: all, in that order
    _csr: torch.Tensor | None = None

    def csr(self, dtype: torch.dtype) -> torch.Tensor:
        """The block as a sparse CSR tensor (bags as rows) whose values are not read."""
        if self._csr is None or self._csr.dtype != dtype:
            crow = torch.cat([self.offsets, self.offsets.new_tensor([self.index.numel()])])
            values = torch.zeros(self.index.numel(), dtype=dtype, device=self.index.device)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                self._csr = torch.sparse_csr_tensor(crow, self.index, values, (len(self.offsets), self.hi - self.lo),
                                                    check_invariants=False)
        return self._csr


class SparsePattern:
    """The stored positions of a CSR matrix, with cached regroupings of its entries for blocked gathers.

    Parameters
    ----------
    crow, col : torch.Tensor
        CSR row pointers and column indices (int64, columns sorted within each row).
    shape : (int, int)
    """

    def __init__(self, crow: torch.Tensor, col: torch.Tensor, shape: tuple[int, int]):
        self.crow, self.col, self.shape = crow, col, (int(shape[0]), int(shape[1]))
        self._row_of_entry: torch.Tensor | None = None
        self._groupings: dict[tuple[str, int], list[Block]] = {}

    @property
    def nnz(self) -> int:
        return self.col.numel()

    @property
    def device(self) -> torch.device:
        return self.col.device

    @property
    def row_of_entry(self) -> torch.Tensor:
        if self._row_of_entry is None:
            counts = self.crow[1:] - self.crow[:-1]
            self._row_of_entry = torch.repeat_interleave(torch.arange(self.shape[0], device=self.device), counts,
                                                         output_size=self.nnz)
        return self._row_of_entry

    def blocks_for(self, by: str, table: torch.Tensor, sums: bool = True) -> list[Block]:
        """The grouping for a gather from ``table`` (indexed by column for ``by="columns"``, by row for "rows").

        ``sums=False``: for :func:`sampled_dot`'s forward product, which has no partial sums to add.
        """
        n_bags = (self.shape[0] if by == "columns" else self.shape[1]) if sums else 0
        return self.grouping(by, block_rows_for(table, n_bags, self.nnz))

    def grouping(self, by: str, block_rows: int) -> list[Block]:
        """The entries in blocks of ``block_rows`` table rows.

        ``by="columns"``: the table is indexed by column and the sums are per row (``X @ T``);
        ``by="rows"``: indexed by row, sums per column (``X.T @ T``).
        """
        key = (by, int(block_rows))
        if key not in self._groupings:
            self._groupings[key] = self._group(by, int(block_rows))
        return self._groupings[key]

    def _group(self, by: str, block_rows: int) -> list[Block]:
        n_rows, n_cols = self.shape
        if by == "columns":
            gathered, n_table, n_bags = self.col, n_cols, n_rows
            if n_table <= block_rows:  # one block: the pattern itself
                return [Block(0, n_table, self.col, self.crow[:-1], None)]
            order = torch.argsort(self.col // block_rows, stable=True)  # rows stay ascending within a block
            bags = self.row_of_entry
        elif by == "rows":
            gathered, n_table, n_bags = self.row_of_entry, n_rows, n_cols
            # by (row block, column), rows ascending within: CSR order sorted stably
            order = torch.argsort(torch.div(gathered, block_rows, rounding_mode="floor") * n_cols + self.col,
                                  stable=True)
            bags = self.col
        else:
            raise ValueError(f"by={by!r}; expected 'columns' or 'rows'")
        sorted_gathered, sorted_bags = gathered[order], bags[order]
        block_of = torch.div(sorted_gathered, block_rows, rounding_mode="floor")
        per_block = torch.bincount(block_of, minlength=-(-n_table // block_rows))
        # int32 where it fits: the kept indices take half the memory (embedding_bag and indexing accept them)
        small = max(self.nnz, n_table, n_bags) < 2**31
        index_type = torch.int32 if small else torch.int64
        local = (sorted_gathered - block_of * block_rows).to(index_type)
        order = order.to(index_type)
        blocks, start = [], 0
        for number, count in enumerate(per_block.tolist()):
            stop = start + count
            lo, hi = number * block_rows, min(n_table, (number + 1) * block_rows)
            counts = torch.bincount(sorted_bags[start:stop], minlength=n_bags)
            blocks.append(Block(lo, hi, local[start:stop], (torch.cumsum(counts, 0) - counts).to(index_type),
                                order[start:stop]))
            start = stop
        return blocks


def block_rows_for(table: torch.Tensor, n_bags: int, nnz: int) -> int:
    """Table rows per block for a gather of ``nnz`` entries from ``table`` into ``n_bags`` sums (0: no sums).

    On the CPU: blocks of :data:`BLOCK_BYTES`, but no more blocks than ``nnz / (32 n_bags)``,
    since each block writes and adds its own ``(n_bags, k)`` partial result (with more, U-AutoRec's
    weight gradient on a 20,000-item catalogue got slower, not faster). Elsewhere: the whole table.
    """
    rows = max(1, table.shape[0])
    if table.device.type != "cpu":
        return rows
    n_blocks = -(-rows * table.shape[1] * table.element_size() // BLOCK_BYTES)
    if n_bags:
        n_blocks = max(1, min(n_blocks, int(nnz / (_OUTPUT_SHARE * n_bags))))
    return -(-rows // n_blocks)


#: A gather's blocks may write at most 1/32 as many partial-result rows as it gathers table rows.
_OUTPUT_SHARE = 32


def gather_sum(blocks: list[Block], table: torch.Tensor, weights: torch.Tensor, n_bags: int) -> torch.Tensor:
    """``out[b] = sum over the entries e of bag b of weights[e] * table[index of e]``, shape (n_bags, k)."""
    out = None
    table = table.contiguous()
    for block in blocks:
        if block.index.numel() == 0:
            continue
        w = weights if block.order is None else weights[block.order]
        part = F.embedding_bag(block.index, table[block.lo:block.hi], block.offsets, mode="sum",
                               per_sample_weights=w.to(table.dtype))
        out = part if out is None else out.add_(part)
    return out if out is not None else table.new_zeros((n_bags, table.shape[1]))


def blocked_sampled_dot(blocks: list[Block], a: torch.Tensor, b: torch.Tensor, nnz: int) -> torch.Tensor:
    """``a[r] . b[c]`` for every entry, in the pattern's order (``blocks`` grouped by columns)."""
    a, b = a.contiguous(), b.contiguous()
    if len(blocks) == 1 and blocks[0].order is None:
        block = blocks[0]
        return torch.sparse.sampled_addmm(block.csr(a.dtype), a, b.t(), beta=0.0).values()
    out = a.new_empty(nnz)
    for block in blocks:
        if block.index.numel():
            out[block.order] = torch.sparse.sampled_addmm(block.csr(a.dtype), a, b[block.lo:block.hi].t(),
                                                          beta=0.0).values()
    return out


class _PatternMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: torch.Tensor, table: torch.Tensor, pattern: SparsePattern) -> torch.Tensor:
        ctx.save_for_backward(values, table)
        ctx.pattern = pattern
        return gather_sum(pattern.blocks_for("columns", table), table, values, pattern.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        values, table = ctx.saved_tensors
        pattern = ctx.pattern
        grad = grad.contiguous()
        grad_values = grad_table = None
        if ctx.needs_input_grad[0]:  # d/dX at (r, c): grad[r] . table[c]
            grad_values = blocked_sampled_dot(pattern.blocks_for("columns", table, sums=False), grad, table,
                                              pattern.nnz).to(values.dtype)
        if ctx.needs_input_grad[1]:  # X.T @ grad
            grad_table = gather_sum(pattern.blocks_for("rows", grad), grad, values, pattern.shape[1])
        return grad_values, grad_table, None


class _SampledDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, pattern: SparsePattern) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        ctx.pattern = pattern
        return blocked_sampled_dot(pattern.blocks_for("columns", b, sums=False), a, b, pattern.nnz)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, b = ctx.saved_tensors
        pattern = ctx.pattern
        grad = grad.contiguous()
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:  # grad_a[r] = sum_c g_rc b[c]
            grad_a = gather_sum(pattern.blocks_for("columns", b), b, grad, pattern.shape[0])
        if ctx.needs_input_grad[1]:  # grad_b[c] = sum_r g_rc a[r]
            grad_b = gather_sum(pattern.blocks_for("rows", a), a, grad, pattern.shape[1])
        return grad_a, grad_b, None


def pattern_matmul(pattern: SparsePattern, values: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``X @ table`` of shape (n_rows, k), ``X`` holding ``values`` (CSR order) at ``pattern``; differentiable."""
    _check_table("table", table, pattern.shape[1])
    if values.shape != (pattern.nnz,):
        raise ValueError(f"values has shape {tuple(values.shape)}; expected ({pattern.nnz},), one per stored entry")
    return _PatternMatmul.apply(values, table, pattern)


def sampled_dot(pattern: SparsePattern, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a @ b.T)`` at the stored entries of ``pattern`` only, in CSR order, shape (nnz,); differentiable."""
    _check_table("a", a, pattern.shape[0])
    _check_table("b", b, pattern.shape[1])
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a has {a.shape[1]} columns and b {b.shape[1]}; expected the same width")
    return _SampledDot.apply(a, b, pattern)


def _check_table(name: str, table: torch.Tensor, rows: int) -> None:
    if table.ndim != 2 or table.shape[0] != rows:
        raise ValueError(f"{name} has shape {tuple(table.shape)}; expected ({rows}, k)")
