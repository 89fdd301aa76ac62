"""The benchmark's protocols: what a cell's model trains on, is tuned on and is tested on.

- ``strong``: vae_cf's strong generalization (:func:`aerec.data.strong_generalization`): the
  model trains on the training users; validation and test users are held out whole, each with
  a fold-in part given to the model and a held-out part it ranks.
- ``strong_cold``: the same users with no history (user cold start,
  :meth:`~aerec.data.splits.StrongSplit.without_history`): every interaction of a validation or
  test user is held out and ranked from an empty row (a conditional model reads their features).
- ``strong_short``: the same users with short histories
  (:meth:`~aerec.data.splits.StrongSplit.with_short_history`): each is given 1 to ``longest``
  of their interactions (drawn with the split's seed), the rest ranked.
- ``per_user``: part of every user's interactions held out (:func:`aerec.data.per_user_holdout`,
  at random or the latest by time), a part of the rest for validation; the model trains on the
  rest. Validation ranks the validation part from the training part; test ranks the test part
  from everything else the user has (training and validation parts, excluded from the ranking).
- ``temporal``: the latest ``test_fraction`` of all interactions (a global time cut,
  :func:`aerec.data.temporal_holdout`) as test, the latest ``validation_fraction`` of the rest
  as validation, scored as ``per_user``. The cut does not depend on the seed: the seeds vary
  the models' own randomness only.
- ``ratings``: AutoRec's protocol (:func:`aerec.data.random_holdout`): a random ``test_fraction``
  of the ratings as test, ``validation_fraction`` of the rest for validation; RMSE and MAE of
  the predicted ratings. Per-user values are each test user's RMSE / MAE over their ratings.

The ranking protocols use the data as given: binarize a rating file in the dataset's entry
(``binarize = 3.5``) for implicit-feedback models. The strong protocol has its own threshold
(vae_cf's 3.5), applied to ratings only: data that is already binary (all values 1) is taken
as it is, as ``aerec train`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aerec.benchmark.spec import BenchmarkSpec, SpecError
from aerec.data import cold_start_split, per_user_holdout, random_holdout, strong_generalization, temporal_holdout
from aerec.data.datasets import STRONG_N_HELDOUT
from aerec.evaluation import conditioning_rows, evaluate_ranking

__all__ = ["LOWER_IS_BETTER", "CellData", "make_cell_data", "test_scores", "validation_value"]

#: Metrics for which a smaller value is better (the tuning then minimizes).
LOWER_IS_BETTER = ("rmse", "mae")


@dataclass(frozen=True)
class CellData:
    """One split as a cell uses it."""

    split: object  # the split's own dataclass (its parts make the fingerprint)
    train: object  # Interactions the model is fitted on
    validation: object  # what ``fit(validation=...)`` takes: (fold_in, heldout) Interactions, or ratings
    test: tuple  # (fold_in, heldout) matrices for a ranking protocol; (test ratings,) for "ratings"
    test_user_ids: object = None  # the raw id of each row of the test matrices (None: not known)
    fit_kwargs: dict = field(default_factory=dict)  # side features for the models that take them (fit's keywords)


def make_cell_data(spec: BenchmarkSpec, dataset, data, seed: int) -> CellData:
    """The seeded split of the spec's protocol for one dataset (the same arguments give the same split)."""
    params = dict(spec.protocol.params)
    name = spec.protocol.name
    if name in ("strong", "strong_cold", "strong_short"):
        longest = params.pop("longest", None)
        n_heldout = params.pop("n_heldout") or STRONG_N_HELDOUT.get(dataset.name)
        if n_heldout is None:
            raise SpecError(f"{spec.source} [protocol]: n_heldout is needed for the dataset {dataset.name!r}")
        if np.all(data.matrix.data == 1.0):  # already binary (a click file, or binarize in the dataset's entry)
            params["threshold"] = None
        split = strong_generalization(data, int(n_heldout), seed=int(seed), **params)
        if name == "strong_cold":
            split = split.without_history()
        elif name == "strong_short":
            split = split.with_short_history(int(longest), seed=int(seed))
        return CellData(split, split.train, (split.validation_fold_in, split.validation_heldout),
                        (split.test_fold_in.matrix, split.test_heldout.matrix), split.test_fold_in.user_ids,
                        side_features(dataset))
    features = side_features(dataset)
    if name == "ratings":
        split = random_holdout(data, seed=int(seed), **params)
        return CellData(split, split.train, split.validation, (split.test.matrix,), split.test.user_ids, features)
    if name in ("item_cold", "user_cold"):
        split = cold_start_split(data, by=name.partition("_")[0], seed=int(seed), **params)
        return CellData(split, split.train, split.validation, (split.test.matrix,), split.test.user_ids, features)
    if name == "per_user":
        split = per_user_holdout(data, seed=int(seed), **params)
    else:
        if data.timestamps is None:
            raise SpecError(f"{spec.source} [protocol]: the temporal protocol needs timestamps; the dataset "
                            f"{dataset.name!r} has none")
        split = temporal_holdout(data, **params)
    known = (split.train.matrix + split.validation.matrix).tocsr()
    return CellData(split, split.train, (split.train, split.validation), (known, split.test.matrix),
                    split.test.user_ids, features)


