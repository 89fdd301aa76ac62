"""aerec: autoencoder recommenders with faithful offline evaluation."""

__version__ = "0.1.0"
