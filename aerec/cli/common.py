"""What the commands share: the parser class, dataset arguments and loading, splits, parameters, output."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aerec.data import (
    DATASETS,
    Interactions,
    load_movielens,
    per_user_holdout,
    random_holdout,
    read_csv,
    read_parquet,
    strong_generalization,
)
from aerec.data.datasets import DEFAULT_DATASET, STRONG_N_HELDOUT

PROTOCOLS = ("strong", "per-user", "ratings")
DEFAULT_SEED = 98765


class CliError(ValueError):
    """A problem with the command's input: exit code 2 and one line on stderr."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- arguments ------------------------------------------------------------------------------------
def add_dataset_arguments(parser, defaults_from_model: bool = False) -> None:
    """``--dataset --data-dir --protocol --seed --n-heldout``; with ``defaults_from_model`` they default to the model's."""
    recorded = " (default: the one recorded in the model directory)" if defaults_from_model else ""
    parser.add_argument("--dataset", default=None if defaults_from_model else DEFAULT_DATASET,
                        help=f"a known dataset ({', '.join(DATASETS)}) or a path to a ratings file "
                             "(MovieLens formats, or CSV/Parquet with user,item[,rating][,timestamp] columns); "
                             f"default {DEFAULT_DATASET}, shipped with aerec" + recorded)
    parser.add_argument("--data-dir", help="parent folder of the dataset folders (default: $AEREC_DATA_DIR)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default=None if defaults_from_model else "strong",
                        help="strong: ratings > 3.5 kept (data without ratings kept as it is), held-out users with "
                             "80/20 fold-in (Liang et al. 2018); per-user: 20%% of each user's items held out; "
                             "ratings: random 90/10 split of the ratings (AutoRec)" + recorded)
    parser.add_argument("--seed", type=int, default=None if defaults_from_model else DEFAULT_SEED,
                        help=f"split seed (default {DEFAULT_SEED}, vae_cf's)" + recorded)
    parser.add_argument("--n-heldout", type=int,
                        help="strong protocol: validation and test users each (default: 100 for ml-100k, "
                             "60 for ml-latest-small, 10000 for ml-20m, else 10%% of users)" + recorded)


def parse_params(pairs: list[str]) -> dict:
    params = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--param {pair!r}; expected KEY=VALUE")
        params[key] = parse_value(raw)
    return params


def parse_value(raw: str):
    """``true``/``false``, ``none``, an int, a float, ``a,b,...`` (a tuple of such values, e.g. ``hidden=64,8``), or the text."""
    if "," in raw:
        return tuple(parse_value(part) for part in raw.split(",") if part)
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def check_positive_int(flag: str, value) -> None:
    if value is not None and value < 1:
        raise CliError(f"{flag} {value}; expected an integer >= 1")


def check_device_param(params: dict) -> None:
    """Refuse ``--param device=cuda`` on a machine without CUDA now, not as an error from deep inside torch."""
    from aerec._torch import check_device_available, resolve_device

    device = params.get("device")
    if isinstance(device, str) and device != "auto":
        check_device_available(resolve_device(device), "--param device")


# -- data -----------------------------------------------------------------------------------------
def load_dataset(name_or_path: str, data_dir, flag: str = "--dataset") -> Interactions:
    """A known dataset by name, a MovieLens folder or ratings file, or a generic CSV / Parquet file."""
    path = Path(name_or_path)
    if name_or_path in DATASETS or path.is_dir() or path.name in ("u.data", "ratings.dat", "ratings.csv"):
        return load_movielens(name_or_path, data_dir=data_dir)
    if not path.is_file():
        raise CliError(f"{flag} {name_or_path!r} is neither a known dataset ({', '.join(DATASETS)}) nor a file")
    return read_table(path, flag)


def read_table(path: Path, flag: str) -> Interactions:
    """A generic CSV / Parquet file with user and item columns (rating and timestamp when present)."""
    reader = read_parquet if path.suffix == ".parquet" else read_csv
    return reader(path, **reader_columns(path, flag))


def reader_columns(path: Path, flag: str) -> dict:
    """Column roles of a generic file, from its header only: user and item required, rating and timestamp when present."""
    from aerec.data.readers import file_header, optional_columns

    try:
        header = file_header(path)
    except ImportError as exc:
        raise CliError(str(exc)) from exc
    except ValueError as exc:
        raise CliError(f"{flag} {exc}") from exc
    missing = [name for name in ("user", "item") if name not in header]
    if missing:
        raise CliError(f"{flag} {path} has columns {header}; expected user and item (and optionally rating, timestamp)")
    return optional_columns(header)


