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
import os
from pathlib import Path

import torch

from aerec._version import __version__
from aerec.state import ModuleWeights, StateFileError, read_state, write_state
from aerec.training_state import History, LoopState

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
        if not isinstance(snapshot["module"], ModuleWeights):
            raise TypeError("no module weights")
        if not isinstance(snapshot["history"], History):
            raise TypeError("a history of the wrong kind")
        if len(snapshot["optimizers"]) != len(loop.optimizers):
            raise ValueError(f"{len(snapshot['optimizers'])} optimizer states for {len(loop.optimizers)} phases")
        module.load_state_dict(snapshot["module"].state_dict)
        for optimizer, saved in zip(loop.optimizers, snapshot["optimizers"]):
            optimizer.load_state_dict(saved)
            match_parameter_layout(optimizer)
        loop.training.generator.set_state(snapshot["generator"])
        loop.rng.bit_generator.state = snapshot["numpy_rng"]
        counters = snapshot["counters"]
        loop.training.epoch, loop.training.update = int(counters["epoch"]), int(counters["update"])
        loop.history, loop.best_weights = snapshot["history"], snapshot["best_weights"]
        loop.since_best = int(snapshot["since_best"])
        return True
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise StateFileError(f"{path}/{KIND}.json cannot be resumed: {' '.join(str(exc).split())[:500]}") from exc


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
    differences = [f"{key}: checkpoint {saved.get(key)!r}, this run {wanted.get(key)!r}"
                   for key in sorted(set(saved or {}) | set(wanted)) if (saved or {}).get(key) != wanted.get(key)]
    raise CheckpointMismatchError(f"the checkpoint in {path} was written by another run ({'; '.join(differences)[:800]}); "
                                  "resume it with the same settings and data, or start without resume / in another folder")
