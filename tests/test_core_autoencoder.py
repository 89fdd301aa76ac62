"""aerec.models.Autoencoder: the properties each kind must show, measured on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.linalg import subspace_angles
from scipy.stats import rankdata

from aerec.models import Autoencoder, NotFittedError


def low_rank(n=2000, d=12, k=3, scales=(5.0, 3.0, 2.0), noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, k)))[0]
    signal = (rng.normal(size=(n, k)) * np.asarray(scales)) @ basis.T
    return signal + noise * rng.normal(size=(n, d)), signal, basis


def auroc(scores, labels) -> float:
    ranks = rankdata(scores)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_linear_undercomplete_learns_the_principal_subspace():
    X, _, _ = low_rank()
    X = X - X.mean(axis=0)
    top = np.linalg.svd(X, full_matrices=False)[2][:3].T  # d x k: the top-3 right singular vectors
    ae = Autoencoder(kind="undercomplete", hidden=(3,), activation="identity", optimizer="lbfgs", lr=1.0,
                     batch_size=None, epochs=150, device="cpu").fit(X)
    decoder = ae.module_.decoder.layers[0].weight.detach().numpy()  # d x k: columns span the learned subspace
    angles = np.degrees(subspace_angles(decoder, top))
    print("principal angles (degrees):", np.round(angles, 3))
    assert angles.max() < 5.0


def test_denoising_removes_most_of_the_noise():
    clean_train = low_rank(n=3000, d=30, noise=0.0, seed=1)[0]
    rng = np.random.default_rng(2)
    clean_test = low_rank(n=500, d=30, noise=0.0, seed=1)[0][:500]
    noisy_test = clean_test + 0.5 * rng.normal(size=clean_test.shape)
    ae = Autoencoder(kind="denoising", hidden=(8,), activation="identity", corruption="gaussian", corruption_level=0.5,
                     epochs=60, batch_size=100, lr=1e-2, device="cpu").fit(clean_train)
    noisy_error = np.mean((noisy_test - clean_test) ** 2)
    denoised_error = np.mean((ae.denoise(noisy_test) - clean_test) ** 2)
    print(f"MSE to clean: noisy {noisy_error:.4f}, denoised {denoised_error:.4f}")
    assert denoised_error < 0.35 * noisy_error


def test_anomaly_scores_find_injected_outliers():
    X, _, _ = low_rank(n=3000, d=20, k=3, noise=0.1, seed=3)
    rng = np.random.default_rng(4)
    outliers = rng.choice(len(X), size=30, replace=False)  # 1%
    X[outliers] = rng.normal(size=(30, 20)) * np.linalg.norm(X, axis=1).mean() / np.sqrt(20)
    labels = np.zeros(len(X), dtype=bool)
    labels[outliers] = True
    ae = Autoencoder(kind="undercomplete", hidden=(3,), activation="identity", epochs=40, batch_size=100, lr=1e-2,
                     device="cpu").fit(X)
    value = auroc(ae.anomaly_score(X), labels)
    print(f"AUROC {value:.4f}")
    assert value >= 0.95


def binary_patterns(n=2000, d=40, seed=5):
    rng = np.random.default_rng(seed)
    prototypes = rng.random((8, d)) < 0.3
    picks = prototypes[rng.integers(0, 8, n)]
    flips = rng.random((n, d)) < 0.05
    return (picks ^ flips).astype(np.float32)


def test_kl_sparsity_drives_the_mean_activation_to_rho():
    X = binary_patterns()
    common = dict(kind="sparse", hidden=(30,), activation="sigmoid", loss="bernoulli", rho=0.05, epochs=60,
                  batch_size=100, lr=1e-2, device="cpu")
    sparse = Autoencoder(sparsity_weight=10.0, **common).fit(X)
    free = Autoencoder(sparsity_weight=0.0, **common).fit(X)
    sparse_mean, free_mean = sparse.embed(X).mean(), free.embed(X).mean()
    print(f"mean activation: with KL penalty {sparse_mean:.4f}, without {free_mean:.4f}")
    assert abs(sparse_mean - 0.05) < 0.01 and free_mean > 0.2  # measured: 0.0573 and 0.496


def test_iwae_bound_is_above_the_elbo_and_rises_with_k():
    X = binary_patterns(n=1000)
    vae = Autoencoder(kind="variational", hidden=(32, 4), activation="tanh", loss="bernoulli", epochs=30,
                      batch_size=100, lr=3e-3, device="cpu").fit(X)
    bounds = {k: -vae.anomaly_score(X, iwae_samples=k).mean() for k in (1, 5, 50)}
    print("mean bound per k:", {k: round(v, 4) for k, v in bounds.items()}, "gap 50-1:", round(bounds[50] - bounds[1], 4))
    assert bounds[1] < bounds[5] < bounds[50]
    np.testing.assert_array_equal(vae.anomaly_score(X[:50]), vae.anomaly_score(X[:50]))  # seeded draws


def test_variational_kind_samples_and_embeds_the_posterior_mean():
    X = binary_patterns(n=300)
    vae = Autoencoder(kind="variational", hidden=(16, 2), loss="bernoulli", epochs=3, device="cpu", beta=0.5).fit(X)
    assert vae.sample(7).shape == (7, 40) and ((vae.sample(7) >= 0) & (vae.sample(7) <= 1)).all()
    np.testing.assert_array_equal(vae.embed(X[:5]), vae.embed(X[:5]))  # the mean, not a draw
    with pytest.raises(ValueError, match="sample\\(\\) needs kind='variational'"):
        Autoencoder(epochs=1, device="cpu").fit(X).sample(3)


@pytest.mark.parametrize("kind, extra", [("undercomplete", {"tied_weights": True}), ("contractive", {"activation": "sigmoid"}),
                                         ("contractive", {"hidden": (8, 4)}), ("sparse", {"sparsity": "l1"}),
                                         ("denoising", {"corruption": "salt_and_pepper"}), ("variational", {"iwae_samples": 3})])
def test_every_kind_trains_and_lowers_its_loss(kind, extra):
    X = binary_patterns(n=400)
    ae = Autoencoder(kind=kind, hidden=extra.pop("hidden", (8,)), epochs=15, batch_size=50, lr=1e-2, device="cpu",
                     loss="bernoulli", **extra).fit(X)
    losses = ae.history_.column("loss")
    assert losses[-1] < losses[0] and ae.embed(X).shape[1] in (8, 4) and ae.reconstruct(X).shape == X.shape


def test_two_fits_with_one_seed_give_identical_weights_and_csr_equals_dense():
    X = binary_patterns(n=300)
    fits = [Autoencoder(kind="denoising", hidden=(6,), epochs=3, device="cpu", seed=11).fit(data)
            for data in (X, X, sp.csr_matrix(X))]
    weights = [torch.cat([p.detach().flatten() for p in f.module_.parameters()]) for f in fits]
    assert torch.equal(weights[0], weights[1]) and torch.equal(weights[0], weights[2])


def test_validation_rows_keep_the_best_epoch():
    X = binary_patterns(n=600)
    ae = Autoencoder(hidden=(8,), loss="bernoulli", epochs=8, device="cpu").fit(X[:500], validation=X[500:])
    validation = ae.history_.column("validation")
    assert ae.history_.best_validation == min(validation)
    assert np.isclose(ae.anomaly_score(X[500:]).mean(), ae.history_.best_validation, rtol=1e-5)


def test_transform_is_embed_for_pipelines():
    assert Autoencoder.transform is Autoencoder.embed


@pytest.mark.parametrize("params, message", [
    ({"kind": "overcomplete"}, "kind='overcomplete'"), ({"rho": 1.5}, "rho=1.5"), ({"beta": -0.1}, "beta=-0.1"),
    ({"iwae_samples": 0}, "iwae_samples=0"), ({"hidden": ()}, "hidden=()"), ({"loss": "poisson"}, "loss='poisson'"),
    ({"kind": "variational", "tied_weights": True}, "tied_weights=True"),
])
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        Autoencoder(**params).fit(np.ones((4, 3)))


def test_bad_input_is_named():
    ae = Autoencoder(epochs=1, device="cpu")
    with pytest.raises(NotFittedError, match="not fitted yet"):
        ae.embed(np.ones((2, 3)))
    with pytest.raises(ValueError, match="NaN or inf"):
        ae.fit(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="must be 2-D"):
        ae.fit(np.ones(5))
    ae.fit(np.ones((4, 3)))
    with pytest.raises(ValueError, match="X has 2 columns; expected 3"):
        ae.reconstruct(np.ones((2, 2)))
    with pytest.raises(ValueError, match="iwae_samples=0"):
        ae.anomaly_score(np.ones((2, 3)), iwae_samples=0)
