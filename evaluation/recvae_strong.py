"""RecVAE under strong generalization (the vae_cf protocol), beside a faithful port of the authors' code.

For every dataset and split seed: split the users into train / validation /
test (``aerec.data.strong_generalization``, exactly as mult_vae_strong.py),
then train, seeded with the split seed and for the same number of epochs,

- aerec's ``RecVAE`` (the reference's README defaults: gamma 0.005, hidden 600,
  latent 200, batch 500, Adam lr 5e-4, 3 encoder + 1 decoder passes per epoch),
- the port of ilya-shenbin/RecVAE in ``evaluation/recvae_reference.py``
  (``fit_reference``), with the same settings,

each keeping the epoch with the best NDCG@100 on the validation users
(fold-in -> held-out). The test users are scored once, for both by
``aerec.evaluation.evaluate_ranking`` (the port's scores from ``score_reference``,
fold-in items masked by the evaluator for both). Reports Recall@20, Recall@50
and NDCG@100 as mean ± sample sd over the seeds, the difference of the means in
units of the port's sd (target: aerec's RecVAE within one sd of the port), and,
for context, the other models already measured on the same splits and seeds
(``evaluation/results/{baselines,mult_vae,cdae}_strong.json``, read, not re-run).

Run from the repository root:

    AEREC_DATA_DIR=/work/shared/data .venv/bin/python evaluation/recvae_strong.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from _common import (
    RESULTS_DIR, Progress, add_output_args, command_line, environment, environment_lines, format_mean_sd,
    markdown_table, mean_sd, check_split, strong_split_table, finish_run,
)
from recvae_reference import fit_reference, score_reference, test_scores
from aerec._torch import resolve_device
from aerec.data import StrongSplit, load_movielens, strong_generalization
from aerec.data.datasets import STRONG_N_HELDOUT
from aerec.data.readers import movielens_ratings_path
from aerec.evaluation import evaluate_ranking
from aerec.models.recvae import RecVAE

# ml-20m is the paper's protocol (10,000 validation and 10,000 test users); its files are not on our machines,
# so it runs only when asked for: --datasets ml-20m with ml-20m/ratings.csv under $AEREC_DATA_DIR.
N_HELDOUT = {name: STRONG_N_HELDOUT[name] for name in ("ml-100k", "ml-latest-small", "ml-20m")}
DEFAULT_DATASETS = ("ml-100k", "ml-latest-small")
SEEDS = (98765, 1, 2, 3, 4)
MODELS = ("aerec", "reference")
LABELS = {"aerec": "aerec RecVAE", "reference": "RecVAE port (reference)"}
TEST_METRICS = ("recall@20", "recall@50", "ndcg@100")
METRIC_LABELS = {"recall@20": "R@20", "recall@50": "R@50", "ndcg@100": "N@100"}

# Other models on the same protocol, splits and seeds: (results file, label, path to the summary in its JSON).
CONTEXT = (
    ("mult_vae_strong.json", "Mult-VAE", ("summary", "mult_vae")),
    ("mult_vae_strong.json", "Mult-DAE", ("summary", "mult_dae")),
    ("cdae_strong.json", "CDAE", ("summary",)),
    ("baselines_strong.json", "EASE", ("summary", "ease")),
    ("baselines_strong.json", "ALS", ("summary", "als")),
    ("baselines_strong.json", "popularity", ("summary", "popularity")),
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Data: known datasets are read from $AEREC_DATA_DIR (ml-latest-small also ships with aerec).")
    parser.add_argument("--datasets", nargs="+", choices=sorted(N_HELDOUT), default=list(DEFAULT_DATASETS),
                        help="default: %(default)s; ml-20m runs the paper's protocol (paper, RecVAE on ML-20M: "
                             "Recall@20 0.414, Recall@50 0.553, NDCG@100 0.442)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS), help="split seeds (default: %(default)s)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="default: both")
    parser.add_argument("--epochs", type=int, default=50, help="training epochs of both (default: %(default)s, the README's)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: %(default)s; on a shared 2-core machine a second thread "
                             "that has to wait for a busy core makes every step several times slower)")
    parser.add_argument("--stem", default="recvae_strong",
                        help="name of the result files (default: %(default)s; e.g. recvae_strong_200 for a longer run)")
    parser.add_argument("--device", default="auto", help="model device of both (default: %(default)s, CUDA when present)")
    add_output_args(parser)
    return parser.parse_args(argv)


# -- one split ----------------------------------------------------------------
class PortScorer:
    """The port's trained network behind the ``score_tensor`` interface ``evaluate_ranking`` reads.

    ``score_reference`` returns the port's raw logits (no masking); the evaluator masks the fold-in items
    exactly as it does for aerec's model.
    """

    def __init__(self, model):
        self.model = model

    def score_tensor(self, user_items):
        return score_reference(self.model, user_items.astype(np.float32))


def run_aerec(split: StrongSplit, seed: int, epochs: int, device: str) -> dict:
    model = RecVAE(seed=seed, device=device, epochs=epochs)
    start = time.perf_counter()
    model.fit(split.train, validation=(split.validation_fold_in, split.validation_heldout))
    fit_seconds = time.perf_counter() - start
    history = model.history_
    test = evaluate_ranking(model, split.test_fold_in.matrix, split.test_heldout.matrix, ks=(20, 50, 100),
                            metrics=("recall", "ndcg"))
    epoch_seconds = history.column("seconds")
    return {
        "params": model.get_params(),
        "device": str(model.device_),
        "best_epoch": history.best_epoch,
        "epochs_run": len(history.epochs),
        "validation_ndcg@100": history.best_validation,
        "validation_curve": history.column("validation"),
        "fit_seconds": fit_seconds,
        "epoch_seconds": epoch_seconds,
        "train_seconds_per_epoch": float(np.mean(epoch_seconds)),
        "n_updates": model.n_updates_,
        "test": test.to_dict(),
    }


def run_reference(split: StrongSplit, seed: int, epochs: int, device: str) -> dict:
    start = time.perf_counter()
    fit = fit_reference(split.train.matrix, split.validation_fold_in.matrix, split.validation_heldout.matrix,
                        seed=seed, n_epochs=epochs, device=device)
    fit_seconds = time.perf_counter() - start
    model = fit["model"]
    test = evaluate_ranking(PortScorer(model), split.test_fold_in.matrix, split.test_heldout.matrix, ks=(20, 50, 100),
                            metrics=("recall", "ndcg"))
    return {
        "device": str(device),
        "best_epoch": fit["best_epoch"],
        "epochs_run": len(fit["epoch_seconds"]),
        "validation_ndcg@100": fit["best_validation"],
        "validation_curve": fit["validation_curve"],
        "fit_seconds": fit_seconds,
        "epoch_seconds": fit["epoch_seconds"],
        "train_seconds_per_epoch": float(np.mean(fit["epoch_seconds"])),
        "test": test.to_dict(),
        # run.py's own final evaluation of the same weights (its ndcg / recall): a cross-check of the evaluator
        "test_port_metrics": test_scores(model, split.test_fold_in.matrix, split.test_heldout.matrix),
    }


def run_seed(dataset: str, data, seed: int, args, device: str, log: Progress) -> dict:
    split = strong_generalization(data, N_HELDOUT[dataset], seed=seed)
    summary, checks = split.summary(), check_split(split)
    log(f"{dataset} seed {seed}: {summary}")
    runs = {}
    for name in args.models:
        runner = run_aerec if name == "aerec" else run_reference
        run = runs[name] = runner(split, seed, args.epochs, device)
        metrics = run["test"]["metrics"]
        log(f"  {LABELS[name]}: " + ", ".join(f"{m} {metrics[m]:.4f}" for m in TEST_METRICS)
            + f"; best epoch {run['best_epoch']}/{run['epochs_run']} (validation NDCG@100 "
            f"{run['validation_ndcg@100']:.4f}), fit {run['fit_seconds']:.1f} s, "
            f"{run['train_seconds_per_epoch']:.3f} s/epoch training")
        if "test_port_metrics" in run:
            own = run["test_port_metrics"]
            log("    port's own evaluation: " + ", ".join(f"{m} {own[m]:.4f}" for m in TEST_METRICS))
    return {"seed": seed, "split_summary": summary, "split_checks": checks, "models": runs}


# -- context: the other models' results on the same splits ------------------------
def load_context(out_dir, datasets) -> dict:
    """``{dataset: {label: {metric: {"mean", "sd", "n"}, "source", "seeds", "split_summaries"}}}`` from the results
    files of :data:`CONTEXT` (in ``evaluation/results``, else in ``out_dir``); whether their splits are this run's
    is checked in ``main`` (:func:`context_matches`)."""
    context = {}
    cache = {}
    for file, label, path in CONTEXT:
        for directory in dict.fromkeys([RESULTS_DIR, out_dir]):
            candidate = directory / file
            if candidate.exists():
                break
        else:
            continue
        if candidate not in cache:
            cache[candidate] = json.loads(candidate.read_text())
        record = cache[candidate]
        for dataset in datasets:
            block = record.get("datasets", {}).get(dataset)
            if block is None:
                continue
            stats = block
            for key in path:
                stats = stats.get(key, {}) if isinstance(stats, dict) else {}
            if not all(metric in stats for metric in TEST_METRICS):
                continue
            context.setdefault(dataset, {})[label] = {
                **{metric: stats[metric] for metric in TEST_METRICS},
                "source": f"evaluation/results/{file}",
                "seeds": record.get("seeds"),
                "split_summaries": {run["seed"]: run.get("split_summary") for run in block.get("per_seed", [])},
            }
    return context


def context_matches(context_entry: dict, per_seed: list[dict]) -> dict:
    """``same_seeds``: the file's seeds are this run's; ``same_splits``: for every seed both have, the same split
    summary (users, items and interactions of every part)."""
    summaries = context_entry["split_summaries"]
    shared = [run for run in per_seed if run["seed"] in summaries]
    return {"same_seeds": sorted(summaries) == sorted(run["seed"] for run in per_seed),
            "same_splits": all(summaries[run["seed"]] == run["split_summary"] for run in shared)}


# -- aggregation and report -----------------------------------------------------
def aggregate(per_seed: list[dict], models) -> dict:
    out = {}
    for name in models:
        runs = [run["models"][name] for run in per_seed]
        out[name] = {
            **{metric: mean_sd([run["test"]["metrics"][metric] for run in runs]) for metric in TEST_METRICS},
            **{key: mean_sd([run[key] for run in runs]) for key in
               ("train_seconds_per_epoch", "best_epoch", "fit_seconds", "validation_ndcg@100")},
        }
    if "aerec" in out and "reference" in out:
        out["difference"] = {}
        for metric in TEST_METRICS:
            port, ours = out["reference"][metric], out["aerec"][metric]
            delta = ours["mean"] - port["mean"]
            in_sd = delta / port["sd"] if port["sd"] > 0 else float("nan")
            out["difference"][metric] = {"aerec_minus_port": delta, "in_port_sd": in_sd,
                                         "within_one_port_sd": bool(abs(delta) <= port["sd"]),
                                         "not_below_by_more_than_one_port_sd": bool(delta >= -port["sd"])}
        out["difference"]["train_seconds_per_epoch_ratio_port_over_aerec"] = (
            out["reference"]["train_seconds_per_epoch"]["mean"] / out["aerec"]["train_seconds_per_epoch"]["mean"])
    return out


def comparison_table(dataset: str, block: dict) -> str:
    summary = block["summary"]
    headers = ["model", "R@20", "R@50", "N@100", "best epochs", "train s/epoch", "fit s", "source"]
    rows = []
    for name in MODELS:
        if name not in summary:
            continue
        stats = summary[name]
        best = ", ".join(str(run["models"][name]["best_epoch"]) for run in block["per_seed"])
        rows.append([f"**{LABELS[name]}**", *(format_mean_sd(stats[m]) for m in TEST_METRICS), best,
                     f"{stats['train_seconds_per_epoch']['mean']:.3f}", f"{stats['fit_seconds']['mean']:.1f}",
                     "this run"])
    if "difference" in summary:
        diff = summary["difference"]
        rows.append(["aerec − port (in port sd)",
                     *(f"{diff[m]['aerec_minus_port']:+.4f} ({diff[m]['in_port_sd']:+.2f} sd)" for m in TEST_METRICS),
                     "", f"port / aerec {diff['train_seconds_per_epoch_ratio_port_over_aerec']:.2f}x", "", ""])
        rows.append(["within one port sd", *("yes" if diff[m]["within_one_port_sd"] else "no" for m in TEST_METRICS),
                     "", "", "", ""])
    for label, stats in block.get("context", {}).items():
        note = ("" if stats["same_seeds"] else f" (seeds {', '.join(str(s) for s in stats['seeds'])})") + (
            "" if stats["same_splits"] else " (other splits!)")
        rows.append([label, *(format_mean_sd(stats[m]) for m in TEST_METRICS), "", "", "", f"`{stats['source']}`{note}"])
    return markdown_table(headers, rows)


def per_seed_table(results: dict) -> str:
    headers = ["dataset", "model", "seed", "best epoch", "val NDCG@100", "R@20", "R@50", "N@100",
               "train s/epoch", "fit s"]
    rows = []
    for dataset, block in results["datasets"].items():
        for run in block["per_seed"]:
            for name in MODELS:
                if name not in run["models"]:
                    continue
                model = run["models"][name]
                metrics = model["test"]["metrics"]
                rows.append([dataset, LABELS[name], run["seed"], f"{model['best_epoch']}/{model['epochs_run']}",
                             f"{model['validation_ndcg@100']:.4f}", *(f"{metrics[m]:.4f}" for m in TEST_METRICS),
                             f"{model['train_seconds_per_epoch']:.3f}", f"{model['fit_seconds']:.1f}"])
    return markdown_table(headers, rows)


def evaluator_check_table(results: dict) -> str:
    headers = ["dataset", "seed", *(f"{METRIC_LABELS[m]} evaluate_ranking" for m in TEST_METRICS),
               *(f"{METRIC_LABELS[m]} port's own" for m in TEST_METRICS)]
    rows = []
    for dataset, block in results["datasets"].items():
        for run in block["per_seed"]:
            model = run["models"].get("reference")
            if model is None:
                continue
            rows.append([dataset, run["seed"], *(f"{model['test']['metrics'][m]:.4f}" for m in TEST_METRICS),
                         *(f"{model['test_port_metrics'][m]:.4f}" for m in TEST_METRICS)])
    return markdown_table(headers, rows) if rows else "(the port was not run)\n"


def markdown(results: dict) -> str:
    seeds = ", ".join(str(s) for s in results["seeds"])
    tables = "".join(f"## {dataset}\n\n" + comparison_table(dataset, block) + "\n"
                     for dataset, block in results["datasets"].items())
    return (
        "# RecVAE under strong generalization (vae_cf protocol), aerec against a port of the authors' code\n\n"
        f"Command (from the repository root, total {results['runtime_seconds']:.0f} s):\n\n"
        f"```\n{results['command']}\n```\n\n"
        "Protocol: `aerec.data.strong_generalization` (ratings > 3.5 kept as 1, users with >= 5 of them,\n"
        "ml-100k: 100 validation + 100 test users, ml-latest-small: 60 + 60; 20% of each held-out user's items held\n"
        "out, the rest is fold-in), the same splits as `mult_vae_strong.py` and the retired `cdae_strong.py` and\n"
        "`baselines_strong.py` (their results files). Both RecVAEs are trained on the training users only with the\n"
        f"reference README's settings ({results['epochs']} epochs, gamma 0.005, hidden 600, latent 200, batch 500, Adam lr 5e-4, 3 encoder +\n"
        "1 decoder passes per epoch), seeded with the split seed (aerec: its own generators; the port: `random`,\n"
        "numpy and torch's global generator, as run.py), keeping the epoch with the best NDCG@100 on the validation\n"
        "users; the test users are scored once, both by `aerec.evaluation.evaluate_ranking` (fold-in items masked).\n"
        f"Recall@k is divided by min(k, R) (Liang et al. 2018). Values are mean ± sample sd (ddof=1) over the\n"
        f"{len(results['seeds'])} split seed(s) {seeds}. \"aerec − port\" is the difference of the means, in brackets in\n"
        "units of the port's sd; the target is |difference| <= one port sd. \"train s/epoch\" is the training time of\n"
        "an epoch (both phases, without the validation): aerec's history column `seconds`, the port's `epoch_seconds`;\n"
        "\"fit s\" includes the per-epoch validation. The rows after \"within one port sd\" are other models on the same\n"
        "splits and seeds, read from the results files named (each with its own settings and tuning; not re-run).\n"
        f"torch ran with {results['torch_threads']} CPU thread(s) on device {results['device']}.\n\n"
        + tables
        + "## Per seed\n\n" + per_seed_table(results)
        + "\n## The port's test scores: aerec's evaluator against run.py's own metrics\n\n"
        "The same weights of the port, scored by `evaluate_ranking` and by the port's `test_scores` (vae_cf's\n"
        "`ndcg` / `recall`); they agree up to ties in the top 100.\n\n"
        + evaluator_check_table(results)
        + "\n## Splits\n\n" + strong_split_table(results)
        + "\n" + environment_lines(results["environment"], results["load_average_at_end"])
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.epochs < 1:
        raise SystemExit(f"--epochs={args.epochs}; expected an integer >= 1")
    if args.threads < 1:
        raise SystemExit(f"--threads={args.threads}; expected an integer >= 1")
    torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    log = Progress()
    results = {"command": command_line(), "environment": environment(), "seeds": args.seeds, "epochs": args.epochs,
               "models": args.models, "torch_threads": torch.get_num_threads(), "device": device, "datasets": {}}
    context = load_context(args.out, args.datasets)
    for dataset in args.datasets:
        data = load_movielens(dataset)
        log(f"{dataset}: {data} from {movielens_ratings_path(dataset)}")
        per_seed = [run_seed(dataset, data, seed, args, device, log) for seed in args.seeds]
        block = {"ratings_file": movielens_ratings_path(dataset), "per_seed": per_seed,
                 "summary": aggregate(per_seed, args.models), "context": {}}
        for label, entry in context.get(dataset, {}).items():
            block["context"][label] = {**{m: entry[m] for m in TEST_METRICS}, "source": entry["source"],
                                       "seeds": entry["seeds"], **context_matches(entry, per_seed)}
        results["datasets"][dataset] = block
    text = finish_run(args.out, args.stem, results, markdown, log)
    sys.stdout.write(text.split("## Per seed")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
