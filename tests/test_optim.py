"""CliminRprop against a line-by-line numpy transcription of climin's Rprop._iterate."""

import numpy as np
import pytest
import torch

from aerec.optim import LBFGS, CliminRprop


def climin_rprop_steps(gradient_fn, wrt, n_steps, step_shrink=0.5, step_grow=1.2, min_step=1e-6, max_step=1.0):
    """climin/rprop.py, Rprop._iterate, in numpy (changes start at 0, as climin's __init__)."""
    wrt = wrt.copy()
    gradient = np.zeros_like(wrt)
    changes = np.zeros_like(wrt)
    for _ in range(n_steps):
        gradient_m1 = gradient
        gradient = gradient_fn(wrt)
        changes_min = changes * step_grow
        changes_max = changes * step_shrink
        gradprod = gradient_m1 * gradient
        changes_min *= gradprod > 0
        changes_max *= gradprod < 0
        changes *= gradprod == 0
        changes_min = np.clip(changes_min, min_step, max_step)
        changes_max = np.clip(changes_max, min_step, max_step)
        changes += changes_min + changes_max
        wrt += -changes * np.sign(gradient)
    return wrt


def quadratic_gradient(target, scale):
    return lambda w: scale * (w - target)


@pytest.mark.parametrize("etas", [(0.5, 1.2), (0.5, 5.0)])
def test_matches_climin_step_for_step(etas):
    rng = np.random.default_rng(0)
    target, scale, start = rng.normal(size=20), rng.uniform(0.5, 3.0, size=20), rng.normal(size=20)
    start[3] = target[3]  # a zero gradient from the first step on
    gradient_fn = quadratic_gradient(target, scale)
    param = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    optimizer = CliminRprop([param], lr=2e-6, etas=etas, step_sizes=(1e-6, 1.0))
    for n_steps in range(1, 41):
        optimizer.zero_grad()
        param.grad = torch.tensor(gradient_fn(param.detach().numpy()))
        optimizer.step()
        expected = climin_rprop_steps(gradient_fn, start, n_steps, step_shrink=etas[0], step_grow=etas[1])
        np.testing.assert_allclose(param.detach().numpy(), expected, rtol=0, atol=1e-12)


def test_chunked_update_of_a_column_major_weight_equals_the_whole_update(monkeypatch):
    import aerec.optim

    rng = np.random.default_rng(1)
    target, start = rng.normal(size=(6, 50)), rng.normal(size=(6, 50))
    start[2, :7] = target[2, :7]  # zero gradients
    params = [torch.nn.Parameter(torch.tensor(start).t().contiguous().t()), torch.nn.Parameter(torch.tensor(start))]
    optimizers = [CliminRprop([params[0]], lr=0.01), CliminRprop([params[1]], lr=0.01)]
    calls = []
    update = aerec.optim._rprop_update
    monkeypatch.setattr(aerec.optim, "_rprop_update", lambda *args: (calls.append(args[0].numel()), update(*args)))
    for _ in range(15):
        for chunk, param, optimizer in zip((64, 2**30), params, optimizers):  # chunks of 64 entries, or one whole
            monkeypatch.setattr(aerec.optim, "_CHUNK", chunk)
            gradient = (param.detach() - torch.tensor(target)) * torch.tensor(np.sign(start))
            param.grad = gradient.t().contiguous().t() if param.stride() == (1, 6) else gradient.contiguous()
            optimizer.step()
        torch.testing.assert_close(params[0].detach(), params[1].detach(), rtol=0, atol=0)
    assert calls[:6] == [64, 64, 64, 64, 44, 300]  # the column-major weight went through 5 chunks
    assert params[0].stride() == (1, 6)  # still column-major, updated through chunked views
    assert not torch.equal(params[0].detach(), torch.tensor(start))


def test_first_step_is_lr_and_steps_after_a_sign_change():
    param = torch.nn.Parameter(torch.tensor([0.0], dtype=torch.float64))
    optimizer = CliminRprop([param], lr=0.5, etas=(0.5, 1.2), step_sizes=(1e-6, 1.0))
    for gradient, expected in [(-1.0, 0.5), (1.0, 0.5 - (0.25 + 1e-6))]:
        param.grad = torch.tensor([gradient], dtype=torch.float64)
        optimizer.step()
        assert param.item() == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("kwargs, message", [
    ({"etas": (1.5, 1.2)}, r"etas=\(1.5, 1.2\); expected \(shrink, grow\)"),
    ({"step_sizes": (0.0, 1.0)}, r"step_sizes=\(0.0, 1.0\); expected \(low, high\)"),
    ({"lr": 1e-7}, r"lr=1e-07; expected at least 2 x the minimum step size \(2e-06\)"),
])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CliminRprop([torch.nn.Parameter(torch.zeros(1))], **kwargs)


def test_lbfgs_on_a_column_major_weight_follows_the_row_major_one():
    torch.manual_seed(0)
    target = torch.randn(4, 3, dtype=torch.float64)
    start = torch.randn(4, 3, dtype=torch.float64)
    finals = []
    for layout in ("row", "column"):
        weight = start.clone() if layout == "row" else start.t().contiguous().t()
        param = torch.nn.Parameter(weight)
        assert param.is_contiguous() == (layout == "row")
        optimizer = LBFGS([param], lr=1.0, max_iter=1, max_eval=25, history_size=5, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = ((param - target) ** 2 * torch.arange(1, 13, dtype=torch.float64).reshape(4, 3)).sum()
            loss.backward()
            return loss

        for _ in range(40):
            optimizer.step(closure)
        finals.append(param.detach().clone())
    torch.testing.assert_close(finals[1], finals[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(finals[0], target, rtol=0, atol=1e-4)  # converged (to tolerance_change)
