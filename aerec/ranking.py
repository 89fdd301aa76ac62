"""Top-N ranking of a batch of score rows, with the user's own items excluded.

Every model's ``recommend`` and the evaluator go through :func:`top_n`, so
exclusion and tie handling are the same everywhere: the items a user was given
(training or fold-in rows) are set to ``-inf`` and :func:`select_top_n` picks the
top ``n`` of the rest, on whatever device the scores live (``torch.topk``, or on
the CPU a group-maxima selection that is exact and about twice as fast).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["CPU_MEMORY_BUDGET", "DEFAULT_MEMORY_BUDGET", "default_memory_budget", "batch_rows_for_budget", "mark_unavailable", "select_top_n", "stream_top_n", "top_n"]

#: Bytes of scores one batch of :func:`stream_top_n` holds by default on a GPU (large batches keep it busy) ...
DEFAULT_MEMORY_BUDGET = 256 * 2**20
#: ... and on the CPU, where a batch that stays in cache makes scoring plus selection 1.3-1.5x faster
#: than 256 MiB batches (``evaluation/topn_vs_implicit.py``).
CPU_MEMORY_BUDGET = 8 * 2**20


def default_memory_budget(device: torch.device | str) -> int:
    """Bytes of scores per batch when the caller gives none: :data:`CPU_MEMORY_BUDGET` on the CPU, else the GPU's."""
    return CPU_MEMORY_BUDGET if torch.device(device).type == "cpu" else DEFAULT_MEMORY_BUDGET


