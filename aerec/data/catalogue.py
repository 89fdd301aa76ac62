"""Lining data up with a fitted model's catalogue: pandas frames in, raw ids kept.

A fitted model knows its items by raw id (``model.item_ids_``). New users' histories
come as frames or :class:`Interactions` with their own columns; :func:`align_to_catalogue`
puts their entries in the model's columns, drops (and counts) the items the model does
not know, and keeps the users' raw ids, so that results can be given back in raw ids.
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aerec.data.interactions import Interactions


class UnknownIdsWarning(UserWarning):
    """Entries of a history named items (or users) that a fitted model does not know; they were ignored."""


def as_interactions(data, user: str = "user", item: str = "item", rating: str | bool | None = None,
                    name: str = "data"):
    """A pandas frame as :class:`Interactions` (other inputs are returned as they are).

    ``rating`` names the values' column; ``None`` reads the column ``"rating"`` when the frame has
    one and makes every entry 1.0 otherwise; ``False`` makes every entry 1.0. Implicit models
    take the values as weights, so for vae_cf's protocol keep the likes and drop the values
    (``fit(df[df.rating > 3.5], rating=False)``).
    """
    if not isinstance(data, pd.DataFrame):
        return data
    if rating is None and "rating" in data.columns:
        rating = "rating"
    elif rating is False:
        rating = None
    try:
        return Interactions.from_pandas(data, user, item, rating)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc} (name the columns with user=, item=, rating=)") from exc


def catalogue_columns(catalogue, ids) -> np.ndarray:
    """The column of each raw id in ``catalogue`` (-1 for an id it does not hold).

    Ids are matched by value, and then by their text, so that ``1`` read from a CSV file
    finds the item ``"1"`` of a model fitted on strings (and the other way round).
    """
    catalogue = np.asarray(catalogue)
    ids = np.asarray(ids)
    column_of = {value: column for column, value in enumerate(catalogue.tolist())}
    text_column_of = {str(value): column for column, value in enumerate(catalogue.tolist())}
    found = [column_of.get(value, -1) for value in ids.tolist()]
    return np.array([column if column >= 0 else text_column_of.get(str(value), -1)
                     for column, value in zip(found, ids.tolist())], dtype=np.int64)


def catalogue_index(catalogue, ids, what: str = "item") -> np.ndarray:
    """:func:`catalogue_columns`, refusing (ValueError naming them) ids the catalogue does not hold."""
    scalar = np.ndim(ids) == 0
    ids = np.atleast_1d(np.asarray(ids, dtype=object if scalar and isinstance(ids, str) else None))
    columns = catalogue_columns(catalogue, ids)
    if (columns < 0).any():
        missing = ids[columns < 0]
        raise ValueError(f"{len(missing)} {what} id(s) not in the model's catalogue of {len(catalogue)} {what}s: "
                         f"{missing[:5].tolist()}{' ...' if len(missing) > 5 else ''}")
    return columns


def align_to_catalogue(data, item_ids, user_ids=None, *, user: str = "user", item: str = "item",
                       rating: str | bool | None = None, warn: bool = True) -> tuple[Interactions, int]:
    """``data``'s entries over a fitted model's items; returns ``(interactions, n_ignored)``.

    Parameters
    ----------
    data : DataFrame or Interactions
        Histories with raw ids (a frame's columns named by ``user``, ``item``, ``rating``,
        as :func:`as_interactions`).
    item_ids : array
        The catalogue, for instance ``model.item_ids_``: column ``j`` of the result is item ``item_ids[j]``.
    user_ids : array, optional
        The rows to produce, in this order (users without entries get an empty row, entries of
        other users are ignored and counted); by default the users of ``data``.
    warn : bool
        Emit an :class:`UnknownIdsWarning` when entries were ignored.

    Returns
    -------
    interactions : Interactions
        Its ``item_ids`` are ``item_ids`` and its ``user_ids`` the rows' raw ids.
    n_ignored : int
        The entries whose item (or user) the catalogue does not hold.
    """
    data = as_interactions(data, user, item, rating)
    if not isinstance(data, Interactions):
        raise TypeError(f"data must be a pandas DataFrame or aerec Interactions with raw ids, "
                        f"got {type(data).__name__}")
    item_ids = np.asarray(item_ids)
    coo = data.matrix.tocoo()
    columns = catalogue_columns(item_ids, data.item_ids)[coo.col]
    if user_ids is None:
        row_ids, rows = data.user_ids, coo.row.astype(np.int64)
    else:
        row_ids = np.asarray(user_ids)
        rows = catalogue_columns(row_ids, data.user_ids)[coo.row]
    known = (columns >= 0) & (rows >= 0)
    ignored = int((~known).sum())
    if ignored and warn:
        unknown_items = np.unique(coo.col[columns < 0])
        example = f" (item ids such as {data.item_ids[unknown_items[:3]].tolist()})" if len(unknown_items) else ""
        warnings.warn(f"{ignored} of {coo.nnz} entries name items or users the model does not know and were "
                      f"ignored{example}", UnknownIdsWarning, stacklevel=outside_aerec_stacklevel())
    matrix = sp.csr_matrix((coo.data[known], (rows[known], columns[known])),
                           shape=(len(row_ids), len(item_ids)), dtype=np.float32)
    matrix.sum_duplicates()
    return Interactions(matrix, row_ids, item_ids), ignored


def outside_aerec_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning raised by the caller point at the first line outside aerec."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def recommendations_frame(user_ids, ids: np.ndarray, scores: np.ndarray, item_ids) -> pd.DataFrame:
    """Top-n arrays (one row per user, ids indexing ``item_ids``) as rows ``user, item, rank, score`` in raw ids.

    Places left empty (id -1: fewer than n items remained for the user) are left out.
    """
    user_ids, item_ids = np.asarray(user_ids), np.asarray(item_ids)
    n = ids.shape[1]
    keep = (ids >= 0).ravel()
    return pd.DataFrame({"user": np.repeat(user_ids, n)[keep], "item": item_ids[np.clip(ids, 0, None).ravel()][keep],
                         "rank": np.tile(np.arange(1, n + 1, dtype=np.int32), len(ids))[keep],
                         "score": scores.ravel().astype(np.float32)[keep]})
