"""Training checkpoints: the whole state of :func:`aerec.training.train`, committed atomically.

A checkpoint directory holds ``checkpoint.json`` and its tensor file (the
format and atomic commit of :mod:`aerec.state`):

- the module's weights and every phase's optimizer state;
- the loop's torch generator (corruption, sampling) and the numpy generator
  that orders the batches;
- the epoch and update counters (Mult-VAE's KL anneal reads the update count);
- the history so far, the best weights so far, and the validations since the best;
- the *fingerprint* of the run that wrote it: settings, data shape, parameter
  shapes and the model's tag.

A resume with another fingerprint is refused with the differences named, so a
checkpoint is never continued with other data or settings by mistake.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from aerec._version import __version__
from aerec.state import ModuleWeights, StateFileError, read_state, write_state
from aerec.training_state import History, LoopState, check_history

KIND = "checkpoint"
FORMAT, FORMAT_VERSION = "aerec-checkpoint", 2  # 2: phases (a list of optimizers), the loop's own generator


class CheckpointMismatchError(ValueError):
    """A checkpoint from a run with other settings, data or model than the one asked to resume it."""


def save_checkpoint(path: str | os.PathLike, fingerprint: dict, module, loop: LoopState) -> None:
    """Commit the loop's state to ``path`` (the previous checkpoint there stays valid until the commit)."""
    training, history = loop.training, loop.history
    snapshot = {
        "module": module, "optimizers": [optimizer.state_dict() for optimizer in loop.optimizers],
        "generator": training.generator.get_state(), "numpy_rng": loop.rng.bit_generator.state,
        "counters": {"epoch": training.epoch, "update": training.update}, "history": history,
        "best_weights": loop.best_weights, "since_best": loop.since_best,
    }
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "aerec_version": __version__,
              "epochs_done": len(history.epochs), "updates": training.update, "fingerprint": fingerprint}
    write_state(path, KIND, header, snapshot)


def load_checkpoint(path: str | os.PathLike, fingerprint: dict, module, loop: LoopState) -> bool:
    """Restore the module and fill ``loop`` (its optimizers and generators already built) from ``path``.

    False when ``path`` holds no checkpoint yet (a first run with ``resume`` simply starts).
    """
    if not (Path(path) / f"{KIND}.json").is_file():
        return False
    document, snapshot = read_state(path, KIND, {"format": FORMAT, "format_version": FORMAT_VERSION},
                                    {"History": History})
    check_fingerprint(path, normalised(document.get("fingerprint")), normalised(fingerprint))
    try:
        if not isinstance(snapshot, dict):
            raise TypeError(f"a state of type {type(snapshot).__name__}; expected a dict")
        if not isinstance(snapshot["module"], ModuleWeights):
            raise TypeError("no module weights")
        if not isinstance(snapshot["history"], History):
            raise TypeError("a history of the wrong kind")
        check_history(snapshot["history"])
        counters, since_best = snapshot["counters"], snapshot["since_best"]
        if not isinstance(counters, dict) or not all(
                not isinstance(counters.get(name), bool) and isinstance(counters.get(name), int) and counters[name] >= 0
                for name in ("epoch", "update")) or isinstance(since_best, bool) or not isinstance(since_best, int):
            raise ValueError(f"counters {str(counters)[:80]} and since_best {str(since_best)[:20]}; expected counts")
        if len(snapshot["optimizers"]) != len(loop.optimizers):
            raise ValueError(f"{len(snapshot['optimizers'])} optimizer states for {len(loop.optimizers)} phases")
        check_weights(snapshot["module"].state_dict, module, "weights")
        module.load_state_dict(snapshot["module"].state_dict)
        if snapshot["best_weights"] is not None:
            check_weights(snapshot["best_weights"], module, "best weights")
        for optimizer, saved in zip(loop.optimizers, snapshot["optimizers"]):
            check_optimizer_state(optimizer, saved)
            optimizer.load_state_dict(saved)
            match_parameter_layout(optimizer)
        loop.training.generator.set_state(snapshot["generator"])
        loop.rng.bit_generator.state = snapshot["numpy_rng"]
        counters = snapshot["counters"]
        loop.training.epoch, loop.training.update = int(counters["epoch"]), int(counters["update"])
        loop.history, loop.best_weights = snapshot["history"], snapshot["best_weights"]
        loop.since_best = int(snapshot["since_best"])
        return True
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError, OverflowError) as exc:
        raise StateFileError(f"{path}/{KIND}.json cannot be resumed: {' '.join(str(exc).split())[:500]}") from exc


