"""The one contract suite every registered model joins (implicit's recommender_base_test habit).

Each model in ``aerec.models.MODELS`` must appear in ``FAST_PARAMS``: a new
model that is not added here fails ``test_every_registered_model_is_covered``.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from aerec.data import strong_generalization
from aerec.evaluation import evaluate_ranking
from aerec.models import MODELS, EASE, NotFittedError, make_model
from tests.conftest import random_implicit_csr

FAST_PARAMS = {
    "popularity": {},
    "ease": {"l2": 50.0},
    "dlae": {"l2": 50.0, "dropout": 0.3},
    "edlae": {"l2": 50.0, "dropout": 0.3},
    "als": {"factors": 16, "iterations": 5, "regularization": 1.0},
    "bpr": {"factors": 16, "iterations": 20, "fold_in_steps": 30},
    "bias": {},
    "mult_vae": {"hidden": 32, "latent": 8, "epochs": 3, "batch_size": 32},
    "mult_dae": {"hidden": 32, "latent": 8, "epochs": 3, "batch_size": 32},
    "recvae": {"hidden": 16, "latent": 8, "epochs": 2, "batch_size": 32, "layers": 2},
    "cdae": {"hidden": 8, "epochs": 5, "batch_size": 16, "fold_in_steps": 10},
    "autorec": {"hidden": 16, "epochs": 20},
    "cfn": {"hidden": 16, "epochs": 5, "batch_size": 16},
    "autoencoder": {"hidden": (8,), "loss": "multinomial", "epochs": 5, "batch_size": 16},
}


def test_every_registered_model_is_covered():
    assert set(FAST_PARAMS) == set(MODELS)


@pytest.fixture(scope="module")
def train():
    return random_implicit_csr(n_users=80, n_items=50, density=0.2, seed=1)


@pytest.fixture(scope="module", params=sorted(FAST_PARAMS))
def fitted(request, train):
    model = make_model(request.param, **FAST_PARAMS[request.param])
    assert model.fit(train) is model  # fit returns self
    return model


def test_score_shape_and_dtype(fitted, train):
    scores = fitted.score(train[:7])
    assert scores.shape == (7, train.shape[1]) and scores.dtype == np.float32 and np.isfinite(scores).all()


def test_recommend_is_sorted_and_excludes_the_rows_items(fitted, train):
    rows = train[:10]
    ids, scores = fitted.recommend(rows, n=5)
    assert ids.shape == scores.shape == (10, 5)
    assert np.all(np.diff(scores, axis=1) <= 0)
    for r in range(10):
        assert not set(ids[r]) & set(rows[r].indices)
    full = fitted.score(rows)
    np.testing.assert_allclose(np.take_along_axis(full, ids, axis=1), scores, rtol=1e-5, atol=1e-5)


def test_recommend_without_filter_can_return_known_items(fitted, train):
    rows = train[:10]
    ids, _ = fitted.recommend(rows, n=train.shape[1], filter_already_liked_items=False)
    assert (ids >= 0).all() and all(set(rows[r].indices) <= set(ids[r]) for r in range(10))


def test_fewer_items_left_than_n_gives_minus_one(fitted, train):
    row = sp.csr_matrix(np.ones((1, train.shape[1]), dtype=np.float32))
    row[0, 3] = 0
    row.eliminate_zeros()
    ids, scores = fitted.recommend(row, n=4)
    assert ids[0, 0] == 3 and list(ids[0, 1:]) == [-1, -1, -1] and np.isneginf(scores[0, 1:]).all()


def test_users_unseen_in_training_are_folded_in(fitted, train):
    new_users = random_implicit_csr(n_users=5, n_items=train.shape[1], density=0.3, seed=99)
    ids, scores = fitted.recommend(new_users, n=3)
    assert ids.shape == (5, 3) and (ids >= 0).all() and np.isfinite(scores).all()
    empty = sp.csr_matrix((2, train.shape[1]), dtype=np.float32)
    assert np.isfinite(fitted.score(empty)).all()


def test_bad_calls_are_value_errors_naming_the_value(fitted, train):
    with pytest.raises(ValueError, match=f"n={train.shape[1] + 1}; expected an integer from 1"):
        fitted.recommend(train[:2], n=train.shape[1] + 1)
    with pytest.raises(ValueError, match="n=0"):
        fitted.recommend(train[:2], n=0)
    with pytest.raises(ValueError, match="user_items has 49 columns; expected 50"):
        fitted.score(train[:2, :49])
    with pytest.raises(TypeError, match="scipy.sparse"):
        fitted.score(train[:2].toarray())


def test_unfitted_model_is_a_named_error(fitted, train):
    fresh = type(fitted)(**fitted.get_params())
    with pytest.raises(NotFittedError, match="not fitted yet"):
        fresh.score(train[:1])


def test_same_seed_same_scores(fitted, train):
    again = type(fitted)(**fitted.get_params()).fit(train)
    np.testing.assert_allclose(again.score(train[:5]), fitted.score(train[:5]), rtol=1e-5, atol=1e-6)


def test_unknown_model_and_parameters():
    with pytest.raises(ValueError, match="unknown model 'vae'"):
        make_model("vae")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['lambda'\] for model 'ease'"):
        make_model("ease", **{"lambda": 3})
    with pytest.raises(ValueError, match="l2=-1"):
        make_model("ease", l2=-1)
    with pytest.raises(ValueError, match="factors=2.5; expected a positive integer"):
        make_model("als", factors=2.5)


def test_fit_refuses_an_empty_matrix():
    with pytest.raises(ValueError, match="no interactions"):
        make_model("popularity").fit(sp.csr_matrix((3, 4), dtype=np.float32))


# -- EASE against Steck's listing -------------------------------------------------------
def test_ease_equals_the_papers_closed_form(train):
    X = train.toarray().astype(np.float64)
    G = X.T @ X
    G[np.diag_indices_from(G)] += 50.0
    P = np.linalg.inv(G)
    B = P / (-np.diag(P))
    B[np.diag_indices_from(B)] = 0.0
    model = EASE(l2=50.0, device="cpu").fit(train)
    np.testing.assert_allclose(model.weights_.numpy(), B, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.score(train[:4]), X[:4] @ B, rtol=1e-4, atol=1e-5)


def test_ease_refuses_a_catalogue_too_large_for_memory(monkeypatch):
    import aerec.core.closed_form

    monkeypatch.setattr(aerec.core.closed_form, "available_memory_bytes", lambda: 2**30)
    too_large = random_implicit_csr(5, 20_000, density=0.001)
    with pytest.raises(MemoryError, match=r"EASE on 20000 items needs about 8\.9 GiB .* in float64; 1\.0 GiB is "
                                          r"available\. precision='float32' works in place in about 1\.5 GiB"):
        EASE().fit(too_large)
    with pytest.raises(MemoryError, match=r"needs about 1\.5 GiB .* in float32; 1\.0 GiB is available\. filter rare"):
        EASE(precision="float32").fit(too_large)


# -- every model beats popularity on real held-out users ------------------------------------------
@pytest.fixture(scope="module")
def ml100k_strong(ml100k):
    return strong_generalization(ml100k, n_heldout=100, seed=98765)


# bias and AutoRec are rating models: on binarised data every observed entry is 1, which they learn to predict
RANKING_MODELS = sorted(set(FAST_PARAMS) - {"popularity", "bias", "autorec", "cfn"})


@pytest.mark.parametrize("name", RANKING_MODELS)
def test_beats_popularity_on_ml100k_heldout_users(ml100k_strong, name):
    split = ml100k_strong
    params = {"ease": {"l2": 500.0}, "dlae": {"l2": 200.0}, "edlae": {"l2": 200.0}, "als": {"factors": 64, "regularization": 5.0}, "bpr": {"factors": 64},
              "mult_vae": {"epochs": 5, "batch_size": 100, "lr": 3e-3},
              "mult_dae": {"epochs": 5, "batch_size": 100, "lr": 3e-3}, "cdae": {"epochs": 15},
              "recvae": {"epochs": 5, "batch_size": 100, "lr": 3e-3, "hidden": 200, "latent": 64},
              "autoencoder": {"hidden": (100,), "loss": "multinomial", "epochs": 10, "batch_size": 100, "lr": 3e-3}}[name]

    def ndcg(model):
        fitted = model.fit(split.train)
        result = evaluate_ranking(fitted, split.test_fold_in.matrix, split.test_heldout.matrix, ks=(100,), metrics=("ndcg",))
        return result.metrics["ndcg@100"]

    assert ndcg(make_model(name, **params)) > ndcg(make_model("popularity")) + 0.05


def test_a_saved_model_loads_back_with_equal_scores(fitted, train, tmp_path):
    import aerec

    aerec.save(fitted, tmp_path / "model", metadata={"note": "contract"})
    loaded = aerec.load(tmp_path / "model")
    assert type(loaded) is type(fitted) and loaded.get_params() == fitted.get_params()
    np.testing.assert_array_equal(loaded.score(train[:9]), fitted.score(train[:9]))
    np.testing.assert_array_equal(loaded.recommend(train[:9], n=5)[0], fitted.recommend(train[:9], n=5)[0])
