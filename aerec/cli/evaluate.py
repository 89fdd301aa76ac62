"""``aerec evaluate``: test metrics of a model, either fitted here (``--model NAME``) or saved (``--model DIR``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from aerec._version import __version__
from aerec.cli.common import (
    RATING_PROTOCOLS,
    CliError,
    Reading,
    Split,
    add_dataset_arguments,
    add_reading_arguments,
    check_protocol,
    add_tune_argument,
    check_device_param,
    format_metrics,
    load_dataset,
    load_side_features,
    make_split,
    parse_params,
    progress,
    tune_on_validation,
    with_progress_bar,
)
from aerec.evaluation import conditioning_rows, evaluate_ranking, mae, rmse
from aerec.models import MODELS, make_model, side_feature_arguments

RANKING_METRICS = ("recall", "ndcg", "precision", "map")


def register(commands) -> None:
    parser = commands.add_parser(
        "evaluate", help="print a model's test metrics (a model name is fitted first; a model directory is loaded)",
        description="Split a dataset with a seeded protocol and print the test metrics (ranking protocols: Recall@k "
                    "and NDCG@k over the full catalogue, training / fold-in items excluded; ratings protocol: RMSE "
                    "and MAE). With --model NAME the model is fitted on the training part first; with --model DIR "
                    "(written by aerec train) the saved model is evaluated on the test part of the split it was "
                    "trained with (dataset, protocol and seed default to those recorded in the directory).")
    parser.add_argument("--model", required=True,
                        help=f"a model name ({', '.join(sorted(MODELS))}) or a directory written by aerec train")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="with a model name: a hyper-parameter, repeatable (e.g. --param l2=500); `aerec models NAME` lists each model's, with defaults and ranges")
    add_dataset_arguments(parser, defaults_from_model=True)
    add_reading_arguments(parser)
    add_tune_argument(parser)
    parser.add_argument("--k", type=int, nargs="+", default=[20, 50, 100], help="cut-offs (default 20 50 100)")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    parser.set_defaults(run=run)


def run(args) -> int:
    bad_k = [k for k in args.k if k < 1]
    if bad_k:
        raise CliError(f"--k {bad_k[0]}; expected cut-offs >= 1")
    if Path(args.model).is_dir():
        if args.tune is not None:
            raise CliError("--tune applies to a model name; a saved model keeps the hyper-parameters it was "
                           "trained with")
        model, recorded, params = load_saved(args)
        name = recorded.get("model_name", args.model)
    else:
        if args.model not in MODELS:
            raise CliError(f"--model {args.model!r} is neither a model name ({', '.join(sorted(MODELS))}) nor a "
                           "model directory")
        params = parse_params(args.param)
        # bad names fail before any data is read
        model, recorded, name = make_model(args.model, **with_progress_bar(args.model, params)), {}, args.model
        check_device_param(params)
    settings = {"dataset": args.dataset or recorded.get("dataset") or "ml-latest-small",
                "protocol": args.protocol or recorded.get("protocol") or "strong",
                "seed": args.seed if args.seed is not None else recorded.get("seed", 98765),
                "n_heldout": args.n_heldout or recorded.get("n_heldout")}
    check_protocol(name, model, settings["protocol"])
    data = load_dataset(settings["dataset"], args.data_dir, reading=Reading.from_args(args, recorded.get("reading")))
    progress(f"loaded {data}")
    split = make_split(data, settings["protocol"], settings["seed"], settings["n_heldout"], settings["dataset"])
    progress(f"split ({split.protocol}, seed {split.seed}): {split.summary}")
    report = {"split": split.summary}
    features = {} if Path(args.model).is_dir() else side_feature_arguments(model, **load_side_features(args, args.data_dir))
    if not Path(args.model).is_dir() and args.tune is not None:
        started = time.perf_counter()
        model, report["tuning"] = tune_on_validation(name, params, split, args.tune, features)
        report["tuning_seconds"] = time.perf_counter() - started
        params = model.get_params()
    elif not Path(args.model).is_dir():
        started = time.perf_counter()
        model.fit(split.train, validation=split.validation, **features)  # the best validation epoch is kept
        report["fit_seconds"] = time.perf_counter() - started
        progress(f"fitted {model} in {report['fit_seconds']:.2f} s")
    else:
        check_same_items(model, split, args.model)
    report |= test_metrics(model, split, tuple(args.k))
    report |= {"dataset": str(settings["dataset"]), "protocol": split.protocol, "model": name, "params": params,
               "seed": split.seed, "aerec_version": __version__}
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def load_saved(args):
    import aerec.model_files as model_files

    if args.param:
        raise CliError("--param applies to a model name; a saved model keeps the hyper-parameters it was trained with")
    model = model_files.load(args.model)
    config = json.loads((Path(args.model) / "config.json").read_text())
    recorded = dict(config.get("metadata", {}))
    recorded["model_name"] = config["model"]
    progress(f"loaded {model} from {args.model}")
    return model, recorded, model.get_params()


def check_same_items(model, split: Split, where: str) -> None:
    """A saved model is tested on its own split only: the training items must be the model's, in its order."""
    items = split.train.item_ids
    if len(items) != model.n_items_ or not np.array_equal(np.asarray(items).astype(str), np.asarray(model.item_ids_).astype(str)):
        raise CliError(f"the model in {where} was trained on {model.n_items_} items that are not this split's "
                       f"{len(items)} training items; evaluate it with the dataset, protocol and seed it was trained "
                       "with (the defaults)")


def test_metrics(model, split: Split, ks: tuple) -> dict:
    if split.protocol in RATING_PROTOCOLS:
        coo = split.test[0].tocoo()
        predicted = model.predict(coo.row, coo.col)
        return {"metrics": {"rmse": rmse(coo.data, predicted), "mae": mae(coo.data, predicted)}}
    fold_in, heldout = split.test
    result = evaluate_ranking(model, fold_in, heldout, ks=ks, metrics=RANKING_METRICS,
                              user_features=conditioning_rows(model, fold_in, split.test_user_ids))
    return {"metrics": result.metrics, "n_users_evaluated": result.n_users_evaluated,
            "n_users_skipped": result.n_users_skipped}


def format_report(report: dict) -> str:
    title = f"{report['model']} on {report['dataset']} ({report['protocol']} protocol, seed {report['seed']})"
    lines = format_metrics(title, report["metrics"])
    if "n_users_evaluated" in report:
        lines.append(f"  users evaluated: {report['n_users_evaluated']}, skipped (nothing held out): {report['n_users_skipped']}")
    return "\n".join(lines)
