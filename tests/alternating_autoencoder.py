"""A new model written on the base, as a contributor would: a Mult-DAE whose encoder and decoder train in turns.

RecVAE's alternating schedule (Shenbin et al. 2020) in miniature: each epoch makes
``encoder_passes`` passes that update the encoder only, with input dropout, then
``decoder_passes`` passes that update the decoder only, without dropout; before the
decoder phase a hook copies the encoder (as RecVAE refreshes its prior). Everything
else (parameter checks, the loop, checkpoints, callbacks, scoring, model files) comes
from :class:`~aerec.models.torch_base.TorchRecommender`. Used by ``test_one_house.py``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from aerec.core.corruption import MaskingNoise
from aerec.core.layers import DenseStack, l2_normalize_rows
from aerec.core.losses import multinomial_nll
from aerec.models.torch_base import TorchRecommender, store_params
from aerec.params import POSITIVE_INT, PROBABILITY
from aerec.training import Phase


class AlternatingNet(nn.Module):
    def __init__(self, n_items: int, hidden: int, dropout: float, generator: torch.Generator):
        super().__init__()
        self.dropout = MaskingNoise(dropout)
        self.encoder = DenseStack([n_items, hidden], "tanh", "tanh", sparse_input=True, generator=generator)
        self.decoder = DenseStack([hidden, n_items], "tanh", "identity", generator=generator)
        self.frozen_encoder = copy.deepcopy(self.encoder).requires_grad_(False)  # as RecVAE's prior encoder
        self.encoder_copies = 0

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, dropout: bool = True):
        x = l2_normalize_rows(x)
        return self.decoder(self.encoder(self.dropout(x, generator) if dropout else x))


class AlternatingAutoencoder(TorchRecommender):
    """Encoder and decoder epochs in turns; the shared parameters as every model on the base."""

    parameter_constraints = {"hidden": [POSITIVE_INT], "dropout": [PROBABILITY], "encoder_passes": [POSITIVE_INT],
                             "decoder_passes": [POSITIVE_INT]}

    def __init__(self, hidden: int = 16, dropout: float = 0.5, encoder_passes: int = 2, decoder_passes: int = 1,
                 epochs: int = 10, batch_size: int = 50, lr: float = 1e-2, seed: int = 0, device: str = "cpu",
                 patience: int | None = None, progress: bool = False, max_seconds: float | None = None):
        store_params(self, locals())

    def build_module(self, generator: torch.Generator) -> AlternatingNet:
        return AlternatingNet(self.n_items_, self.hidden, self.dropout, generator)

    def phases(self, module: AlternatingNet) -> list[Phase]:
        def copy_encoder(module, state):
            module.frozen_encoder.load_state_dict(module.encoder.state_dict())
            module.encoder_copies += 1

        return [Phase("encoder", lambda m: m.encoder.parameters(), passes=self.encoder_passes),
                Phase("decoder", lambda m: m.decoder.parameters(), passes=self.decoder_passes, before=copy_encoder)]

    def batch_loss(self, module: AlternatingNet, batch, state) -> dict:
        logits = module(batch.sparse, state.generator, dropout=state.phase == "encoder")
        nll = multinomial_nll(logits, batch.sparse).mean()
        return {"loss": nll, "nll": nll.detach()}
