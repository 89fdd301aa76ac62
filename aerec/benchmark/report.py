"""The report of a benchmark: per dataset, each model's metrics over seeds with intervals, and paired tests.

For each dataset: mean, sample standard deviation and 95% t interval over the split
seeds of every metric; the parameters chosen per seed, fit seconds and trials; and
the paired tests (Wilcoxon and t, Holm-adjusted across models, :mod:`aerec.benchmark.stats`)
of every model against the best one and against the spec's named baseline, on the
per-user values of the primary metric (the tuning metric when it is reported, else the
first metric): every model is scored on the same test users of a seed (checked), and a
user who is a test user under several seeds counts once, with the mean of their values
over those seeds (the per-user and ratings protocols test almost every user under every
seed: pooling the seeds' values as separate users would overstate the evidence).
Written as JSON, CSV and markdown.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from aerec.benchmark.protocols import LOWER_IS_BETTER
from aerec.benchmark.spec import BenchmarkSpec
from aerec.benchmark.stats import compare, mean_ci

__all__ = ["RUN_DEPENDENT", "json_safe", "markdown", "per_user_frame", "summarize", "summary_frame",
           "without_run_dependent", "write_report"]


def summarize(spec: BenchmarkSpec, cells: dict, alpha: float = 0.05, environments: list | None = None) -> dict:
    """The report's content from the finished ``cells`` of :func:`~aerec.benchmark.runner.run_benchmark`.

    ``environments`` (:func:`~aerec.benchmark.runner.read_environments`) and each split's fingerprint
    are written with it, so that the table can be traced to what made it.
    """
    primary = spec.tuning.metric if spec.tuning.metric in spec.metrics else spec.metrics[0]
    out = {"spec": spec.name, "seeds": list(spec.seeds), "metrics": list(spec.metrics), "primary": primary,
           "alpha": alpha, "tuning": {"sampler": spec.tuning.sampler, "trials": spec.tuning.trials,
                                      "seconds": spec.tuning.seconds, "metric": spec.tuning.metric},
           "datasets": {}, "environment": environments or [],
           "splits": {dataset.name: {str(seed): cells[(dataset.name, int(seed), spec.models[0].label)].get("split")
                                     for seed in spec.seeds} for dataset in spec.datasets}}
    for dataset in spec.datasets:
        models = {}
        per_user = per_user_means(spec, dataset.name, cells, primary)
        for model in spec.models:
            runs = [cells[(dataset.name, int(seed), model.label)] for seed in spec.seeds]
            fits = [r["fit_seconds"] for r in runs if r.get("fit_seconds") is not None]
            trials: dict = {}
            for run in runs:
                for state, count in run["trials"].items():
                    trials[state] = trials.get(state, 0) + count
            models[model.label] = {"model": model.model, "fixed": dict(model.fixed), "searched": sorted(model.space),
                                   "metrics": {m: mean_ci([r["test"][m] for r in runs]) for m in spec.metrics},
                                   "chosen": [r["params"] for r in runs], "trials": trials,
                                   "fit_seconds": float(np.mean(fits)) if fits else None,
                                   "epoch_seconds": mean_of(runs, "epoch_seconds"),
                                   "tuning_seconds": mean_of(runs, "tuning_seconds"),
                                   "peak_rss_bytes": max(r.get("peak_rss_bytes") or 0 for r in runs) or None}
        sign = -1.0 if primary in LOWER_IS_BETTER else 1.0  # RMSE and MAE: the smallest is the best
        best = max(models, key=lambda label: sign * models[label]["metrics"][primary]["mean"])
        block = {"models": models, "best": best, "against_best": compare(per_user, best, alpha)}
        if spec.baseline is not None:
            block["baseline"] = spec.baseline
            block["against_baseline"] = compare(per_user, spec.baseline, alpha)
        out["datasets"][dataset.name] = block
    return out


def per_user_means(spec: BenchmarkSpec, dataset: str, cells: dict, metric: str) -> dict:
    """Each model's per-user ``metric``, one value per test user: the mean over the seeds where the user is tested.

    Users are known by their raw ids (``user_ids``); where no cell of a seed kept them (cells recorded
    before they were), only rows are known, and the seed's users count as distinct from other seeds'.
    Every model's cell of a seed must hold the same split and test users (rows, and ids where both
    kept them) as the first model's: a ValueError names the cells otherwise (a data file changed
    between runs, say).
    """
    first = spec.models[0].label
    position: dict = {}
    keys_of_seed = {}
    for seed in spec.seeds:
        seed_cells = {model.label: cells[(dataset, int(seed), model.label)] for model in spec.models}
        reference = seed_cells[first]
        for label, cell in seed_cells.items():
            ids = (cell.get("user_ids"), reference.get("user_ids"))
            if (cell.get("split") != reference.get("split") or cell.get("users") != reference.get("users")
                    or (None not in ids and ids[0] != ids[1])):
                raise ValueError(f"cells {(dataset, int(seed), label)} and {(dataset, int(seed), first)} were "
                                 "scored on different splits or test users; expected one split per dataset and seed "
                                 "(did the data change between runs?): run one of them again")
        with_ids = next((cell["user_ids"] for cell in seed_cells.values() if cell.get("user_ids") is not None), None)
        keys = ([("id", user) for user in with_ids] if with_ids is not None
                else [("row", int(seed), row) for row in reference["users"]])
        keys_of_seed[seed] = keys
        for key in keys:
            position.setdefault(key, len(position))
    means = {}
    for model in spec.models:
        sums, counts = np.zeros(len(position)), np.zeros(len(position))
        for seed in spec.seeds:
            cell = cells[(dataset, int(seed), model.label)]
            index = np.array([position[key] for key in keys_of_seed[seed]], dtype=np.int64)
            np.add.at(sums, index, np.asarray(cell["per_user"][metric], dtype=np.float64))
            np.add.at(counts, index, 1)
        means[model.label] = sums / counts
    return means


def mean_of(runs: list, key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return float(np.mean(values)) if values else None


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
            + " / ".join(part for part in (summary["tuning"]["trials"] and f"{summary['tuning']['trials']} trials",
                                           summary["tuning"]["seconds"] and f"{summary['tuning']['seconds']:g} s "
                                                                            "of fitting") if part)
            + f" per model and cell, on validation {summary['tuning']['metric']}. Metrics on the test users: mean ± "
              "sd [95% t interval] over the seeds. \"vs best\" / \"vs baseline\": mean per-user difference in "
              f"{primary} (a user tested under several seeds counts once, with their mean) and Wilcoxon's p, "
              f"Holm-adjusted across models; * below {summary['alpha']:g}. The best is the model with the best "
              "test mean, so \"vs best\" is descriptive; \"vs baseline\" is the planned comparison.\n"]
    for dataset, block in summary["datasets"].items():
        headers = ["model", *metrics, "vs best", "vs baseline", "chosen (per seed)", "fit s", "s/epoch", "tuning s",
                   "peak MiB", "trials"]
        rows = []
        for label, model in block["models"].items():
            chosen = "; ".join(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in params.items() if k in model.get("searched", params)) or "–"
                               for params in model["chosen"])
            rows.append([label + (" (best)" if label == block["best"] else ""),
                         *(_cell(model["metrics"][m]) for m in metrics),
                         _versus(block, "against_best", label), _versus(block, "against_baseline", label), chosen,
                         _number(model["fit_seconds"], "{:.2f}"), _number(model.get("epoch_seconds"), "{:.3f}"),
                         _number(model.get("tuning_seconds"), "{:.1f}"),
                         _number(model.get("peak_rss_bytes") and model["peak_rss_bytes"] / 2**20, "{:.0f}"),
                         ", ".join(f"{k.lower()} {v}" for k, v in sorted(model["trials"].items()))])
        fixed = "; ".join(f"{label}: " + ", ".join(f"{k}={v}" for k, v in model["fixed"].items())
                          for label, model in block["models"].items() if model.get("fixed"))
        text.append(f"\n## {dataset}\n\n| " + " | ".join(headers) + " |\n|" + " --- |" * len(headers) + "\n"
                    + "".join("| " + " | ".join(map(str, row)) + " |\n" for row in rows)
                    + (f"\nFixed: {fixed}.\n" if fixed else ""))
        plots = [name for name in summary.get("plots", []) if name.endswith(f"_{dataset}.png")]
        text += [f"\n![{name}]({name})\n" for name in plots]
    text.append(_provenance(summary))
    return "".join(text)


#: What differs between two runs of one spec by nature: clocks, memory, the machines, kills survived.
RUN_DEPENDENT = ("fit_seconds", "epoch_seconds", "tuning_seconds", "final_seconds", "peak_rss_bytes", "environment",
                 "interrupted", "paths")


def without_run_dependent(value):
    """A summary or cell record without :data:`RUN_DEPENDENT` entries, at any depth: what two runs of one spec
    with the same seeds must agree on (metrics, intervals, p-values, chosen parameters, per-user values)."""
    if isinstance(value, dict):
        return {key: without_run_dependent(item) for key, item in value.items() if key not in RUN_DEPENDENT}
    if isinstance(value, (list, tuple)):
        return [without_run_dependent(item) for item in value]
    return value


def _number(value, form: str) -> str:
    return "–" if value is None else form.format(value)


def _provenance(summary: dict) -> str:
    """The splits' fingerprints and the environments that ran the cells, as markdown."""
    text = ["\n## Provenance\n\nSplit fingerprints (SHA-256 of each split's parts, first 16 hex digits): "
            + "; ".join(f"{dataset}: " + ", ".join(f"seed {seed} {(value or '–')[:16]}"
                                                   for seed, value in seeds.items())
                        for dataset, seeds in summary.get("splits", {}).items()) + ".\n"]
    for environment in summary.get("environment", []):
        workers = environment.get("workers", [])
        text.append(f"\n- aerec {environment.get('aerec')} (git {(environment.get('git_commit') or 'unknown')[:12]}"
                    f"{', with uncommitted changes' if environment.get('git_dirty_files') else ''}), Python "
                    f"{environment.get('python')}, torch {environment.get('torch')}, numpy {environment.get('numpy')}, "
                    f"scipy {environment.get('scipy')}, optuna {environment.get('optuna')}, implicit "
                    f"{environment.get('implicit')}; {environment.get('machine')} ({environment.get('cpu_count')} "
                    f"cores, {environment.get('torch_threads')} torch threads, CUDA "
                    f"{'yes' if environment.get('cuda') else 'no'}) on {environment.get('platform')}; "
                    f"{len(workers)} worker(s), first started {workers[0]['started'] if workers else '–'}\n")
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


