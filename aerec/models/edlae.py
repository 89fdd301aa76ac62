"""DLAE and EDLAE: linear autoencoders trained with dropout denoising, in closed form.

Harald Steck. "Autoencoders that don't overfit towards the Identity", NeurIPS
2020. https://proceedings.neurips.cc/paper/2020/hash/e33d974aae13e4d877477d51d8bafdc4-Abstract.html
-- reference code: the notebook ``EDLAE_NeurIPS2020.ipynb`` of
hasteck/EDLAE_NeurIPS2020, whose functions these follow step by step.

A linear autoencoder ``scores = X B`` trained with dropout probability ``p`` on
its input has, in expectation, the L2 penalty
``Lambda = p / (1 - p) * dMat(diag(X^T X)) + lambda * I`` (Eq. 5); with
``G = X^T X``:

- **DLAE** (full rank): ``B = (G + Lambda)^-1 G`` (Eq. 6), the ridge solution
  with the dropout-shaped penalty; the diagonal is free;
- **EDLAE** (full rank): the *emphasized* variant, where only the dropped-out
  entries count in the loss: the notebook's ``learn_EDLAE_fullrank``,
  ``P = (G + Lambda)^-1``, ``B = -P / diag(P)`` column-wise and ``diag(B) = 0``
  (Eqs. 8-9). With ``p = 0`` it is EASE;
- **low rank** (``rank=k``): ``B = U V^T`` with ``U, V`` of shape (items, k),
  learned by the notebook's iterations from ``init_scale * N(0, 1)`` starts:
  DLAE by ``learn_EDLAE_approx`` with a free diagonal (alternating least
  squares, ``U`` then ``V`` each iteration), EDLAE by ``learn_EDLAE_analytic``
  (the ADMM of the paper's supplement, with penalty ``omega``, Table 1 line 5).
  Scores are ``(X U) V^T``.

Every step is computed as the notebook computes it, in float64 (the notebook
uses float32 for ``X^T X``), reordered so that no items x items product is
formed inside the iterations: each costs ``O(items^2 k)`` (products of the
Gram matrix with ``items x k`` blocks) instead of the notebook's
``O(items^3)``; the iterates are the same up to rounding.

Memory: every variant holds the dense Gram matrix and its inverse (float64,
items x items) while fitting, as the notebook does; the low-rank variants
keep only ``2 x items x k`` floats afterwards and score in ``O(k)`` per item.
The full-rank forms also run in place in one float32 array
(``precision="float32"``, 4 bytes per items x items entry, as the notebook's
float32; see :mod:`aerec.core.closed_form`): an MSD-sized catalogue fits this
way. A catalogue whose matrices do not fit is refused before allocating, with
the estimates.

Defaults: ``dropout=0.33, l2=300`` are the notebook's full-rank EDLAE setting for
ML-20M (Netflix: 0.33 / 500; MSD: 0.25 / 70); low rank: 5 iterations (its ML-20M
runs of both solvers), ``omega=500``, ``init_scale=1e-4`` as the notebook. Choose
``dropout`` and ``l2`` on validation users (``p`` in [0, 1): 0 gives EASE for
EDLAE, plain ridge regression for DLAE).

The notebook's ADMM is run for a fixed, small number of iterations (5 on
ML-20M, 10 on Netflix, 20 on MSD) and does not converge in general: on ML-100K
(rank 200, p 0.33, lambda 100) validation NDCG@100 is 0.470 after 5 iterations
with ``omega=50`` but the factors grow without bound after 10-20, and with
``omega=500`` already after 5 (the notebook's own function, run beside this
one in ``tests/test_edlae.py``, gives the same numbers). Choose ``iterations``
and ``omega`` on validation users.

Departures from the notebook, named: float64 throughout (above); the random
starts are drawn by a torch generator seeded with ``seed`` (the notebook uses
numpy's global generator).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from aerec._torch import csr_to_sparse_tensor, resolve_device
from aerec.core.closed_form import (
    PRECISIONS,
    check_dense_memory,
    dense_gram_float32,
    gram_matrix,
    in_place_weights,
    ridge_weights,
    spd_inverse,
    zero_diagonal_weights,
)
from aerec.models.base import Recommender
from aerec.params import COUNT, RATE, SEED, WIDTH, Device, Interval, Options
from aerec.search_space import FloatRange

__all__ = ["DLAE", "EDLAE"]

DROPOUT = Interval(float, 0.0, 1.0, closed="left")


class DLAE(Recommender):
    """Dropout-denoising linear autoencoder (Steck 2020): ``B = (G + Lambda)^-1 G``, or its rank-``k`` version.

    See the module docstring for the formulas and the reference.

    Parameters
    ----------
    dropout : float, default 0.33
        The dropout probability ``p`` in [0, 1) whose expected penalty is
        ``p / (1 - p) * diag(X^T X)``.
    l2 : float, default 300.0
        The L2 weight ``lambda`` added to every item's penalty (> 0).
    rank : int or None, default None
        None: the full-rank closed form; k: ``B = U V^T`` with k columns.
    iterations : int, default 5
        Iterations of the low-rank solver (ignored at full rank).
    init_scale : float, default 1e-4
        Standard deviation of the low-rank solver's random start.
    seed : int, default 0
        Seeds the low-rank solver's random start.
    device : str, default "auto"
        "auto" (CUDA when present), "cpu" or "cuda[:N]".
    precision : {"float64", "float32"}, default "float64"
        Full rank: "float64" inverts on ``device`` (about 24 bytes per items x items entry at the
        peak); "float32" in place in one float32 array on the CPU (4 bytes per entry, for large
        catalogues, as :class:`~aerec.models.EASE`). The low-rank solvers run in float64.

    Attributes
    ----------
    weights_ : torch.Tensor
        B, (n_items, n_items) float32, at full rank.
    factors_ : (torch.Tensor, torch.Tensor)
        U and V, each (n_items, rank) float32, at low rank (``B = U V^T``).
    """

    emphasized = False
    parameter_constraints = {"dropout": [DROPOUT], "l2": [RATE], "rank": [WIDTH, None],
                             "iterations": [COUNT], "init_scale": [RATE], "seed": [SEED],
                             "device": [Device()], "precision": [Options(*PRECISIONS)]}
    #: the notebook's settings (p 0.1-0.75, lambda 10-30,000) inside
    search_space = {"dropout": FloatRange(0.0, 0.9), "l2": FloatRange(10.0, 10_000.0, log=True)}

    def __init__(self, dropout: float = 0.33, l2: float = 300.0, rank: int | None = None, iterations: int = 5,
                 init_scale: float = 1e-4, seed: int = 0, device: str = "auto", precision: str = "float64"):
        self.dropout, self.l2, self.rank, self.iterations = dropout, l2, rank, iterations
        self.init_scale, self.seed, self.device, self.precision = init_scale, seed, device, precision

    def check_param_combinations(self) -> None:
        if self.rank is not None and self.precision != "float64":
            raise ValueError(f"precision={self.precision!r} with rank={self.rank}; expected precision='float64': "
                             "the low-rank solvers run in float64 (float32 is the in-place full-rank path)")

    # -- fitting ---------------------------------------------------------------------------
    def penalty(self, gram_diagonal: torch.Tensor) -> torch.Tensor:
        """``lambda + p / (1 - p) * diag(X^T X)``: the diagonal of the expected dropout penalty Lambda."""
        p = float(self.dropout)
        return float(self.l2) + gram_diagonal * (p / (1.0 - p))

    def _fit(self, matrix: sp.csr_matrix, validation) -> None:
        n_items = matrix.shape[1]
        if self.rank is not None and int(self.rank) > n_items:
            raise ValueError(f"rank={self.rank}; expected at most the number of items, {n_items}")
        check_dense_memory(type(self).__name__, n_items, self.precision)
        self.device_ = device = resolve_device(self.device)
        self.weights_ = self.factors_ = None
        if self.precision == "float32":
            gram = dense_gram_float32(matrix)
            penalty = self.penalty(torch.from_numpy(gram.diagonal().astype(np.float64))).numpy()
            self.weights_ = in_place_weights(gram, penalty, emphasized=self.emphasized).to(device)
            return
        gram = gram_matrix(matrix, device)
        penalty = self.penalty(gram.diagonal().clone())
        if self.rank is None:
            gram.diagonal().add_(penalty)
            self.weights_ = zero_diagonal_weights(gram) if self.emphasized else ridge_weights(gram, penalty)
        else:
            generator = torch.Generator().manual_seed(int(self.seed))
            u, v = self.low_rank(gram, penalty, int(self.rank), generator)
            self.factors_ = (u.to(torch.float32).contiguous(), v.to(torch.float32).contiguous())

    def low_rank(self, gram: torch.Tensor, penalty: torch.Tensor, rank: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The notebook's ``learn_EDLAE_approx`` with a free diagonal: ``(U, V)``, each (items, rank), float64."""
        n_items = gram.shape[0]
        precision = spd_inverse(gram + torch.diag(penalty))  # CC = (G + Lambda)^-1
        v_t = self.random_start((rank, n_items), generator, gram)  # VVt
        for _ in range(int(self.iterations)):
            # U = (I - CC dMat(Lambda)) V^T (V V^T)^-1
            right = v_t.T @ torch.linalg.inv(v_t @ v_t.T)
            u = right - precision @ (penalty[:, None] * right)
            # V^T = (U^T (G + Lambda) U)^-1 U^T G
            h = torch.linalg.solve(u.T @ (gram @ u) + u.T @ (penalty[:, None] * u), u.T)
            v_t = (gram @ h.T).T
        return u, v_t.T

    def random_start(self, shape: tuple[int, int], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        """``init_scale * N(0, 1)`` of ``shape`` (the notebook's ``np.random.randn(...) * init_scale``)."""
        start = torch.randn(shape, generator=generator, dtype=torch.float64) * float(self.init_scale)
        return start.to(like.device)

    # -- scoring ---------------------------------------------------------------------------
    similarity_metrics = ("weight", "cosine", "dot")

    def item_similarities(self, columns: np.ndarray, metric: str) -> torch.Tensor:
        """``"weight"``: item ``j``'s column of ``B`` (``U v_j`` at low rank); else as the base class."""
        if metric != "weight":
            return super().item_similarities(columns, metric)
        if self.weights_ is not None:
            return self.weights_[:, torch.from_numpy(columns).to(self.weights_.device)].T
        u, v = self.factors_
        return (u @ v[torch.from_numpy(columns).to(v.device)].T).T

    def item_embeddings(self) -> np.ndarray:
        """Full rank: item ``j``'s column of ``B``, (n_items, n_items); low rank (``B = U V^T``): its row of
        ``V``, (n_items, rank), the vector its score is read from. float32."""
        self.check_fitted()
        weight = self.weights_.T if self.weights_ is not None else self.factors_[1]
        return weight.float().cpu().contiguous().numpy()

    def score_tensor(self, user_items) -> torch.Tensor:
        rows = csr_to_sparse_tensor(self.check_user_items(user_items), self.device_)
        if self.weights_ is not None:
            return torch.sparse.mm(rows, self.weights_)
        u, v = self.factors_
        return torch.sparse.mm(rows, u) @ v.T


class EDLAE(DLAE):
    """Emphasized dropout-denoising linear autoencoder (Steck 2020): zero-diagonal closed form, or low-rank ADMM.

    Parameters as :class:`DLAE`, and

    omega : float, default 500.0
        The ADMM penalty of the low-rank solver (ignored at full rank).

    With ``dropout=0`` the full-rank EDLAE is EASE with ``l2``.
    """

    emphasized = True
    parameter_constraints = {"omega": [RATE]}

    def __init__(self, dropout: float = 0.33, l2: float = 300.0, rank: int | None = None, iterations: int = 5,
                 omega: float = 500.0, init_scale: float = 1e-4, seed: int = 0, device: str = "auto",
                 precision: str = "float64"):
        super().__init__(dropout=dropout, l2=l2, rank=rank, iterations=iterations, init_scale=init_scale, seed=seed,
                         device=device, precision=precision)
        self.omega = omega

    def low_rank(self, gram: torch.Tensor, penalty: torch.Tensor, rank: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The notebook's ``learn_EDLAE_analytic`` (ADMM): ``(U, V)``, each (items, rank), float64."""
        n_items = gram.shape[0]
        counts = gram.diagonal().clone()  # XtXdiag
        omega = penalty + float(self.omega)  # OmegaDiag
        precision = spd_inverse(gram + torch.diag(penalty))  # PP
        beta = torch.zeros(n_items, dtype=gram.dtype, device=gram.device)
        gamma = torch.zeros_like(beta)
        u = self.random_start((n_items, rank), generator, gram)

        # The notebook's target matrix T = G dMat(1 + beta) + dMat(omega (beta - gamma)) (its GG), never formed:
        # T @ block and T^T @ block (G is symmetric).
        def target_times(block: torch.Tensor) -> torch.Tensor:
            return gram @ ((1.0 + beta)[:, None] * block) + (omega * (beta - gamma))[:, None] * block

        def target_transposed_times(block: torch.Tensor) -> torch.Tensor:
            return (1.0 + beta)[:, None] * (gram @ block) + (omega * (beta - gamma))[:, None] * block

        for _ in range(int(self.iterations)):
            # V^T = (U^T (G + Lambda + dMat(omega)) U)^-1 U^T T
            h = torch.linalg.solve(u.T @ (gram @ u) + u.T @ ((penalty + omega)[:, None] * u), u.T)
            v_t = target_transposed_times(h.T).T
            # U = PP T V (V^T V)^-1
            u = precision @ target_times(v_t.T @ torch.linalg.inv(v_t @ v_t.T))
            # beta, gamma: the ADMM's hold on the diagonal of U V^T
            uv_diagonal = (u * v_t.T).sum(dim=1)
            numerator = ((gram @ u) * v_t.T).sum(dim=1) - counts + omega * (uv_diagonal + gamma)
            beta = torch.clamp_min(numerator / (counts + omega - penalty), 0.0)
            gamma = gamma + uv_diagonal - beta
        return u, v_t.T
