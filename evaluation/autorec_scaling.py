"""AutoRec cost growth: seconds per full-batch iteration against observed entries and against catalogue size.

1. Fixed catalogue, growing data: synthetic Zipf ratings (``aerec.data.synthetic``)
   with ``--items`` items and ``--per-user`` ratings per user on average, the number
   of users growing with the entries. The slope of log(seconds) on log(entries) is
   fitted by least squares (target <= 1.1).
2. Fixed entries, a 10x larger catalogue: the same number of ratings spread over
   ``--items`` and 10 x ``--items`` items (target: < 1.5x the time).

Each point is the median over ``--iterations`` full-batch Rprop iterations (forward,
backward, step; the first iteration is dropped as warm-up) of one fit, I-AutoRec
and U-AutoRec at the paper's size (500 hidden units).

Run from the repository root:

    .venv/bin/python evaluation/autorec_scaling.py
"""

from __future__ import annotations

import argparse
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _common import add_run_args, environment_lines, finish_run, markdown_table, start_run  # noqa: E402
from aerec.data.synthetic import zipf_interactions  # noqa: E402
from aerec.models.autorec import AutoRec  # noqa: E402

KINDS = {"item": "I-AutoRec", "user": "U-AutoRec"}
ENTRIES = (100_000, 300_000, 1_000_000, 3_000_000)
TARGET_SLOPE, TARGET_CATALOGUE_RATIO = 1.1, 1.5


def seconds_per_iteration(kind: str, matrix, iterations: int, seed: int) -> float:
    model = AutoRec(kind=kind, epochs=iterations + 1, seed=seed, device="cpu").fit(matrix)
    return float(np.median(model.history_.column("seconds")[1:]))


def measure_point(users: int, items: int, entries: int, args, log) -> dict:
    """Seconds per iteration of each kind on one synthetic ratings matrix."""
    matrix = zipf_interactions(users, items, entries, ratings=True, seed=args.seed).matrix
    point = {"entries": entries, "users": users, "items": items}
    for kind in args.kinds:
        point[kind] = seconds_per_iteration(kind, matrix, args.iterations, args.seed)
    log(f"  {entries:,} entries ({users:,} users x {items:,} items): "
        + ", ".join(f"{KINDS[k]} {point[k]:.3f} s/it" for k in args.kinds))
    return point


