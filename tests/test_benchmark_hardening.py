"""What a review of the benchmark package found: each case failed (or misled) before its fix."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import optuna
import pandas as pd
import pytest

from aerec.benchmark import SpecError
from aerec.benchmark.plots import _best_so_far
from aerec.benchmark.report import per_user_means
from aerec.benchmark.runner import load_data, run_benchmark
from aerec.benchmark.spec import load_spec
from aerec.benchmark.stats import compare, holm, paired_tests
from aerec.search_space import Choice, trial_params

BASE = {"name": "hard", "seeds": [98765], "metrics": ["ndcg@100"], "protocol": {"name": "strong", "n_heldout": 100},
        "datasets": [{"name": "ml-100k"}]}


def test_a_tuple_choice_is_recorded_refitted_and_grid_searched_as_its_value():
    """Optuna stores a tuple choice's index: records showed hidden=1, a restart refitted hidden=1, and a grid
    of the tuples failed every trial (the runner now maps stored params with trial_params and grids the indices)."""
    from aerec.benchmark.runner import cell_sampler
    from aerec.benchmark.spec import ModelSpec, TuningSpec

    space = {"hidden": Choice((600, 200), (200,)), "dropout": Choice(0.2, 0.5)}
    model_spec = ModelSpec("ae", "autoencoder", {}, space)
    study = optuna.create_study(sampler=cell_sampler(TuningSpec(sampler="grid"), model_spec, seed=1, n_finished=0))
    seen = []

    def objective(trial):
        params = {name: entry.suggest(trial, name) for name, entry in space.items()}
        seen.append(params["hidden"])
        return len(params["hidden"]) + params["dropout"]

    study.optimize(objective, n_trials=4)
    assert all(trial.state.name == "COMPLETE" for trial in study.trials)
    assert sorted(seen) == [(200,), (200,), (600, 200), (600, 200)]
    assert study.best_trial.params == {"hidden": 1, "dropout": 0.2}  # what Optuna keeps: the index
    assert trial_params(space, study.best_trial.params) == {"hidden": (200,), "dropout": 0.2}


def test_a_seconds_budget_whose_every_trial_fails_ends_with_an_error(tmp_path, data_dir):
    """A trial failing while its model was built spent no counted time: the loop never ended."""
    spec = {**BASE, "tuning": {"seconds": 60},
            "models": {"recvae": {"fixed": {"epochs": 1, "device": "cpu"}, "space": {"beta": {"choices": [0.1, 0.2]}}}}}
    with pytest.raises(RuntimeError, match=r"the last 10 trials failed .*gamma"):
        run_benchmark(spec, tmp_path / "store.sqlite")


def test_an_allowed_change_retunes_a_cell_left_half_tuned_by_the_old_spec(tmp_path, data_dir):
    """The old spec's trials counted in the new budget and could be chosen with values outside the new space."""
    store = tmp_path / "store.sqlite"
    old = {**BASE, "tuning": {"trials": 2}, "models": {"ease": {"fixed": {"device": "cpu"},
                                                               "space": {"l2": {"low": 10.0, "high": 20.0}}}}}
    run_benchmark(old, store)
    with sqlite3.connect(store) as connection:  # as if killed after its trials, before the record was written
        connection.execute("DELETE FROM aerec_cells")
    new = {**old, "models": {"ease": {"fixed": {"device": "cpu"}, "space": {"l2": {"low": 5000.0, "high": 6000.0}}}}}
    messages = []
    cells = run_benchmark(new, store, spec_changed="allow", log=messages.append)
    record = cells[("ml-100k", 98765, "ease")]
    assert 5000.0 <= record["params"]["l2"] <= 6000.0 and record["trials"] == {"COMPLETE": 2}
    assert any("half-tuned" in message for message in messages)


def test_a_spec_with_two_datasets_of_one_name_and_other_mistakes_is_refused(tmp_path):
    for path in ("a", "b"):
        (tmp_path / path).mkdir()
    twice = {**BASE, "datasets": [{"path": str(tmp_path / "a" / "ratings.csv")},
                                  {"path": str(tmp_path / "b" / "ratings.csv")}], "models": {"popularity": {}}}
    with pytest.raises(SpecError, match=r"the name 'ratings' is given to 2 datasets .* set name ="):
        load_spec(twice)
    with pytest.raises(SpecError, match=r"name='a/b'; expected a non-empty string without '/'"):
        load_spec({**BASE, "datasets": [{"name": "a/b", "path": "x.csv"}], "models": {"popularity": {}}})
    with pytest.raises(SpecError, match=r"metrics=\['ndcg@10', 'ndcg@10'\]; expected each metric once"):
        load_spec({**BASE, "metrics": ["ndcg@10", "ndcg@10"], "models": {"popularity": {}}})
    with pytest.raises(SpecError, match=r"baseline=\['popularity'\]; expected one of the model labels"):
        load_spec({**BASE, "baseline": ["popularity"], "models": {"popularity": {}}})
    with pytest.raises(SpecError, match=r"unknown model \['ease'\]"):
        load_spec({**BASE, "models": {"x": {"model": ["ease"]}}})
    with pytest.raises(SpecError, match=r"'ml-100k' is binarized for the ratings protocol"):
        load_spec({**BASE, "protocol": {"name": "ratings"}, "metrics": ["rmse"],
                   "datasets": [{"name": "ml-100k", "path": "x.csv", "binarize": 3.5}], "models": {"bias": {}}})
    with pytest.raises(SpecError, match=r"rating=3; expected a column name \(or false: none\)"):
        load_spec({**BASE, "datasets": [{"path": "x.csv", "rating": 3}], "models": {"popularity": {}}})


