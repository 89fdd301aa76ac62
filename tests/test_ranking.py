"""Tests for aerec.ranking: exclusion, ordering, bounds and unavailable slots."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from aerec.ranking import batch_rows_for_budget, mark_unavailable, stream_top_n, top_n


def random_case(seed, n_users=7, n_items=15, density=0.3):
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((n_users, n_items))
    exclude = sp.random(n_users, n_items, density=density, format="csr", random_state=rng)
    return scores, exclude


@pytest.mark.parametrize("seed", range(5))
def test_order_matches_numpy_argsort(seed):
    scores, _ = random_case(seed)
    ids, top = top_n(torch.from_numpy(scores.copy()), None, 6)
    expected = np.argsort(-scores, axis=1)[:, :6]
    np.testing.assert_array_equal(ids.numpy(), expected)
    np.testing.assert_array_equal(top.numpy(), np.take_along_axis(scores, expected, axis=1))
    assert ids.dtype == torch.int64


@pytest.mark.parametrize("seed", range(5))
def test_excluded_items_are_never_returned_and_the_rest_keep_their_order(seed):
    scores, exclude = random_case(seed)
    masked = np.where(exclude.toarray() != 0, -np.inf, scores)
    n = 15 - int(np.diff(exclude.indptr).max())  # every user still has n allowed items
    ids, top = top_n(torch.from_numpy(scores.copy()), exclude, n)
    np.testing.assert_array_equal(ids.numpy(), np.argsort(-masked, axis=1, kind="stable")[:, :n])
    for user in range(scores.shape[0]):
        assert not set(ids[user].tolist()) & set(exclude[user].indices.tolist())
    assert np.isfinite(top.numpy()).all()


def test_explicit_zeros_in_exclude_are_excluded():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0]])
    # Item 0 is stored with value 0 (e.g. a rating of 0): still excluded.
    exclude = sp.csr_matrix((np.array([0.0]), np.array([0]), np.array([0, 1])), shape=(1, 4))
    assert exclude.nnz == 1
    ids, top = top_n(scores, exclude, 2)
    assert ids.tolist() == [[1, 2]]
    assert top.tolist() == [[4.0, 3.0]]


def test_scores_are_masked_in_place():
    scores = torch.tensor([[1.0, 2.0, 3.0]])
    top_n(scores, sp.csr_matrix(np.array([[0, 0, 1]])), 1)
    assert scores.tolist() == [[1.0, 2.0, -np.inf]]


def test_rows_with_too_few_allowed_items_end_in_minus_inf():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.4, 0.3, 0.2, 0.1]])
    exclude = sp.csr_matrix(np.array([[0, 1, 1, 0], [0, 0, 0, 0]]))
    ids, top = top_n(scores, exclude, 3)
    # user 0 has only items 3 (0.3) and 0 (0.1) left; the third slot is an excluded item at -inf
    assert ids[0, :2].tolist() == [3, 0]
    assert top[0, 2] == -np.inf
    marked = mark_unavailable(ids, top)
    assert marked.tolist() == [[3, 0, -1], [0, 1, 2]]
    assert marked.dtype == torch.int64
    # the numpy flavour gives the same
    np.testing.assert_array_equal(mark_unavailable(ids.numpy(), top.numpy()), marked.numpy())


def test_mark_unavailable_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"ids shape \(1, 2\) differs from scores shape \(1, 3\)"):
        mark_unavailable(torch.zeros(1, 2, dtype=torch.int64), torch.zeros(1, 3))


@pytest.mark.parametrize("n", [0, -1, 5])
def test_n_out_of_range(n):
    with pytest.raises(ValueError, match=rf"n={n} is out of range; expected an integer >= 1 and <= 4"):
        top_n(torch.zeros(2, 4), None, n)


@pytest.mark.parametrize("n", [2.0, True, "2", None])
def test_n_not_an_integer(n):
    with pytest.raises(ValueError, match=r"n=.* is not valid; expected an integer >= 1"):
        top_n(torch.zeros(2, 4), None, n)


def test_n_accepts_numpy_integers_and_the_full_catalogue():
    ids, _ = top_n(torch.tensor([[0.0, 2.0, 1.0]]), None, np.int64(3))
    assert ids.tolist() == [[1, 2, 0]]


def test_exclude_shape_mismatch():
    with pytest.raises(ValueError, match=r"exclude has shape \(2, 3\); expected the scores' shape \(2, 4\)"):
        top_n(torch.zeros(2, 4), sp.csr_matrix((2, 3)), 1)


def test_exclude_must_be_sparse():
    with pytest.raises(TypeError, match="exclude must be a scipy sparse matrix or None, got ndarray"):
        top_n(torch.zeros(2, 4), np.zeros((2, 4)), 1)


def test_bad_scores():
    with pytest.raises(ValueError, match=r"scores must be 2-D \(batch, n_items\), got shape \(4,\)"):
        top_n(torch.zeros(4), None, 1)
    with pytest.raises(TypeError, match="floating-point tensor, got dtype torch.int64"):
        top_n(torch.zeros(2, 4, dtype=torch.int64), None, 1)
    with pytest.raises(ValueError, match=r"scores contain NaN in 1 row\(s\)"):
        top_n(torch.tensor([[0.0, float("nan")]]), None, 1)
    with pytest.raises(TypeError, match="scores must be a torch.Tensor, got ndarray"):
        top_n(np.zeros((2, 4)), None, 1)


def test_csr_array_exclude_is_accepted():
    ids, _ = top_n(torch.tensor([[3.0, 2.0, 1.0]]), sp.csr_array(np.array([[1, 0, 0]])), 2)
    assert ids.tolist() == [[1, 2]]


# -- streaming top-N in bounded batches ----------------------------------------------------------
@pytest.mark.parametrize("batch_rows, memory_budget", [(1, None), (3, None), (None, 2 * 4 * 12 * 4), (None, 1)])
def test_stream_top_n_equals_one_big_top_n(batch_rows, memory_budget):
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.standard_normal((10, 12)).astype(np.float32))
    exclude = sp.random(10, 12, density=0.3, format="lil", random_state=1)
    exclude[4, :] = 1.0  # a row with every item excluded
    exclude = sp.csr_matrix(exclude)
    expected_ids, expected_scores = top_n(scores.clone(), exclude, 5)
    expected_ids = mark_unavailable(expected_ids, expected_scores).numpy()
    seen_batches = []

    def score_rows(rows):
        seen_batches.append(len(rows))
        return scores[torch.from_numpy(rows)].clone()

    kwargs = {"batch_rows": batch_rows} if batch_rows else {"memory_budget": memory_budget}
    parts = list(stream_top_n(score_rows, exclude, 5, **kwargs))
    np.testing.assert_array_equal(np.concatenate([rows for rows, _, _ in parts]), np.arange(10))
    np.testing.assert_array_equal(np.concatenate([ids for _, ids, _ in parts]), expected_ids)
    np.testing.assert_array_equal(np.concatenate([s for _, _, s in parts]), expected_scores.numpy())
    assert (np.concatenate([ids for _, ids, _ in parts])[4] == -1).all()
    expected_batch = batch_rows or max(1, memory_budget // (2 * 4 * 12))
    assert max(seen_batches) == expected_batch and sum(seen_batches) == 10


def test_model_recommend_streams_in_budgeted_batches():
    from aerec.models import make_model

    rows = sp.random(50, 30, density=0.2, format="csr", random_state=2)
    rows.data[:] = 1.0
    model = make_model("ease", l2=10.0).fit(rows)
    whole_ids, whole_scores = model.recommend(rows, n=7)
    parts = list(model.recommend_batches(rows, n=7, batch_rows=8))
    assert [len(r) for r, _, _ in parts] == [8, 8, 8, 8, 8, 8, 2]
    np.testing.assert_array_equal(np.concatenate([ids for _, ids, _ in parts]), whole_ids)
    np.testing.assert_allclose(np.concatenate([s for _, _, s in parts]), whole_scores)
    assert batch_rows_for_budget(30, 2 * 4 * 30 * 8) == 8


def test_nan_at_an_excluded_item_is_ignored_and_anywhere_else_is_refused():
    scores = torch.tensor([[0.5, float("nan"), 0.1], [0.2, 0.3, float("nan")]])
    exclude = sp.csr_matrix(np.array([[0, 1, 0], [0, 0, 0]], dtype=np.float32))
    with pytest.raises(ValueError, match=r"scores contain NaN in 1 row\(s\)"):
        top_n(scores.clone(), exclude, 1)
    exclude = sp.csr_matrix(np.array([[0, 1, 0], [0, 0, 1]], dtype=np.float32))
    ids, _ = top_n(scores.clone(), exclude, 1)
    assert ids[:, 0].tolist() == [0, 1]


@pytest.mark.parametrize("kind", ["normal", "ties", "mostly_excluded", "float64"])
def test_group_maxima_selection_equals_topk(kind):
    from aerec.ranking import group_size, select_top_n

    grouped = 0
    for trial in range(60):
        generator = torch.Generator().manual_seed(trial)
        rows, width = int(torch.randint(1, 30, (1,), generator=generator)), int(torch.randint(50, 5000, (1,), generator=generator))
        n = min(int(torch.randint(1, 40, (1,), generator=generator)), width)
        scores = torch.randn(rows, width, generator=generator)
        if kind == "ties":
            scores = torch.randint(0, 4, (rows, width), generator=generator).float()
        elif kind == "mostly_excluded":
            scores[torch.rand(rows, width, generator=generator) < 0.97] = -torch.inf
        elif kind == "float64":
            scores = scores.double()
        grouped += group_size(width, n) is not None
        values, ids = select_top_n(scores.clone(), n)
        expected, _ = torch.topk(scores, n, dim=1)
        assert torch.equal(values, expected)  # the same scores, best first (at ties any of the equal items)
        assert torch.equal(scores.gather(1, ids), values)
        assert all(len(set(row.tolist())) == n for row in ids)
    assert grouped > 30  # most cases took the grouped path


def test_group_maxima_selection_reports_nan_like_topk():
    scores = torch.randn(3, 4000)
    scores[1, 3999] = float("nan")  # in the items past the last whole group
    with pytest.raises(ValueError, match="NaN in 1 row"):
        top_n(scores, None, 10)
    scores[1, 3999], scores[2, 17] = 0.0, float("nan")
    with pytest.raises(ValueError, match="NaN in 1 row"):
        top_n(scores, None, 10)
