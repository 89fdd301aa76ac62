"""The ``aerec`` command line: ``aerec evaluate``, ``aerec demo``.

Results go to stdout (a table, or with ``--json`` exactly one JSON object);
progress goes to stderr. Bad input exits with code 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from aerec import __version__
from aerec.data import (
    DATASETS,
    Interactions,
    load_item_titles,
    load_movielens,
    per_user_holdout,
    random_holdout,
    read_csv,
    read_parquet,
    strong_generalization,
)
from aerec.data.datasets import DEFAULT_DATASET, STRONG_N_HELDOUT
from aerec.evaluation import evaluate_ranking, mae, rmse
from aerec.models import MODELS, make_model

PROTOCOLS = ("strong", "per-user", "ratings")
DEMO_MODELS = (("popularity", {}), ("ease", {"l2": 500.0}))


class CliError(ValueError):
    """A problem with the command's input: exit code 2 and one line on stderr."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="aerec", description="Autoencoder recommenders: train, evaluate and recommend.")
    parser.add_argument("--version", action="version", version=f"aerec {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    evaluate = commands.add_parser(
        "evaluate", help="split a dataset, fit a model on its training part and print test metrics",
        description="Split a dataset with a seeded protocol, fit a model on the training part and print the "
                    "test metrics (ranking protocols: Recall@k and NDCG@k over the full catalogue, training / "
                    "fold-in items excluded; ratings protocol: RMSE and MAE).")
    evaluate.add_argument("--dataset", default=DEFAULT_DATASET,
                          help=f"a known dataset ({', '.join(DATASETS)}) or a path to a ratings file "
                               "(MovieLens formats, or CSV/Parquet with user,item[,rating][,timestamp] columns); "
                               f"default {DEFAULT_DATASET}, shipped with aerec")
    evaluate.add_argument("--data-dir", help="parent folder of the dataset folders (default: $AEREC_DATA_DIR)")
    evaluate.add_argument("--protocol", choices=PROTOCOLS, default="strong",
                          help="strong: ratings > 3.5 kept (data without ratings kept as it is), held-out users with "
                               "80/20 fold-in (Liang et al. 2018); per-user: 20%% of each user's items held out; ratings: random 90/10 split of the ratings (AutoRec)")
    evaluate.add_argument("--model", required=True, choices=sorted(MODELS), help="model name")
    evaluate.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                          help="a model hyper-parameter, repeatable (e.g. --param l2=500)")
    evaluate.add_argument("--seed", type=int, default=98765, help="split seed (default 98765, vae_cf's)")
    evaluate.add_argument("--n-heldout", type=int,
                          help="strong protocol: validation and test users each (default: 100 for ml-100k, "
                               "60 for ml-latest-small, 10000 for ml-20m, else 10%% of users)")
    evaluate.add_argument("--k", type=int, nargs="+", default=[20, 50, 100], help="cut-offs (default 20 50 100)")
    evaluate.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")

    demo = commands.add_parser(
        "demo", help="the main job on the shipped dataset: split, fit, evaluate and recommend with titles",
        description=f"Run popularity and EASE on the strong-generalization split of {DEFAULT_DATASET} "
                    "(shipped with aerec), print their test metrics and a test user's top-10 with movie titles.")
    demo.add_argument("--seed", type=int, default=98765, help="split seed (default 98765)")
    demo.add_argument("--user", help="raw id of the test user to recommend for (default: the first test user)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "evaluate":
            return cmd_evaluate(args)
        return cmd_demo(args)
    except (ValueError, TypeError, FileNotFoundError, MemoryError) as exc:
        message = " ".join(str(exc).split())
        print(f"aerec {args.command}: error: {message}", file=sys.stderr)
        return 2


# -- evaluate ------------------------------------------------------------------------
def cmd_evaluate(args) -> int:
    params = parse_params(args.param)
    model = make_model(args.model, **params)  # unknown names / values fail before any data is read
    bad_k = [k for k in args.k if k < 1]
    if bad_k:
        raise CliError(f"--k {bad_k[0]}; expected cut-offs >= 1")
    if args.protocol == "ratings" and not hasattr(model, "predict"):
        raise CliError(f"model {args.model!r} ranks items but does not predict ratings; "
                       "protocol 'ratings' needs a rating model (use --protocol strong or per-user)")
    data = load_dataset(args.dataset, args.data_dir)
    progress(f"loaded {data}")
    if args.protocol == "ratings":
        report = evaluate_ratings(model, data, args.seed)
    else:
        report = evaluate_topn(model, data, args)
    report |= {"dataset": str(args.dataset), "protocol": args.protocol, "model": args.model, "params": params,
               "seed": args.seed, "aerec_version": __version__}
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(report))
    return 0


def evaluate_topn(model, data: Interactions, args) -> dict:
    fold_in, heldout, train, validation, summary = ranking_split(data, args)
    progress(f"split ({args.protocol}, seed {args.seed}): {summary}")
    started = time.perf_counter()
    model.fit(train, validation=validation)  # models with epochs keep their best validation epoch
    fit_seconds = time.perf_counter() - started
    progress(f"fitted {model} in {fit_seconds:.2f} s")
    result = evaluate_ranking(model, fold_in, heldout, ks=tuple(args.k), metrics=("recall", "ndcg", "precision", "map"))
    return {"metrics": result.metrics, "n_users_evaluated": result.n_users_evaluated,
            "n_users_skipped": result.n_users_skipped, "split": summary, "fit_seconds": fit_seconds}


