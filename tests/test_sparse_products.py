"""aerec.sparse_products: blocked sparse products equal their dense formulations, values and gradients."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from aerec import sparse_products
from aerec.sparse_products import SparsePattern, pattern_matmul, sampled_dot


def random_pattern(n_rows, n_cols, density, seed):
    matrix = sp.random(n_rows, n_cols, density=density, format="csr", random_state=seed, dtype=np.float64)
    matrix.sort_indices()
    pattern = SparsePattern(torch.from_numpy(matrix.indptr.astype(np.int64)), torch.from_numpy(matrix.indices.astype(np.int64)),
                            matrix.shape)
    return matrix, pattern


def dense_of(matrix, values):
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    dense = torch.zeros(matrix.shape, dtype=values.dtype)
    return dense.index_put((torch.from_numpy(rows), torch.from_numpy(matrix.indices.astype(np.int64))), values)


@pytest.fixture(params=[None, 3 * 5 * 8], ids=["one block", "blocks of 3 table rows"])
def block_bytes(request, monkeypatch):
    """The default (tables here fit one block) and a budget of 3 float64 rows of width 5, many blocks."""
    if request.param is not None:
        monkeypatch.setattr(sparse_products, "BLOCK_BYTES", request.param)
        monkeypatch.setattr(sparse_products, "_OUTPUT_SHARE", 1e-9)  # as many blocks as the cache rule asks for
    return request.param


@pytest.mark.parametrize("shape,density", [((13, 17), 0.3), ((40, 7), 0.5), ((6, 50), 0.1)])
def test_pattern_matmul_and_sampled_dot_equal_the_dense_products(block_bytes, shape, density):
    matrix, pattern = random_pattern(*shape, density, seed=shape[0])
    generator = torch.Generator().manual_seed(1)
    values = torch.randn(pattern.nnz, dtype=torch.float64, generator=generator, requires_grad=True)
    table = torch.randn(shape[1], 5, dtype=torch.float64, generator=generator, requires_grad=True)
    a = torch.randn(shape[0], 5, dtype=torch.float64, generator=generator, requires_grad=True)
    if block_bytes is not None:
        assert len(pattern.blocks_for("columns", table)) > 1 and len(pattern.blocks_for("rows", a)) > 1

    out = pattern_matmul(pattern, values, table)
    dense = dense_of(matrix, values) @ table
    torch.testing.assert_close(out, dense)
    upstream = torch.randn(out.shape, dtype=torch.float64, generator=generator)
    ours = torch.autograd.grad(out, (values, table), upstream)
    theirs = torch.autograd.grad(dense, (values, table), upstream)
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine, reference)

    dots = sampled_dot(pattern, a, table)
    rows = np.repeat(np.arange(shape[0]), np.diff(matrix.indptr))
    reference = (a @ table.T)[torch.from_numpy(rows), torch.from_numpy(matrix.indices.astype(np.int64))]
    torch.testing.assert_close(dots, reference)
    upstream = torch.randn(dots.shape, dtype=torch.float64, generator=generator)
    for mine, expected in zip(torch.autograd.grad(dots, (a, table), upstream),
                              torch.autograd.grad(reference, (a, table), upstream)):
        torch.testing.assert_close(mine, expected)


def test_gradcheck_with_many_blocks(monkeypatch):
    monkeypatch.setattr(sparse_products, "BLOCK_BYTES", 2 * 3 * 8)
    monkeypatch.setattr(sparse_products, "_OUTPUT_SHARE", 1e-9)
    _, pattern = random_pattern(9, 11, 0.4, seed=5)
    generator = torch.Generator().manual_seed(2)
    values = torch.randn(pattern.nnz, dtype=torch.float64, generator=generator, requires_grad=True)
    table = torch.randn(11, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    a = torch.randn(9, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    assert len(pattern.blocks_for("columns", table)) == 6 and len(pattern.blocks_for("rows", a)) == 5
    assert torch.autograd.gradcheck(lambda v, t: pattern_matmul(pattern, v, t), (values, table))
    assert torch.autograd.gradcheck(lambda x, y: sampled_dot(pattern, x, y), (a, table))


def test_empty_pattern_and_empty_rows(block_bytes):
    empty = SparsePattern(torch.zeros(4, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), (3, 8))
    table = torch.randn(8, 5, dtype=torch.float64)
    assert torch.equal(pattern_matmul(empty, torch.zeros(0, dtype=torch.float64), table), torch.zeros(3, 5, dtype=torch.float64))
    assert sampled_dot(empty, torch.randn(3, 5, dtype=torch.float64), table).shape == (0,)


def test_bad_shapes_are_named():
    _, pattern = random_pattern(5, 6, 0.5, seed=0)
    with pytest.raises(ValueError, match=r"table has shape \(7, 2\); expected \(6, k\)"):
        pattern_matmul(pattern, torch.zeros(pattern.nnz), torch.zeros(7, 2))
    with pytest.raises(ValueError, match="values has shape"):
        pattern_matmul(pattern, torch.zeros(pattern.nnz + 1), torch.zeros(6, 2))
    with pytest.raises(ValueError, match="expected the same width"):
        sampled_dot(pattern, torch.zeros(5, 2), torch.zeros(6, 3))
    with pytest.raises(ValueError, match="by='diagonal'"):
        pattern.grouping("diagonal", 2)


def test_block_rows_follow_the_cache_budget_and_the_output_share():
    from aerec.sparse_products import block_rows_for

    table = torch.empty(30_000, 500)  # 60 MB: 15 blocks of 4 MiB (2,000 rows each) when the gather is long enough
    assert block_rows_for(table, n_bags=2_000, nnz=3_000_000) == 2_000
    assert block_rows_for(table, n_bags=20_000, nnz=1_000_000) == 30_000  # 1 / 32 of 1M rows: one block
    assert block_rows_for(torch.empty(1_000, 500), n_bags=10, nnz=10**7) == 1_000  # fits: one block
