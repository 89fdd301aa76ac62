"""The model contract every aerec recommender shares.

Modelled on implicit's ``RecommenderBase`` and scikit-learn's estimator habits:

- ``__init__`` stores keyword hyper-parameters and does nothing else;
- ``fit(train, validation=None)`` learns state (attributes ending in ``_``) and returns ``self``;
- the model does not keep the training matrix: ``score(user_items)`` and
  ``recommend(user_items, ...)`` take the users' rows, which is how a model
  folds in users it never saw;
- ``recommend`` returns ``(ids, scores)`` as 2-D arrays, one row per input row.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from aerec.data.catalogue import align_to_catalogue, as_interactions, catalogue_index, recommendations_frame
from aerec.data.interactions import Interactions
from aerec.params import validate_params
from aerec.ranking import batch_rows_for_budget, default_memory_budget, stream_top_n, top_n


class NotFittedError(ValueError):
    """A model was used before ``fit``."""


class Recommender:
    """Base class: subclasses implement ``_fit(matrix, validation)`` and ``score_tensor``."""

    #: ``{parameter: [allowed entries]}`` (see :mod:`aerec.params`); merged along the class hierarchy.
    parameter_constraints: dict = {}
    #: ``{parameter: FloatRange | IntRange | Choice}`` a tuner searches by default (see :mod:`aerec.search_space`):
    #: the ranges the model's paper or reference code searched; merged along the class hierarchy (None removes).
    search_space: dict = {}
    #: ``{fitted attribute: numpy dtype name}`` for numeric fitted arrays that are not float32 (a model file with
    #: another dtype is refused at load); ``item_ids_`` may hold any ids.
    fitted_dtypes: dict = {}

    def fit(self, train, validation=None, checkpoint=None, callbacks=(), warm_start: bool = False, *,
            user: str = "user", item: str = "item", rating: str | bool | None = None) -> "Recommender":
        """Learn from ``train`` (users x items :class:`Interactions`, sparse matrix or pandas frame); returns ``self``.

        A frame has one row per interaction, with raw ids in the columns named by ``user`` and
        ``item``; ``rating`` names the values' column (by default ``"rating"`` where the frame has
        one, else every entry is 1.0; ``False``: every entry 1.0). Implicit models take the values
        as weights: for vae_cf's protocol keep the likes and pass ``rating=False``. The raw item
        ids are kept as ``item_ids_``.

        ``validation`` is an optional pair ``(fold_in, heldout)`` (or a
        :class:`~aerec.data.HoldoutSplit`-like object; two frames with raw ids are lined up with
        ``train``'s items) that models with epochs use for early stopping; the baselines ignore it.

        ``checkpoint`` (a directory, or a :class:`~aerec.training.Checkpointing`) makes models
        trained by epochs commit their whole training state there and, when it already holds
        a checkpoint of this same run (model, hyper-parameters, data shape), continue from it:
        a directory alone means every epoch, with resume. Models fitted in one step ignore it.

        ``callbacks`` are called as ``callback(record, history)`` after every epoch of a model
        trained by epochs (a true return value stops training); ``warm_start=True`` continues
        such a model's training from its current weights, optimizer state and random
        generators for ``epochs`` more epochs. Models fitted in one step ignore both.
        """
        train, validation = self.fit_inputs(train, validation, user, item, rating)
        self._checkpoint, self._callbacks, self._warm_start = checkpoint, tuple(callbacks), bool(warm_start)
        self.check_params()
        matrix = self.as_training_matrix(train)
        self.n_items_ = matrix.shape[1]
        self.item_ids_ = train.item_ids if isinstance(train, Interactions) else np.arange(matrix.shape[1])
        self._fit(matrix, validation)
        return self

    @staticmethod
    def fit_inputs(train, validation, user: str = "user", item: str = "item", rating: str | bool | None = None):
        """``(train, validation)`` with pandas frames made :class:`Interactions` over ``train``'s ids.

        A pair of frames ``(fold_in, heldout)`` is lined up with ``train``'s items (rows: the users
        of ``fold_in``, then any other user of ``heldout``); one frame of held-out ratings (the form
        rating models validate on) with ``train``'s users and items.
        """
        train = as_interactions(train, user, item, rating, "train")
        frames = validation if isinstance(validation, (tuple, list)) else (validation,)
        if not any(isinstance(part, pd.DataFrame) for part in frames):
            return train, validation
        if not isinstance(train, Interactions):
            raise TypeError("validation frames need raw ids to be lined up with: pass train as a frame or Interactions")
        if not all(isinstance(part, pd.DataFrame) for part in frames):
            raise TypeError(f"validation mixes frames and {[type(part).__name__ for part in frames]}; expected "
                            "frames only, or no frame")
        names = ("validation fold_in", "validation heldout") if len(frames) == 2 else ("validation",)
        parts = [as_interactions(part, user, item, rating, name) for part, name in zip(frames, names)]
        if len(parts) == 1:
            return train, align_to_catalogue(parts[0], train.item_ids, train.user_ids)[0]
        users = pd.unique(np.concatenate([part.user_ids for part in parts]))
        return train, tuple(align_to_catalogue(part, train.item_ids, users)[0] for part in parts)

    def as_training_matrix(self, train):
        """``train`` as the matrix ``_fit`` receives: a float32 CSR with at least one interaction."""
        matrix = as_csr(train, "train")
        if matrix.nnz == 0:
            raise ValueError(f"train has no interactions (shape {matrix.shape}); expected at least one")
        return matrix

    def training_checkpoint(self):
        """The ``fit(checkpoint=...)`` setting as a :class:`~aerec.training.Checkpointing` tagged with this model.

        The tag (class and hyper-parameters, less ``epochs``, ``device`` and ``progress``) must match for a resume.
        """
        from aerec.checkpoint import normalised
        from aerec.state import flatten
        from aerec.training import Checkpointing

        setting = getattr(self, "_checkpoint", None)
        if setting is None:
            return None
        if isinstance(setting, (str, os.PathLike)):
            setting = Checkpointing(setting, every=1, resume=True)
        if not isinstance(setting, Checkpointing):
            raise TypeError(f"checkpoint must be a directory path or aerec.training.Checkpointing, got {type(setting).__name__}")
        params = {k: v for k, v in self.get_params().items() if k not in ("epochs", "device", "progress", "max_seconds")}
        return dataclasses.replace(setting, tag={"model": type(self).__name__, "params": normalised(flatten(params, {}))})

    @classmethod
    def constraints(cls) -> dict:
        """The constraints of every parameter of ``__init__``, from this class's table and its bases'."""
        merged: dict = {}
        for klass in reversed(cls.__mro__):
            merged.update(vars(klass).get("parameter_constraints", {}))
        return {name: merged[name] for name in cls.param_names() if name in merged}

    @classmethod
    def default_search_space(cls) -> dict:
        """The search space of this class and its bases, for the parameters of its ``__init__``."""
        merged: dict = {}
        for klass in reversed(cls.__mro__):
            merged.update(vars(klass).get("search_space", {}))
        return {name: merged[name] for name in cls.param_names() if merged.get(name) is not None}

    def check_params(self) -> None:
        """Raise a ValueError naming any hyper-parameter out of its range (called by ``fit``).

        Checks the constraints table, then :meth:`check_param_combinations`.
        """
        validate_params(self.constraints(), self.get_params())
        self.check_param_combinations()

    def check_param_combinations(self) -> None:
        """Rules between parameters that a table of single values cannot state (none by default)."""

    def validate_params(self) -> None:
        """Deprecated name of :meth:`check_params` ("validate" means validation data in aerec)."""
        warnings.warn("validate_params() is renamed check_params(); validate_params() goes in the next release",
                      DeprecationWarning, stacklevel=2)
        self.check_params()

    def _fit(self, matrix: sp.csr_matrix, validation) -> None:
        raise NotImplementedError

    def score_tensor(self, user_items) -> torch.Tensor:
        """Dense scores of shape (n_rows, n_items) for the given rows, as a torch tensor."""
        raise NotImplementedError

    def score(self, user_items, user_features=None) -> np.ndarray:
        """Dense float32 scores of shape (n_rows, n_items) for the given users' rows (``user_features``: see
        :meth:`recommend`)."""
        scores = (self.score_tensor(user_items) if user_features is None else
                  self.score_tensor(user_items, user_features=user_features))
        return scores.detach().float().cpu().numpy()

    def scoring_side(self, user_items, user_features=None):
        """The users' side features a conditional model reads beside ``user_items``' rows; None for a model that
        reads none (``user_features`` given to it is a ValueError)."""
        if user_features is not None:
            raise ValueError(f"user_features given to a {type(self).__name__} that reads none (only a model fitted "
                             "with side_information=True and user_features does)")
        return None

    def recommend(self, user_items, n: int = 10, filter_already_liked_items: bool = True, *, N: int | None = None,
                  user: str = "user", item: str = "item", rating: str | bool | None = None, user_features=None):
        """Top-``n`` items and scores for each user of ``user_items``, best first.

        ``user_items`` is one of:

        - a pandas frame of histories with raw ids (columns named by ``user``, ``item``, ``rating``
          as in :meth:`fit`): returns a frame ``user, item, rank, score`` in raw ids, users in id
          order; items the model does not know are ignored and counted in an
          :class:`~aerec.data.catalogue.UnknownIdsWarning`;
        - :class:`Interactions` or a sparse matrix of rows over the model's items: returns the
          arrays ``(ids, scores)``, one row per input row, ids indexing ``item_ids_``. Interactions
          with other item ids than the model's are lined up with its catalogue by raw id
          (those whose ids are 0..n-1, a bare matrix's, are taken as columns when the widths agree).

        implicit's spelling works too: ``recommend(userid, user_items, N=10,
        filter_already_liked_items=True)``, where ``user_items`` holds one row per ``userid``
        (implicit >= 0.5), or is the whole matrix the ``userid`` rows are taken from; a scalar
        ``userid`` gives 1-D arrays. The user ids themselves are not used: every model here
        folds users in from their rows.

        With ``filter_already_liked_items`` the row's own items are excluded;
        where fewer than ``n`` items remain, the missing places hold id -1 and
        score -inf.

        ``user_features`` (a model fitted with ``side_information=True``): the users' side features, a
        :class:`~aerec.data.features.SideFeatures` table (looked up by the rows' user ids) or a matrix with one
        row per row; by default the table given to ``fit``, looked up by id (rows without ids: no features).
        """
        if _is_matrix(n):  # implicit's recommend(userid, user_items, N, ...)
            return self._recommend_implicit_style(user_items, n, filter_already_liked_items, N)
        if N is not None:
            n = N
        if isinstance(user_items, pd.DataFrame):
            histories = self.align(user_items, user=user, item=item, rating=rating)
            ids, scores = self.recommend(histories, n, filter_already_liked_items, user_features=user_features)
            return recommendations_frame(histories.user_ids, ids, scores, self.item_ids_)
        parts = list(self.recommend_batches(user_items, n, filter_already_liked_items, user_features=user_features))
        if not parts:
            return np.empty((0, n), dtype=np.int64), np.empty((0, n), dtype=np.float32)
        return np.concatenate([ids for _, ids, _ in parts]), np.concatenate([scores for _, _, scores in parts])

    def _recommend_implicit_style(self, userid, user_items, filter_already_liked_items, N):
        n = 10 if N is None else N
        if not isinstance(filter_already_liked_items, (bool, np.bool_)):  # recommend(userid, user_items, 20)
            n, filter_already_liked_items = filter_already_liked_items, True
        scalar = np.ndim(userid) == 0
        users = np.atleast_1d(np.asarray(userid))
        if not np.issubdtype(users.dtype, np.integer) or users.ndim != 1:
            raise ValueError(f"userid={userid!r}; expected an integer or a 1-D array of integers (implicit's spelling "
                             "recommend(userid, user_items, N=10))")
        rows = as_csr(user_items, "user_items")
        if rows.shape[0] != len(users):
            if len(users) and (users.min() < 0 or users.max() >= rows.shape[0]):
                raise ValueError(f"user_items has {rows.shape[0]} rows for {len(users)} userid(s) up to "
                                 f"{users.max()}; expected one row per userid, or the matrix the userid rows index")
            rows = rows[users]
        ids, scores = self.recommend(rows, n, bool(filter_already_liked_items))
        return (ids[0], scores[0]) if scalar else (ids, scores)

    def align(self, data, *, user: str = "user", item: str = "item", rating: str | bool | None = None) -> Interactions:
        """Histories (a frame or Interactions with raw ids) as rows over this model's items.

        Entries of items the model does not know are dropped and counted in an
        :class:`~aerec.data.catalogue.UnknownIdsWarning`; the users' raw ids are kept.
        """
        self.check_fitted()
        return align_to_catalogue(data, self.item_ids_, user=user, item=item, rating=rating)[0]

    def recommend_batches(self, user_items, n: int = 10, filter_already_liked_items: bool = True,
                          batch_rows: int | None = None, memory_budget: int | None = None, user_features=None):
        """:meth:`recommend`, streamed: yields ``(rows, ids, scores)`` for one bounded batch of rows at a time.

        Each batch is scored, masked and ranked on the model's device; only the top ``n``
        come back, so memory holds one batch of scores (``memory_budget`` bytes, by default
        8 MiB on the CPU and 256 MiB on a GPU, or ``batch_rows`` rows) however many users there are.
        """
        if isinstance(user_items, pd.DataFrame):
            user_items = self.align(user_items)
        side = self.scoring_side(user_items, user_features) if hasattr(self, "n_items_") else None
        rows = self.check_user_items(user_items)
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 1 <= n <= self.n_items_:
            raise ValueError(f"n={n!r}; expected an integer from 1 to the {self.n_items_} items of the catalogue")
        if batch_rows is None:
            budget = memory_budget if memory_budget is not None else default_memory_budget(getattr(self, "device_", "cpu"))
            batch_rows = batch_rows_for_budget(self.n_items_, budget)
        def score(index):
            if side is None:
                return self.score_tensor(rows[index[0]:index[-1] + 1])
            return self.score_tensor(rows[index[0]:index[-1] + 1], user_features=side[index[0]:index[-1] + 1])

        yield from stream_top_n(score, rows if filter_already_liked_items else None, int(n), n_rows=rows.shape[0],
                                batch_rows=batch_rows)

    # -- model files (aerec.save / aerec.load) ------------------------------------
    def fitted_state(self) -> dict:
        """The fitted attributes (names ending in ``_``) a model file keeps; modules are saved as their weights.

        Subclasses holding something that cannot be saved as it is (a third-party model
        object) swap it for arrays here and rebuild it in :meth:`restore_fitted_state`.
        """
        return {name: value for name, value in vars(self).items() if name.endswith("_") and not name.startswith("_")}

    def restore_fitted_state(self, state: dict) -> None:
        """Set the fitted attributes read back from a model file (modules are rebuilt by :meth:`new_module`)."""
        vars(self).update(state)

    def new_module(self) -> torch.nn.Module:
        """A freshly built network of the fitted shape, for a model file's weights to be loaded into."""
        raise TypeError(f"{type(self).__name__} has no network to rebuild")

    # -- helpers for subclasses ------------------------------------------------
    def check_user_items(self, user_items) -> sp.csr_matrix:
        """Validate rows passed to score/recommend: fitted model, sparse, the fitted number of items."""
        self.check_fitted()
        if isinstance(user_items, pd.DataFrame) or (isinstance(user_items, Interactions)
                                                    and not self._in_catalogue_order(user_items)):
            user_items = self.align(user_items)
        rows = as_csr(user_items, "user_items")
        if rows.shape[1] != self.n_items_:
            raise ValueError(
                f"user_items has {rows.shape[1]} columns; expected {self.n_items_}, the items this model was fitted on"
            )
        return rows

    def _in_catalogue_order(self, interactions: Interactions) -> bool:
        """Whether the columns of ``interactions`` are this model's items as they are (no lining up by id)."""
        ids, own = np.asarray(interactions.item_ids), np.asarray(self.item_ids_)
        if len(ids) != len(own):
            return False
        bare = np.issubdtype(ids.dtype, np.integer) and np.array_equal(ids, np.arange(len(ids)))
        return ids is own or bare or np.array_equal(ids, own)

    # -- representations ----------------------------------------------------------------
    def item_embeddings(self) -> np.ndarray:
        """One float32 vector per item, shape (n_items, dimensions), rows in the order of ``item_ids_``."""
        raise TypeError(f"{type(self).__name__} learns no item representation; item_embeddings and similar_items "
                        "need EASE, DLAE, EDLAE, ALS, BPR or an autoencoder")

    def user_embeddings(self, user_items) -> np.ndarray:
        """One float32 vector per row of ``user_items`` (folded in), shape (n_rows, dimensions)."""
        raise TypeError(f"{type(self).__name__} learns no user representation; user_embeddings needs ALS, BPR or "
                        "an autoencoder")

    #: The measures :meth:`similar_items` takes; the first is its default.
    similarity_metrics: tuple = ("cosine", "dot")

    def similar_items(self, item_ids, n: int = 10, metric: str | None = None, items=None) -> pd.DataFrame:
        """The ``n`` items closest to each of ``item_ids`` (raw ids).

        Parameters
        ----------
        item_ids : raw id or list of raw ids
            Items of the model's catalogue (``item_ids_``); an unknown id is a ValueError naming it.
        n : int
            Neighbours per item (the item itself is never its own neighbour).
        metric : str, optional
            One of the model's :attr:`similarity_metrics`, by default its first: ``"cosine"``
            between :meth:`item_embeddings` (an all-zero vector is similar to nothing), ``"dot"``
            their inner product; the item-item models (EASE, DLAE, EDLAE) default to ``"weight"``,
            item ``j``'s neighbours being the items whose presence scores it most (its column of ``B``).
        items : list of raw ids, optional
            The items neighbours are drawn from (implicit's ``items=``), for instance those with
            enough interactions for their vectors to have been learned; default: the whole catalogue.

        Returns
        -------
        DataFrame
            Columns ``item, similar_item, rank, score`` in raw ids, best first per item.
        """
        self.check_fitted()
        metric = self.similarity_metrics[0] if metric is None else metric
        if metric not in self.similarity_metrics:
            raise ValueError(f"metric={metric!r}; expected one of {self.similarity_metrics} for {type(self).__name__}")
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 1 <= n <= self.n_items_ - 1:
            raise ValueError(f"n={n!r}; expected an integer from 1 to {self.n_items_ - 1}, the other items of the "
                             "catalogue")
        columns = catalogue_index(self.item_ids_, item_ids)
        scores = self.item_similarities(columns, metric).float().cpu()
        if items is not None:
            allowed = torch.zeros(self.n_items_, dtype=torch.bool)
            allowed[torch.from_numpy(catalogue_index(self.item_ids_, items))] = True
            scores[:, ~allowed] = -torch.inf
        scores[torch.arange(len(columns)), torch.from_numpy(columns)] = -torch.inf  # not its own neighbour
        ids, best = top_n(scores, None, int(n))  # the ranking every recommend goes through
        found = torch.isfinite(best).numpy().ravel()  # fewer than n items allowed: the rest is left out
        item_ids = np.asarray(self.item_ids_)
        return pd.DataFrame({"item": np.repeat(item_ids[columns], n)[found],
                             "similar_item": item_ids[ids.numpy()].ravel()[found],
                             "rank": np.tile(np.arange(1, n + 1, dtype=np.int32), len(columns))[found],
                             "score": best.numpy().ravel()[found]})

    def item_similarities(self, columns: np.ndarray, metric: str) -> torch.Tensor:
        """Similarities (len(columns), n_items) of the items at ``columns`` to every item, by ``metric``."""
        vectors = torch.from_numpy(np.ascontiguousarray(self.item_embeddings(), dtype=np.float32))
        if metric == "cosine":
            vectors = torch.nn.functional.normalize(vectors, dim=1)
        return vectors[torch.from_numpy(columns)] @ vectors.T

    def ranking_validation(self, validation, k: int = 100, side_rows=None):
        """A ``validate(module) -> NDCG@k`` function for the training loop's early stopping, or None.

        ``validation`` is a pair ``(fold_in, heldout)`` of validation users' rows
        (Interactions or sparse matrices, the fitted number of items): the model
        scores ``fold_in`` through ``score_tensor`` and is judged on ``heldout``
        (Liang et al. keep the epoch with the best validation NDCG@100; NDCG@n_items
        when the catalogue has fewer than ``k`` items). ``side_rows(n_rows)``, for a
        conditional model: the validation users' side features, one row per row.
        """
        from aerec.evaluation import evaluate_ranking

        if validation is None:
            return None
        if not isinstance(validation, (tuple, list)) or len(validation) != 2:
            raise ValueError(f"validation must be a pair (fold_in, heldout) of users' rows, got {type(validation).__name__}")
        fold_in, heldout = (as_csr(part, name) for part, name in zip(validation, ("validation fold_in", "validation heldout")))
        for name, part in (("fold_in", fold_in), ("heldout", heldout)):
            if part.shape[1] != self.n_items_:
                raise ValueError(f"validation {name} has {part.shape[1]} columns; expected {self.n_items_} items as train")
        k = min(k, self.n_items_)  # a catalogue smaller than k: NDCG over all of it
        side = None if side_rows is None else side_rows(fold_in.shape[0])
        return lambda module: evaluate_ranking(self, fold_in, heldout, ks=(k,), metrics=("ndcg",),
                                               user_features=side).metrics[f"ndcg@{k}"]

    def check_fitted(self) -> None:
        if not hasattr(self, "n_items_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(train) first")

    @classmethod
    def param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [name for name, parameter in signature.parameters.items()
                if name != "self" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)]

    def get_params(self, deep: bool = True) -> dict:
        """The hyper-parameters given to ``__init__`` (for saving, cloning and printing); ``deep`` is scikit-learn's."""
        return {name: getattr(self, name) for name in self.param_names()}

    def set_params(self, **params) -> "Recommender":
        """Set hyper-parameters by name (scikit-learn's protocol); an unknown name is a ValueError. Returns ``self``."""
        unknown = sorted(set(params) - set(self.param_names()))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown} for {type(self).__name__}; it takes {self.param_names()}")
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        """The class and the parameters that differ from their defaults (scikit-learn's habit)."""
        defaults = {name: parameter.default for name, parameter in inspect.signature(type(self).__init__).parameters.items()}
        changed = {name: value for name, value in self.get_params().items()
                   if not _same(value, defaults.get(name, inspect.Parameter.empty))}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"


def _same(value, default) -> bool:
    try:
        return type(value) is type(default) and bool(value == default)
    except (TypeError, ValueError):
        return value is default


def _is_matrix(value) -> bool:
    return sp.issparse(value) or isinstance(value, Interactions)


def as_csr(data, name: str) -> sp.csr_matrix:
    """An :class:`Interactions` or scipy sparse matrix as a float32 CSR (never densified)."""
    if isinstance(data, Interactions):
        return data.matrix
    if sp.issparse(data):
        matrix = sp.csr_matrix(data, dtype=np.float32)
        if matrix.ndim != 2:
            raise ValueError(f"{name} must be 2-D, got shape {matrix.shape}")
        if not np.isfinite(matrix.data).all():
            raise ValueError(f"{name} holds NaN or inf values; expected finite interactions")
        return matrix
    raise TypeError(f"{name} must be aerec Interactions or a scipy.sparse matrix (users x items), got {type(data).__name__}")
