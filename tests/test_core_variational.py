"""aerec.core.variational: latent layer, reparameterisation, KL, beta schedules, ELBO and IWAE, checked on numbers.

Stochastic checks use seeded generators and float64, with tolerances stated
in standard errors of the Monte Carlo estimate.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aerec.core.losses import gaussian_nll
from aerec.core.variational import (
    BetaSchedule,
    ConstantBeta,
    GaussianLatent,
    LinearAnneal,
    elbo,
    gaussian_log_density,
    iwae_bound,
    kl_standard_normal,
    make_beta_schedule,
    reparameterize,
    standard_normal_log_density,
    vae_cf_init_,
)

F64 = torch.float64


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- a linear-Gaussian model whose log p(x) and posterior are known in closed form ----
# z ~ N(0, I_2);  x = W z + b + noise,  noise ~ N(0, SIGMA^2 I_4)
# => p(x) = N(b, W W^T + SIGMA^2 I),  p(z|x) = N(S W^T (x - b) / SIGMA^2, S),  S = (I + W^T W / SIGMA^2)^-1
# W's columns are orthogonal, so that the true posterior's covariance is diagonal (a q this module can express)
W = torch.tensor([[1.0, 0.5], [-0.5, 1.0], [0.6, 0.2], [0.2, -0.6]], dtype=F64)
B = torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=F64)
SIGMA = 0.5
X = torch.tensor([[1.0, 0.5, -0.5, 0.2], [-1.0, 0.3, 1.5, -0.4], [0.0, 0.0, 0.0, 0.0]], dtype=F64)


def true_log_px(x: torch.Tensor) -> torch.Tensor:
    cov = W @ W.T + SIGMA**2 * torch.eye(4, dtype=F64)
    return torch.distributions.MultivariateNormal(B, cov).log_prob(x)


def true_posterior(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cov = torch.linalg.inv(torch.eye(2, dtype=F64) + W.T @ W / SIGMA**2)
    # test set-up: diagonal, as W^T W is (to rounding: with fused multiply-adds 0.6 * 0.2 - 0.2 * 0.6 leaves ~1e-17)
    assert abs(float(cov[0, 1])) < 1e-15
    mean = (x - B) @ W / SIGMA**2 @ cov
    return mean, torch.log(torch.diagonal(cov)).expand_as(mean).clone()


def rough_posterior(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A deliberately poor q(z|x): shifted mean, variance doubled (ELBO about 1.9 nats below log p(x))."""
    mean, logvar = true_posterior(x)
    return mean + torch.tensor([0.5, -0.4], dtype=F64), logvar + 0.7


def log_likelihood_for(x: torch.Tensor, k: int = 1):
    """log p(x|z) for z of shape (k * rows, 2), sample-major as iwae_bound passes it."""
    return lambda z: -gaussian_nll(z @ W.T + B, x.repeat(k, 1), log_sigma=math.log(SIGMA))


def analytic_elbo(x, mu, logvar) -> torch.Tensor:
    """E_q[log p(x|z)] - KL in closed form: E||x - W z - b||^2 = ||x - W mu - b||^2 + sum_j ||W_:j||^2 var_j."""
    sq = (x - mu @ W.T - B).square().sum(-1) + (torch.exp(logvar) * W.square().sum(0)).sum(-1)
    expected_ll = -0.5 * sq / SIGMA**2 - 4 * (math.log(SIGMA) + 0.5 * math.log(2 * math.pi))
    return expected_ll - kl_standard_normal(mu, logvar)


def repeated_bound(k: int, repeats: int, seed: int) -> torch.Tensor:
    """IWAE_k for every row of X, drawn ``repeats`` times in one call: shape (repeats, rows)."""
    mu, logvar = rough_posterior(X)
    x = X.repeat(repeats, 1)
    bound = iwae_bound(log_likelihood_for(x, k), mu.repeat(repeats, 1), logvar.repeat(repeats, 1), k,
                       generator=seeded(seed))
    return bound.reshape(repeats, X.shape[0])


# -- GaussianLatent -------------------------------------------------------------------
def test_gaussian_latent_splits_mu_then_logvar():
    layer = GaussianLatent(5, 3)
    assert layer.linear.out_features == 6  # 2 * latent_dim, as vae_cf's last encoder layer
    h = torch.randn(4, 5, generator=seeded())
    mu, logvar = layer(h)
    out = layer.linear(h)
    assert mu.shape == logvar.shape == (4, 3)
    torch.testing.assert_close(mu, out[:, :3])
    torch.testing.assert_close(logvar, out[:, 3:])


