"""Tests for aerec.core.penalties against hand computations and autograd Jacobians."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from aerec.core.layers import DenseStack, weight_matrices
from aerec.core.penalties import (
    contractive,
    contractive_sigmoid,
    jacobian_frobenius_sq,
    kl_sparsity,
    l1_activity,
    l2_weight_decay,
)


def test_l2_weight_decay_is_half_lambda_times_squared_norms():
    w = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    v = torch.tensor([[3.0], [-1.0]])
    # ||W||^2 = 1 + 4 + 0.25 = 5.25, ||V||^2 = 10; (0.2 / 2) * 15.25 = 1.525
    assert float(l2_weight_decay([w, v], 0.2)) == pytest.approx(1.525)
    assert float(l2_weight_decay(iter([w]), 0.0)) == 0.0


def test_l2_weight_decay_counts_a_tied_weight_once_and_has_the_right_gradient():
    torch.manual_seed(0)
    encoder = DenseStack([6, 4])
    model = nn.Sequential(encoder, encoder.tied_decoder())
    penalty = l2_weight_decay(weight_matrices(model), 0.5)
    w = encoder.layers[0].weight
    assert float(penalty.detach()) == pytest.approx(0.25 * float(w.detach().pow(2).sum()))
    penalty.backward()
    torch.testing.assert_close(w.grad, 0.5 * w.detach())


def test_l1_activity_is_lambda_times_mean_row_sum():
    h = torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.5, -1.0]])
    # row sums of |h|: 3 and 2 -> mean 2.5
    assert float(l1_activity(h, 0.1)) == pytest.approx(0.25)


def test_kl_sparsity_equals_a_hand_computation():
    h = torch.tensor([[0.1, 0.8], [0.3, 0.4]], dtype=torch.float64)  # rho_hat = (0.2, 0.6)
    rho, weight = 0.1, 3.0
    expected = sum(
        rho * math.log(rho / r) + (1 - rho) * math.log((1 - rho) / (1 - r)) for r in (0.2, 0.6)
    )
    assert float(kl_sparsity(h, rho, weight)) == pytest.approx(weight * expected, rel=1e-12)


def test_kl_sparsity_is_zero_at_the_target_and_positive_elsewhere():
    h = torch.tensor([[0.1, 0.05], [0.1, 0.15]], dtype=torch.float64)  # rho_hat = (0.1, 0.1)
    assert float(kl_sparsity(h, 0.1, 2.0)) == pytest.approx(0.0, abs=1e-15)
    assert float(kl_sparsity(h, 0.3, 2.0)) > 0


def test_kl_sparsity_stays_finite_for_saturated_codes():
    h = torch.tensor([[0.0, 1.0], [0.0, 1.0]], requires_grad=True)
    value = kl_sparsity(h, 0.05, 1.0)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(h.grad).all()


@pytest.mark.parametrize("seed", range(3))
def test_contractive_sigmoid_equals_the_autograd_jacobian(seed):
    torch.manual_seed(seed)
    layer = nn.Linear(7, 4).double()
    x = torch.randn(5, 7, dtype=torch.float64)

    def encoder(inputs):
        return torch.sigmoid(layer(inputs))

    closed = contractive_sigmoid(encoder(x), layer.weight, 0.3)
    by_autograd = 0.3 * jacobian_frobenius_sq(encoder, x)
    torch.testing.assert_close(closed, by_autograd, rtol=1e-5, atol=0)
    torch.testing.assert_close(contractive(encoder, x, 0.3), by_autograd)

    # Both are differentiable in the layer's weight, with the same gradient.
    grad_closed = torch.autograd.grad(closed, layer.weight)[0]
    grad_autograd = torch.autograd.grad(contractive(encoder, x, 0.3), layer.weight)[0]
    torch.testing.assert_close(grad_closed, grad_autograd, rtol=1e-5, atol=1e-12)


def test_contractive_sigmoid_matches_a_per_sample_loop():
    torch.manual_seed(0)
    w = torch.randn(3, 4, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    x = torch.randn(2, 4, dtype=torch.float64)
    h = torch.sigmoid(x @ w.t() + b)
    total = 0.0
    for n in range(2):
        jac = torch.autograd.functional.jacobian(lambda row: torch.sigmoid(row @ w.t() + b), x[n])
        total += float(jac.pow(2).sum())
    assert float(contractive_sigmoid(h, w, 1.0)) == pytest.approx(total / 2, rel=1e-12)


def test_jacobian_of_a_linear_map_is_its_weight():
    torch.manual_seed(0)
    w = torch.randn(3, 5, dtype=torch.float64)
    x = torch.randn(4, 5, dtype=torch.float64)
    value = jacobian_frobenius_sq(lambda inputs: inputs @ w.t(), x)
    assert float(value) == pytest.approx(float(w.pow(2).sum()), rel=1e-12)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda h: kl_sparsity(h, 0.0, 1.0), r"rho=0.0; expected a finite number in \(0, 1\)"),
        (lambda h: kl_sparsity(h, 1.0, 1.0), r"rho=1.0"),
        (lambda h: kl_sparsity(h, 1.2, 1.0), r"rho=1.2"),
        (lambda h: kl_sparsity(h, 0.1, -1.0), r"weight=-1.0; expected a finite number >= 0"),
        (lambda h: l1_activity(h, -0.5), r"lam=-0.5; expected a finite number >= 0"),
        (lambda h: l2_weight_decay([h], -2), r"lam=-2"),
        (lambda h: l2_weight_decay([], 0.1), r"weights holds 0 item\(s\)"),
        (lambda h: contractive_sigmoid(h, torch.ones(4, 3), -1e-3), r"lam=-0.001"),
        (
            lambda h: contractive_sigmoid(h, torch.ones(4, 3), 1.0),
            r"weight_matrix has shape \(4, 3\); expected \(3, n_inputs\)",
        ),
        (lambda h: contractive(torch.sigmoid, h, float("inf")), r"lam=inf"),
        (lambda h: l1_activity(h[0], 1.0), r"h is shape \(3,\).*expected a floating-point tensor of shape"),
        (lambda h: jacobian_frobenius_sq(torch.sigmoid, h.to_sparse()), r"x is shape \(2, 3\), layout .*sparse_coo"),
    ],
)
def test_bad_arguments_are_rejected_with_the_value_in_the_message(call, message):
    h = torch.full((2, 3), 0.5)
    with pytest.raises(ValueError, match=message):
        call(h)


def test_penalties_are_scalars():
    h = torch.rand(4, 3)
    for value in (
        l2_weight_decay([torch.ones(2, 2)], 1.0),
        l1_activity(h, 1.0),
        kl_sparsity(h, 0.1, 1.0),
        contractive_sigmoid(h, torch.ones(3, 5), 1.0),
        jacobian_frobenius_sq(torch.sigmoid, h),
    ):
        assert value.shape == () and np.isfinite(float(value))
