"""Recommenders sharing one contract (see :mod:`aerec.models.base`), and the registry of their names.

The registry is a plain dict from the name the CLI uses to the class; adding a
model means adding a line here.
"""

from aerec.models.als import ALS
from aerec.models.autoencoder import Autoencoder
from aerec.models.autorec import AutoRec
from aerec.models.base import NotFittedError, Recommender
from aerec.models.bias import BiasBaseline
from aerec.models.bpr import BPR
from aerec.models.cdae import CDAE
from aerec.models.cfn import CFN
from aerec.models.ease import EASE
from aerec.models.edlae import DLAE, EDLAE
from aerec.models.mult_vae import MultDAE, MultVAE
from aerec.models.popularity import Popularity
from aerec.models.recvae import RecVAE
from aerec.models.torch_base import TorchRecommender

MODELS: dict[str, type[Recommender]] = {
    "popularity": Popularity,
    "ease": EASE,
    "dlae": DLAE,
    "edlae": EDLAE,
    "als": ALS,
    "bpr": BPR,
    "bias": BiasBaseline,
    "mult_vae": MultVAE,
    "mult_dae": MultDAE,
    "recvae": RecVAE,
    "cdae": CDAE,
    "autorec": AutoRec,
    "cfn": CFN,
    "autoencoder": Autoencoder,
}


def make_model(name: str, **params) -> Recommender:
    """Build a registered model by name; unknown names and parameters are a ValueError naming them."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    cls = MODELS[name]
    unknown = sorted(set(params) - set(cls.param_names()))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for model {name!r}; it takes {cls.param_names()}")
    model = cls(**params)
    model.check_params()
    return model


#: The keyword arguments of ``fit`` that carry side features, and what each describes.
SIDE_FEATURE_ARGUMENTS = {"item_features": "item", "user_features": "user"}


def side_feature_arguments(model, strict: bool = True, **features) -> dict:
    """``features`` (``item_features=``, ``user_features=``; None entries dropped) as ``model.fit`` takes them; a
    ValueError naming the model when it takes one of those given not (``strict=False``: left out, as a benchmark
    whose data set carries features does for its models without side information)."""
    import inspect

    given = {name: value for name, value in features.items() if value is not None}
    if not given:
        return {}
    accepted = set(inspect.signature(model.fit).parameters)
    refused = sorted(name for name in given if name not in accepted)
    if refused and not strict:
        return {name: value for name, value in given.items() if name in accepted}
    if refused:
        takers = sorted(name for name, cls in MODELS.items()
                        if set(refused) & set(inspect.signature(cls.fit).parameters))
        raise ValueError(f"{type(model).__name__} takes no {' or '.join(SIDE_FEATURE_ARGUMENTS[n] for n in refused)} "
                         f"side features; the models that do: {', '.join(takers)}")
    return given


__all__ = ["ALS", "AutoRec", "Autoencoder", "BPR", "BiasBaseline", "CDAE", "CFN", "DLAE", "EASE", "EDLAE", "MODELS", "MultDAE", "MultVAE", "NotFittedError", "Popularity", "RecVAE", "Recommender", "TorchRecommender", "make_model", "side_feature_arguments"]
