"""aerec: autoencoder recommenders with faithful offline evaluation."""

from aerec._version import __version__

__all__ = ["__version__", "load", "save"]


def load(path, device=None):
    """Rebuild a model saved by :func:`save` (see :mod:`aerec.model_files`)."""
    from aerec.model_files import load as load_model

    return load_model(path, device=device)


def save(model, path, metadata=None):
    """Write a fitted model to the directory ``path`` (see :mod:`aerec.model_files`)."""
    from aerec.model_files import save as save_model

    return save_model(model, path, metadata=metadata)
