"""The benchmark runner: cells tuned with Optuna on validation users, one SQLite store, resumed without recomputing."""

from __future__ import annotations

import sqlite3

import numpy as np
import optuna
import pytest

from aerec.benchmark import SpecError
from aerec.benchmark.runner import run_benchmark

SPEC = {
    "name": "tiny", "seeds": [98765, 1], "metrics": ["recall@20", "ndcg@100"], "baseline": "popularity",
    "protocol": {"name": "strong", "n_heldout": 100}, "tuning": {"trials": 3},
    "datasets": [{"name": "ml-100k"}],
    "models": {"popularity": {}, "ease": {"fixed": {"device": "cpu"}},
               "dae": {"model": "mult_dae", "fixed": {"epochs": 3, "device": "cpu", "hidden": 40, "latent": 10},
                       "space": {"lr": {"low": 1e-3, "high": 1e-2, "log": True}}}},
}


def trial_counts(store) -> dict:
    return {summary.study_name: summary.n_trials
            for summary in optuna.get_all_study_summaries(storage=f"sqlite:///{store}")}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, data_dir):
    store = tmp_path_factory.mktemp("bench") / "store.sqlite"
    return store, run_benchmark(SPEC, store)


def test_every_cell_is_tuned_on_validation_and_scored_once_on_test(first_run):
    store, cells = first_run
    assert set(cells) == {("ml-100k", seed, label) for seed in (98765, 1) for label in ("popularity", "ease", "dae")}
    ease = cells[("ml-100k", 98765, "ease")]
    assert ease["trials"] == {"COMPLETE": 3} and 10.0 <= ease["params"]["l2"] <= 10_000.0
    assert cells[("ml-100k", 1, "popularity")]["trials"] == {"COMPLETE": 1}  # nothing to tune: one fit
    assert 0 < ease["test"]["ndcg@100"] <= 1 and len(ease["per_user"]["ndcg@100"]) == len(ease["users"]) == 100
    # the same budget for every tuned model
    assert trial_counts(store)["ml-100k/98765/dae"] == trial_counts(store)["ml-100k/98765/ease"] == 3


def test_a_second_run_recomputes_nothing(first_run):
    store, cells = first_run
    before = trial_counts(store)
    messages = []
    again = run_benchmark(SPEC, store, log=messages.append)
    assert again == cells and trial_counts(store) == before
    assert all("read back" in message for message in messages)


def test_a_cell_whose_study_finished_but_not_its_record_runs_no_new_trial(first_run):
    store, cells = first_run
    before = trial_counts(store)
    with sqlite3.connect(store) as connection:  # as if killed after the last trial, before the cell was written
        connection.execute("DELETE FROM aerec_cells WHERE label = 'ease' AND seed = 1")
    again = run_benchmark(SPEC, store)
    assert trial_counts(store) == before
    assert again[("ml-100k", 1, "ease")]["test"] == cells[("ml-100k", 1, "ease")]["test"]  # refitted, same model


def test_a_store_of_another_spec_is_refused_naming_what_differs(first_run):
    store, _ = first_run
    other = {**SPEC, "seeds": [98765, 2]}
    with pytest.raises(SpecError, match=r"written by another spec \(it differs in \['seeds\[1\]'\]\)"):
        run_benchmark(other, store)
    changed = {**SPEC, "models": {**SPEC["models"], "ease": {"fixed": {"device": "cpu", "precision": "float32"}}}}
    with pytest.raises(SpecError, match=r"differs in \['models\.ease\.fixed\.precision'\]"):
        run_benchmark(changed, store)


