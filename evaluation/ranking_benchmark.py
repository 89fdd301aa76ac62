"""Top-100 ranking of every user with the user's known items masked: time, memory, correctness.

Cases: (a) ML-100K and (b) ml-latest-small, EASE (l2=500) fitted on all the
ratings (each rating an interaction) and ranked through ``model.recommend`` in
batches; (c) a synthetic rank-200 factor model, scores ``U[batch] @ V.T``
ranked with ``aerec.ranking.top_n`` against a power-law mask. Only the ranking
of all users is timed (median of the repeats), never the fit or the set-up.

Run from the repository root:

    AEREC_DATA_DIR=/work/shared/data .venv/bin/python evaluation/ranking_benchmark.py
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from _common import Progress, add_output_args, command_line, environment, environment_lines, markdown_table, finish_run
from aerec._torch import csr_to_sparse_tensor
from aerec.data import binarize, load_movielens
from aerec.models import make_model
from aerec.ranking import top_n

TOP_N = 100
MOVIELENS_CASES = ("ml-100k", "ml-latest-small")
CASES = (*MOVIELENS_CASES, "synthetic")
MIB = 2**20


@dataclass
class Case:
    """What to rank: ``rank_rows(rows)`` gives the top-N ids of a slice of users; ``reference_scores`` a numpy check."""

    name: str
    description: str
    mask: sp.csr_matrix
    batch_size: int
    rank_rows: Callable[[slice], np.ndarray]
    reference_scores: Callable[[np.ndarray], np.ndarray]
    setup_seconds: float
    diagnostics: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return self.mask.shape[0]

    @property
    def n_items(self) -> int:
        return self.mask.shape[1]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Data: known datasets are read from $AEREC_DATA_DIR (ml-latest-small also ships with aerec).")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="default: all")
    parser.add_argument("--repeats", type=int, default=3, help="timed rankings of all users per case (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=2048, help="users per score batch (default: %(default)s)")
    parser.add_argument("--check-users", type=int, default=1000, help="users checked against numpy argsort (default: %(default)s)")
    parser.add_argument("--l2", type=float, default=500.0, help="EASE l2 for the MovieLens cases (default: %(default)s)")
    synthetic = parser.add_argument_group("synthetic case")
    synthetic.add_argument("--users", type=int, default=100_000, help="default: %(default)s")
    synthetic.add_argument("--items", type=int, default=20_000, help="default: %(default)s")
    synthetic.add_argument("--rank", type=int, default=200, help="factor dimension (default: %(default)s)")
    synthetic.add_argument("--known-per-user", type=int, default=50,
                           help="known (masked) items per user (default: %(default)s)")
    synthetic.add_argument("--zipf-exponent", type=float, default=1.0, help="item popularity ~ rank^-exponent (default: %(default)s)")
    synthetic.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    add_output_args(parser)
    return parser.parse_args(argv)


# -- the cases -----------------------------------------------------------------------
def movielens_case(name: str, l2: float, batch_size: int) -> Case:
    """EASE fitted on every rating of ``name`` (as 1.0); each user's rated items are masked."""
    start = time.perf_counter()
    data = binarize(load_movielens(name), threshold=0.0)  # every rating > 0 is an interaction
    model = make_model("ease", l2=l2).fit(data)
    matrix = data.matrix
    weights = model.weights_.cpu().numpy()

    def rank_rows(rows: slice) -> np.ndarray:
        return model.recommend(matrix[rows], n=TOP_N)[0]

    def reference_scores(users: np.ndarray) -> np.ndarray:
        return (matrix[users] @ weights).astype(np.float64)  # scipy, independent of the torch scoring path

    setup_seconds = time.perf_counter() - start
    return Case(name, f"EASE l2={l2:g} fitted on all {matrix.nnz} ratings; model.recommend(rows, n={TOP_N})",
                matrix, batch_size, rank_rows, reference_scores, setup_seconds, weights_layout(model, matrix[:batch_size]))


def weights_layout(model, rows: sp.csr_matrix) -> dict:
    """Memory layout of EASE's ``weights_`` and the time of one batch's sparse x dense product, as is and C-contiguous.

    Not part of the timed ranking: it shows how much of the scoring time the layout costs.
    """
    weights = model.weights_
    batch = csr_to_sparse_tensor(rows, weights.device)
    contiguous = weights.contiguous()
    return {
        "weights_strides": list(weights.stride()),
        "weights_contiguous": weights.is_contiguous(),
        "batch_product_seconds": best_of(3, lambda: torch.sparse.mm(batch, weights)),
        "batch_product_seconds_contiguous": best_of(3, lambda: torch.sparse.mm(batch, contiguous)),
    }


