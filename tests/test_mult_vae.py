"""Mult-DAE and Mult-VAE (Liang et al. 2018) against hand computations from the paper's formulas and vae_cf."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from aerec.data import strong_generalization
from aerec.data.batching import RowBatch
from aerec.evaluation import evaluate_ranking
from aerec.models import Popularity
from aerec.models.mult_vae import MultDAE, MultDAENet, MultVAE, MultVAENet, l2_normalize_rows
from aerec.training import TrainingState
from tests.conftest import random_implicit_csr

CPU = torch.device("cpu")


# -- hand computations (numpy, float64) ------------------------------------------------
def np_normalize(x):
    return x / np.sqrt(np.maximum((x ** 2).sum(axis=1, keepdims=True), 1e-12))  # tf.nn.l2_normalize


def np_log_softmax(a):
    a = a - a.max(axis=1, keepdims=True)
    return a - np.log(np.exp(a).sum(axis=1, keepdims=True))


def linear(layer):
    return layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()


def set_fixed_weights(net, seed=3):
    """Overwrite every parameter with fixed values of a size that makes tanh non-linear."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for param in net.parameters():
            param.copy_(torch.from_numpy(rng.normal(0.0, 0.6, tuple(param.shape)).astype(np.float32)))


def tiny_batch():
    x = np.array([[1, 0, 1, 1, 0, 0], [0, 1, 0, 0, 0, 1], [1, 1, 1, 0, 1, 0]], dtype=np.float32)
    return x, RowBatch(np.arange(3), sp.csr_matrix(x), CPU)


def vae_loss_by_hand(net, x, eps, beta, lam):
    w1, b1 = linear(net.encoder.layers[0])
    wq, bq = linear(net.posterior.linear)
    w2, b2 = linear(net.decoder.layers[0])
    w3, b3 = linear(net.decoder.layers[1])
    h = np.tanh(np_normalize(x.astype(np.float64)) @ w1.T + b1)  # dropout disabled
    out = h @ wq.T + bq
    latent = out.shape[1] // 2
    mu, logvar = out[:, :latent], out[:, latent:]
    z = mu + eps * np.exp(0.5 * logvar)
    logits = np.tanh(z @ w2.T + b2) @ w3.T + b3
    nll = -np.mean(np.sum(np_log_softmax(logits) * x, axis=1))
    kl = np.mean(np.sum(0.5 * (-logvar + np.exp(logvar) + mu ** 2 - 1), axis=1))
    decay = lam * sum((w ** 2).sum() for w in (w1, wq, w2, w3))  # vae_cf: 2 * l2_regularizer(lam), weights only
    return nll + beta * kl + decay, nll, kl


def test_vae_loss_equals_the_papers_formulas_by_hand():
    """Deterministic injection: ``dropout=0`` and eps drawn from a seeded ``generator`` passed in the state to batch_loss."""
    x, batch = tiny_batch()
    net = MultVAENet(6, hidden=5, latent=3, dropout=0.0)
    set_fixed_weights(net)
    net.train()  # training mode: z is sampled
    model = MultVAE(hidden=5, latent=3, dropout=0.0, l2=0.003)
    update = 30_000  # beta = min(0.2, 30000 / 200000) = 0.15
    terms = model.batch_loss(net, batch, TrainingState(update=update, generator=torch.Generator().manual_seed(11)))
    eps = torch.randn((3, 3), generator=torch.Generator().manual_seed(11)).double().numpy()
    loss, nll, kl = vae_loss_by_hand(net, x, eps, beta=0.15, lam=0.003)
    assert float(terms["beta"]) == pytest.approx(0.15)
    assert float(terms["nll"]) == pytest.approx(nll, rel=1e-5)
    assert float(terms["kl"]) == pytest.approx(kl, rel=1e-5)
    assert float(terms["loss"].detach()) == pytest.approx(loss, rel=1e-5)
    assert kl > 0.5 and abs(nll) > 1.0  # the terms are not trivially small