@dataclass
class Split:
    """One protocol's parts: what a model trains on, validates on, and is tested on."""

    protocol: str
    seed: int
    n_heldout: int | None
    train: Interactions
    validation: object  # (fold_in, heldout) for ranking protocols, a ratings matrix for "ratings", or None
    test: tuple  # (fold_in, heldout) matrices for ranking protocols; (test ratings,) for "ratings"
    summary: dict


def make_split(data: Interactions, protocol: str, seed: int, n_heldout: int | None, dataset: str) -> Split:
    """The seeded split of ``protocol`` (see ``--protocol``); the same arguments give the same split."""
    if protocol == "strong":
        n_heldout = n_heldout or STRONG_N_HELDOUT.get(str(dataset), max(1, data.n_users // 10))
        implicit = bool(np.all(data.matrix.data == 1.0))  # no ratings to binarize (e.g. a file without a rating column)
        split = strong_generalization(data, n_heldout=n_heldout, seed=seed, threshold=None if implicit else 3.5)
        return Split(protocol, seed, n_heldout, split.train, (split.validation_fold_in, split.validation_heldout),
                     (split.test_fold_in.matrix, split.test_heldout.matrix), split.summary())
    if protocol == "per-user":
        split = per_user_holdout(data, test_fraction=0.2, seed=seed)
        return Split(protocol, seed, None, split.train, None, (split.train.matrix, split.test.matrix), split.summary())
    # 10% of the training ratings pick the iteration of models with epochs (AutoRec's protocol)
    split = random_holdout(data, test_fraction=0.1, validation_fraction=0.1, seed=seed)
    return Split(protocol, seed, None, split.train, split.validation, (split.test.matrix,), split.summary())


# -- output ---------------------------------------------------------------------------------------
@contextmanager
def atomic_output(path: Path):
    """Yield a temporary path beside ``path``; renamed onto it only when the block succeeds (else removed)."""
    path = Path(path)
    if path.is_dir():
        raise CliError(f"--output {path} is a directory; expected a file name")
    if not path.parent.is_dir():
        raise CliError(f"--output {path}: folder {path.parent} does not exist")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def format_metrics(title: str, metrics: dict) -> list[str]:
    width = max(len(name) for name in metrics)
    return [title] + [f"  {name:<{width}}  {value:.4f}" for name, value in metrics.items()]


# -- tuning ---------------------------------------------------------------------------------------
def add_tune_argument(parser) -> None:
    parser.add_argument("--tune", type=int, default=None, metavar="N",
                        help="tune the model first: N trials of Optuna's TPE (seeded with --seed) over the model's "
                             "default search space (`aerec models NAME`; parameters given with --param stay fixed), "
                             "chosen on the validation part (NDCG@100, or RMSE for the ratings protocol), as "
                             "`aerec benchmark` does; the best trial's model is the one kept")


def tune_on_validation(name: str, params: dict, split: Split, trials: int):
    """``--tune N``: the best of N trials on the split's validation part; returns (its fitted model, a record)."""
    import optuna

    from aerec.benchmark.protocols import LOWER_IS_BETTER, CellData
    from aerec.benchmark.runner import counted_trials, tune
    from aerec.benchmark.spec import ModelSpec, TuningSpec
    from aerec.models import MODELS
    from aerec.search_space import trial_params

    check_positive_int("--tune", trials)
    if split.validation is None:
        raise CliError(f"--tune needs a validation part and the {split.protocol!r} protocol has none; "
                       "use --protocol strong or ratings")
    space = {param: entry for param, entry in MODELS[name].default_search_space().items() if param not in params}
    if not space:
        raise CliError(f"--tune: {name!r} has nothing left to tune (no default search space, or every searched "
                       "parameter is given with --param)")
    fixed = {**params, "progress": False} if "progress" in MODELS[name].param_names() else dict(params)
    metric = "rmse" if split.protocol == "ratings" else "ndcg@100"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize" if metric in LOWER_IS_BETTER else "maximize",
                                pruner=optuna.pruners.MedianPruner(n_warmup_steps=5))
    cell = CellData(split=None, train=split.train, validation=split.validation, test=split.test)
    best, model, _ = tune(study, TuningSpec(trials=trials, metric=metric), ModelSpec(name, name, fixed, space), cell,
                          split.seed, f"--tune {name}")
    trials_run = counted_trials(study)
    progress(f"tuned {name}: {len(trials_run)} trials, best {metric} {best.value:.4f} on the validation part with "
             f"{trial_params(space, best.params)}")
    chosen = trial_params(space, best.params)
    record = {"trials": len(trials_run), "metric": metric, "best_validation": best.value, "chosen": chosen,
              "space": sorted(space), "history": [t.value for t in trials_run]}
    return model, record
