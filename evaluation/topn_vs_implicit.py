"""Top-100 for every user: aerec's streaming top-N against implicit's batched ``recommend``, same factors.

For each case an implicit ALS model is fitted once (not timed). Then, on the
same user and item factors and the same known-item masks:

- implicit: ``als.recommend(all user ids, user_items, N=100, filter_already_liked_items=True)``
  (implicit's C++ ``topk``, which scores and selects in blocks);
- aerec: ``aerec.ranking.stream_top_n`` over ``U[rows] @ V.T`` in memory-bounded
  batches (the path every aerec model's ``recommend_batches`` takes).

Both run with the same number of threads; the table gives the median over the
repeats (the two interleaved, after an untimed warm-up round; quick cases get
more repeats) and users per second. Agreement: for a sample of users, the share
of top-100 lists that hold the same item set in both (ties at the cut may legitimately differ).

Run from the repository root:

    AEREC_DATA_DIR=/work/shared/data .venv/bin/python evaluation/topn_vs_implicit.py
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from _common import add_run_args, environment_lines, finish_run, markdown_table, start_run
from aerec.data import binarize, load_movielens
from aerec.data.synthetic import zipf_interactions
from aerec.models.als import quiet_implicit
from aerec.ranking import default_memory_budget, stream_top_n

TOP_N = 100
CASES = ("ml-100k", "ml-latest-small", "synthetic")


def load_case(name: str, args):
    if name == "synthetic":
        shape = (args.users, args.items, args.entries)
        matrix = zipf_interactions(*shape, seed=args.seed).matrix
        return matrix, f"synthetic Zipf {shape[0]:,} users x {shape[1]:,} items, {shape[2]:,} interactions"
    data = binarize(load_movielens(name), threshold=0.0)  # every rating is an interaction
    return data.matrix, f"{name}, every rating an interaction ({data.nnz:,})"


def fit_als(matrix, args):
    from implicit.cpu.als import AlternatingLeastSquares

    model = quiet_implicit(lambda: AlternatingLeastSquares(factors=args.factors, iterations=args.iterations,
                                                           random_state=args.seed, num_threads=args.threads))
    with threadpool_limits(1, "blas"):
        model.fit(matrix, show_progress=False)
    return model


def implicit_top_n(model, matrix):
    with threadpool_limits(1, "blas"):
        return model.recommend(np.arange(matrix.shape[0]), matrix, N=TOP_N, filter_already_liked_items=True)


def aerec_top_n(users: torch.Tensor, items_t: torch.Tensor, matrix, budget: int):
    ids = np.empty((matrix.shape[0], TOP_N), dtype=np.int64)
    scores = np.empty((matrix.shape[0], TOP_N), dtype=np.float32)
    for rows, batch_ids, batch_scores in stream_top_n(lambda rows: users[torch.from_numpy(rows)] @ items_t, matrix, TOP_N,
                                                      memory_budget=budget):
        ids[rows], scores[rows] = batch_ids, batch_scores
    return ids, scores


def repeats_for(round_seconds: float, args) -> int:
    """Repeats that fill about ``--min-seconds`` (quick cases get many, so a median is stable), within bounds."""
    return int(np.clip(np.ceil(args.min_seconds / max(round_seconds, 1e-6)), args.repeats, args.max_repeats))


def agreement(ids_a: np.ndarray, ids_b: np.ndarray, sample: np.ndarray) -> float:
    same = [set(ids_a[u][ids_a[u] >= 0]) == set(ids_b[u][ids_b[u] >= 0]) for u in sample]
    return float(np.mean(same))


def run_case(name: str, args, log) -> dict:
    matrix, description = load_case(name, args)
    log(f"{name}: {description}")
    started = time.perf_counter()
    model = fit_als(matrix, args)
    fit_seconds = time.perf_counter() - started
    users = torch.from_numpy(np.ascontiguousarray(model.user_factors, dtype=np.float32))
    items_t = torch.from_numpy(np.ascontiguousarray(model.item_factors, dtype=np.float32)).T.contiguous()
    times = {"implicit": [], "aerec": []}
    results = {}
    warm_up = time.perf_counter()
    implicit_top_n(model, matrix), aerec_top_n(users, items_t, matrix, args.memory_budget)
    repeats = repeats_for(time.perf_counter() - warm_up, args)
    for repeat in range(repeats):
        for which in times:
            start = time.perf_counter()
            results[which] = (implicit_top_n(model, matrix) if which == "implicit"
                              else aerec_top_n(users, items_t, matrix, args.memory_budget))
            times[which].append(time.perf_counter() - start)
        log(f"  repeat {repeat + 1}: " + ", ".join(f"{w} {t[-1]:.3f} s" for w, t in times.items()))
    sample = np.random.default_rng(args.seed).choice(matrix.shape[0], size=min(args.check_users, matrix.shape[0]),
                                                     replace=False)
    medians = {which: float(np.median(t)) for which, t in times.items()}
    return {"name": name, "description": description, "users": matrix.shape[0], "items": matrix.shape[1],
            "nnz": matrix.nnz, "als_fit_seconds": fit_seconds, "times": times, "median_seconds": medians,
            "users_per_second": {w: matrix.shape[0] / s for w, s in medians.items()},
            "same_top_n_share": agreement(results["implicit"][0], results["aerec"][0], sample),
            "checked_users": len(sample), "repeats": repeats}


def markdown(record: dict) -> str:
    rows = []
    for case in record["cases"]:
        ups = case["users_per_second"]
        rows.append([case["name"], f"{case['users']:,}", f"{case['items']:,}", f"{case['median_seconds']['implicit']:.3f}",
                     f"{case['median_seconds']['aerec']:.3f}", f"{ups['implicit']:,.0f}", f"{ups['aerec']:,.0f}",
                     f"{ups['aerec'] / ups['implicit']:.2f}", f"{case['same_top_n_share']:.3f}"])
    table = markdown_table(["case", "users", "items", "implicit s", "aerec s", "implicit users/s", "aerec users/s",
                            "aerec / implicit", "same top-100 set"], rows)
    cases = "\n".join(f"- {c['name']}: {c['description']}; ALS {record['factors']} factors fitted in "
                      f"{c['als_fit_seconds']:.1f} s (not timed); {c['repeats']} repeats; agreement checked on {c['checked_users']:,} users"
                      for c in record["cases"])
    return f"""# Top-100 for every user: aerec vs implicit

