"""Input corruptions for denoising autoencoders.

A denoising autoencoder reconstructs the clean input from a corrupted copy
(Vincent et al. 2008; Goodfellow, Bengio and Courville, *Deep Learning*,
sec. 14.5; Bank, Koenigstein and Giryes 2020). The corruptions here are
:class:`torch.nn.Module` s that corrupt only in training mode and are the
identity under ``.eval()``:

- :class:`GaussianNoise`: additive isotropic Gaussian noise;
- :class:`MaskingNoise`: each entry dropped (set to 0) with probability
  ``p``, the survivors optionally scaled by ``1 / (1 - p)`` as
  :class:`torch.nn.Dropout` -- the input dropout of CDAE (Wu et al. 2016) and
  Mult-DAE/VAE (Liang et al. 2018). It also takes a torch sparse COO batch;
- :class:`SaltAndPepper`: a fraction ``p`` of entries set to ``low`` or
  ``high``.

Randomness comes from the ``generator`` passed to ``forward`` (the training
loop's ``state.generator``), or torch's global generator when none is.
"""

from __future__ import annotations

import torch
from torch import nn

from aerec.params import Options, check, check_real

__all__ = ["CORRUPTIONS", "GaussianNoise", "MaskingNoise", "NoCorruption", "SaltAndPepper", "make_corruption"]

#: Kinds accepted by :func:`make_corruption` (``None`` means ``"none"``).
CORRUPTIONS: tuple[str, ...] = ("none", "gaussian", "masking", "masking_no_rescale", "salt_and_pepper")


