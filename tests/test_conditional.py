"""Users' side features as a condition of Mult-VAE, Mult-DAE and CDAE (issue 20): cold users scored from their features,
features looked up by raw id when scoring, saved with the model, bad input refused by name."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import aerec
from aerec.data.features import features_from_pandas
from aerec.data.interactions import Interactions
from aerec.evaluation import conditioning_rows, evaluate_ranking
from aerec.models import CDAE, MultDAE, MultVAE

SETTINGS = dict(hidden=32, latent=8, epochs=40, batch_size=50, lr=3e-3, device="cpu", seed=0)


def grouped(n_users=300, n_items=60, seed=0):
    """Users of two groups (their one feature): group a likes items 0-19, group b items 20-39; every history is
    8 items of the group's 20. Returns the likes (Interactions, user ids "u0"...), the features and each row's
    group."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 2, n_users)
    rows = [(f"u{u}", int(i)) for u in range(n_users) for i in 20 * group[u] + rng.choice(20, 8, replace=False)]
    frame = pd.DataFrame(rows, columns=["user", "item"])
    data = Interactions.from_pandas(frame, "user", "item")
    data = Interactions.from_csr(data.matrix, data.user_ids, data.item_ids)
    features = features_from_pandas(pd.DataFrame({"user": [f"u{u}" for u in range(n_users)],
                                                  "group": np.where(group == 1, "b", "a")}), id="user")
    return data, features, group[[int(user[1:]) for user in data.user_ids]]  # by row (ids sort as text)


