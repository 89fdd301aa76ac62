"""Linear autoencoders at catalogue scale: EDLAE on an MSD-shaped synthetic set, in place in float32.

An MSD-sized catalogue (41,140 items, as vae_cf's and Steck's MSD preprocessing keep)
needs items x items dense matrices: the float64 closed form (Gram matrix, inverse and B,
as EASE and EDLAE fit by default) about 24 bytes per entry, 38 GiB, which this 24 GiB
machine does not have. ``precision="float32"`` works in one float32 array, in place
(LAPACK ``spotrf``/``spotri``, see ``aerec.core.closed_form``): 4 bytes per entry.

Steps: draw the synthetic interactions (``aerec.data.synthetic.zipf_interactions``, MSD's
shape: 571,355 users x 41,140 items, 33.6M interactions); print both memory estimates;
fit EDLAE with the notebook's MSD setting (p 0.25, lambda 70) in float32; then the top-100
of every user (their own items excluded) through the model's streaming ``recommend_batches``.
Reported: seconds of each step, peak resident memory (``ru_maxrss``) after each, users/s.

Then, where both fit (ml-latest-small's strong split, seed 98765, and a 10,000-item
synthetic set), float32 against float64: the largest weight difference, the validation
NDCG@100 of both, and their fit seconds and peak memory (each in a fresh process, so that
``ru_maxrss`` is the fit's own).

Run from the repository root (about 40 minutes for the MSD shape on this 2-core machine):

    AEREC_DATA_DIR=/work/shared/data .venv/bin/python evaluation/linear_scale.py
    AEREC_DATA_DIR=/work/shared/data .venv/bin/python evaluation/linear_scale.py --preset small --out /tmp/x
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from _common import add_run_args, environment_lines, finish_run, markdown_table, start_run
from aerec._torch import available_memory_bytes
from aerec.core.closed_form import dense_memory_bytes
from aerec.data.synthetic import zipf_interactions
from aerec.models import EDLAE

PRESETS = {"msd": (571_355, 41_140, 33_633_450), "small": (20_000, 4_000, 1_000_000)}
TOP_N = 100
PARAMS = {"dropout": 0.25, "l2": 70.0}  # the notebook's full-rank EDLAE for MSD


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="msd")
    parser.add_argument("--skip-comparison", action="store_true", help="only the large fit")
    parser.add_argument("--memory-budget-mib", type=int, default=64,
                        help="scores held per batch while ranking (default: %(default)s MiB)")
    add_run_args(parser)
    return parser.parse_args(argv)


def scale_run(args, log) -> dict:
    users, items, entries = PRESETS[args.preset]
    start = time.perf_counter()
    matrix = zipf_interactions(users, items, entries, seed=args.seed).matrix
    data_seconds = time.perf_counter() - start
    record = {"shape": [users, items, entries], "data_seconds": data_seconds, "peak_gib_after_data": peak_gib(),
              "float64_estimate_gib": dense_memory_bytes(items, "float64") / 2**30,
              "float32_estimate_gib": dense_memory_bytes(items, "float32") / 2**30,
              "available_gib_at_start": (available_memory_bytes() or 0) / 2**30, "params": PARAMS}
    log(f"data: {users:,} x {items:,}, {matrix.nnz:,} interactions in {data_seconds:.0f} s; estimates: float64 "
        f"{record['float64_estimate_gib']:.1f} GiB, float32 {record['float32_estimate_gib']:.1f} GiB; "
        f"{record['available_gib_at_start']:.1f} GiB available")
    model = EDLAE(**PARAMS, precision="float32", device="cpu")
    start = time.perf_counter()
    model.fit(matrix)
    record["fit_seconds"] = time.perf_counter() - start
    record["peak_gib_after_fit"] = peak_gib()
    log(f"fit: {record['fit_seconds']:.0f} s, peak {record['peak_gib_after_fit']:.2f} GiB")
    start, ranked, first = time.perf_counter(), 0, None
    for rows, ids, _ in model.recommend_batches(matrix, n=TOP_N, memory_budget=args.memory_budget_mib * 2**20):
        if first is None:
            first = ids[0].tolist()
        ranked += len(rows)
    record["rank_seconds"] = time.perf_counter() - start
    record["users_ranked"] = ranked
    record["users_per_second"] = ranked / record["rank_seconds"]
    record["peak_gib_after_ranking"] = peak_gib()
    record["first_user_top10"] = first[:10]
    log(f"top-{TOP_N} of {ranked:,} users: {record['rank_seconds']:.0f} s, {record['users_per_second']:.0f} users/s, "
        f"peak {record['peak_gib_after_ranking']:.2f} GiB")
    return record


COMPARE_CHILD = """
import json, resource, sys, time
import numpy as np, torch
from threadpoolctl import threadpool_limits
torch.set_num_threads(1)
threadpool_limits(1)
from aerec.data import load_movielens, strong_generalization
from aerec.data.synthetic import zipf_interactions
from aerec.evaluation import evaluate_ranking
from aerec.models import EDLAE
case, precision = sys.argv[1], sys.argv[2]
if case == "ml-latest-small":
    split = strong_generalization(load_movielens(case), 60, seed=98765)
    train, fold_in, heldout = split.train.matrix, split.validation_fold_in.matrix, split.validation_heldout.matrix
