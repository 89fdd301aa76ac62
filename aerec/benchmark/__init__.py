"""Offline benchmarks: specs (datasets, protocol, seeds, metrics, tuning, models), checked before anything runs,
and their statistics (:mod:`aerec.benchmark.stats`: intervals over seeds, paired tests, Holm's correction).

:func:`~aerec.benchmark.runner.run_benchmark` runs a spec's cells (Optuna studies in one SQLite store,
resumed without recomputing); the reports, the CLI and ``--jobs`` build on these.
"""

from aerec.benchmark.spec import BenchmarkSpec, DatasetSpec, ModelSpec, ProtocolSpec, SpecError, TuningSpec, load_spec

__all__ = ["BenchmarkSpec", "DatasetSpec", "ModelSpec", "ProtocolSpec", "SpecError", "TuningSpec", "load_spec"]
