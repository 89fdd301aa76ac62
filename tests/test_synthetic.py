import numpy as np
import pytest

from aerec.data.synthetic import zipf_interactions


def test_exact_count_canonical_and_reproducible():
    a = zipf_interactions(500, 300, 20_000, seed=3)
    b = zipf_interactions(500, 300, 20_000, seed=3)
    c = zipf_interactions(500, 300, 20_000, seed=4)
    assert a.shape == (500, 300) and a.nnz == 20_000 and a.matrix.has_canonical_format
    assert (a.matrix != b.matrix).nnz == 0 and (a.matrix != c.matrix).nnz > 0
    assert set(np.unique(a.matrix.data)) == {1.0}


def test_popularity_is_heavy_tailed_and_uniform_is_not():
    skewed = zipf_interactions(2000, 1000, 40_000, user_exponent=0.5, item_exponent=1.0, seed=0).matrix
    flat = zipf_interactions(2000, 1000, 40_000, user_exponent=0.0, item_exponent=0.0, seed=0).matrix
    item_counts = np.sort(np.bincount(skewed.indices, minlength=1000))[::-1]
    flat_counts = np.sort(np.bincount(flat.indices, minlength=1000))[::-1]
    # the 1% most popular items hold far more than 1% of the entries under the power law, about 1% when uniform
    assert item_counts[:10].sum() / skewed.nnz > 0.08
    assert flat_counts[:10].sum() / flat.nnz < 0.02
    user_counts = np.diff(skewed.indptr)
    assert user_counts.max() > 5 * np.median(user_counts)


def test_ratings_follow_movielens_shares():
    data = zipf_interactions(1000, 500, 50_000, ratings=True, seed=1)
    shares = np.bincount(data.matrix.data.astype(int), minlength=6)[1:] / data.nnz
    np.testing.assert_allclose(shares, [0.056, 0.108, 0.261, 0.349, 0.226], atol=0.01)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_users": 0}, "n_users=0; expected a positive integer"),
    ({"n_interactions": 2.5}, "n_interactions=2.5; expected a positive integer"),
    ({"item_exponent": -1}, r"item_exponent=-1; expected a number in \[0, 10\)"),
    ({"n_interactions": 6}, "n_interactions=6 for a 3 x 3 matrix; expected at most 4"),
])
def test_bad_arguments_are_named(kwargs, message):
    arguments = {"n_users": 3, "n_items": 3, "n_interactions": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        zipf_interactions(**arguments)
