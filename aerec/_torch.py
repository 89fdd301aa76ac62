"""Small torch helpers shared across aerec: device choice and CSR -> tensor."""

from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp
import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return the torch device for ``device``; ``"auto"`` is CUDA when present, else CPU."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a string or torch.device, got {type(device).__name__}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device={device!r} is not a torch device; expected 'auto', 'cpu' or 'cuda[:N]'") from exc
    check_device_available(resolved, "device")
    return resolved


def check_device_available(device: torch.device, what: str) -> None:
    """Refuse a device this machine cannot use (CUDA without a GPU, a GPU index past the last) by name."""
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cpu" or (device.type == "cuda" and (device.index or 0) < n_gpus):
        return
    if device.type == "mps" and torch.backends.mps.is_available():
        return
    raise ValueError(f"{what}={str(device)!r} is not available on this machine ({n_gpus} CUDA device(s)); "
                     "expected 'auto', 'cpu' or an available 'cuda[:N]'")


def csr_to_dense_tensor(rows: sp.csr_matrix, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    """Densify one CSR batch straight into a tensor on ``device`` (one batch, never the whole matrix)."""
    rows = sp.csr_matrix(rows)
    out = torch.zeros(rows.shape, dtype=dtype, device=device)
    if rows.nnz:
        row_index = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
        r = torch.from_numpy(row_index).to(device)
        c = torch.from_numpy(rows.indices.astype(np.int64)).to(device)
        v = torch.from_numpy(np.asarray(rows.data, dtype=np.float32)).to(device=device, dtype=dtype)
        out[r, c] = v
    return out


def csr_to_sparse_tensor(rows: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    """One CSR batch as a coalesced torch sparse COO tensor (float32) on ``device``, for sparse x dense products."""
    rows = sp.csr_matrix(rows)
    rows.sum_duplicates()
    row_index = np.repeat(np.arange(rows.shape[0], dtype=np.int64), np.diff(rows.indptr))
    indices = torch.from_numpy(np.vstack([row_index, rows.indices.astype(np.int64)]))
    values = torch.from_numpy(np.asarray(rows.data, dtype=np.float32))
    return torch.sparse_coo_tensor(indices, values, size=rows.shape, is_coalesced=True, check_invariants=False).to(device)


def available_memory_bytes() -> int | None:
    """Memory this process may still allocate, or None where unknown: the least of Linux's ``MemAvailable``, the
    room under each cgroup v2 ``memory.max`` from this process's group up to the root (limit less
    ``memory.current``), and the room under ``RLIMIT_AS`` (limit less the process's virtual size). A container or
    ``ulimit -v`` smaller than the host is what an allocation runs into."""
    candidates = [meminfo_available(), cgroup_room(), address_space_room()]
    known = [value for value in candidates if value is not None]
    return min(known) if known else None


def device_room_bytes(device: torch.device) -> int | None:
    """Memory still free on ``device``: :func:`available_memory_bytes` on the CPU, the CUDA driver's free bytes on a
    GPU, None where unknown."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    return available_memory_bytes() if device.type == "cpu" else None


def meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cgroup_room(root: str = "/sys/fs/cgroup", membership: str = "/proc/self/cgroup") -> int | None:
    """The least ``memory.max - memory.current`` from this process's cgroup (v2) up to ``root``; None if unlimited."""
    try:
        with open(membership) as handle:
            relative = next((line.strip()[3:] for line in handle if line.startswith("0::")), None)
    except OSError:
        return None
    if relative is None:
        return None
    rooms = []
    folder = os.path.normpath(os.path.join(root, relative.lstrip("/")))
    while True:
        try:
            with open(os.path.join(folder, "memory.max")) as handle:
                limit = handle.read().strip()
            with open(os.path.join(folder, "memory.current")) as handle:
                current = int(handle.read().strip())
            if limit != "max":
                rooms.append(max(0, int(limit) - current))
        except (OSError, ValueError):
            pass
        if os.path.normpath(folder) == os.path.normpath(root) or len(folder) <= len(root):
            break
        folder = os.path.dirname(folder)
    return min(rooms) if rooms else None


def address_space_room() -> int | None:
    """``RLIMIT_AS`` less the process's virtual size (``ulimit -v``); None if unlimited or unknown."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/status") as handle:
            size = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmSize:"))
        return max(0, limit - size)
    except (ImportError, OSError, ValueError, StopIteration):
        return None


def flat_in_memory_order(tensor: torch.Tensor) -> torch.Tensor:
    """A 1-D view of ``tensor``'s elements in memory order (a copy only if its memory is not one dense block).

    A row-major or column-major matrix (as :class:`aerec.core.layers.SparseInputLinear` keeps its
    weight) is viewed without copying, unlike ``reshape(-1)``, which copies the column-major one.
    """
    if tensor.is_contiguous():
        return tensor.view(-1)
    order = sorted(range(tensor.dim()), key=lambda d: tensor.stride(d), reverse=True)
    permuted = tensor.permute(order)
    return permuted.view(-1) if permuted.is_contiguous() else permuted.reshape(-1)