def best_of(repeats: int, function: Callable[[], object]) -> float:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return min(seconds)


def synthetic_case(n_users: int, n_items: int, rank: int, known_per_user: int, exponent: float, batch_size: int,
                   seed: int) -> Case:
    """Seeded random float32 factors; ``known_per_user`` power-law items per user form the mask."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    users = torch.from_numpy(rng.standard_normal((n_users, rank), dtype=np.float32) / np.float32(np.sqrt(rank)))
    items = torch.from_numpy(rng.standard_normal((n_items, rank), dtype=np.float32))
    mask = power_law_mask(n_users, n_items, known_per_user, exponent, rng)

    def rank_rows(rows: slice) -> np.ndarray:
        ids, _ = top_n(users[rows] @ items.T, mask[rows], TOP_N)
        return ids.numpy()

    def reference_scores(sample: np.ndarray) -> np.ndarray:
        return users[sample].numpy().astype(np.float64) @ items.numpy().astype(np.float64).T

    description = (f"rank-{rank} float32 factors (seed {seed}); mask: {known_per_user} distinct items per user, "
                   f"item popularity ~ rank^-{exponent:g}; top_n(U[batch] @ V.T, mask[batch], {TOP_N})")
    setup_seconds = time.perf_counter() - start
    first = slice(0, min(batch_size, n_users))
    breakdown = batch_breakdown(lambda: users[first] @ items.T, mask[first])
    return Case("synthetic", description, mask, batch_size, rank_rows, reference_scores, setup_seconds, breakdown)


def batch_breakdown(score: Callable[[], torch.Tensor], exclude: sp.csr_matrix, repeats: int = 3) -> dict:
    """One batch, apart from the timed ranking: seconds to score it and to run top_n, and top_n's own peak memory."""
    score_seconds, top_n_seconds, top_n_peak = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        scores = score()
        score_seconds.append(time.perf_counter() - start)
        reset_peak_rss()
        before = current_rss()
        start = time.perf_counter()
        top_n(scores, exclude, TOP_N)
        top_n_seconds.append(time.perf_counter() - start)
        top_n_peak.append(peak_rss() - before)
        del scores
    return {"batch_score_seconds": min(score_seconds), "batch_top_n_seconds": min(top_n_seconds),
            "batch_top_n_peak_increase_bytes": max(top_n_peak)}


def power_law_mask(n_users: int, n_items: int, per_user: int, exponent: float, rng: np.random.Generator) -> sp.csr_matrix:
    """Users x items CSR of ``per_user`` distinct items per user, drawn with Zipf-like popularity.

    Successive sampling without replacement: ``2 * per_user`` draws with
    replacement per user, of which the first ``per_user`` distinct items are
    kept (a row with fewer distinct draws keeps them all).
    """
    popularity = 1.0 / np.arange(1, n_items + 1) ** exponent
    popularity = popularity[rng.permutation(n_items)]  # popular items spread over the index
    draws = rng.choice(n_items, size=(n_users, 2 * per_user), p=popularity / popularity.sum())
    order = np.argsort(draws, axis=1, kind="stable")
    sorted_draws = np.take_along_axis(draws, order, axis=1)
    first_in_sorted = np.ones(draws.shape, dtype=bool)
    first_in_sorted[:, 1:] = sorted_draws[:, 1:] != sorted_draws[:, :-1]
    first = np.empty_like(first_in_sorted)
    np.put_along_axis(first, order, first_in_sorted, axis=1)  # first occurrence, in draw order
    keep = first & (np.cumsum(first, axis=1) <= per_user)
    rows = np.broadcast_to(np.arange(n_users)[:, None], draws.shape)[keep]
    return sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, draws[keep])), shape=(n_users, n_items))


# -- measuring -----------------------------------------------------------------------
def rank_all(case: Case) -> np.ndarray:
    """Top-N ids of every user, one batch of ``case.batch_size`` users at a time."""
    ids = np.empty((case.n_users, TOP_N), dtype=np.int64)
    for start in range(0, case.n_users, case.batch_size):
        rows = slice(start, min(start + case.batch_size, case.n_users))
        ids[rows] = case.rank_rows(rows)
    return ids


