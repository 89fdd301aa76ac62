"""A benchmark killed twice with SIGKILL at random moments, resumed, against an uninterrupted run of the same spec.

1. ``aerec benchmark run SPEC`` on a fresh store, uninterrupted; its wall time ``T``.
2. The same command on a second store, killed with SIGKILL at a moment drawn uniformly
   from (0.1 T, 0.9 T) (seeded with ``--seed``); started again and killed again at a
   second such moment; started a third time and left to finish.
3. The two stores compared: the cells recomputed (those finished before a kill are read
   back), the trials recomputed (trials a kill cut off, marked ``interrupted`` and redone),
   and the reports: every cell record and the whole summary equal, apart from seconds,
   memory and the environment record.

Run from the repository root (a quick spec: the smoke spec, about half a minute a run):

    AEREC_DATA_DIR=../shared/data .venv/bin/python evaluation/benchmark_kill_resume.py
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import REPO_ROOT, add_output_args, environment_lines, finish_run, markdown_table, start_run
from aerec.benchmark.report import without_run_dependent



def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=REPO_ROOT / "evaluation/specs/smoke.toml")
    parser.add_argument("--seed", type=int, default=0, help="draws the kill moments (default: %(default)s)")
    add_output_args(parser)
    return parser.parse_args(argv)



def command(spec: Path, store: Path) -> list[str]:
    return [sys.executable, "-m", "aerec", "benchmark", "run", str(spec), "--store", str(store), "--json", "--quiet"]


def trial_states(store: Path) -> dict:
    import sqlite3

    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as connection:
        rows = connection.execute("SELECT t.state, COUNT(*) FROM trials t GROUP BY t.state").fetchall()
        interrupted = connection.execute("SELECT COUNT(*) FROM trial_user_attributes WHERE key = 'interrupted'"
                                         ).fetchone()[0]
    return {**dict(rows), "interrupted": interrupted}


def run(args, log) -> dict:
    from aerec.benchmark.runner import read_store

    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as folder:
        whole, killed = Path(folder) / "whole.sqlite", Path(folder) / "killed.sqlite"
        start = time.perf_counter()
        done = subprocess.run(command(args.spec, whole), cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
        summary_whole = json.loads(done.stdout)
        log(f"uninterrupted: {wall:.1f} s")
        kills = []
        for attempt in range(2):
            moment = float(rng.uniform(0.1 * wall, 0.9 * wall))
            cells_before = len(read_store(killed)[1]) if killed.exists() else 0
            worker = subprocess.Popen(command(args.spec, killed), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            time.sleep(moment)
            finished_first = worker.poll() is not None
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            cells_after = len(read_store(killed)[1]) if killed.exists() else 0
            kills.append({"after_seconds": moment, "finished_before_the_kill": finished_first,
                          "cells_finished_before": cells_before, "cells_finished_at_kill": cells_after,
                          "trials_at_kill": trial_states(killed) if killed.exists() else {}})
            log(f"kill {attempt + 1} after {moment:.1f} s: {cells_after} cells finished, trials "
                f"{kills[-1]['trials_at_kill']}")
        messages = subprocess.run([*command(args.spec, killed)[:-1]], cwd=REPO_ROOT, capture_output=True, text=True,
                                  check=True)
        summary_killed = json.loads(messages.stdout)
        read_back = sum("finished before, read back" in line for line in messages.stderr.splitlines())
        redone = [line for line in messages.stderr.splitlines() if "cut off by a stopped run" in line]
        _, cells_whole = read_store(whole)
        _, cells_killed = read_store(killed)
        differing = sorted(str(key) for key in cells_whole
                           if without_run_dependent(cells_whole[key]) != without_run_dependent(cells_killed[key]))
        return {"spec": str(args.spec.relative_to(REPO_ROOT)), "uninterrupted_seconds": wall, "kills": kills,
                "cells": len(cells_whole), "cells_read_back_at_the_last_start": read_back,
                "trials_whole": trial_states(whole), "trials_killed": trial_states(killed),
                "interrupted_trials_redone": sum(int(line.split(": ")[1].split()[0]) for line in redone),
                "cells_differing": differing,
                "summaries_equal": without_run_dependent(summary_whole) == without_run_dependent(summary_killed)}


def markdown(record: dict) -> str:
    result = record["result"]
    rows = [[i + 1, f"{kill['after_seconds']:.1f}", kill["cells_finished_at_kill"],
             ", ".join(f"{k.lower()} {v}" for k, v in sorted(kill["trials_at_kill"].items()))]
            for i, kill in enumerate(result["kills"])]
    return (f"# Benchmark killed twice and resumed\n\nCommand (from the repository root):\n\n```\n{record['command']}"
            f"\n```\n\n`{result['spec']}`: an uninterrupted run took {result['uninterrupted_seconds']:.1f} s "
            f"({result['cells']} cells). A second store was killed with SIGKILL twice, at moments drawn uniformly "
            "from (0.1, 0.9) of that time, then resumed to the end.\n\n"
            + markdown_table(["kill", "after s", "cells finished then", "trials in the store then"], rows)
            + f"\nEvery trial a kill cut off was marked FAIL `interrupted` at the next start and redone: "
            f"{result['trials_killed'].get('interrupted', 0)} in all ({result['interrupted_trials_redone']} at the "
            f"last start). No other trial ran twice: the store's trials, uninterrupted {result['trials_whole']}, "
            f"killed and resumed {result['trials_killed']}. At the last start "
            f"{result['cells_read_back_at_the_last_start']} finished cells were read back, not recomputed. Cell "
            f"records that differ apart from seconds and memory: {result['cells_differing'] or 'none'}; the summaries "
            f"(metrics, intervals, p-values, chosen parameters) are equal: **{result['summaries_equal']}**.\n\n"
            + environment_lines(record["environment"], record["load_average_at_end"]))


def main(argv=None) -> None:
    args = parse_args(argv)
    log, record = start_run(threads=1)
    record["result"] = run(args, log)
    print(finish_run(args.out, "benchmark_kill_resume", record, markdown, log))


if __name__ == "__main__":
    main()
