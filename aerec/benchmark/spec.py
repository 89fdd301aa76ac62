"""A benchmark spec: datasets, protocol, seeds, metrics, tuning and models, from TOML or a dict, checked whole.

The same structure either way (``tomllib`` reads the file)::

    name = "smoke"
    seeds = [98765, 1]
    metrics = ["ndcg@100", "recall@20"]        # reported on the test users
    baseline = "ease"                          # the named baseline of the paired tests (a model label)

    [protocol]
    name = "strong"                            # strong | strong_cold | strong_short | per_user | temporal | ratings | item_cold | user_cold
    n_heldout = 100

    [tuning]
    sampler = "tpe"                            # tpe | random | grid
    trials = 10                                # and/or seconds: the same budget for every model
    metric = "ndcg@100"                        # always measured on the validation users
    startup_trials = 4                         # TPE's random start (Optuna's default 10: all of a 10-trial budget)

    [[datasets]]
    name = "ml-100k"                           # a known name, or a file:
    # path = "x.csv", user = "userId", item = "movieId", rating = "rating", binarize = 3.5, min_user = 5

    [models.ease]                              # the label; the registry name is the label unless model = "..."
    fixed = { device = "cpu" }
    space = { l2 = { low = 10.0, high = 10000.0, log = true } }   # absent: the model's default search space

Everything is checked before any data is read or any model trained: an unknown key
anywhere, an unknown dataset, model, parameter, metric or protocol, a bad search
space, a tuning metric that is not a validation metric (there is no way to tune
on the test users), or a model that cannot run the protocol (a rating model on a
ranking protocol and the reverse) is a :class:`SpecError` naming the key and
where it is (file and table).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from aerec.data.datasets import DATASETS
from aerec.evaluation import RANKING_METRICS
from aerec.models import MODELS
from aerec.params import POSITIVE, POSITIVE_INT, SEED, Interval, check
from aerec.search_space import check_search_space, search_entry_from_dict

__all__ = ["BenchmarkSpec", "DatasetSpec", "ModelSpec", "ProtocolSpec", "SpecError", "TuningSpec", "load_spec",
           "load_spec_and_table"]

RATING_METRICS = ("rmse", "mae")
#: Protocols and the keys each takes (with their defaults); "ratings" is the explicit-feedback one.
PROTOCOLS = {
    "strong": {"n_heldout": None, "heldout_fraction": 0.2, "threshold": 3.5, "min_user_count": 5},
    "strong_cold": {"n_heldout": None, "heldout_fraction": 0.2, "threshold": 3.5, "min_user_count": 5},
    "strong_short": {"n_heldout": None, "heldout_fraction": 0.2, "threshold": 3.5, "min_user_count": 5, "longest": 5},
    "per_user": {"test_fraction": 0.2, "validation_fraction": 0.1, "by": "random"},
    "temporal": {"test_fraction": 0.2, "validation_fraction": 0.1},
    "ratings": {"test_fraction": 0.1, "validation_fraction": 0.1},
    "item_cold": {"test_fraction": 0.1, "validation_fraction": 0.1},
    "user_cold": {"test_fraction": 0.1, "validation_fraction": 0.1},
}
#: The protocols that hold out ratings (RMSE, MAE); the others rank items.
RATING_PROTOCOLS = ("ratings", "item_cold", "user_cold")
SAMPLERS = ("tpe", "random", "grid")
TOP_KEYS = ("name", "seeds", "metrics", "baseline", "protocol", "tuning", "datasets", "models")
DATASET_KEYS = ("name", "path", "user", "item", "rating", "timestamp", "binarize", "min_user", "min_item",
                "item_features", "user_features")
MODEL_KEYS = ("model", "fixed", "space")
TUNING_KEYS = ("sampler", "trials", "seconds", "metric", "pruning", "startup_trials")


class SpecError(ValueError):
    """A spec that cannot run; the message names the key and where it is."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    path: str | None = None
    columns: dict = field(default_factory=dict)
    binarize: float | None = None
    min_user: int = 0
    min_item: int = 0
    item_features: str | None = None  # a MovieLens name or folder, or a file whose first column is the id
    user_features: str | None = None


