"""``aerec demo``: the main job on the shipped dataset: an autoencoder beside EASE and popularity, with titles.

Mult-VAE (Liang et al. 2018, vae_cf's settings) is trained on the strong-generalization split of the
shipped ml-latest-small, early-stopped on the validation users' NDCG@100 (patience 20) and bounded in
time (``--seconds``, 20 by default); EASE and popularity are fitted beside it. The command prints their
test metrics, one test user's top 10 from Mult-VAE and EASE with movie titles (held-out hits marked),
and writes a plot: Mult-VAE's validation curve and the three models' metrics.
"""

from __future__ import annotations

import time
from pathlib import Path

from aerec.cli.common import CliError, parse_value, progress
from aerec.data import load_item_titles, load_movielens, strong_generalization
from aerec.data.datasets import DEFAULT_DATASET, STRONG_N_HELDOUT
from aerec.evaluation import evaluate_ranking
from aerec.models import make_model

#: The models and their settings: those ``aerec benchmark run evaluation/specs/strong_ml_latest_small.toml`` chose
#: on the validation users of this split (seed 98765; evaluation/results/strong_ml_latest_small_report), rounded:
#: Mult-VAE at up to 200 epochs, early-stopped (patience 20); EASE in float32, in place (equal to float64 to 1e-6).
DEMO_MODELS = (("popularity", {}), ("ease", {"l2": 100.0, "precision": "float32"}),
               ("mult_vae", {"hidden": 600, "latent": 100, "dropout": 0.5, "beta_cap": 0.4, "lr": 0.008, "l2": 1e-4,
                             "epochs": 200, "patience": 20, "seed": 98765}))
METRICS = ("recall@20", "recall@50", "ndcg@100")


