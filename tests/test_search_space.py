"""Default search spaces: every registered model declares one its constraints accept; bad spaces are refused by name."""

from __future__ import annotations

import random

import pytest

from aerec.models import EASE, MODELS, MultVAE, RecVAE
from aerec.search_space import (
    Choice,
    FloatRange,
    IntRange,
    check_search_space,
    search_entry_from_dict,
)


class RandomTrial:
    """Optuna's trial API, drawing at random (the tuner is Optuna; this keeps the test free of it)."""

    def __init__(self, seed: int):
        self.rng, self.params = random.Random(seed), {}

    def suggest_float(self, name, low, high, log=False):
        self.params[name] = value = self.rng.uniform(low, high)
        return value

    def suggest_int(self, name, low, high, step=1, log=False):
        self.params[name] = value = self.rng.randrange(low, high + 1, step)
        return value

    def suggest_categorical(self, name, choices):
        self.params[name] = value = self.rng.choice(choices)
        return value


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_models_default_space_is_valid_and_its_draws_are_accepted(name):
    cls = MODELS[name]
    space = cls.default_search_space()
    check_search_space(cls, space)
    for seed in range(20):
        trial = RandomTrial(seed)
        draw = {param: entry.suggest(trial, param) for param, entry in space.items()}
        cls().set_params(**draw).check_params()


def test_the_models_that_are_tuned_declare_what_their_papers_searched():
    assert EASE.default_search_space() == {"l2": FloatRange(10.0, 10_000.0, log=True)}
    assert set(MultVAE.default_search_space()) == {"hidden", "latent", "dropout", "l2", "beta_cap", "lr"}
    assert RecVAE.default_search_space()["gamma"].log
    assert "lr" not in MODELS["autorec"].default_search_space()  # Rprop: removed with None
    assert MODELS["popularity"].default_search_space() == {}


@pytest.mark.parametrize("space, message", [
    ({"l3": FloatRange(1.0, 2.0)}, "unknown parameter 'l3' for EASE"),
    ({"l2": FloatRange(10.0, 1.0)}, r"l2 has bounds \(10.0, 1.0\); expected low < high"),
    ({"l2": FloatRange(5.0, 5.0)}, "expected low < high"),
    ({"l2": FloatRange(0.0, 10.0, log=True)}, "a log range from 0.0; expected low > 0"),
    ({"l2": FloatRange(float("nan"), 10.0)}, "expected two finite numbers"),
    ({"l2": Choice()}, "an empty choice"),
    ({"l2": FloatRange(-1.0, 10.0)}, r"l2 reaches a value the model refuses: l2=-1.0; expected a positive"),
    ({"l2": [1, 2]}, "expected a FloatRange, IntRange or Choice"),
])
def test_bad_spaces_are_refused_naming_the_parameter(space, message):
    with pytest.raises(ValueError, match=message):
        check_search_space(EASE, space, where="spec.toml [models.ease]")


def test_a_range_outside_the_constraints_is_refused():
    with pytest.raises(ValueError, match=r"dropout reaches a value the model refuses: dropout=1.0"):
        check_search_space(MultVAE, {"dropout": FloatRange(0.0, 1.0)})
    with pytest.raises(ValueError, match="step 0"):
        check_search_space(MultVAE, {"hidden": IntRange(10, 100, step=0)})


def test_spec_tables_become_entries():
    assert search_entry_from_dict("hidden", {"low": 50, "high": 500, "step": 50}) == IntRange(50, 500, step=50)
    assert search_entry_from_dict("l2", {"low": 1, "high": 1000.0, "log": True}) == FloatRange(1, 1000.0, log=True)
    assert search_entry_from_dict("loss", {"choices": ["a", "b"]}) == Choice("a", "b")
    for table, message in [({"low": 1}, "expected low and high"), ({"choices": "ab"}, "expected a list"),
                            ({"low": 0.5, "high": 2.0, "step": 1}, "a step is for integer ranges"),
                            ({"low": 1, "high": 2, "log": "yes"}, "expected true or false"), (3, "expected a table")]:
        with pytest.raises(ValueError, match=message):
            search_entry_from_dict("x", table, where="spec.toml")


def test_a_choice_of_tuples_is_drawn_whole():
    entry = Choice((64, 8), (128, 16))
    drawn = {entry.suggest(RandomTrial(seed), "hidden") for seed in range(10)}
    assert drawn == {(64, 8), (128, 16)}
