"""DLAE and EDLAE against the functions of Steck's notebook (hasteck/EDLAE_NeurIPS2020), copied below.

The notebook's functions are kept as written (numpy, items x items products), with two
changes: the random start is passed in (aerec draws it from its own seeded generator) and the
prints are gone. aerec's reordered float64 iterations must give the same matrices.
"""

from __future__ import annotations

from copy import deepcopy

import numpy as np
import pytest
import torch

from aerec.models import DLAE, EASE, EDLAE, make_model
from tests.conftest import random_implicit_csr


# -- the notebook's functions ---------------------------------------------------------------------------
def learn_EDLAE_fullrank(pdrop, L2const, XtX, XtXdiag, ii_diag):
    XtX[ii_diag] = XtXdiag + L2const + XtXdiag * pdrop / (1.0 - pdrop)
    BB = np.linalg.inv(XtX)
    BB /= -np.diag(BB)
    BB[ii_diag] = 0.0
    return BB


def learn_EDLAE_analytic(pdrop, L2const, omega, hidden_dim, train_epochs, UU, XtX, XtXdiag, ii_diag):
    OmegaDiag = L2const + XtXdiag * pdrop / (1.0 - pdrop) + omega
    XtX[ii_diag] = XtXdiag + L2const + XtXdiag * pdrop / (1.0 - pdrop)
    PP = np.linalg.inv(XtX)
    betaVec = np.zeros(XtX.shape[0])
    gammaVec = np.zeros(XtX.shape[0])
    for itercnt in range(train_epochs):
        XtX[ii_diag] = XtXdiag + L2const + XtXdiag * pdrop / (1.0 - pdrop) + OmegaDiag
        HH = UU.T.dot(XtX).dot(UU)
        HH = np.linalg.inv(HH).dot(UU.T)
        XtX[ii_diag] = XtXdiag
        GG = XtX * (1.0 + betaVec)
        GG[ii_diag] += OmegaDiag * (betaVec - gammaVec)
        VVt = HH.dot(GG)
        HH = VVt.dot(VVt.T)
        HH = np.linalg.inv(HH)
        HH = VVt.T.dot(HH)
        XtX[ii_diag] = XtXdiag
        UU = XtX * (1.0 + betaVec)
        UU[ii_diag] += OmegaDiag * (betaVec - gammaVec)
        UU = UU.dot(HH)
        UU = PP.dot(UU)
        UUVVt = UU.dot(VVt)
        UUVVdiag = np.diag(UUVVt)
        XtX[ii_diag] = XtXdiag
        HH = np.diag(XtX.dot(UUVVt)) - XtXdiag + OmegaDiag * (UUVVdiag + gammaVec)
        GG = XtXdiag + OmegaDiag - XtXdiag * pdrop / (1.0 - pdrop) - L2const
        betaVec = HH / GG
        betaVec = np.maximum(betaVec, 0.0)
        gammaVec += UUVVdiag - betaVec
    return [UU, VVt.T]


def learn_EDLAE_approx(zeroDiagConstraint, pdrop, L2const, hidden_dim, train_epochs, VVt, XtX, XtXdiag, ii_diag):
    XtX[ii_diag] = XtXdiag + L2const + XtXdiag * pdrop / (1.0 - pdrop)
    CC = np.linalg.inv(XtX)
    for itercnt in range(train_epochs):
        GG = VVt.dot(VVt.T)
        GG = np.linalg.inv(GG)
        gammaVec = L2const + XtXdiag * pdrop / (1.0 - pdrop)
        if zeroDiagConstraint:
            KK = VVt.T.dot(GG).dot(VVt)
            gammaVec = np.linalg.solve(CC * KK, np.diag(KK))
        HH = CC * (-gammaVec)
        HH[ii_diag] += 1.0
        UU = HH.dot(VVt.T.dot(GG))
        XtX[ii_diag] = XtXdiag + L2const + XtXdiag * pdrop / (1.0 - pdrop)
        HH = UU.T.dot(XtX).dot(UU)
        HH = np.linalg.inv(HH).dot(UU.T)
        XtX[ii_diag] = XtXdiag
        VVt = HH.dot(XtX)
    return [UU, VVt.T]


