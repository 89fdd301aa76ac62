"""RecVAE against the reference code (evaluation/recvae_reference.py, a port checked against ilya-shenbin/RecVAE).

The port's network gets aerec's weights; with the same noise, the forward pass, the loss
and the gradients of each phase must agree. Then the schedule (which optimizer steps when,
when the prior is refreshed) and the parameter checks; beating popularity on ML-100K is in the contract suite.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from aerec._torch import csr_to_sparse_tensor
from aerec.data.batching import RowBatch
from aerec.models import RecVAE, make_model
from aerec.models.recvae import RecVAENet
from aerec.training import TrainingState
from tests.conftest import REPO, random_implicit_csr

spec = importlib.util.spec_from_file_location("recvae_reference", REPO / "evaluation" / "recvae_reference.py")
reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reference)

N_ITEMS, HIDDEN, LATENT = 30, 12, 5


def copy_encoder(ours, theirs) -> None:
    """aerec's RecVAEEncoder weights into the reference's Encoder (fc1..fc5, ln1..ln5, fc_mu, fc_logvar)."""
    with torch.no_grad():
        for i, (linear, norm) in enumerate(zip(ours.linears, ours.norms), start=1):
            getattr(theirs, f"fc{i}").weight.copy_(linear.weight)
            getattr(theirs, f"fc{i}").bias.copy_(linear.bias)
            getattr(theirs, f"ln{i}").weight.copy_(norm.weight)
            getattr(theirs, f"ln{i}").bias.copy_(norm.bias)
        weight, bias = ours.posterior.linear.weight, ours.posterior.linear.bias
        theirs.fc_mu.weight.copy_(weight[:LATENT]), theirs.fc_mu.bias.copy_(bias[:LATENT])
        theirs.fc_logvar.weight.copy_(weight[LATENT:]), theirs.fc_logvar.bias.copy_(bias[LATENT:])


def twin_networks(seed=0):
    ours = RecVAENet(N_ITEMS, HIDDEN, LATENT, dropout=0.0, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():  # LayerNorm starts at (1, 0): move it so that copying it is tested
        for norm in [*ours.encoder.norms, *ours.prior_encoder.norms]:
            norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.2, 0.2)
    theirs = reference.VAE(HIDDEN, LATENT, N_ITEMS)
    copy_encoder(ours.encoder, theirs.encoder)
    copy_encoder(ours.prior_encoder, theirs.prior.encoder_old)
    with torch.no_grad():
        theirs.decoder.weight.copy_(ours.decoder.weight), theirs.decoder.bias.copy_(ours.decoder.bias)
    return ours, theirs


@pytest.fixture
def rows():
    return random_implicit_csr(20, N_ITEMS, density=0.2, seed=3)


def test_scores_equal_the_reference_network(rows):
    ours, theirs = twin_networks()
    ours.eval(), theirs.eval()
    with torch.no_grad():
        expected = theirs(torch.tensor(rows.toarray()), calculate_loss=False)
        got = ours(csr_to_sparse_tensor(rows, "cpu"))[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("phase", ["encoder", "decoder"])
def test_loss_and_gradients_equal_the_reference_with_the_same_noise(rows, phase, monkeypatch):
    ours, theirs = twin_networks()
    eps = torch.randn(rows.shape[0], LATENT, generator=torch.Generator().manual_seed(5))
    # the same z noise in both: the reference's reparameterize and aerec's, without dropout (tested apart)
    monkeypatch.setattr(reference.VAE, "reparameterize", lambda self, mu, logvar: mu + eps * torch.exp(0.5 * logvar))
    monkeypatch.setattr("aerec.models.recvae.reparameterize",
                        lambda mu, logvar, sample, generator=None: mu + eps * torch.exp(0.5 * logvar))
    model = RecVAE(hidden=HIDDEN, latent=LATENT, dropout=0.0, gamma=0.005)
    state = TrainingState(epoch=0, update=0, phase=phase, generator=torch.Generator().manual_seed(1))
    terms = model.batch_loss(ours, RowBatch(np.arange(rows.shape[0]), rows), state)
    terms["loss"].backward()
    (mll, kld), loss = theirs(torch.tensor(rows.toarray()), gamma=0.005, dropout_rate=0.0)
    loss.backward()
    torch.testing.assert_close(terms["loss"], loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["nll"], -mll.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["kl"], kld.detach(), rtol=1e-5, atol=1e-5)
    # the phase's own parameters get the reference's gradient; the others none (the reference discards them)
    if phase == "encoder":
        ours_params, theirs_params = list(ours.encoder.linears[1].parameters()), list(theirs.encoder.fc2.parameters())
        ours_params += [ours.encoder.linears[0].weight, ours.encoder.norms[4].weight]
        theirs_params += [theirs.encoder.fc1.weight, theirs.encoder.ln5.weight]
        assert ours.decoder.weight.grad is None
    else:
        ours_params = [ours.decoder.weight, ours.decoder.bias]
        theirs_params = [theirs.decoder.weight, theirs.decoder.bias]
        assert all(p.grad is None for p in ours.encoder.parameters())
    for a, b in zip(ours_params, theirs_params):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in ours.prior_encoder.parameters())


def test_kl_weight_is_gamma_times_each_users_count_or_a_constant_beta(rows):
    x = csr_to_sparse_tensor(rows, "cpu")
    counts = torch.tensor(np.asarray(rows.sum(axis=1)).ravel(), dtype=torch.float32)
    torch.testing.assert_close(RecVAE(gamma=0.01).kl_weights(x), 0.01 * counts)
    assert RecVAE(gamma=None, beta=0.2).kl_weights(x) == 0.2


def test_each_phase_steps_only_its_half_and_the_prior_is_the_encoder_after_its_phase():
    train = random_implicit_csr(80, 25, seed=0)
    model = RecVAE(hidden=8, latent=4, epochs=1, batch_size=40, seed=2, device="cpu")
    model.n_items_ = 25
    start = model.new_module()
    model.fit(train)
    after = model.module_
    assert model.n_updates_ == 4 * 2  # 3 encoder passes + 1 decoder pass, of 2 batches each
    assert not torch.equal(after.encoder.linears[0].weight, start.encoder.linears[0].weight)
    assert not torch.equal(after.decoder.weight, start.decoder.weight)
    for a, b in zip(after.prior_encoder.state_dict().values(), after.encoder.state_dict().values()):
        assert torch.equal(a, b)  # copied before the decoder phase, which leaves the encoder alone
    assert not any(p.requires_grad for p in after.prior_encoder.parameters())
    record = model.history_.epochs[0]
    assert {"encoder_loss", "encoder_kl", "decoder_nll"} <= set(record)


def test_the_prior_encoder_starts_random_as_the_reference_or_as_a_copy():
    as_reference = RecVAENet(20, 6, 3, generator=torch.Generator().manual_seed(0))
    copied = RecVAENet(20, 6, 3, copy_prior=True, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(as_reference.prior_encoder.linears[0].weight, as_reference.encoder.linears[0].weight)
    assert torch.equal(copied.prior_encoder.linears[0].weight, copied.encoder.linears[0].weight)
    assert torch.equal(copied.decoder.weight, as_reference.decoder.weight)  # the same draws either way


@pytest.mark.parametrize("params, message", [
    ({"dropout": 1.0}, "dropout=1.0"),
    ({"hidden": 0}, "hidden=0"),
    ({"gamma": -1.0}, "gamma=-1.0"),
    ({"gamma": 0.005, "beta": 0.2}, "exactly one"),
    ({"gamma": None}, "exactly one"),
    ({"mixture_weights": (0.5, 0.5)}, "three positive"),
    ({"mixture_weights": (0.5, 0.5, 0.0)}, "three positive"),
    ({"encoder_passes": 0}, "encoder_passes=0"),
])
def test_bad_parameters_are_refused_by_name(params, message):
    with pytest.raises(ValueError, match=message):
        make_model("recvae", **params).fit(random_implicit_csr(10, 8))


def test_unknown_parameter_is_refused():
    with pytest.raises(ValueError, match="unknown parameter"):
        make_model("recvae", widths=3)


def test_users_unseen_in_training_are_scored_from_their_rows():
    train = random_implicit_csr(60, 20, seed=1)
    model = RecVAE(hidden=8, latent=4, epochs=2, batch_size=30, device="cpu").fit(train)
    new = sp.csr_matrix(np.eye(3, 20, dtype=np.float32))
    scores = model.score(new)
    assert scores.shape == (3, 20) and np.isfinite(scores).all()
    assert not np.allclose(scores[0], scores[1])