def entries_series(args, log) -> list[dict]:
    return [measure_point(max(entries // args.per_user, 2), args.items, entries, args, log) for entries in args.entries]


def catalogue_pair(args, log) -> list[dict]:
    users = max(args.catalogue_entries // args.per_user, 2)
    return [measure_point(users, items, args.catalogue_entries, args, log) for items in (args.items, 10 * args.items)]


def slope(points: list[dict], kind: str) -> float:
    x = np.log([p["entries"] for p in points])
    y = np.log([p[kind] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def plot(record: dict, path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for kind in record["kinds"]:
        xs = [p["entries"] for p in record["entries_series"]]
        ys = [p[kind] for p in record["entries_series"]]
        left.loglog(xs, ys, "o-", label=f"{KINDS[kind]} (slope {record['slopes'][kind]:.2f})")
    xs = np.array([p["entries"] for p in record["entries_series"]], dtype=float)
    first = record["entries_series"][0][record["kinds"][0]]
    left.loglog(xs, first * xs / xs[0], "k:", label="slope 1")
    left.set_xlabel("observed entries")
    left.set_ylabel("seconds per iteration")
    left.set_title(f"fixed catalogue ({record['items']:,} items)")
    left.legend()
    pair = record["catalogue_pair"]
    width = 0.35
    for offset, kind in zip((-width / 2, width / 2), record["kinds"]):
        right.bar(np.arange(2) + offset, [p[kind] for p in pair], width, label=KINDS[kind])
    right.set_xticks(range(2), [f"{p['items']:,} items" for p in pair])
    right.set_ylabel("seconds per iteration")
    right.set_title(f"fixed entries ({pair[0]['entries']:,})")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(record: dict) -> str:
    kinds = record["kinds"]
    series = markdown_table(["entries", "users", "items", *(f"{KINDS[k]} s/it" for k in kinds)],
                            [[f"{p['entries']:,}", f"{p['users']:,}", f"{p['items']:,}", *(f"{p[k]:.3f}" for k in kinds)]
                             for p in record["entries_series"]])
    slopes = markdown_table(["model", "log-log slope", f"target <= {TARGET_SLOPE}", "catalogue x10: time ratio",
                             f"target < {TARGET_CATALOGUE_RATIO}"],
                            [[KINDS[k], f"{record['slopes'][k]:.2f}", "met" if record['slopes'][k] <= TARGET_SLOPE else "missed",
                              f"{record['catalogue_ratio'][k]:.2f}",
                              "met" if record['catalogue_ratio'][k] < TARGET_CATALOGUE_RATIO else "missed"] for k in kinds])
    pair = markdown_table(["items", "entries", "users", *(f"{KINDS[k]} s/it" for k in kinds)],
                          [[f"{p['items']:,}", f"{p['entries']:,}", f"{p['users']:,}", *(f"{p[k]:.3f}" for k in kinds)]
                           for p in record["catalogue_pair"]])
    return f"""# AutoRec cost growth

Command (from the repository root, {record['runtime_seconds']:.0f} s, torch with {record['threads']} CPU thread(s)):

```
{record['command']}
```

Seconds per full-batch Rprop iteration (median of {record['iterations']} after a warm-up iteration), hidden 500,
synthetic Zipf ratings, {record['per_user']} ratings per user on average. Plot: `autorec_scaling.png`.

{slopes}
## Fixed catalogue, growing entries

{series}
## Fixed entries, 10x catalogue

{pair}
An iteration costs time in proportion to the observed entries (the encoder, and the decoder at the observed
entries only: gathers of one table row per entry, in cache-sized blocks, `aerec.sparse_products`) plus parts in
proportion to the parameters and to the rows, which the objective and full-batch Rprop require: the L2 penalty
and the Rprop update touch every weight (2 x 500 x the input width) every iteration, and the codes are rows x 500.
For U-AutoRec the input width is the catalogue, so a 10x catalogue means 10x the weights (2M to 20M; penalty and
Rprop then take about 0.14 s per iteration, measured alone); for I-AutoRec the rows are the items, so the codes,
their gradients and the gathered tables grow 10x.

{environment_lines(record['environment'], record['load_average_at_end'])}"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", nargs="+", type=int, default=list(ENTRIES), help="default: %(default)s")
    parser.add_argument("--items", type=int, default=2_000, help="catalogue of the series (default: %(default)s)")
    parser.add_argument("--per-user", type=int, default=100, help="ratings per user on average (default: %(default)s)")
    parser.add_argument("--catalogue-entries", type=int, default=1_000_000, help="entries of the catalogue pair (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations per point (default: %(default)s)")
    parser.add_argument("--kinds", nargs="+", choices=tuple(KINDS), default=list(KINDS))
    add_run_args(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    log, record = start_run(args.threads)
    record.update({"kinds": args.kinds, "items": args.items, "per_user": args.per_user, "iterations": args.iterations})
    log("fixed catalogue, growing entries")
    record["entries_series"] = entries_series(args, log)
    log("fixed entries, 10x catalogue")
    record["catalogue_pair"] = catalogue_pair(args, log)
    record["slopes"] = {k: slope(record["entries_series"], k) for k in args.kinds}
    record["catalogue_ratio"] = {k: record["catalogue_pair"][1][k] / record["catalogue_pair"][0][k] for k in args.kinds}
    args.out.mkdir(parents=True, exist_ok=True)
    plot(record, args.out / "autorec_scaling.png")
    sys.stdout.write(finish_run(args.out, "autorec_scaling", record, markdown, log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