def current_rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux ``clear_refs`` 5); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def measure(case: Case, repeats: int, log: Progress) -> tuple[dict, np.ndarray]:
    """Time ``repeats`` rankings of all users; peak RSS over them, relative to the RSS before."""
    reset = reset_peak_rss()
    before = current_rss()
    seconds = []
    for repeat in range(repeats):
        start = time.perf_counter()
        ids = rank_all(case)
        seconds.append(time.perf_counter() - start)
        log(f"  {case.name}: repeat {repeat + 1}/{repeats} ranked {case.n_users} users in {seconds[-1]:.3f} s")
    median = float(np.median(seconds))
    peak = peak_rss()
    batch_rows = min(case.batch_size, case.n_users)
    return {
        "seconds": seconds,
        "median_seconds": median,
        "users_per_second": case.n_users / median,
        "rss_before_bytes": before,
        "peak_rss_bytes": peak,
        "peak_increase_bytes": peak - before,
        "peak_is_per_case": reset,
        "score_batch_bytes": batch_rows * case.n_items * 4,
        "output_bytes": ids.nbytes,
    }, ids


def check_all_users(ids: np.ndarray, mask: sp.csr_matrix) -> dict:
    """Over every user: no masked item returned, no item twice, no empty (-1) slot."""
    rows = np.repeat(np.arange(ids.shape[0]), ids.shape[1])
    valid = ids.ravel() >= 0
    returned = sp.csr_matrix((np.ones(int(valid.sum()), dtype=np.float32), (rows[valid], ids.ravel()[valid])), shape=mask.shape)
    sorted_ids = np.sort(ids, axis=1)
    return {
        "masked_items_returned": int(returned.multiply(mask).nnz),
        "rows_with_repeated_items": int((np.diff(sorted_ids, axis=1) == 0).any(axis=1).sum()),
        "empty_slots": int((~valid).sum()),
    }


def check_against_argsort(case: Case, ids: np.ndarray, n_check: int, seed: int) -> dict:
    """Compare with ``np.argsort`` of independently computed scores on a sample of users.

    Ids must match exactly, or else carry the same reference scores rank by rank
    (ties and float32 rounding may order equal scores differently).
    """
    sample = np.sort(np.random.default_rng(seed).choice(case.n_users, size=min(n_check, case.n_users), replace=False))
    scores = case.reference_scores(sample)
    known = case.mask[sample].tocoo()
    scores[known.row, known.col] = -np.inf
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :TOP_N]
    got = ids[sample]
    expected_scores = np.take_along_axis(scores, expected, axis=1)
    got_scores = np.take_along_axis(scores, np.maximum(got, 0), axis=1)
    tolerance = 1e-5 * float(np.abs(expected_scores).max())
    gap = np.abs(got_scores - expected_scores)
    return {
        "users_checked": int(sample.size),
        "exact_id_match": int((got == expected).all(axis=1).sum()),
        "equal_up_to_ties": int((gap <= tolerance).all(axis=1).sum()),
        "max_score_gap": float(gap.max()),
        "tolerance": tolerance,
    }


