"""Data-parallel training across processes with torch's DistributedDataParallel (DDP).

Launch a script that calls :func:`init_from_environment` and then fits a model
with ``torchrun --nproc-per-node 4 script.py`` (or over several nodes with
torchrun's rendezvous options), and :func:`aerec.training.train` notices the
initialised process group: every process (rank) keeps a copy of the
model, the loop draws the same global batch order on every rank (same seed), and
each rank encodes only its own share of each global batch (rows ``r, r + world,
r + 2 world, ...`` of it). DDP averages the gradients across ranks during the
backward pass; each rank's loss is first scaled so that the average equals the
gradient of the whole global batch, as one process would compute it:

- a loss that is a mean over its rows (``loss_reduction="mean"``, Mult-VAE, Mult-DAE,
  CDAE, the core autoencoders) is scaled by ``world * rows_of_rank / rows_of_batch``;
- a loss that is a sum over its rows (``"sum"``, AutoRec) is scaled by ``world``.

So with deterministic losses (no dropout or sampling) the weights after each
update equal single-process training up to float rounding; with random
corruption the random draws differ (each rank draws for its own rows). The
loss terms logged in ``History`` are the rank's own.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["LOSS_REDUCTIONS", "init_from_environment", "is_distributed", "rank_and_world", "rank_share"]

LOSS_REDUCTIONS = ("mean", "sum")


def is_distributed() -> bool:
    """Whether a torch.distributed process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside distributed training."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def init_from_environment(device: str = "auto") -> bool:
    """Initialise the process group from torchrun's environment (``WORLD_SIZE`` > 1); return whether it did.

    The backend is NCCL on CUDA, gloo on CPU; on CUDA each process takes the GPU
    ``LOCAL_RANK``. Outside torchrun (no ``WORLD_SIZE``, or 1) nothing happens.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or is_distributed():
        return False
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    die_with_parent()
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=collective_timeout())
    return True


#: Seconds a collective (a gradient all-reduce, a barrier) waits for the other ranks before this rank fails with an
#: error: a rank that stops (SIGSTOP, a hung device) ends the job within it instead of leaving the others waiting
#: forever (torch's gloo default is 30 minutes). ``AEREC_COLLECTIVE_TIMEOUT`` sets it, in seconds.
DEFAULT_COLLECTIVE_TIMEOUT = 600.0


def collective_timeout():
    """The process group's timeout: ``$AEREC_COLLECTIVE_TIMEOUT`` seconds, else :data:`DEFAULT_COLLECTIVE_TIMEOUT`."""
    import datetime
    import math

    text = os.environ.get("AEREC_COLLECTIVE_TIMEOUT")
    try:
        seconds = DEFAULT_COLLECTIVE_TIMEOUT if text is None else float(text)
    except ValueError:
        seconds = float("nan")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"AEREC_COLLECTIVE_TIMEOUT={text!r}; expected a positive number of seconds")
    return datetime.timedelta(seconds=seconds)


def die_with_parent(parent: int | None = None) -> None:
    """Ask Linux to end this process (SIGTERM) when its parent dies (``prctl(PR_SET_PDEATHSIG)``), so a killed
    torchrun leaves no orphaned rank training on and writing a model, nor a killed ``aerec benchmark run --jobs N``
    a worker writing its store; a parent already gone ends it now. ``parent``: the parent's process id when the
    caller knows it (a parent that died before this call is seen by it); else the parent at the call.
    Elsewhere (no prctl) nothing changes."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid() if parent is None else parent
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def rank_share(batch_rows: np.ndarray, rank: int, world: int) -> tuple[np.ndarray, float]:
    """The rows of a global batch this rank encodes, and the weight of its loss for a mean-type loss.

    Rows ``rank, rank + world, ...``. A rank left without rows (a global batch smaller than
    the world) takes the batch's first row with weight 0: it must still join the gradient
    all-reduce, and adds nothing to it.
    """
    share = batch_rows[rank::world]
    if len(share) == 0:
        return batch_rows[:1], 0.0
    return share, world * len(share) / len(batch_rows)


class BatchLossModule(nn.Module):
    """Wraps a model and its ``batch_loss`` so that DDP sees one forward pass per step."""

    def __init__(self, module: nn.Module, batch_loss):
        super().__init__()
        self.module = module
        self.batch_loss = batch_loss

    def forward(self, batch, state, weight: float):
        terms = dict(self.batch_loss(self.module, batch, state))
        terms["loss"] = terms["loss"] * weight
        return terms


def data_parallel_batch_loss(module: nn.Module, batch_loss, device: torch.device):
    """``batch_loss`` routed through a DistributedDataParallel wrapper of ``module``.

    The returned function takes ``(module, batch, state, weight)``; ``weight`` scales the
    rank's loss (see the module docstring).
    """
    wrapper = DistributedDataParallel(BatchLossModule(module, batch_loss),
                                      device_ids=[device.index] if device.type == "cuda" else None)

    def distributed_batch_loss(_module, batch, state, weight: float = 1.0):
        return wrapper(batch, state, weight)

    return distributed_batch_loss