def top_n(scores: torch.Tensor, exclude: sp.csr_matrix | None, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the ``n`` best items per row, best first, skipping excluded items.

    Parameters
    ----------
    scores : torch.Tensor
        Dense floating-point scores of shape ``(batch, n_items)`` on any device.
        **Modified in place**: excluded entries are overwritten with ``-inf``.
        Pass a clone if the caller still needs the raw scores.
    exclude : scipy.sparse.csr_matrix or None
        Items to exclude, with the same shape as ``scores``. Every *stored*
        entry is excluded whatever its value, explicit zeros included, so a
        rating of 0 that the user gave still counts as seen. ``None`` excludes
        nothing.
    n : int
        How many items to return per row, ``1 <= n <= n_items``.

    Returns
    -------
    ids : torch.Tensor
        ``(batch, n)`` int64 item indices, best first, on the scores' device.
    top_scores : torch.Tensor
        ``(batch, n)`` scores of those items.

    Raises
    ------
    TypeError
        If ``scores`` is not a floating-point tensor or ``exclude`` is not sparse.
    ValueError
        If ``scores`` is not 2-D or holds NaN at an item not excluded, ``n`` is out of range, or
        ``exclude`` has another shape.

    Notes
    -----
    A row with fewer than ``n`` allowed items gets ``-inf`` scores in its last
    positions; the ids there are arbitrary excluded items. Callers that hand
    recommendations to a user replace them with ``-1`` via
    :func:`mark_unavailable`.
    """
    _check_scores(scores)
    _check_int_in_range("n", n, 1, scores.shape[1])
    if exclude is not None:
        rows, cols = _stored_coordinates(exclude, tuple(scores.shape))
        scores[torch.from_numpy(rows).to(scores.device), torch.from_numpy(cols).to(scores.device)] = -torch.inf
    top_scores, ids = select_top_n(scores, int(n))
    # topk ranks NaN above every number, so a NaN among a row's allowed items is in its top n: checking the
    # (batch, n) result finds it without a pass over the whole batch (NaN at excluded items is overwritten)
    if bool(torch.isnan(top_scores).any()):
        bad_rows = int(torch.isnan(top_scores).any(dim=1).sum())
        raise ValueError(f"scores contain NaN in {bad_rows} row(s); expected real numbers or -inf")
    return ids, top_scores


def select_top_n(scores: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(scores, n, dim=1)`` (values, indices; sorted), by group maxima on the CPU for wide rows.

    ``torch.topk`` on the CPU costs about as much per row as the scoring itself. For rows
    much wider than ``n`` this selects in three cheap passes instead:

    1. the maximum of every group of ``size`` items (strided: item ``i`` is in group ``i mod n_groups``);
    2. the ``n`` groups with the largest maxima, and ``t``, the smallest of those maxima;
    3. among the items of those groups (and the few items past the last whole group),
       the ones scoring at least ``t``, of which the top ``n`` are taken.

    That is exact: an item outside the chosen groups scores at most its group's
    maximum, which is at most ``t``, and the ``n`` chosen maxima are ``n`` items
    scoring at least ``t`` already, so such an item is never needed (at a tie it is
    one of several equally good answers). The candidates of step 3 are usually a
    little over ``n`` per row. Rows holding NaN, narrow rows and other devices
    (where ``torch.topk`` is fast) take ``torch.topk`` itself.
    """
    rows, width = scores.shape
    size = group_size(width, n)
    if size is None or scores.device.type != "cpu" or rows == 0:
        return torch.topk(scores, n, dim=1, largest=True, sorted=True)
    n_groups = width // size
    # group g holds the items g, g + n_groups, g + 2 n_groups, ...: its maximum is an element-wise maximum of
    # ``size`` contiguous slices, which vectorizes (8x faster than reducing runs of ``size`` neighbours)
    grouped = scores[:, :n_groups * size].unflatten(1, (size, n_groups))
    group_max = grouped.amax(dim=1)
    tail = scores[:, n_groups * size:]
    if bool(torch.isnan(group_max).any()) or bool(torch.isnan(tail).any()):
        return torch.topk(scores, n, dim=1, largest=True, sorted=True)  # NaN ranks first there, and is reported
    best_max, groups = torch.topk(group_max, n, dim=1, sorted=False)
    threshold = best_max.amin(dim=1, keepdim=True)
    # candidate k * n + j is item groups[:, j] + k * n_groups; the tail's items follow
    candidates = grouped.gather(2, groups.unsqueeze(1).expand(rows, size, n)).flatten(1)
    if tail.shape[1]:
        candidates = torch.cat([candidates, tail], dim=1)
    values, position = _top_n_at_least(candidates, threshold, n)
    in_group = position < size * n
    group_item = groups.gather(1, (position % n).masked_fill_(~in_group, 0)) + (position // n) * n_groups
    return values, torch.where(in_group, group_item, position - size * n + n_groups * size)


def _top_n_at_least(candidates: torch.Tensor, threshold: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``n`` of each row's candidates scoring at least its threshold (at least ``n`` of them do).

    Returns their values and positions among the row's candidates, best first.
    """
    rows = candidates.shape[0]
    keep = candidates >= threshold
    row_of, position = keep.nonzero(as_tuple=True)
    counts = keep.sum(dim=1)
    slot = torch.arange(len(row_of)) - (torch.cumsum(counts, 0) - counts)[row_of]
    packed = torch.full((rows, int(counts.max())), -torch.inf, dtype=candidates.dtype)
    packed[row_of, slot] = candidates[row_of, position]
    packed_position = torch.zeros(packed.shape, dtype=torch.long)
    packed_position[row_of, slot] = position
    values, order = torch.topk(packed, n, dim=1, largest=True, sorted=True)
    return values, packed_position.gather(1, order)


def group_size(width: int, n: int) -> int | None:
    """Items per group for :func:`select_top_n`: about ``width / 8n``, a power of two in [8, 64]; None: plain topk.

    Rows narrower than ``4 n`` groups take ``torch.topk`` (the candidates would not be few).
    """
    size = int(min(64, max(8, 2 ** round(np.log2(max(width / (8 * n), 1.0))))))
    return size if width // size >= 4 * n else None


def batch_rows_for_budget(n_items: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Rows per batch so that a batch's float32 scores and topk's working copy fit in ``memory_budget`` bytes."""
    _check_int_in_range("memory_budget", memory_budget, 1, None)
    return max(1, int(memory_budget) // (2 * 4 * max(int(n_items), 1)))


def stream_top_n(score_rows: Callable[[np.ndarray], torch.Tensor], exclude: sp.csr_matrix | None, n: int,
                 n_rows: int | None = None, batch_rows: int | None = None,
                 memory_budget: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Top-``n`` of many rows, one bounded batch at a time: yields ``(rows, ids, scores)`` as numpy arrays.

    Scoring, masking and ``topk`` run where ``score_rows`` puts the scores (the GPU when
    the model lives there); only the ``(batch, n)`` results come back to the host, so the
    memory in use is one batch of scores however many rows there are.

    Parameters
    ----------
    score_rows : callable
        ``score_rows(row_indices) -> (len(row_indices), n_items)`` float scores; the indices
        of a batch are consecutive (``start, ..., stop - 1``).
    exclude : csr_matrix or None
        Items to skip per row (every stored entry), shape ``(n_rows, n_items)``; None: none.
    n : int
        Items per row.
    n_rows : int, optional
        Number of rows (default: ``exclude.shape[0]``).
    batch_rows : int, optional
        Rows per batch; default :func:`batch_rows_for_budget` of the first batch's width.
    memory_budget : int, optional
        Bytes of scores per batch when ``batch_rows`` is None (default: :func:`default_memory_budget`
        of the device the scores are on).

    Yields
    ------
    rows : ndarray of int64
        The rows of this batch.
    ids : ndarray of int64
        ``(len(rows), n)`` item indices, best first; -1 where a row has fewer than ``n`` allowed items.
    scores : ndarray of float32
        Their scores (-inf at the -1 places).
    """
    if n_rows is None:
        if exclude is None:
            raise ValueError("n_rows is needed when exclude is None")
        n_rows = exclude.shape[0]
    exclude = sp.csr_matrix(exclude) if exclude is not None else None
    if batch_rows is None and exclude is not None and memory_budget is not None:
        batch_rows = batch_rows_for_budget(exclude.shape[1], memory_budget)
    start = 0
    while start < n_rows:
        step = batch_rows or 1
        rows = np.arange(start, min(start + step, n_rows), dtype=np.int64)
        scores = score_rows(rows)
        if batch_rows is None:  # size the batches from the catalogue and device now that they are known
            budget = memory_budget if memory_budget is not None else default_memory_budget(scores.device)
            batch_rows = batch_rows_for_budget(scores.shape[1], budget)
        ids, top_scores = top_n(scores, exclude[rows[0]:rows[-1] + 1] if exclude is not None else None, n)
        yield rows, mark_unavailable(ids, top_scores).cpu().numpy(), top_scores.float().cpu().numpy()
        start = rows[-1] + 1


def mark_unavailable(ids: torch.Tensor | np.ndarray, scores: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Return a copy of ``ids`` with ``-1`` wherever the score is ``-inf``.

    Such positions hold excluded items that :func:`top_n` had to return because
    the user had fewer than ``n`` allowed items; they are not recommendations.

    Parameters
    ----------
    ids, scores : torch.Tensor or numpy.ndarray
        The two outputs of :func:`top_n` (or numpy copies of them), same shape.

    Returns
    -------
    torch.Tensor or numpy.ndarray
        Same type, shape and dtype as ``ids``.
    """
    if tuple(ids.shape) != tuple(scores.shape):
        raise ValueError(f"ids shape {tuple(ids.shape)} differs from scores shape {tuple(scores.shape)}")
    if isinstance(ids, torch.Tensor):
        scores = torch.as_tensor(scores, device=ids.device)
        return torch.where(torch.isneginf(scores), torch.full_like(ids, -1), ids)
    return np.where(np.isneginf(np.asarray(scores)), -1, ids).astype(np.asarray(ids).dtype, copy=False)


def _check_scores(scores: torch.Tensor) -> None:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (batch, n_items), got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise TypeError(f"scores must be a floating-point tensor, got dtype {scores.dtype}")


def _check_int_in_range(name: str, value, low: int, high: int | None) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is an int in ``[low, high]`` (shared with evaluation)."""
    expected = f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}={value!r} is not valid; expected {expected}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name}={value} is out of range; expected {expected}")


def _stored_coordinates(matrix: sp.csr_matrix, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column index of every stored entry of a sparse ``matrix`` of shape ``shape``."""
    if not sp.issparse(matrix):
        raise TypeError(f"exclude must be a scipy sparse matrix or None, got {type(matrix).__name__}")
    if tuple(matrix.shape) != shape:
        raise ValueError(f"exclude has shape {tuple(matrix.shape)}; expected the scores' shape {shape}")
    matrix = sp.csr_matrix(matrix)
    rows = np.repeat(np.arange(shape[0], dtype=np.int64), np.diff(matrix.indptr))
    return rows, matrix.indices.astype(np.int64, copy=False)