def test_a_file_datasets_rating_column_is_read_unless_the_spec_says_false(tmp_path):
    """A file without rating = ... in the spec was read as all 1.0 (RMSE about 0, no threshold applied)."""
    path = tmp_path / "ratings.csv"
    pd.DataFrame({"user": [1, 1, 2], "item": [10, 20, 10], "rating": [5.0, 2.0, 4.0]}).to_csv(path, index=False)
    spec = load_spec({**BASE, "datasets": [{"path": str(path)}, {"name": "ones", "path": str(path), "rating": False}],
                      "models": {"popularity": {}}})
    assert sorted(load_data(spec.datasets[0]).matrix.data) == [2.0, 4.0, 5.0]
    assert sorted(load_data(spec.datasets[1]).matrix.data) == [1.0, 1.0, 1.0]


def test_a_user_tested_under_several_seeds_counts_once_in_the_paired_tests():
    spec = load_spec({**BASE, "seeds": [1, 2], "models": {"a": {"model": "popularity"}, "b": {"model": "popularity"}}})

    def cell(rows, ids, values):
        return {"split": "s", "users": rows, "user_ids": ids, "per_user": {"ndcg@100": values}}

    cells = {("ml-100k", 1, "a"): cell([0, 1], [7, 8], [0.2, 0.4]),
             ("ml-100k", 1, "b"): cell([0, 1], [7, 8], [0.1, 0.4]),
             ("ml-100k", 2, "a"): cell([0, 1], [8, 9], [0.6, 0.5]),
             ("ml-100k", 2, "b"): cell([0, 1], [8, 9], [0.2, 0.5])}
    means = per_user_means(spec, "ml-100k", cells, "ndcg@100")
    np.testing.assert_allclose(means["a"], [0.2, 0.5, 0.5])  # users 7, 8 (mean of 0.4 and 0.6), 9
    np.testing.assert_allclose(means["b"], [0.1, 0.3, 0.5])
    # cells kept before raw ids were: rows 0 and 1 of seed 1 are not rows 0 and 1 of seed 2
    rows_only = {key: {**value, "user_ids": None} for key, value in cells.items()}
    assert len(per_user_means(spec, "ml-100k", rows_only, "ndcg@100")["a"]) == 4
    cells[("ml-100k", 2, "b")] = cell([0, 1], [8, 10], [0.2, 0.5])
    with pytest.raises(ValueError, match=r"cells \('ml-100k', 2, 'b'\) and \('ml-100k', 2, 'a'\) were scored on "
                                         "different splits or test users"):
        per_user_means(spec, "ml-100k", cells, "ndcg@100")


def test_cells_record_their_test_users_raw_ids(tmp_path, data_dir):
    spec = {**BASE, "seeds": [1, 2], "models": {"popularity": {}}}
    cells = run_benchmark(spec, tmp_path / "store.sqlite")
    from aerec.benchmark.protocols import make_cell_data
    from aerec.benchmark.runner import load_data

    parsed = load_spec(spec)
    for seed in (1, 2):
        record = cells[("ml-100k", seed, "popularity")]
        split = make_cell_data(parsed, parsed.datasets[0], load_data(parsed.datasets[0]), seed)
        assert record["user_ids"] == split.split.test_fold_in.user_ids[record["users"]].tolist()
    assert cells[("ml-100k", 1, "popularity")]["user_ids"] != cells[("ml-100k", 2, "popularity")]["user_ids"]


def test_one_user_gives_no_t_test_and_holm_passes_it_through():
    assert math.isnan(paired_tests([0.5], [0.2])["t_test_p"])  # was 0.0: "significant" from one user
    assert paired_tests([0.5, 0.6], [0.2, 0.3])["t_test_p"] == 0.0  # the same nonzero difference twice: its limit
    adjusted = holm({"a": 0.01, "b": math.nan, "c": 0.04})
    assert adjusted["a"] == pytest.approx(0.02) and math.isnan(adjusted["b"]) and adjusted["c"] == pytest.approx(0.04)
    assert not compare({"a": [0.5], "b": [0.2]}, "b")["a"]["significant"]


def test_the_best_so_far_of_rmse_is_its_minimum():
    assert _best_so_far([0.9, 1.2, 0.8, 1.5], lower_is_better=True) == [0.9, 0.9, 0.8, 0.8]
    assert _best_so_far([0.1, None, 0.3, 0.2]) == [0.1, 0.1, 0.3, 0.3]


def test_a_bad_store_is_one_clear_error_and_leaves_no_lock_file(tmp_path, data_dir):
    spec = {**BASE, "models": {"popularity": {}}}
    text = tmp_path / "spec.toml"
    text.write_text("name = 'x'\n")
    for store, message in ((text, r"is not a SQLite file \(is it the spec\?\)"), (tmp_path, r"is a folder"),
                           (tmp_path / "nowhere" / "s.sqlite", r"folder .*nowhere does not exist"),
                           ("nosuchdriver://user@host/db", r"expected a SQLite file's path or a database URL")):
        with pytest.raises(SpecError, match=message):
            run_benchmark(spec, store)
    assert not list(tmp_path.glob("*.lock")) and text.read_text() == "name = 'x'\n"
