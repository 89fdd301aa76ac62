"""Benchmark specs: TOML and dict give the same spec; every bad key or value is refused by name and place."""

from __future__ import annotations

import copy

import pytest

from aerec.benchmark import SpecError, load_spec
from aerec.search_space import FloatRange
from tests.conftest import REPO

SMOKE = REPO / "evaluation" / "specs" / "smoke.toml"
BASE = {
    "name": "t", "seeds": [1, 2], "metrics": ["ndcg@100"], "baseline": "ease",
    "protocol": {"name": "strong", "n_heldout": 50}, "tuning": {"trials": 3},
    "datasets": [{"name": "ml-100k"}],
    "models": {"ease": {"fixed": {"device": "cpu"}}, "dae": {"model": "mult_dae", "fixed": {"epochs": 5}}},
}


def with_change(path: tuple, value):
    spec = copy.deepcopy(BASE)
    target = spec
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return spec


def test_the_smoke_spec_as_toml_and_as_a_dict_are_the_same(tmp_path):
    spec = load_spec(SMOKE)
    assert spec.seeds == (98765, 1) and [m.label for m in spec.models] == ["popularity", "ease"]
    assert spec.models[1].space == {"l2": FloatRange(50.0, 2000.0, log=True)}
    import tomllib

    as_dict = load_spec(tomllib.loads(SMOKE.read_text()))
    assert as_dict.models == spec.models and as_dict.protocol == spec.protocol and as_dict.tuning == spec.tuning


def test_a_model_without_a_space_gets_its_default_one_less_what_is_fixed():
    spec = load_spec(BASE)
    dae = spec.models[1]
    assert dae.model == "mult_dae" and "epochs" not in dae.space
    assert set(dae.space) == {"hidden", "latent", "dropout", "l2", "lr"}
    assert spec.tuning.metric == "ndcg@100" and spec.tuning.sampler == "tpe"


@pytest.mark.parametrize("path, value, message", [
    (("colour",), "red", r"<dict> top level: unknown key 'colour'"),
    (("datasets",), [{"name": "ml-99k"}], r"\[\[datasets\]\] #1: unknown dataset 'ml-99k'"),
    (("datasets",), [{"name": "ml-100k", "user": "u"}], "columns are for a file given by path"),
    (("models", "ease", "model"), "easy", r"\[models.ease\]: unknown model 'easy'"),
    (("models", "ease", "fixed"), {"l3": 1.0}, r"\[models.ease\] fixed: unknown key 'l3'"),
    (("models", "ease", "fixed"), {"l2": -1.0}, r"\[models.ease\] fixed: l2=-1.0; expected a positive"),
    (("models", "ease", "space"), {"l2": {"low": 100.0, "high": 10.0}}, "expected low < high"),
    (("models", "ease", "space"), {"l2": {"low": 0.0, "high": 10.0, "log": True}}, "a log range from 0.0"),
    (("models", "ease", "space"), {"l2": {"choices": []}}, "an empty choice"),
    (("models", "ease", "space"), {"l2": {"low": 1.0, "high": 2.0}}, None),  # a valid space: no error
    (("models", "ease", "space"), {"l2": 3.0}, r"search space in <dict> \[models.ease\]: l2=3.0; expected a table"),
    (("models", "ease", "color"), 1, r"\[models.ease\]: unknown key 'color'"),
    (("metrics",), ["ndcg@0"], r"metrics: metric 'ndcg@0'"),
    (("metrics",), ["ndcgs@10"], "expected <name>@<k>"),
    (("metrics",), ["rmse"], "expected <name>@<k>"),
    (("protocol",), {"name": "leave-one-out"}, r"\[protocol\]: protocol name='leave-one-out'"),
    (("protocol",), {"name": "strong", "test_fraction": 0.2}, r"\(protocol 'strong'\): unknown key 'test_fraction'"),
    (("protocol",), {"name": "strong", "heldout_fraction": 1.5}, "heldout_fraction=1.5"),
    (("tuning",), {"sampler": "cmaes"}, "sampler='cmaes'"),
    (("tuning",), {"trials": 0}, "trials=0"),
    (("tuning",), {"metric": "test_ndcg@100"}, r"\[tuning\] metric: metric 'test_ndcg@100'"),
    (("tuning",), {"on": "test"}, r"\[tuning\]: unknown key 'on'"),
    (("tuning",), {"startup_trials": 0}, "startup_trials=0"),
    (("tuning",), {"sampler": "random", "startup_trials": 3}, "startup_trials is the TPE sampler's"),
    (("seeds",), [1, 1], "expected each seed once"),
    (("seeds",), [-1], "seed=-1|seeds=-1"),
    (("baseline",), "als", "baseline='als'; expected one of the model labels"),
])
def test_bad_specs_are_refused_naming_the_key_and_place(path, value, message):
    spec = with_change(path, value)
    if message is None:
        load_spec(spec)
        return
    with pytest.raises(SpecError, match=message):
        load_spec(spec)


