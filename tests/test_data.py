"""aerec.data: Interactions, readers with checksums, preprocessing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from aerec.data import (
    ChecksumError,
    Interactions,
    binarize,
    filter_min_counts,
    load_item_titles,
    load_movielens,
    read_csv,
    read_parquet,
    verify_file,
)
from tests.conftest import REPO


def frame(**overrides):
    base = {"user": ["a", "a", "b", "c"], "item": [10, 20, 10, 30], "rating": [4.0, 3.5, 5.0, 1.0], "ts": [3, 1, 2, 9]}
    base.update(overrides)
    return pd.DataFrame(base)


# -- Interactions.from_pandas ------------------------------------------------
def test_from_pandas_builds_csr_with_id_maps_and_timestamps():
    data = Interactions.from_pandas(frame(), rating="rating", timestamp="ts")
    assert data.shape == (3, 3) and data.matrix.dtype == np.float32
    assert list(data.user_ids) == ["a", "b", "c"] and list(data.item_ids) == [10, 20, 30]
    assert data.matrix[data.user_index("a")[0], data.item_index(20)[0]] == 3.5
    back = data.to_pandas().sort_values(["user", "item"]).reset_index(drop=True)
    expected = frame().rename(columns={"ts": "timestamp"}).sort_values(["user", "item"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(back, expected, check_dtype=False)


def test_implicit_frame_gets_ones():
    data = Interactions.from_pandas(frame())
    assert np.all(data.matrix.data == 1.0) and data.timestamps is None


@pytest.mark.parametrize(
    "bad, message",
    [
        (frame().drop(columns="item"), "missing column.*item='item'"),
        (frame().iloc[:0], "empty"),
        (frame(rating=[4.0, np.nan, 5.0, 1.0]), "non-finite value nan"),
        (frame(rating=[4.0, np.inf, 5.0, 1.0]), "non-finite value inf"),
        (frame(rating=["4", "x", "5", "1"]), "dtype .*expected numbers"),
        (frame(rating=[4.0, -1.0, 5.0, 1.0]), r"value -1\.0 .*expected ratings > 0"),
        (frame(user=["a", None, "b", "c"]), "missing id at row 1"),
        (frame(ts=["x", "y", "z", "w"]), "timestamp column 'ts' has dtype"),
    ],
)
def test_from_pandas_rejects_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        Interactions.from_pandas(bad, rating="rating", timestamp="ts")


def test_duplicates_need_an_explicit_policy():
    dup = frame(user=["a", "a", "b", "a"], item=[10, 20, 10, 10], rating=[4.0, 3.5, 5.0, 2.0])
    with pytest.raises(ValueError, match="user 'a', item 10 appears 2 times"):
        Interactions.from_pandas(dup, rating="rating")
    expected = {"first": 4.0, "last": 2.0, "sum": 6.0, "mean": 3.0, "max": 4.0}
    for policy, value in expected.items():
        data = Interactions.from_pandas(dup, rating="rating", timestamp="ts", duplicates=policy)
        assert data.nnz == 3
        assert data.matrix[0, 0] == value, policy
    last = Interactions.from_pandas(dup, rating="rating", timestamp="ts", duplicates="last")
    assert last.timestamps[0] == 9  # the kept row's time
    with pytest.raises(ValueError, match="duplicates='newest'"):
        Interactions.from_pandas(dup, duplicates="newest")


def test_from_csr_and_select_carry_timestamps():
    data = Interactions.from_pandas(frame(), rating="rating", timestamp="ts")
    sub = data.select(rows=[2, 0], cols=[2, 1, 0])
    assert list(sub.user_ids) == ["c", "a"] and list(sub.item_ids) == [30, 20, 10]
    table = sub.to_pandas().set_index(["user", "item"])["timestamp"]
    assert table[("a", 10)] == 3 and table[("a", 20)] == 1 and table[("c", 30)] == 9
    wrapped = Interactions.from_csr(sp.coo_matrix(([1.0, 2.0], ([0, 1], [1, 0])), shape=(2, 2)))
    assert wrapped.matrix.has_sorted_indices and wrapped.nnz == 2
    with pytest.raises(ValueError, match="value 0.0"):
        Interactions.from_csr(sp.csr_matrix(([0.0], ([0], [0])), shape=(1, 1)))


def test_unknown_ids_are_named():
    data = Interactions.from_pandas(frame())
    with pytest.raises(ValueError, match="unknown user id 'zz'"):
        data.user_index(["a", "zz"])


# -- preprocessing -------------------------------------------------------------
def test_binarize_keeps_ratings_strictly_above_threshold():
    data = Interactions.from_pandas(frame(), rating="rating")
    kept = binarize(data, 3.5)
    assert kept.shape == data.shape and kept.nnz == 2 and set(kept.matrix.data) == {1.0}


def test_filter_min_counts_items_then_users_and_k_core():
    rows = [0, 0, 0, 1, 1, 2, 2, 2, 3]
    cols = [0, 1, 2, 0, 1, 0, 1, 3, 3]
    data = Interactions.from_csr(sp.csr_matrix((np.ones(9), (rows, cols)), shape=(4, 4)))
    one_pass = filter_min_counts(data, min_user=2, min_item=2)
    # items 0, 1, 3 have >= 2; then users: u0 {0,1}, u1 {0,1}, u2 {0,1,3}, u3 {3} -> u3 dropped
    assert list(one_pass.user_ids) == [0, 1, 2] and list(one_pass.item_ids) == [0, 1, 3]
    core = filter_min_counts(data, min_user=2, min_item=2, until_stable=True)
    assert list(core.item_ids) == [0, 1]  # item 3 is left with one user once u3 goes
    with pytest.raises(ValueError, match="min_user=-1"):
        filter_min_counts(data, min_user=-1)


# -- MovieLens readers on the real files ------------------------------------------------
def test_ml100k_counts(ml100k):
    assert (ml100k.nnz, ml100k.n_users, ml100k.n_items) == (100_000, 943, 1_682)
    ratings = pd.Series(ml100k.matrix.data).value_counts().sort_index()
    assert list(ratings) == [6_110, 11_370, 27_145, 34_174, 21_201]
    assert ml100k.timestamps.min() == 874724710 and ml100k.timestamps.max() == 893286638


def test_ml_latest_small_counts_from_the_shipped_copy(ml_latest_small):
    assert (ml_latest_small.nnz, ml_latest_small.n_users, ml_latest_small.n_items) == (100_836, 610, 9_724)
    assert ml_latest_small.matrix.data.min() == 0.5 and ml_latest_small.item_ids.max() == 193609


def test_shipped_copy_is_the_published_file():
    assert verify_file(REPO / "data" / "ml-latest-small" / "ratings.csv") == "verified"
    assert load_movielens("ml-latest-small").nnz == 100_836  # found without data_dir


def test_titles(data_dir):
    assert load_item_titles("ml-100k", data_dir)[1] == "Toy Story (1995)"
    assert any("Misérables" in title for title in load_item_titles("ml-100k", data_dir).values())  # latin-1 read
    assert load_item_titles("ml-latest-small", REPO / "data")[193609] == "Andrew Dice Clay: Dice Rules (1991)"


def test_checksum_mismatch_is_a_clear_error_with_an_opt_out(tmp_path, data_dir):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    text = (data_dir / "ml-100k" / "u.data").read_bytes()
    (folder / "u.data").write_bytes(text.replace(b"\n", b"\r\n"))  # re-encoded line endings
    with pytest.raises(ChecksumError, match="expected 06416e59.*verify=False"):
        load_movielens("ml-100k", data_dir=tmp_path)
    assert load_movielens("ml-100k", data_dir=tmp_path, verify=False).nnz == 100_000


def test_unknown_dataset_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'ml-3m'"):
        load_movielens("ml-3m")
    with pytest.raises(FileNotFoundError, match="ml-20m.zip"):
        load_movielens("ml-20m", data_dir=tmp_path)


# -- the formats of releases not on this machine, on small synthetic files ----------------
SYNTHETIC = [(1, 10, 5, 978300760), (1, 20, 3, 978302109), (2, 10, 4, 978301968), (3, 30, 1, 978300275)]


def write_synthetic(folder, name, fmt):
    folder.mkdir(parents=True)
    if fmt == "dat":
        lines = [f"{u}::{i}::{r}::{t}" for u, i, r, t in SYNTHETIC]
    else:
        lines = ["userId,movieId,rating,timestamp"] + [f"{u},{i},{r}.0,{t}" for u, i, r, t in SYNTHETIC]
    (folder / name).write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("dataset, folder, name, fmt", [
    ("ml-10m", "ml-10M100K", "ratings.dat", "dat"),
    ("ml-20m", "ml-20m", "ratings.csv", "csv"),
    ("ml-25m", "ml-25m", "ratings.csv", "csv"),
])
def test_release_formats_on_synthetic_files(tmp_path, dataset, folder, name, fmt):
    write_synthetic(tmp_path / folder, name, fmt)
    data = load_movielens(dataset, data_dir=tmp_path)
    assert (data.nnz, data.n_users, data.n_items) == (4, 3, 3)
    assert data.matrix[0, 1] == 3.0 and data.timestamps.max() == 978302109


def test_ml1m_reader_checks_the_git_blob_of_ratings_dat(tmp_path):
    write_synthetic(tmp_path / "ml-1m", "ratings.dat", "dat")
    with pytest.raises(ChecksumError, match="git-blob .* expected 77a7c4b1"):
        load_movielens("ml-1m", data_dir=tmp_path)
    data = load_movielens("ml-1m", data_dir=tmp_path, verify=False)
    assert (data.nnz, data.n_users, data.n_items) == (4, 3, 3)
    assert load_movielens(tmp_path / "ml-1m" / "ratings.dat", verify=False).nnz == 4  # a path works too


def test_ml1m_titles_are_latin1(data_dir):
    titles = load_item_titles(data_dir / "ml-1m" / "movies.dat")
    assert len(titles) == 3_883 and titles[1] == "Toy Story (1995)"


def test_malformed_movielens_file_is_a_value_error(tmp_path):
    folder = tmp_path / "ml-20m"
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,oops,5\n")
    with pytest.raises(ValueError, match="non-numeric value 'oops'"):
        load_movielens(folder / "ratings.csv")


# -- generic readers -----------------------------------------------------------
def test_generic_csv_and_parquet(tmp_path):
    frame().to_csv(tmp_path / "x.csv", index=False)
    frame().to_parquet(tmp_path / "x.parquet")
    for data in (read_csv(tmp_path / "x.csv", rating="rating", timestamp="ts"),
                 read_parquet(tmp_path / "x.parquet", rating="rating", timestamp="ts")):
        assert data.shape == (3, 3) and data.nnz == 4 and data.timestamps.max() == 9
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="cannot read .*bad.parquet"):
        read_parquet(tmp_path / "bad.parquet")


def test_bundled_copy_matches_shared_copy(data_dir):
    for name in ("ratings.csv", "movies.csv", "README.txt"):
        shipped = (REPO / "data" / "ml-latest-small" / name).read_bytes()
        assert shipped == (data_dir / "ml-latest-small" / name).read_bytes(), name


# -- property: from_pandas -> to_pandas keeps every interaction ------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from(["x", "y", "z", "w"]), st.integers(1, 10),
                          st.integers(0, 10**9)), min_size=1, max_size=60, unique_by=lambda t: (t[0], t[1])))
def test_round_trip_keeps_every_interaction(rows):
    df = pd.DataFrame(rows, columns=["u", "i", "r", "t"])
    data = Interactions.from_pandas(df, user="u", item="i", rating="r", timestamp="t")
    back = data.to_pandas()
    assert set(zip(back.user, back.item, back.rating, back.timestamp)) == set(map(tuple, df.itertuples(index=False)))
    assert data.matrix.has_sorted_indices and data.nnz == len(df)
