"""The one training loop: batches, optimizers, early stopping, history, NaN stop, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from aerec.training import NonFiniteLossError, TrainConfig, train
from tests.conftest import random_implicit_csr


def linear_autoencoder(n_cols=20, hidden=4):
    return torch.nn.Sequential(torch.nn.Linear(n_cols, hidden), torch.nn.Linear(hidden, n_cols))


def reconstruction_loss(module, batch, state):
    x = batch.dense
    error = ((module(x) - x) ** 2).sum(dim=1).mean()
    return {"loss": error, "squared_error": error.detach()}


def weights(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


@pytest.fixture(scope="module")
def data():
    return random_implicit_csr(n_users=100, n_items=20, density=0.3, seed=3)


@pytest.mark.parametrize("optimizer, lr, batch_size", [("adam", 1e-2, 16), ("sgd", 1e-2, 16), ("rprop", 1e-3, None),
                                                       ("lbfgs", 1.0, None), ("adamw", 1e-2, 32)])
def test_each_optimizer_lowers_the_loss(data, optimizer, lr, batch_size):
    module = linear_autoencoder()
    config = TrainConfig(epochs=30, batch_size=batch_size, optimizer=optimizer, lr=lr, progress=False)
    history = train(module, data, reconstruction_loss, config)
    losses = history.column("loss")
    assert len(losses) == 30 and losses[-1] < 0.8 * losses[0]
    assert {"epoch", "loss", "squared_error", "seconds"} <= set(history.epochs[0])


def test_dense_arrays_train_too(data):
    history = train(linear_autoencoder(), data.toarray(), reconstruction_loss, TrainConfig(epochs=3, progress=False))
    assert len(history.epochs) == 3


def test_same_seed_same_weights_and_other_seed_differs(data):
    results = []
    for seed in (7, 7, 8):
        torch.manual_seed(0)
        module = linear_autoencoder()
        train(module, data, reconstruction_loss, TrainConfig(epochs=3, batch_size=16, seed=seed, progress=False))
        results.append(weights(module))
    assert torch.equal(results[0], results[1]) and not torch.equal(results[0], results[2])


def test_early_stopping_restores_the_best_weights(data):
    scripted = iter([0.1, 0.5, 0.3, 0.2, 0.2, 0.9])  # best at epoch 2, then no improvement for 3 validations
    snapshots = {}

    module = linear_autoencoder()

    def remember(record, history):
        snapshots[record["epoch"]] = weights(module)

    history = train(module, data, reconstruction_loss, TrainConfig(epochs=6, patience=3, progress=False),
                    validation_metric=lambda m: next(scripted), callbacks=[remember])
    assert history.best_epoch == 2 and history.best_validation == 0.5 and history.stopped_early
    assert len(history.epochs) == 5 and history.column("validation") == [0.1, 0.5, 0.3, 0.2, 0.2]
    assert torch.equal(weights(module), snapshots[2]) and not torch.equal(weights(module), snapshots[5])


def test_minimising_a_validation_error(data):
    scripted = iter([3.0, 1.0, 2.0])
    history = train(linear_autoencoder(), data, reconstruction_loss, TrainConfig(epochs=3, progress=False),
                    validation_metric=lambda m: next(scripted), maximize=False)
    assert history.best_epoch == 2 and not history.stopped_early


def test_a_nan_loss_stops_training_with_a_clear_error(data):
    def exploding(module, batch, state):
        terms = reconstruction_loss(module, batch, state)
        if state.update == 3:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    module = linear_autoencoder()
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 1, update 3 .*Lower the learning rate"):
        train(module, data, exploding, TrainConfig(epochs=2, batch_size=10, progress=False))
    assert torch.isfinite(weights(module)).all()  # the bad step was never applied


def test_update_counter_and_epoch_are_passed_to_the_loss(data):
    seen = []

    def spy(module, batch, state):
        seen.append((state.epoch, state.update, len(batch)))
        return reconstruction_loss(module, batch, state)

    train(linear_autoencoder(), data, spy, TrainConfig(epochs=2, batch_size=40, progress=False))
    assert seen == [(0, 0, 40), (0, 1, 40), (0, 2, 20), (1, 3, 40), (1, 4, 40), (1, 5, 20)]


def test_rows_restricts_training_to_those_rows(data):
    seen = set()

    def spy(module, batch, state):
        seen.update(batch.index.tolist())
        return reconstruction_loss(module, batch, state)

    train(linear_autoencoder(), data, spy, TrainConfig(epochs=1, batch_size=7, progress=False), rows=np.arange(10, 30))
    assert seen == set(range(10, 30))


def test_progress_bar_goes_to_stderr_and_can_be_silenced(data, capsys):
    train(linear_autoencoder(), data, reconstruction_loss, TrainConfig(epochs=2, progress=False))
    assert capsys.readouterr().err == ""
    train(linear_autoencoder(), data, reconstruction_loss, TrainConfig(epochs=2, progress=True))
    captured = capsys.readouterr()
    assert "training" in captured.err and captured.out == ""


@pytest.mark.parametrize("field, value, message", [
    ("epochs", 0, "epochs=0"), ("batch_size", 0, "batch_size=0"), ("optimizer", "adagrad", "optimizer='adagrad'"),
    ("lr", -1.0, "lr=-1.0"), ("patience", 0, "patience=0"), ("device", "tpu", "device='tpu'"),
])
def test_bad_settings_are_named(data, field, value, message):
    config = TrainConfig(progress=False, **{field: value})
    with pytest.raises(ValueError, match=message):
        train(linear_autoencoder(), data, reconstruction_loss, config)


def test_weight_decay_with_rprop_is_refused(data):
    with pytest.raises(ValueError, match="weight_decay=0.1 with optimizer='rprop'"):
        train(linear_autoencoder(), data, reconstruction_loss, TrainConfig(optimizer="rprop", weight_decay=0.1))


def test_a_loss_without_the_loss_key_is_refused(data):
    with pytest.raises(ValueError, match="'loss' entry"):
        train(linear_autoencoder(), data, lambda m, b, s: {"error": b.dense.sum()}, TrainConfig(progress=False))


def test_batches_expose_dense_sparse_and_observed_views():
    from aerec.data.batching import iter_row_batches

    matrix = sp.csr_matrix(np.array([[0, 2.0, 0], [1.0, 0, 3.0]], dtype=np.float32))
    (batch,) = iter_row_batches(matrix, 5, torch.device("cpu"))
    assert torch.equal(batch.dense, torch.tensor([[0, 2.0, 0], [1.0, 0, 3.0]]))
    assert torch.equal(batch.sparse.to_dense(), batch.dense)
    assert torch.equal(batch.observed, torch.tensor([[False, True, False], [True, False, True]]))
    with pytest.raises(ValueError, match="shuffle=True needs an rng"):
        next(iter_row_batches(matrix, 1, torch.device("cpu"), shuffle=True))
