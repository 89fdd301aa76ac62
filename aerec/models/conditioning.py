"""Users' side features as a condition of an autoencoder (a conditional VAE / DAE: the features enter the
encoder and the decoder), shared by the models that take ``side_information=True`` (Mult-VAE, Mult-DAE).

The model keeps the whole feature table it was given (every id in it, not only the training users'), so a user
who was not in training (a fold-in user, or a cold user with no history at all) is scored with their features,
looked up by raw id. Where no id is known (a bare matrix of rows) the rows are scored without features (zeros,
as an id missing from the table), unless ``user_features`` gives them one row per row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from aerec.data.interactions import Interactions


class UserConditioned:
    """Mixin of a :class:`~aerec.models.torch_base.TorchRecommender` whose network reads ``side`` (rows,
    ``n_side``) beside the rows: ``fit(user_features=...)``, and the side rows of any rows it scores.

    Fitted: ``user_features_`` (csr, one row per id of ``user_feature_ids_``) and ``user_feature_names_``.
    """

    @property
    def conditioned(self) -> bool:
        return bool(getattr(self, "side_information", False)) and getattr(self, "user_features_", None) is not None

    @property
    def n_side(self) -> int:
        return self.user_features_.shape[1] if self.conditioned else 0

    def fit(self, train, validation=None, checkpoint=None, callbacks=(), warm_start: bool = False, *,
            user_features=None, user: str = "user", item: str = "item", rating: str | bool | None = None):
        """:meth:`Recommender.fit`, with ``user_features`` (used when ``side_information=True``): a
        :class:`~aerec.data.features.SideFeatures` table (looked up by raw user id, here and when scoring; train
        must then carry ids: a frame or Interactions) or a matrix with one row per training user."""
        train, validation = self.fit_inputs(train, validation, user, item, rating)
        self._user_feature_input = user_features
        self._train_users = train.user_ids if isinstance(train, Interactions) else None
        self._validation_users = (validation[0].user_ids if isinstance(validation, (tuple, list)) and validation
                                  and isinstance(validation[0], Interactions) else None)
        return super().fit(train, validation, checkpoint, callbacks, warm_start)

    def _fit(self, matrix: sp.csr_matrix, validation) -> None:
        for name in ("user_features_", "user_feature_ids_", "user_feature_names_"):
            self.__dict__.pop(name, None)
        self._train_side = None
        if getattr(self, "side_information", False):
            self._set_feature_table(self.__dict__.pop("_user_feature_input", None), matrix.shape[0])
            self._train_side = torch.from_numpy(self.user_feature_rows(self._train_users, matrix.shape[0]))
        super()._fit(matrix, validation)

    def _set_feature_table(self, features, n_train: int) -> None:
        from aerec.data.features import SideFeatures

        if features is None:
            raise ValueError(f"{type(self).__name__}(side_information=True) needs user_features: a SideFeatures "
                             "table (aerec.data.features) or a matrix with one row per training user")
        if isinstance(features, SideFeatures):
            if self._train_users is None:
                raise TypeError("SideFeatures are looked up by user id: pass train as a frame or Interactions (or "
                                "give the features as a matrix with one row per training user)")
            table, ids, names = features.matrix, np.asarray(features.ids), list(features.names)
        else:
            table = sp.csr_matrix(features, dtype=np.float32)
            if table.shape[0] != n_train:
                raise ValueError(f"user_features has {table.shape[0]} rows; expected one per training user ({n_train})")
            ids = self._train_users if self._train_users is not None else np.arange(n_train)
            names = [f"feature_{j}" for j in range(table.shape[1])]
        table = sp.csr_matrix(table, dtype=np.float32)
        if not np.isfinite(table.data).all():
            raise ValueError("user_features holds NaN or infinite values; expected finite numbers")
        if table.shape[1] == 0:
            raise ValueError("user_features has no columns; expected at least one feature")
        self.user_features_, self.user_feature_ids_, self.user_feature_names_ = table, ids, names

    def user_feature_rows(self, user_ids, n_rows: int) -> np.ndarray:
        """Dense float32 features (n_rows, n_side) of the users ``user_ids`` (raw ids, looked up in the fitted
        table; an id not in it, or ``user_ids`` None, gets zeros)."""
        rows = np.zeros((n_rows, self.n_side), dtype=np.float32)
        if user_ids is None or not n_rows:
            return rows
        from aerec.data.catalogue import catalogue_columns

        where = catalogue_columns(self.user_feature_ids_, np.asarray(user_ids))
        found = np.flatnonzero(where >= 0)
        rows[found] = self.user_features_[where[found]].toarray()
        return rows

    def scoring_side(self, user_items, user_features=None):
        """The side rows (float32, one per row of ``user_items``) the network reads, or None (not conditioned)."""
        if not self.conditioned:
            return super().scoring_side(user_items, user_features)
        from aerec.data.features import SideFeatures

        ids = user_items.user_ids if isinstance(user_items, Interactions) else None
        if isinstance(user_items, pd.DataFrame):
            raise TypeError("a frame is lined up first: call recommend(frame) or align(frame)")
        n_rows = user_items.shape[0]
        if user_features is None:
            return self.user_feature_rows(ids, n_rows)
        if isinstance(user_features, SideFeatures):
            if ids is None:
                raise ValueError("user_features as SideFeatures needs the rows' user ids: pass Interactions or a "
                                 "frame, or the features as a matrix with one row per row")
            rows = user_features.align(ids, what="user", warn=False).matrix
        else:
            rows = user_features
        rows = np.asarray(rows.toarray() if sp.issparse(rows) else rows, dtype=np.float32)
        if rows.shape != (n_rows, self.n_side):
            raise ValueError(f"user_features has shape {rows.shape}; expected one row per row of user_items and "
                             f"the {self.n_side} features the model was fitted with: ({n_rows}, {self.n_side})")
        if not np.isfinite(rows).all():
            raise ValueError("user_features holds NaN or infinite values; expected finite numbers")
        return rows

    # -- the side rows of a batch -----------------------------------------------------------------------
    def batch_side(self, batch) -> torch.Tensor | None:
        """The side rows of a training batch (None when not conditioned)."""
        if getattr(self, "_train_side", None) is None:
            return None
        return self._train_side[torch.as_tensor(batch.index, dtype=torch.long)].to(batch.device)

    def scoring_rows(self, user_items, user_features=None):
        """``(user_items, side)``: the rows (a frame lined up with the catalogue, for a conditioned model) and the
        side rows the network reads as a tensor; ``side`` is None for a model that is not conditioned (which
        refuses ``user_features``)."""
        if not self.conditioned:
            self.scoring_side(user_items, user_features)  # user_features given to a model without: refused
            return user_items, None
        if isinstance(user_items, pd.DataFrame):
            user_items = self.align(user_items)
        return user_items, torch.from_numpy(self.scoring_side(user_items, user_features))

    def score_tensor(self, user_items, user_features=None) -> torch.Tensor:
        """Scores (rows, n_items) of the given rows, each with its user's side features (see the module text)."""
        user_items, self._scoring_side = self.scoring_rows(user_items, user_features)
        try:
            return super().score_tensor(user_items)
        finally:
            self._scoring_side = None

    def user_embeddings(self, user_items, user_features=None) -> np.ndarray:
        """The code of each row, folded in with its user's side features (see :meth:`score_tensor`)."""
        user_items, self._scoring_side = self.scoring_rows(user_items, user_features)
        try:
            return super().user_embeddings(user_items)
        finally:
            self._scoring_side = None

    def scoring_batch_side(self, batch) -> torch.Tensor | None:
        """The side rows of a batch being scored (None when not conditioned)."""
        side = getattr(self, "_scoring_side", None)
        if side is None:
            return None
        return side[torch.as_tensor(batch.index, dtype=torch.long)].to(batch.device)

    def validation_metric(self, validation):
        if not getattr(self, "side_information", False) or validation is None:
            return super().validation_metric(validation)
        return self.ranking_validation(
            validation, side_rows=lambda n_rows: self.user_feature_rows(self._validation_users, n_rows))