class _Corruption(nn.Module):
    """Base: identity in eval mode; ``corrupt`` does the work in training mode."""

    accepts_sparse = False

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return the corrupted ``x`` in training mode (drawing from ``generator``), ``x`` itself in eval mode."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if not self.training:
            return x
        if x.layout != torch.strided and not (self.accepts_sparse and x.layout == torch.sparse_coo):
            raise TypeError(
                f"{type(self).__name__} needs a dense input, got layout {x.layout}: it would change unstored entries"
            )
        return self.corrupt(x, generator)

    def corrupt(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError


class NoCorruption(_Corruption):
    """The identity, with the corruptions' signature (``make_corruption(None)``)."""

    accepts_sparse = True

    def corrupt(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x


class GaussianNoise(_Corruption):
    """Additive Gaussian noise: ``x + N(0, std^2)`` independently per entry (training mode only).

    Parameters
    ----------
    std : float
        Standard deviation, ``>= 0``; 0 leaves the input unchanged.

    Notes
    -----
    Dense inputs only: noise on every entry would fill a sparse batch.
    """

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = check_real("std", std, low=0.0)

    def corrupt(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.std == 0:
            return x
        return x + _draw(torch.randn, x, generator) * self.std

    def extra_repr(self) -> str:
        return f"std={self.std}"


class MaskingNoise(_Corruption):
    """Masking (dropout) noise: each entry set to 0 with probability ``p`` (training mode only).

    Parameters
    ----------
    p : float
        Drop probability in ``[0, 1)``.
    rescale : bool, default True
        Divide the kept entries by ``1 - p``, as :class:`torch.nn.Dropout`,
        vae_cf's ``tf.nn.dropout`` and CDAE do, so that the expectation of
        each entry is unchanged. Without it the kept entries stay as they
        are (the classic masking noise of Vincent et al. 2008).

    Notes
    -----
    A 2-D torch sparse COO input is corrupted without densifying it: each
    *stored* entry is dropped with probability ``p`` (unstored entries are
    zero and stay zero, so the result has the same distribution as the dense
    path) and a coalesced sparse COO tensor holding only the kept entries is
    returned. The dense and sparse paths draw different numbers of random
    values, so with the same seed they do not drop the same entries.
    """

    accepts_sparse = True

    def __init__(self, p: float, rescale: bool = True) -> None:
        super().__init__()
        self.p = check_real("p", p, low=0.0, high=1.0, high_open=True)
        self.rescale = bool(rescale)

    def corrupt(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.p == 0:
            return x
        scale = 1.0 / (1.0 - self.p) if self.rescale else 1.0
        if x.layout == torch.sparse_coo:
            return self._corrupt_sparse(x, scale, generator)
        keep = _draw(torch.rand, x, generator) >= self.p
        return x * (keep.to(x.dtype) * scale)

    def _corrupt_sparse(self, x: torch.Tensor, scale: float, generator: torch.Generator | None) -> torch.Tensor:
        x = x.coalesce()  # no work when already coalesced (as csr_to_sparse_tensor makes it)
        keep = torch.rand(x._nnz(), device=x.device, generator=generator) >= self.p
        values = x.values()[keep] * scale
        # A subset of coalesced (sorted, unique) indices is still coalesced.
        return torch.sparse_coo_tensor(x.indices()[:, keep], values, x.shape, is_coalesced=True, check_invariants=False)

    def extra_repr(self) -> str:
        return f"p={self.p}, rescale={self.rescale}"


class SaltAndPepper(_Corruption):
    """Salt-and-pepper noise: a fraction ``p`` of entries set to ``low`` or ``high`` with equal probability.

    Each entry is chosen independently with probability ``p`` (training mode
    only); a chosen entry becomes ``low`` or ``high`` by a fair coin, even if
    it already held that value.

    Parameters
    ----------
    p : float
        Fraction of entries to overwrite, in ``[0, 1)``.
    low, high : float, default 0.0 and 1.0
        The "pepper" and "salt" values; finite, ``low < high``.

    Notes
    -----
    Dense inputs only: "salt" on unstored entries would fill a sparse batch.
    """

    def __init__(self, p: float, low: float = 0.0, high: float = 1.0) -> None:
        super().__init__()
        self.p = check_real("p", p, low=0.0, high=1.0, high_open=True)
        self.low = check_real("low", low)
        self.high = check_real("high", high)
        if not self.low < self.high:
            raise ValueError(f"low={low!r} and high={high!r}; expected low < high")

    def corrupt(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.p == 0:
            return x
        chosen = _draw(torch.rand, x, generator) < self.p
        salt = _draw(torch.rand, x, generator) < 0.5
        noise = torch.where(salt, torch.full_like(x, self.high), torch.full_like(x, self.low))
        return torch.where(chosen, noise, x)

    def extra_repr(self) -> str:
        return f"p={self.p}, low={self.low}, high={self.high}"


def make_corruption(kind: str | None, level: float) -> nn.Module:
    """The corruption module named ``kind`` at strength ``level``.

    Parameters
    ----------
    kind : {None, "none", "gaussian", "masking", "masking_no_rescale", "salt_and_pepper"}
        ``None`` / ``"none"``: :class:`NoCorruption`, the identity (``level`` must
        still be a finite number but is not used); ``"gaussian"``:
        :class:`GaussianNoise` with ``std=level``; ``"masking"``:
        :class:`MaskingNoise` with ``p=level``, kept entries rescaled;
        ``"masking_no_rescale"``: the same without rescaling;
        ``"salt_and_pepper"``: :class:`SaltAndPepper` with ``p=level`` and
        values 0 and 1.
    level : float
        The standard deviation (``>= 0``) for ``"gaussian"``, else the
        probability ``p`` in ``[0, 1)``.

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    ValueError
        For an unknown ``kind`` or a ``level`` out of its range.
    """
    kind = "none" if kind is None else kind
    check("kind", kind, Options(*CORRUPTIONS))
    if kind == "none":
        check_real("level", level)
        return NoCorruption()
    if kind == "gaussian":
        return GaussianNoise(check_real("level", level, low=0.0))
    level = check_real("level", level, low=0.0, high=1.0, high_open=True)
    if kind == "salt_and_pepper":
        return SaltAndPepper(level)
    return MaskingNoise(level, rescale=kind == "masking")


def _draw(sample, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``sample`` (torch.rand / torch.randn) in ``x``'s shape, dtype and device: ``rand_like``'s draws, from ``generator``."""
    return sample(x.shape, dtype=x.dtype, device=x.device, generator=generator)
