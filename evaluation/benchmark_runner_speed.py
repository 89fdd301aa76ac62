"""The benchmark runner's own cost: ``--jobs 2`` against ``--jobs 1``, and its overhead over the cells' work.

Two measurements, each its own sub-command:

- ``jobs``: ``aerec benchmark run evaluation/specs/light_cells.toml`` (popularity and EASE on
  ML-100K and ml-latest-small, 5 seeds, 4 trials: 20 light cells), each round once with
  ``--jobs 1`` at one thread, ``--jobs 1`` with the machine's default threads (both cores for
  BLAS and torch) and ``--jobs 2`` (each worker with its share of the cores: one here), on fresh
  stores, in rotating order; wall seconds of the whole command (Python's start, the data, the
  workers, the report). Target: the median ``--jobs 2`` wall at most 0.6x the median ``--jobs 1``
  wall at one thread; the ratio against ``--jobs 1`` on all cores is reported beside it. The
  summaries must agree (without seconds and memory), which the script checks.
- ``overhead``: runs a spec (default the ML-100K strong table, ``evaluation/specs/strong_ml_100k.toml``)
  in this process with ``--jobs 1`` at one torch thread, on a store of its own (resumed when it
  exists: the wall then counts only this run's part, and the cells read back are left out of
  both sides). The cells' work is what the models do: every trial's fit and validation scoring,
  and each cell's final test scoring; the runner's overhead is the rest of the wall (reading
  the data and making splits, Optuna's sampler and storage, the store's writes). Target: under
  2% of the cells' training time.

Run from the repository root on a quiet machine:

    AEREC_DATA_DIR=../shared/data .venv/bin/python evaluation/benchmark_runner_speed.py jobs
    AEREC_DATA_DIR=../shared/data .venv/bin/python evaluation/benchmark_runner_speed.py overhead \\
        --store evaluation/results/strong_ml_100k.sqlite
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import REPO_ROOT, add_output_args, environment_lines, finish_run, markdown_table, start_run
from aerec.benchmark.report import without_run_dependent

JOBS_TARGET = 0.6
OVERHEAD_TARGET = 0.02


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True)
    jobs = actions.add_parser("jobs", help="--jobs 2 against --jobs 1 on many light cells")
    jobs.add_argument("--spec", type=Path, default=REPO_ROOT / "evaluation/specs/light_cells.toml")
    jobs.add_argument("--rounds", type=int, default=3)
    add_output_args(jobs)
    overhead = actions.add_parser("overhead", help="the runner's overhead over the cells' work")
    overhead.add_argument("--spec", type=Path, default=REPO_ROOT / "evaluation/specs/strong_ml_100k.toml")
    overhead.add_argument("--store", type=Path, required=True, help="the store (kept: the spec's table comes from it)")
    add_output_args(overhead)
    return parser.parse_args(argv)



CONFIGURATIONS = {"jobs 1, 1 thread": (1, "1"), "jobs 1, all cores": (1, None), "jobs 2": (2, None)}


def run_jobs(args, log) -> dict:
    walls, summaries = {name: [] for name in CONFIGURATIONS}, {}
    names = list(CONFIGURATIONS)
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.rounds):
            for name in names[round_ % 3:] + names[:round_ % 3]:
                jobs, threads = CONFIGURATIONS[name]
                store = Path(folder) / f"r{round_}_{name.replace(' ', '_').replace(',', '')}.sqlite"
                command = [sys.executable, "-m", "aerec", "benchmark", "run", str(args.spec), "--store", str(store),
                           "--jobs", str(jobs), "--json", "--quiet"]
                env = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS",)}
                if threads is not None:
                    env["OMP_NUM_THREADS"] = threads
                start = time.perf_counter()
                done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=env)
                wall = time.perf_counter() - start
                if done.returncode != 0:
                    raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
                walls[name].append(wall)
                summaries.setdefault(name, without_run_dependent(json.loads(done.stdout)))
                log(f"round {round_ + 1}, {name}: {wall:.2f} s")
    medians = {name: float(np.median(values)) for name, values in walls.items()}
    ratio = medians["jobs 2"] / medians["jobs 1, 1 thread"]
    return {"spec": str(args.spec.relative_to(REPO_ROOT)), "rounds": args.rounds, "walls": walls,
            "median_wall": medians, "ratio": ratio,
            "ratio_against_all_cores": medians["jobs 2"] / medians["jobs 1, all cores"],
            "target": JOBS_TARGET, "met": ratio <= JOBS_TARGET,
            "summaries_agree": all(summary == summaries[names[0]] for summary in summaries.values())}


def run_overhead(args, log) -> dict:
    from aerec.benchmark.runner import read_store, run_benchmark

    before = set(read_store(args.store)[1]) if args.store.exists() else set()
    start = time.perf_counter()
    cells = run_benchmark(args.spec, args.store, log=log)
    wall = time.perf_counter() - start
    ran = {key: cell for key, cell in cells.items() if key not in before}
    work = {key: cell["tuning_seconds"] + cell["final_seconds"] for key, cell in ran.items()}
    total = sum(work.values())
    overhead = wall - total
    return {"spec": str(args.spec.relative_to(REPO_ROOT)), "store": str(args.store), "cells_run": len(ran),
            "cells_read_back": len(before), "wall_seconds": wall, "work_seconds": total,
            "overhead_seconds": overhead, "overhead_fraction": overhead / total if total else float("nan"),
            "target": OVERHEAD_TARGET, "met": total > 0 and overhead / total < OVERHEAD_TARGET,
            "per_model": {label: sum(w for (_, _, model), w in work.items() if model == label)
                          for label in sorted({key[2] for key in ran})}}


def markdown(record: dict) -> str:
    env = environment_lines(record["environment"], record["load_average_at_end"])
    text = (f"# Benchmark runner: {record['action']}\n\nCommand (from the repository root):\n\n"
            f"```\n{record['command']}\n```\n\n")
    result = record["result"]
    if record["action"] == "jobs":
        rows = [[name, ", ".join(f"{w:.2f}" for w in result["walls"][name]), f"{result['median_wall'][name]:.2f}"]
                for name in result["walls"]]
        text += (f"`aerec benchmark run {result['spec']}` on fresh stores, {result['rounds']} rounds in rotating "
                 "order; wall seconds of the whole command.\n\n"
                 + markdown_table(["configuration", "walls (s)", "median (s)"], rows)
                 + f"\nRatio of medians, --jobs 2 / --jobs 1 at one thread: **{result['ratio']:.3f}** (target <= "
                 f"{JOBS_TARGET}: {'met' if result['met'] else 'NOT met'}); against --jobs 1 on all cores: "
                 f"{result['ratio_against_all_cores']:.3f}. The runs' summaries agree without seconds and "
                 f"memory: {result['summaries_agree']}.\n")
    else:
        rows = [[label, f"{seconds:.1f}"] for label, seconds in result["per_model"].items()]
        text += (f"`{result['spec']}` run with --jobs 1 at one torch thread: {result['cells_run']} cells run "
                 f"({result['cells_read_back']} read back from the store and left out).\n\n"
                 + markdown_table(["model", "cells' work (s): trial fits + validation scoring + test scoring"], rows)
                 + f"\nWall {result['wall_seconds']:.1f} s, the cells' work {result['work_seconds']:.1f} s: the "
                 f"runner's overhead {result['overhead_seconds']:.1f} s = **{100 * result['overhead_fraction']:.2f}%** "
                 f"(target < {100 * OVERHEAD_TARGET:.0f}%: {'met' if result['met'] else 'NOT met'}).\n")
    return text + "\n" + env


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("AEREC_DATA_DIR", str(REPO_ROOT.parent / "shared" / "data"))
    log, record = start_run(threads=1)
    record["action"] = args.action
    record["result"] = run_jobs(args, log) if args.action == "jobs" else run_overhead(args, log)
    print(finish_run(args.out, f"benchmark_runner_{args.action}", record, markdown, log))


if __name__ == "__main__":
    main()