def test_xavier_init_matches_vae_cf():
    torch.manual_seed(0)
    layer = GaussianLatent(300, 100, init="xavier")
    limit = math.sqrt(6.0 / (300 + 200))  # Glorot uniform bound for fan_in 300, fan_out 2 * 100
    weight, bias = layer.linear.weight.detach(), layer.linear.bias.detach()
    assert weight.abs().max() <= limit and weight.abs().max() > 0.95 * limit
    assert weight.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.02)  # std of U(-a, a) is a / sqrt(3)
    assert bias.abs().max() <= 0.002  # truncated at two standard deviations
    assert 0.0005 < bias.std().item() < 0.001  # a N(0, 0.001^2) truncated at +-2 std has std 0.00088


def test_gaussian_latent_rejects_bad_arguments():
    with pytest.raises(ValueError, match="latent_dim=0"):
        GaussianLatent(5, 0)
    with pytest.raises(ValueError, match="in_features=2.5"):
        GaussianLatent(2.5, 3)
    with pytest.raises(ValueError, match="init='glorot'"):
        GaussianLatent(5, 3, init="glorot")
    with pytest.raises(ValueError, match=r"shape \(4, 6\).*in_features=5"):
        GaussianLatent(5, 3)(torch.zeros(4, 6))
    with pytest.raises(ValueError, match="Conv1d"):
        vae_cf_init_(torch.nn.Conv1d(1, 1, 1))


# -- reparameterize -------------------------------------------------------------------
def test_reparameterize_without_sampling_returns_mu():
    mu, logvar = torch.randn(3, 2, generator=seeded()), torch.randn(3, 2, generator=seeded(1))
    assert reparameterize(mu, logvar, False) is mu


def test_reparameterize_has_mean_mu_and_variance_exp_logvar():
    n = 200_000
    mu = torch.tensor([1.0, -2.0], dtype=F64)
    logvar = torch.log(torch.tensor([4.0, 0.25], dtype=F64))
    z = reparameterize(mu.expand(n, 2), logvar.expand(n, 2), True, generator=seeded(3))
    std = torch.exp(0.5 * logvar)
    # mean: standard error std / sqrt(n) = (0.0045, 0.0011); allow 5 of them
    assert torch.all((z.mean(0) - mu).abs() < 5 * std / math.sqrt(n))
    # variance of a normal sample: relative standard error sqrt(2 / n) = 0.0032; allow 5 of them
    torch.testing.assert_close(z.var(0), std.square(), rtol=5 * math.sqrt(2 / n), atol=0.0)


def test_reparameterize_passes_gradients_to_mu_and_logvar():
    mu = torch.zeros(2, 3, dtype=F64, requires_grad=True)
    logvar = torch.zeros(2, 3, dtype=F64, requires_grad=True)
    eps = torch.randn(2, 3, generator=seeded(5), dtype=F64)
    reparameterize(mu, logvar, True, generator=seeded(5)).sum().backward()
    torch.testing.assert_close(mu.grad, torch.ones_like(mu))
    torch.testing.assert_close(logvar.grad, 0.5 * eps)  # d/dlogvar of eps * exp(logvar / 2) at 0


def test_reparameterize_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"mu has shape \(2, 3\) but logvar has shape \(2, 2\)"):
        reparameterize(torch.zeros(2, 3), torch.zeros(2, 2), True)
    with pytest.raises(ValueError, match="sample=1"):
        reparameterize(torch.zeros(2, 3), torch.zeros(2, 3), 1)


# -- KL and densities -----------------------------------------------------------------
def test_kl_by_hand():
    # row 0: mu = (0, 0), logvar = (0, 0): q = p, KL = 0
    # row 1: mu = (1, 2), logvar = (ln 2, 0): 0.5 (-ln 2 + 2 + 1 - 1) + 0.5 (0 + 1 + 4 - 1) = 1 - ln2 / 2 + 2
    mu = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=F64)
    logvar = torch.tensor([[0.0, 0.0], [math.log(2.0), 0.0]], dtype=F64)
    torch.testing.assert_close(kl_standard_normal(mu, logvar), torch.tensor([0.0, 3.0 - math.log(2.0) / 2], dtype=F64))


