"""Layers every aerec autoencoder is assembled from.

General building blocks for encoder/decoder networks (Bank, Koenigstein and
Giryes, "Autoencoders", 2020; Goodfellow, Bengio and Courville, *Deep
Learning*, ch. 14):

- :func:`make_activation` turns a name into an activation module;
- :class:`SparseInputLinear` is a linear layer whose input may be a torch
  sparse COO batch, so the first layer costs time in proportion to the
  observed entries rather than to ``batch x n_items``;
- :class:`TiedLinear` is a decoder layer that reuses the transpose of an
  encoder layer's weight ("tied weights");
- :class:`LayerStack` / :class:`DenseStack` are the MLPs, with
  :meth:`DenseStack.tied_decoder` building the mirrored, weight-tied decoder;
- :func:`weight_matrices` lists the weight matrices for an L2 penalty.

Arguments are checked with :mod:`aerec.params`, as everywhere in aerec.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from aerec.params import POSITIVE_INT, Options, check, check_real

__all__ = [
    "ACTIVATIONS",
    "INITS",
    "DenseStack",
    "LayerStack",
    "SparseInputLinear",
    "TiedLinear",
    "dense_linear",
    "init_linear_",
    "l2_normalize_rows",
    "make_activation",
    "weight_matrices",
]

_ACTIVATION_CLASSES = {
    "identity": nn.Identity,
    "linear": nn.Identity,  # alias: "a linear layer with no activation"
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}

#: Names accepted by :func:`make_activation` (torch's default parameters for each).
ACTIVATIONS: tuple[str, ...] = tuple(_ACTIVATION_CLASSES)

#: Weight initialisations accepted by the linear layers here (see :func:`init_linear_`).
INITS: tuple[str, ...] = ("torch", "xavier")

#: Default density above which :class:`SparseInputLinear` densifies a sparse batch (measured, see there).
DENSE_INPUT_ABOVE = 0.2

# vae_cf initialises biases with tf.truncated_normal(stddev=0.001): a normal cut at two standard deviations.
_XAVIER_BIAS_STD = 0.001


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for ``name``.

    Parameters
    ----------
    name : str
        One of :data:`ACTIVATIONS`: ``"identity"`` (alias ``"linear"``),
        ``"sigmoid"``, ``"tanh"``, ``"relu"``, ``"elu"``, ``"selu"``,
        ``"softplus"`` or ``"leaky_relu"``; each with torch's default
        parameters.

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    ValueError
        If ``name`` is not one of the allowed names.
    """
    check("activation", name, Options(*ACTIVATIONS))
    return _ACTIVATION_CLASSES[name]()


def init_linear_(weight: torch.Tensor, bias: torch.Tensor | None, init: str,
                 generator: torch.Generator | None = None) -> None:
    """Initialise a linear layer's ``weight`` (out, in) and ``bias`` in place.

    Parameters
    ----------
    weight : torch.Tensor
        Weight of shape (out_features, in_features).
    bias : torch.Tensor or None
        Bias of shape (out_features,), or None.
    init : {"torch", "xavier"}
        ``"torch"`` is exactly :meth:`torch.nn.Linear.reset_parameters`
        (Kaiming-uniform weights, biases uniform in +-1/sqrt(in_features)).
        ``"xavier"`` is vae_cf's initialisation (Liang et al. 2018):
        Xavier/Glorot-uniform weights and biases drawn from a normal with
        standard deviation 0.001 truncated at two standard deviations, as
        TensorFlow's ``truncated_normal``.
    generator : torch.Generator, optional
        Source of the draws (torch's global generator when None).
    """
    check("init", init, Options(*INITS))
    if weight.is_meta:  # a network built on "meta" to learn its shapes: nothing to draw (trunc_normal_ allocates)
        return
    with torch.no_grad():
        if init == "xavier":
            nn.init.xavier_uniform_(weight, generator=generator)
            if bias is not None:
                std = _XAVIER_BIAS_STD
                nn.init.trunc_normal_(bias, mean=0.0, std=std, a=-2 * std, b=2 * std, generator=generator)
            return
        # The body of torch.nn.Linear.reset_parameters, written against bare tensors.
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        if bias is not None:
            fan_in = weight.shape[1]
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(bias, -bound, bound, generator=generator)