def test_a_model_that_cannot_run_the_protocol_is_refused_before_anything_runs():
    with pytest.raises(SpecError, match=r"\[models.rec\]: 'autorec' is a rating model and cannot run a ranking"):
        load_spec(with_change(("models", "rec"), {"model": "autorec"}))
    ratings = with_change(("protocol",), {"name": "ratings"})
    ratings["metrics"] = ["rmse"]
    ratings["baseline"] = None
    with pytest.raises(SpecError, match=r"'ease' is a ranking model and cannot run the ratings protocol"):
        load_spec(ratings)
    ratings["models"] = {"autorec": {"fixed": {"epochs": 3}}, "bias": {}}
    spec = load_spec(ratings)
    assert spec.tuning.metric == "rmse" and not spec.ranking


def test_a_parameter_both_fixed_and_searched_is_refused():
    spec = with_change(("models", "ease", "space"), {"l2": {"low": 1.0, "high": 10.0}})
    spec["models"]["ease"]["fixed"]["l2"] = 5.0
    with pytest.raises(SpecError, match="'l2' is both fixed and searched"):
        load_spec(spec)


def test_a_file_that_is_not_toml_or_missing_is_a_spec_error(tmp_path):
    (tmp_path / "bad.toml").write_text("name = [unclosed")
    with pytest.raises(SpecError, match="bad.toml is not valid TOML"):
        load_spec(tmp_path / "bad.toml")
    with pytest.raises(SpecError, match="cannot read the spec"):
        load_spec(tmp_path / "missing.toml")
    with pytest.raises(SpecError, match="expected a TOML file's path or a dict"):
        load_spec(3)


def test_startup_trials_reach_tpe_and_leave_the_fingerprints_of_specs_without_them_alone():
    from aerec.benchmark.runner import cell_fingerprint, cell_sampler, spec_fingerprint

    plain = load_spec(BASE)
    started = load_spec(with_change(("tuning",), {"trials": 3, "startup_trials": 2}))
    ease = plain.models[0]
    assert cell_sampler(started.tuning, ease, 1, 0)._n_startup_trials == 2
    assert cell_sampler(plain.tuning, ease, 1, 0)._n_startup_trials == 10  # Optuna's default
    assert "startup_trials" not in spec_fingerprint(plain)  # stores made before the key stay valid
    assert "startup_trials" in spec_fingerprint(started)
    assert cell_fingerprint(plain, plain.datasets[0], ease) != cell_fingerprint(started, started.datasets[0], ease)


@pytest.mark.parametrize("name, sizes", [("strong_cold", (0, 0)), ("strong_short", (1, 3))])
def test_the_user_cold_protocols_give_the_strong_splits_held_out_users_no_or_a_short_history(name, sizes, ml100k):
    import numpy as np

    from aerec.benchmark.protocols import make_cell_data

    spec = load_spec({"seeds": [1], "protocol": {"name": name, "n_heldout": 50, **({"longest": 3} if sizes[1] else {})},
                      "datasets": [{"name": "ml-100k"}], "models": {"popularity": {}}})
    cell = make_cell_data(spec, spec.datasets[0], ml100k, 1)
    for fold_in in (cell.validation[0].matrix, cell.test[0]):
        counts = np.diff(fold_in.indptr)
        assert fold_in.shape[0] == 50 and (counts.min(), counts.max()) == sizes
    assert cell.test[1].nnz > 0 and len(cell.test_user_ids) == 50
    with pytest.raises(SpecError, match="longest"):
        load_spec({"seeds": [1], "protocol": {"name": name, "longest": 0}, "datasets": [{"name": "ml-100k"}],
                   "models": {"popularity": {}}})