def check_weights(saved, module, what: str) -> None:
    """Refuse saved weights that are not the module's own tensors (names, shapes, dtypes) or are not finite."""
    if not isinstance(saved, dict):
        raise TypeError(f"{what} of type {type(saved).__name__}; expected a dict of tensors")
    expected = module.state_dict()
    if set(saved) != set(expected):
        odd = sorted(set(saved) ^ set(expected), key=str)[0]
        raise ValueError(f"{what} {'hold' if odd in saved else 'lack'} {odd!r}; expected the module's {len(expected)} "
                         "tensors")
    for name, tensor in saved.items():
        wanted = expected[name]
        if not isinstance(tensor, torch.Tensor) or tensor.shape != wanted.shape or tensor.dtype != wanted.dtype:
            found = (f"shape {list(tensor.shape)}, {tensor.dtype}" if isinstance(tensor, torch.Tensor)
                     else type(tensor).__name__)
            raise ValueError(f"{what} {name!r}: {found}; expected shape {list(wanted.shape)}, {wanted.dtype}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{what} {name!r} hold values that are not finite (NaN or infinity)")


def check_optimizer_state(optimizer, saved) -> None:
    """Refuse a saved optimizer state that does not fit the optimizer's parameters, before torch reads it.

    torch's ``load_state_dict`` checks only the number of parameters per group; a moment of another
    shape (Adam's ``exp_avg`` of shape [1] for a [600, 1000] weight) goes through and the fused step
    then reads and writes outside it (a segmentation fault) or fills the weights with NaN. Each
    per-parameter tensor must have its parameter's shape and dtype and be finite; ``step`` must be
    one finite, non-negative number.
    """
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) or not isinstance(
            saved.get("param_groups"), list) or len(saved["param_groups"]) != len(optimizer.param_groups):
        raise ValueError(f"an optimizer state that is not one with {len(optimizer.param_groups)} parameter group(s)")
    parameters = {}
    for saved_group, group in zip(saved["param_groups"], optimizer.param_groups):
        indices = saved_group.get("params") if isinstance(saved_group, dict) else None
        if not isinstance(indices, list) or len(indices) != len(group["params"]):
            raise ValueError("optimizer parameter groups that do not match the model's parameters")
        check_group_settings(saved_group, group, type(optimizer).__name__)
        parameters.update(zip(indices, group["params"]))
    flat_size = sum(param.numel() for param in parameters.values())  # L-BFGS keeps flat vectors of all of them
    expected_names = optimizer_state_names(optimizer)
    for index, entries in saved["state"].items():
        param = parameters.get(index)
        if param is None or not isinstance(entries, dict):
            raise ValueError(f"optimizer state for parameter {index!r}, which no parameter group holds")
        not_tensors = sorted(str(key) for key, value in entries.items() if not isinstance(value, torch.Tensor))
        if expected_names is not None and (set(entries) != expected_names or not_tensors):
            # a missing one was a KeyError mid-step, a None or a number a TypeError in Adam's step
            raise ValueError(f"optimizer state for parameter {index!r} holds {sorted(map(str, entries))} (not "
                             f"tensors: {not_tensors}); a {type(optimizer).__name__} keeps tensors "
                             f"{sorted(expected_names)}")
        for name, value in entries.items():
            if isinstance(optimizer, torch.optim.LBFGS) and isinstance(value, (list, tuple)):
                for item in value:
                    check_state_value(f"{name} entry", item, param, flat_size)
            else:
                check_state_value(name, value, param, None if not isinstance(optimizer, torch.optim.LBFGS) else flat_size)