def test_vae_scores_decode_the_posterior_mean():
    x, _ = tiny_batch()
    net = MultVAENet(6, hidden=5, latent=3, dropout=0.5)
    set_fixed_weights(net)
    net.eval()
    with torch.no_grad():
        logits, mu, _ = net(torch.from_numpy(x))
    w2, b2 = linear(net.decoder.layers[0])
    w3, b3 = linear(net.decoder.layers[1])
    expected = np.tanh(mu.double().numpy() @ w2.T + b2) @ w3.T + b3
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_dae_loss_equals_the_papers_formulas_by_hand():
    x, batch = tiny_batch()
    net = MultDAENet(6, hidden=5, latent=3, dropout=0.0)
    set_fixed_weights(net)
    terms = MultDAE(hidden=5, latent=3, dropout=0.0, l2=0.01).batch_loss(net.train(), batch, TrainingState())
    layers = [*net.encoder.layers, *net.decoder.layers]
    h = np_normalize(x.astype(np.float64))
    for i, layer in enumerate(layers):  # vae_cf's MultiDAE: tanh after every layer but the last
        w, b = linear(layer)
        h = h @ w.T + b
        if i < len(layers) - 1:
            h = np.tanh(h)
    nll = -np.mean(np.sum(np_log_softmax(h) * x, axis=1))
    decay = 0.01 * sum((linear(layer)[0] ** 2).sum() for layer in layers)
    assert float(terms["nll"]) == pytest.approx(nll, rel=1e-5)
    assert float(terms["loss"].detach()) == pytest.approx(nll + decay, rel=1e-5)
    assert [layer.weight.shape[::-1] for layer in layers] == [(6, 5), (5, 3), (3, 5), (5, 6)]


def test_default_architecture_is_the_papers():
    vae, dae = MultVAENet(1000), MultDAENet(1000)
    assert vae.encoder.widths == [1000, 600] and vae.posterior.linear.out_features == 400
    assert vae.decoder.widths == [200, 600, 1000]
    assert dae.encoder.widths == [1000, 600, 200] and dae.decoder.widths == [200, 600, 1000]
    assert vae.input_dropout.p == 0.5 and vae.input_dropout.rescale
    # vae_cf's init: biases from a normal of std 0.001 truncated at 2 sd; Xavier-uniform weights
    assert all(float(layer.bias.detach().abs().max()) <= 0.002 for layer in [*vae.encoder.layers, vae.posterior.linear])
    bound = np.sqrt(6 / (1000 + 600))
    assert float(vae.encoder.layers[0].weight.detach().abs().max()) <= bound
    assert float(vae.encoder.layers[0].weight.detach().abs().max()) > 0.9 * bound


