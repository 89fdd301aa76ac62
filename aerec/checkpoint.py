"""Training checkpoints: the whole state of :func:`aerec.training.train`, committed atomically.

A checkpoint directory holds ``checkpoint.json`` and its tensor file (the
format and atomic commit of :mod:`aerec.state`):

- the module's weights and the optimizer's state;
- torch's RNG state (CPU, and every CUDA device's when CUDA is in use) and the
  numpy generator that orders the batches;
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

import numpy as np
import torch

from aerec import __version__
from aerec.state import ModuleWeights, StateFileError, read_state, write_state

KIND = "checkpoint"
FORMAT, FORMAT_VERSION = "aerec-checkpoint", 1


class CheckpointMismatchError(ValueError):
    """A checkpoint from a run with other settings, data or model than the one asked to resume it."""


def save_checkpoint(path: str | os.PathLike, fingerprint: dict, module, optimizer, rng: np.random.Generator,
                    state, history, best_weights, since_best: int) -> None:
    """Commit the training state to ``path`` (the previous checkpoint there stays valid until the commit)."""
    snapshot = {
        "module": module, "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy_rng": rng.bit_generator.state, "state": state, "history": history,
        "best_weights": best_weights, "since_best": since_best,
    }
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "aerec_version": __version__,
              "epochs_done": len(history.epochs), "updates": state.update, "fingerprint": fingerprint}
    write_state(path, KIND, header, snapshot)


def load_checkpoint(path: str | os.PathLike, fingerprint: dict, module, optimizer, rng: np.random.Generator):
    """Restore module, optimizer and RNGs from ``path``; return ``(state, history, best_weights, since_best)``.

    None when ``path`` holds no checkpoint yet (a first run with ``resume`` simply starts).
    """
    from aerec.training import History, TrainingState

    if not (Path(path) / f"{KIND}.json").is_file():
        return None
    document, snapshot = read_state(path, KIND, {"format": FORMAT, "format_version": FORMAT_VERSION},
                                    {"History": History, "TrainingState": TrainingState})
    check_fingerprint(path, normalised(document.get("fingerprint")), normalised(fingerprint))
    try:
        if not isinstance(snapshot["module"], ModuleWeights):
            raise TypeError("no module weights")
        module.load_state_dict(snapshot["module"].state_dict)
        optimizer.load_state_dict(snapshot["optimizer"])
        match_parameter_layout(optimizer)
        torch.set_rng_state(snapshot["torch_rng"])
        if snapshot["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(snapshot["cuda_rng"])
        rng.bit_generator.state = snapshot["numpy_rng"]
        best = snapshot["best_weights"]
        state, history = snapshot["state"], snapshot["history"]
        if not isinstance(state, TrainingState) or not isinstance(history, History):
            raise TypeError("state and history of the wrong kind")
        return state, history, best, int(snapshot["since_best"])
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