def test_an_allowed_spec_change_keeps_the_cells_it_leaves_alone_and_reruns_the_ones_it_changes(tmp_path, data_dir):
    from aerec.benchmark.runner import read_store

    spec = {**SPEC, "models": {"popularity": {}, "ease": {"fixed": {"device": "cpu"}}}, "tuning": {"trials": 2}}
    store = tmp_path / "store.sqlite"
    first = run_benchmark(spec, store)
    changed = {**spec, "seeds": [98765, 2],
               "models": {"popularity": {}, "ease": {"fixed": {"device": "cpu"},
                                                     "space": {"l2": {"low": 1.0, "high": 10.0}}}}}
    messages = []
    again = run_benchmark(changed, store, log=messages.append, spec_changed="allow")
    named = "['models.ease.space.l2.high', 'models.ease.space.l2.log', 'models.ease.space.l2.low', 'seeds[1]']"
    assert any(f"the spec changed in {named}" in message for message in messages)
    assert again[("ml-100k", 98765, "popularity")] == first[("ml-100k", 98765, "popularity")]  # kept, not rerun
    assert 1.0 <= again[("ml-100k", 98765, "ease")]["params"]["l2"] <= 10.0  # rerun in the new space
    assert ("ml-100k", 1, "popularity") not in again  # seed 1 left the spec
    stored_spec, cells = read_store(store)
    assert stored_spec.seeds == (98765, 2) and set(cells) == set(again)  # the store now belongs to the new spec
    with pytest.raises(ValueError, match="spec_changed='yes'; expected 'refuse' or 'allow'"):
        run_benchmark(changed, store, spec_changed="yes")


def test_a_cell_scored_on_another_split_is_refused_or_run_again(tmp_path, data_dir):
    # as if the data file or aerec's split had changed since the cell was stored: its split fingerprint differs
    import json

    spec = {**SPEC, "seeds": [98765], "models": {"popularity": {}, "ease": {"fixed": {"device": "cpu"}}},
            "tuning": {"trials": 1}}
    store = tmp_path / "store.sqlite"
    first = run_benchmark(spec, store)
    with sqlite3.connect(store) as connection:
        record = json.loads(connection.execute("SELECT record FROM aerec_cells WHERE label = 'ease'").fetchone()[0])
        connection.execute("UPDATE aerec_cells SET record = ? WHERE label = 'ease'",
                           (json.dumps({**record, "split": "0" * 64}),))
    with pytest.raises(SpecError, match=r"scored on another split than the protocol makes now .*split 0000000000000000"):
        run_benchmark(spec, store)
    messages = []
    again = run_benchmark(spec, store, log=messages.append, spec_changed="allow")
    assert any("its split changed since it was stored: run again" in message for message in messages)
    assert again[("ml-100k", 98765, "ease")]["split"] == first[("ml-100k", 98765, "ease")]["split"]
    assert again[("ml-100k", 98765, "ease")]["test"] == first[("ml-100k", 98765, "ease")]["test"]
    assert again[("ml-100k", 98765, "popularity")] == first[("ml-100k", 98765, "popularity")]


def test_the_store_keeps_each_workers_environment_and_each_cell_its_split_fingerprint(first_run):
    from aerec.benchmark.runner import read_environments

    store, cells = first_run
    environments = read_environments(store)
    assert len(environments) == 1 and environments[0]["workers"]  # one machine, one set of versions
    assert {"aerec", "torch", "optuna", "numpy", "machine", "git_commit"} <= set(environments[0])
    fingerprints = {seed: {cells[("ml-100k", seed, label)]["split"] for label in ("popularity", "ease", "dae")}
                    for seed in (98765, 1)}
    assert all(len(f) == 1 for f in fingerprints.values()) and fingerprints[98765] != fingerprints[1]