# -- the same data for both ------------------------------------------------------------------------------
@pytest.fixture
def train():
    return random_implicit_csr(300, 40, density=0.2, seed=4)


def gram(train):
    XtX = np.asarray(train.T.dot(train).todense(), dtype=np.float64)
    return XtX, deepcopy(np.diag(XtX)), np.diag_indices(XtX.shape[0])


def start(model, shape):
    """The random start aerec draws for ``model`` (its seeded generator), as float64 numpy."""
    return model.random_start(shape, torch.Generator().manual_seed(model.seed), torch.zeros(1)).numpy()


def test_full_rank_edlae_is_the_notebooks_learn_EDLAE_fullrank(train):
    model = EDLAE(dropout=0.33, l2=30.0, device="cpu").fit(train)
    expected = learn_EDLAE_fullrank(0.33, 30.0, *gram(train))
    np.testing.assert_allclose(model.weights_.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.score(train[:5]), train[:5].toarray() @ expected, rtol=1e-4, atol=1e-5)


def test_full_rank_dlae_is_the_ridge_solution_with_the_dropout_penalty(train):
    XtX, counts, _ = gram(train)
    penalty = 30.0 + counts * 0.5 / (1 - 0.5)
    expected = np.linalg.solve(XtX + np.diag(penalty), XtX)  # (G + Lambda)^-1 G, Eq. 6
    model = DLAE(dropout=0.5, l2=30.0, device="cpu").fit(train)
    np.testing.assert_allclose(model.weights_.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert np.abs(np.diag(expected)).min() > 0  # the diagonal is free (not EDLAE's zero)


def test_edlae_without_dropout_is_ease(train):
    edlae = EDLAE(dropout=0.0, l2=50.0, device="cpu").fit(train)
    ease = EASE(l2=50.0, device="cpu").fit(train)
    assert torch.equal(edlae.weights_, ease.weights_)


def test_low_rank_dlae_is_the_notebooks_learn_EDLAE_approx_with_a_free_diagonal(train):
    model = DLAE(dropout=0.4, l2=20.0, rank=6, iterations=4, init_scale=0.1, seed=3, device="cpu")
    model.fit(train)
    uu, vv = learn_EDLAE_approx(False, 0.4, 20.0, 6, 4, start(model, (6, 40)), *gram(train))
    u, v = model.factors_
    np.testing.assert_allclose(u.numpy() @ v.numpy().T, uu @ vv.T, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.score(train[:5]), train[:5].toarray() @ uu @ vv.T, rtol=1e-3, atol=1e-5)


def test_low_rank_edlae_is_the_notebooks_admm_learn_EDLAE_analytic(train):
    model = EDLAE(dropout=0.2, l2=10.0, rank=6, iterations=5, omega=50.0, init_scale=0.1, seed=1, device="cpu")
    model.fit(train)
    uu, vv = learn_EDLAE_analytic(0.2, 10.0, 50.0, 6, 5, start(model, (40, 6)), *gram(train))
    u, v = model.factors_
    np.testing.assert_allclose(u.numpy(), uu, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(v.numpy(), vv, rtol=1e-4, atol=1e-7)


def test_low_rank_models_score_users_unseen_in_training(train):
    model = EDLAE(rank=5, iterations=3, device="cpu").fit(train)
    new = random_implicit_csr(4, 40, seed=9)
    assert model.score(new).shape == (4, 40) and np.isfinite(model.score(new)).all()


@pytest.mark.parametrize("name", ["dlae", "edlae"])
@pytest.mark.parametrize("params, message", [
    ({"dropout": 1.0}, r"dropout=1\.0"),
    ({"dropout": -0.1}, r"dropout=-0\.1"),
    ({"l2": 0.0}, r"l2=0\.0"),
    ({"rank": 0}, "rank=0"),
    ({"iterations": 0}, "iterations=0"),
])
def test_bad_parameters_are_refused_by_name(name, params, message):
    with pytest.raises(ValueError, match=message):
        make_model(name, **params).fit(random_implicit_csr(20, 10))


def test_a_rank_above_the_catalogue_and_unknown_parameters_are_refused():
    with pytest.raises(ValueError, match="rank=11; expected at most the number of items, 10"):
        EDLAE(rank=11).fit(random_implicit_csr(20, 10))
    with pytest.raises(ValueError, match="unknown parameter"):
        make_model("edlae", p=0.3)
    with pytest.raises(ValueError, match=r"omega=-1"):
        make_model("edlae", omega=-1.0)


def test_a_catalogue_too_large_is_refused_with_the_estimate_and_the_alternative(monkeypatch):
    import aerec.core.closed_form

    monkeypatch.setattr(aerec.core.closed_form, "available_memory_bytes", lambda: 2**30)
    too_large = random_implicit_csr(5, 20_000, density=0.001)
    with pytest.raises(MemoryError, match=r"EDLAE on 20000 items needs about 8\.9 GiB.*1\.0 GiB is available.*"
                                          r"precision='float32' works in place in about 1\.5 GiB"):
        EDLAE().fit(too_large)


@pytest.mark.parametrize("cls", [EASE, DLAE, EDLAE])
def test_the_in_place_float32_path_gives_the_float64_weights(cls, train, monkeypatch):
    import aerec.core.closed_form as closed_form

    monkeypatch.setattr(closed_form, "_BLOCK", 16)  # 40 items: the mirroring and scaling cross block edges
    params = {"l2": 20.0} if cls is EASE else {"l2": 20.0, "dropout": 0.3}
    exact = cls(device="cpu", **params).fit(train)
    lean = cls(device="cpu", precision="float32", **params).fit(train)
    assert lean.weights_.dtype == torch.float32 and lean.weights_.is_contiguous()
    torch.testing.assert_close(lean.weights_, exact.weights_, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(lean.score(train[:5]), exact.score(train[:5]), rtol=1e-3, atol=1e-4)


def test_float32_gram_is_made_in_blocks_and_equals_the_sparse_product(monkeypatch):
    import aerec.core.closed_form as closed_form

    monkeypatch.setattr(closed_form, "_BLOCK", 7)  # several blocks, the last one short
    train = random_implicit_csr(50, 30, seed=2)
    np.testing.assert_array_equal(closed_form.dense_gram_float32(train), (train.T @ train).toarray())


def test_float32_is_only_the_full_rank_path():
    with pytest.raises(ValueError, match="precision='float32' with rank=4; expected precision='float64'"):
        EDLAE(rank=4, precision="float32").fit(random_implicit_csr(20, 10))


def test_the_in_place_factorisation_of_a_large_catalogue_runs_on_one_blas_thread(train, monkeypatch):
    """scipy's OpenBLAS crashed (SIGSEGV) in a two-thread spotrf/spotri on 41,140 items: above
    LAPACK_SINGLE_THREAD_ABOVE items the factorisation runs on one BLAS thread, below it on the pool as set."""
    import aerec.core.closed_form as closed_form
    from threadpoolctl import threadpool_info, threadpool_limits

    seen = []
    spotrf = closed_form.lapack.spotrf

    def recording(*args, **kwargs):
        seen.append(max(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"))
        return spotrf(*args, **kwargs)

    monkeypatch.setattr(closed_form.lapack, "spotrf", recording)
    with threadpool_limits(2, user_api="blas"):
        EASE(device="cpu", precision="float32", l2=20.0).fit(train)  # 40 items: below the threshold
        monkeypatch.setattr(closed_form, "LAPACK_SINGLE_THREAD_ABOVE", 10)
        EASE(device="cpu", precision="float32", l2=20.0).fit(train)
    assert seen == [2, 1]