class SparseInputLinear(nn.Linear):
    """A linear layer ``y = x W^T + b`` whose input may be dense or torch sparse COO.

    It is a :class:`torch.nn.Linear` (same ``weight`` of shape
    (out_features, in_features), ``bias``, state-dict keys and default
    initialisation) with two additions: an ``init`` choice, and a forward
    pass that accepts a 2-D sparse COO batch (as made by
    :func:`aerec._torch.csr_to_sparse_tensor`) and computes ``x W^T + b``
    without densifying it, as a weighted ``embedding_bag`` over the columns of
    ``W`` (``torch.sparse.mm`` when the input itself needs a gradient). Its
    cost, forward and backward, grows with the stored entries of the batch;
    the result and the gradients of ``weight`` and ``bias`` equal those of the
    dense path. A sparse batch denser than ``dense_above`` is densified and
    multiplied densely instead, whichever is faster.

    Parameters
    ----------
    in_features, out_features : int
        Positive input and output widths.
    bias : bool, default True
        Whether to learn an additive bias.
    init : {"torch", "xavier"}, default "torch"
        Initialisation, see :func:`init_linear_`.
    dense_above : float, default 0.2
        Density (stored entries / (rows x in_features)) above which a sparse batch takes the
        dense product. 0.2 is where the two cost the same for a 500 x 3706 -> 600 layer,
        forward and backward, on one core of this project's CPU (AMD EPYC, torch 2.13):
        at 5% density the sparse path takes 22 ms, the dense 60 ms; at 50%, 152 ms and 64 ms.
    generator : torch.Generator, optional
        Source of the initial draws (torch's global generator when None).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init: str = "torch",
                 dense_above: float = DENSE_INPUT_ABOVE, generator: torch.Generator | None = None) -> None:
        check("in_features", in_features, POSITIVE_INT)
        check("out_features", out_features, POSITIVE_INT)
        check("init", init, Options(*INITS))
        check_real("dense_above", dense_above, low=0.0, high=1.0)
        self.dense_above = float(dense_above)
        # Set before nn.Linear.__init__, which calls reset_parameters (a plain string is safe to set this early).
        self.init = init
        self._init_generator = generator  # read by reset_parameters, which nn.Linear.__init__ calls
        super().__init__(int(in_features), int(out_features), bias=bool(bias))
        del self._init_generator
        # Same values, column-major memory: weight.t() (in_features, out_features) is then contiguous, which
        # embedding_bag needs and the dense product prefers; no transposed copy per step, forward or backward.
        self.weight = nn.Parameter(self.weight.detach().t().contiguous().t())

    def reset_parameters(self) -> None:
        """Re-draw ``weight`` and ``bias`` with this layer's ``init`` (the same draws whatever the weight's layout)."""
        weight = torch.empty(self.weight.shape, dtype=self.weight.dtype, device=self.weight.device)
        init_linear_(weight, self.bias, self.init, getattr(self, "_init_generator", None))
        with torch.no_grad():
            self.weight.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x W^T + b`` of shape (batch, out_features) for a dense or sparse COO ``x`` (batch, in_features)."""
        _check_input(x, self.in_features, allow_sparse=True)
        if x.layout == torch.strided:
            return super().forward(x)
        n_rows, n_cols = x.shape
        if x._nnz() > self.dense_above * n_rows * n_cols:
            return super().forward(x.to_dense())
        # The sparse products stay in float32 under autocast (their cost grows with the stored entries only,
        # and torch has no mixed-dtype sparse backward); the layers after this one autocast as usual.
        with torch.autocast(x.device.type, enabled=False):
            x = x if x.is_coalesced() else x.coalesce()
            (rows, cols), values = x.indices(), x.values().to(self.weight.dtype)
            if values.requires_grad:  # a gradient with respect to the input: the general sparse product
                out = torch.sparse.mm(torch.sparse_coo_tensor(x.indices(), values, x.shape, check_invariants=False),
                                      self.weight.t())
            else:  # a weighted sum of weight columns per row: embedding_bag, 3-4x faster than sparse.mm here
                counts = torch.bincount(rows, minlength=n_rows)
                out = F.embedding_bag(cols, self.weight.t().contiguous(), torch.cumsum(counts, 0) - counts,
                                      mode="sum", per_sample_weights=values)
            return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, init={self.init!r}, dense_above={self.dense_above:g}"