def test_failing_trials_are_recorded_and_a_cell_without_any_success_is_named(tmp_path, data_dir, monkeypatch):
    import torch

    from aerec.models import MultDAE

    def nan_loss(self, module, batch, state):  # a diverged model: the loop refuses the non-finite loss
        return {"loss": module.decoder.layers[0].weight.sum() * torch.tensor(float("nan"))}

    monkeypatch.setattr(MultDAE, "batch_loss", nan_loss)
    spec = {**SPEC, "seeds": [98765], "tuning": {"trials": 2}, "baseline": None,
            "models": {"dae": {"model": "mult_dae", "fixed": {"epochs": 2, "device": "cpu", "hidden": 20, "latent": 5},
                               "space": {"lr": {"low": 1e-3, "high": 1e-2, "log": True}}}}}
    with pytest.raises(RuntimeError, match=r"\('ml-100k', 98765, 'dae'\): no trial finished"):
        run_benchmark(spec, tmp_path / "store.sqlite")
    study = optuna.load_study(study_name="ml-100k/98765/dae", storage=f"sqlite:///{tmp_path / 'store.sqlite'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]


@pytest.mark.parametrize("protocol", ["per_user", "temporal"])
def test_the_holdout_protocols_tune_on_the_validation_part_and_rank_the_test_part_from_all_else(protocol, tmp_path,
                                                                                                 ml100k):
    from aerec.data import binarize, per_user_holdout, temporal_holdout
    from aerec.evaluation import evaluate_ranking
    from aerec.models import Popularity

    spec = {**SPEC, "seeds": [5], "protocol": {"name": protocol}, "tuning": {"trials": 2}, "baseline": None,
            "datasets": [{"name": "ml-100k", "binarize": 3.5}],
            "models": {"popularity": {}, "ease": {"fixed": {"device": "cpu"}}}}
    cells = run_benchmark(spec, tmp_path / "store.sqlite")
    data = binarize(ml100k, threshold=3.5)
    split = (per_user_holdout(data, test_fraction=0.2, validation_fraction=0.1, seed=5) if protocol == "per_user"
             else temporal_holdout(data, test_fraction=0.2, validation_fraction=0.1))
    model = Popularity().fit(split.train)
    known = split.train.matrix + split.validation.matrix  # the test ranks from all else, which it leaves out
    by_hand = evaluate_ranking(model, known, split.test.matrix, ks=(20, 100), metrics=("recall", "ndcg"))
    popularity = cells[("ml-100k", 5, "popularity")]
    assert popularity["test"] == pytest.approx({m: by_hand.metrics[m] for m in ("recall@20", "ndcg@100")}, abs=1e-12)
    assert popularity["validation"] == pytest.approx(evaluate_ranking(
        model, split.train.matrix, split.validation.matrix, ks=(100,), metrics=("ndcg",)).metrics["ndcg@100"])
    assert popularity["users"] == np.asarray(by_hand.users).tolist()
    if protocol == "per_user":  # (a global time cut leaves many test users with no history: popularity wins there)
        assert cells[("ml-100k", 5, "ease")]["test"]["ndcg@100"] > popularity["test"]["ndcg@100"]


def test_the_ratings_protocol_minimizes_validation_rmse_and_reports_per_user_errors(tmp_path, ml100k):
    from aerec.data import random_holdout
    from aerec.models import make_model

    spec = {"seeds": [3], "protocol": {"name": "ratings"}, "metrics": ["rmse", "mae"], "tuning": {"trials": 3},
            "datasets": [{"name": "ml-100k"}], "models": {"bias": {}}}
    cell = run_benchmark(spec, tmp_path / "store.sqlite")[("ml-100k", 3, "bias")]
    study = optuna.load_study(study_name="ml-100k/3/bias", storage=f"sqlite:///{tmp_path / 'store.sqlite'}")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert cell["validation"] == min(t.value for t in study.trials)  # the smallest validation RMSE chosen
    split = random_holdout(ml100k, test_fraction=0.1, validation_fraction=0.1, seed=3)
    model = make_model("bias", **{k: v for k, v in cell["params"].items()}).fit(split.train,
                                                                                 validation=split.validation)
    test = split.test.matrix.tocoo()
    error = model.predict(test.row, test.col) - test.data
    assert cell["test"]["rmse"] == pytest.approx(float(np.sqrt(np.mean(error ** 2))))
    assert cell["test"]["mae"] == pytest.approx(float(np.mean(np.abs(error))))
    first = cell["users"][0]
    mine = error[test.row == first]
    assert cell["per_user"]["rmse"][0] == pytest.approx(float(np.sqrt(np.mean(mine ** 2))))
    assert len(cell["users"]) == len(np.unique(test.row))


def test_a_time_budget_stops_the_tuning_of_a_cell(tmp_path, data_dir):
    spec = {**SPEC, "seeds": [98765], "tuning": {"trials": 50, "seconds": 0.5}, "baseline": None,
            "models": {"ease": {"fixed": {"device": "cpu"}}}}
    cells = run_benchmark(spec, tmp_path / "store.sqlite")
    run = cells[("ml-100k", 98765, "ease")]["trials"]["COMPLETE"]
    assert 1 <= run < 50  # EASE on ML-100K fits in ~0.1 s: half a second holds a few, not fifty


WORKER = """
import sys
from aerec.benchmark.runner import run_benchmark
from tests.test_benchmark_runner import SPEC
spec = {**SPEC, "models": {"popularity": {}, "ease": {"fixed": {"device": "cpu"}}}, "tuning": {"trials": 4}}
cells = run_benchmark(spec, sys.argv[1], log=lambda message: print(message, flush=True))
print("CELLS", len(cells))
"""


def test_two_workers_sharing_one_store_finish_the_spec_without_running_a_cell_twice(tmp_path, data_dir):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    store = tmp_path / "shared.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO), "AEREC_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(store)], cwd=REPO, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], [err[-2000:] for _, err in outputs]
    ran = [line.split(":")[0] for out, _ in outputs for line in out.splitlines() if "trials, chosen" in line]
    assert len(ran) == len(set(ran)) == 4  # 2 seeds x 2 models, each run by exactly one worker
    assert all(out.strip().endswith("CELLS 4") for out, _ in outputs)
    assert set(trial_counts(store).values()) <= {1, 4}  # popularity one fit, EASE its 4 trials: nothing twice
    with sqlite3.connect(store) as connection:
        assert connection.execute("SELECT COUNT(*) FROM aerec_claims").fetchone()[0] == 0


