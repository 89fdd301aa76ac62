"""Offline benchmarks: specs (datasets, protocol, seeds, metrics, tuning, models), checked before anything runs,
and their statistics (:mod:`aerec.benchmark.stats`: intervals over seeds, paired tests, Holm's correction).

The runner, the results store and the reports build on :func:`load_spec` and the statistics.
"""

from aerec.benchmark.spec import BenchmarkSpec, DatasetSpec, ModelSpec, ProtocolSpec, SpecError, TuningSpec, load_spec

__all__ = ["BenchmarkSpec", "DatasetSpec", "ModelSpec", "ProtocolSpec", "SpecError", "TuningSpec", "load_spec"]
