"""General autoencoder pieces every aerec model is built from; pieces only, no estimator and no training loop.

- :mod:`aerec.core.layers`: encoder / decoder stacks, tied weights, a sparse-input first layer, row normalisation;
- :mod:`aerec.core.corruption`: Gaussian, masking and salt-and-pepper input noise (training only);
- :mod:`aerec.core.penalties`: L2 weight decay, L1 / KL activity sparsity, the contractive penalty;
- :mod:`aerec.core.variational`: Gaussian latent, reparametrisation, KL, beta schedules, the IWAE bound;
- :mod:`aerec.core.losses`: masked squared error, multinomial, Bernoulli and Gaussian likelihoods.

The general ``Autoencoder`` estimator lives with the other models, :class:`aerec.models.Autoencoder`.
"""

import warnings


def __getattr__(name: str):
    """``aerec.core.Autoencoder``, its former place, still works for one release (with a DeprecationWarning)."""
    if name == "Autoencoder":
        warnings.warn("aerec.core.Autoencoder moved to aerec.models.Autoencoder; the old name goes in the next "
                      "release", DeprecationWarning, stacklevel=2)
        from aerec.models.autoencoder import Autoencoder

        return Autoencoder
    raise AttributeError(f"module 'aerec.core' has no attribute {name!r}")
