"""Offline benchmarks: specs (datasets, protocol, seeds, metrics, tuning, models), checked before anything runs.

The runner, the results store, the statistics and the reports build on :func:`load_spec`.
"""

from aerec.benchmark.spec import BenchmarkSpec, DatasetSpec, ModelSpec, ProtocolSpec, SpecError, TuningSpec, load_spec

__all__ = ["BenchmarkSpec", "DatasetSpec", "ModelSpec", "ProtocolSpec", "SpecError", "TuningSpec", "load_spec"]
