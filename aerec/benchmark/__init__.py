"""Offline benchmarks: specs (datasets, protocol, seeds, metrics, tuning, models), checked before anything runs,
and their statistics (:mod:`aerec.benchmark.stats`: intervals over seeds, paired tests, Holm's correction).

:func:`~aerec.benchmark.runner.run_benchmark` runs a spec's cells (Optuna studies in one SQLite store,
resumed without recomputing); the reports, the CLI and ``--jobs`` build on these.
"""

import os
from pathlib import Path

from aerec.benchmark.spec import (
    BenchmarkSpec,
    DatasetSpec,
    ModelSpec,
    ProtocolSpec,
    SpecError,
    TuningSpec,
    load_spec,
    load_spec_and_table,
)

__all__ = ["BenchmarkSpec", "DatasetSpec", "ModelSpec", "ProtocolSpec", "SpecError", "TuningSpec", "benchmark",
           "default_report_dir", "load_spec"]


def benchmark(spec, store=None, out=None, jobs: int = 1, spec_changed: str = "refuse", log=None, progress=None,
              plots: bool = True, table: dict | None = None) -> dict:
    """Run (or resume) a spec and write its report: ``aerec benchmark run`` from Python, for notebooks.

    ``spec`` is a TOML file's path or a dict of the same structure; ``store`` the SQLite file that keeps
    the results (default: the spec's path with ``.sqlite``; needed for a dict) or a database URL
    (:mod:`aerec.benchmark.store`); ``out`` the report's folder (default: ``<store>_report``). Returns
    the summary (:func:`aerec.benchmark.report.summarize`) with ``"paths"``, the files written. Run it
    again after an interruption: nothing finished is recomputed. ``table``: for a parsed spec, the
    table it was read from (kept in the store).
    """
    from aerec.benchmark.report import summarize, write_report
    from aerec.benchmark.runner import read_environments, run_benchmark

    if store is None:
        if not isinstance(spec, (str, os.PathLike)):
            raise ValueError("store=None with a spec that is not a file; expected the path of a store to keep "
                             "the results in (a .sqlite file)")
        store = Path(spec).with_suffix(".sqlite")
    parsed, read_table = load_spec_and_table(spec)  # the file is read once
    table = read_table if table is None else table
    cells = run_benchmark(parsed, store, log=log, progress=progress, spec_changed=spec_changed, jobs=jobs, table=table)
    summary = summarize(parsed, cells, environments=read_environments(store))
    paths = write_report(summary, default_report_dir(store) if out is None else out, cells, plots=plots)
    return {**summary, "paths": [str(path) for path in paths]}


def default_report_dir(store) -> Path:
    """``<store>_report`` beside a store file; ``<database>_report`` in the working folder for a database URL."""
    if "://" in str(store):
        name = Path(str(store).rstrip("/").rsplit("/", 1)[-1].split("?")[0]).stem or "benchmark"
        return Path(f"{name}_report")
    store = Path(store)
    return store.with_name(store.stem + "_report")
