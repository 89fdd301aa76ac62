"""Hyper-parameter constraints: one table per model, checked in one place.

scikit-learn's habit (``_parameter_constraints`` with ``Interval`` / ``StrOptions``,
checked by one ``_validate_params``), written small: a model declares

    parameter_constraints = {"hidden": [Interval(int, 1, None)],
                             "patience": [Interval(int, 1, None), None],
                             "loss": [Options("logistic", "squared")]}

and :func:`validate_params` raises a ValueError naming the first value that
satisfies none of its entries and what was expected. The same table gives the
CLI's parameter help (:func:`describe`) and a tuner its ranges (an
:class:`Interval`'s ``low`` / ``high``, an :class:`Options`' ``values``).

An entry is an :class:`Interval`, :class:`Options`, :class:`Boolean`,
:class:`Device`, :class:`Satisfies` (any predicate with its description), or
``None`` (the value None is allowed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Integral, Real

import numpy as np

__all__ = ["BATCH", "Boolean", "COUNT", "Device", "Interval", "LAYERS", "NON_NEGATIVE", "Options", "POSITIVE",
           "POSITIVE_INT", "PROBABILITY", "RATE", "SAMPLES", "SECONDS", "SEED", "STEPS", "THREADS", "WEIGHT", "WIDTH",
           "Satisfies", "check", "check_real", "check_seed", "describe", "validate_params"]

#: Largest integer any parameter may take: larger ones overflow every tensor and numpy type downstream.
MAX_INT = 2**63 - 1


class Interval:
    """Numbers of one kind (``int`` or ``float``) between ``low`` and ``high`` (None: unbounded).

    ``closed`` is "both", "left", "right" or "neither". Real intervals hold finite
    numbers only; integers (never ``bool``) are below 2**63.
    """

    def __init__(self, kind: type, low: float | None = None, high: float | None = None, closed: str = "both"):
        if kind not in (int, float):
            raise TypeError(f"kind={kind!r}; expected int or float")
        if closed not in ("both", "left", "right", "neither"):
            raise ValueError(f"closed={closed!r}; expected 'both', 'left', 'right' or 'neither'")
        self.kind, self.low, self.high, self.closed = kind, low, high, closed

    def is_satisfied_by(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, Integral if self.kind is int else Real):
            return False
        if self.kind is int and abs(int(value)) > MAX_INT:
            return False
        if self.kind is float and not math.isfinite(float(value)):
            return False
        if self.low is not None and (value < self.low or (value == self.low and self.closed in ("right", "neither"))):
            return False
        return self.high is None or not (value > self.high or (value == self.high and self.closed in ("left", "neither")))

    def __str__(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        left, right = self.closed in ("both", "left"), self.closed in ("both", "right")
        if (self.low, left, self.kind) in ((1, True, int), (0, False, int), (0, False, float)) and (
                self.high is None or self.high in UPPER_BOUNDS):
            positive = f"a positive {'integer' if self.kind is int else 'number'}"
            return positive if self.high is None else f"{positive} (at most {_shown(self.high)})"
        if self.low is not None and self.high is not None and right and self.high in UPPER_BOUNDS:
            return f"{what} {'>=' if left else '>'} {_shown(self.low)} (at most {_shown(self.high)})"
        low, high = _shown(self.low), _shown(self.high)
        if self.low is not None and self.high is not None:
            return f"{what} in {'[' if left else '('}{low}, {high}{']' if right else ')'}"
        if self.low is not None:
            return f"{what} {'>=' if left else '>'} {low}"
        if self.high is not None:
            return f"{what} {'<=' if right else '<'} {high}"
        return what

    def __repr__(self) -> str:
        return f"Interval({self.kind.__name__}, {self.low!r}, {self.high!r}, closed={self.closed!r})"


def _shown(bound) -> str:
    """A bound as written in an error: 2**32 - 1 rather than 4294967295, 0.5 rather than 0.500000."""
    if isinstance(bound, int) and bound > 2**20 and (bound + 1) & bound == 0:
        return f"2**{(bound + 1).bit_length() - 1} - 1"
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


class Options:
    """One of the given values (strings, or None among them)."""

    def __init__(self, *values):
        self.values = tuple(values)

    def is_satisfied_by(self, value) -> bool:
        return any(value is option or (type(value) is type(option) and value == option) for option in self.values)

    def __str__(self) -> str:
        return f"one of {', '.join(map(repr, self.values))}"

    def __repr__(self) -> str:
        return f"Options{self.values!r}"


class Boolean:
    """True or False (not 0 / 1)."""

    def is_satisfied_by(self, value) -> bool:
        return isinstance(value, (bool, np.bool_))

    def __str__(self) -> str:
        return "True or False"


class Device:
    """A torch device this machine has: "auto", "cpu", "cuda[:N]" (the check names what is missing)."""

    def is_satisfied_by(self, value) -> bool:
        return isinstance(value, str)

    def check(self, name: str, value) -> None:
        from aerec._torch import resolve_device

        resolve_device(value)  # a ValueError naming the device when it is unknown or unavailable

    def __str__(self) -> str:
        return "'auto', 'cpu' or an available 'cuda[:N]'"


class Satisfies:
    """Whatever ``predicate`` accepts, described by ``description`` (e.g. "a tuple of positive integers")."""

    def __init__(self, predicate: Callable[[object], bool], description: str):
        self.predicate, self.description = predicate, description

    def is_satisfied_by(self, value) -> bool:
        try:
            return bool(self.predicate(value))
        except (TypeError, ValueError):
            return False

    def __str__(self) -> str:
        return self.description


#: The one seed range of the package: what numpy's legacy RandomState (the splits), numpy's Generator and torch all take.
SEED = Interval(int, 0, 2**32 - 1)


#: Entries most tables use.
POSITIVE_INT = Interval(int, 1, None)
POSITIVE = Interval(float, 0, None, closed="neither")
NON_NEGATIVE = Interval(float, 0, None)
PROBABILITY = Interval(float, 0, 1, closed="left")
#: Optimisation steps of a fold-in (per scored batch): the references take 50-100. ``aerec.load`` scores a blank
#: user through them (a config asking 10**12 never finished; 3,698 computed for 13 s on a busy machine).
FOLD_IN_STEPS = Interval(int, 1, 1000)

# Upper bounds of the models' hyper-parameters. A model file's config.json is input like any other: each value
# is checked when the model is built, and every bound below sits far above any published setting while keeping
# a value from allocating or working without end (a fold-in of 10**12 steps, 2**31 layers built one by one,
# implicit handed 2**31 threads). Where a value drives memory, the fit also estimates it first
# (:func:`aerec.models.torch_base.check_training_memory`, EASE's and BPR's checks) and the load compares the
# network the values describe with the saved weights before building it.
#: Units of a layer, latent dimensions, factors, rank.
MAX_WIDTH = 2**20
#: Epochs, iterations, passes, patience, validate_every.
MAX_COUNT = 10**6
#: Hidden layers of a network (RecVAE's dense encoder grows with their square).
MAX_LAYERS = 64
#: Samples drawn per row (IWAE samples, CDAE's negatives, BPR's fold-in negatives).
MAX_SAMPLES = 10_000
#: Rows per batch.
MAX_BATCH = 2**24
#: Threads handed to implicit.
MAX_THREADS = 4096
#: Optimizer updates (annealing schedules count them, nothing loops over them).
MAX_STEPS = 10**12
#: Real hyper-parameters: penalties, learning rates, confidences, weights of terms.
MAX_REAL = 1e12
#: Seconds of a time budget (about 31 years).
MAX_SECONDS = 1e9
#: The bounds above, which an error shows as "(at most ...)" after what the value must be.
UPPER_BOUNDS = (MAX_WIDTH, MAX_COUNT, MAX_LAYERS, MAX_SAMPLES, MAX_BATCH, MAX_THREADS, MAX_STEPS, MAX_REAL,
                MAX_SECONDS)

WIDTH = Interval(int, 1, MAX_WIDTH)
COUNT = Interval(int, 1, MAX_COUNT)
LAYERS = Interval(int, 1, MAX_LAYERS)
SAMPLES = Interval(int, 1, MAX_SAMPLES)
BATCH = Interval(int, 1, MAX_BATCH)
THREADS = Interval(int, 0, MAX_THREADS)
STEPS = Interval(int, 1, MAX_STEPS)
#: A positive real hyper-parameter (learning rate, L2 weight, confidence, ...).
RATE = Interval(float, 0, MAX_REAL, closed="right")
#: A non-negative real hyper-parameter (a term's weight that may be off).
WEIGHT = Interval(float, 0, MAX_REAL)
SECONDS = Interval(float, 0, MAX_SECONDS, closed="right")


def _satisfied(entry, value) -> bool:
    return value is None if entry is None else entry.is_satisfied_by(value)


def describe(entries) -> str:
    """What a constraint list accepts, in words (for errors and the CLI's help)."""
    return " or ".join("None" if entry is None else str(entry) for entry in entries)


def check(name: str, value, *entries):
    """Return ``value`` if one of ``entries`` accepts it, else raise a ValueError naming it and what was expected."""
    for entry in entries:
        if _satisfied(entry, value):
            if hasattr(entry, "check"):
                entry.check(name, value)
            return value
    raise ValueError(f"{name}={value!r}; expected {describe(entries)}")


def check_real(name: str, value, low: float | None = None, high: float | None = None, low_open: bool = False,
               high_open: bool = False) -> float:
    """``value`` as a float if it is a finite number in the range (None: unbounded), else a ValueError naming it."""
    closed = {(False, False): "both", (False, True): "left", (True, False): "right", (True, True): "neither"}
    return float(check(name, value, Interval(float, low, high, closed=closed[low_open, high_open])))


def check_seed(value, name: str = "seed") -> int:
    """``value`` as an int if it is a seed (an integer in [0, 2**32)), else a ValueError naming it."""
    return int(check(name, value, SEED))


def validate_params(constraints: dict, params: dict) -> None:
    """Check every parameter of ``params`` that ``constraints`` lists (see the module docstring)."""
    for name, entries in constraints.items():
        if name in params:
            check(name, params[name], *entries)
