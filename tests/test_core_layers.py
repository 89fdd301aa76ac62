"""Tests for aerec.core.layers and aerec.core.corruption: sparse/dense equality, tied weights, noise statistics."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from aerec._torch import csr_to_sparse_tensor
from aerec.core.corruption import CORRUPTIONS, GaussianNoise, MaskingNoise, NoCorruption, SaltAndPepper, make_corruption
from aerec.core.layers import (
    ACTIVATIONS,
    DenseStack,
    LayerStack,
    SparseInputLinear,
    TiedLinear,
    make_activation,
    weight_matrices,
)


def random_csr_batch(n_rows=9, n_cols=30, density=0.2, seed=0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    batch = sp.random(n_rows, n_cols, density=density, format="lil", random_state=rng, dtype=np.float32)
    batch[3, :] = 0  # an all-empty row
    batch = sp.csr_matrix(batch)
    batch.eliminate_zeros()
    assert batch.getrow(3).nnz == 0 and batch.nnz > 0
    return batch


# -- activations -------------------------------------------------------------------


def test_make_activation_builds_every_name():
    x = torch.linspace(-2, 2, 9)
    assert torch.equal(make_activation("identity")(x), x)
    assert torch.equal(make_activation("linear")(x), x)
    assert torch.allclose(make_activation("sigmoid")(x), torch.sigmoid(x))
    assert torch.allclose(make_activation("tanh")(x), torch.tanh(x))
    assert torch.equal(make_activation("relu")(x), x.clamp(min=0))
    assert torch.allclose(make_activation("leaky_relu")(x), torch.where(x > 0, x, 0.01 * x))
    for name in ACTIVATIONS:
        assert isinstance(make_activation(name), nn.Module)


@pytest.mark.parametrize("name", ["softmax", "Tanh", None, 3])
def test_make_activation_rejects_unknown_names_and_lists_the_allowed(name):
    with pytest.raises(ValueError, match=r"activation=.*expected one of 'identity'.*'leaky_relu'"):
        make_activation(name)


# -- SparseInputLinear --------------------------------------------------------------


@pytest.mark.parametrize("init", ["torch", "xavier"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dense_above, input_grad", [(1.0, False), (1.0, True), (0.0, False)],
                         ids=["embedding_bag", "sparse_mm", "densified"])
def test_sparse_and_dense_inputs_give_equal_outputs_and_gradients(init, bias, dense_above, input_grad):
    torch.manual_seed(0)
    layer = SparseInputLinear(30, 7, bias=bias, init=init, dense_above=dense_above).double()
    csr = random_csr_batch()
    sparse = csr_to_sparse_tensor(csr, torch.device("cpu")).double().requires_grad_(input_grad)
    dense = torch.from_numpy(csr.toarray()).double()
    assert sparse.layout == torch.sparse_coo and sparse.is_coalesced()

    grads = []
    for x in (dense, sparse):
        layer.zero_grad()
        out = layer(x)
        assert out.shape == (9, 7) and out.layout == torch.strided
        (out * torch.arange(7, dtype=torch.float64)).pow(2).sum().backward()
        grads.append((out.detach(), layer.weight.grad.clone(), None if layer.bias is None else layer.bias.grad.clone()))
    (out_d, gw_d, gb_d), (out_s, gw_s, gb_s) = grads
    torch.testing.assert_close(out_s, out_d, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw_s, gw_d, rtol=1e-12, atol=1e-12)
    if bias:
        torch.testing.assert_close(gb_s, gb_d, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out_s[3], layer.bias.detach())  # the empty row maps to the bias
    else:
        assert layer.bias is None
        assert torch.equal(out_s[3], torch.zeros(7, dtype=torch.float64))


def test_sparse_input_linear_is_a_linear_with_torch_default_init():
    torch.manual_seed(3)
    ours = SparseInputLinear(40, 5)
    torch.manual_seed(3)
    reference = nn.Linear(40, 5)
    assert isinstance(ours, nn.Linear)
    assert ours.weight.shape == (5, 40) and ours.bias.shape == (5,)
    assert torch.equal(ours.weight, reference.weight) and torch.equal(ours.bias, reference.bias)
    assert set(ours.state_dict()) == {"weight", "bias"}


def test_xavier_init_matches_vae_cf_ranges():
    torch.manual_seed(0)
    layer = SparseInputLinear(600, 200, init="xavier")
    limit = np.sqrt(6 / (600 + 200))
    assert layer.weight.abs().max() <= limit
    # uniform(-a, a) has std a / sqrt(3)
    assert abs(float(layer.weight.detach().std()) - limit / np.sqrt(3)) < 0.02 * limit
    assert layer.bias.abs().max() <= 0.002  # truncated at two standard deviations of 0.001
    assert 0.0005 < float(layer.bias.detach().std()) < 0.001
    layer.weight.data.zero_()
    layer.reset_parameters()  # re-draws with the layer's own init
    assert layer.weight.abs().max() <= limit and layer.weight.abs().max() > 0.5 * limit


def test_sparse_input_linear_rejects_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match=r"in_features=0; expected a positive integer"):
        SparseInputLinear(0, 3)
    with pytest.raises(ValueError, match=r"out_features=2.5"):
        SparseInputLinear(4, 2.5)
    with pytest.raises(ValueError, match=r"init='he'.*'torch', 'xavier'"):
        SparseInputLinear(4, 3, init="he")
    layer = SparseInputLinear(4, 3)
    with pytest.raises(ValueError, match=r"shape \(2, 5\); expected \(batch, 4\)"):
        layer(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"expected \(batch, 4\)"):
        layer(torch.zeros(2, 5).to_sparse())
    with warnings.catch_warnings():  # torch warns "beta" once per process, so whether it fires depends on test order
        warnings.simplefilter("ignore")
        csr = torch.zeros(2, 4).to_sparse_csr()
    with pytest.raises(TypeError, match="sparse_csr"):
        layer(csr)


# -- TiedLinear --------------------------------------------------------------------


def test_tied_linear_shares_the_weight_and_accumulates_gradients():
    torch.manual_seed(0)
    encoder = nn.Linear(6, 4).double()
    decoder = TiedLinear(encoder).double()
    assert decoder.weight is encoder.weight
    assert decoder.in_features == 4 and decoder.out_features == 6 and decoder.bias.shape == (6,)
    x = torch.randn(5, 6, dtype=torch.float64)
    out = decoder(torch.tanh(encoder(x)))
    assert out.shape == (5, 6)
    torch.testing.assert_close(out, torch.tanh(encoder(x)) @ encoder.weight + decoder.bias)

    out.pow(2).sum().backward()
    w = encoder.weight.detach().clone().requires_grad_(True)  # the same loss with two separate uses of one leaf
    h = torch.tanh(x @ w.t() + encoder.bias.detach())
    (h @ w + decoder.bias.detach()).pow(2).sum().backward()
    torch.testing.assert_close(encoder.weight.grad, w.grad)

    model = nn.Sequential(encoder, decoder)
    assert sum(p.numel() for p in model.parameters()) == 6 * 4 + 4 + 6  # the shared weight once


def test_tied_linear_without_bias_and_bad_source():
    decoder = TiedLinear(nn.Linear(3, 2, bias=False), bias=False)
    assert decoder.bias is None and decoder(torch.ones(1, 2)).shape == (1, 3)
    with pytest.raises(ValueError, match=r"source=ReLU has no 2-D weight"):
        TiedLinear(nn.ReLU())
    with pytest.raises(ValueError, match=r"expected \(batch, 2\)"):
        decoder(torch.ones(1, 3))


# -- DenseStack --------------------------------------------------------------------


def test_dense_stack_shapes_and_activation_placement():
    stack = DenseStack([10, 8, 4, 3], activation="relu", final_activation="sigmoid")
    assert stack.widths == [10, 8, 4, 3]
    assert [type(layer) for layer in stack.layers] == [nn.Linear] * 3
    assert [type(act) for act in stack.activations] == [nn.ReLU, nn.ReLU, nn.Sigmoid]
    assert stack(torch.randn(7, 10)).shape == (7, 3)


def test_dense_stack_forward_is_the_hand_written_mlp():
    torch.manual_seed(1)
    stack = DenseStack([5, 4, 2], activation="tanh", final_activation="identity").double()
    x = torch.randn(3, 5, dtype=torch.float64)
    first, second = stack.layers
    expected = torch.tanh(x @ first.weight.t() + first.bias) @ second.weight.t() + second.bias
    torch.testing.assert_close(stack(x), expected)


def test_dense_stack_sparse_input_accepts_sparse_and_dense():
    torch.manual_seed(0)
    stack = DenseStack([30, 6, 2], sparse_input=True, init="xavier").double()
    assert isinstance(stack.layers[0], SparseInputLinear) and type(stack.layers[1]) is nn.Linear
    assert stack.layers[1].bias.abs().max() <= 0.002  # xavier init reaches the dense layers too
    csr = random_csr_batch()
    sparse = csr_to_sparse_tensor(csr, torch.device("cpu")).double()
    dense = torch.from_numpy(csr.toarray()).double()
    torch.testing.assert_close(stack(sparse), stack(dense))


def test_tied_decoder_mirrors_the_encoder():
    torch.manual_seed(0)
    encoder = DenseStack([12, 6, 3], activation="tanh", final_activation="sigmoid", sparse_input=True)
    decoder = encoder.tied_decoder(final_activation="identity")
    assert isinstance(decoder, LayerStack)
    assert decoder.widths == [3, 6, 12]
    assert all(isinstance(layer, TiedLinear) for layer in decoder.layers)
    assert decoder.layers[0].weight is encoder.layers[1].weight
    assert decoder.layers[1].weight is encoder.layers[0].weight
    assert [type(act) for act in decoder.activations] == [nn.Tanh, nn.Identity]
    x = torch.rand(4, 12)
    assert decoder(encoder(x)).shape == (4, 12)
    h = encoder(x)
    expected = torch.tanh(h @ encoder.layers[1].weight + decoder.layers[0].bias) @ encoder.layers[0].weight
    torch.testing.assert_close(decoder(h), expected + decoder.layers[1].bias)


@pytest.mark.parametrize("widths", [[5], [], [5, 0], [5, -2, 3], [5, 2.0], "53", 7, [True, 2]])
def test_dense_stack_rejects_bad_widths(widths):
    with pytest.raises(ValueError, match=r"widths=.*expected a sequence of at least two positive integers"):
        DenseStack(widths)


def test_dense_stack_rejects_bad_activation_names():
    with pytest.raises(ValueError, match=r"final_activation='softmax'"):
        DenseStack([3, 2], final_activation="softmax")
    with pytest.raises(ValueError, match=r"final_activation='gelu'"):
        DenseStack([3, 2]).tied_decoder(final_activation="gelu")


def test_weight_matrices_lists_each_shared_weight_once():
    encoder = DenseStack([10, 6, 3], sparse_input=True)
    decoder = encoder.tied_decoder()
    model = nn.ModuleDict({"encoder": encoder, "decoder": decoder, "extra": nn.Linear(3, 2)})
    weights = weight_matrices(model)
    assert len(weights) == 3
    assert weights[0] is encoder.layers[0].weight and weights[1] is encoder.layers[1].weight
    assert all(w.ndim == 2 for w in weights)  # no biases
    untied = DenseStack([10, 6, 3])
    assert len(weight_matrices(nn.Sequential(untied, DenseStack([3, 6, 10])))) == 4
    with pytest.raises(TypeError, match="torch.nn.Module"):
        weight_matrices([encoder])


# -- corruption --------------------------------------------------------------------


@pytest.mark.parametrize(
    "module", [GaussianNoise(0.5), MaskingNoise(0.5), MaskingNoise(0.3, rescale=False), SaltAndPepper(0.4)]
)
def test_corruptions_are_identity_in_eval_mode(module):
    x = torch.rand(20, 30)
    module.eval()
    assert module(x) is x
    module.train()
    assert not torch.equal(module(x), x)


def test_masking_drops_about_p_and_rescale_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.rand(400, 500) + 0.5  # no zeros, so a zero means "dropped"
    out = MaskingNoise(0.3)(x)
    dropped = out == 0
    # 200,000 Bernoulli(0.3): the fraction has std ~0.001; allow 5 sigma.
    assert abs(float(dropped.float().mean()) - 0.3) < 0.005
    torch.testing.assert_close(out[~dropped], x[~dropped] / 0.7)
    assert abs(float(out.mean()) - float(x.mean())) < 0.01

    plain = MaskingNoise(0.3, rescale=False)(x)
    kept = plain != 0
    assert abs(float(kept.float().mean()) - 0.7) < 0.005
    assert torch.equal(plain[kept], x[kept])


def test_sparse_masking_drops_stored_entries_only_and_stays_sparse():
    torch.manual_seed(0)
    csr = random_csr_batch(n_rows=300, n_cols=400, density=0.1, seed=1)
    csr.data[:] = np.abs(csr.data) + 0.5
    x = csr_to_sparse_tensor(csr, torch.device("cpu"))
    out = MaskingNoise(0.4)(x)
    assert out.layout == torch.sparse_coo and out.is_coalesced() and out.shape == x.shape
    stored = set(map(tuple, x.indices().t().tolist()))
    kept = out.indices().t().tolist()
    assert set(map(tuple, kept)) <= stored  # nothing new appears
    assert abs(out._nnz() / x._nnz() - 0.6) < 0.02  # ~11,700 stored entries: std ~0.0045
    dense_x = x.to_dense()
    rows, cols = out.indices()
    torch.testing.assert_close(out.values(), dense_x[rows, cols] / 0.6)
    no_rescale = MaskingNoise(0.4, rescale=False)(x)
    rows, cols = no_rescale.indices()
    assert torch.equal(no_rescale.values(), dense_x[rows, cols])


def test_gaussian_noise_has_the_requested_std():
    torch.manual_seed(0)
    x = torch.full((500, 400), 2.0, dtype=torch.float64)
    noise = GaussianNoise(0.25)(x) - x
    assert abs(float(noise.mean())) < 0.005
    assert abs(float(noise.std()) - 0.25) < 0.005
    assert torch.equal(GaussianNoise(0.0)(x), x)


def test_salt_and_pepper_fraction_and_values():
    torch.manual_seed(0)
    x = torch.full((400, 500), 0.5)
    out = SaltAndPepper(0.2, low=-1.0, high=3.0)(x)
    changed = out != 0.5
    assert abs(float(changed.float().mean()) - 0.2) < 0.005
    values = out[changed]
    assert set(values.unique().tolist()) == {-1.0, 3.0}
    assert abs(float((values == 3.0).float().mean()) - 0.5) < 0.01


def test_dense_only_corruptions_refuse_sparse_input():
    x = torch.eye(3).to_sparse()
    for module in (GaussianNoise(0.1), SaltAndPepper(0.1)):
        with pytest.raises(TypeError, match="needs a dense input"):
            module(x)


def test_make_corruption_builds_each_kind():
    assert isinstance(make_corruption(None, 0.0), NoCorruption)
    assert isinstance(make_corruption("none", 0.7), NoCorruption)
    gaussian = make_corruption("gaussian", 2.5)
    assert isinstance(gaussian, GaussianNoise) and gaussian.std == 2.5
    masking = make_corruption("masking", 0.5)
    assert isinstance(masking, MaskingNoise) and masking.p == 0.5 and masking.rescale
    assert not make_corruption("masking_no_rescale", 0.5).rescale
    salt = make_corruption("salt_and_pepper", 0.1)
    assert isinstance(salt, SaltAndPepper) and (salt.low, salt.high) == (0.0, 1.0)
    assert set(CORRUPTIONS) == {"none", "gaussian", "masking", "masking_no_rescale", "salt_and_pepper"}


@pytest.mark.parametrize(
    ("kind", "level", "message"),
    [
        ("masking", 1.0, r"level=1.0; expected a finite number in \[0, 1\)"),
        ("masking", -0.1, r"level=-0.1"),
        ("salt_and_pepper", 1.5, r"level=1.5"),
        ("gaussian", -1.0, r"level=-1.0; expected a finite number >= 0"),
        ("gaussian", float("nan"), r"level=nan"),
        ("dropout", 0.5, r"kind='dropout'; expected one of 'none'"),
        ("none", "0.5", r"level='0.5'"),
    ],
)
def test_make_corruption_rejects_bad_levels_and_kinds(kind, level, message):
    with pytest.raises(ValueError, match=message):
        make_corruption(kind, level)


def test_corruption_constructors_validate():
    with pytest.raises(ValueError, match=r"p=1; expected a finite number in \[0, 1\)"):
        MaskingNoise(1)
    with pytest.raises(ValueError, match=r"std=-0.5"):
        GaussianNoise(-0.5)
    with pytest.raises(ValueError, match=r"low=1.0 and high=0.0; expected low < high"):
        SaltAndPepper(0.1, low=1.0, high=0.0)
