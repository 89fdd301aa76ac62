"""CDAE (Wu et al., WSDM 2016): the user node, negative sampling, the masked loss, fold-in, real data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import aerec.models.cdae as cdae_module
from aerec.data import per_user_holdout, strong_generalization
from aerec.data.batching import RowBatch
from aerec.evaluation import evaluate_ranking
from aerec.models import Popularity
from aerec.models.cdae import CDAE, CDAENet, sample_negatives
from aerec.training import TrainingState
from tests.conftest import random_implicit_csr

FAST = {"hidden": 8, "epochs": 5, "batch_size": 16, "lr": 1e-2, "fold_in_steps": 10, "device": "cpu"}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread: on the shared 2-core machine two threads contend (training ran ~5x slower under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def train():
    return random_implicit_csr(n_users=60, n_items=30, density=0.2, seed=3)


@pytest.fixture(scope="module")
def fitted(train):
    return CDAE(**FAST).fit(train)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# -- the user node ---------------------------------------------------------------------------
def test_the_user_vector_changes_that_users_scores_only(fitted, train):
    users = np.arange(5)
    before = fitted.score_known_users(users, train[:5])
    with torch.no_grad():
        saved = fitted.module_.user_embedding.weight[2].clone()
        fitted.module_.user_embedding.weight[2] += 1.0
    try:
        after = fitted.score_known_users(users, train[:5])
    finally:
        with torch.no_grad():
            fitted.module_.user_embedding.weight[2] = saved
    assert np.abs(after[2] - before[2]).max() > 1e-3
    np.testing.assert_array_equal(np.delete(after, 2, axis=0), np.delete(before, 2, axis=0))


def test_the_network_has_one_learned_vector_per_training_user(fitted, train):
    embedding = fitted.module_.user_embedding.weight.detach()
    assert embedding.shape == (train.shape[0], 8) and fitted.n_train_users_ == train.shape[0]
    assert float(embedding.abs().sum()) > 0  # learned away from the zero start


def test_training_looks_up_the_batch_users_vectors(train):
    """The row index of a batch is the user id whose V_u enters the hidden layer."""
    torch.manual_seed(0)
    net = CDAENet(n_users=4, n_items=5, hidden=3, corruption=0.0, hidden_activation="sigmoid").eval()
    x = torch.eye(5)[:2]
    with torch.no_grad():
        net.user_embedding.weight.copy_(torch.arange(12.0).reshape(4, 3) / 10)
        expected = net.decoder(torch.sigmoid(net.encoder(x) + net.user_embedding.weight[[3, 1]]))
        np.testing.assert_allclose(net(x, torch.tensor([3, 1])).numpy(), expected.numpy(), rtol=1e-6)


# -- negative sampling -----------------------------------------------------------------------
def test_negative_sampling_draws_the_requested_number_of_unobserved_items():
    observed = torch.tensor(random_implicit_csr(n_users=50, n_items=40, density=0.3, seed=5).toarray() > 0)
    counts = torch.randint(0, 10, (50,), generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)
    for _ in range(20):
        drawn = sample_negatives(observed, counts, generator)
        assert not (drawn & observed).any()
        assert torch.equal(drawn.sum(dim=1), counts)


def test_negative_sampling_is_uniform_over_the_unobserved_items():
    observed = torch.zeros(1, 10, dtype=torch.bool)
    observed[0, [0, 3]] = True
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_negatives(observed, torch.tensor([2]), generator)[0] for _ in range(4000)])
    frequency = draws.float().mean(dim=0)
    assert frequency[[0, 3]].sum() == 0
    # each of the 8 unobserved items is drawn with probability 2/8; sd of the mean ~0.007
    np.testing.assert_allclose(frequency[[1, 2, 4, 5, 6, 7, 8, 9]].numpy(), 0.25, atol=0.03)


def test_negative_counts_proportional_fixed_and_capped():
    observed = torch.zeros(3, 10, dtype=torch.bool)
    observed[0, :1] = True
    observed[1, :3] = True
    observed[2, :8] = True
    model = CDAE(negative_ratio=1.5)
    assert model.negative_counts(observed).tolist() == [2, 4, 2]  # 1.5 and 4.5 round to even; 12 capped at 2
    model = CDAE(negative_sampling="fixed", n_negatives=3)
    assert model.negative_counts(observed).tolist() == [3, 3, 2]


def test_sample_negatives_refuses_more_than_the_unobserved_items():
    observed = torch.tensor([[True, False, False]])
    with pytest.raises(ValueError, match=r"counts=\[3\]; expected from 0 to each row's unobserved items \[2\]"):
        sample_negatives(observed, torch.tensor([3]))


# -- the loss, by hand ---------------------------------------------------------------------------
def test_row_loss_counts_only_the_masked_items_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    observed = torch.tensor([[True, False, False, True]])
    mask = torch.tensor([[True, True, False, True]])  # item 2 is neither observed nor sampled
    logistic = CDAE().row_loss(logits, observed, mask)
    assert logistic.item() == pytest.approx(softplus(-2.0) + softplus(-1.0) + softplus(-3.0), rel=1e-6)
    sigma = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    squared = CDAE(loss="squared").row_loss(logits, observed, mask)
    assert squared.item() == pytest.approx((sigma(2) - 1) ** 2 + sigma(-1) ** 2 + (sigma(3) - 1) ** 2, rel=1e-6)
    identity = CDAE(loss="squared", output_activation="identity").row_loss(logits, observed, mask)
    assert identity.item() == pytest.approx(1.0 + 1.0 + 4.0, rel=1e-6)
    full = CDAE(negative_sampling=None).row_loss(logits, observed, None)
    assert full.item() == pytest.approx(logistic.item() + softplus(0.5), rel=1e-6)


def test_item_losses_summed_over_the_mask_are_the_row_loss():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 9, generator=generator)
    observed = torch.rand(4, 9, generator=generator) < 0.3
    mask = observed | (torch.rand(4, 9, generator=generator) < 0.4)
    for params in ({}, {"loss": "squared"}, {"loss": "squared", "output_activation": "identity"}):
        model = CDAE(**params)
        expected = (model.item_losses(logits, observed) * mask).sum(dim=1)
        torch.testing.assert_close(model.row_loss(logits, observed, mask), expected)


def test_the_fold_in_objective_is_the_expectation_of_the_sampled_loss():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 20, generator=generator)
    observed = torch.zeros(3, 20, dtype=torch.bool)
    observed[0, :2], observed[1, :5], observed[2, :1] = True, True, True
    model = CDAE(negative_ratio=2.0)
    counts = model.negative_counts(observed)
    draws = torch.stack([model.row_loss(logits, observed, observed | sample_negatives(observed, counts, generator))
                         for _ in range(3000)])
    expected = (model.item_losses(logits, observed) * model.expected_weights(observed)).sum(dim=1)
    torch.testing.assert_close(draws.mean(dim=0), expected, rtol=0.02, atol=0.0)
    weights = model.expected_weights(observed)
    assert weights[1, 5:].tolist() == pytest.approx([10 / 15] * 15) and weights[observed].eq(1).all()
    assert CDAE(negative_sampling=None).expected_weights(observed).eq(1).all()


def test_batch_loss_equals_the_papers_objective_on_a_tiny_network(monkeypatch):
    """Two users, three items, K = 1: the batch loss by hand, with the sampled negatives fixed."""
    rows = sp.csr_matrix(np.array([[1, 0, 0], [0, 1, 1]], dtype=np.float32))
    sampled = torch.tensor([[False, False, True], [True, False, False]])
    monkeypatch.setattr(cdae_module, "sample_negatives", lambda observed, counts, generator=None: sampled)
    lam = 0.1
    model = CDAE(hidden=1, corruption=0.0, l2=lam, negative_ratio=1.0)
    model.n_train_users_ = 2
    net = CDAENet(n_users=2, n_items=3, hidden=1, corruption=0.0, hidden_activation="sigmoid")
    with torch.no_grad():
        net.encoder.weight.copy_(torch.tensor([[1.0, 0.0, -1.0]]))  # W^T
        net.encoder.bias.fill_(0.0)
        net.user_embedding.weight.copy_(torch.tensor([[0.5], [-0.5]]))
        net.decoder.weight.copy_(torch.tensor([[1.0], [2.0], [-1.0]]))  # W'
        net.decoder.bias.copy_(torch.tensor([0.0, 0.1, 0.0]))
    terms = model.batch_loss(net, RowBatch(np.array([0, 1]), rows), TrainingState())
    sigma = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    z0, z1 = sigma(1.0 + 0.5), sigma(-1.0 - 0.5)
    out0, out1 = (z0, 2 * z0 + 0.1, -z0), (z1, 2 * z1 + 0.1, -z1)
    loss0 = softplus(-out0[0]) + softplus(out0[2])  # positive item 0, sampled negative item 2
    loss1 = softplus(-out1[1]) + softplus(-out1[2]) + softplus(out1[0])  # positives 1, 2; sampled 0
    squares = (1 + 1) + (1 + 4 + 1) + (0.25 + 0.25) + 0.0 + 0.01  # W, W', V, b, b'
    assert terms["reconstruction"].item() == pytest.approx((loss0 + loss1) / 2, rel=1e-6)
    assert terms["penalty"].item() == pytest.approx(lam / 2 * squares, rel=1e-6)
    assert terms["loss"].item() == pytest.approx((loss0 + loss1) / 2 + lam / 2 * squares, rel=1e-6)


def test_unsampled_negatives_get_no_gradient(train, monkeypatch):
    model = CDAE(hidden=4, l2=0.0, negative_ratio=0.5)
    model.n_train_users_ = train.shape[0]
    torch.manual_seed(0)
    net = CDAENet(train.shape[0], train.shape[1], 4, 0.2, "sigmoid")
    drawn = []

    def recording(observed, counts, generator=None, real=sample_negatives):
        drawn.append(real(observed, counts, generator))
        return drawn[-1]

    monkeypatch.setattr(cdae_module, "sample_negatives", recording)
    rows = train[:3]
    model.batch_loss(net, RowBatch(np.arange(3), rows), TrainingState())["loss"].backward()
    counted = (torch.tensor(rows.toarray() > 0) | drawn[0]).any(dim=0)
    assert 0 < int(counted.sum()) < train.shape[1]
    assert (net.decoder.bias.grad[~counted] == 0).all() and (net.decoder.bias.grad[counted] != 0).all()


# -- fold-in of users unseen in training ---------------------------------------------------------
def test_unseen_users_are_folded_in_without_error(fitted, train):
    new = random_implicit_csr(n_users=7, n_items=train.shape[1], density=0.3, seed=11)
    scores = fitted.score(new)
    assert scores.shape == (7, train.shape[1]) and np.isfinite(scores).all()
    vectors = fitted.user_vectors(new)
    assert vectors.shape == (7, 8) and float(vectors.abs().sum()) > 0
    fitted.fold_in = "zero"
    try:
        assert float(fitted.user_vectors(new).abs().sum()) == 0
        assert not np.allclose(fitted.score(new), scores)
    finally:
        fitted.fold_in = "fit"
    empty = sp.csr_matrix((2, train.shape[1]), dtype=np.float32)
    assert np.isfinite(fitted.score(empty)).all()


def test_fold_in_is_deterministic_and_leaves_the_network_alone(fitted, train):
    before = {name: p.detach().clone() for name, p in fitted.module_.named_parameters()}
    first = fitted.score(train[:6])
    np.testing.assert_array_equal(first, fitted.score(train[:6]))
    for name, p in fitted.module_.named_parameters():
        assert torch.equal(p, before[name]) and p.grad is None, name


def test_stored_values_count_as_ones(fitted, train):
    doubled = train[:4] * 3.0
    np.testing.assert_array_equal(fitted.score(doubled), fitted.score(train[:4]))


@pytest.fixture(scope="module")
def ml100k_split(ml100k):
    return strong_generalization(ml100k, n_heldout=100, seed=98765)


@pytest.fixture(scope="module")
def ml100k_cdae(ml100k_split):
    split = ml100k_split
    return CDAE(epochs=15, lr=1e-2, batch_size=64, fold_in_steps=30, seed=0, device="cpu").fit(split.train)


def ndcg100(model, fold_in, heldout) -> float:
    return evaluate_ranking(model, fold_in, heldout, ks=(100,), metrics=("ndcg",)).metrics["ndcg@100"]


def test_cdae_beats_popularity_on_ml100k_heldout_users(ml100k_split, ml100k_cdae):
    split = ml100k_split
    fold_in, heldout = split.test_fold_in.matrix, split.test_heldout.matrix
    popularity = ndcg100(Popularity().fit(split.train), fold_in, heldout)
    assert ndcg100(ml100k_cdae, fold_in, heldout) > popularity + 0.1  # measured: 0.423 vs 0.255


def test_fold_in_ranks_heldout_items_better_than_a_zero_user_vector(ml100k_split, ml100k_cdae):
    """Measured on the 100 test users (unseen in training): NDCG@100 0.423 with fold-in, 0.413 with zeros."""
    split = ml100k_split
    fold_in, heldout = split.test_fold_in.matrix, split.test_heldout.matrix
    fitted = ndcg100(ml100k_cdae, fold_in, heldout)
    ml100k_cdae.fold_in = "zero"
    try:
        zero = ndcg100(ml100k_cdae, fold_in, heldout)
    finally:
        ml100k_cdae.fold_in = "fit"
    assert fitted >= zero


class KnownUsers:
    """Scores rows 0..n-1 as training users 0..n-1 with their learned V_u (for evaluate_ranking)."""

    def __init__(self, model):
        self.model = model

    def score_tensor(self, rows):
        return torch.from_numpy(self.model.score_known_users(np.arange(rows.shape[0]), rows))


def test_fold_in_of_training_users_rows_is_not_worse_than_a_zero_user_vector(ml100k_split):
    """Training users' rows with 20% of each held out before training, then ranked for those held-out items.

    Measured (NDCG@100 of the 738 training users): fold-in 0.3956, zero vector 0.3952, learned V_u 0.3949.
    After 15 epochs the user node adds little for users whose row is given; the fold-in is not worse.
    """
    holdout = per_user_holdout(ml100k_split.train, test_fraction=0.2, seed=0)
    rows, heldout = holdout.train.matrix, holdout.test.matrix
    model = CDAE(epochs=15, lr=1e-2, batch_size=64, fold_in_steps=30, seed=0, device="cpu").fit(rows)
    fitted = ndcg100(model, rows, heldout)
    model.fold_in = "zero"
    zero = ndcg100(model, rows, heldout)
    learned = evaluate_ranking(KnownUsers(model), rows, heldout, ks=(100,), metrics=("ndcg",),
                               batch_size=rows.shape[0]).metrics["ndcg@100"]
    assert fitted >= zero - 0.002 and abs(fitted - learned) < 0.01
    assert min(fitted, zero, learned) > 0.35


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("params, message", [
    ({"hidden": 0}, "hidden=0; expected a positive integer"),
    ({"corruption": 1.0}, r"corruption=1.0; expected a finite number in \[0, 1\)"),
    ({"l2": -1.0}, "l2=-1.0; expected a finite number >= 0"),
    ({"loss": "hinge"}, "loss='hinge'; expected one of"),
    ({"hidden_activation": "tanh"}, "hidden_activation='tanh'; expected one of"),
    ({"negative_sampling": "popular"}, "negative_sampling='popular'; expected one of"),
    ({"negative_ratio": 0}, "negative_ratio=0; expected a positive number"),
    ({"fold_in": "mean"}, "fold_in='mean'; expected one of"),
    ({"fold_in_steps": 2.5}, "fold_in_steps=2.5; expected an integer in \\[1, 1000\\]"),
    ({"optimizer": "adagrad"}, "optimizer='adagrad'; expected one of"),
    ({"patience": 0}, "patience=0; expected a positive integer"),
    ({"seed": -1}, r"seed=-1; expected an integer in \[0, 2\*\*32 - 1\]"),
    ({"precision": "fp16"}, "precision='fp16'; expected one of"),
])
def test_bad_parameters_are_value_errors_naming_the_value(train, params, message):
    with pytest.raises(ValueError, match=message):
        CDAE(**{**FAST, **params}).fit(train)


def test_bad_calls_are_value_errors_naming_the_value(fitted, train):
    with pytest.raises(ValueError, match="users holds 60; expected training-user indices from 0 to 59"):
        fitted.score_known_users([0, 60], train[:2])
    with pytest.raises(ValueError, match=r"users has shape \(3,\)"):
        fitted.score_known_users([0, 1, 2], train[:2])
    with pytest.raises(ValueError, match="user_items has 29 columns; expected 30"):
        fitted.user_vectors(train[:2, :29])
    with pytest.raises(ValueError, match="validation heldout has 29 columns; expected 30"):
        CDAE(**FAST).fit(train, validation=(train[:5], train[:5, :29]))


def test_bf16_training_stays_within_tolerance_of_fp32(ml100k_split, ml100k_cdae):
    """bfloat16 autocast training, same seed: NDCG@100 within 0.01 of float32 training (measured: 0.4239 vs 0.4232)."""
    split = ml100k_split
    fold_in, heldout = split.test_fold_in.matrix, split.test_heldout.matrix
    bf16 = CDAE(epochs=15, lr=1e-2, batch_size=64, fold_in_steps=30, seed=0, device="cpu", precision="bf16")
    bf16.fit(split.train)
    assert abs(ndcg100(bf16, fold_in, heldout) - ndcg100(ml100k_cdae, fold_in, heldout)) <= 0.01
