"""The report's plots, one set per dataset (matplotlib, ``pip install matplotlib``; without it, no plots).

- ``metrics_<dataset>.png``: each reported metric per model, the mean over seeds with its
  95% t interval (and each seed's value as a dot);
- ``validation_curves_<dataset>.png``: the chosen trial's validation curve of every model trained
  by epochs, one line per seed: the training loop's own metric per epoch (NDCG@100, or RMSE for
  rating models), by which its best epoch is kept, whatever the tuning metric;
- ``tuning_history_<dataset>.png``: the best validation value so far against the trial, per
  model and seed (pruned and failed trials carry the best before them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aerec.benchmark.protocols import LOWER_IS_BETTER

__all__ = ["write_plots"]


def write_plots(summary: dict, cells: dict, out_dir: str | Path) -> list[Path]:
    """Write the three figures of every dataset under ``out_dir``; return their paths."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    seeds = summary["seeds"]
    for dataset, block in summary["datasets"].items():
        labels = list(block["models"])
        paths.append(_metrics(plt, out / f"metrics_{dataset}.png", dataset, block, labels, summary["metrics"], cells,
                              seeds))
        curves = {label: [cells[(dataset, int(seed), label)].get("validation_curve") or [] for seed in seeds]
                  for label in labels}
        curves = {label: runs for label, runs in curves.items() if any(len(run) > 1 for run in runs)}
        if curves:
            loop_metric = "RMSE" if summary["tuning"]["metric"] in LOWER_IS_BETTER else "NDCG@100"
            paths.append(_lines(plt, out / f"validation_curves_{dataset}.png", curves, seeds,
                                f"{dataset}: the chosen trial's validation {loop_metric} per epoch (the training "
                                "loop's early-stopping metric)", "epoch", f"validation {loop_metric}", start=1))
        lower = summary["tuning"]["metric"] in LOWER_IS_BETTER
        history = {label: [_best_so_far(cells[(dataset, int(seed), label)].get("tuning_history") or [], lower)
                           for seed in seeds] for label in labels}
        history = {label: runs for label, runs in history.items() if any(len(run) > 1 for run in runs)}
        if history:
            paths.append(_lines(plt, out / f"tuning_history_{dataset}.png", history, seeds,
                                f"{dataset}: best validation {summary['tuning']['metric']} so far", "trial",
                                summary["tuning"]["metric"], start=1))
    return paths


def _best_so_far(values: list, lower_is_better: bool = False) -> list:
    best, out = None, []
    for value in values:
        if value is not None and (best is None or (value < best if lower_is_better else value > best)):
            best = value
        out.append(np.nan if best is None else best)
    return out


def _metrics(plt, path: Path, dataset: str, block: dict, labels: list, metrics: list, cells: dict, seeds) -> Path:
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 1, 0.45 * len(labels) + 1.6),
                                squeeze=False, sharey=True)
    positions = np.arange(len(labels))
    for ax, metric in zip(axes[0], metrics):
        stats = [block["models"][label]["metrics"][metric] for label in labels]
        means = np.array([s["mean"] for s in stats])
        low = np.array([s["ci_low"] if s["ci_low"] is not None else np.nan for s in stats], dtype=float)
        high = np.array([s["ci_high"] if s["ci_high"] is not None else np.nan for s in stats], dtype=float)
        error = np.vstack([np.nan_to_num(means - low), np.nan_to_num(high - means)])
        ax.errorbar(means, positions, xerr=error, fmt="o", color="C0", capsize=3, label="mean, 95% interval")
        for i, label in enumerate(labels):
            values = [cells[(dataset, int(seed), label)]["test"][metric] for seed in seeds]
            ax.plot(values, np.full(len(values), i + 0.18), ".", color="C1", alpha=0.7,
                    label="seeds" if i == 0 else None)
        ax.set_title(metric)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(positions, labels)
    axes[0][0].invert_yaxis()
    handles, names = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, names, loc="lower center", ncol=2, fontsize="small", frameon=False)
    figure.suptitle(f"{dataset}: test metrics over {len(seeds)} seed(s)")
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _lines(plt, path: Path, series: dict, seeds, title: str, xlabel: str, ylabel: str, start: int) -> Path:
    columns = min(3, len(series))
    rows = -(-len(series) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(max(4 * columns, 7), 2.8 * rows + 0.4), squeeze=False)
    for ax, (label, runs) in zip(axes.flat, series.items()):
        for seed, run in zip(seeds, runs):
            values = np.array([np.nan if v is None else v for v in run], dtype=float)
            steps = np.arange(start, start + len(values))
            kept = ~np.isnan(values)  # epochs without validation (validate_every > 1) are skipped, not gaps
            ax.plot(steps[kept], values[kept], label=f"seed {seed}", linewidth=1.2)
        ax.set_title(label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize="x-small")
    figure.suptitle(title, fontsize="medium")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
