"""General autoencoder pieces every aerec model is built from, and a generic Autoencoder estimator.

- :mod:`aerec.core.layers`: encoder / decoder stacks, tied weights, a sparse-input first layer;
- :mod:`aerec.core.corruption`: Gaussian, masking and salt-and-pepper input noise (training only);
- :mod:`aerec.core.penalties`: L2 weight decay, L1 / KL activity sparsity, the contractive penalty;
- :mod:`aerec.core.variational`: Gaussian latent, reparametrisation, KL, beta schedules, the IWAE bound;
- :mod:`aerec.core.losses`: masked squared error, multinomial, Bernoulli and Gaussian likelihoods;
- :class:`Autoencoder`: fit / embed / reconstruct / denoise / anomaly_score / sample.
"""

from aerec.core.autoencoder import Autoencoder

__all__ = ["Autoencoder"]