Command (from the repository root, {record['runtime_seconds']:.0f} s, {record['threads']} thread(s) for both):

```
{record['command']}
```

Same ALS factors and known-item masks for both; after one untimed warm-up round, the median of interleaved
repeats (at least {record['repeats']}, more for quick cases: see each case's line). aerec's batches
hold at most {record['memory_budget'] / 2**20:.0f} MiB of scores. Target: more users/s than implicit on CPU.

{table}
{cases}

{environment_lines(record['environment'], record['load_average_at_end'])}"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--repeats", type=int, default=3, help="fewest timed repeats per case (default: %(default)s)")
    parser.add_argument("--min-seconds", type=float, default=5.0,
                        help="more repeats while a case's rounds take less than this in all (default: %(default)s)")
    parser.add_argument("--max-repeats", type=int, default=51, help="default: %(default)s")
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=3, help="ALS iterations (the factors' quality is not judged)")
    parser.add_argument("--memory-budget", type=int, default=default_memory_budget("cpu"),
                        help="bytes of scores per aerec batch (default: the library's CPU default, %(default)s)")
    parser.add_argument("--check-users", type=int, default=2000)
    parser.add_argument("--users", type=int, default=136_677, help="synthetic users (default: ML-20M's)")
    parser.add_argument("--items", type=int, default=20_108, help="synthetic items (default: ML-20M's)")
    parser.add_argument("--entries", type=int, default=10_000_000, help="synthetic interactions (default: %(default)s)")
    add_run_args(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    log, record = start_run(args.threads)
    record.update({"repeats": args.repeats, "factors": args.factors, "memory_budget": args.memory_budget, "cases": []})
    for name in args.cases:
        record["cases"].append(run_case(name, args, log))
    sys.stdout.write(finish_run(args.out, "topn_vs_implicit", record, markdown, log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