def run_case(case: Case, args: argparse.Namespace, log: Progress) -> dict:
    log(f"{case.name}: {case.n_users} users x {case.n_items} items, {case.mask.nnz} known (set-up {case.setup_seconds:.1f} s)")
    timing, ids = measure(case, args.repeats, log)
    checks = {**check_all_users(ids, case.mask), **check_against_argsort(case, ids, args.check_users, args.seed)}
    log(f"  {case.name}: median {timing['median_seconds']:.3f} s, {timing['users_per_second']:,.0f} users/s, "
        f"peak +{timing['peak_increase_bytes'] / MIB:.0f} MiB; checks {checks}")
    return {
        "case": case.name, "description": case.description, "n_users": case.n_users, "n_items": case.n_items,
        "known_items": case.mask.nnz, "known_per_user": case.mask.nnz / case.n_users, "batch_size": case.batch_size,
        "n_batches": -(-case.n_users // case.batch_size), "setup_seconds": case.setup_seconds, **timing,
        "checks": checks, "checks_passed": checks_passed(checks), "diagnostics": case.diagnostics,
    }


def checks_passed(checks: dict) -> bool:
    clean = not (checks["masked_items_returned"] or checks["rows_with_repeated_items"] or checks["empty_slots"])
    return clean and checks["equal_up_to_ties"] == checks["users_checked"]


def build_case(name: str, args: argparse.Namespace) -> Case:
    if name in MOVIELENS_CASES:
        return movielens_case(name, args.l2, args.batch_size)
    return synthetic_case(args.users, args.items, args.rank, args.known_per_user, args.zipf_exponent, args.batch_size, args.seed)


# -- report --------------------------------------------------------------------------
def results_table(results: dict) -> str:
    headers = ["case", "users", "items", "known/user", "batch", "batches", f"median s ({results['repeats']} runs)", "users/s",
               "score batch MiB", "RSS before MiB", "peak RSS MiB", "peak increase MiB", "argsort check"]
    rows = []
    for r in results["cases"]:
        checks = r["checks"]
        rows.append([r["case"], f"{r['n_users']:,}", f"{r['n_items']:,}", f"{r['known_per_user']:.1f}", r["batch_size"], r["n_batches"],
                     f"{r['median_seconds']:.3f}", f"{r['users_per_second']:,.0f}", f"{r['score_batch_bytes'] / MIB:.1f}",
                     f"{r['rss_before_bytes'] / MIB:.0f}", f"{r['peak_rss_bytes'] / MIB:.0f}", f"{r['peak_increase_bytes'] / MIB:.0f}",
                     f"{'ok' if r['checks_passed'] else 'FAILED'}: {checks['exact_id_match']}/{checks['users_checked']} exact, "
                     f"{checks['equal_up_to_ties']}/{checks['users_checked']} up to ties"])
    return markdown_table(headers, rows)


def diagnostics_text(diagnostics: dict) -> str:
    """The set-up diagnostics of a case as a sentence (nothing here is part of the timed ranking)."""
    if "weights_contiguous" in diagnostics:
        layout = "C-contiguous" if diagnostics["weights_contiguous"] else "not C-contiguous"
        return (f" EASE `weights_` is {layout} (strides {tuple(diagnostics['weights_strides'])}): the first batch's "
                f"`torch.sparse.mm` takes {diagnostics['batch_product_seconds']:.3f} s, "
                f"{diagnostics['batch_product_seconds_contiguous']:.3f} s on a `.contiguous()` copy (best of 3).")
    if "batch_top_n_seconds" in diagnostics:
        return (f" One batch (best of 3): scoring {diagnostics['batch_score_seconds']:.3f} s, `top_n` "
                f"{diagnostics['batch_top_n_seconds']:.3f} s; `top_n` alone raises the peak RSS by "
                f"{diagnostics['batch_top_n_peak_increase_bytes'] / MIB:.0f} MiB over the score batch.")
    return ""


def markdown(results: dict) -> str:
    cases = "\n".join(f"- **{r['case']}**: {r['description']}; set-up (not timed) {r['setup_seconds']:.1f} s; "
                      f"all runs {', '.join(f'{s:.3f}' for s in r['seconds'])} s.{diagnostics_text(r['diagnostics'])}"
                      for r in results["cases"])
    return f"""# Top-{TOP_N} ranking of every user, known items masked

Command (from the repository root, total {results['runtime_seconds']:.0f} s):

```
{results['command']}
```

{results_table(results)}
{cases}

Timed: ranking all users (score a batch, mask the user's known items with -inf, `torch.topk`, copy the ids into
an n_users x {TOP_N} int64 array), median of {results['repeats']} runs; the fit and the data set-up are not timed.
"score batch" is the size of one float32 score batch (batch x items x 4 bytes). Memory is the process RSS:
"RSS before" just before the timed runs, "peak RSS" the peak over them (`resource.getrusage` ru_maxrss, reset
per case through `/proc/self/clear_refs`: {'yes' if all(r['peak_is_per_case'] for r in results['cases']) else 'NO, so later peaks include earlier cases'}),
"peak increase" their difference (it includes the output ids array and torch/allocator working memory).
Checks: over every user, no masked item is returned, no item twice, no empty slot; on a sample of users
(all users for the MovieLens cases), the ids are compared with `np.argsort` of scores computed independently
(scipy sparse x EASE weights; float64 U @ V.T); "up to ties" means the same reference score at every rank
(tolerance 1e-5 x the largest top score). The diagnostics after each case's runs were measured during its
set-up, apart from the timed runs.

{environment_lines(results['environment'], results['load_average_at_end'])}"""


def main(argv=None) -> int:
    args = parse_args(argv)
    for name in ("repeats", "batch_size", "check_users", "users", "items", "rank", "known_per_user"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')}={getattr(args, name)}; expected a positive integer")
    log = Progress()
    results = {"command": command_line(), "environment": environment(), "repeats": args.repeats, "top_n": TOP_N, "cases": []}
    for name in args.cases:
        case = build_case(name, args)
        results["cases"].append(run_case(case, args, log))
        del case
    finish_run(args.out, "ranking_benchmark", results, markdown, log)
    sys.stdout.write(results_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
