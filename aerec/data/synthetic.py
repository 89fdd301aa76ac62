"""Seeded synthetic user x item interactions with power-law (Zipf) popularity, for benchmarks only.

Real interaction data is heavy-tailed on both sides: a few items are in most
users' histories and a few users rate thousands of items. The generator draws
(user, item) pairs independently, the user with probability proportional to
``1 / rank^user_exponent`` and the item with ``1 / rank^item_exponent`` (ranks
shuffled over the ids, so popular ids are not the low ones), drops repeated
pairs and draws again for the shortfall until exactly ``n_interactions``
distinct pairs exist. Repeats fall mostly on the head, so the most popular
items saturate (every user has them) as in real data; the rest keeps the
power law.

This is for timing and memory benchmarks, not for judging accuracy: there is
no latent structure to learn.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from aerec.data.interactions import Interactions

__all__ = ["ML_RATING_SHARES", "zipf_interactions"]

#: Shares of the ratings 1..5 in MovieLens 1M (ratings.dat), for ``ratings=True``.
ML_RATING_SHARES = (0.056, 0.108, 0.261, 0.349, 0.226)
# Pairs drawn per round at most (bounds the temporary int64 keys to ~400 MB).
_MAX_DRAW = 50_000_000
_MAX_ROUNDS = 60


def zipf_interactions(n_users: int, n_items: int, n_interactions: int, user_exponent: float = 0.5,
                      item_exponent: float = 0.8, ratings: bool = False, seed: int = 0) -> Interactions:
    """``n_interactions`` distinct (user, item) pairs with Zipf-distributed users and items.

    Parameters
    ----------
    n_users, n_items : int
        Matrix shape.
    n_interactions : int
        Distinct stored entries wanted, at most ``n_users * n_items / 2`` (denser requests
        would saturate the matrix instead of following a power law).
    user_exponent, item_exponent : float
        Zipf exponents ``a >= 0`` of the activity of users and the popularity of items
        (0: uniform). The defaults give an ML-1M-like spread at ML-1M's shape.
    ratings : bool
        False: every value 1.0 (implicit feedback). True: ratings 1..5 drawn with
        MovieLens 1M's shares (:data:`ML_RATING_SHARES`), for rating models.
    seed : int
        Seeds everything; the same arguments give the same matrix.

    Returns
    -------
    Interactions
        Ids 0..n-1, float32 CSR in canonical form, no timestamps.
    """
    for name, value in (("n_users", n_users), ("n_items", n_items), ("n_interactions", n_interactions)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r}; expected a positive integer")
    for name, value in (("user_exponent", user_exponent), ("item_exponent", item_exponent)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not 0 <= value < 10:
            raise ValueError(f"{name}={value!r}; expected a number in [0, 10)")
    capacity = int(n_users) * int(n_items)
    if n_interactions > capacity // 2:
        raise ValueError(f"n_interactions={n_interactions} for a {n_users} x {n_items} matrix; expected at most "
                         f"{capacity // 2} (half the cells), beyond which the matrix saturates")
    rng = np.random.default_rng(seed)
    user_cdf = _zipf_cdf(int(n_users), float(user_exponent), rng)
    item_cdf = _zipf_cdf(int(n_items), float(item_exponent), rng)
    keys = np.empty(0, dtype=np.int64)
    for _ in range(_MAX_ROUNDS):
        missing = int(n_interactions) - len(keys)
        if missing == 0:
            break
        draw = min(_MAX_DRAW, int(missing * 1.1) + 16)
        users = np.searchsorted(user_cdf, rng.random(draw), side="right")
        items = np.searchsorted(item_cdf, rng.random(draw), side="right")
        fresh = np.unique(users.astype(np.int64) * n_items + items)
        fresh = fresh[~np.isin(fresh, keys, assume_unique=True)]
        keys = np.union1d(keys, rng.permutation(fresh)[:missing])
    else:
        raise ValueError(f"could not place {n_interactions} distinct pairs in {_MAX_ROUNDS} rounds with "
                         f"user_exponent={user_exponent}, item_exponent={item_exponent}; lower the exponents")
    rows, cols = np.divmod(keys, n_items)
    if ratings:
        values = (rng.choice(5, size=len(keys), p=ML_RATING_SHARES) + 1).astype(np.float32)
    else:
        values = np.ones(len(keys), dtype=np.float32)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_users))])
    matrix = sp.csr_matrix((values, cols.astype(np.int32), indptr), shape=(int(n_users), int(n_items)))
    return Interactions.from_csr(matrix)


def _zipf_cdf(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Cumulative probabilities over ids 0..n-1 of a Zipf law on ranks, the ranks shuffled over the ids."""
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    weights = weights[rng.permutation(n)]
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    cdf[-1] = np.nextafter(1.0, 2.0)  # u in [0, 1) always lands on a valid id
    return cdf