def test_analytic_kl_equals_monte_carlo_estimate():
    n = 200_000
    mu = torch.tensor([[0.3, -1.2, 0.8]], dtype=F64)
    logvar = torch.tensor([[-0.5, 0.4, -1.5]], dtype=F64)
    z = reparameterize(mu.expand(n, 3), logvar.expand(n, 3), True, generator=seeded(11))
    samples = gaussian_log_density(z, mu.expand(n, 3), logvar.expand(n, 3)) - standard_normal_log_density(z)
    estimate, stderr = samples.mean(), samples.std() / math.sqrt(n)
    exact = kl_standard_normal(mu, logvar)[0]
    # KL = 1.6898...; the Monte Carlo standard error is about 0.0036: allow 4 of them (about 0.015)
    assert stderr < 0.005
    assert abs(estimate - exact) < 4 * stderr


def test_log_densities_match_torch_distributions():
    z = torch.randn(5, 3, generator=seeded(), dtype=F64)
    mu = torch.randn(5, 3, generator=seeded(1), dtype=F64)
    logvar = torch.randn(5, 3, generator=seeded(2), dtype=F64)
    normal = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    torch.testing.assert_close(gaussian_log_density(z, mu, logvar), normal.log_prob(z).sum(-1))
    standard = torch.distributions.Normal(torch.zeros(()), torch.ones(())).log_prob(z).sum(-1)
    torch.testing.assert_close(standard_normal_log_density(z), standard)
    with pytest.raises(ValueError, match=r"mu has shape \(5, 3\) but z has shape \(5, 2\)"):
        gaussian_log_density(z[:, :2], mu, logvar)


# -- beta schedules -------------------------------------------------------------------
def test_linear_anneal_is_vae_cf_formula():
    # vae_cf: anneal = min(anneal_cap, 1. * update_count / total_anneal_steps), 0.2 and 200,000.
    # The slope is 1 / 200,000, so beta hits the cap 0.2 at update 40,000 (not 200,000).
    anneal = LinearAnneal()
    assert anneal(0) == 0.0
    assert anneal(10_000) == 0.05
    assert anneal(20_000) == 0.1
    assert anneal(40_000) == 0.2
    assert anneal(100_000) == 0.2
    assert anneal(200_000) == 0.2
    assert anneal(10**9) == 0.2
    assert anneal(np.int64(30_000)) == 0.15
    assert LinearAnneal(cap=1.0, total_anneal_steps=10)(5) == 0.5
    updates = np.arange(0, 60_000, 97)
    assert np.all(np.diff([anneal(int(u)) for u in updates]) >= 0)  # never decreases


def test_constant_beta_and_make_beta_schedule():
    assert ConstantBeta()(0) == 1.0
    assert ConstantBeta(0.5)(123_456) == 0.5
    assert ConstantBeta(0)(7) == 0.0
    assert make_beta_schedule(0.3) == ConstantBeta(0.3)
    assert make_beta_schedule(1) == ConstantBeta(1.0)
    anneal = LinearAnneal(cap=0.5, total_anneal_steps=1000)
    assert make_beta_schedule(anneal) is anneal
    assert isinstance(anneal, BetaSchedule)
    assert repr(anneal) == "LinearAnneal(cap=0.5, total_anneal_steps=1000)"


