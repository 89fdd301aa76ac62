"""Files read in blocks (issue 19, item 5): ``aerec.data.chunks.read_table`` builds what pandas' whole-file read
built, one block of rows at a time."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aerec.data.chunks as chunks
from aerec.data import Interactions, load_movielens, read_csv, read_parquet
from aerec.data.readers import read_interactions


def same(a: Interactions, b: Interactions) -> None:
    assert a.shape == b.shape
    assert (a.matrix != b.matrix).nnz == 0 and np.array_equal(a.matrix.indptr, b.matrix.indptr)
    for name in ("user_ids", "item_ids"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype.kind == y.dtype.kind and np.array_equal(x, y), (name, x, y)
    for name in ("timestamps", "positions"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None) and (x is None or np.array_equal(x, y)), name


def whole_file(path, sep=",", header=0, names=None, **columns):
    """What the readers built before they read in blocks: pandas' frame of the whole file, then from_pandas."""
    frame = pd.read_csv(path, sep=sep, header=header, engine="c")
    if names is not None:
        frame.columns = names[:frame.shape[1]]
    return Interactions.from_pandas(frame, **columns)


def outcome(call):
    try:
        return call()
    except ValueError as exc:
        assert str(exc).strip()
        return ValueError


IDS = ["1", "2", "7", " 3", "007", "+4", "1.5", "2.0", "u1", "b", "NA", "", "1e3", "-5"]
RATINGS = ["1", "4.5", " 2 ", "5", "NA", "", "abc", "inf", "0", "3.0e0", "-1"]
TIMES = ["1", "978300760", "1.5", "", "x", "9223372036854775807", "-3", " 12 "]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(IDS), st.sampled_from(IDS), st.sampled_from(RATINGS), st.sampled_from(TIMES)),
                min_size=1, max_size=12), st.integers(1, 4), st.sampled_from(["first", "sum", "error"]))
def test_a_file_read_in_blocks_equals_its_whole_read(tmp_path_factory, rows, block, duplicates):
    path = tmp_path_factory.mktemp("blocks") / "ratings.csv"
    path.write_text("user,item,rating,timestamp\n" + "".join(",".join(row) + "\n" for row in rows))
    names = dict(user="user", item="item", rating="rating", timestamp="timestamp")
    expected = outcome(lambda: whole_file(path, **names, duplicates=duplicates))
    table = chunks.open_table(path, timestamp=None)
    got = outcome(lambda: chunks.read_table(table, duplicates, rows=block))
    if expected is ValueError or got is ValueError:
        assert got is expected, (rows, expected, got)
    else:
        same(got, expected)


def test_movielens_releases_read_in_blocks_equal_their_whole_read(data_dir, monkeypatch):
    monkeypatch.setattr(chunks, "CHUNK_ROWS", 7919)  # many blocks, ids split across them
    for name, file, sep, header in (("ml-100k", "ml-100k/u.data", "\t", None),
                                    ("ml-latest-small", "ml-latest-small/ratings.csv", ",", 0)):
        names = ["user", "item", "rating", "timestamp"]
        expected = whole_file(data_dir / file, sep=sep, header=header, names=names, user="user", item="item",
                              rating="rating", timestamp="timestamp")
        same(load_movielens(name, data_dir=data_dir), expected)
        same(read_interactions(data_dir / file), expected)


def test_ratings_dat_and_parquet_read_in_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(chunks, "CHUNK_ROWS", 5)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"user": rng.integers(0, 30, 200), "item": rng.integers(0, 50, 200),
                          "rating": rng.integers(1, 6, 200).astype(float), "timestamp": rng.integers(0, 10**9, 200)})
    frame = frame.drop_duplicates(["user", "item"])
    expected = Interactions.from_pandas(frame, rating="rating", timestamp="timestamp")
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("".join("::".join(map(str, row)) + "\n" for row in frame.astype(int).to_numpy()))
    same(load_movielens(folder, verify=False), expected)
    frame.assign(user=frame.user.map("u{}".format)).to_parquet(tmp_path / "x.parquet", row_group_size=17)
    text_ids = Interactions.from_pandas(frame.assign(user=frame.user.map("u{}".format)), rating="rating",
                                        timestamp="timestamp")
    same(read_parquet(tmp_path / "x.parquet", rating="rating", timestamp="timestamp"), text_ids)
    same(read_interactions(tmp_path / "x.parquet"), text_ids)
    frame.to_csv(tmp_path / "x.csv", index=False)
    same(read_csv(tmp_path / "x.csv", rating="rating", timestamp="timestamp"), expected)


def test_errors_name_the_row_of_the_whole_file(tmp_path, monkeypatch):
    monkeypatch.setattr(chunks, "CHUNK_ROWS", 3)
    lines = ["user,item,rating"] + [f"{u},{u},4" for u in range(10)]
    lines[9] = "8,8,good"
    (tmp_path / "a.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"rating column 'rating' has a non-numeric value 'good' at row 8"):
        read_interactions(tmp_path / "a.csv")
    lines[9] = ",8,4"
    (tmp_path / "a.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"column 'user' has a missing id at row 8"):
        read_interactions(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("user,item\n")
    with pytest.raises(ValueError, match="empty"):
        read_interactions(tmp_path / "b.csv")


def test_the_readers_build_no_frame_of_the_whole_file(tmp_path, data_dir, monkeypatch):
    """Before, every reader built pandas' frame of the whole file (a 50 MB CSV reached 2.2 GB): now none calls
    pandas' readers at all."""
    frame = pd.DataFrame({"user": [1, 1, 2], "item": ["a", "b", "a"], "rating": [4.0, 5.0, 3.0], "timestamp": [3, 2, 1]})
    frame.to_csv(tmp_path / "x.csv", index=False)
    frame.to_parquet(tmp_path / "x.parquet")

    def refuse(*args, **kwargs):
        raise AssertionError("a reader read the whole file through pandas")

    monkeypatch.setattr(pd, "read_csv", refuse)
    monkeypatch.setattr(pd, "read_parquet", refuse)
    expected = Interactions.from_pandas(frame, rating="rating", timestamp="timestamp")
    same(read_interactions(tmp_path / "x.csv"), expected)
    same(read_interactions(tmp_path / "x.parquet"), expected)
    same(read_parquet(tmp_path / "x.parquet", rating="rating", timestamp="timestamp"), expected)
    same(read_csv(tmp_path / "x.csv", rating="rating", timestamp="timestamp"), expected)
    assert load_movielens("ml-100k", data_dir=data_dir).nnz == 100_000