def side_features(dataset) -> dict:
    """The dataset entry's side features (``item_features`` / ``user_features``), read, as ``fit`` takes them."""
    from aerec.data.features import features_from_pandas, load_item_features, load_user_features

    features = {}
    for key, loader in (("item_features", load_item_features), ("user_features", load_user_features)):
        source = getattr(dataset, key, None)
        if source is None:
            continue
        path = Path(source)
        if path.is_file():
            import pandas as pd

            frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, sep=None,
                                                                                     engine="python")
            features[key] = features_from_pandas(frame, id=frame.columns[0])
        else:
            features[key] = loader(source)
    return features


def validation_value(model, cell: CellData, metric: str) -> float:
    """The tuning metric on the validation part."""
    if isinstance(cell.validation, tuple):
        name, _, k = metric.partition("@")
        fold_in, heldout = (part.matrix for part in cell.validation)
        side = conditioning_rows(model, cell.validation[0])  # a conditional model's users' features, by id
        return evaluate_ranking(model, fold_in, heldout, ks=(int(k),), metrics=(name,),
                                user_features=side).metrics[metric]
    return rating_errors(model, cell.validation.matrix, (metric,))[0][metric]


def test_scores(model, cell: CellData, metrics) -> tuple[dict, dict, np.ndarray]:
    """(metrics, per-user values of each metric, the users' rows in the test matrices) on the test part."""
    if len(cell.test) == 1:
        return rating_errors(model, cell.test[0], metrics)
    ks = sorted({int(m.partition("@")[2]) for m in metrics})
    names = sorted({m.partition("@")[0] for m in metrics})
    side = conditioning_rows(model, cell.test[0], cell.test_user_ids)
    result = evaluate_ranking(model, *cell.test, ks=ks, metrics=names, user_features=side)
    return ({m: result.metrics[m] for m in metrics}, {m: np.asarray(result.per_user[m]) for m in metrics},
            np.asarray(result.users))


def rating_errors(model, ratings, metrics) -> tuple[dict, dict, np.ndarray]:
    """RMSE / MAE over all of ``ratings`` (a users x items matrix), and per user over each one's ratings."""
    coo = ratings.tocoo()
    error = np.asarray(model.predict(coo.row, coo.col), dtype=np.float64) - coo.data
    users, inverse = np.unique(coo.row, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(users))
    overall = {"rmse": float(np.sqrt(np.mean(error ** 2))), "mae": float(np.mean(np.abs(error)))}
    per_user = {"rmse": np.sqrt(np.bincount(inverse, error ** 2, len(users)) / counts),
                "mae": np.bincount(inverse, np.abs(error), len(users)) / counts}
    return {m: overall[m] for m in metrics}, {m: per_user[m] for m in metrics}, users