@pytest.mark.parametrize("build, message", [
    (lambda: ConstantBeta(-0.1), "beta=-0.1"),
    (lambda: ConstantBeta(float("nan")), "beta=nan"),
    (lambda: ConstantBeta(True), "beta=True"),
    (lambda: LinearAnneal(cap=-1.0), "cap=-1.0"),
    (lambda: LinearAnneal(total_anneal_steps=0), "total_anneal_steps=0"),
    (lambda: LinearAnneal(total_anneal_steps=1.5), "total_anneal_steps=1.5"),
    (lambda: LinearAnneal()(-1), "update=-1"),
    (lambda: LinearAnneal()(2.0), "update=2.0"),
    (lambda: ConstantBeta()(-3), "update=-3"),
    (lambda: make_beta_schedule("0.2"), "'0.2'"),
    (lambda: make_beta_schedule(-0.2), "beta=-0.2"),
])
def test_schedules_reject_bad_values(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# -- ELBO and IWAE --------------------------------------------------------------------
def test_elbo_is_log_likelihood_of_one_draw_minus_beta_kl():
    mu, logvar = rough_posterior(X)
    ll = log_likelihood_for(X)
    z = reparameterize(mu, logvar, True, generator=seeded(7))
    expected = ll(z) - 0.3 * kl_standard_normal(mu, logvar)
    torch.testing.assert_close(elbo(ll, mu, logvar, beta=0.3, generator=seeded(7)), expected)


def test_iwae_with_one_sample_and_elbo_agree_on_average_with_the_closed_form():
    repeats = 20_000
    mu, logvar = rough_posterior(X)
    x = X.repeat(repeats, 1)
    elbos = elbo(log_likelihood_for(x), mu.repeat(repeats, 1), logvar.repeat(repeats, 1),
                 generator=seeded(21)).reshape(repeats, -1)
    iwae_1 = repeated_bound(1, repeats, seed=22)
    exact = analytic_elbo(X, mu, logvar)  # about (-7.9, -10.2, -4.9)
    for draws in (elbos, iwae_1):
        stderr = draws.std(0) / math.sqrt(repeats)  # about 0.02
        assert torch.all((draws.mean(0) - exact).abs() < 4 * stderr)
    assert torch.all((elbos.mean(0) - iwae_1.mean(0)).abs() < 0.2)


def test_iwae_rises_with_k_and_approaches_log_px():
    # log p(x) = (-6.08, -8.33, -3.05); the gap log p(x) - mean IWAE_k is about 1.85, 0.33, 0.03, 0.003 nats
    # for k = 1, 5, 50, 500, with standard errors of at most 0.045 (k = 1, 4,000 repeats) and 0.004 (k = 500).
    log_px = true_log_px(X)
    elbo_mean = analytic_elbo(X, *rough_posterior(X))
    repeats = {1: 4000, 5: 4000, 50: 4000, 500: 400}
    means = {k: repeated_bound(k, n, seed=k).mean(0) for k, n in repeats.items()}
    gaps = {k: log_px - mean for k, mean in means.items()}
    assert torch.all(means[5] > means[1] + 1.0)
    assert torch.all(means[50] > means[5] + 0.2)
    assert torch.all(means[50] > elbo_mean + 1.5)
    assert torch.all(gaps[500] < gaps[50]) and torch.all(gaps[50] < gaps[5]) and torch.all(gaps[5] < gaps[1])
    assert torch.all(gaps[500] > -0.02)  # a lower bound, up to Monte Carlo error
    assert torch.all(gaps[500] < 0.02)


def test_iwae_with_the_exact_posterior_is_log_px_for_every_draw():
    # q(z|x) = p(z|x) makes every importance weight p(x): the bound is exact whatever k and the draw.
    mu, logvar = true_posterior(X)
    for k in (1, 3):
        bound = iwae_bound(log_likelihood_for(X, k), mu, logvar, k, generator=seeded(k))
        torch.testing.assert_close(bound, true_log_px(X))


def test_iwae_passes_samples_sample_major():
    captured = []

    def log_likelihood(z):
        captured.append(z)
        return torch.zeros(z.shape[0], dtype=z.dtype)

    mu = torch.tensor([[0.0, 0.0], [100.0, 100.0], [-100.0, -100.0]], dtype=F64)
    logvar = torch.full((3, 2), -20.0, dtype=F64)  # std 4.5e-5: each sample sits on its row's mu
    iwae_bound(log_likelihood, mu, logvar, 4)
    assert len(captured) == 1  # one call for all k samples
    assert captured[0].shape == (12, 2)
    torch.testing.assert_close(captured[0], mu.repeat(4, 1), atol=1e-3, rtol=0)  # row s * 3 + i is sample s of row i


def test_iwae_and_elbo_reject_bad_arguments():
    mu, logvar = rough_posterior(X)
    ll = log_likelihood_for(X)
    with pytest.raises(ValueError, match="k=0; expected an integer >= 1"):
        iwae_bound(ll, mu, logvar, 0)
    with pytest.raises(ValueError, match="k=2.0"):
        iwae_bound(ll, mu, logvar, 2.0)
    with pytest.raises(ValueError, match=r"log_likelihood returned \(3, 4\); expected shape \(3,\)"):
        iwae_bound(lambda z: torch.zeros(3, 4), mu, logvar, 1)
    with pytest.raises(ValueError, match="log_likelihood is str"):
        elbo("ll", mu, logvar)
    with pytest.raises(ValueError, match="beta=-1"):
        elbo(ll, mu, logvar, beta=-1)
