"""Seeded, reproducible splits that share one item index.

- :func:`random_holdout`: a random fraction of all ratings (AutoRec's 90/10),
  optionally with a validation part carved from training.
- :func:`per_user_holdout`: a fraction (or a count) of each user's
  interactions, chosen at random or the latest by timestamp.
- :func:`temporal_holdout`: the latest fraction of all interactions.
- :func:`strong_generalization`: whole held-out users with fold-in, exactly as
  the preprocessing of Liang et al. 2018 (dawenl/vae_cf);
  :meth:`StrongSplit.without_history` gives the same users with no history
  (user cold start, ranked from side features alone), :meth:`StrongSplit.with_short_history`
  with a few items each.

Every split of one dataset has the same users x items shape, so a model fitted
on ``train`` ranks and predicts ``test`` rows without remapping.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from aerec.data.interactions import Interactions
from aerec.data.preprocess import binarize, filter_min_counts
from aerec.params import check_seed


@dataclass(frozen=True)
class HoldoutSplit:
    """Train / (validation) / test parts of the same users x items matrix."""

    train: Interactions
    test: Interactions
    validation: Interactions | None = None

    def summary(self) -> dict:
        parts = {"train": self.train, "validation": self.validation, "test": self.test}
        return {f"{name}_interactions": part.nnz for name, part in parts.items() if part is not None} | {
            "users": self.train.n_users,
            "items": self.train.n_items,
        }


@dataclass(frozen=True)
class StrongSplit:
    """Strong generalization: disjoint train, validation and test users over the train items.

    ``train`` holds the training users; validation and test users each come as
    a ``fold_in`` part (given to the model) and a ``heldout`` part (ranked).
    """

    train: Interactions
    validation_fold_in: Interactions
    validation_heldout: Interactions
    test_fold_in: Interactions
    test_heldout: Interactions

    def summary(self) -> dict:
        return {
            "train_users": self.train.n_users,
            "items": self.train.n_items,
            "train_interactions": self.train.nnz,
            "validation_users": self.validation_fold_in.n_users,
            "validation_fold_in": self.validation_fold_in.nnz,
            "validation_heldout": self.validation_heldout.nnz,
            "test_users": self.test_fold_in.n_users,
            "test_fold_in": self.test_fold_in.nnz,
            "test_heldout": self.test_heldout.nnz,
        }

    def with_short_history(self, longest: int = 5, seed: int = 0) -> "StrongSplit":
        """The same split with each validation and test user given only ``k`` of their interactions (``k`` drawn
        uniformly in 1..``longest``, at most all but one), the rest held out: users with short histories, where
        side features may help most. Seeded by ``seed`` (validation users first, then test users)."""
        if isinstance(longest, bool) or not isinstance(longest, (int, np.integer)) or longest < 1:
            raise ValueError(f"longest={longest!r}; expected a positive number of items")
        rng = np.random.RandomState(check_seed(seed))
        return replace(self, **dict(zip(
            ("validation_fold_in", "validation_heldout", "test_fold_in", "test_heldout"),
            (*_short_history(self.validation_fold_in, self.validation_heldout, int(longest), rng),
             *_short_history(self.test_fold_in, self.test_heldout, int(longest), rng)))))

    def without_history(self) -> "StrongSplit":
        """The same split with the validation and test users' fold-in parts emptied and every one of their
        interactions held out: user cold start, each held-out user ranked with no history (a conditional model
        from their side features alone)."""
        return replace(self, **dict(zip(
            ("validation_fold_in", "validation_heldout", "test_fold_in", "test_heldout"),
            (*_all_held_out(self.validation_fold_in, self.validation_heldout),
             *_all_held_out(self.test_fold_in, self.test_heldout)))))


def _short_history(fold_in: Interactions, heldout: Interactions, longest: int,
                   rng: np.random.RandomState) -> tuple[Interactions, Interactions]:
    """Each user's interactions: ``k`` drawn at random as the fold-in (``k`` uniform in 1..``longest``, at most
    all but one of them), the rest held out."""
    everything = (fold_in.matrix + heldout.matrix).tocsr()
    kept = np.zeros(everything.nnz, dtype=bool)
    for row in range(everything.shape[0]):
        start, stop = everything.indptr[row], everything.indptr[row + 1]
        k = min(int(rng.randint(1, longest + 1)), stop - start - 1)
        if k > 0:
            kept[start + rng.choice(stop - start, k, replace=False)] = True
    rows = np.repeat(np.arange(everything.shape[0]), np.diff(everything.indptr))
    given, rest = (Interactions(sp.csr_matrix((everything.data[mask], (rows[mask], everything.indices[mask])),
                                              shape=everything.shape), fold_in.user_ids, fold_in.item_ids)
                   for mask in (kept, ~kept))
    return given, rest


def _all_held_out(fold_in: Interactions, heldout: Interactions) -> tuple[Interactions, Interactions]:
    """``(empty fold-in, fold-in + held-out)`` of the same users (ids kept)."""
    everything = (fold_in.matrix + heldout.matrix).tocsr()
    empty = sp.csr_matrix(everything.shape, dtype=everything.dtype)
    return (Interactions(empty, fold_in.user_ids, fold_in.item_ids),
            Interactions(everything, fold_in.user_ids, fold_in.item_ids))


def random_holdout(interactions: Interactions, test_fraction: float = 0.1, validation_fraction: float = 0.0, seed: int = 0) -> HoldoutSplit:
    """Hold out a random ``test_fraction`` of all ratings (AutoRec: 0.1).

    ``validation_fraction`` of the remaining training ratings is carved out as
    validation (AutoRec's reference picks lambda on 10% of the training data).
    """
    _check_fraction("test_fraction", test_fraction)
    _check_fraction("validation_fraction", validation_fraction, allow_zero=True)
    rng = np.random.RandomState(check_seed(seed))
    order = rng.permutation(interactions.nnz)
    n_test = int(round(test_fraction * interactions.nnz))
    test_mask = _mask(order[:n_test], interactions.nnz)
    rest = order[n_test:]
    n_validation = int(round(validation_fraction * len(rest)))
    validation_mask = _mask(rest[:n_validation], interactions.nnz)
    return _holdout(interactions, test_mask, validation_mask if n_validation else None)


def cold_start_split(interactions: Interactions, by: str = "item", test_fraction: float = 0.1,
                     validation_fraction: float = 0.0, seed: int = 0) -> HoldoutSplit:
    """Hold out *every* rating of a seeded share of the items (``by="item"``) or users (``"user"``).

    ``test`` holds all the ratings of ``round(test_fraction * n)`` of the ``n`` items (users) that have any;
    ``validation`` (``validation_fraction`` > 0) those of another, disjoint share, for choices made on
    cold entities that are not the test ones. The parts keep the whole matrix's shape, so a cold item's
    column is empty in ``train``: a model sees its id (and its side features) but none of its ratings.
    """
    if by not in ("item", "user"):
        raise ValueError(f"by={by!r}; expected 'item' or 'user'")
    _check_fraction("test_fraction", test_fraction)
    _check_fraction("validation_fraction", validation_fraction, allow_zero=True)
    if test_fraction + validation_fraction >= 1:
        raise ValueError(f"test_fraction={test_fraction!r} and validation_fraction={validation_fraction!r} hold out "
                         f"every {by}; expected their sum below 1, so that some {by}s keep their ratings for training")
    coo = interactions.matrix.tocoo()
    owner = coo.col if by == "item" else coo.row
    present = np.unique(owner)
    rng = np.random.RandomState(check_seed(seed))
    order = present[rng.permutation(len(present))]
    n_test = max(1, int(round(test_fraction * len(present))))
    n_validation = int(round(validation_fraction * len(present)))
    if n_test + n_validation >= len(present):
        raise ValueError(f"the split holds out all {len(present)} {by}s with ratings; lower the fractions or use "
                         "more data")
    test_mask = np.isin(owner, order[:n_test])
    validation_mask = np.isin(owner, order[n_test:n_test + n_validation]) if n_validation else None
    return _holdout(interactions, test_mask, validation_mask)


def per_user_holdout(interactions: Interactions, test_fraction: float | None = 0.2, test_count: int | None = None,
                     by: str = "random", validation_fraction: float = 0.0, seed: int = 0) -> HoldoutSplit:
    """Hold out part of every user's interactions.

    Parameters
    ----------
    test_fraction : float
        Each user holds out ``int(test_fraction * n_u)`` interactions (vae_cf's rounding).
    test_count : int, optional
        Instead of a fraction, hold out this many per user (leave-k-out); a user
        always keeps at least one training interaction.
    by : {"random", "time"}
        Random choice, or the latest by timestamp (ties broken at random).
    validation_fraction : float
        The same per-user rule applied again to the training part.
    """
    if by not in ("random", "time"):
        raise ValueError(f"by={by!r}; expected 'random' or 'time'")
    if by == "time" and interactions.timestamps is None:
        raise ValueError("by='time' needs timestamps; these interactions have none")
    if (test_fraction is None) == (test_count is None):
        raise ValueError("give exactly one of test_fraction and test_count")
    if test_count is not None and (not isinstance(test_count, (int, np.integer)) or test_count < 1):
        raise ValueError(f"test_count={test_count!r}; expected an integer >= 1")
    if test_fraction is not None:
        _check_fraction("test_fraction", test_fraction)
    _check_fraction("validation_fraction", validation_fraction, allow_zero=True)
    rng = np.random.RandomState(check_seed(seed))
    test_mask = _per_user_mask(interactions, np.ones(interactions.nnz, bool), test_fraction, test_count, by, rng)
    validation_mask = None
    if validation_fraction:
        validation_mask = _per_user_mask(interactions, ~test_mask, validation_fraction, None, by, rng)
    return _holdout(interactions, test_mask, validation_mask)


def temporal_holdout(interactions: Interactions, test_fraction: float = 0.2, validation_fraction: float = 0.0) -> HoldoutSplit:
    """Hold out the latest ``test_fraction`` of all interactions (a global time cut).

    Ties at the cut are broken by (user, item) order, so the split is deterministic.
    """
    if interactions.timestamps is None:
        raise ValueError("temporal_holdout needs timestamps; these interactions have none")
    _check_fraction("test_fraction", test_fraction)
    _check_fraction("validation_fraction", validation_fraction, allow_zero=True)
    order = np.argsort(interactions.timestamps, kind="stable")
    n_test = int(round(test_fraction * interactions.nnz))
    test_mask = _mask(order[len(order) - n_test:], interactions.nnz)
    rest = order[: len(order) - n_test]
    n_validation = int(round(validation_fraction * len(rest)))
    validation_mask = _mask(rest[len(rest) - n_validation:], interactions.nnz) if n_validation else None
    return _holdout(interactions, test_mask, validation_mask)


def strong_generalization(interactions: Interactions, n_heldout: int, seed: int = 98765, heldout_fraction: float = 0.2,
                          threshold: float | None = 3.5, min_user_count: int = 5) -> StrongSplit:
    """Split users into train / validation / test as dawenl/vae_cf's ML-20M preprocessing.

    1. Keep ratings ``> threshold`` as 1.0 (``threshold=None``: data already implicit).
    2. Keep users with ``>= min_user_count`` of them (items are not filtered).
    3. Permute the users (sorted by raw id) with ``np.random.seed(seed)``; the last
       ``n_heldout`` are test users, the ``n_heldout`` before them validation, the rest train.
    4. Items are those that train users interacted with; held-out users' other items are dropped.
    5. Each held-out user with >= 5 remaining items holds out ``int(heldout_fraction * n)``
       of them, drawn with ``np.random.choice`` from a generator seeded with ``seed``
       afresh for the validation and for the test users (as vae_cf); the rest is fold-in.
       Users with fewer than 5 keep everything as fold-in (nothing to rank).

    Within a user the draw indexes the items in the source's row order
    (``Interactions.positions``, kept from the file or frame), as vae_cf's groupby
    does, so the split equals vae_cf's on unsorted files (ML-100K's u.data) too.
    Interactions built from a CSR have no source order: their items are indexed
    in column order, which is the file's order for files sorted by user then item
    (ML-20M's ratings.csv).
    """
    if not isinstance(n_heldout, (int, np.integer)) or n_heldout < 1:
        raise ValueError(f"n_heldout={n_heldout!r}; expected an integer >= 1")
    _check_fraction("heldout_fraction", heldout_fraction)
    seed = check_seed(seed)
    data = binarize(interactions, threshold) if threshold is not None else interactions
    data = filter_min_counts(data, min_user=min_user_count)
    n_users = data.n_users
    if n_users - 2 * n_heldout < 1:
        raise ValueError(
            f"n_heldout={n_heldout} leaves no training users: {n_users} users have >= {min_user_count} "
            f"interactions, expected n_heldout < {n_users // 2}"
        )
    permuted = np.random.RandomState(seed).permutation(n_users)
    train_rows = permuted[: n_users - 2 * n_heldout]
    validation_rows = np.sort(permuted[n_users - 2 * n_heldout: n_users - n_heldout])
    test_rows = np.sort(permuted[n_users - n_heldout:])
    train = data.select(rows=train_rows).compact()
    items = data.item_index(train.item_ids)
    validation = _fold_in_split(data.select(validation_rows, items), heldout_fraction, seed)
    test = _fold_in_split(data.select(test_rows, items), heldout_fraction, seed)
    return StrongSplit(train, *validation, *test)


# -- helpers ----------------------------------------------------------------
def _fold_in_split(users: Interactions, heldout_fraction: float, seed: int) -> tuple[Interactions, Interactions]:
    """vae_cf's split_train_test_proportion on the rows of ``users`` (in row order; a row's items in source order)."""
    rng = np.random.RandomState(seed)
    counts = np.diff(users.matrix.indptr)
    in_source_order = users.source_order()
    heldout = np.zeros(users.nnz, dtype=bool)
    for row, n in enumerate(counts):  # sequential draws: the order of the RNG stream is the protocol
        if n >= 5:
            chosen = rng.choice(n, size=int(heldout_fraction * n), replace=False)
            heldout[in_source_order[users.matrix.indptr[row] + chosen]] = True
    return users.keep_entries(~heldout), users.keep_entries(heldout)


def _per_user_mask(data: Interactions, eligible: np.ndarray, fraction, count, by: str, rng) -> np.ndarray:
    """Mask of the entries held out per user among ``eligible`` entries."""
    rows = np.repeat(np.arange(data.n_users), np.diff(data.matrix.indptr))
    tie_break = rng.random_sample(data.nnz)
    primary = data.timestamps if by == "time" else tie_break
    # latest (or random) first within each user, ineligible entries last
    order = np.lexsort((-tie_break, -primary.astype(np.float64), ~eligible, rows))
    n_eligible = np.bincount(rows, weights=eligible, minlength=data.n_users).astype(np.int64)
    if count is not None:
        n_out = np.minimum(count, np.maximum(n_eligible - 1, 0))
    else:
        n_out = (fraction * n_eligible).astype(np.int64)
    starts = np.repeat(data.matrix.indptr[:-1], np.diff(data.matrix.indptr))
    position = np.empty(data.nnz, dtype=np.int64)
    position[order] = np.arange(data.nnz) - starts
    return position < n_out[rows]


def _holdout(interactions: Interactions, test_mask: np.ndarray, validation_mask: np.ndarray | None) -> HoldoutSplit:
    train_mask = ~test_mask if validation_mask is None else ~(test_mask | validation_mask)
    if not train_mask.any():
        raise ValueError("the split leaves the training part empty; lower the held-out fractions")
    if not test_mask.any():
        raise ValueError("the split holds out nothing for test; raise test_fraction or use more data")
    validation = None if validation_mask is None else interactions.keep_entries(validation_mask)
    return HoldoutSplit(interactions.keep_entries(train_mask), interactions.keep_entries(test_mask), validation)


def _mask(positions: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[positions] = True
    return mask


def _check_fraction(name: str, value, allow_zero: bool = False) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    if not isinstance(value, (int, float, np.floating)) or isinstance(value, bool) or not (low_ok and value < 1):
        bound = "0 <= {0} < 1" if allow_zero else "0 < {0} < 1"
        raise ValueError(f"{name}={value!r}; expected {bound.format(name)}")


