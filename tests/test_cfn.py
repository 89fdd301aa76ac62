"""CFN: the emphasized denoising loss, side information, cold items, saving, bad input; the cold-start split."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import aerec
from aerec.data import cold_start_split
from aerec.data.batching import RowBatch
from aerec.data.features import features_from_pandas
from aerec.data.interactions import Interactions
from aerec.models import CFN
from aerec.training_state import TrainingState

SMALL = {"hidden": 24, "epochs": 40, "batch_size": 16, "device": "cpu", "lr": 0.1, "lr_decay": 0.05}


def genre_ratings(n_users=150, n_items=80, seed=0):
    """Ratings driven by each item's genre (and a user bias): what side features can predict for a cold item."""
    rng = np.random.default_rng(seed)
    genre = rng.integers(0, 4, n_items)
    taste = rng.normal(0, 1.2, (n_users, 4))
    rows = []
    for u in range(n_users):
        for i in rng.choice(n_items, size=min(25, n_items // 2), replace=False):
            rows.append((u, i, float(np.clip(np.round(3 + taste[u, genre[i]] + rng.normal(0, 0.3)), 1, 5))))
    frame = pd.DataFrame(rows, columns=["user", "item", "rating"])
    features = features_from_pandas(pd.DataFrame({"item": np.arange(n_items), "genre": [f"g{g}" for g in genre]}),
                                    id="item")
    return Interactions.from_pandas(frame, "user", "item", "rating"), features


def rmse(model, part):
    coo = part.matrix.tocoo()
    return float(np.sqrt(np.mean((model.predict(coo.row, coo.col) - coo.data) ** 2)))


def test_cold_items_are_predicted_from_their_side_features():
    data, features = genre_ratings()
    split = cold_start_split(data, by="item", test_fraction=0.2, seed=1)
    cold = np.unique(split.test.matrix.tocoo().col)
    assert split.train.matrix[:, cold].nnz == 0 and len(cold) == 16  # every rating of the cold items held out
    with_side = CFN(**SMALL).fit(split.train, item_features=features)
    without = CFN(**SMALL, side_information=False).fit(split.train, item_features=features)
    global_mean = float(split.train.matrix.data.mean())
    baseline = float(np.sqrt(np.mean((split.test.matrix.data - global_mean) ** 2)))
    assert rmse(with_side, split.test) < 0.95 * min(rmse(without, split.test), baseline)
    assert without.side_ is None and with_side.side_names_ == ["genre=g0", "genre=g1", "genre=g2", "genre=g3"]


def test_a_row_without_ratings_is_centred_on_the_mean_training_rating():
    """The module text's cold row: its mean is the mean training rating, at fit (I-CFN's cold items) and at
    scoring (a U-CFN user given without ratings), not the mean of the rows' means (which scoring used)."""
    data, _ = genre_ratings(n_users=40, n_items=30)
    ratings = data.matrix.tolil()
    ratings[0, :] = 5.0  # one user rates every item (twice as many as the others): entries' mean != rows' means' mean
    ratings = sp.vstack([ratings.tocsr(), sp.csr_matrix((1, ratings.shape[1]), dtype=np.float32)]).tocsr()  # cold
    model = CFN(kind="user", hidden=8, epochs=2, batch_size=16, device="cpu").fit(ratings)
    expected = float(np.mean((ratings.data.astype(np.float64) - model.scale_[0]) / model.scale_[1]))
    assert model.row_means_[-1] == pytest.approx(expected, abs=1e-6)
    assert abs(float(model.row_means_[:-1].mean()) - expected) > 1e-3  # the two candidates differ here
    _, means, centred = model._scaled_rows(sp.csr_matrix((2, ratings.shape[1]), dtype=np.float32),
                                           model._training_mean(model.ratings_))
    assert means.tolist() == pytest.approx([expected] * 2, abs=1e-6) and centred.nnz == 0


def test_the_loss_weighs_hidden_and_kept_ratings_by_alpha_and_beta():
    data, _ = genre_ratings(n_users=30, n_items=20)
    model = CFN(hidden=8, epochs=1, batch_size=8, device="cpu", alpha=2.0, beta=0.5, hide=0.0).fit(data)
    rows = model.input_rows_[:5]
    batch = RowBatch(np.arange(5), rows, torch.device("cpu"))
    state = TrainingState(generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = model.batch_loss(model.module_, batch, state)["loss"]
        pred = model.module_.observed(batch.pattern, batch.parts.val, None, batch.pattern)
    expected = 0.5 * ((pred - batch.parts.val) ** 2).sum() / 5  # nothing hidden: beta on every rating, mean over rows
    torch.testing.assert_close(loss, expected)
    model.set_params(hide=0.999999, alpha=2.0)  # every row would lose all its ratings: they keep them all (beta)
    with torch.no_grad():
        torch.testing.assert_close(model.batch_loss(model.module_, batch, state)["loss"], expected)


def test_reference_settings_schedule_and_defaults():
    data, _ = genre_ratings(n_users=30, n_items=20)
    model = CFN(hidden=8, epochs=3, batch_size=8, device="cpu").fit(data)
    assert model.setting("alpha") == pytest.approx(0.91210902705444) and CFN().setting("hidden") == (770,)
    assert CFN(kind="user").setting("hidden") == (700,) and model.setting("hidden") == 8
    lr, decay = model.setting("lr"), model.setting("lr_decay")
    assert model.learning_rate() == pytest.approx(lr / (1 + decay))  # epoch 1's rate
    optimizer = model._loop.optimizers[0]
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["weight_decay"] == model.setting("l2")
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr / (1 + 4 * decay))  # set for the 4th epoch


def test_a_stacked_network_pretrains_layer_by_layer():
    data, _ = genre_ratings(n_users=40, n_items=30)
    model = CFN(hidden=(16, 8), epochs=5, batch_size=8, device="cpu", pretrain=True, pretrain_epochs=2).fit(data)
    names = [sorted(k for k in epoch if k.endswith("_loss")) for epoch in model.history_.epochs]
    assert names[0] == ["layer1_loss"] and names[2] == ["layer2_loss"] and names[4] == ["stack_loss"]
    assert np.isfinite(model.predict(np.arange(5), np.arange(5))).all()


def test_saved_with_its_side_features(tmp_path):
    data, features = genre_ratings(n_users=40, n_items=30)
    model = CFN(**{**SMALL, "epochs": 2}).fit(data, item_features=features)
    aerec.save(model, tmp_path / "cfn")
    back = aerec.load(tmp_path / "cfn")
    users, items = np.arange(30), np.arange(30)[::-1]
    np.testing.assert_array_equal(back.predict(users, items), model.predict(users, items))
    assert back.side_names_ == model.side_names_ and back.side_spec_ == model.side_spec_


def test_bad_side_features_are_refused_by_name():
    data, features = genre_ratings(n_users=30, n_items=20)
    with pytest.raises(ValueError, match=r"item_features has 5 rows; expected one per training item \(20\)"):
        CFN(**SMALL).fit(data, item_features=np.ones((5, 2)))
    with pytest.raises(ValueError, match="item_features holds NaN"):
        CFN(**SMALL).fit(data, item_features=np.full((20, 2), np.nan))
    with pytest.raises(TypeError, match="SideFeatures are lined up by id"):
        CFN(**SMALL).fit(data.matrix, item_features=features)
    with pytest.raises(ValueError, match="hide"):
        CFN(hide=1.0).fit(data)


def test_cold_start_split_bad_input():
    data, _ = genre_ratings(n_users=30, n_items=20)
    with pytest.raises(ValueError, match="by='movie'"):
        cold_start_split(data, by="movie")
    with pytest.raises(ValueError, match="expected their sum below 1"):
        cold_start_split(data, test_fraction=0.5, validation_fraction=0.5)
    split = cold_start_split(data, by="user", test_fraction=0.1, validation_fraction=0.1, seed=3)
    test_users = set(split.test.matrix.tocoo().row)
    validation_users = set(split.validation.matrix.tocoo().row)
    assert len(test_users) == len(validation_users) == 3 and not test_users & validation_users
    assert split.train.matrix[sorted(test_users)].nnz == 0
    assert split.train.nnz + split.test.nnz + split.validation.nnz == data.nnz
    again = cold_start_split(data, by="user", test_fraction=0.1, validation_fraction=0.1, seed=3)
    assert (again.test.matrix != split.test.matrix).nnz == 0
    assert sp.issparse(split.train.matrix)


# -- the command line and the benchmark runner -------------------------------------------------------------

def test_cli_trains_cfn_with_item_features_on_the_item_cold_protocol(tmp_path, capsys, data_dir):
    from aerec.cli import main

    code = main(["train", "--model", "cfn", "--dataset", "ml-100k", "--data-dir", str(data_dir), "--protocol",
                 "item-cold", "--item-features", "ml-100k", "--param", "epochs=2", "--param", "hidden=16",
                 "--param", "progress=false", "--out", str(tmp_path / "cfn"), "--quiet"])
    _, err = capsys.readouterr()
    assert code == 0, err
    model = aerec.load(tmp_path / "cfn")
    assert model.side_ is not None and "genres=Comedy" in model.side_names_
    code = main(["evaluate", "--model", str(tmp_path / "cfn"), "--data-dir", str(data_dir), "--json", "--quiet"])
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert code == 0 and report["protocol"] == "item-cold" and report["metrics"]["rmse"] < 1.3
    code = main(["evaluate", "--model", "ease", "--dataset", "ml-100k", "--data-dir", str(data_dir),
                 "--item-features", "ml-100k", "--quiet"])
    err = capsys.readouterr().err  # only the models that take *item* features are named
    assert code == 2 and err.endswith("EASE takes no item side features; the models that do: cfn\n"), err
    code = main(["evaluate", "--model", "cfn", "--dataset", "ml-100k", "--data-dir", str(data_dir), "--protocol",
                 "ratings", "--item-features", str(tmp_path / "nothing.csv"), "--quiet"])
    assert code == 2 and "--item-features" in capsys.readouterr().err


def test_benchmark_runs_the_item_cold_protocol_with_the_datasets_features(tmp_path, data_dir):
    from aerec.benchmark.runner import run_benchmark

    spec = {"name": "cold", "seeds": [1], "metrics": ["rmse"], "baseline": "bias",
            "protocol": {"name": "item_cold"}, "tuning": {"trials": 1, "metric": "rmse"},
            "datasets": [{"name": "ml-100k", "item_features": True}],
            "models": {"bias": {}, "cfn": {"fixed": {"epochs": 2, "hidden": 16, "device": "cpu"}, "space": {}}}}
    cells = run_benchmark(spec, tmp_path / "store.sqlite")
    cfn, bias = cells[("ml-100k", 1, "cfn")], cells[("ml-100k", 1, "bias")]
    assert 0.5 < cfn["test"]["rmse"] < 1.5 and 0.5 < bias["test"]["rmse"] < 1.5


def test_u_cfn_scores_cold_users_of_the_ml1m_layout_from_users_dat(tmp_path, capsys, data_dir):
    """ML-1M's ratings are not on these machines: its real movies.dat and users.dat beside a synthetic ratings.dat
    whose ratings depend on gender; U-CFN with users.dat's demographics predicts cold users (every rating held out)
    by their gender, the same network without them cannot."""
    from aerec.cli import main
    from aerec.data import load_movielens
    from aerec.data.features import UnknownFeatureIdsWarning, load_user_features

    folder = tmp_path / "ml-1m"
    folder.mkdir()
    for name in ("movies.dat", "users.dat"):
        (folder / name).write_bytes((data_dir / "ml-1m" / name).read_bytes())
    users = load_user_features(folder)
    movies = [int(line.split("::")[0]) for line in (folder / "movies.dat").read_text(encoding="latin-1").splitlines()]
    female = {int(line.split("::")[0]): line.split("::")[1] == "F"
              for line in (folder / "users.dat").read_text().splitlines()}
    rng = np.random.default_rng(0)
    lines = []
    for user in list(female)[:300]:
        for item in rng.choice(movies[:120], 20, replace=False):
            liked = (item % 2 == 0) == female[user]  # women like the even movies, men the odd ones
            stars = int(np.clip(round(3 + (1.2 if liked else -1.2) + rng.normal(0, 0.4)), 1, 5))
            lines.append(f"{user}::{item}::{stars}::{978300000 + len(lines)}")
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n")
    data = load_movielens(folder, verify=False)
    split = cold_start_split(data, by="user", test_fraction=0.2, seed=0)
    settings = dict(kind="user", hidden=16, epochs=30, batch_size=32, lr=0.05, device="cpu")
    with pytest.warns(UnknownFeatureIdsWarning, match="5740 of 6040 feature rows name users"):  # counted, left out
        with_side = CFN(**settings).fit(split.train, user_features=users)
    without = CFN(**settings, side_information=False).fit(split.train, user_features=users)
    assert with_side.side_.shape == (240 + 60, 30)  # every user of the split: Strub et al.'s 30 demographics
    assert rmse(with_side, split.test) < 0.85 * rmse(without, split.test)  # 0.97 against 1.19 (seed 0)
    code = main(["train", "--model", "cfn", "--dataset", str(folder), "--no-verify", "--protocol", "user-cold",
                 "--user-features", str(folder), "--param", "kind=user", "--param", "epochs=2", "--param",
                 "hidden=8", "--out", str(tmp_path / "model"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert "gender=F" in aerec.load(tmp_path / "model").side_names_


def ratings_with_unrated_items() -> sp.csr_matrix:
    """30 users x 10 items, items 6-9 without any rating (as a cold-start split leaves some items)."""
    rng = np.random.default_rng(0)
    dense = np.zeros((30, 10), dtype=np.float32)
    dense[:, :6] = rng.integers(1, 6, (30, 6)) * (rng.random((30, 6)) < 0.7)
    return sp.csr_matrix(dense)


def test_a_batch_of_items_without_training_ratings_trains_without_error():
    """A cold-start split leaves items without training ratings; with batch_size=1 each was once a batch of its
    own, whose loss had no gradient: training stopped (such rows are now left out of the batches)."""
    model = CFN(hidden=8, epochs=2, batch_size=1, seed=0, device="cpu").fit(ratings_with_unrated_items())
    assert len(model.history_.epochs) == 2 and np.isfinite(model.predict(np.arange(3), np.full(3, 8))).all()


def test_rows_without_training_ratings_are_left_out_of_the_batches(monkeypatch):
    """As the reference's trainer: every batch holds rows that have a loss (items 6-9 have no rating)."""
    seen, batch_loss = [], CFN.batch_loss

    def recording(self, module, batch, state):
        seen.append(np.asarray(batch.index))
        return batch_loss(self, module, batch, state)

    monkeypatch.setattr(CFN, "batch_loss", recording)
    CFN(hidden=8, epochs=3, batch_size=4, seed=0, device="cpu").fit(ratings_with_unrated_items())
    assert [len(index) for index in seen] == [4, 2] * 3
    assert sorted(np.concatenate(seen[:2]).tolist()) == list(range(6))
