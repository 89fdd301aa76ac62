"""What the commands share: the parser class, dataset arguments and loading, splits, parameters, output."""

from __future__ import annotations

import argparse
import glob
import os
import socket
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from aerec.data import (
    DATASETS,
    Interactions,
    cold_start_split,
    load_movielens,
    per_user_holdout,
    random_holdout,
    strong_generalization,
)
from aerec.data.datasets import DEFAULT_DATASET, STRONG_N_HELDOUT
from aerec.state import process_alive

PROTOCOLS = ("strong", "strong-cold", "per-user", "ratings", "item-cold", "user-cold")
#: The protocols that hold out ratings (RMSE of a rating model); the others rank items.
RATING_PROTOCOLS = ("ratings", "item-cold", "user-cold")
DEFAULT_SEED = 98765


class CliError(ValueError):
    """A problem with the command's input: exit code 2 and one line on stderr."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


#: ``--quiet``: no progress messages (and no progress bars) on stderr.
QUIET = False


def progress(message: str) -> None:
    if not QUIET:
        print(message, file=sys.stderr, flush=True)


def with_progress_bar(name: str, params: dict) -> dict:
    """Models with a progress bar show it (on stderr) unless the user said otherwise (``--quiet``, a param)."""
    from aerec.models import MODELS

    if "progress" in MODELS[name].param_names() and "progress" not in params:
        return {**params, "progress": not QUIET}
    return params


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
                             "80/20 fold-in (Liang et al. 2018); strong-cold: the same held-out users with no "
                             "history, every item of theirs ranked (user cold start); per-user: 20%% of each user's items held out; "
                             "ratings: random 90/10 split of the ratings (AutoRec); item-cold / user-cold: every "
                             "rating of 10%% of the items / users held out for test and of another 10%% for "
                             "validation (cold start; a model sees their side features only)" + recorded)
    parser.add_argument("--item-features", metavar="SOURCE",
                        help="side features of the items, for models that take them (cfn): a MovieLens dataset "
                             "name or folder (genres, release year; ml-latest-small's tags), or a CSV/Parquet file "
                             "whose first column is the item id (other columns: categorical, multi-valued with |, "
                             "or numeric)")
    parser.add_argument("--user-features", metavar="SOURCE",
                        help="side features of the users (ML-100K's u.user, ML-1M's users.dat: age, gender, "
                             "occupation), or a CSV/Parquet file whose first column is the user id")
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


def check_protocol(name: str, model, protocol: str) -> None:
    """A rating model (AutoRec, CFN, bias) on the rating protocols only; a ranking model on the others."""
    if protocol in RATING_PROTOCOLS and not hasattr(model, "predict"):
        raise CliError(f"model {name!r} ranks items but does not predict ratings; "
                       f"protocol {protocol!r} needs a rating model (use --protocol strong or per-user)")
    if protocol not in RATING_PROTOCOLS and hasattr(model, "predict"):
        raise CliError(f"model {name!r} is a rating model (it predicts ratings and is validated on held-out "
                       f"ratings); --protocol {protocol} ranks binarized items: use --protocol ratings")


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
DUPLICATE_FLAGS = ("error", "first", "last", "sum", "mean", "max")


@dataclass(frozen=True)
class Reading:
    """How a command reads an interactions file (``--user-col`` ... ``--no-verify``) and prepares it."""

    user_col: str | None = None
    item_col: str | None = None
    rating_col: str | None = None  # "none": no rating column (every entry 1.0)
    timestamp_col: str | None = None
    sep: str | None = None
    duplicates: str = "error"
    binarize: float | str | None = None  # a threshold, "none" (histories: ratings as they are), or None
    min_user_count: int = 0
    min_item_count: int = 0
    verify: bool = True

    @classmethod
    def from_args(cls, args, recorded: dict | None = None) -> "Reading":
        """The flags given, the ``recorded`` reading (a model's) for those left at their defaults."""
        given = {"user_col": args.user_col, "item_col": args.item_col, "rating_col": args.rating_col,
                 "timestamp_col": args.timestamp_col, "sep": args.sep, "duplicates": args.duplicates,
                 "binarize": parse_binarize(args.binarize), "min_user_count": args.min_user_count,
                 "min_item_count": args.min_item_count, "verify": not args.no_verify}
        defaults = cls()
        for name, value in (recorded or {}).items():
            if name in given and given[name] == getattr(defaults, name):
                given[name] = value
        for flag in ("min_user_count", "min_item_count"):
            if given[flag] < 0:
                raise CliError(f"--{flag.replace('_', '-')} {given[flag]}; expected a count >= 0")
        return cls(**given)

    def record(self) -> dict:
        """The entries that differ from the defaults (kept in a model's metadata, so evaluate reads alike)."""
        defaults = Reading()
        return {name: value for name, value in vars(self).items() if value != getattr(defaults, name)}

    def names_columns(self) -> bool:
        return any(value is not None for value in (self.user_col, self.item_col, self.rating_col,
                                                   self.timestamp_col, self.sep))


def parse_binarize(raw):
    if raw is None or raw == "none":
        return raw
    try:
        return float(raw)
    except ValueError:
        raise CliError(f"--binarize {raw!r}; expected a rating threshold (ratings above it kept as 1) "
                       "or none") from None


def add_reading_arguments(parser, what: str = "--dataset", histories: bool = False) -> None:
    """``--user-col`` ... ``--no-verify``: how ``what`` is read when it is a file (of any name)."""
    group = parser.add_argument_group(
        f"reading {what}", "a file of any name: CSV with any separator, with or without a header (then its columns "
                           "are user, item[, rating[, timestamp]]), or Parquet; columns are found by name (user, "
                           "userId, user_id, ...; item, movieId, item_id, ...; rating; timestamp) unless named here")
    group.add_argument("--user-col", help="the user id column")
    group.add_argument("--item-col", help="the item id column")
    group.add_argument("--rating-col", help="the rating column, or none: every entry 1.0 (default: a column called "
                                            "rating, score or stars, if any)")
    group.add_argument("--timestamp-col", help="the timestamp column (default: one called timestamp or time, if any)")
    group.add_argument("--sep", help="the CSV separator (default: sniffed from the first line: ::, tab, ;, | or ,)")
    group.add_argument("--duplicates", choices=DUPLICATE_FLAGS, default="error",
                       help="a (user, item) pair given twice: error (default), keep the first or last row, or "
                            "combine the ratings (sum, mean, max)")
    if histories:
        group.add_argument("--binarize", metavar="THRESHOLD",
                           help="keep the history's ratings above THRESHOLD as 1 and drop the others; none: use "
                                "the ratings as they are (default: as the model's training data was prepared, "
                                "ratings > 3.5 kept as 1 for a model trained with the strong protocol on ratings)")
    else:
        group.add_argument("--binarize", metavar="THRESHOLD",
                           help="keep ratings above THRESHOLD as 1, drop the others, before the split")
    group.add_argument("--min-user-count", type=int, default=0, help="drop users with fewer interactions (after "
                                                                      "--binarize)")
    group.add_argument("--min-item-count", type=int, default=0, help="drop items with fewer interactions")
    group.add_argument("--no-verify", action="store_true",
                       help="read a known MovieLens file even if it does not match its published checksum")


def load_dataset(name_or_path: str, data_dir, flag: str = "--dataset", reading: Reading = Reading()) -> Interactions:
    """A known dataset by name or a MovieLens folder, or an interactions file of any name
    (:func:`aerec.data.readers.read_interactions`), prepared as ``reading`` says."""
    from aerec.data import binarize, filter_min_counts
    from aerec.data.readers import read_interactions

    path = Path(name_or_path)
    try:
        if name_or_path in DATASETS or path.is_dir():
            if reading.names_columns():
                raise CliError(f"{flag} {name_or_path}: --user-col, --item-col, --rating-col, --timestamp-col and "
                               "--sep are for a file; a known dataset or folder is read as MovieLens")
            data = load_movielens(name_or_path, data_dir=data_dir, verify=reading.verify)
        elif not path.is_file():
            raise CliError(f"{flag} {name_or_path!r} is neither a known dataset ({', '.join(DATASETS)}) nor a file")
        else:
            def column(value):
                return False if value == "none" else value

            data = read_interactions(path, user=reading.user_col, item=reading.item_col,
                                     rating=column(reading.rating_col), timestamp=column(reading.timestamp_col),
                                     sep=reading.sep, duplicates=reading.duplicates, verify=reading.verify)
        if isinstance(reading.binarize, float):
            data = binarize(data, threshold=reading.binarize)
        if reading.min_user_count or reading.min_item_count:
            data = filter_min_counts(data, min_user=reading.min_user_count, min_item=reading.min_item_count)
    except CliError:
        raise
    except ValueError as exc:
        where = f"{flag} " if str(path) in str(exc) else f"{flag} {name_or_path}: "
        raise CliError(cli_advice(where + str(exc))) from exc
    if data.nnz == 0:
        raise CliError(f"{flag} {name_or_path}: no interactions left after --binarize / --min-*-count")
    return data


def load_side_features(args, data_dir=None) -> dict:
    """``--item-features`` / ``--user-features`` read as :class:`~aerec.data.features.SideFeatures`, keyed as
    ``fit`` takes them (``item_features``, ``user_features``); absent flags are left out."""
    from aerec.data.datasets import DATASETS as KNOWN
    from aerec.data.features import features_from_pandas, load_item_features, load_user_features

    features = {}
    for flag, key, loader in (("--item-features", "item_features", load_item_features),
                              ("--user-features", "user_features", load_user_features)):
        source = getattr(args, key, None)
        if source is None:
            continue
        path = Path(source)
        try:
            if source in KNOWN or path.is_dir():
                features[key] = loader(source, data_dir)
            elif path.is_file():
                frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, sep=None,
                                                                                         engine="python")
                features[key] = features_from_pandas(frame, id=frame.columns[0])
            else:
                raise CliError(f"{flag} {source!r} is neither a known dataset ({', '.join(KNOWN)}), a folder, nor "
                               "a file")
        except CliError:
            raise
        except (ValueError, OSError) as exc:
            raise CliError(f"{flag} {source}: {exc}") from exc
    return features


