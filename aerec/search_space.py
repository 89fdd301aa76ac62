"""Search spaces of hyper-parameters: ranges and choices a tuner draws from, declared by each model.

A model declares, beside its ``parameter_constraints``, the ranges its paper or
reference code searched::

    search_space = {"l2": FloatRange(10.0, 10_000.0, log=True), "hidden": Choice(200, 600)}

A tuner draws a value per parameter with :meth:`suggest`, through Optuna's trial
API (``trial.suggest_float / suggest_int / suggest_categorical``), without this
module importing Optuna. :func:`check_search_space` refuses, naming the
parameter, a space that names an unknown parameter, has empty or reversed
bounds, a log range reaching 0, an empty choice, or values the model's
constraints reject. A benchmark spec builds the same objects with
:func:`search_entry_from_dict` (``{low, high, log}``, ``{choices}``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

from aerec.params import validate_params

__all__ = ["Choice", "FloatRange", "IntRange", "check_search_space", "search_entry_from_dict"]


def _number(value, kind) -> bool:
    return not isinstance(value, bool) and isinstance(value, kind) and math.isfinite(float(value))


@dataclass(frozen=True)
class FloatRange:
    """Real values in ``[low, high]``, drawn uniformly or (``log``) log-uniformly."""

    low: float
    high: float
    log: bool = False

    def problems(self) -> str | None:
        if not (_number(self.low, Real) and _number(self.high, Real)):
            return f"bounds ({self.low!r}, {self.high!r}); expected two finite numbers"
        if not self.low < self.high:
            return f"bounds ({self.low!r}, {self.high!r}); expected low < high"
        if self.log and self.low <= 0:
            return f"a log range from {self.low!r}; expected low > 0"
        return None

    def bounds(self) -> tuple:
        return (float(self.low), float(self.high))

    def suggest(self, trial, name: str) -> float:
        return trial.suggest_float(name, float(self.low), float(self.high), log=bool(self.log))


@dataclass(frozen=True)
class IntRange:
    """Integers in ``[low, high]`` (every ``step``-th), drawn uniformly or (``log``) log-uniformly."""

    low: int
    high: int
    log: bool = False
    step: int = 1

    def problems(self) -> str | None:
        if not all(_number(v, Integral) for v in (self.low, self.high, self.step)):
            return f"bounds ({self.low!r}, {self.high!r}) step {self.step!r}; expected integers"
        if not self.low < self.high:
            return f"bounds ({self.low!r}, {self.high!r}); expected low < high"
        if self.step < 1 or (self.log and self.step != 1):
            return f"step {self.step!r}; expected a positive step (1 for a log range)"
        if self.log and self.low <= 0:
            return f"a log range from {self.low!r}; expected low > 0"
        return None

    def bounds(self) -> tuple:
        return (int(self.low), int(self.high))

    def suggest(self, trial, name: str) -> int:
        return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step), log=bool(self.log))


class Choice:
    """One of ``values`` (numbers, strings, booleans, None or tuples), drawn uniformly."""

    def __init__(self, *values):
        self.values = tuple(tuple(v) if isinstance(v, list) else v for v in values)

    def problems(self) -> str | None:
        return None if self.values else "an empty choice; expected at least one value"

    def bounds(self) -> tuple:
        return self.values

    def suggest(self, trial, name: str):
        return self.value(trial.suggest_categorical(name, self.optuna_choices()))

    @property
    def by_index(self) -> bool:
        """Whether Optuna draws (and stores) the index of a value: its categories cannot hold tuples."""
        return any(isinstance(v, tuple) for v in self.values)

    def optuna_choices(self) -> list:
        """The categories Optuna draws from: the values, or their indices when a value is a tuple."""
        return list(range(len(self.values))) if self.by_index else list(self.values)

    def value(self, drawn):
        """The value behind what Optuna drew and stored (an index when :attr:`by_index`)."""
        return self.values[drawn] if self.by_index else drawn

    def __eq__(self, other) -> bool:
        return isinstance(other, Choice) and self.values == other.values

    def __hash__(self) -> int:
        return hash(self.values)

    def __repr__(self) -> str:
        return f"Choice{self.values!r}"


SearchEntry = FloatRange | IntRange | Choice


def trial_params(space: dict, stored: dict) -> dict:
    """A trial's parameters as the model takes them, from what Optuna stored (a tuple choice's index -> the tuple)."""
    return {name: space[name].value(value) if isinstance(space.get(name), Choice) else value
            for name, value in stored.items()}


def check_search_space(model_cls, space: dict, where: str = "") -> None:
    """Raise a ValueError naming the first bad entry of ``space`` for ``model_cls`` (``where``: e.g. a spec's table)."""
    at = f" in {where}" if where else ""
    known = model_cls.param_names()
    constraints = model_cls.constraints()
    for name, entry in space.items():
        if name not in known:
            raise ValueError(f"search space{at}: unknown parameter {name!r} for {model_cls.__name__}; "
                             f"it takes {known}")
        if not isinstance(entry, (FloatRange, IntRange, Choice)):
            raise ValueError(f"search space{at}: {name}={entry!r}; expected a FloatRange, IntRange or Choice")
        problem = entry.problems()
        if problem is not None:
            raise ValueError(f"search space{at}: {name} has {problem}")
        if name in constraints:
            for value in entry.bounds():
                try:
                    validate_params({name: constraints[name]}, {name: value})
                except ValueError as error:
                    raise ValueError(f"search space{at}: {name} reaches a value the model refuses: {error}") from None


def search_entry_from_dict(name: str, table: dict, where: str = "") -> SearchEntry:
    """The entry a spec table describes: ``{low, high[, log][, step]}`` (int or float by the bounds), ``{choices}``."""
    at = f" in {where}" if where else ""
    if not isinstance(table, dict):
        raise ValueError(f"search space{at}: {name}={table!r}; expected a table with low/high or choices")
    keys = set(table)
    if keys == {"choices"}:
        if not isinstance(table["choices"], (list, tuple)):
            raise ValueError(f"search space{at}: {name} choices={table['choices']!r}; expected a list")
        return Choice(*table["choices"])
    if {"low", "high"} <= keys <= {"low", "high", "log", "step"}:
        low, high, log = table["low"], table["high"], table.get("log", False)
        if not isinstance(log, bool):
            raise ValueError(f"search space{at}: {name} log={log!r}; expected true or false")
        if _number(low, Integral) and _number(high, Integral) and not isinstance(table.get("step", 1), float):
            return IntRange(low, high, log=log, step=table.get("step", 1))
        if "step" in keys:
            raise ValueError(f"search space{at}: {name} step with real bounds; a step is for integer ranges")
        return FloatRange(low, high, log=log)
    raise ValueError(f"search space{at}: {name} has keys {sorted(keys)}; expected low and high (log, step "
                     f"optional) or choices")
