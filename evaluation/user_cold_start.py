"""User cold start on ML-100K (issue 20): the conditional Mult-VAE and CDAE (``side_information=True``, u.user's
age, gender and occupation) against popularity, popularity within the user's gender, and the unconditional
models, on test users with no history and with 1-5 items.

For each split seed, vae_cf's strong generalization of ML-100K (ratings > 3.5 kept as likes, users with >= 5
likes; 100 validation and 100 test users). Mult-VAE trains with vae_cf's settings (600-200-600, dropout 0.5,
beta cap 0.2, Adam 1e-3, batches of 500) for up to ``--epochs`` epochs, CDAE with aerec's defaults (50 units,
up to 100 epochs); each keeps the epoch with the best NDCG@100 on the validation users (patience 50 for
Mult-VAE, 10 for CDAE), the only choice made, on validation. The validation users' usual fold-in / held-out
parts judge every model, except the row "conditional Mult-VAE, cold validation", whose epoch is chosen on the
validation users with no history (an empty fold-in, every like held out: the setting it is tested in).
Then every test user's likes (fold-in and held-out together) are ranked in two settings:

- **no history**: the model is given an empty row (the conditional ones also the user's features); every
  like is held out;
- **1-5 items**: a seeded draw of k likes (k uniform in 1..5) is the fold-in, the rest held out (users with
  at least k + 1 likes).

"popularity by gender" ranks by the share of the training users of the test user's gender who like each
item: the simplest use of the features, a yardstick for how much they can tell.

Reported: Recall@20 and NDCG@100, mean and sd over the seeds of each seed's mean, and paired Wilcoxon tests
on the per-user values of all seeds pooled (each conditional model against popularity and against the same
model without features).

Run from the repository root (about 25 minutes):

    AEREC_DATA_DIR=/work/shared/data .venv/bin/python evaluation/user_cold_start.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp
import torch
from scipy.stats import wilcoxon

from _common import add_run_args, environment_lines, finish_run, markdown_table, mean_sd, start_run
from aerec.data import load_movielens, strong_generalization
from aerec.data.features import load_user_features
from aerec.data.interactions import Interactions
from aerec.evaluation import conditioning_rows, evaluate_ranking
from aerec.models import CDAE, MultVAE, Popularity

SETTINGS = ("no history", "1-5 items")
MODELS = ("popularity", "popularity by gender", "Mult-VAE", "conditional Mult-VAE",
          "conditional Mult-VAE, cold validation", "CDAE", "conditional CDAE")
#: each conditional model, the model without features it is compared with
UNCONDITIONED = {"conditional Mult-VAE": "Mult-VAE", "conditional Mult-VAE, cold validation": "Mult-VAE",
                 "conditional CDAE": "CDAE"}
METRICS = ("recall@20", "ndcg@100")


class GenderPopularity(Popularity):
    """Items ranked by the share of the training users of the row's gender who like them (global popularity
    breaks ties, and ranks rows whose gender is unknown)."""

    conditioned = True

    def fit(self, train, features):
        super().fit(train)
        self.table_ = features
        genders = features.align(train.user_ids, what="user", warn=False)
        columns = [genders.names.index(name) for name in ("gender=F", "gender=M")]
        likes = (train.matrix > 0).astype(np.float64)
        self.shares_ = []
        for column in columns:
            members = genders.matrix[:, column].toarray().ravel() > 0
            self.shares_.append(np.asarray(likes[members].sum(0)).ravel() / max(members.sum(), 1))
        self.columns_ = columns
        return self

    def user_feature_rows(self, user_ids, n_rows):
        return self.table_.align(user_ids, what="user", warn=False).matrix.toarray()[:, self.columns_]

    def score_tensor(self, user_items, user_features=None):
        base = super().score_tensor(user_items)
        if user_features is None:
            return base
        scores = base.double() * 1e-9 / max(float(self.item_counts_.max()), 1.0)  # popularity breaks ties
        for column, share in enumerate(self.shares_):
            scores += torch.from_numpy(user_features[:, column:column + 1] * share[None, :])
        return scores.float()


def test_parts(split, seed: int) -> dict:
    """``{setting: (fold_in, heldout)}`` Interactions over the test users (their ids kept)."""
    cold = split.without_history()
    likes = cold.test_heldout.matrix
    ids, items = split.test_fold_in.user_ids, split.test_fold_in.item_ids
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
    return {"no history": (cold.test_fold_in, cold.test_heldout),
            "1-5 items": (Interactions(matrix(fold_rows), ids[keep], items),
                          Interactions(matrix(held_rows), ids[keep], items))}


def fit_models(split, features, seed: int, args, log) -> dict:
    validation = (split.validation_fold_in, split.validation_heldout)
    cold = split.without_history()
    models = {"popularity": Popularity().fit(split.train),
              "popularity by gender": GenderPopularity().fit(split.train, features)}
    trained = {
        "Mult-VAE": (MultVAE(epochs=args.epochs, patience=50, seed=seed, device="cpu"), validation),
        "conditional Mult-VAE": (MultVAE(epochs=args.epochs, patience=50, seed=seed, device="cpu",
                                         side_information=True), validation),
        "conditional Mult-VAE, cold validation": (MultVAE(epochs=args.epochs, patience=50, seed=seed, device="cpu",
                                                          side_information=True),
                                                  (cold.validation_fold_in, cold.validation_heldout)),
        "CDAE": (CDAE(seed=seed, device="cpu"), validation),
        "conditional CDAE": (CDAE(seed=seed, device="cpu", side_information=True), validation),
    }
    for name, (model, chosen_on) in trained.items():
        started = time.perf_counter()
        models[name] = model.fit(split.train, validation=chosen_on, user_features=features)
        log(f"seed {seed}: {name} best epoch {model.best_epoch_} ({time.perf_counter() - started:.0f} s)")
    return models


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
    epochs = {m: [] for m in MODELS[2:]}
    for seed in args.seeds:
        split = strong_generalization(data, n_heldout=100, seed=seed)
        models = fit_models(split, features, seed, args, log)
        for name in epochs:
            epochs[name].append(models[name].best_epoch_)
        for setting, (fold_in, heldout) in test_parts(split, seed).items():
            for name in MODELS:
                model = models[name]
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
            for other, key in ((UNCONDITIONED.get(name), "against_unconditioned"), ("popularity", "against_popularity")):
                if name not in UNCONDITIONED or other is None:
                    continue
                for metric in METRICS:
                    mine = np.concatenate(per_user[setting][name][metric])
                    theirs = np.concatenate(per_user[setting][other][metric])
                    block[name][metric][key] = {
                        "difference": float((mine - theirs).mean()),
                        "wilcoxon_p": float(wilcoxon(mine, theirs).pvalue) if np.any(mine != theirs) else 1.0}
    print(finish_run(args.out, args.stem, record, markdown, log))


def markdown(record: dict) -> str:
    def against(values: dict, key: str) -> str:
        found = values.get(key)
        return "–" if found is None else f"{found['difference']:+.4f} (p {found['wilcoxon_p']:.2g})"

    rows = []
    for setting, block in record["results"].items():
        for name, values in block.items():
            cells = [setting, name]
            for metric in METRICS:
                v = values[metric]
                cells += [f"{v['mean']:.4f} ± {v['sd']:.4f}", against(v, "against_popularity"),
                          against(v, "against_unconditioned")]
            rows.append(cells)
    header = ["setting", "model"]
    for metric in ("Recall@20", "NDCG@100"):
        header += [metric, "- popularity", "- without features"]
    return f"""# User cold start on ML-100K: conditional Mult-VAE and CDAE (u.user demographics)

`{record['command']}`

{__doc__.split('Run from the repository root')[0].split(chr(10), 1)[1].strip()}

Seeds {record['seeds']}; best epochs: {record['best_epochs']}. "- popularity" / "- without features": the mean
per-user difference of the row's (conditional) model against popularity / the same model without features, all
seeds pooled, with a paired Wilcoxon test's p.

{markdown_table(header, rows)}

{environment_lines(record['environment'], record['load_average_at_end'])}"""


if __name__ == "__main__":
    main()