def check_group_settings(saved: dict, group: dict, optimizer: str) -> None:
    """A saved parameter group's settings (``lr``, ``betas``, ``eps``, ...) are the live group's names, each of
    its kind: a number (finite) for a number, a pair for a pair, a flag for a flag (``betas=[]`` was a ValueError
    inside Adam's step, ``lr=[]`` a TypeError in the fused kernel)."""
    names = set(saved) - {"params"}
    if names != set(group) - {"params"}:
        raise ValueError(f"a {optimizer} parameter group with settings {sorted(map(str, names))}; expected "
                         f"{sorted(set(group) - {'params'})}")
    for name in names:
        if not same_kind(saved[name], group[name]):
            raise ValueError(f"a {optimizer} parameter group with {name}={str(saved[name])[:80]}; expected a value "
                             f"like {group[name]!r}")


def same_kind(value, like) -> bool:
    if isinstance(like, bool) or like is None or isinstance(like, str):
        return type(value) is type(like)
    if isinstance(like, (int, float)) or (isinstance(like, torch.Tensor) and like.numel() == 1):
        number = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
        return not isinstance(number, bool) and isinstance(number, (int, float)) and math.isfinite(number)
    if isinstance(like, (tuple, list)):
        return (isinstance(value, (tuple, list)) and len(value) == len(like)
                and all(same_kind(item, item_like) for item, item_like in zip(value, like)))
    return type(value) is type(like)


def optimizer_state_names(optimizer) -> set | None:
    """The names of the per-parameter state ``optimizer`` keeps once it has stepped (None: not known here)."""
    from aerec.optim import CliminRprop

    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        amsgrad = any(group.get("amsgrad") for group in optimizer.param_groups)
        return {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if amsgrad else set())
    if isinstance(optimizer, torch.optim.Rprop):
        return {"step", "prev", "step_size"}
    if isinstance(optimizer, CliminRprop):
        return {"step_size", "previous_gradient"}
    return None  # SGD keeps a momentum buffer or nothing; L-BFGS its history


def check_state_value(name: str, value, param: torch.Tensor, flat_size: int | None) -> None:
    """One value of a parameter's optimizer state: a finite number, None (SGD without momentum), a ``step``
    count, or a finite tensor of the parameter's shape and dtype (L-BFGS: one number or a flat vector of
    ``flat_size``)."""
    if value is None:
        return
    if not isinstance(value, torch.Tensor):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"optimizer state {name!r} = {str(value)[:80]!r}; expected a finite number or a tensor")
        return
    if value.layout != torch.strided or value.is_complex():
        raise ValueError(f"optimizer state {name!r} is a {value.layout} {value.dtype} tensor; expected a dense real one")
    if name == "step":
        if value.numel() != 1 or not bool(torch.isfinite(value).all()) or float(value) < 0:
            raise ValueError(f"optimizer state 'step' of shape {list(value.shape)}; expected one finite count >= 0")
        return
    if flat_size is not None:
        fits = value.dim() <= 1 and value.numel() in (1, flat_size) and value.dtype == param.dtype
        expected = f"one number or a vector of {flat_size}, {param.dtype}"
    else:
        fits = value.shape == param.shape and value.dtype == param.dtype
        expected = f"the parameter's shape {list(param.shape)}, {param.dtype}"
    if not fits:
        raise ValueError(f"optimizer state {name!r} of shape {list(value.shape)}, {value.dtype}; expected {expected}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"optimizer state {name!r} holds values that are not finite (NaN or infinity)")


def match_parameter_layout(optimizer) -> None:
    """Give each per-parameter state tensor its parameter's memory layout again.

    A checkpoint stores tensors contiguous; a column-major weight's Adam moments come back
    row-major, and torch's fused Adam pairs parameter and state elements by memory offset,
    so the layouts must agree (or the moments land on the wrong weights).
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                    optimizer.state[param][name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def normalised(value):
    """``value`` as it reads back from JSON (tuples become lists), for comparison."""
    return json.loads(json.dumps(value))


def check_fingerprint(path, saved: dict, wanted: dict) -> None:
    if saved == wanted:
        return
    if not isinstance(saved, dict):
        saved = {"fingerprint": saved}  # not a fingerprint at all: every key differs
    differences = [f"{key}: checkpoint {saved.get(key)!r}, this run {wanted.get(key)!r}"
                   for key in sorted(set(saved or {}) | set(wanted)) if (saved or {}).get(key) != wanted.get(key)]
    raise CheckpointMismatchError(f"the checkpoint in {path} was written by another run ({'; '.join(differences)[:800]}); "
                                  "resume it with the same settings and data, or start without resume / in another folder")