def in_group_share(ids, groups):
    """The share of the top ids that are the user's group's items."""
    return float(np.mean([(ids[r] // 20 == groups[r]).mean() for r in range(len(ids))]))


@pytest.mark.parametrize("cls", [MultVAE, MultDAE])
def test_cold_users_are_ranked_by_their_features(cls):
    data, features, group = grouped()
    train = data.select(np.arange(240))
    conditioned = cls(**SETTINGS, side_information=True).fit(train, user_features=features)
    plain = cls(**SETTINGS).fit(train, user_features=features)  # side_information=False: the features unused
    cold = Interactions(sp.csr_matrix((60, data.n_items), dtype=np.float32), data.user_ids[240:], data.item_ids)
    ids, _ = conditioned.recommend(cold, n=10)  # the features looked up by the users' ids
    assert in_group_share(ids, group[240:]) > 0.9
    assert 0.3 < in_group_share(plain.recommend(cold, n=10)[0], group[240:]) < 0.7  # the same list for everyone
    # one row of features per row, given: the same ranking
    rows = features.align(cold.user_ids, warn=False).matrix
    np.testing.assert_array_equal(conditioned.recommend(cold.matrix, n=10, user_features=rows)[0], ids)
    # a frame of histories (users with a few items) is lined up and its users' features looked up by id
    frame = data.select(np.arange(240, 300)).to_pandas()
    recs = conditioned.recommend(frame, n=5)
    assert set(recs["user"]) == set(data.user_ids[240:]) and len(recs) == 60 * 5
    assert not hasattr(plain, "user_features_") and conditioned.user_feature_names_ == ["group=a", "group=b"]


CDAE_SETTINGS = dict(hidden=16, epochs=40, device="cpu", seed=0)


def test_a_conditional_cdae_ranks_cold_users_by_their_features_and_keeps_them_when_saved(tmp_path):
    data, features, group = grouped()
    train = data.select(np.arange(240))
    conditioned = CDAE(**CDAE_SETTINGS, side_information=True).fit(train, user_features=features)
    plain = CDAE(**CDAE_SETTINGS).fit(train, user_features=features)
    cold = Interactions(sp.csr_matrix((60, data.n_items), dtype=np.float32), data.user_ids[240:], data.item_ids)
    ids, _ = conditioned.recommend(cold, n=10)  # an empty row folded in, the features looked up by id
    assert in_group_share(ids, group[240:]) > 0.9
    assert 0.3 < in_group_share(plain.recommend(cold, n=10)[0], group[240:]) < 0.7
    assert conditioned.module_.decoder.weight.shape == (data.n_items, 16 + 2)
    # the side features travel with every path that folds a row in
    rows = features.align(cold.user_ids, warn=False).matrix
    np.testing.assert_array_equal(conditioned.recommend(cold.matrix, n=10, user_features=rows)[0], ids)
    assert conditioned.user_embeddings(cold).shape == (60, 16) and conditioned.user_vectors(cold).shape == (60, 16)
    known = conditioned.score_known_users(np.arange(5), train.select(np.arange(5)))
    blind = conditioned.score_known_users(np.arange(5), train.select(np.arange(5)).matrix)  # no ids: no features
    assert known.shape == (5, data.n_items) and not np.array_equal(known, blind)
    aerec.save(conditioned, tmp_path / "cdae")
    loaded = aerec.load(tmp_path / "cdae")
    np.testing.assert_array_equal(loaded.score(cold), conditioned.score(cold))
    with pytest.raises(ValueError, match="user_features given to a CDAE that reads none"):
        plain.recommend(cold.matrix, n=3, user_features=rows)


def test_an_unconditioned_cdae_draws_the_weights_it_always_drew():
    """``side_information=True`` adds its weights after the others: without it, every seed's network is unchanged."""
    from aerec.models.cdae import CDAENet
    import torch

    plain = CDAENet(5, 7, 3, 0.0, "sigmoid", generator=torch.Generator().manual_seed(3))
    conditioned = CDAENet(5, 7, 3, 0.0, "sigmoid", generator=torch.Generator().manual_seed(3), n_side=2)
    torch.testing.assert_close(conditioned.encoder.weight, plain.encoder.weight, rtol=0, atol=0)
    assert conditioned.decoder.weight.shape == (7, 5) and conditioned.side_encoder.weight.shape == (3, 2)
    assert not hasattr(plain, "side_encoder") and plain.decoder.weight.shape == (7, 3)


def test_evaluation_with_the_users_features_beats_popularity_on_cold_users():
    data, features, group = grouped()
    model = MultVAE(**SETTINGS, side_information=True).fit(data.select(np.arange(240)), user_features=features)
    test = data.select(np.arange(240, 300))
    cold = Interactions(sp.csr_matrix(test.shape, dtype=np.float32), test.user_ids, test.item_ids)
    side = conditioning_rows(model, cold)
    with_features = evaluate_ranking(model, cold.matrix, test.matrix, ks=(10,), user_features=side).metrics
    blind = evaluate_ranking(model, cold.matrix, test.matrix, ks=(10,)).metrics  # rows without ids: no features
    # 10 of the group's 20 items hold 4 of the 8 relevant ones on average: recall@10 0.5 is the features' best
    assert with_features["recall@10"] > 0.45 and blind["recall@10"] < 0.35, (with_features, blind)


def test_validation_users_are_scored_with_their_features():
    data, features, _ = grouped()
    fold_in = data.select(np.arange(240, 300))
    coo = fold_in.matrix.tocoo()
    first = np.zeros(fold_in.nnz, dtype=bool)
    first[np.unique(coo.row, return_index=True)[1]] = True  # each validation user keeps one item, the rest held out
    model = MultVAE(**dict(SETTINGS, epochs=6), side_information=True)
    model.fit(data.select(np.arange(240)), validation=(fold_in.keep_entries(first), fold_in.keep_entries(~first)),
              user_features=features)
    curve = model.history_.column("validation")
    assert len(curve) == 6 and np.isfinite(curve).all()


def test_saved_and_loaded_with_its_feature_table(tmp_path):
    data, features, _ = grouped(n_users=80)
    model = MultDAE(**dict(SETTINGS, epochs=3), side_information=True).fit(data, user_features=features)
    aerec.save(model, tmp_path / "m")
    loaded = aerec.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.score(data), model.score(data))
    assert loaded.user_feature_ids_.tolist() == [f"u{u}" for u in range(80)]


def test_bad_user_features_are_refused_by_name():
    data, features, _ = grouped(n_users=60)
    with pytest.raises(ValueError, match=r"side_information=True\) needs user_features"):
        MultVAE(**dict(SETTINGS, epochs=1), side_information=True).fit(data)
    with pytest.raises(ValueError, match="user_features has 3 rows; expected one per training user"):
        MultVAE(**dict(SETTINGS, epochs=1), side_information=True).fit(data, user_features=np.ones((3, 2)))
    model = MultVAE(**dict(SETTINGS, epochs=1), side_information=True).fit(data, user_features=features)
    with pytest.raises(ValueError, match=r"user_features has shape \(60, 3\); expected .* \(60, 2\)"):
        model.recommend(data.matrix, n=3, user_features=np.ones((60, 3)))
    plain = MultVAE(**dict(SETTINGS, epochs=1)).fit(data)
    with pytest.raises(ValueError, match="user_features given to a MultVAE that reads none"):
        plain.recommend(data.matrix, n=3, user_features=np.ones((60, 2)))


def test_the_benchmark_tunes_and_tests_a_conditional_model_on_users_without_history(tmp_path, ml100k):
    """The strong_cold protocol: the strong split's held-out users ranked from no history, with their features."""
    from aerec.benchmark.runner import run_benchmark
    from aerec.data import strong_generalization
    from aerec.models import Popularity

    spec = {"seeds": [98765], "protocol": {"name": "strong_cold", "n_heldout": 100}, "tuning": {"trials": 2},
            "metrics": ["recall@20", "ndcg@100"],
            "datasets": [{"name": "ml-100k", "user_features": "ml-100k"}],
            "models": {"popularity": {},
                       "conditional": {"model": "mult_dae", "fixed": {"epochs": 2, "device": "cpu", "hidden": 32,
                                                                      "latent": 8, "side_information": True},
                                       "space": {"lr": {"low": 1e-3, "high": 1e-2, "log": True}}}}}
    cells = run_benchmark(spec, tmp_path / "store.sqlite")
    cold = strong_generalization(ml100k, n_heldout=100, seed=98765).without_history()
    by_hand = evaluate_ranking(Popularity().fit(cold.train), cold.test_fold_in.matrix, cold.test_heldout.matrix,
                               ks=(20, 100), metrics=("recall", "ndcg"))
    popularity = cells[("ml-100k", 98765, "popularity")]
    assert popularity["test"] == pytest.approx({m: by_hand.metrics[m] for m in ("recall@20", "ndcg@100")}, abs=1e-12)
    conditional = cells[("ml-100k", 98765, "conditional")]
    assert len(conditional["users"]) == 100 and conditional["test"]["ndcg@100"] > 0


def test_cli_trains_and_evaluates_a_conditional_mult_vae_with_ml100k_demographics(tmp_path, capsys, data_dir):
    import json

    from aerec.cli import main

    code = main(["train", "--model", "mult_vae", "--dataset", "ml-100k", "--data-dir", str(data_dir),
                 "--user-features", "ml-100k", "--param", "side_information=true", "--param", "epochs=2",
                 "--param", "hidden=32", "--param", "latent=8", "--out", str(tmp_path / "m"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    model = aerec.load(tmp_path / "m")
    assert model.conditioned and model.user_features_.shape == (943, 24) and "gender=F" in model.user_feature_names_
    capsys.readouterr()
    code = main(["evaluate", "--model", str(tmp_path / "m"), "--data-dir", str(data_dir), "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["metrics"]["ndcg@100"] > 0.02  # two epochs of 2 updates: the plumbing, not the model
    code = main(["evaluate", "--model", str(tmp_path / "m"), "--data-dir", str(data_dir), "--protocol", "strong-cold",
                 "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)  # the same test users, ranked from no history: every one of their likes held out
    assert report["protocol"] == "strong-cold" and report["metrics"]["ndcg@100"] > 0.02, report


def test_aerec_recommend_finds_each_users_features_by_id(tmp_path, capsys):
    """The single-file command and the sharded job pass the rows with their users' ids."""
    from aerec.cli import main
    from aerec.inference import read_recommendations

    data, features, group = grouped()
    model = MultVAE(**SETTINGS, side_information=True).fit(data.select(np.arange(240)), user_features=features)
    aerec.save(model, tmp_path / "m")
    cold = pd.DataFrame({"user": data.user_ids[240:], "item": 0})  # one item each: all of group a's first movie
    cold.to_csv(tmp_path / "cold.csv", index=False)
    for output in ("recs.csv", "job/"):
        code = main(["recommend", "--model", str(tmp_path / "m"), "--input", str(tmp_path / "cold.csv"), "--n", "10",
                     "--output", str(tmp_path / output), "--quiet"])
        assert code == 0, capsys.readouterr().err
        recs = (pd.read_csv(tmp_path / output) if output.endswith(".csv") else
                read_recommendations(tmp_path / output))
        row_of = {user: row for row, user in enumerate(data.user_ids)}
        share = np.mean([int(item) // 20 == group[row_of[user]] for user, item in zip(recs["user"], recs["item"])])
        assert share > 0.9, (output, share)