def cli_advice(message: str) -> str:
    """The data layer's advice in the command line's words (its keyword arguments are flags here)."""
    return (message.replace("pass duplicates='first', 'last', 'sum', 'mean' or 'max'",
                            "pass --duplicates first, last, sum, mean or max")
            .replace("Pass verify=False to read it anyway", "Pass --no-verify to read it anyway"))


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
    threshold: float | None = None  # ratings above it kept as 1 before the split (the strong protocol on ratings)
    test_user_ids: object = None  # the raw id of each row of the test matrices (a conditional model's features)


def make_split(data: Interactions, protocol: str, seed: int, n_heldout: int | None, dataset: str) -> Split:
    """The seeded split of ``protocol`` (see ``--protocol``); the same arguments give the same split."""
    if protocol in ("strong", "strong-cold"):
        n_heldout = n_heldout or STRONG_N_HELDOUT.get(str(dataset), max(1, data.n_users // 10))
        implicit = bool(np.all(data.matrix.data == 1.0))  # no ratings to binarize (e.g. a file without a rating column)
        threshold = None if implicit else 3.5
        split = strong_generalization(data, n_heldout=n_heldout, seed=seed, threshold=threshold)
        if protocol == "strong-cold":
            split = split.without_history()
        return Split(protocol, seed, n_heldout, split.train, (split.validation_fold_in, split.validation_heldout),
                     (split.test_fold_in.matrix, split.test_heldout.matrix), split.summary(), threshold,
                     split.test_fold_in.user_ids)
    if protocol == "per-user":
        split = per_user_holdout(data, test_fraction=0.2, seed=seed)
        return Split(protocol, seed, None, split.train, None, (split.train.matrix, split.test.matrix), split.summary(),
                     test_user_ids=split.train.user_ids)
    if protocol in ("item-cold", "user-cold"):
        split = cold_start_split(data, by=protocol.partition("-")[0], test_fraction=0.1, validation_fraction=0.1,
                                 seed=seed)
        return Split(protocol, seed, None, split.train, split.validation, (split.test.matrix,), split.summary())
    # 10% of the training ratings pick the iteration of models with epochs (AutoRec's protocol)
    split = random_holdout(data, test_fraction=0.1, validation_fraction=0.1, seed=seed)
    return Split(protocol, seed, None, split.train, split.validation, (split.test.matrix,), split.summary())


# -- output ---------------------------------------------------------------------------------------
OUTPUT_FORMATS = (".csv", ".parquet")


def add_overwrite_argument(parser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists (as train's --overwrite)")


def check_output(output: str | None, overwrite: bool, inputs=()) -> Path | None:
    """``--output`` as a path, checked before any work: a .csv or .parquet name, not one of ``inputs`` (compared by
    inode, so another spelling of the input's path is caught), and not an existing file unless ``overwrite``."""
    if output is None:
        return None
    path = Path(output)
    if path.suffix not in OUTPUT_FORMATS:
        raise CliError(f"--output {path}: expected a name ending in {' or '.join(OUTPUT_FORMATS)}")
    for flag, given in inputs:
        if given is not None and path.exists() and Path(given).exists() and os.path.samefile(path, given):
            raise CliError(f"--output {path} is the same file as {flag} {given}; writing would destroy the input: "
                           "name another output")
    if path.is_dir():
        raise CliError(f"--output {path} is a directory; expected a file name")
    if path.exists() and not overwrite:
        raise CliError(f"--output {path} already exists; pass --overwrite to replace it")
    return path


@contextmanager
def atomic_output(path: Path):
    """Yield a temporary path beside ``path``; renamed onto it only when the block succeeds (else removed).

    The temporary's name holds this host and process id; temporaries of the same output that a killed run of this
    host left (their process is gone) are removed first.
    """
    path = Path(path)
    if path.is_dir():
        raise CliError(f"--output {path} is a directory; expected a file name")
    if not path.parent.is_dir():
        raise CliError(f"--output {path}: folder {path.parent} does not exist")
    from aerec.state import default_file_mode

    host = socket.gethostname().replace(".", "_")
    remove_stale_temporaries(path, host)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.{host}-{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    os.chmod(temporary, default_file_mode())
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def remove_stale_temporaries(path: Path, host: str) -> None:
    """Delete ``.<name>.<host>-<pid>.*.tmp`` files beside ``path`` whose process no longer runs on this host."""
    prefix = f".{path.name}.{host}-"
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if not candidate.name.startswith(prefix):
            continue  # another host's, or a name without a process id: not ours to judge
        pid = candidate.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            candidate.unlink(missing_ok=True)


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


def tune_on_validation(name: str, params: dict, split: Split, trials: int, features: dict | None = None):
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
    metric = "rmse" if split.protocol in RATING_PROTOCOLS else "ndcg@100"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize" if metric in LOWER_IS_BETTER else "maximize",
                                pruner=optuna.pruners.MedianPruner(n_warmup_steps=5))
    cell = CellData(split=None, train=split.train, validation=split.validation, test=split.test,
                    test_user_ids=split.test_user_ids, fit_kwargs=dict(features or {}))
    best, model, _ = tune(study, TuningSpec(trials=trials, metric=metric), ModelSpec(name, name, fixed, space), cell,
                          split.seed, f"--tune {name}")
    trials_run = counted_trials(study)
    progress(f"tuned {name}: {len(trials_run)} trials, best {metric} {best.value:.4f} on the validation part with "
             f"{trial_params(space, best.params)}")
    chosen = trial_params(space, best.params)
    record = {"trials": len(trials_run), "metric": metric, "best_validation": best.value, "chosen": chosen,
              "space": sorted(space), "history": [t.value for t in trials_run]}
    return model, record