def ranking_split(data: Interactions, args):
    if args.protocol == "strong":
        n_heldout = args.n_heldout or STRONG_N_HELDOUT.get(str(args.dataset), max(1, data.n_users // 10))
        implicit = bool(np.all(data.matrix.data == 1.0))  # no ratings to binarize (e.g. a file without a rating column)
        split = strong_generalization(data, n_heldout=n_heldout, seed=args.seed, threshold=None if implicit else 3.5)
        validation = (split.validation_fold_in, split.validation_heldout)
        return split.test_fold_in.matrix, split.test_heldout.matrix, split.train, validation, split.summary()
    split = per_user_holdout(data, test_fraction=0.2, seed=args.seed)
    return split.train.matrix, split.test.matrix, split.train, None, split.summary()


def evaluate_ratings(model, data: Interactions, seed: int) -> dict:
    # 10% of the training ratings pick the iteration of models with epochs (AutoRec's protocol)
    split = random_holdout(data, test_fraction=0.1, validation_fraction=0.1, seed=seed)
    model.fit(split.train, validation=split.validation)
    coo = split.test.matrix.tocoo()
    predicted = model.predict(coo.row, coo.col)
    return {"metrics": {"rmse": rmse(coo.data, predicted), "mae": mae(coo.data, predicted)}, "split": split.summary()}


def load_dataset(name_or_path: str, data_dir) -> Interactions:
    path = Path(name_or_path)
    if name_or_path in DATASETS or path.is_dir() or path.name in ("u.data", "ratings.dat", "ratings.csv"):
        return load_movielens(name_or_path, data_dir=data_dir)
    if not path.is_file():
        raise CliError(f"--dataset {name_or_path!r} is neither a known dataset ({', '.join(DATASETS)}) nor a file")
    reader = read_parquet if path.suffix == ".parquet" else read_csv
    return reader(path, **reader_columns(path))


def reader_columns(path: Path) -> dict:
    """Column roles of a generic file, from its header only: user and item required, rating and timestamp when present."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet

            header = pyarrow.parquet.read_schema(path).names
        else:
            import pandas as pd

            header = list(pd.read_csv(path, nrows=0).columns)
    except ImportError as exc:
        raise CliError("reading Parquet needs pyarrow: pip install 'aerec[parquet]'") from exc
    except Exception as exc:  # any unreadable header is the user's file, reported in one line
        raise CliError(f"cannot read the header of {path}: {exc}") from exc
    missing = [name for name in ("user", "item") if name not in header]
    if missing:
        raise CliError(f"{path} has columns {header}; expected user and item (and optionally rating, timestamp)")
    return {"rating": "rating" if "rating" in header else None, "timestamp": "timestamp" if "timestamp" in header else None}


def parse_params(pairs: list[str]) -> dict:
    params = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--param {pair!r}; expected KEY=VALUE")
        params[key] = parse_value(raw)
    return params


def parse_value(raw: str):
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def format_report(report: dict) -> str:
    lines = [f"{report['model']} on {report['dataset']} ({report['protocol']} protocol, seed {report['seed']})"]
    width = max(len(name) for name in report["metrics"])
    lines += [f"  {name:<{width}}  {value:.4f}" for name, value in report["metrics"].items()]
    if "n_users_evaluated" in report:
        lines.append(f"  users evaluated: {report['n_users_evaluated']}, skipped (nothing held out): {report['n_users_skipped']}")
    return "\n".join(lines)


# -- demo ------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    data = load_movielens(DEFAULT_DATASET)
    split = strong_generalization(data, n_heldout=STRONG_N_HELDOUT[DEFAULT_DATASET], seed=args.seed)
    progress(f"{DEFAULT_DATASET}: {data}; strong-generalization split: {split.summary()}")
    print(f"{DEFAULT_DATASET} (shipped with aerec), strong generalization, seed {args.seed}: "
          f"{split.train.n_users} train users, {split.train.n_items} items, {split.test_fold_in.n_users} test users\n")
    print(f"{'model':<12} {'Recall@20':>9} {'Recall@50':>9} {'NDCG@100':>9} {'fit s':>6}")
    fitted = {}
    for name, params in DEMO_MODELS:
        started = time.perf_counter()
        fitted[name] = make_model(name, **params).fit(split.train)
        seconds = time.perf_counter() - started
        m = evaluate_ranking(fitted[name], split.test_fold_in.matrix, split.test_heldout.matrix, ks=(20, 50, 100)).metrics
        print(f"{name:<12} {m['recall@20']:>9.4f} {m['recall@50']:>9.4f} {m['ndcg@100']:>9.4f} {seconds:>6.2f}")
    print_recommendations(fitted["ease"], split, args.user)
    return 0


def print_recommendations(model, split, user) -> None:
    titles = load_item_titles(DEFAULT_DATASET)
    fold_in = split.test_fold_in
    row = 0 if user is None else int(fold_in.user_index([parse_value(user)])[0])
    ids, _ = model.recommend(fold_in.matrix[row], n=10)
    heldout = set(split.test_heldout.matrix[row].indices)
    liked = fold_in.matrix[row].indices[:5]
    print(f"\nTest user {fold_in.user_ids[row]} liked (fold-in, {fold_in.matrix[row].nnz} movies), e.g.:")
    for item in liked:
        print(f"    {titles.get(fold_in.item_ids[item], fold_in.item_ids[item])}")
    print("EASE's top 10 for them (* = in their held-out 20%):")
    for rank, item in enumerate(ids[0], start=1):
        mark = "*" if item in heldout else " "
        print(f"  {rank:>2}. {mark} {titles.get(fold_in.item_ids[item], fold_in.item_ids[item])}")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