@dataclass(frozen=True)
class ProtocolSpec:
    name: str
    params: dict


@dataclass(frozen=True)
class TuningSpec:
    sampler: str = "tpe"
    trials: int | None = 20
    seconds: float | None = None
    metric: str = "ndcg@100"
    pruning: bool = True
    startup_trials: int | None = None  # TPE's random trials before it models (None: Optuna's default, 10)


@dataclass(frozen=True)
class ModelSpec:
    label: str
    model: str
    fixed: dict
    space: dict


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    seeds: tuple
    metrics: tuple
    protocol: ProtocolSpec
    tuning: TuningSpec
    datasets: tuple
    models: tuple
    baseline: str | None = None
    source: str = "<dict>"

    @property
    def ranking(self) -> bool:
        return self.protocol.name not in RATING_PROTOCOLS


def load_spec(spec) -> BenchmarkSpec:
    """A checked :class:`BenchmarkSpec` from a TOML file's path or a dict of the same structure."""
    return load_spec_and_table(spec)[0]


def load_spec_and_table(spec) -> tuple[BenchmarkSpec, dict | None]:
    """The checked spec and the table it was read from (a file is read once); a parsed spec has no table."""
    if isinstance(spec, BenchmarkSpec):
        return spec, None
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        try:
            table = tomllib.loads(path.read_text())
        except OSError as error:
            raise SpecError(f"cannot read the spec {path}: {error.strerror or error}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise SpecError(f"{path} is not valid TOML: {error}") from None
        return parse_spec(table, str(path)), table
    if isinstance(spec, dict):
        return parse_spec(spec, "<dict>"), spec
    raise SpecError(f"spec is {type(spec).__name__}; expected a TOML file's path or a dict")


def parse_spec(table: dict, source: str) -> BenchmarkSpec:
    at = _Where(source)
    _known_keys(table, TOP_KEYS, at("top level"))
    for key in ("datasets", "models"):
        if key not in table:
            raise SpecError(f"{at('top level')}: no {key!r}; expected at least one")
    protocol = _protocol(table.get("protocol", {"name": "strong"}), at("[protocol]"))
    ranking = protocol.name not in RATING_PROTOCOLS
    metrics = tuple(_metric(m, ranking, at("metrics")) for m in _list(table.get("metrics", _default_metrics(ranking)),
                                                                         at("metrics")))
    if len(set(metrics)) != len(metrics):
        raise SpecError(f"{at('metrics')}: metrics={list(metrics)}; expected each metric once")
    tuning = _tuning(table.get("tuning", {}), ranking, at("[tuning]"))
    seeds = tuple(_value("seeds", s, at("seeds"), SEED) for s in _list(table.get("seeds", [98765]), at("seeds")))
    if len(set(seeds)) != len(seeds):
        raise SpecError(f"{at('seeds')}: seeds={list(seeds)}; expected each seed once")
    datasets = tuple(_dataset(d, at(f"[[datasets]] #{i + 1}")) for i, d in enumerate(_list(table["datasets"],
                                                                                         at("datasets"))))
    names = [dataset.name for dataset in datasets]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise SpecError(f"{at('[[datasets]]')}: the name {twice[0]!r} is given to {names.count(twice[0])} datasets "
                        "(a file's name defaults to its stem); expected one name per dataset: set name = \"...\"")
    if not ranking:
        binarized = [dataset.name for dataset in datasets if dataset.binarize is not None]
        if binarized:
            raise SpecError(f"{at('[[datasets]]')}: {binarized[0]!r} is binarized for the ratings protocol, which "
                            "predicts the ratings themselves; expected no binarize")
    models_table = table["models"]
    if not isinstance(models_table, dict) or not models_table:
        raise SpecError(f"{at('[models]')}: expected a table of models, one per label")
    models = tuple(_model(label, entry, ranking, at(f"[models.{label}]")) for label, entry in models_table.items())
    baseline = table.get("baseline")
    if baseline is not None and (not isinstance(baseline, str) or baseline not in models_table):
        raise SpecError(f"{at('baseline')}: baseline={baseline!r}; expected one of the model labels "
                        f"{sorted(models_table)}")
    return BenchmarkSpec(name=str(table.get("name", Path(source).stem)), seeds=seeds, metrics=metrics,
                         protocol=protocol, tuning=tuning, datasets=datasets, models=models, baseline=baseline,
                         source=source)


# -- the parts ---------------------------------------------------------------------------
class _Where:
    def __init__(self, source: str):
        self.source = source

    def __call__(self, place: str) -> str:
        return f"{self.source} {place}"


def _known_keys(table, allowed, where: str) -> None:
    if not isinstance(table, dict):
        raise SpecError(f"{where}: {table!r}; expected a table")
    unknown = [key for key in table if key not in allowed]
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r}; expected one of {list(allowed)}")