# -- input: normalisation, dropout, sparse first layer ------------------------------------
def test_l2_normalisation_sparse_equals_dense_and_keeps_empty_rows_zero():
    x = np.array([[3.0, 0, 4.0], [0, 0, 0], [0, 2.0, 0]], dtype=np.float32)
    dense = l2_normalize_rows(torch.from_numpy(x))
    sparse = l2_normalize_rows(torch.from_numpy(x).to_sparse())
    expected = np.array([[0.6, 0, 0.8], [0, 0, 0], [0, 1.0, 0]])
    np.testing.assert_allclose(dense.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(sparse.to_dense().numpy(), expected, rtol=1e-6)
    assert sparse.layout == torch.sparse_coo and sparse._nnz() == 3
    with pytest.raises(ValueError, match="expected a 2-D dense or sparse COO tensor"):
        l2_normalize_rows(torch.ones(3))


def test_dropout_follows_the_normalisation_and_rescales_by_one_over_keep_prob():
    torch.manual_seed(0)
    rows = random_implicit_csr(n_users=200, n_items=50, density=0.3, seed=4)
    net = MultVAENet(50, hidden=8, latent=4).train()
    dropped = net.encoder_input(RowBatch(np.arange(200), rows, CPU).sparse).to_dense().numpy()
    full = np_normalize(rows.toarray())  # the norm of the whole row, before dropout
    stored = rows.toarray() > 0
    kept = dropped[stored] != 0
    np.testing.assert_allclose(dropped[stored][kept], 2.0 * full[stored][kept], rtol=1e-6)
    assert (dropped[~stored] == 0).all()
    assert 0.45 < kept.mean() < 0.55  # keep_prob 0.5
    net.eval()
    np.testing.assert_allclose(net.encoder_input(torch.from_numpy(rows.toarray())).numpy(), full, rtol=1e-6)


@pytest.mark.parametrize("net_class", [MultVAENet, MultDAENet])
def test_sparse_input_forward_equals_dense_input_forward(net_class):
    rows = random_implicit_csr(n_users=30, n_items=40, density=0.2, seed=5).tolil()
    rows[3, :] = 0  # one empty row
    rows = rows.tocsr()
    rows.eliminate_zeros()
    torch.manual_seed(1)
    net = net_class(40, hidden=16, latent=6).eval()  # dropout off, z = mu
    batch = RowBatch(np.arange(30), rows, CPU)
    with torch.no_grad():
        from_sparse, from_dense = net(batch.sparse), net(batch.dense)
    from_sparse = from_sparse[0] if isinstance(from_sparse, tuple) else from_sparse
    from_dense = from_dense[0] if isinstance(from_dense, tuple) else from_dense
    assert batch.sparse.layout == torch.sparse_coo
    np.testing.assert_allclose(from_sparse.numpy(), from_dense.numpy(), rtol=1e-5, atol=1e-6)
    assert np.isfinite(from_sparse.numpy()).all()


# -- the KL anneal as the loss uses it -------------------------------------------------------
@pytest.mark.parametrize("update, beta", [(0, 0.0), (1, 1 / 200_000), (20_000, 0.1), (39_999, 39_999 / 200_000),
                                          (40_000, 0.2), (200_000, 0.2), (1_000_000, 0.2)])
def test_kl_weight_in_the_loss_is_min_cap_update_over_total(update, beta):
    x, batch = tiny_batch()
    net = MultVAENet(6, hidden=5, latent=3, dropout=0.0).train()
    model = MultVAE(hidden=5, latent=3, dropout=0.0)
    terms = model.batch_loss(net, batch, TrainingState(update=update, generator=torch.Generator().manual_seed(0)))
    assert float(terms["beta"]) == pytest.approx(beta, rel=1e-12, abs=1e-15)
    assert model.beta(update) == pytest.approx(min(0.2, update / 200_000))
    assert float(terms["loss"].detach()) == pytest.approx(float(terms["nll"]) + beta * float(terms["kl"]), rel=1e-6)


def test_training_counts_updates_for_the_anneal():
    rows = random_implicit_csr(n_users=9, n_items=12, density=0.3, seed=2)
    model = MultVAE(hidden=8, latent=3, epochs=4, batch_size=3, total_anneal_steps=10, beta_cap=0.5, device="cpu")
    model.fit(rows)
    assert model.n_updates_ == 12  # 3 batches x 4 epochs
    # beta of update u (u updates done before it) = min(0.5, u / 10); each epoch records its batches' mean
    expected = [np.mean([min(0.5, u / 10) for u in range(3 * e, 3 * e + 3)]) for e in range(4)]
    np.testing.assert_allclose(model.history_.column("beta"), expected, rtol=1e-6)
    assert model.beta_reached_ == 0.5 and model.best_epoch_ == 4


# -- real data: better than popularity ---------------------------------------------------------
@pytest.fixture(scope="module")
def ml100k_strong(ml100k):
    return strong_generalization(ml100k, n_heldout=100, seed=98765)


@pytest.fixture(scope="module")
def popularity_ndcg(ml100k_strong):
    split = ml100k_strong
    model = Popularity().fit(split.train)
    return evaluate_ranking(model, split.test_fold_in.matrix, split.test_heldout.matrix, ks=(100,),
                            metrics=("ndcg",)).metrics["ndcg@100"]


@pytest.mark.parametrize("model_class", [MultVAE, MultDAE])
def test_beats_popularity_on_ml100k_heldout_users(ml100k_strong, popularity_ndcg, model_class):
    split = ml100k_strong
    # the paper's architecture; fewer epochs than vae_cf's 200, made up for by smaller batches and a larger lr
    model = model_class(epochs=5, batch_size=100, lr=3e-3, device="cpu", seed=0)
    model.fit(split.train, validation=(split.validation_fold_in, split.validation_heldout))
    ndcg = evaluate_ranking(model, split.test_fold_in.matrix, split.test_heldout.matrix, ks=(100,),
                            metrics=("ndcg",)).metrics["ndcg@100"]
    assert 1 <= model.best_epoch_ <= 5
    assert model.history_.best_validation == max(model.history_.column("validation"))
    assert ndcg > popularity_ndcg + 0.05, (ndcg, popularity_ndcg)


# Mixed precision: training under bfloat16 autocast keeps the metric within this much of float32 training
# (same seed, same data; measured differences 0.0002 and 0.0007). bfloat16 keeps 8 bits of mantissa, the weights drift
# apart a little, so the tolerance is set by the metric's run-to-run spread rather than by rounding.
BF16_NDCG_TOLERANCE = 0.01


@pytest.mark.parametrize("model_class", [MultVAE, MultDAE])
def test_bf16_training_stays_within_tolerance_of_fp32(ml100k_strong, model_class):
    split = ml100k_strong
    results = {}
    for precision in ("fp32", "bf16"):
        model = model_class(epochs=5, batch_size=100, lr=3e-3, device="cpu", seed=0, precision=precision)
        model.fit(split.train)
        results[precision] = evaluate_ranking(model, split.test_fold_in.matrix, split.test_heldout.matrix,
                                              ks=(100,), metrics=("ndcg",)).metrics["ndcg@100"]
        assert model.score(split.test_fold_in.matrix[:3]).dtype == np.float32  # scores stay float32
    assert abs(results["bf16"] - results["fp32"]) <= BF16_NDCG_TOLERANCE, results


# -- fold-in: scores are a function of the row ----------------------------------------------------
@pytest.fixture(scope="module", params=[MultVAE, MultDAE])
def fitted(request):
    rows = random_implicit_csr(n_users=60, n_items=30, density=0.2, seed=7)
    return request.param(hidden=16, latent=4, epochs=3, batch_size=20, device="cpu").fit(rows), rows


def test_training_user_scored_from_its_row_equals_the_networks_view(fitted):
    model, rows = fitted
    scores = model.score(rows[:8])
    net = model.module_.eval()
    with torch.no_grad():
        own = net(torch.from_numpy(rows[:8].toarray()))  # the network on the user's training row, dense path
    own = (own[0] if isinstance(own, tuple) else own).numpy()
    np.testing.assert_allclose(scores, own, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.argsort(-scores, axis=1, kind="stable")[:, :10],
                                  np.argsort(-own, axis=1, kind="stable")[:, :10])
    one_by_one = np.vstack([model.score(rows[i]) for i in range(8)])  # no batch effects in eval mode
    np.testing.assert_allclose(one_by_one, scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.score(rows[:8]), scores)  # deterministic: no dropout, z = mu


def test_unseen_and_empty_users_are_scored(fitted):
    model, rows = fitted
    new = random_implicit_csr(n_users=4, n_items=rows.shape[1], density=0.4, seed=123)
    ids, scores = model.recommend(new, n=5)
    assert ids.shape == (4, 5) and (ids >= 0).all() and np.isfinite(scores).all()
    empty = model.score(sp.csr_matrix((2, rows.shape[1]), dtype=np.float32))
    assert np.isfinite(empty).all() and np.allclose(empty[0], empty[1])


def test_scoring_leaves_the_training_mode_as_it_was(fitted):
    model, rows = fitted
    model.module_.train()
    model.score(rows[:2])
    assert model.module_.training
    model.module_.eval()


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_class", [MultVAE, MultDAE])
def test_an_empty_training_row_is_kept_without_nan(model_class):
    rows = random_implicit_csr(n_users=20, n_items=15, density=0.3, seed=8).tolil()
    rows[4, :] = 0
    rows = rows.tocsr()
    rows.eliminate_zeros()
    assert rows[4].nnz == 0
    model = model_class(hidden=8, latent=3, epochs=2, batch_size=7, device="cpu").fit(rows)
    assert all(np.isfinite(model.history_.column("loss")))
    assert np.isfinite(model.score(rows)).all()


@pytest.mark.parametrize("model_class", [MultVAE, MultDAE])
def test_wrong_number_of_columns_is_a_value_error(model_class, fitted):
    model, rows = fitted
    with pytest.raises(ValueError, match="user_items has 29 columns; expected 30"):
        model.score(rows[:2, :29])
    fresh = model_class(hidden=8, latent=3, epochs=1, device="cpu")
    with pytest.raises(ValueError, match="validation fold_in has 29 columns; expected 30"):
        fresh.fit(rows, validation=(rows[:5, :29], rows[:5, :29]))
    with pytest.raises(ValueError, match="validation must be a pair"):
        fresh.fit(rows, validation=rows[:5])


@pytest.mark.parametrize("name, value", [
    ("hidden", 0), ("hidden", 2.5), ("latent", -1), ("dropout", 1.0), ("dropout", -0.1), ("epochs", 0),
    ("batch_size", 0), ("lr", 0.0), ("lr", float("nan")), ("l2", -1.0), ("seed", -1), ("seed", "a"),
    ("patience", 0), ("progress", "yes"), ("precision", "fp16"),
])
@pytest.mark.parametrize("model_class", [MultVAE, MultDAE])
def test_bad_hyper_parameters_are_value_errors_naming_them(model_class, name, value):
    rows = random_implicit_csr(n_users=5, n_items=6, seed=0)
    with pytest.raises(ValueError, match=f"^{name}="):
        model_class(**{name: value}).fit(rows)


@pytest.mark.parametrize("name, value", [("beta_cap", -0.1), ("beta_cap", float("inf")), ("total_anneal_steps", 0),
                                         ("total_anneal_steps", 1.5)])
def test_bad_anneal_parameters_are_value_errors_naming_them(name, value):
    with pytest.raises(ValueError, match=f"^{name}="):
        MultVAE(**{name: value}).fit(random_implicit_csr(n_users=5, n_items=6, seed=0))


def test_bad_device_is_a_value_error():
    with pytest.raises(ValueError, match="device='tpu'"):
        MultVAE(device="tpu").fit(random_implicit_csr(n_users=5, n_items=6, seed=0))


def test_refit_starts_from_fresh_weights_and_same_seed_same_scores():
    rows = random_implicit_csr(n_users=30, n_items=20, density=0.3, seed=9)
    model = MultVAE(hidden=8, latent=3, epochs=2, batch_size=10, device="cpu", seed=5)
    first = model.fit(rows).score(rows[:4])
    second = model.fit(rows).score(rows[:4])
    np.testing.assert_allclose(first, second, rtol=1e-6, atol=1e-7)


def test_item_embeddings_are_the_first_and_last_layers_per_item():
    model = MultDAE(hidden=12, latent=4, epochs=1).fit(random_implicit_csr(30, 20))
    inputs, outputs = model.item_embeddings(), model.item_embeddings("output")
    assert inputs.shape == outputs.shape == (20, 12) and inputs.dtype == np.float32
    x = np.zeros((1, 20), dtype=np.float32)
    x[0, 7] = 1.0
    first = model.module_.encoder.layers[0]
    np.testing.assert_allclose(first(torch.from_numpy(x)).detach().numpy()[0] - first.bias.detach().numpy(),
                               inputs[7], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="layer='middle'"):
        model.item_embeddings("middle")
