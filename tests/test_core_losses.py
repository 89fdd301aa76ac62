"""aerec.core.losses: per-row losses against hand-computed values and torch's own functions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from aerec.core.losses import bernoulli_nll, gaussian_nll, masked_squared_error, multinomial_nll, reduce_rows

F64 = torch.float64
LN2, LN3 = math.log(2.0), math.log(3.0)


def rand(*shape, seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# -- masked_squared_error (AutoRec) ---------------------------------------------------
def test_masked_squared_error_by_hand():
    pred = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=F64)
    target = torch.tensor([[2.0, 9.0, 5.0], [1.0, 4.0, 1.0]], dtype=F64)
    mask = torch.tensor([[True, False, True], [False, True, False]])
    # row 0: (1 - 2)^2 + (3 - 5)^2 = 1 + 4 = 5   (the 2 vs 9 entry is unobserved)
    # row 1: (0 - 4)^2 = 16
    torch.testing.assert_close(masked_squared_error(pred, target, mask), torch.tensor([5.0, 16.0], dtype=F64))
    # AutoRec sums over all observed ratings: 5 + 16 = 21
    assert reduce_rows(masked_squared_error(pred, target, mask), "sum").item() == 21.0


def test_masked_squared_error_ignores_unobserved_entries():
    mask = rand(4, 6, seed=1) > 0
    target = rand(4, 6, seed=2)
    other_target = torch.where(mask, target, torch.tensor(float("nan"), dtype=F64))  # garbage where unobserved

    def value_and_grad(t):
        pred = rand(4, 6, seed=3).requires_grad_()
        value = masked_squared_error(pred, t, mask)
        value.sum().backward()
        return value, pred.grad, pred.detach()

    value, grad, pred = value_and_grad(target)
    other_value, other_grad, _ = value_and_grad(other_target)
    torch.testing.assert_close(value, other_value)
    torch.testing.assert_close(grad, other_grad)
    assert torch.all(grad[~mask] == 0.0)
    torch.testing.assert_close(grad[mask], 2 * (pred - target)[mask])  # d/dpred (pred - target)^2


# -- multinomial_nll (Mult-DAE / Mult-VAE) --------------------------------------------
def test_multinomial_nll_by_hand():
    # softmax(0, ln 3) = (1/4, 3/4); x = (2, 1): -(2 ln(1/4) + ln(3/4)) = 2 ln 4 + ln 4 - ln 3 = 6 ln 2 - ln 3
    # second row: softmax(ln 2, ln 2) = (1/2, 1/2); x = (0, 3): -3 ln(1/2) = 3 ln 2
    logits = torch.tensor([[0.0, LN3], [LN2, LN2]], dtype=F64)
    x = torch.tensor([[2.0, 1.0], [0.0, 3.0]], dtype=F64)
    torch.testing.assert_close(multinomial_nll(logits, x), torch.tensor([6 * LN2 - LN3, 3 * LN2], dtype=F64))
    # vae_cf's neg_ll is the mean over rows: (6 ln 2 - ln 3 + 3 ln 2) / 2
    assert reduce_rows(multinomial_nll(logits, x), "mean").item() == pytest.approx((9 * LN2 - LN3) / 2, abs=1e-12)


def test_multinomial_nll_of_a_sparse_x_equals_the_dense_value_and_gradient():
    torch.manual_seed(0)
    x = (torch.rand(6, 9, dtype=F64) < 0.3).to(F64) * torch.randint(1, 4, (6, 9)).to(F64)
    x[2] = 0.0  # a row with no clicks
    grads = []
    for counts in (x, x.to_sparse()):
        logits = torch.randn(6, 9, dtype=F64, generator=torch.Generator().manual_seed(1)).requires_grad_()
        value = multinomial_nll(logits, counts)
        (value * torch.arange(1.0, 7.0, dtype=F64)).sum().backward()  # a different weight per row
        grads.append((value.detach(), logits.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-12, atol=1e-12)
    assert grads[0][0][2] == 0.0


def test_sparse_multinomial_nll_gradients_pass_gradcheck():
    from aerec.core.losses import _SparseMultinomialNLL

    generator = torch.Generator().manual_seed(3)
    rows, cols = torch.tensor([0, 0, 1, 3, 3, 3]), torch.tensor([1, 4, 0, 2, 3, 4])
    logits = torch.randn(4, 5, dtype=F64, generator=generator, requires_grad=True)
    counts = torch.rand(6, dtype=F64, generator=generator).add_(0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda z, c: _SparseMultinomialNLL.apply(z, rows, cols, c), (logits, counts))


def test_multinomial_nll_of_bfloat16_logits_is_float32():
    logits, x = torch.randn(3, 5).to(torch.bfloat16), torch.ones(3, 5)
    assert multinomial_nll(logits, x).dtype == torch.float32


def test_multinomial_nll_equals_manual_log_softmax():
    logits = rand(5, 7) * 3
    x = (rand(5, 7, seed=1) > 0.5).to(F64)
    manual = logits - torch.log(torch.exp(logits).sum(-1, keepdim=True))  # log softmax, written out
    torch.testing.assert_close(multinomial_nll(logits, x), -(manual * x).sum(-1))
    # invariant to adding a constant to a row's logits
    torch.testing.assert_close(multinomial_nll(logits + 100.0, x), multinomial_nll(logits, x))


# -- bernoulli_nll (CDAE) -------------------------------------------------------------
def test_bernoulli_nll_by_hand():
    # logit 0, y = 1: -ln sigmoid(0) = ln 2;  logit ln 3, y = 0: -ln(1 - 3/4) = ln 4 = 2 ln 2
    logits = torch.tensor([[0.0, LN3]], dtype=F64)
    x = torch.tensor([[1.0, 0.0]], dtype=F64)
    torch.testing.assert_close(bernoulli_nll(logits, x), torch.tensor([3 * LN2], dtype=F64))
    # negative sampling keeps only the first entry: ln 2
    torch.testing.assert_close(bernoulli_nll(logits, x, mask=torch.tensor([[True, False]])),
                               torch.tensor([LN2], dtype=F64))


def test_bernoulli_nll_equals_torch_bce_with_logits():
    logits = rand(6, 8) * 4
    x = (rand(6, 8, seed=1) > 0).to(F64)
    mask = rand(6, 8, seed=2) > -0.5
    full = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    torch.testing.assert_close(bernoulli_nll(logits, x), full.sum(-1))
    torch.testing.assert_close(bernoulli_nll(logits, x, mask), (full * mask).sum(-1))
    torch.testing.assert_close(reduce_rows(bernoulli_nll(logits, x), "mean"), full.sum(-1).mean())
    # float32 logits with float64 targets still work (targets follow the logits' dtype)
    torch.testing.assert_close(bernoulli_nll(logits.float(), x), full.sum(-1).float())


# -- gaussian_nll ---------------------------------------------------------------------
def test_gaussian_nll_by_hand():
    # sigma = 2: entry 1: 0.5 ((2 - 0) / 2)^2 + ln 2 + 0.5 ln(2 pi) = 0.5 + ln 2 + 0.5 ln(2 pi)
    #            entry 2: 0.5 ((1 - 1) / 2)^2 + ln 2 + 0.5 ln(2 pi) = ln 2 + 0.5 ln(2 pi)
    mean = torch.tensor([[0.0, 1.0]], dtype=F64)
    x = torch.tensor([[2.0, 1.0]], dtype=F64)
    expected = 0.5 + 2 * LN2 + math.log(2 * math.pi)
    torch.testing.assert_close(gaussian_nll(mean, x, log_sigma=LN2), torch.tensor([expected], dtype=F64))
    # sigma = 1 (default), only the first entry: 0.5 * 2^2 + 0.5 ln(2 pi) = 2 + 0.5 ln(2 pi)
    torch.testing.assert_close(gaussian_nll(mean, x, mask=torch.tensor([[True, False]])),
                               torch.tensor([2 + 0.5 * math.log(2 * math.pi)], dtype=F64))


def test_gaussian_nll_equals_minus_normal_log_prob():
    mean, x = rand(4, 5), rand(4, 5, seed=1)
    log_sigma = rand(5, seed=2) * 0.5  # one per column, broadcast over rows
    normal = torch.distributions.Normal(mean, torch.exp(log_sigma))
    torch.testing.assert_close(gaussian_nll(mean, x, log_sigma), -normal.log_prob(x).sum(-1))


# -- reduce_rows and validation --------------------------------------------------------
def test_reduce_rows():
    per_row = torch.tensor([1.0, 2.0, 6.0])
    assert reduce_rows(per_row, "sum").item() == 9.0
    assert reduce_rows(per_row, "mean").item() == 3.0
    with pytest.raises(ValueError, match="how='max'"):
        reduce_rows(per_row, "max")
    with pytest.raises(ValueError, match=r"per_row has shape \(3, 1\); expected a 1-D tensor"):
        reduce_rows(per_row[:, None], "sum")


@pytest.mark.parametrize("call, message", [
    (lambda a, b, m: masked_squared_error(a, b[:, :2], m), r"pred has shape \(2, 3\) but target has shape \(2, 2\)"),
    (lambda a, b, m: multinomial_nll(a, b.T), r"logits has shape \(2, 3\) but x has shape \(3, 2\)"),
    (lambda a, b, m: bernoulli_nll(a, b[:1]), r"logits has shape \(2, 3\) but x has shape \(1, 3\)"),
    (lambda a, b, m: gaussian_nll(a, b[:, :1]), r"mean has shape \(2, 3\) but x has shape \(2, 1\)"),
    (lambda a, b, m: masked_squared_error(a, b, m[:, :2]), r"mask has shape \(2, 2\); expected \(2, 3\)"),
    (lambda a, b, m: masked_squared_error(a, b, m.float()), "mask is torch.float32; expected a torch.bool"),
    (lambda a, b, m: bernoulli_nll(a, b, m.T), r"mask has shape \(3, 2\)"),
    (lambda a, b, m: multinomial_nll(a[0], b[0]), r"logits has shape \(3,\); expected a 2-D tensor"),
    (lambda a, b, m: multinomial_nll(a.long(), b), "logits has dtype torch.int64; expected a floating-point"),
    (lambda a, b, m: gaussian_nll(a, b, log_sigma=torch.zeros(2)), r"log_sigma has shape \(2,\)"),
    (lambda a, b, m: gaussian_nll(a, b, log_sigma=float("inf")), "log_sigma=inf"),
])
def test_bad_inputs_raise_value_error_naming_them(call, message):
    a, b, m = torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=message):
        call(a, b, m)


def test_non_tensor_input_raises_type_error():
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        multinomial_nll(torch.zeros(1, 2), [[0.0, 1.0]])