class TiedLinear(nn.Module):
    """A decoder layer reusing the transpose of another layer's weight: ``y = x W + b'``.

    ``W`` is ``source.weight`` of shape (out, in) -- the very same
    :class:`~torch.nn.Parameter`, so both uses accumulate gradients into it
    and an optimiser over ``model.parameters()`` sees it once. The layer maps
    ``source.out_features`` inputs back to ``source.in_features`` outputs and
    owns only its bias ``b'``.

    Parameters
    ----------
    source : torch.nn.Module
        A layer with a 2-D ``weight`` parameter of shape (out, in), such as
        :class:`torch.nn.Linear` or :class:`SparseInputLinear`.
    bias : bool, default True
        Whether to learn the decoder's own bias.
    init : {"torch", "xavier"}, default "torch"
        How to initialise the bias: ``"torch"`` uniform in
        +-1/sqrt(in_features) as :class:`torch.nn.Linear`, ``"xavier"`` the
        truncated normal of std 0.001 (see :func:`init_linear_`). The weight
        is never re-initialised here.

    Notes
    -----
    As in torch's own weight tying, the shared parameter is registered in
    both layers: ``parameters()`` yields it once, but ``state_dict()`` holds
    it under both names (``torch.save`` / ``load_state_dict`` handle that;
    ``safetensors.torch.save_file`` refuses shared tensors, use
    ``safetensors.torch.save_model``).
    """

    def __init__(self, source: nn.Module, bias: bool = True, init: str = "torch",
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        weight = getattr(source, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.ndim != 2:
            raise ValueError(
                f"source={type(source).__name__} has no 2-D weight parameter; "
                "expected a layer such as nn.Linear with weight of shape (out, in)"
            )
        check("init", init, Options(*INITS))
        self.init = init
        self.weight = weight  # shared, not copied: registered here as well, deduplicated by .parameters()
        self.in_features, self.out_features = weight.shape  # (out, in) of the source: this layer maps back
        self.bias = None
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features, dtype=weight.dtype, device=weight.device))
        self.reset_bias(generator)

    def reset_bias(self, generator: torch.Generator | None = None) -> None:
        """Re-draw the bias (the shared weight belongs to the source layer and is left alone)."""
        if self.bias is None:
            return
        with torch.no_grad():
            if self.init == "xavier":
                std = _XAVIER_BIAS_STD
                nn.init.trunc_normal_(self.bias, mean=0.0, std=std, a=-2 * std, b=2 * std, generator=generator)
            else:
                bound = 1 / math.sqrt(self.in_features)
                nn.init.uniform_(self.bias, -bound, bound, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x W + b'`` of shape (batch, out_features) for a dense ``x`` of shape (batch, in_features)."""
        _check_input(x, self.in_features, allow_sparse=False)
        return F.linear(x, self.weight.t(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, tied"


class LayerStack(nn.Module):
    """Linear layers, each followed by its activation: ``x -> act_k(layer_k(... act_1(layer_1(x))))``.

    Parameters
    ----------
    layers : sequence of torch.nn.Module
        The linear layers, in order; consecutive widths must agree.
    activations : sequence of torch.nn.Module
        One activation module per layer.

    Attributes
    ----------
    layers : torch.nn.ModuleList
        The linear layers (read or tie their weights from here).
    activations : torch.nn.ModuleList
        The activation applied after each layer.
    """

    def __init__(self, layers: Sequence[nn.Module], activations: Sequence[nn.Module]) -> None:
        super().__init__()
        layers, activations = list(layers), list(activations)
        if not layers or len(layers) != len(activations):
            raise ValueError(
                f"got {len(layers)} layers and {len(activations)} activations; "
                "expected at least one layer and one activation per layer"
            )
        for previous, following in zip(layers, layers[1:]):
            if previous.out_features != following.in_features:
                raise ValueError(
                    f"layer widths do not chain: {previous.out_features} outputs feed {following.in_features} inputs"
                )
        self.layers = nn.ModuleList(layers)
        self.activations = nn.ModuleList(activations)

    @property
    def widths(self) -> list[int]:
        """Input width followed by every layer's output width."""
        return [self.layers[0].in_features] + [layer.out_features for layer in self.layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply every layer and its activation in turn; returns shape (batch, widths[-1])."""
        for layer, activation in zip(self.layers, self.activations):
            x = activation(layer(x))
        return x


class DenseStack(LayerStack):
    """An MLP ``widths[0] -> widths[1] -> ... -> widths[-1]``, the usual encoder or decoder.

    ``activation`` follows every layer but the last, which is followed by
    ``final_activation``.

    Parameters
    ----------
    widths : sequence of int
        At least two positive widths: input, hidden..., output.
    activation : str, default "tanh"
        Activation between layers (see :data:`ACTIVATIONS`).
    final_activation : str, default "identity"
        Activation after the last layer.
    sparse_input : bool, default False
        Make the first layer a :class:`SparseInputLinear`, so the stack
        accepts a torch sparse COO batch as well as a dense one. Otherwise all
        layers are :class:`torch.nn.Linear` and the input must be dense.
    init : {"torch", "xavier"}, default "torch"
        Initialisation of every layer (see :func:`init_linear_`).
    generator : torch.Generator, optional
        Source of the initial draws (torch's global generator when None).

    Examples
    --------
    An encoder shaped and initialised like Mult-DAE's, reading sparse
    batches, and a weight-tied decoder back to the items (Mult-DAE itself
    does not tie its weights)::

        encoder = DenseStack([n_items, 600, 200], "tanh", "tanh", sparse_input=True, init="xavier")
        decoder = encoder.tied_decoder()  # 200 -> 600 -> n_items
    """

    def __init__(
        self,
        widths: Sequence[int],
        activation: str = "tanh",
        final_activation: str = "identity",
        sparse_input: bool = False,
        init: str = "torch",
        generator: torch.Generator | None = None,
    ) -> None:
        if (
            isinstance(widths, (str, bytes))
            or not isinstance(widths, (Sequence, np.ndarray))
            or len(widths) < 2
            or not all(POSITIVE_INT.is_satisfied_by(width) for width in widths)
        ):
            raise ValueError(f"widths={widths!r}; expected a sequence of at least two positive integers")
        check("activation", activation, Options(*ACTIVATIONS))
        check("final_activation", final_activation, Options(*ACTIVATIONS))
        check("init", init, Options(*INITS))
        widths = [int(width) for width in widths]
        first = (SparseInputLinear(widths[0], widths[1], init=init, generator=generator) if sparse_input
                 else dense_linear(*widths[:2], init, generator))
        layers = [first] + [dense_linear(n_in, n_out, init, generator) for n_in, n_out in zip(widths[1:], widths[2:])]
        super().__init__(layers, _activation_modules(len(layers), activation, final_activation))
        self.activation = activation
        self.final_activation = final_activation
        self.sparse_input = bool(sparse_input)
        self.init = init

    def tied_decoder(self, final_activation: str = "identity", generator: torch.Generator | None = None) -> LayerStack:
        """The mirrored decoder ``widths[-1] -> ... -> widths[0]`` made of :class:`TiedLinear` layers.

        Layer ``k`` of the decoder uses the transpose of encoder layer
        ``n - 1 - k``'s weight (the same parameter) with its own bias; the
        encoder's ``activation`` follows every decoder layer but the last,
        which gets ``final_activation``. So ``decoder(encoder(x))`` has the
        input's width.

        Parameters
        ----------
        final_activation : str, default "identity"
            Activation on the reconstruction (see :data:`ACTIVATIONS`).

        Returns
        -------
        LayerStack
        """
        check("final_activation", final_activation, Options(*ACTIVATIONS))
        layers = [TiedLinear(layer, init=self.init, generator=generator) for layer in reversed(self.layers)]
        return LayerStack(layers, _activation_modules(len(layers), self.activation, final_activation))

    def extra_repr(self) -> str:
        return f"widths={self.widths}, activation={self.activation!r}, final_activation={self.final_activation!r}"


def weight_matrices(module: nn.Module) -> list[torch.Tensor]:
    """The weight matrices (not the biases) of every linear layer in ``module``, each shared one once.

    Covers :class:`torch.nn.Linear` (so :class:`SparseInputLinear`) and
    :class:`TiedLinear`; a weight shared by an encoder layer and a tied
    decoder layer is listed once, so that an L2 penalty such as AutoRec's
    ``||W||^2 + ||V||^2`` counts it once. Other parameters (embeddings,
    biases) are not included.

    Parameters
    ----------
    module : torch.nn.Module

    Returns
    -------
    list of torch.nn.Parameter
        In the order :meth:`torch.nn.Module.modules` visits the layers.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    found: dict[int, torch.Tensor] = {}
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, TiedLinear)):
            found.setdefault(id(layer.weight), layer.weight)
    return list(found.values())


# -- input normalisation -------------------------------------------------------
# tf.nn.l2_normalize's default epsilon: x * rsqrt(max(sum(x ** 2), epsilon)).
L2_NORMALIZE_EPSILON = 1e-12


def l2_normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row divided by its L2 norm, as ``tf.nn.l2_normalize(x, 1)``; dense or sparse COO in, same layout out.

    ``x / sqrt(max(sum_i x_i^2, 1e-12))``: an all-zero row stays zero (no NaN).
    A sparse COO input is normalised through its stored values only (never
    densified); the result is a coalesced sparse COO tensor.

    Parameters
    ----------
    x : torch.Tensor
        2-D, shape (rows, items), dense or sparse COO, floating point.

    Returns
    -------
    torch.Tensor
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.layout not in (torch.strided, torch.sparse_coo):
        got = f"{x.layout}, shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x is {got}; expected a 2-D dense or sparse COO tensor (rows, items)")
    if x.layout == torch.strided:
        return x * torch.rsqrt(x.square().sum(dim=1, keepdim=True).clamp_min(L2_NORMALIZE_EPSILON))
    x = x.coalesce()  # no work for batches made by csr_to_sparse_tensor, which are coalesced already
    rows, values = x.indices()[0], x.values()
    squares = torch.zeros(x.shape[0], dtype=values.dtype, device=values.device).index_add_(0, rows, values.square())
    scale = torch.rsqrt(squares.clamp_min(L2_NORMALIZE_EPSILON))
    return torch.sparse_coo_tensor(x.indices(), values * scale[rows], x.shape, is_coalesced=True,
                                   check_invariants=False)


# -- helpers -------------------------------------------------------------------


def dense_linear(in_features: int, out_features: int, init: str = "torch",
                 generator: torch.Generator | None = None) -> nn.Linear:
    """An ``nn.Linear`` initialised by ``init``, drawing from ``generator`` (torch's global one when None).

    Torch's initialisation is drawn first and ``init`` over it, as ``nn.Linear(...)`` followed by
    :func:`init_linear_` always did: the draws, and so every seeded result, stay what they were.
    """
    # on the device in force (a "meta" context allocates nothing; skip_init alone would allocate on the CPU)
    layer = torch.nn.utils.skip_init(nn.Linear, in_features, out_features, device=torch.empty(0).device)
    init_linear_(layer.weight, layer.bias, "torch", generator)
    if init != "torch":
        init_linear_(layer.weight, layer.bias, init, generator)
    return layer


def _activation_modules(n_layers: int, activation: str, final_activation: str) -> list[nn.Module]:
    return [make_activation(activation) for _ in range(n_layers - 1)] + [make_activation(final_activation)]


def _check_input(x, in_features: int, allow_sparse: bool) -> None:
    """Raise unless ``x`` is a 2-D tensor (dense, or sparse COO where allowed) with ``in_features`` columns."""
    layouts = (torch.strided, torch.sparse_coo) if allow_sparse else (torch.strided,)
    if not isinstance(x, torch.Tensor) or x.layout not in layouts:
        kind = "a dense or sparse COO" if allow_sparse else "a dense"
        got = type(x).__name__ if not isinstance(x, torch.Tensor) else f"layout {x.layout}"
        raise TypeError(f"input must be {kind} torch.Tensor, got {got}")
    if x.ndim != 2 or x.shape[1] != in_features:
        raise ValueError(f"input has shape {tuple(x.shape)}; expected (batch, {in_features})")
