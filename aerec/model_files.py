"""Model files: a fitted model as a directory that :func:`load` rebuilds without the training script.

The directory holds

- ``config.json``: the format and its version, the aerec version that wrote it,
  the model's registry name and class, its hyper-parameters, the training
  summary (epochs, best epoch, validation metric), the item id map, any
  ``metadata`` the caller adds (the CLI records the dataset, protocol and
  seed), the shape of every tensor, and the checksum of
- ``tensors-<sha256>.safetensors``: the weights and other arrays. safetensors
  holds raw tensor bytes and cannot run code when read; aerec never unpickles
  a model file.

Saving is atomic (see :mod:`aerec.state`): a save killed half way leaves the
previous model in the directory loadable. A save holds the directory's write
lock (``.aerec.lock``, an advisory ``flock``): a second writer fails at once,
naming the holder; a load during a save reads the old model or the new one. Loading refuses, with a
:class:`~aerec.state.StateFileError` naming the problem:

- a directory from another format version;
- missing or damaged files;
- tensors whose shapes do not match the model;
- weights of another dtype than the model saves (``fitted_dtypes``, float32
  otherwise), or with values that are not finite (never cast or trusted);
- a state that loads but cannot score a (blank) user;
- a tensor file that is a pickle or a ``torch.save`` archive (refused before it is parsed).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from aerec._torch import check_device_available, resolve_device
from aerec._version import __version__
from aerec.core.variational import ConstantBeta, LinearAnneal
from aerec.state import ModuleWeights, StateFileError, TensorRef, block_is_finite, close_tensor_files, fill_module, \
    read_state, write_state
from aerec.training_state import History, check_history

KIND = "config"
FORMAT, FORMAT_VERSION = "aerec-model", 1
SAVED_CLASSES = {"History": History, "ConstantBeta": ConstantBeta, "LinearAnneal": LinearAnneal}
#: Fitted attributes renamed since a model file was written: read under their new names.
RENAMED = {"net_": "module_"}
AEREC_ENTRIES = (f"{KIND}.json", "checkpoint")  # besides tensor files: what a model directory may already hold


def save(model, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write the fitted ``model`` to the directory ``path`` (created if needed) and return the path.

    ``metadata`` is any JSON-like dict kept in ``config.json`` under ``"metadata"``.
    A directory holding something other than an aerec model is refused rather than mixed into.
    """
    from aerec.models import MODELS

    name = registry_name(type(model), MODELS)
    model.check_fitted()
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file; expected a directory for the model (or a path that does not exist yet)")
    foreign = [entry.name for entry in path.iterdir() if entry.name not in AEREC_ENTRIES and not entry.name.startswith(
        (".", "tensors-"))] if path.is_dir() else []
    if foreign:
        raise ValueError(f"{path} holds files that are not an aerec model ({', '.join(sorted(foreign)[:3])}); "
                         "refusing to write a model into it")
    history = getattr(model, "history_", None)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "aerec_version": __version__, "model": name,
              "class": type(model).__name__, "n_items": int(model.n_items_),
              "training": training_summary(history), "metadata": metadata or {}}
    state = {"params": model.get_params(), "fitted": model.fitted_state()}
    write_state(path, KIND, header, state)
    return path


def load(path: str | os.PathLike, device: str | None = None):
    """Rebuild the model saved in directory ``path``; ``device`` ("cpu", "cuda", "auto") overrides the saved one."""
    if device is not None:
        check_device_available(resolve_device(device), "device")
    # the networks' weights are read when each network is filled (restore), straight into it
    document, state = read_state(path, KIND, {"format": FORMAT, "format_version": FORMAT_VERSION}, SAVED_CLASSES,
                                 lazy_modules=True)
    try:
        return _load(path, device, document, state)
    finally:
        close_tensor_files(state)


