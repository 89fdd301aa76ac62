"""A command line that reads any interaction file: columns by content, never by the file's name; flags for the rest."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd

from aerec.cli import main
from aerec.data import load_movielens
from aerec.data.readers import read_interactions
from tests.conftest import REPO

SHIPPED = REPO / "data" / "ml-latest-small" / "ratings.csv"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_renamed_movielens_file_is_read_by_its_columns(tmp_path, capsys):
    """ratings.csv copied as my_ratings.csv was refused (userId/movieId), named ratings.csv it was read."""
    shutil.copy(SHIPPED, tmp_path / "my_ratings.csv")
    renamed = read_interactions(tmp_path / "my_ratings.csv")
    shipped = load_movielens("ml-latest-small")
    assert (renamed.matrix != shipped.matrix).nnz == 0 and (renamed.user_ids == shipped.user_ids).all()
    code, out, _ = run(capsys, "evaluate", "--model", "popularity", "--dataset", tmp_path / "my_ratings.csv",
                       "--n-heldout", "60", "--json")  # 60: the shipped set's held-out users, known by its name
    assert code == 0
    code, shipped_out, _ = run(capsys, "evaluate", "--model", "popularity", "--json")
    assert json.loads(out)["metrics"] == json.loads(shipped_out)["metrics"]


def test_a_headerless_file_of_any_name_is_user_item_rating_timestamp(tmp_path, data_dir):
    shutil.copy(data_dir / "ml-100k" / "u.data", tmp_path / "interactions.txt")
    read = read_interactions(tmp_path / "interactions.txt")
    reference = load_movielens("ml-100k", data_dir=data_dir)
    assert (read.matrix != reference.matrix).nnz == 0 and (read.timestamps == reference.timestamps).all()


def test_train_evaluate_recommend_similar_embed_on_a_file_with_its_own_column_names(tmp_path, capsys):
    frame = pd.read_csv(SHIPPED).rename(columns={"userId": "customer", "movieId": "sku", "rating": "stars"})
    frame = frame[frame.sku.isin(frame.sku.value_counts().index[:1500])]  # EASE on 1,500 items, not 9,724: seconds
    frame.to_csv(tmp_path / "shop.tsv", sep="\t", index=False)
    frame[frame.customer <= 3].to_csv(tmp_path / "histories.tsv", sep="\t", index=False)
    columns = ["--user-col", "customer", "--item-col", "sku"]
    model = tmp_path / "model"
    code, _, err = run(capsys, "train", "--model", "ease", "--dataset", tmp_path / "shop.tsv", *columns, "--out", model)
    assert code == 0, err
    metadata = json.loads((model / "config.json").read_text())["metadata"]
    assert metadata["reading"] == {"user_col": "customer", "item_col": "sku"} and metadata["history_threshold"] == 3.5
    code, out, err = run(capsys, "evaluate", "--model", model, "--json")  # reads the file as it was read in training
    assert code == 0, err
    assert json.loads(out)["metrics"]["ndcg@100"] > 0.1
    code, _, err = run(capsys, "recommend", "--model", model, "--input", tmp_path / "histories.tsv", *columns,
                       "--n", "5", "--output", tmp_path / "recs.csv")
    assert code == 0, err
    assert "binarized (as the model's training data): ratings > 3.5 kept as 1" in err
    recs = pd.read_csv(tmp_path / "recs.csv")
    assert sorted(recs.user.unique()) == [1, 2, 3] and len(recs) == 15
    liked = frame[(frame.customer == 1) & (frame.stars > 3.5)].sku
    assert not set(recs[recs.user == 1].item) & set(liked)
    code, _, err = run(capsys, "recommend", "--model", model, "--input", tmp_path / "histories.tsv", *columns,
                       "--binarize", "none", "--n", "5", "--output", tmp_path / "raw.csv")
    assert code == 0 and "binarized" not in err
    assert not pd.read_csv(tmp_path / "raw.csv").equals(recs)  # every rating, at its value, is now a like
    code, out, _ = run(capsys, "similar", "--model", model, "--items", "1,260", "--n", "3")
    assert code == 0 and pd.read_csv(pd.io.common.StringIO(out)).shape == (6, 4)
    code, _, err = run(capsys, "embed", "--model", model, "--output", tmp_path / "items.parquet")
    assert code == 0, err  # EASE's item vectors: its columns of B
    items = pd.read_parquet(tmp_path / "items.parquet")
    assert len(items) == len(np.stack(items.embedding)[0]) == metadata["split"]["items"]
    code, _, err = run(capsys, "embed", "--model", model, "--input", tmp_path / "histories.tsv", *columns,
                       "--output", tmp_path / "users.parquet")
    assert code == 2 and "EASE learns no user representation" in err


def test_reading_flags_prepare_the_training_data(tmp_path, capsys):
    frame = pd.DataFrame({"u": [1, 1, 1, 2, 2, 3], "i": ["a", "b", "c", "a", "b", "a"], "r": [5, 4, 1, 5, 2, 4]})
    frame.to_csv(tmp_path / "tiny.csv", sep=";", index=False)
    read = read_interactions(tmp_path / "tiny.csv", user="u", item="i", rating="r")
    assert read.nnz == 6 and set(read.matrix.data) == {1.0, 2.0, 4.0, 5.0}
    assert set(read_interactions(tmp_path / "tiny.csv", user="u", item="i", rating=False).matrix.data) == {1.0}
    from aerec.cli.common import Reading, load_dataset

    data = load_dataset(str(tmp_path / "tiny.csv"), None, reading=Reading(user_col="u", item_col="i", rating_col="r",
                                                                           binarize=3.0, min_user_count=2))
    assert (data.n_users, data.n_items, data.nnz) == (1, 2, 2)  # > 3: (1, a), (1, b), (2, a), (3, a); >= 2: user 1
    code, _, err = run(capsys, "evaluate", "--model", "popularity", "--dataset", tmp_path / "tiny.csv",
                       "--user-col", "u", "--item-col", "i", "--rating-col", "r", "--binarize", "3",
                       "--min-user-count", "2")
    assert code == 2 and "1 users x 2 items" in err  # read and prepared as above; then too small to split


def test_errors_advise_flags_not_keyword_arguments(tmp_path, capsys, data_dir):
    pd.DataFrame({"user": [1, 1], "item": [5, 5]}).to_csv(tmp_path / "twice.csv", index=False)
    code, _, err = run(capsys, "train", "--model", "ease", "--dataset", tmp_path / "twice.csv", "--out", tmp_path / "m")
    assert code == 2 and "pass --duplicates first, last, sum, mean or max" in err and "duplicates='first'" not in err
    code, _, err = run(capsys, "evaluate", "--model", "popularity", "--dataset", tmp_path / "twice.csv",
                       "--duplicates", "first", "--protocol", "per-user")
    assert "duplicated" not in err
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    lines = (data_dir / "ml-100k" / "u.data").read_text().splitlines()
    (folder / "u.data").write_text("\n".join(lines[:-1]) + "\n")  # one rating short of the published file
    code, _, err = run(capsys, "evaluate", "--model", "popularity", "--dataset", folder / "u.data")
    assert code == 2 and "Pass --no-verify to read it anyway" in err and "verify=False" not in err
    code, _, err = run(capsys, "evaluate", "--model", "popularity", "--dataset", folder / "u.data", "--no-verify")
    assert code == 0, err
    pd.DataFrame({"customer": [1], "sku": [2]}).to_csv(tmp_path / "shop.csv", index=False)
    code, _, err = run(capsys, "train", "--model", "ease", "--dataset", tmp_path / "shop.csv", "--out", tmp_path / "m")
    assert code == 2 and "no item column among ['customer', 'sku']" in err and "--user-col" in err
    code, _, err = run(capsys, "train", "--model", "ease", "--dataset", "ml-100k", "--item-col", "x",
                       "--out", tmp_path / "m")
    assert code == 2 and "are for a file; a known dataset or folder is read as MovieLens" in err
    assert not (tmp_path / "m").exists()