else:
    train = zipf_interactions(50_000, 10_000, 2_000_000, seed=1).matrix
    fold_in = heldout = None
start = time.perf_counter()
model = EDLAE(dropout=0.25, l2=70.0, precision=precision, device="cpu").fit(train)
seconds = time.perf_counter() - start
out = {"fit_seconds": seconds, "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30}
if fold_in is not None:
    out["validation_ndcg@100"] = evaluate_ranking(model, fold_in, heldout, ks=(100,)).metrics["ndcg@100"]
np.save(sys.argv[3], model.weights_.numpy())
print(json.dumps(out))
"""


def compare(case: str, log) -> dict:
    """float32 against float64 on one case, each fit in a fresh process (its own peak memory)."""
    import tempfile
    from pathlib import Path

    out, weights = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("float64", "float32"):
            path = Path(tmp) / f"{precision}.npy"
            done = subprocess.run([sys.executable, "-c", COMPARE_CHILD, case, precision, str(path)], check=True,
                                  capture_output=True, text=True)
            out[precision] = json.loads(done.stdout.strip().splitlines()[-1])
            weights[precision] = np.load(path)
    out["max_abs_weight_difference"] = float(np.abs(weights["float64"] - weights["float32"]).max())
    out["max_abs_weight"] = float(np.abs(weights["float64"]).max())
    log(f"{case}: " + json.dumps(out))
    return out


def markdown(record: dict) -> str:
    scale = record["scale"]
    users, items, entries = scale["shape"]
    rows = [["draw the data", f"{scale['data_seconds']:.0f}", f"{scale['peak_gib_after_data']:.2f}", ""],
            ["fit EDLAE (float32, in place)", f"{scale['fit_seconds']:.0f}", f"{scale['peak_gib_after_fit']:.2f}", ""],
            [f"top-{TOP_N} of every user", f"{scale['rank_seconds']:.0f}", f"{scale['peak_gib_after_ranking']:.2f}",
             f"{scale['users_per_second']:.0f} users/s"]]
    text = f"""# Linear autoencoders at catalogue scale

Command (from the repository root, total {record['runtime_seconds']:.0f} s):

```
{record['command']}
```

Synthetic Zipf interactions of {users:,} users x {items:,} items, {entries:,} interactions
(`aerec.data.synthetic.zipf_interactions`, seed {record['seed']}); EDLAE with p = {PARAMS['dropout']},
lambda = {PARAMS['l2']:g} (the notebook's MSD setting), `precision="float32"`, on the CPU.
Peak memory is the process's `ru_maxrss` after each step (it includes the data).

Memory the dense closed form needs on this catalogue: float64 (Gram matrix, inverse and B, the
default path) **{scale['float64_estimate_gib']:.1f} GiB**; float32 in place **{scale['float32_estimate_gib']:.1f} GiB**;
{scale['available_gib_at_start']:.1f} GiB was available when the run started.

{markdown_table(["step", "seconds", "peak GiB", "rate"], rows)}
"""
    if record.get("comparison"):
        rows = []
        for case, result in record["comparison"].items():
            for precision in ("float64", "float32"):
                r = result[precision]
                rows.append([case, precision, f"{r['fit_seconds']:.1f}", f"{r['peak_gib']:.2f}",
                             f"{r['validation_ndcg@100']:.6f}" if "validation_ndcg@100" in r else "–",
                             f"{result['max_abs_weight_difference']:.2e} (of {result['max_abs_weight']:.2f})"
                             if precision == "float32" else ""])
        text += f"""
## float32 in place against float64, where both fit

Each fit in a fresh process at one thread (peak memory is its own). ml-latest-small: the strong split of
seed 98765, validation users; synthetic: 50,000 users x 10,000 items, 2,000,000 interactions.

{markdown_table(["case", "precision", "fit s", "peak GiB", "validation NDCG@100", "largest weight difference"], rows)}
"""
    return text + "\n" + environment_lines(record["environment"], record["load_average_at_end"])


def main(argv=None) -> int:
    args = parse_args(argv)
    log, record = start_run(args.threads)
    record.update({"preset": args.preset, "seed": args.seed})
    if not args.skip_comparison:
        record["comparison"] = {case: compare(case, log) for case in ("ml-latest-small", "synthetic-10k")}
    with threadpool_limits(args.threads):  # LAPACK's threads too, not only torch's
        record["scale"] = scale_run(args, log)
    finish_run(args.out, f"linear_scale{'' if args.preset == 'msd' else '_' + args.preset}", record, markdown, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
