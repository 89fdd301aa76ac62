"""RowSource / RowBatch: batches cut from tensors equal scipy's row slices, in every view."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from aerec.data.batching import RowBatch, RowSource, iter_row_batches

CPU = torch.device("cpu")


def matrix_with_empty_rows():
    matrix = sp.random(40, 25, density=0.2, format="csr", random_state=0, dtype=np.float32)
    keep = np.ones(40, dtype=np.float32)
    keep[[3, 17]] = 0.0  # two rows without entries
    matrix = sp.csr_matrix(sp.diags(keep) @ matrix)
    matrix.eliminate_zeros()
    matrix.sum_duplicates()  # canonical, as Interactions keeps it
    return matrix


def test_a_cut_batch_equals_the_scipy_rows_in_every_view():
    matrix = matrix_with_empty_rows()
    source = RowSource(matrix, CPU)
    index = np.array([17, 5, 3, 39, 0, 5])  # any order, repeats and empty rows
    batch = source.batch(index)
    expected = matrix[index].toarray()
    np.testing.assert_array_equal(batch.dense.numpy(), expected)
    np.testing.assert_array_equal(batch.sparse.to_dense().numpy(), expected)
    np.testing.assert_array_equal(batch.csr.to_dense().numpy(), expected)
    np.testing.assert_array_equal(batch.observed.numpy(), expected != 0)
    assert batch.sparse.is_coalesced() and batch.index_tensor.tolist() == index.tolist()
    # the same views from a batch built on a scipy slice
    reference = RowBatch(index, matrix[index], CPU)
    np.testing.assert_array_equal(reference.dense.numpy(), expected)
    torch.testing.assert_close(reference.sparse.to_dense(), batch.sparse.to_dense())


def test_batches_cover_the_rows_once_in_the_seeded_order():
    matrix = matrix_with_empty_rows()
    order = np.random.default_rng(5).permutation(40)
    batches = list(RowSource(matrix, CPU).batches(16, shuffle=True, rng=np.random.default_rng(5)))
    assert [len(b) for b in batches] == [16, 16, 8]
    np.testing.assert_array_equal(np.concatenate([b.index for b in batches]), order)
    stacked = np.vstack([b.dense.numpy() for b in batches])
    np.testing.assert_array_equal(stacked, matrix[order].toarray())


def test_a_dense_source_and_a_non_canonical_csr():
    array = np.arange(12, dtype=np.float64).reshape(4, 3)
    (batch,) = iter_row_batches(array, 4, CPU, rows=np.array([2, 0]))
    np.testing.assert_array_equal(batch.dense.numpy(), array[[2, 0]].astype(np.float32))
    assert not batch.is_sparse and batch.observed.all()
    with pytest.raises(TypeError, match="a dense batch has no sparse view"):
        batch.sparse
    duplicated = sp.csr_matrix((np.array([1.0, 2.0], dtype=np.float32), np.array([1, 1]), np.array([0, 2, 2])), shape=(2, 3))
    (batch,) = iter_row_batches(duplicated, 2, CPU)
    np.testing.assert_array_equal(batch.dense.numpy(), [[0, 3, 0], [0, 0, 0]])  # summed, as scipy would


def test_on_the_host_the_scipy_arrays_are_used_without_a_copy():
    matrix = matrix_with_empty_rows()
    assert matrix.has_canonical_format
    source = RowSource(matrix, CPU)
    assert source.on_device
    assert source.indices.data_ptr() == matrix.indices.ctypes.data
    assert source.data.data_ptr() == matrix.data.ctypes.data