def _load(path, device, document: dict, state):
    from aerec.models import MODELS, make_model

    name = document.get("model")
    if not isinstance(name, str) or name not in MODELS or document.get("class") != MODELS[name].__name__:
        raise StateFileError(f"{path} holds model {name!r} (class {document.get('class')!r}); this aerec knows "
                             f"{sorted(MODELS)}")
    if not isinstance(state, dict) or not isinstance(state.get("params"), dict) or not isinstance(state.get("fitted"), dict):
        raise StateFileError(f"{path}/{KIND}.json is damaged: expected 'params' and 'fitted' in its state")
    params = dict(state["params"])
    if device is not None and "device" in params:
        params["device"] = device
    try:
        model = make_model(name, **params)
    except (ValueError, TypeError) as exc:
        raise StateFileError(f"{path} holds hyper-parameters this aerec refuses: {exc}") from exc
    restore(model, state["fitted"], device, where=str(path))
    check_scores_a_user(model, where=str(path))
    return model


def check_scores_a_user(model, where: str) -> None:
    """Ask the loaded model for a blank user's top item: a saved state that cannot answer is refused here."""
    blank = sp.csr_matrix((1, model.n_items_), dtype=np.float32)
    try:
        scores = model.score(blank)
        if scores.shape != (1, model.n_items_):
            raise ValueError(f"scores of shape {scores.shape} for one user of {model.n_items_} items")
        model.recommend(blank, n=1)
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, RuntimeError) as exc:
        raise StateFileError(f"{where} loads but its saved state cannot score a user: "
                             f"{' '.join(str(exc).split())[:300]}") from exc


