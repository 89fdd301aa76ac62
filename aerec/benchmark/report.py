"""The report of a benchmark: per dataset, each model's metrics over seeds with intervals, and paired tests.

For each dataset: mean, sample standard deviation and 95% t interval over the split
seeds of every metric; the parameters chosen per seed, fit seconds and trials; and
the paired tests (Wilcoxon and t, Holm-adjusted across models, :mod:`aerec.benchmark.stats`)
of every model against the best one and against the spec's named baseline, on the
per-user values of the primary metric (the tuning metric when it is reported, else the
first metric), users of all seeds pooled (every model is scored on the same test
users of a seed). Written as JSON, CSV and markdown.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from aerec.benchmark.spec import BenchmarkSpec
from aerec.benchmark.stats import compare, mean_ci

__all__ = ["json_safe", "markdown", "per_user_frame", "summarize", "write_report"]


def summarize(spec: BenchmarkSpec, cells: dict, alpha: float = 0.05) -> dict:
    """The report's content from the finished ``cells`` of :func:`~aerec.benchmark.runner.run_benchmark`."""
    primary = spec.tuning.metric if spec.tuning.metric in spec.metrics else spec.metrics[0]
    out = {"spec": spec.name, "seeds": list(spec.seeds), "metrics": list(spec.metrics), "primary": primary,
           "alpha": alpha, "tuning": {"sampler": spec.tuning.sampler, "trials": spec.tuning.trials,
                                      "seconds": spec.tuning.seconds, "metric": spec.tuning.metric},
           "datasets": {}}
    for dataset in spec.datasets:
        models, per_user = {}, {}
        for model in spec.models:
            runs = [cells[(dataset.name, int(seed), model.label)] for seed in spec.seeds]
            fits = [r["fit_seconds"] for r in runs if r.get("fit_seconds") is not None]
            trials: dict = {}
            for run in runs:
                for state, count in run["trials"].items():
                    trials[state] = trials.get(state, 0) + count
            models[model.label] = {"model": model.model,
                                   "metrics": {m: mean_ci([r["test"][m] for r in runs]) for m in spec.metrics},
                                   "chosen": [r["params"] for r in runs], "trials": trials,
                                   "fit_seconds": float(np.mean(fits)) if fits else None}
            per_user[model.label] = np.concatenate([np.asarray(r["per_user"][primary]) for r in runs])
        best = max(models, key=lambda label: models[label]["metrics"][primary]["mean"])
        block = {"models": models, "best": best, "against_best": compare(per_user, best, alpha)}
        if spec.baseline is not None:
            block["baseline"] = spec.baseline
            block["against_baseline"] = compare(per_user, spec.baseline, alpha)
        out["datasets"][dataset.name] = block
    return out


def _cell(stats: dict) -> str:
    if np.isnan(stats["ci_low"]):
        return f"{stats['mean']:.4f}"
    return f"{stats['mean']:.4f} ± {stats['sd']:.4f} [{stats['ci_low']:.4f}, {stats['ci_high']:.4f}]"


def _versus(block: dict, key: str, label: str) -> str:
    tests = block.get(key, {})
    if label not in tests:
        return "–"
    result = tests[label]
    mark = " *" if result["significant"] else ""
    return f"{result['mean_difference']:+.4f} (p {result['wilcoxon_p_holm']:.3g}){mark}"


def markdown(summary: dict) -> str:
    """The report as markdown: one table per dataset."""
    primary, metrics = summary["primary"], summary["metrics"]
    text = [f"# Benchmark {summary['spec']}\n",
            f"Seeds {', '.join(map(str, summary['seeds']))}; tuning: {summary['tuning']['sampler']} sampler, "
            f"{summary['tuning']['trials']} trials"
            + (f" / {summary['tuning']['seconds']:g} s" if summary['tuning']['seconds'] else "")
            + f" per model and cell, on validation {summary['tuning']['metric']}. Metrics on the test users: mean ± "
              "sd [95% t interval] over the seeds. \"vs best\" / \"vs baseline\": mean per-user difference in "
              f"{primary} and Wilcoxon's p, Holm-adjusted across models; * below {summary['alpha']:g}.\n"]
    for dataset, block in summary["datasets"].items():
        headers = ["model", *metrics, "vs best", "vs baseline", "chosen (per seed)", "fit s", "trials"]
        rows = []
        for label, model in block["models"].items():
            chosen = "; ".join(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in params.items()) or "–" for params in model["chosen"])
            rows.append([label + (" (best)" if label == block["best"] else ""),
                         *(_cell(model["metrics"][m]) for m in metrics),
                         _versus(block, "against_best", label), _versus(block, "against_baseline", label), chosen,
                         "–" if model["fit_seconds"] is None else f"{model['fit_seconds']:.2f}",
                         ", ".join(f"{k.lower()} {v}" for k, v in sorted(model["trials"].items()))])
        text.append(f"\n## {dataset}\n\n| " + " | ".join(headers) + " |\n|" + " --- |" * len(headers) + "\n"
                    + "".join("| " + " | ".join(map(str, row)) + " |\n" for row in rows))
    return "".join(text)


def json_safe(value):
    """JSON-safe: numpy numbers as Python ones, NaN (an interval of one seed) as null."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, (np.floating, float)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def per_user_frame(cells: dict):
    """One row per (dataset, seed, model, test user): every reported metric's per-user value (a pandas DataFrame)."""
    import pandas as pd

    frames = []
    for (dataset, seed, label), record in sorted(cells.items()):
        frame = pd.DataFrame({"dataset": dataset, "seed": seed, "model": label,
                              "test_user_row": np.asarray(record["users"], dtype=np.int64)})
        for metric, values in record["per_user"].items():
            frame[metric] = np.asarray(values, dtype=np.float64)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def write_report(summary: dict, out_dir: str | Path, cells: dict | None = None) -> list[Path]:
    """``report.json``, ``report.csv`` (one row per dataset, model and metric), ``report.md`` and, given the
    ``cells``, ``per_user.parquet`` (every test user's values, for tests of one's own) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.csv", out / "report.md"]
    if cells is not None:
        paths.append(out / "per_user.parquet")
        per_user_frame(cells).to_parquet(paths[-1], index=False)
    paths[0].write_text(json.dumps(json_safe(summary), indent=2) + "\n")
    with open(paths[1], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", "model", "metric", "mean", "sd", "ci_low", "ci_high", "n"])
        for dataset, block in summary["datasets"].items():
            for label, model in block["models"].items():
                for metric, stats in model["metrics"].items():
                    writer.writerow([dataset, label, metric, stats["mean"], stats["sd"], stats["ci_low"],
                                     stats["ci_high"], stats["n"]])
    paths[2].write_text(markdown(summary))
    return paths
