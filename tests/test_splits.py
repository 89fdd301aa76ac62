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


def raw_file(fixture: str, data_dir) -> pd.DataFrame:
    """The ratings file as vae_cf reads it: pandas, in the file's row order (ML-100K's u.data is not sorted)."""
    if fixture == "ml100k":
        return pd.read_csv(data_dir / "ml-100k" / "u.data", sep="\t", names=["user", "item", "rating", "timestamp"])
    from tests.conftest import REPO

    frame = pd.read_csv(REPO / "data" / "ml-latest-small" / "ratings.csv")
    return frame.rename(columns={"userId": "user", "movieId": "item"})


@pytest.mark.parametrize("fixture, n_heldout, seed", [("ml100k", 100, 98765), ("ml100k", 100, 1), ("ml_latest_small", 60, 2)])
def test_strong_generalization_equals_vae_cf(request, data_dir, fixture, n_heldout, seed):
    data = request.getfixturevalue(fixture)
    reference = vae_cf_reference(raw_file(fixture, data_dir), n_heldout, seed)
    split = strong_generalization(data, n_heldout=n_heldout, seed=seed)
    assert entries(split.train) == reference["train"]
    assert set(split.train.item_ids.tolist()) == reference["items"]
    for part in ("validation_fold_in", "validation_heldout", "test_fold_in", "test_heldout"):
        assert entries(getattr(split, part)) == reference[part], part


def test_ml100k_file_order_is_kept_and_decides_the_draw(ml100k, data_dir):
    # u.data is not sorted, so its row order is kept beside the matrix ...
    assert ml100k.positions is not None
    frame = raw_file("ml100k", data_dir)
    coo = ml100k.matrix.tocoo()
    np.testing.assert_array_equal(frame["user"].to_numpy()[ml100k.positions], ml100k.user_ids[coo.row])
    np.testing.assert_array_equal(frame["item"].to_numpy()[ml100k.positions], ml100k.item_ids[coo.col])
    # ... and the held-out draw in item order (what it was before) differs from vae_cf's on most pairs
    in_item_order = Interactions(ml100k.matrix, ml100k.user_ids, ml100k.item_ids, ml100k.timestamps)
    reference = vae_cf_reference(frame, 100, 98765)
    item_order_split = strong_generalization(in_item_order, n_heldout=100, seed=98765)
    matching = len(entries(item_order_split.validation_heldout) & reference["validation_heldout"])
    assert matching < 0.5 * len(reference["validation_heldout"])


def test_source_order_survives_shuffles_duplicates_and_selections():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"user": rng.integers(0, 30, 600), "item": rng.integers(0, 50, 600),
                          "rating": rng.integers(1, 6, 600).astype(float)})
    data = Interactions.from_pandas(frame, rating="rating", duplicates="last")
    kept = frame.drop_duplicates(["user", "item"], keep="last")
    coo = data.matrix.tocoo()
    np.testing.assert_array_equal(frame["user"].to_numpy()[data.positions], data.user_ids[coo.row])
    assert set(data.positions.tolist()) == set(kept.index.tolist())
    # through binarize, minimum counts, a row and column selection (columns reversed) and compact
    from aerec.data import binarize, filter_min_counts

    part = filter_min_counts(binarize(data, 2.5), min_user=3).select(np.arange(10)[::-1], np.arange(data.n_items)[::-1])
    part = part.compact()
    coo = part.matrix.tocoo()
    np.testing.assert_array_equal(frame["user"].to_numpy()[part.positions], part.user_ids[coo.row])
    np.testing.assert_array_equal(frame["item"].to_numpy()[part.positions], part.item_ids[coo.col])
    # source_order lists each row's entries in file order
    order = part.source_order()
    rows = coo.row[order]
    assert np.all(np.diff(rows) >= 0)
    for row in np.unique(rows):
        assert np.all(np.diff(part.positions[order][rows == row]) > 0)


def test_a_sorted_source_keeps_no_positions_and_a_csr_orders_by_column(ml_latest_small):
    assert ml_latest_small.positions is None  # ratings.csv is sorted by user then movie
    matrix = ml_latest_small.matrix
    from_csr = Interactions.from_csr(matrix)
    np.testing.assert_array_equal(from_csr.source_order(), np.arange(matrix.nnz))
    # reversing the columns of a CSR-built set keeps the old column order as its source order
    flipped = from_csr.select(cols=np.arange(from_csr.n_items)[::-1])
    order = flipped.source_order()
    first_row = order[: matrix.indptr[1]]
    np.testing.assert_array_equal(flipped.item_ids[flipped.matrix.indices[first_row]], from_csr.item_ids[matrix.indices[:matrix.indptr[1]]])


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


def test_without_history_holds_out_every_interaction_of_the_same_held_out_users(ml100k):
    split = strong_generalization(ml100k, n_heldout=100, seed=98765)
    cold = split.without_history()
    assert cold.train is split.train
    for fold_in, heldout, was_in, was_out in ((cold.validation_fold_in, cold.validation_heldout,
                                               split.validation_fold_in, split.validation_heldout),
                                              (cold.test_fold_in, cold.test_heldout, split.test_fold_in,
                                               split.test_heldout)):
        assert fold_in.nnz == 0 and fold_in.shape == was_in.shape
        assert (heldout.matrix != (was_in.matrix + was_out.matrix)).nnz == 0
        assert heldout.user_ids.tolist() == fold_in.user_ids.tolist() == was_in.user_ids.tolist()
        assert heldout.item_ids.tolist() == was_in.item_ids.tolist()
    assert cold.summary()["test_fold_in"] == 0
    assert cold.summary()["test_heldout"] == split.test_fold_in.nnz + split.test_heldout.nnz


def test_with_short_history_gives_each_held_out_user_one_to_five_items_and_holds_out_the_rest(ml100k):
    split = strong_generalization(ml100k, n_heldout=100, seed=98765)
    short = split.with_short_history(5, seed=3)
    assert short.train is split.train
    for given, rest, was_in, was_out in ((short.validation_fold_in, short.validation_heldout,
                                          split.validation_fold_in, split.validation_heldout),
                                         (short.test_fold_in, short.test_heldout, split.test_fold_in,
                                          split.test_heldout)):
        counts = np.diff(given.matrix.indptr)
        assert counts.min() >= 1 and counts.max() <= 5 and len(set(counts)) == 5  # k drawn in 1..5
        assert (given.matrix + rest.matrix != was_in.matrix + was_out.matrix).nnz == 0  # nothing lost or added
        assert given.matrix.multiply(rest.matrix).nnz == 0 and np.diff(rest.matrix.indptr).min() >= 1
        assert given.user_ids.tolist() == rest.user_ids.tolist() == was_in.user_ids.tolist()
    again = split.with_short_history(5, seed=3)
    assert (again.test_fold_in.matrix != short.test_fold_in.matrix).nnz == 0  # seeded
    with pytest.raises(ValueError, match="longest=0; expected a positive number of items"):
        split.with_short_history(0)