def summary_frame(summary: dict):
    """One row per dataset, model and metric: mean, sd, 95% interval and seeds (a pandas DataFrame; report.csv)."""
    import pandas as pd

    rows = [{"dataset": dataset, "model": label, "metric": metric, **{key: stats[key] for key in
                                                                         ("mean", "sd", "ci_low", "ci_high", "n")}}
            for dataset, block in summary["datasets"].items() for label, model in block["models"].items()
            for metric, stats in model["metrics"].items()]
    return pd.DataFrame(rows, columns=["dataset", "model", "metric", "mean", "sd", "ci_low", "ci_high", "n"])


def per_user_frame(cells: dict):
    """One row per (dataset, seed, model, test user): every reported metric's per-user value (a pandas DataFrame)."""
    import pandas as pd

    frames = []
    for (dataset, seed, label), record in sorted(cells.items()):
        frame = pd.DataFrame({"dataset": dataset, "seed": seed, "model": label,
                              "test_user_row": np.asarray(record["users"], dtype=np.int64)})
        if record.get("user_ids") is not None:  # raw ids, kept by cells run since they were recorded
            frame["user_id"] = pd.Series(record["user_ids"]).astype(str)
        for metric, values in record["per_user"].items():
            frame[metric] = np.asarray(values, dtype=np.float64)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def write_report(summary: dict, out_dir: str | Path, cells: dict | None = None, plots: bool = True) -> list[Path]:
    """``report.json``, ``report.csv`` (one row per dataset, model and metric), ``report.md`` and, given the
    ``cells``, ``per_user.parquet`` (every test user's values, for tests of one's own) and the plots
    (:mod:`aerec.benchmark.plots`, when matplotlib is installed) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.csv", out / "report.md"]
    if cells is not None:
        paths.append(out / "per_user.parquet")
        per_user_frame(cells).to_parquet(paths[-1], index=False)
        if plots:
            try:
                from aerec.benchmark.plots import write_plots

                drawn = write_plots(summary, cells, out)
            except ImportError:  # matplotlib is optional: pip install matplotlib
                drawn = []
            summary = {**summary, "plots": [path.name for path in drawn]}
            paths += drawn
    paths[0].write_text(json.dumps(json_safe(summary), indent=2) + "\n")
    summary_frame(summary).to_csv(paths[1], index=False)
    paths[2].write_text(markdown(summary))
    return paths