KILLED = """
import sys
from aerec.benchmark.runner import run_benchmark
from tests.test_benchmark_runner import RESUME_SPEC
run_benchmark(RESUME_SPEC, sys.argv[1])
"""
RESUME_SPEC = {**SPEC, "seeds": [98765], "tuning": {"trials": 4}, "baseline": None,
               "models": {"ease": {"fixed": {"device": "cpu"}},
                          "dae": {"model": "mult_dae", "fixed": {"epochs": 6, "device": "cpu", "hidden": 60,
                                                                 "latent": 20},
                                  "space": {"lr": {"low": 1e-3, "high": 3e-2, "log": True},
                                            "dropout": {"low": 0.0, "high": 0.8}}}}}


def running_trials(store) -> set:
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as connection:
            return {row[0] for row in connection.execute("SELECT trial_id FROM trials WHERE state = 'RUNNING'")}
    except sqlite3.OperationalError:  # not made yet
        return set()


def test_a_run_killed_twice_mid_trial_resumes_to_the_report_of_an_uninterrupted_run(tmp_path, data_dir):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    whole = run_benchmark(RESUME_SPEC, tmp_path / "whole.sqlite")
    store = tmp_path / "killed.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO), "AEREC_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    cut_off = set()
    for kill in range(2):
        worker = subprocess.Popen([sys.executable, "-c", KILLED, str(store)], cwd=REPO, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not running_trials(store) - cut_off and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        cut_off |= running_trials(store)
        time.sleep(0.05 * kill)  # the second kill a little later into a trial
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        assert worker.returncode == -signal.SIGKILL, worker.stderr.read()[-2000:]
    resumed = run_benchmark(RESUME_SPEC, store)
    assert sum(cell["interrupted"] for cell in resumed.values()) == 2  # each kill cut one trial off, redone
    studies = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage=f"sqlite:///{store}")}
    assert sum(studies.values()) == sum(trial_counts(tmp_path / "whole.sqlite").values()) + 2  # nothing else twice

    from aerec.benchmark.report import without_run_dependent

    differ = {key: [k for k in cell if cell[k] != whole[key].get(k)]
              for key, cell in without_run_dependent(resumed).items()}
    assert not any(differ.values()), differ