def _list(value, where: str) -> list:
    if not isinstance(value, (list, tuple)) or not value:
        raise SpecError(f"{where}: {value!r}; expected a non-empty list")
    return list(value)


def _value(name: str, value, where: str, *entries):
    try:
        check(name, value, *entries)
    except ValueError as error:
        raise SpecError(f"{where}: {error}") from None
    return value


def _default_metrics(ranking: bool) -> list:
    return ["recall@20", "recall@50", "ndcg@100"] if ranking else ["rmse"]


def _metric(text, ranking: bool, where: str) -> str:
    if not isinstance(text, str):
        raise SpecError(f"{where}: metric {text!r}; expected a string such as 'ndcg@100' or 'rmse'")
    if not ranking:
        if text not in RATING_METRICS:
            raise SpecError(f"{where}: metric {text!r} on the ratings protocol; expected one of {RATING_METRICS}")
        return text
    name, _, k = text.partition("@")
    if name not in RANKING_METRICS or not k.isdigit() or int(k) < 1:
        raise SpecError(f"{where}: metric {text!r}; expected <name>@<k> with a name from {RANKING_METRICS} "
                        f"and k >= 1 on a ranking protocol")
    return text


def _protocol(table, where: str) -> ProtocolSpec:
    if isinstance(table, str):
        table = {"name": table}
    _known_keys(table, ("name", *sorted({key for keys in PROTOCOLS.values() for key in keys})), where)
    name = table.get("name")
    if name not in PROTOCOLS:
        raise SpecError(f"{where}: protocol name={name!r}; expected one of {list(PROTOCOLS)}")
    params = {key: value for key, value in table.items() if key != "name"}
    _known_keys(params, tuple(PROTOCOLS[name]), f"{where} (protocol {name!r})")
    fractions = {"heldout_fraction", "test_fraction", "validation_fraction"}
    for key, value in params.items():
        if key in fractions:
            _value(key, value, where, Interval(float, 0.0, 1.0, closed="neither"))
        elif key in ("n_heldout", "min_user_count", "longest"):
            _value(key, value, where, POSITIVE_INT)
        elif key == "threshold":
            _value(key, value, where, Interval(float), None)
        elif key == "by" and value not in ("random", "time"):
            raise SpecError(f"{where}: by={value!r}; expected 'random' or 'time'")
    return ProtocolSpec(name, {**PROTOCOLS[name], **params})


def _tuning(table, ranking: bool, where: str) -> TuningSpec:
    _known_keys(table, TUNING_KEYS, where)
    sampler = table.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise SpecError(f"{where}: sampler={sampler!r}; expected one of {list(SAMPLERS)}")
    trials = table.get("trials", None if "seconds" in table else 20)
    seconds = table.get("seconds")
    if trials is not None:
        _value("trials", trials, where, POSITIVE_INT)
    if seconds is not None:
        _value("seconds", seconds, where, POSITIVE)
    metric = _metric(table.get("metric", "ndcg@100" if ranking else "rmse"), ranking, f"{where} metric")
    pruning = table.get("pruning", True)
    if not isinstance(pruning, bool):
        raise SpecError(f"{where}: pruning={pruning!r}; expected true or false")
    startup = table.get("startup_trials")
    if startup is not None:
        _value("startup_trials", startup, where, POSITIVE_INT)
        if sampler != "tpe":
            raise SpecError(f"{where}: startup_trials={startup!r} with sampler={sampler!r}; startup_trials is the "
                            "TPE sampler's (its random trials before it models the history)")
    return TuningSpec(sampler=sampler, trials=trials, seconds=seconds, metric=metric, pruning=pruning,
                      startup_trials=startup)