def restore(model, fitted: dict, device: str | None, where: str) -> None:
    """Set the fitted attributes on ``model``: plain values first, then each module rebuilt and loaded."""
    fitted = {RENAMED.get(name, name): value for name, value in fitted.items()}
    modules = {name: value for name, value in fitted.items() if isinstance(value, ModuleWeights)}
    plain = {name: value for name, value in fitted.items() if name not in modules}
    bad = [name for name in fitted if not (isinstance(name, str) and name.endswith("_") and not name.startswith("_"))]
    if bad:
        raise StateFileError(f"{where} holds fitted attribute {bad[0]!r}; expected names ending in '_'")
    check_catalogue(plain, where)
    check_numbers(model, plain, modules, where)
    if plain.get("history_") is not None:
        try:
            if not isinstance(plain["history_"], History):
                raise ValueError(f"a history of type {type(plain['history_']).__name__}")
            check_history(plain["history_"])
        except ValueError as exc:
            raise StateFileError(f"{where} holds {exc}") from exc
    if "device_" in plain:
        plain["device_"] = resolve_device(device or getattr(model, "device", "auto"))
        check_device_available(plain["device_"], "device")
    try:
        model.restore_fitted_state(plain)
        for name, weights in modules.items():
            check_module_shapes(model, name, weights, where)
            with torch.device("meta"):  # nothing allocated nor drawn: every weight comes from the file
                module = model.new_module()
            fill_module(module, weights.state_dict)
            setattr(model, name, module.to(getattr(model, "device_", "cpu")).eval())
    except (RuntimeError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise StateFileError(f"{where} does not match a {type(model).__name__} with its saved hyper-parameters: "
                             f"{' '.join(str(exc).split())[:500]}") from exc
    for name, value in plain.items():
        if isinstance(value, torch.Tensor) and hasattr(model, "device_"):
            setattr(model, name, value.to(model.device_))


def check_catalogue(plain: dict, where: str) -> None:
    """Every fitted model has ``n_items_`` (a positive integer) and one id per item in ``item_ids_``."""
    n_items = plain.get("n_items_")
    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 1:
        raise StateFileError(f"{where} holds n_items_={n_items!r}; expected a fitted model's positive number of items")
    item_ids = plain.get("item_ids_")
    if not isinstance(item_ids, np.ndarray) or item_ids.shape != (n_items,):
        found = f"shape {item_ids.shape}" if isinstance(item_ids, np.ndarray) else type(item_ids).__name__
        raise StateFileError(f"{where} holds item_ids_ of {found}; expected an array of {n_items} ids, one per item")


def check_numbers(model, plain: dict, modules: dict, where: str) -> None:
    """Refuse weights that are not the numbers the model saves: a numeric fitted array (or a sparse matrix's values)
    of another dtype than the model's (``fitted_dtypes``, float32 otherwise), a network tensor that is not float32,
    and values that are not finite. bool weights scored every item 601 and an infinite decoder bias wrote no
    recommendation; a cast would hide both."""
    arrays = {}
    entries = [(f"{name}[{i}]", item) if isinstance(value, (tuple, list)) else (name, value)
               for name, value in plain.items() if not name.endswith("ids_")  # raw ids: any values
               for i, item in (enumerate(value) if isinstance(value, (tuple, list)) else [(None, value)])]
    for name, value in entries:
        if sp.issparse(value):
            value = value.data
        if isinstance(value, torch.Tensor):
            arrays[name] = (str(value.dtype).removeprefix("torch."), value)
        elif isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
            arrays[name] = (value.dtype.name, value)
        elif isinstance(value, float) and not np.isfinite(value):
            raise StateFileError(f"{where} holds {name}={value!r}; expected a finite number")
    for name, weights in modules.items():
        if isinstance(weights.state_dict, dict):
            arrays.update({f"{name} weight {key!r}": (str(value.dtype).removeprefix("torch."), value)
                           for key, value in weights.state_dict.items()
                           if isinstance(value, (torch.Tensor, TensorRef))})
    for name, (dtype, value) in arrays.items():
        expected = "float32" if " weight " in name else type(model).fitted_dtypes.get(name.split("[")[0], "float32")
        if dtype != expected:
            raise StateFileError(f"{where} holds {name} as {dtype}; a {type(model).__name__} saves {expected} "
                                 "(refused rather than cast)")
        if dtype.startswith("float") and not (value.all_finite() if isinstance(value, TensorRef) else all_finite(value)):
            raise StateFileError(f"{where} holds {name} with values that are not finite (NaN or infinity)")


#: Values checked at a time by :func:`all_finite` (torch's ``isfinite`` of a whole 1.6 GB EASE matrix made a
#: float copy and two masks: a 4.5 GB peak to load a 1.5 GiB model).
FINITE_CHECK_BLOCK = 1 << 22


def all_finite(value) -> bool:
    """Whether every value of a tensor or array is finite, checked block by block (bounded extra memory)."""
    flat = value.reshape(-1) if isinstance(value, torch.Tensor) else np.asarray(value).reshape(-1)
    return all(block_is_finite(flat[start:start + FINITE_CHECK_BLOCK])
               for start in range(0, flat.shape[0], FINITE_CHECK_BLOCK))


def check_module_shapes(model, name: str, weights: ModuleWeights, where: str) -> None:
    """Refuse weights that do not fit the network the saved hyper-parameters describe, before building it.

    The network is built on the "meta" device, which allocates nothing: a small config.json naming a huge
    network (hidden=10**9) is refused instead of allocating gigabytes first.
    """
    if not isinstance(weights.state_dict, dict):
        raise StateFileError(f"{where} holds {name} weights of type {type(weights.state_dict).__name__}; "
                             "expected a dict of tensors")
    with torch.device("meta"):
        expected = {key: tuple(value.shape) for key, value in model.new_module().state_dict().items()}
    saved = {key: tuple(getattr(value, "shape", ())) for key, value in weights.state_dict.items()}
    if saved != expected:
        wrong = sorted(key for key in set(saved) | set(expected) if saved.get(key) != expected.get(key))[0]
        raise StateFileError(f"{where} does not match a {type(model).__name__} with its saved hyper-parameters: "
                             f"{name} weight {wrong!r} has shape {saved.get(wrong)}, the network {expected.get(wrong)}")


def registry_name(cls: type, models: dict) -> str:
    for name, registered in models.items():
        if registered is cls:
            return name
    raise ValueError(f"{cls.__name__} is not a registered aerec model; expected one of {sorted(models)}")


def training_summary(history: History | None) -> dict:
    """What ``config.json`` says about training at a glance (the full history is in its state)."""
    if history is None:
        return {}
    losses = history.column("loss")
    return {"epochs_run": len(history.epochs), "best_epoch": history.best_epoch,
            "best_validation": history.best_validation, "stopped_early": history.stopped_early,
            "final_loss": losses[-1] if losses else None,
            "seconds": sum(record.get("seconds", 0.0) for record in history.epochs)}
