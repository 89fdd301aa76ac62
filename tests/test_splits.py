"""Seeded splits: reproducible, disjoint, exactly the protocol they name."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aerec.data import Interactions, per_user_holdout, random_holdout, strong_generalization, temporal_holdout


def entries(part: Interactions) -> set:
    coo = part.matrix.tocoo()
    return set(zip(part.user_ids[coo.row].tolist(), part.item_ids[coo.col].tolist()))


def test_random_holdout_is_seeded_disjoint_and_complete(ml100k):
    split = random_holdout(ml100k, test_fraction=0.1, validation_fraction=0.1, seed=3)
    again = random_holdout(ml100k, test_fraction=0.1, validation_fraction=0.1, seed=3)
    other = random_holdout(ml100k, test_fraction=0.1, validation_fraction=0.1, seed=4)
    assert (split.test.matrix != again.test.matrix).nnz == 0
    assert (split.test.matrix != other.test.matrix).nnz > 0
    assert split.test.nnz == 10_000 and split.validation.nnz == 9_000 and split.train.nnz == 81_000
    train, validation, test = entries(split.train), entries(split.validation), entries(split.test)
    assert not (train & test) and not (train & validation) and not (validation & test)
    assert train | validation | test == entries(ml100k)
    assert split.train.shape == split.test.shape == ml100k.shape  # one index for every part


def test_per_user_holdout_fraction_and_latest(ml100k):
    split = per_user_holdout(ml100k, test_fraction=0.2, by="time", seed=0)
    counts = np.diff(ml100k.matrix.indptr)
    held = np.diff(split.test.matrix.indptr)
    np.testing.assert_array_equal(held, (0.2 * counts).astype(int))
    # every held-out interaction is at least as late as every training one of the same user
    train_t = pd.DataFrame({"u": split.train.matrix.tocoo().row, "t": split.train.timestamps}).groupby("u").t.max()
    test_t = pd.DataFrame({"u": split.test.matrix.tocoo().row, "t": split.test.timestamps}).groupby("u").t.min()
    assert (test_t >= train_t[test_t.index]).all()


def test_per_user_leave_one_out_keeps_one_for_training():
    data = Interactions.from_pandas(pd.DataFrame({"user": [1, 2, 2, 3, 3, 3], "item": [1, 1, 2, 1, 2, 3]}))
    split = per_user_holdout(data, test_fraction=None, test_count=1, seed=0)
    assert list(np.diff(split.test.matrix.indptr)) == [0, 1, 1]
    assert list(np.diff(split.train.matrix.indptr)) == [1, 1, 2]


def test_per_user_validation_is_carved_from_training(ml_latest_small):
    split = per_user_holdout(ml_latest_small, 0.2, validation_fraction=0.25, seed=1)
    assert not (entries(split.validation) & entries(split.test))
    assert split.train.nnz + split.validation.nnz + split.test.nnz == ml_latest_small.nnz


def test_temporal_holdout_cuts_by_time(ml100k):
    split = temporal_holdout(ml100k, test_fraction=0.2)
    assert split.test.nnz == 20_000 and split.train.timestamps.max() <= split.test.timestamps.min()


@pytest.mark.parametrize("call, message", [
    (lambda d: random_holdout(d, test_fraction=1.0), "test_fraction=1.0; expected 0 < test_fraction < 1"),
    (lambda d: random_holdout(d, test_fraction=0.1, seed=-1), "seed=-1"),
    (lambda d: per_user_holdout(d, by="oldest"), "by='oldest'"),
    (lambda d: strong_generalization(d, n_heldout=500), "n_heldout=500 leaves no training users"),
    (lambda d: strong_generalization(d, n_heldout=0), "n_heldout=0"),
])
def test_bad_split_arguments(ml100k, call, message):
    with pytest.raises(ValueError, match=message):
        call(ml100k)


def test_a_split_that_leaves_training_empty_is_refused():
    data = Interactions.from_pandas(pd.DataFrame({"user": [1, 1], "item": [1, 2]}))
    with pytest.raises(ValueError, match="holds out nothing|training part empty"):
        random_holdout(data, test_fraction=0.1)


# -- strong generalization, against an independent port of vae_cf's preprocessing ----------
def vae_cf_reference(frame: pd.DataFrame, n_heldout: int, seed: int):
    """dawenl/vae_cf ML-20M preprocessing cells, with groupby(key).size() counts (see PITFALLS)."""
    raw = frame[frame["rating"] > 3.5]
    usercount = raw.groupby("user").size()
    raw = raw[raw["user"].isin(usercount.index[usercount >= 5])]
    unique_uid = raw.groupby("user").size().index
    np.random.seed(seed)
    unique_uid = unique_uid[np.random.permutation(unique_uid.size)]
    n = unique_uid.size
    tr_users, vd_users, te_users = unique_uid[: n - 2 * n_heldout], unique_uid[n - 2 * n_heldout: n - n_heldout], unique_uid[n - n_heldout:]
    train = raw[raw["user"].isin(tr_users)]
    unique_sid = pd.unique(train["item"])

    def split(data):
        tr, te = [], []
        np.random.seed(seed)
        for _, group in data.groupby("user"):
            k = len(group)
            if k >= 5:
                idx = np.zeros(k, dtype=bool)
                idx[np.random.choice(k, size=int(0.2 * k), replace=False).astype("int64")] = True
                tr.append(group[~idx])
                te.append(group[idx])
            else:
                tr.append(group)
        return pd.concat(tr), pd.concat(te)

    def held(users):
        plays = raw[raw["user"].isin(users)]
        return split(plays[plays["item"].isin(unique_sid)])

    pairs = lambda d: set(zip(d["user"].tolist(), d["item"].tolist()))  # noqa: E731
    (vtr, vte), (ttr, tte) = held(vd_users), held(te_users)
    return {"train": pairs(train), "items": set(unique_sid.tolist()), "validation_fold_in": pairs(vtr),
            "validation_heldout": pairs(vte), "test_fold_in": pairs(ttr), "test_heldout": pairs(tte)}


@pytest.mark.parametrize("fixture, n_heldout, seed", [("ml100k", 100, 98765), ("ml100k", 100, 1), ("ml_latest_small", 60, 2)])
def test_strong_generalization_equals_vae_cf(request, fixture, n_heldout, seed):
    data = request.getfixturevalue(fixture)
    # vae_cf draws in file-row order; our documented order is (user, item), so sort the frame that way
    frame = data.to_pandas().sort_values(["user", "item"], kind="stable")
    reference = vae_cf_reference(frame, n_heldout, seed)
    split = strong_generalization(data, n_heldout=n_heldout, seed=seed)
    assert entries(split.train) == reference["train"]
    assert set(split.train.item_ids.tolist()) == reference["items"]
    for part in ("validation_fold_in", "validation_heldout", "test_fold_in", "test_heldout"):
        assert entries(getattr(split, part)) == reference[part], part


def test_strong_generalization_users_are_disjoint_and_80_20(ml100k):
    split = strong_generalization(ml100k, n_heldout=100, seed=98765)
    train, val, test = (set(p.user_ids.tolist()) for p in (split.train, split.validation_fold_in, split.test_fold_in))
    assert len(val) == len(test) == 100 and not (train & val) and not (train & test) and not (val & test)
    for fold_in, heldout in ((split.validation_fold_in, split.validation_heldout), (split.test_fold_in, split.test_heldout)):
        assert fold_in.shape == heldout.shape == (100, split.train.n_items)
        n_in, n_out = np.diff(fold_in.matrix.indptr), np.diff(heldout.matrix.indptr)
        total = n_in + n_out
        np.testing.assert_array_equal(n_out, np.where(total >= 5, (0.2 * total).astype(int), 0))
        assert (fold_in.matrix.multiply(heldout.matrix)).nnz == 0
    assert split.summary()["train_users"] == 738
