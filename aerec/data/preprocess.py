"""Preprocessing: binarize explicit ratings, filter by minimum counts."""

from __future__ import annotations

import numpy as np

from aerec.data.interactions import Interactions


def binarize(interactions: Interactions, threshold: float = 3.5) -> Interactions:
    """Keep ratings strictly above ``threshold`` as 1.0 (vae_cf: ``rating > 3.5``).

    Users and items left without interactions are kept (call ``compact()`` or
    :func:`filter_min_counts` to drop them).
    """
    if not np.isfinite(threshold):
        raise ValueError(f"threshold={threshold!r}; expected a finite number")
    kept = interactions.keep_entries(interactions.matrix.data > threshold)
    kept.matrix.data[:] = 1.0
    return kept


def filter_min_counts(interactions: Interactions, min_user: int = 0, min_item: int = 0, until_stable: bool = False) -> Interactions:
    """Drop items with fewer than ``min_item`` and then users with fewer than ``min_user`` interactions.

    This is vae_cf's ``filter_triplets`` order (items first, then users, one
    pass). ``until_stable=True`` repeats both until every count holds (a
    k-core). Users and items left empty are removed from the index.
    """
    for name, value in (("min_user", min_user), ("min_item", min_item)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name}={value!r}; expected an integer >= 0")
    current = interactions
    while True:
        before = current.nnz
        if min_item > 0:
            item_counts = np.bincount(current.matrix.indices, minlength=current.n_items)
            current = current.keep_entries(item_counts[current.matrix.indices] >= min_item)
        if min_user > 0:
            user_counts = np.diff(current.matrix.indptr)
            current = current.keep_entries(np.repeat(user_counts >= min_user, user_counts))
        if not until_stable or current.nnz == before:
            break
    result = current.compact()
    if result.nnz == 0:
        raise ValueError(f"no interactions left after filtering with min_user={min_user}, min_item={min_item}")
    return result