def register(commands) -> None:
    parser = commands.add_parser(
        "demo", help="the main job on the shipped dataset: an autoencoder beside EASE and popularity, with titles",
        description=f"Train Mult-VAE (early-stopped on the validation users, at most --seconds) beside EASE and "
                    f"popularity on the strong-generalization split of {DEFAULT_DATASET} (shipped with aerec), print "
                    "their test metrics and a test user's top 10 with movie titles (held-out hits marked), and "
                    "write a plot of Mult-VAE's training curve and the metrics.")
    parser.add_argument("--seed", type=int, default=98765, help="split seed (default 98765)")
    parser.add_argument("--user", help="raw id of the test user to show (default: the first test user with a "
                                       "held-out movie in Mult-VAE's or EASE's top 10)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="at most this many seconds of Mult-VAE training (default 20)")
    parser.add_argument("--plot", default="aerec-demo.png", help="where to write the plot (default aerec-demo.png)")
    parser.set_defaults(run=run)


def run(args) -> int:
    if not args.seconds > 0:
        raise CliError(f"--seconds {args.seconds}; expected a positive number")
    plot = Path(args.plot)
    if plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise CliError(f"--plot {plot}: expected a .png, .svg or .pdf name")
    if not plot.parent.is_dir():
        raise CliError(f"--plot {plot}: folder {plot.parent} does not exist")
    data = load_movielens(DEFAULT_DATASET)
    split = strong_generalization(data, n_heldout=STRONG_N_HELDOUT[DEFAULT_DATASET], seed=args.seed)
    row = test_user_row(split, args.user)  # a bad --user is refused before any training
    progress(f"{DEFAULT_DATASET}: {data}; strong-generalization split: {split.summary()}")
    print(f"{DEFAULT_DATASET} (shipped with aerec), strong generalization, seed {args.seed}: "
          f"{split.train.n_users} train users, {split.train.n_items} items, {split.test_fold_in.n_users} test users\n")
    print(f"{'model':<12} {'Recall@20':>9} {'Recall@50':>9} {'NDCG@100':>9} {'fit s':>6}  trained")
    fitted, metrics = {}, {}
    validation = (split.validation_fold_in, split.validation_heldout)
    for name, params in DEMO_MODELS:
        model = make_model(name, **params)
        if name == "mult_vae":
            model.set_params(max_seconds=args.seconds, progress=not progress_quiet())
        started = time.perf_counter()
        fitted[name] = model.fit(split.train, validation=validation)
        seconds = time.perf_counter() - started
        m = evaluate_ranking(model, split.test_fold_in.matrix, split.test_heldout.matrix, ks=(20, 50, 100)).metrics
        metrics[name] = {metric: m[metric] for metric in METRICS}
        history = getattr(model, "history_", None)
        trained = (f"{len(history.epochs)} epochs, best {model.best_epoch_} ({history.stop_reason})"
                   if history is not None else "closed form" if name == "ease" else "counts")
        print(f"{name:<12} {m['recall@20']:>9.4f} {m['recall@50']:>9.4f} {m['ndcg@100']:>9.4f} {seconds:>6.2f}  "
              f"{trained}")
    print_recommendations(fitted, split, row)
    written = write_plot(plot, fitted["mult_vae"], metrics)
    print(f"\nplot: {written}" if written else "\nplot: not written (pip install matplotlib)")
    return 0


def progress_quiet() -> bool:
    import aerec.cli.common

    return aerec.cli.common.QUIET


def test_user_row(split, user) -> int | None:
    fold_in = split.test_fold_in
    if user is None:
        return None
    try:
        return int(fold_in.user_index([parse_value(user)])[0])
    except ValueError:
        raise CliError(f"--user {user!r} is not a test user of this split (test users such as "
                       f"{fold_in.user_ids[:3].tolist()})") from None


def print_recommendations(fitted: dict, split, row: int | None) -> None:
    """The test user's liked movies, and Mult-VAE's and EASE's top 10 side by side (* = in the held-out 20%)."""
    titles = load_item_titles(DEFAULT_DATASET)
    fold_in = split.test_fold_in
    if row is None:  # the first test user with a hit in either list
        tops = [fitted[name].recommend(fold_in.matrix, n=10)[0] for name in ("mult_vae", "ease")]
        hit = [bool(set(tops[0][r]) & set(split.test_heldout.matrix[r].indices)
                    or set(tops[1][r]) & set(split.test_heldout.matrix[r].indices)) for r in range(fold_in.n_users)]
        row = hit.index(True) if any(hit) else 0
    heldout = set(split.test_heldout.matrix[row].indices)

    def title(item) -> str:
        return str(titles.get(fold_in.item_ids[item], fold_in.item_ids[item]))

    print(f"\nTest user {fold_in.user_ids[row]} liked {fold_in.matrix[row].nnz} movies (their fold-in), e.g.:")
    for item in fold_in.matrix[row].indices[:5]:
        print(f"    {title(item)}")
    lists = {name: fitted[name].recommend(fold_in.matrix[row], n=10)[0][0] for name in ("mult_vae", "ease")}
    hits = {name: sum(item in heldout for item in ids) for name, ids in lists.items()}
    print(f"Top 10 for them (* = in their held-out {len(heldout)} movies; Mult-VAE {hits['mult_vae']} hits, "
          f"EASE {hits['ease']}):")
    print(f"      {'Mult-VAE':<46} EASE")
    for rank, (left, right) in enumerate(zip(lists["mult_vae"], lists["ease"]), start=1):
        marks = ["*" if item in heldout else " " for item in (left, right)]
        print(f"  {rank:>2}. {marks[0]} {title(left)[:42]:<44} {marks[1]} {title(right)}")


def write_plot(path: Path, vae, metrics: dict) -> Path | None:
    """Mult-VAE's validation NDCG@100 and training loss per epoch, and each model's test metrics."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    epochs = vae.history_.epochs
    figure, (curve, bars) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [record["epoch"] for record in epochs]
    curve.plot(steps, [record.get("validation") for record in epochs], color="C0", label="validation NDCG@100")
    if vae.best_epoch_:
        curve.axvline(vae.best_epoch_, color="C0", linestyle=":", label=f"best epoch ({vae.best_epoch_}), kept")
    stopped = {"patience": "early-stopped", "max_seconds": "stopped by --seconds"}.get(vae.history_.stop_reason,
                                                                                      vae.history_.stop_reason)
    curve.set(xlabel="epoch", ylabel="validation NDCG@100", title=f"Mult-VAE training ({stopped})")
    loss = curve.twinx()
    loss.plot(steps, [record.get("loss") for record in epochs], color="C1", alpha=0.6, label="training loss")
    loss.set_ylabel("training loss")
    handles = curve.get_legend_handles_labels()[0] + loss.get_legend_handles_labels()[0]
    curve.legend(handles, [h.get_label() for h in handles], fontsize="small", loc="center right")
    width = 0.8 / len(metrics)
    for offset, (name, values) in enumerate(metrics.items()):
        positions = [i + (offset - (len(metrics) - 1) / 2) * width for i in range(len(METRICS))]
        bars.bar(positions, [values[m] for m in METRICS], width, label=name)
    bars.set_xticks(range(len(METRICS)), METRICS)
    bars.set(title="test users (strong generalization)", ylabel="value")
    bars.legend(fontsize="small")
    figure.suptitle(f"aerec demo on {DEFAULT_DATASET}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path.resolve()