def test_the_report_of_models_trained_by_epochs_draws_their_validation_curves(first_run, tmp_path):
    from aerec.benchmark import load_spec
    from aerec.benchmark.report import summarize, write_report
    from aerec.benchmark.runner import read_environments

    store, cells = first_run
    summary = summarize(load_spec(SPEC), cells, environments=read_environments(store))
    paths = {path.name for path in write_report(summary, tmp_path, cells)}
    assert {"metrics_ml-100k.png", "validation_curves_ml-100k.png", "tuning_history_ml-100k.png"} <= paths
    dae = summary["datasets"]["ml-100k"]["models"]["dae"]
    assert dae["epoch_seconds"] > 0 and dae["tuning_seconds"] >= dae["fit_seconds"] > 0
    assert dae["searched"] == ["lr"] and dae["fixed"]["epochs"] == 3
    assert all(len(cells[("ml-100k", seed, "dae")]["validation_curve"]) == 3 for seed in (98765, 1))
    row = next(line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| dae"))
    assert "lr=" in row and "epochs=" not in row  # the chosen column lists what was searched; fixed ones below


def test_a_store_given_by_database_url_runs_shares_and_reports_like_a_file(tmp_path, data_dir):
    """The multi-machine form: a database URL (here SQLite's, the same code path as a PostgreSQL server's)."""
    from aerec.benchmark.runner import read_store
    from aerec.benchmark.store import Store

    spec = {**SPEC, "models": {"popularity": {}, "ease": {"fixed": {"device": "cpu"}}}, "tuning": {"trials": 2}}
    url = f"sqlite:///{tmp_path / 'server.sqlite'}"
    with pytest.raises(SpecError, match="no benchmark store at sqlite:///"):
        read_store(url)
    cells = run_benchmark(spec, url, jobs=2)  # this process and one started worker, both on the URL
    assert set(cells) == {("ml-100k", seed, label) for seed in (98765, 1) for label in ("popularity", "ease")}
    spec_back, cells_back = read_store(url)
    assert cells_back == cells and spec_back.name == "tiny"
    assert Store(url).claims() == [] and set(trial_counts(tmp_path / "server.sqlite").values()) == {1, 2}


def test_the_grid_sampler_visits_every_point_once_and_resumes_where_it_stopped(tmp_path, data_dir):
    grid = [10.0, 100.0, 1000.0, 5000.0]
    spec = {**SPEC, "seeds": [3], "tuning": {"sampler": "grid", "trials": 10}, "baseline": None,
            "models": {"ease": {"fixed": {"device": "cpu"}, "space": {"l2": {"choices": grid}}}}}
    store = tmp_path / "store.sqlite"
    run_benchmark({**spec, "tuning": {"sampler": "grid", "trials": 2}}, store)  # stopped after 2 points...
    cells = run_benchmark(spec, store, spec_changed="allow")  # ...a new budget: a fresh study, the whole grid
    study = optuna.load_study(study_name="ml-100k/3/ease", storage=f"sqlite:///{store}")
    assert sorted(t.params["l2"] for t in study.trials) == grid  # each point once, the budget capped at the grid
    assert cells[("ml-100k", 3, "ease")]["trials"] == {"COMPLETE": 4}
    whole = run_benchmark(spec, tmp_path / "whole.sqlite")
    assert whole[("ml-100k", 3, "ease")]["params"] == cells[("ml-100k", 3, "ease")]["params"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_dataset_given_as_a_file_with_its_columns_and_preprocessing_runs_like_a_named_one(suffix, tmp_path,
                                                                                             ml100k):
    """A user's own file: column names, a binarize threshold and minimum counts, through the strong protocol."""
    from aerec.data import binarize, filter_min_counts

    frame = ml100k.to_pandas(user="uid", item="sku", rating="stars", timestamp="when")
    path = tmp_path / f"clicks{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path, index=False)
    spec = {**SPEC, "seeds": [98765], "tuning": {"trials": 1}, "baseline": None, "protocol": {"name": "strong",
                                                                                              "n_heldout": 50},
            "datasets": [{"path": str(path), "user": "uid", "item": "sku", "rating": "stars", "timestamp": "when",
                          "binarize": 3.5, "min_user": 20, "min_item": 5}],
            "models": {"popularity": {}}}
    cell = run_benchmark(spec, tmp_path / "store.sqlite")[("clicks", 98765, "popularity")]
    kept = filter_min_counts(binarize(ml100k, threshold=3.5), min_user=20, min_item=5)
    assert len(cell["users"]) == 50 and 0 < cell["test"]["ndcg@100"] <= 1  # 50 test users of the filtered data
    from aerec.benchmark.protocols import make_cell_data
    from aerec.benchmark.runner import load_data, split_fingerprint
    from aerec.benchmark.spec import load_spec

    parsed = load_spec(spec)
    data = load_data(parsed.datasets[0])
    assert data.nnz == kept.nnz and data.n_users == kept.n_users  # the spec's preprocessing, as by hand
    assert cell["split"] == split_fingerprint(make_cell_data(parsed, parsed.datasets[0], data, 98765).split)
