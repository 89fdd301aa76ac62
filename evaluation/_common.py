"""Helpers shared by the evaluation scripts: progress, run metadata, results files, markdown.

Not part of the aerec package: the scripts in this folder import it as a
sibling module (``python evaluation/<script>.py`` puts this folder on the path).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aerec.data import StrongSplit

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"


class Progress:
    """Prints timestamped progress lines to stderr (stdout is kept for the final table)."""

    def __init__(self):
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def __call__(self, message: str) -> None:
        print(f"[{self.elapsed():7.1f}s] {message}", file=sys.stderr, flush=True)


def add_output_args(parser: argparse.ArgumentParser) -> None:
    """The ``--out`` option every script shares."""
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the .json and .md results (default: %(default)s)")


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """``--threads``, ``--seed`` and ``--out``, which the benchmark scripts share."""
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    add_output_args(parser)


def command_line() -> str:
    """The command that is running, as one would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO_ROOT)
    except ValueError:
        pass
    python = Path(sys.executable)
    try:
        python = python.relative_to(REPO_ROOT)
    except ValueError:
        pass
    env = f"AEREC_DATA_DIR={shlex.quote(os.environ['AEREC_DATA_DIR'])} " if os.environ.get("AEREC_DATA_DIR") else ""
    return env + shlex.join([str(python), str(script), *sys.argv[1:]])


def environment() -> dict:
    """Library versions, threads, the machine and the git state of the checkout, for the results file."""
    from aerec.benchmark.environment import environment as package_environment

    return {**package_environment(), "load_average_at_start": list(os.getloadavg())}


def write_results(out_dir: Path, stem: str, record: dict, markdown: str) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` under ``out_dir``; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path


def start_run(threads: int) -> tuple[Progress, dict]:
    """Set torch's CPU threads; return the progress log and a record holding the command, environment, threads."""
    import torch

    torch.set_num_threads(threads)
    return Progress(), {"command": command_line(), "environment": environment(), "threads": threads}


def finish_run(out_dir: Path, stem: str, record: dict, markdown, log: Progress) -> str:
    """Stamp the run time and load, write ``<stem>.json`` / ``<stem>.md``, log where; return the markdown."""
    record["runtime_seconds"] = log.elapsed()
    record["load_average_at_end"] = list(os.getloadavg())
    text = markdown(record)
    json_path, md_path = write_results(out_dir, stem, record, text)
    log(f"wrote {json_path} and {md_path}")
    return text


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def mean_sd(values: Sequence[float]) -> dict:
    """Mean and sample standard deviation (ddof=1; NaN for a single value)."""
    values = np.asarray(values, dtype=np.float64)
    sd = float(values.std(ddof=1)) if values.size > 1 else float("nan")
    return {"mean": float(values.mean()), "sd": sd, "n": int(values.size)}


def format_mean_sd(stats: dict, digits: int = 4) -> str:
    return f"{stats['mean']:.{digits}f} ± {stats['sd']:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub markdown table; columns of numbers (or numbers formatted as text) right-aligned."""
    def aligned(column: int) -> str:
        numeric = bool(rows) and all(_is_number(row[column]) for row in rows)
        return "---:" if numeric else "---"

    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(aligned(c) for c in range(len(headers))) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _is_number(cell) -> bool:
    if isinstance(cell, (int, float, np.number)):
        return True
    return isinstance(cell, str) and bool(re.fullmatch(r"[-+]?[\d,]*\.?\d+", cell))


def environment_lines(env: dict, load_average_at_end: Sequence[float]) -> str:
    """One markdown paragraph describing where (and beside what load) the numbers were measured."""
    dirty = f", {len(env['git_dirty_files'])} uncommitted file(s)" if env["git_dirty_files"] else ""
    return (
        f"Measured on {env['platform']}, {env['cpu_count']} CPU cores, torch {env['torch']} "
        f"({env['torch_threads']} threads, CUDA {'yes' if env['cuda'] else 'no'}), numpy {env['numpy']}, "
        f"scipy {env['scipy']}, implicit {env['implicit']}, Python {env['python']}; "
        f"git {(env['git_commit'] or 'unknown')[:12]}{dirty}. 1-minute load average {env['load_average_at_start'][0]:.2f} at the start "
        f"and {load_average_at_end[0]:.2f} at the end (other processes may share the cores, which inflates timings).\n"
    )


def split_checks(split: StrongSplit) -> dict:
    """Disjoint users, one shared item index, fold-in and held-out without common entries."""
    train, validation, test = (set(part.user_ids.tolist()) for part in (split.train, split.validation_fold_in, split.test_fold_in))
    parts = (split.train, split.validation_fold_in, split.validation_heldout, split.test_fold_in, split.test_heldout)
    overlap = sum(
        (fold_in.matrix.multiply(heldout.matrix)).nnz
        for fold_in, heldout in ((split.validation_fold_in, split.validation_heldout), (split.test_fold_in, split.test_heldout))
    )
    return {
        "users_disjoint": not (train & validation or train & test or validation & test),
        "heldout_rows_match_fold_in": bool(
            np.array_equal(split.validation_fold_in.user_ids, split.validation_heldout.user_ids)
            and np.array_equal(split.test_fold_in.user_ids, split.test_heldout.user_ids)
        ),
        "same_item_index": all(np.array_equal(part.item_ids, split.train.item_ids) for part in parts),
        "fold_in_heldout_common_entries": int(overlap),
    }


def check_split(split: StrongSplit) -> dict:
    """Disjoint users and no (user, item) pair both fold-in and held-out (as the retired baselines_strong.py checked)."""
    checks = split_checks(split)
    if not checks["users_disjoint"] or checks["fold_in_heldout_common_entries"]:
        raise RuntimeError(f"not a valid strong-generalization split: {checks}")
    return checks


def strong_split_table(results: dict) -> str:
    """One row per (dataset, seed) of a strong-generalization run: its users, items and interactions."""
    headers = ["dataset", "seed", "train users", "items", "train interactions", "val users", "test users"]
    rows = []
    for dataset, block in results["datasets"].items():
        for run in block["per_seed"]:
            s = run["split_summary"]
            rows.append([dataset, run["seed"], s["train_users"], s["items"], s["train_interactions"],
                         s.get("validation_users", "–"), s.get("test_users", "–")])
    return markdown_table(headers, rows)
