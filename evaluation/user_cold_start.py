"""User cold start on ML-100K (issue 20): the conditional Mult-VAE (``side_information=True``, u.user's age,
gender and occupation) against popularity and the unconditional Mult-VAE, on test users with no history and
with 1-5 items.

For each split seed, vae_cf's strong generalization of ML-100K (ratings > 3.5 kept as likes, users with >= 5
likes; 100 validation and 100 test users). Both Mult-VAEs train with vae_cf's settings (600-200-600, dropout
0.5, beta cap 0.2, Adam 1e-3, batches of 500) for up to ``--epochs`` epochs, keeping the epoch with the best
NDCG@100 on the validation users (their usual fold-in / held-out parts; patience 50): the only choice made, on
validation. Then every test user's likes (fold-in and held-out together) are ranked in two settings:

- **no history**: the model is given an empty row (the conditional one also the user's features); every like
  is held out;
- **1-5 items**: a seeded draw of k likes (k uniform in 1..5) is the fold-in, the rest held out (users with
  at least k + 1 likes).

Reported: Recall@20 and NDCG@100, mean and sd over the seeds of each seed's mean, and a paired Wilcoxon test
on the per-user values of all seeds pooled (conditional against each other model).

Run from the repository root (about 10 minutes):

    AEREC_DATA_DIR=/work/shared/data .venv/bin/python evaluation/user_cold_start.py
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.sparse as sp
from scipy.stats import wilcoxon

from _common import add_run_args, environment_lines, finish_run, markdown_table, mean_sd, start_run
from aerec.data import load_movielens, strong_generalization
from aerec.data.features import load_user_features
from aerec.data.interactions import Interactions
from aerec.evaluation import conditioning_rows, evaluate_ranking
from aerec.models import MultVAE, Popularity

SETTINGS = ("no history", "1-5 items")
MODELS = ("popularity", "Mult-VAE", "conditional Mult-VAE")
METRICS = ("recall@20", "ndcg@100")


def test_parts(split, seed: int) -> dict:
    """``{setting: (fold_in, heldout)}`` Interactions over the test users (their ids kept)."""
    likes = (split.test_fold_in.matrix + split.test_heldout.matrix).tocsr()
    ids, items = split.test_fold_in.user_ids, split.test_fold_in.item_ids
    empty = sp.csr_matrix(likes.shape, dtype=np.float32)
    rng = np.random.default_rng(seed)
    fold_rows, held_rows, keep = [], [], []
    for row in range(likes.shape[0]):
        liked = likes[row].indices
        k = int(rng.integers(1, 6))
        if len(liked) < k + 1:
            continue
        chosen = np.zeros(len(liked), dtype=bool)
        chosen[rng.choice(len(liked), k, replace=False)] = True
        fold_rows.append(liked[chosen])
        held_rows.append(liked[~chosen])
        keep.append(row)

    def matrix(rows):
        indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
        return sp.csr_matrix((np.ones(indptr[-1], np.float32), np.concatenate(rows), indptr),
                             shape=(len(rows), likes.shape[1]))

    keep = np.asarray(keep)
    return {"no history": (Interactions(empty, ids, items), Interactions(likes, ids, items)),
            "1-5 items": (Interactions(matrix(fold_rows), ids[keep], items),
                          Interactions(matrix(held_rows), ids[keep], items))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_args(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[98765, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--stem", default="user_cold_start_ml100k")
    args = parser.parse_args()
    log, record = start_run(args.threads)
    data = load_movielens("ml-100k")
    features = load_user_features("ml-100k")
    per_seed = {s: {m: {k: [] for k in METRICS} for m in MODELS} for s in SETTINGS}
    per_user = {s: {m: {k: [] for k in METRICS} for m in MODELS} for s in SETTINGS}
    epochs = {m: [] for m in MODELS[1:]}
    for seed in args.seeds:
        split = strong_generalization(data, n_heldout=100, seed=seed)
        validation = (split.validation_fold_in, split.validation_heldout)
        models = {"popularity": Popularity().fit(split.train)}
        for name, side in (("Mult-VAE", False), ("conditional Mult-VAE", True)):
            model = MultVAE(epochs=args.epochs, patience=50, seed=seed, device="cpu", side_information=side)
            models[name] = model.fit(split.train, validation=validation, user_features=features)
            epochs[name].append(model.best_epoch_)
            log(f"seed {seed}: {name} best epoch {model.best_epoch_}")
        for setting, (fold_in, heldout) in test_parts(split, seed).items():
            for name, model in models.items():
                result = evaluate_ranking(model, fold_in.matrix, heldout.matrix, ks=(20, 100),
                                          user_features=conditioning_rows(model, fold_in))
                for metric in METRICS:
                    per_seed[setting][name][metric].append(result.metrics[metric])
                    per_user[setting][name][metric].append(np.asarray(result.per_user[metric]))
            log(f"seed {seed} {setting}: " + ", ".join(
                f"{m} {per_seed[setting][m]['ndcg@100'][-1]:.4f}" for m in MODELS))
    record.update(seeds=args.seeds, epochs=args.epochs, best_epochs=epochs, results={})
    for setting in SETTINGS:
        block = record["results"][setting] = {}
        for name in MODELS:
            block[name] = {metric: {**mean_sd(per_seed[setting][name][metric]),
                                    "per_seed": per_seed[setting][name][metric]} for metric in METRICS}
            if name != "conditional Mult-VAE":
                for metric in METRICS:
                    mine = np.concatenate(per_user[setting]["conditional Mult-VAE"][metric])
                    other = np.concatenate(per_user[setting][name][metric])
                    block[name][metric]["conditional_minus_this"] = float((mine - other).mean())
                    block[name][metric]["wilcoxon_p"] = float(wilcoxon(mine, other).pvalue) if np.any(
                        mine != other) else 1.0
    print(finish_run(args.out, args.stem, record, markdown, log))


def markdown(record: dict) -> str:
    rows = []
    for setting, block in record["results"].items():
        for name, values in block.items():
            cells = [setting, name]
            for metric in METRICS:
                v = values[metric]
                cells.append(f"{v['mean']:.4f} ± {v['sd']:.4f}")
                cells.append("–" if "wilcoxon_p" not in v else
                             f"{v['conditional_minus_this']:+.4f} (p {v['wilcoxon_p']:.2g})")
            rows.append(cells)
    return f"""# User cold start on ML-100K: conditional Mult-VAE (u.user demographics)

`{record['command']}`

Strong generalization of ML-100K (100 validation, 100 test users) for each of the seeds {record['seeds']};
Mult-VAE with vae_cf's settings, up to {record['epochs']} epochs, the best validation NDCG@100 epoch kept (best
epochs: {record['best_epochs']}). Test users' likes ranked with no history (all held out) and with 1-5 of them
given. Mean ± sd over the seeds; "conditional - this": the mean per-user difference of the conditional model
against the row's model, all seeds pooled, with a paired Wilcoxon test.

{markdown_table(["setting", "model", "Recall@20", "conditional - this", "NDCG@100", "conditional - this"], rows)}

{environment_lines(record['environment'], record['load_average_at_end'])}"""


if __name__ == "__main__":
    main()
