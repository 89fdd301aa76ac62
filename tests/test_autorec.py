"""AutoRec (Sedhain et al. 2015): the objective by hand, predictions, fold-in, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from aerec.data import random_holdout
from aerec.evaluation import rmse
from aerec.models import NotFittedError
from aerec.models.autorec import AutoRec, AutoRecNet, _reference_rprop_schedule, autorec_loss, autorec_objective
from aerec.training import TrainingState


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These fits are tiny: on a shared 2-core machine a second torch thread only adds contention (~20x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ratings_csr(dense) -> sp.csr_matrix:
    matrix = sp.csr_matrix(np.asarray(dense, dtype=np.float32))
    matrix.eliminate_zeros()
    return matrix


@pytest.fixture(scope="module")
def small():
    """6 users x 5 items; user 5 and item 4 have no ratings."""
    return ratings_csr([[5, 3, 0, 1, 0],
                        [4, 0, 0, 1, 0],
                        [1, 1, 0, 5, 0],
                        [1, 0, 0, 4, 0],
                        [0, 1, 5, 4, 0],
                        [0, 0, 0, 0, 0]])


# -- the objective ------------------------------------------------------------------------------------
def test_loss_ignores_unobserved_entries():
    torch.manual_seed(0)
    mask = torch.rand(4, 6) < 0.5
    target = torch.randint(1, 6, (4, 6)).float()
    pred = torch.randn(4, 6, requires_grad=True)
    weights = [torch.randn(3, 6), torch.randn(6, 3)]
    terms = autorec_loss(pred, target, mask, weights, 7.0)
    (grad,) = torch.autograd.grad(terms["loss"], pred)
    # garbage (NaN included) outside the mask, in the target and in the prediction: nothing changes
    other_target = torch.where(mask, target, torch.full_like(target, float("nan")))
    other_pred = torch.where(mask, pred.detach(), 1e6 * torch.randn(4, 6)).requires_grad_()
    other = autorec_loss(other_pred, other_target, mask, weights, 7.0)
    (other_grad,) = torch.autograd.grad(other["loss"], other_pred)
    torch.testing.assert_close(other["loss"], terms["loss"])
    torch.testing.assert_close(other_grad, grad)
    assert (grad[~mask] == 0).all()
    by_hand = ((pred - target)[mask] ** 2).sum() + 7.0 / 2 * sum((w ** 2).sum() for w in weights)
    torch.testing.assert_close(terms["loss"], by_hand)


def test_objective_and_its_gradient_match_the_masked_formula_by_hand(small):
    net = AutoRecNet(5, 3, torch.Generator().manual_seed(3))
    with torch.no_grad():  # weights large enough for the sigmoid to bend
        for p in net.parameters():
            p.mul_(40.0)
    l2 = 2.5
    ours = autorec_objective(net, small, l2)
    grads = torch.autograd.grad(ours["loss"], list(net.parameters()))

    R = torch.from_numpy(small.toarray())
    observed = R != 0
    target = torch.where(observed, R, torch.full_like(R, 123.0))  # what the target holds off the mask is irrelevant
    V, mu = net.encoder.weight, net.encoder.bias  # (k, n), (k,)
    W, b = net.decoder.weight, net.decoder.bias  # (n, k), (n,)
    H = torch.sigmoid(R @ V.T + mu) @ W.T + b  # h(r) = W f(V r + mu) + b, unobserved inputs are 0
    by_hand = ((target - H) ** 2)[observed].sum() + l2 / 2 * ((W ** 2).sum() + (V ** 2).sum())
    hand_grads = torch.autograd.grad(by_hand, [V, mu, W, b])

    torch.testing.assert_close(ours["loss"], by_hand, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours["penalty"], l2 / 2 * ((W ** 2).sum() + (V ** 2).sum()))
    for name, got, expected in zip(["V", "mu", "W", "b"], grads, hand_grads):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")
    # the rows of item 4 (never rated) and user 5 add nothing; their output gradient is the penalty's only
    assert torch.allclose(grads[3][4], torch.tensor(0.0)) and torch.allclose(grads[2][4], l2 * W[4].detach())


def test_minibatch_penalty_shares_add_up_to_the_full_objective(small):
    full = AutoRec(kind="user", hidden=4, epochs=1, optimizer="lbfgs", device="cpu").fit(small)
    chunked = AutoRec(kind="user", hidden=4, epochs=1, optimizer="lbfgs", batch_size=2, device="cpu").fit(small)
    # L-BFGS records the first evaluation, at the (same, seeded) initial weights, summed over the batches
    assert chunked.history_.epochs[0]["loss"] == pytest.approx(full.history_.epochs[0]["loss"], rel=1e-6)
    assert chunked.history_.epochs[0]["penalty"] == pytest.approx(full.history_.epochs[0]["penalty"], rel=1e-6)


def test_item_kind_trains_on_the_transpose(small):
    item = AutoRec(kind="item", hidden=4, epochs=2, device="cpu").fit(small)
    user = AutoRec(kind="user", hidden=4, epochs=2, device="cpu").fit(small)
    assert item.module_.encoder.in_features == 6 and user.module_.encoder.in_features == 5
    assert (item.input_rows_ != small.T).nnz == 0 and item.item_codes_.shape == (5, 4)


def test_reference_rprop_schedule():
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.Rprop([param], lr=2e-6)
    group = optimizer.param_groups[0]
    _reference_rprop_schedule(optimizer, TrainingState(epoch=0))
    assert group["etas"] == (0.5, 5.0) and group["step_sizes"] == (1e-6, 1.0)
    for epoch in range(2, 6):
        _reference_rprop_schedule(optimizer, TrainingState(epoch=epoch - 1))
        assert group["etas"] == (0.5, 5.0)
    _reference_rprop_schedule(optimizer, TrainingState(epoch=5))
    assert group["etas"] == (0.5, 1.2)


@pytest.mark.parametrize("optimizer", ["climin_rprop", "rprop", "lbfgs", "adam"])
def test_every_optimizer_lowers_the_objective(small, optimizer):
    params = {"adam": {"batch_size": 2, "lr": 0.05}}.get(optimizer, {})
    model = AutoRec(kind="item", hidden=8, epochs=30, optimizer=optimizer, device="cpu", **params).fit(small)
    losses = model.history_.column("loss")
    assert losses[-1] < 0.5 * losses[0]


# -- prediction ---------------------------------------------------------------------------------------
def test_predictions_are_clipped_to_the_training_range(small):
    model = AutoRec(kind="user", hidden=4, epochs=3, device="cpu").fit(small)
    users, items = np.array([0, 1, 2, 3]), np.array([0, 1, 2, 3])
    assert model.rating_range_ == (1.0, 5.0)
    with torch.no_grad():
        model.module_.decoder.bias += 100.0
    assert (model.predict(users, items) == 5.0).all()
    with torch.no_grad():
        model.module_.decoder.bias -= 200.0
    assert (model.predict(users, items) == 1.0).all()
    declared = AutoRec(kind="user", hidden=4, epochs=3, rating_range=(0.5, 6), device="cpu").fit(small)
    with torch.no_grad():
        declared.module_.decoder.bias += 100.0
    assert declared.rating_range_ == (0.5, 6.0) and (declared.predict(users, items) == 6.0).all()


@pytest.mark.parametrize("kind", ["item", "user"])
def test_unseen_users_and_items_get_the_default_rating(small, kind):
    model = AutoRec(kind=kind, hidden=4, epochs=3, device="cpu").fit(small)
    got = model.predict([5, 5, 0, 2, 0], [0, 4, 4, 4, 2])  # user 5 and item 4 have no training rating
    assert (got[:4] == 3.0).all() and 1.0 <= got[4] <= 5.0
    other = AutoRec(kind=kind, hidden=4, epochs=3, default_rating=2.5, device="cpu").fit(small)
    assert (other.predict([5, 0], [1, 4]) == 2.5).all()


@pytest.mark.parametrize("kind", ["item", "user"])
def test_predict_reconstructs_the_training_vectors_only(small, kind):
    model = AutoRec(kind=kind, hidden=4, epochs=5, device="cpu").fit(small)
    rows = small.T.toarray() if kind == "item" else small.toarray()
    with torch.no_grad():
        dense = model.module_(torch.from_numpy(rows)).numpy().clip(1, 5)
    users, items = np.array([0, 2, 4, 1, 0, 0]), np.array([2, 0, 0, 2, 2, 3])  # repeats and any order
    expected = dense[items, users] if kind == "item" else dense[users, items]
    np.testing.assert_allclose(model.predict(users, items), expected, rtol=1e-5)


@pytest.fixture(scope="module")
def ml100k_slice(ml100k):
    """The 400 first users x the 500 most rated items of ML-100K (about 34,000 ratings), split 81/9/10."""
    counts = np.bincount(ml100k.matrix.indices, minlength=ml100k.n_items)
    items = np.sort(np.argsort(-counts, kind="stable")[:500])
    data = ml100k.select(np.arange(400), items)
    return random_holdout(data, 0.1, validation_fraction=0.1, seed=0)


@pytest.fixture(scope="module")
def fitted_on_slice(ml100k_slice):
    split = ml100k_slice
    return {kind: AutoRec(kind=kind, hidden=100, epochs=150, patience=10, device="cpu").fit(split.train, validation=split.validation)
            for kind in ("item", "user")}


@pytest.mark.parametrize("kind", ["item", "user"])
def test_beats_the_global_mean_on_real_ratings(ml100k_slice, fitted_on_slice, kind):
    split, model = ml100k_slice, fitted_on_slice[kind]
    test = split.test.matrix.tocoo()
    ours = rmse(test.data, model.predict(test.row, test.col))
    global_mean = rmse(test.data, np.full(test.nnz, split.train.matrix.data.mean()))
    # measured: item 0.867 (150 iterations, still improving), user 0.905 (best at 77); the global mean 1.071
    assert ours < global_mean - 0.1 and 0.85 < ours < 0.97
    assert model.best_epoch_ == 1 + int(np.argmin(model.history_.column("validation")))


def test_validation_ratings_never_enter_the_network(ml100k_slice):
    split = ml100k_slice
    validation = split.validation.matrix
    shuffled = validation.copy()
    shuffled.data = np.random.default_rng(0).permutation(shuffled.data)  # same pairs, other held-out values
    params = dict(kind="item", hidden=32, epochs=12, device="cpu")
    a = AutoRec(**params).fit(split.train, validation=validation)
    b = AutoRec(**params).fit(split.train, validation=shuffled)
    # training never sees the held-out values: the same losses, iteration by iteration
    np.testing.assert_allclose(a.history_.column("loss"), b.history_.column("loss"), rtol=1e-6)
    # the kept weights are those of a plain fit stopped at the chosen iteration, without any validation
    plain = AutoRec(**{**params, "epochs": a.best_epoch_}).fit(split.train)
    test = split.test.matrix.tocoo()
    np.testing.assert_allclose(a.predict(test.row, test.col), plain.predict(test.row, test.col), rtol=1e-5)
    # the recorded validation RMSE is the one predicted from the training ratings
    coo = validation.tocoo()
    assert a.history_.best_validation == pytest.approx(rmse(coo.data, a.predict(coo.row, coo.col)), rel=1e-6)


# -- ranking ------------------------------------------------------------------------------------------
def test_user_kind_scores_rows_by_reconstructing_them(small):
    model = AutoRec(kind="user", hidden=4, epochs=5, device="cpu").fit(small)
    new_user = ratings_csr([[0, 5, 0, 0, 2]])
    with torch.no_grad():
        expected = model.module_(torch.from_numpy(new_user.toarray())).numpy()
    np.testing.assert_allclose(model.score(new_user), expected, rtol=1e-5)


def test_item_kind_folds_in_a_row_by_ridge_regression_on_the_item_codes(small):
    model = AutoRec(kind="item", hidden=4, l2=3.0, epochs=10, device="cpu").fit(small)
    rows = ratings_csr([[0, 5, 0, 0, 2], [4, 4, 0, 1, 0], [0, 0, 0, 0, 0]])
    scores = model.score(rows)
    codes = model.item_codes_.double().numpy()
    Z = np.hstack([codes, np.ones((5, 1))])
    penalty = np.diag([3.0 / 2] * 4 + [0.0])  # (l2 / 2) ||w||^2, the bias unregularised
    for r in range(2):
        rated, values = rows[r].indices, rows[r].data.astype(np.float64)
        theta = np.linalg.solve(Z[rated].T @ Z[rated] + penalty, Z[rated].T @ values)
        np.testing.assert_allclose(scores[r], Z @ theta, rtol=1e-4, atol=1e-4)
        assert np.sum(values - scores[r, rated]) == pytest.approx(0.0, abs=1e-3)  # the bias' normal equation
    # no ratings: the default rating, and the items' popularity as a tie-break of at most 1e-3
    assert ((scores[2] >= 3.0) & (scores[2] <= 3.0 + 1e-3 + 1e-6)).all() and scores[2].max() > 3.0


def test_item_kind_fold_in_ranks_real_users_sensibly(ml100k_slice, fitted_on_slice):
    model = fitted_on_slice["item"]
    train = ml100k_slice.train.matrix
    scores = model.score(train[:50])
    # the fold-in's fit on a user's own ratings is close: RMSE on those ratings well below the spread of ratings
    coo = train[:50].tocoo()
    assert rmse(coo.data, scores[coo.row, coo.col]) < 0.8 * coo.data.std()


# -- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("params, message", [
    ({"kind": "items"}, "kind='items'; expected one of 'item', 'user'"),
    ({"hidden": 0}, "hidden=0; expected a positive integer"),
    ({"hidden": 2.5}, "hidden=2.5; expected a positive integer"),
    ({"l2": -1.0}, "l2=-1.0; expected a positive number"),
    ({"epochs": 0}, "epochs=0; expected a positive integer"),
    ({"optimizer": "sgd"}, "optimizer='sgd'; expected one of"),
    ({"lr": 0.0}, "lr=0.0; expected a positive number"),
    ({"batch_size": 100}, "batch_size=100 with optimizer='climin_rprop'; Rprop is full-batch"),
    ({"batch_size": 100, "optimizer": "rprop"}, "batch_size=100 with optimizer='rprop'; Rprop is full-batch"),
    ({"lr": 1e-6}, r"lr=1e-06 with optimizer='climin_rprop'; expected at least 2e-06"),
    ({"optimizer": "adam", "batch_size": 0}, "batch_size=0; expected a positive integer"),
    ({"patience": 0}, "patience=0; expected a positive integer"),
    ({"default_rating": float("nan")}, "default_rating=nan; expected a finite number"),
    ({"rating_range": (5, 1)}, r"rating_range=\(5, 1\); expected None or \(low, high\)"),
    ({"rating_range": (1, 3, 5)}, r"rating_range=\(1, 3, 5\); expected None or \(low, high\)"),
    ({"seed": -1}, r"seed=-1; expected an integer in \[0, 2\*\*32 - 1\]"),
    ({"device": "tpu"}, "device='tpu' is not a torch device"),
])
def test_bad_hyper_parameters_are_named(small, params, message):
    model = AutoRec(**params)
    with pytest.raises(ValueError, match=message):
        model.fit(small)
    with pytest.raises(NotFittedError):  # a refused fit leaves nothing behind
        model.predict([0], [0])


def test_ratings_outside_the_declared_range_are_refused(small):
    with pytest.raises(ValueError, match=r"train holds rating 5\.0 outside rating_range=\(1, 4\)"):
        AutoRec(rating_range=(1, 4), epochs=1).fit(small)
    validation = ratings_csr(np.pad([[0, 0, 0, 0, 9.0]], ((0, 5), (0, 0))))
    with pytest.raises(ValueError, match=r"validation holds rating 9\.0 outside rating_range=\(1, 5\)"):
        AutoRec(rating_range=(1, 5), epochs=1).fit(small, validation=validation)
    model = AutoRec(rating_range=(1, 5), kind="user", hidden=4, epochs=1, device="cpu").fit(small)
    with pytest.raises(ValueError, match=r"user_items holds rating 7\.0 outside rating_range=\(1, 5\)"):
        model.score(ratings_csr([[7, 0, 0, 0, 0]]))


def test_bad_validation_is_refused(small):
    model = AutoRec(hidden=4, epochs=1, device="cpu")
    with pytest.raises(ValueError, match=r"validation has shape \(6, 4\); expected \(6, 5\)"):
        model.fit(small, validation=small[:, :4])
    with pytest.raises(ValueError, match="validation shares 13 .* pair"):
        model.fit(small, validation=small)
    with pytest.raises(ValueError, match="validation must be held-out ratings .* got tuple"):
        model.fit(small, validation=(small, small))
    with pytest.raises(ValueError, match="validation holds no ratings"):
        model.fit(small, validation=sp.csr_matrix(small.shape, dtype=np.float32))


def test_bad_prediction_calls_are_named(small):
    model = AutoRec(hidden=4, epochs=1, device="cpu").fit(small)
    with pytest.raises(ValueError, match="users and items have lengths 2 and 1"):
        model.predict([0, 1], [0])
    with pytest.raises(ValueError, match="items holds index 5; expected indices from 0 to 4"):
        model.predict([0], [5])
    with pytest.raises(ValueError, match="users holds index -1; expected indices from 0 to 5"):
        model.predict([-1], [0])
    with pytest.raises(ValueError, match=r"users has shape \(1, 2\)"):
        model.predict([[0, 1]], [[0, 1]])
    with pytest.raises(ValueError, match="items has shape .* dtype float64"):
        model.predict([0], [0.5])
    with pytest.raises(ValueError, match="user_items has 4 columns; expected 5"):
        model.score(small[:, :4])
    with pytest.raises(NotFittedError, match="not fitted yet"):
        AutoRec().predict([0], [0])


def test_observed_outputs_values_and_gradients_equal_the_dense_network():
    from aerec.data.batching import RowBatch
    from aerec.models.autorec import AutoRecNet

    rng = np.random.default_rng(0)
    dense_ratings = np.where(rng.random((6, 9)) < 0.4, rng.integers(1, 6, (6, 9)), 0).astype(np.float32)
    dense_ratings[2] = 0  # a row with no stored entries
    ratings = sp.csr_matrix(dense_ratings)
    at = sp.csr_matrix(rng.random((6, 9)) < 0.3)  # other entries than the inputs'
    net = AutoRecNet(9, 4, torch.Generator().manual_seed(0)).double()
    inputs, outputs = RowBatch(np.arange(6), ratings), RowBatch(np.arange(6), at)
    observed = net.observed(inputs.pattern, inputs.parts.val.double(), outputs.pattern)
    rows, cols = at.nonzero()
    dense = net(torch.from_numpy(ratings.toarray()).double())[torch.from_numpy(rows), torch.from_numpy(cols)]
    torch.testing.assert_close(observed, dense)
    upstream = torch.randn(observed.shape, dtype=torch.float64)
    for mine, expected in zip(torch.autograd.grad(observed, list(net.parameters()), upstream),
                              torch.autograd.grad(dense, list(net.parameters()), upstream)):
        torch.testing.assert_close(mine, expected)


def test_i_autorec_ranks_a_flat_history_by_popularity_not_catalogue_order():
    """A user whose ratings are all equal is fitted by the bias alone: every score tied, top-N was catalogue order."""
    import scipy.sparse as sp

    from aerec.models import AutoRec

    rng = np.random.default_rng(0)
    dense = np.where(rng.random((40, 30)) < 0.3, rng.integers(1, 6, (40, 30)), 0).astype(np.float32)
    dense[:, 17] = np.where(rng.random(40) < 0.9, 4.0, 0.0)  # item 17 the most rated, item 0 not first
    model = AutoRec(kind="item", hidden=5, epochs=2, seed=0).fit(sp.csr_matrix(dense))
    flat = sp.csr_matrix(([3.0, 3.0], ([0, 0], [1, 2])), shape=(1, 30), dtype=np.float32)
    ids, scores = model.recommend(flat, n=5)
    popularity = (dense > 0).sum(axis=0).astype(float)
    popularity[[1, 2]] = -1
    np.testing.assert_array_equal(popularity[ids[0]], np.sort(popularity)[::-1][:5])  # the most rated first
    assert ids[0][0] == 17 and scores[0][0] - 3.0 <= 1e-3 + 1e-6
    varied = sp.csr_matrix(([5.0, 1.0], ([0, 0], [1, 2])), shape=(1, 30), dtype=np.float32)
    assert not np.allclose(model.score(varied)[0], model.score(varied)[0][0])  # real fits keep their own scores
