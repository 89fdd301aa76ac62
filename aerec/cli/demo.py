"""``aerec demo``: the main job on the shipped dataset, with titled recommendations."""

from __future__ import annotations

import time

from aerec.cli.common import parse_value, progress
from aerec.data import load_item_titles, load_movielens, strong_generalization
from aerec.data.datasets import DEFAULT_DATASET, STRONG_N_HELDOUT
from aerec.evaluation import evaluate_ranking
from aerec.models import make_model

DEMO_MODELS = (("popularity", {}), ("ease", {"l2": 500.0}))


def register(commands) -> None:
    parser = commands.add_parser(
        "demo", help="the main job on the shipped dataset: split, fit, evaluate and recommend with titles",
        description=f"Run popularity and EASE on the strong-generalization split of {DEFAULT_DATASET} "
                    "(shipped with aerec), print their test metrics and a test user's top-10 with movie titles.")
    parser.add_argument("--seed", type=int, default=98765, help="split seed (default 98765)")
    parser.add_argument("--user", help="raw id of the test user to recommend for (default: the first test user)")
    parser.set_defaults(run=run)


def run(args) -> int:
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