def _dataset(table, where: str) -> DatasetSpec:
    if isinstance(table, str):
        table = {"name": table}
    _known_keys(table, DATASET_KEYS, where)
    name, path = table.get("name"), table.get("path")
    if name is not None and (not isinstance(name, str) or not name or "/" in name):
        raise SpecError(f"{where}: name={name!r}; expected a non-empty string without '/'")
    if path is None and name not in DATASETS:
        raise SpecError(f"{where}: unknown dataset {name!r}; expected one of {sorted(DATASETS)} or a path")
    if path is not None and not isinstance(path, str):
        raise SpecError(f"{where}: path={path!r}; expected a string")
    columns = {key: table[key] for key in ("user", "item", "rating", "timestamp") if key in table}
    for key, column in columns.items():
        if not isinstance(column, str) and not (key in ("rating", "timestamp") and column is False):
            raise SpecError(f"{where}: {key}={column!r}; expected a column name"
                            + (" (or false: none)" if key in ("rating", "timestamp") else ""))
    if path is None and columns:
        raise SpecError(f"{where}: column names {sorted(columns)} for the known dataset {name!r}; "
                        "columns are for a file given by path")
    binarize = table.get("binarize")
    if binarize is not None:
        _value("binarize", binarize, where, Interval(float))
    for key in ("min_user", "min_item"):
        _value(key, table.get(key, 0), where, Interval(int, 0, None))
    features = {}
    for key in ("item_features", "user_features"):
        value = table.get(key)
        if value is True:  # the dataset's own MovieLens files
            if path is not None and not Path(path).is_dir():
                features[key] = str(Path(path).parent)
            else:
                features[key] = path or name
        elif isinstance(value, str) and value:
            features[key] = value
        elif value is not None and value is not False:
            raise SpecError(f"{where}: {key}={value!r}; expected true (the dataset's MovieLens files), a dataset "
                            "name, a folder or a file whose first column is the id")
    return DatasetSpec(name=str(name if name is not None else Path(path).stem), path=path, columns=columns,
                       binarize=binarize, min_user=table.get("min_user", 0), min_item=table.get("min_item", 0),
                       **features)


def _model(label: str, table, ranking: bool, where: str) -> ModelSpec:
    _known_keys(table, MODEL_KEYS, where)
    name = table.get("model", label)
    if not isinstance(name, str) or name not in MODELS:
        raise SpecError(f"{where}: unknown model {name!r}; expected one of {sorted(MODELS)}")
    cls = MODELS[name]
    rates = hasattr(cls, "predict")
    if ranking and rates or not ranking and not rates:
        kind, protocol = (("a rating model", "a ranking protocol") if rates
                          else ("a ranking model", "the ratings protocol"))
        raise SpecError(f"{where}: {name!r} is {kind} and cannot run {protocol}")
    fixed = table.get("fixed", {})
    _known_keys(fixed, cls.param_names(), f"{where} fixed")
    try:
        cls(**fixed).check_params()
    except (TypeError, ValueError) as error:
        raise SpecError(f"{where} fixed: {error}") from None
    if "space" in table:
        _known_keys(table["space"], cls.param_names(), f"{where} space")
        try:
            space = {param: search_entry_from_dict(param, entry, where) for param, entry in table["space"].items()}
        except ValueError as error:
            raise SpecError(str(error)) from None
    else:
        space = {param: entry for param, entry in cls.default_search_space().items() if param not in fixed}
    both = sorted(set(space) & set(fixed))
    if both:
        raise SpecError(f"{where}: {both[0]!r} is both fixed and searched; expected one of the two")
    try:
        check_search_space(cls, space, where)
    except ValueError as error:
        raise SpecError(str(error)) from None
    return ModelSpec(label=label, model=name, fixed=dict(fixed), space=space)
