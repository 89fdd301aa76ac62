"""Side features of users or items, as sparse matrices whose rows follow an id map.

:func:`features_from_pandas` encodes a frame (one row per id) column by column:

- ``categorical``: one column per value seen (one-hot), ``name=value``;
- ``multi``: a text of values separated by ``sep`` (genres ``"Comedy|Drama"``, tags), one column per value
  seen (multi-hot), ``name=value``;
- ``binary``: a 0/1 column kept as it is;
- ``numeric``: standardised with the mean and standard deviation of the rows given (kept, so that new rows
  are encoded alike); a NaN needs a stated policy (``nan="mean"`` fills the mean, i.e. 0 after
  standardising; ``"zero"`` fills 0 before standardising; the default ``"error"`` refuses).

The result, :class:`SideFeatures`, holds the matrix (CSR, float32), the ids of its rows, the names of its
columns and the encoding (``spec``, plain JSON). :meth:`SideFeatures.align` puts its rows in the order of an
:class:`~aerec.data.interactions.Interactions`' users or items: an id without features gets an all-zero
row (counted in ``missing``), features of ids the interactions do not know are left out (counted in
``ignored``, with a warning). :meth:`SideFeatures.encode` encodes new rows (a new item's genres) with the
same columns. Readers for what the MovieLens files carry: :func:`load_item_features` (genres, release year;
ml-latest-small's tags) and :func:`load_user_features` (age, gender, occupation).
"""

from __future__ import annotations

import dataclasses
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["KINDS", "SideFeatures", "features_from_pandas", "load_item_features", "load_user_features"]

KINDS = ("categorical", "multi", "binary", "numeric")
NAN_POLICIES = ("error", "mean", "zero")


class UnknownFeatureIdsWarning(UserWarning):
    """Feature rows named ids the interactions do not know; they were left out."""


@dataclasses.dataclass
class SideFeatures:
    """A ``len(ids) x len(names)`` sparse float32 matrix of features, row ``i`` for id ``ids[i]``."""

    matrix: sp.csr_matrix
    ids: np.ndarray
    names: list
    spec: list  # one entry per source column: {"column", "kind", and "values" or "mean"/"std" or "sep"}
    missing: int = 0  # ids given to align() that had no feature row (all-zero rows)
    ignored: int = 0  # feature rows whose id align() was not given

    @property
    def n_features(self) -> int:
        return self.matrix.shape[1]

    def align(self, ids, what: str = "id", warn: bool = True) -> "SideFeatures":
        """These features with one row per entry of ``ids``, in that order (``interactions.item_ids`` or
        ``user_ids``); ids without features get zero rows (``missing``), rows of other ids are left out
        (``ignored``, warned about)."""
        from aerec.data.catalogue import catalogue_columns, outside_aerec_stacklevel

        ids = np.asarray(ids)
        rows = catalogue_columns(self.ids, ids)  # row of each wanted id in this table, -1 if none
        found = rows >= 0
        ignored = len(self.ids) - len(np.unique(rows[found]))
        if ignored and warn:
            warnings.warn(f"{ignored} of {len(self.ids)} feature rows name {what}s the interactions do not know and "
                          "were left out", UnknownFeatureIdsWarning, stacklevel=outside_aerec_stacklevel())
        selector = sp.csr_matrix((np.ones(found.sum(), dtype=np.float32), (np.flatnonzero(found), rows[found])),
                                 shape=(len(ids), len(self.ids)))
        matrix = (selector @ self.matrix).tocsr().astype(np.float32)
        return SideFeatures(matrix, ids, list(self.names), self.spec, missing=int((~found).sum()), ignored=ignored)

    def encode(self, frame: pd.DataFrame, id: str) -> "SideFeatures":
        """New rows (a frame with this table's source columns) encoded with this table's columns and statistics;
        values not seen when the table was built are left out (no column holds them)."""
        return _encode(frame, id, self.spec, fit=False)

    def to_state(self) -> dict:
        """Plain arrays and JSON, for a model file (no pickle)."""
        return {"indptr": self.matrix.indptr.astype(np.int64), "indices": self.matrix.indices.astype(np.int64),
                "data": self.matrix.data.astype(np.float32), "shape": list(self.matrix.shape),
                "ids": np.asarray(self.ids), "names": list(self.names), "spec": self.spec}

    @classmethod
    def from_state(cls, state: dict) -> "SideFeatures":
        matrix = sp.csr_matrix((np.asarray(state["data"], np.float32), np.asarray(state["indices"]),
                                np.asarray(state["indptr"])), shape=tuple(state["shape"]))
        if len(state["names"]) != matrix.shape[1] or len(state["ids"]) != matrix.shape[0]:
            raise ValueError(f"side features of shape {matrix.shape} with {len(state['ids'])} ids and "
                             f"{len(state['names'])} names; expected one id per row and one name per column")
        return cls(matrix, np.asarray(state["ids"]), list(state["names"]), state["spec"])


def features_from_pandas(frame: pd.DataFrame, id: str, columns=None, kinds: dict | None = None, sep: str = "|",
                         nan: str = "error") -> SideFeatures:
    """Encode ``frame``'s ``columns`` (default: all but ``id``), one row per id (see the module's text).

    ``kinds`` maps a column to one of :data:`KINDS`; a column left out is ``numeric`` if its values are numbers
    (``binary`` if they are all 0 or 1), ``multi`` if a value holds ``sep``, else ``categorical``. ``nan``
    applies to numeric columns: ``"error"`` (default), ``"mean"`` or ``"zero"``; a missing value of a
    categorical or multi-valued column is simply no value.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"features_from_pandas expects a pandas DataFrame, got {type(frame).__name__}")
    if id not in frame.columns:
        raise ValueError(f"id={id!r} is not a column; the frame has columns {list(frame.columns)}")
    if nan not in NAN_POLICIES:
        raise ValueError(f"nan={nan!r}; expected one of {NAN_POLICIES}")
    columns = [c for c in frame.columns if c != id] if columns is None else list(columns)
    unknown = [c for c in columns if c not in frame.columns]
    if unknown:
        raise ValueError(f"columns {unknown} are not in the frame; it has columns {list(frame.columns)}")
    kinds = dict(kinds or {})
    bad = {c: k for c, k in kinds.items() if k not in KINDS}
    if bad:
        raise ValueError(f"kinds {bad}; expected each one of {KINDS}")
    spec = [{"column": column, "kind": kinds.get(column) or _guess_kind(frame[column], sep), "sep": sep,
             "nan": nan} for column in columns]
    return _encode(frame, id, spec, fit=True)


def _guess_kind(values: pd.Series, sep: str) -> str:
    if pd.api.types.is_bool_dtype(values):
        return "binary"
    if pd.api.types.is_numeric_dtype(values):
        present = values.dropna()
        return "binary" if len(present) and present.isin([0, 1]).all() else "numeric"
    texts = values.dropna().astype(str)
    return "multi" if texts.str.contains(sep, regex=False).any() else "categorical"


def _encode(frame: pd.DataFrame, id: str, spec: list, fit: bool) -> SideFeatures:
    if id not in frame.columns:
        raise ValueError(f"id={id!r} is not a column; the frame has columns {list(frame.columns)}")
    ids = frame[id].to_numpy()
    if pd.isna(frame[id]).any():
        raise ValueError(f"column {id!r} (the ids) has {int(pd.isna(frame[id]).sum())} missing value(s)")
    duplicated = frame[id].duplicated()
    if duplicated.any():
        examples = frame[id][duplicated].unique()[:5].tolist()
        raise ValueError(f"{int(duplicated.sum())} duplicated id(s) in column {id!r} of the feature table, such as "
                         f"{examples}; expected one row per id (combine them first, e.g. join tags with '|')")
    blocks, names, fitted = [], [], []
    for entry in spec:
        column, kind = entry["column"], entry["kind"]
        if column not in frame.columns:
            raise ValueError(f"the features were built from column {column!r}, which this frame lacks (it has "
                             f"{list(frame.columns)})")
        values = frame[column]
        entry = dict(entry)
        if kind == "numeric":
            block, entry = _numeric(values, entry, fit)
            names.append(column)
        elif kind == "binary":
            numbers = pd.to_numeric(values, errors="coerce")
            if numbers.isna().any() or not numbers.isin([0, 1]).all():
                raise ValueError(f"column {column!r} is binary; expected only 0 and 1, found "
                                 f"{values[numbers.isna() | ~numbers.isin([0, 1])].unique()[:5].tolist()}")
            block = sp.csr_matrix(numbers.to_numpy(np.float32).reshape(-1, 1))
            names.append(column)
        else:
            lists = _value_lists(values, entry["sep"] if kind == "multi" else None)
            if fit:
                entry["values"] = sorted({value for row in lists for value in row})
            index = {value: j for j, value in enumerate(entry["values"])}
            row_ids = [i for i, row in enumerate(lists) for value in row if value in index]
            col_ids = [index[value] for row in lists for value in row if value in index]
            block = sp.csr_matrix((np.ones(len(row_ids), np.float32), (row_ids, col_ids)),
                                  shape=(len(frame), len(index)))
            block.sum_duplicates()
            block.data[:] = 1.0
            names += [f"{column}={value}" for value in entry["values"]]
        blocks.append(block)
        fitted.append(entry)
    matrix = sp.hstack(blocks, format="csr", dtype=np.float32) if blocks else sp.csr_matrix((len(frame), 0),
                                                                                             dtype=np.float32)
    matrix.eliminate_zeros()
    return SideFeatures(matrix, ids, names, fitted)


def _numeric(values: pd.Series, entry: dict, fit: bool):
    column = entry["column"]
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() & values.notna()
    if bad.any():
        raise ValueError(f"column {column!r} is numeric; found non-numbers such as {values[bad].unique()[:5].tolist()}")
    array = numbers.to_numpy(np.float64)
    if not np.isfinite(array[~np.isnan(array)]).all():
        raise ValueError(f"column {column!r} holds infinite values; expected finite numbers")
    missing = np.isnan(array)
    if missing.any() and entry["nan"] == "error":
        raise ValueError(f"column {column!r} has {int(missing.sum())} missing value(s) (NaN); state a policy: "
                         "nan='mean' (the column's mean) or nan='zero'")
    if entry["nan"] == "zero":
        array = np.where(missing, 0.0, array)
    if fit:
        present = array[~np.isnan(array)]
        entry["mean"] = float(present.mean()) if len(present) else 0.0
        std = float(present.std()) if len(present) else 0.0
        entry["std"] = std if std > 0 else 1.0
    standard = (array - entry["mean"]) / entry["std"]
    standard = np.where(np.isnan(standard), 0.0, standard)  # nan="mean": the mean, 0 once standardised
    return sp.csr_matrix(standard.astype(np.float32).reshape(-1, 1)), entry


def _value_lists(values: pd.Series, sep: str | None) -> list:
    lists = []
    for value in values.tolist():
        if value is None or (isinstance(value, float) and np.isnan(value)):
            lists.append([])
        elif sep is None:
            lists.append([str(value)])
        else:
            lists.append([part.strip() for part in str(value).split(sep) if part.strip()])
    return lists


# -- MovieLens ---------------------------------------------------------------------------------------------

_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _folder(name_or_path, data_dir) -> Path:
    from aerec.data.datasets import DATASETS, find_dataset_dir

    if isinstance(name_or_path, str) and name_or_path in DATASETS:
        return find_dataset_dir(name_or_path, data_dir)
    path = Path(name_or_path)
    if path.is_file():
        return path.parent
    if path.is_dir():
        return path
    raise ValueError(f"unknown dataset {str(name_or_path)!r}; expected one of {sorted(DATASETS)} or a folder")


def _dat(path: Path, names: list) -> pd.DataFrame:
    text = path.read_bytes().replace(b"::", b"\t")
    return pd.read_csv(io.BytesIO(text), sep="\t", header=None, names=names, encoding="latin-1", quoting=3,
                       dtype=str)


def load_item_features(name_or_path, data_dir=None, tags: bool = True) -> SideFeatures:
    """A MovieLens release's item features: genres (multi-hot) and release year (standardised; a missing year
    is the mean), and for ml-latest-small (``tags.csv``) its tags, lower-cased (multi-hot, ``tags=False``:
    none). ML-100K's ``u.item``, ML-1M/10M's ``movies.dat``, ml-latest-small's ``movies.csv``."""
    folder = _folder(name_or_path, data_dir)
    if (folder / "u.item").is_file():
        genres = [line.split("|")[0] for line in (folder / "u.genre").read_text(encoding="latin-1").splitlines()
                  if line.strip()] if (folder / "u.genre").is_file() else [f"genre_{i}" for i in range(19)]
        frame = pd.read_csv(folder / "u.item", sep="|", header=None, encoding="latin-1", dtype=str)
        flags = frame.iloc[:, 5:5 + len(genres)].astype(int).to_numpy()
        items = pd.DataFrame({
            "item": frame.iloc[:, 0].astype(np.int64),
            "genres": ["|".join(g for g, on in zip(genres, row) if on) for row in flags],
            "year": pd.to_datetime(frame.iloc[:, 2], format="%d-%b-%Y", errors="coerce").dt.year,
        })
    elif (folder / "movies.dat").is_file():
        frame = _dat(folder / "movies.dat", ["item", "title", "genres"])
        items = pd.DataFrame({"item": frame["item"].astype(np.int64), "genres": frame["genres"],
                              "year": frame["title"].str.extract(_YEAR, expand=False).astype(float)})
    elif (folder / "movies.csv").is_file():
        frame = pd.read_csv(folder / "movies.csv", dtype={"movieId": np.int64, "title": str, "genres": str})
        items = pd.DataFrame({"item": frame["movieId"], "genres": frame["genres"].replace("(no genres listed)", ""),
                              "year": frame["title"].str.strip().str.extract(_YEAR, expand=False).astype(float)})
        if tags and (folder / "tags.csv").is_file():
            tagged = pd.read_csv(folder / "tags.csv", dtype={"movieId": np.int64, "tag": str})
            tagged["tag"] = tagged["tag"].fillna("").str.lower().str.replace("|", "/", regex=False).str.strip()
            joined = tagged[tagged.tag != ""].groupby("movieId")["tag"].agg(lambda t: "|".join(sorted(set(t))))
            items["tags"] = items["item"].map(joined)
    else:
        raise ValueError(f"no u.item, movies.dat or movies.csv in {folder}; expected a MovieLens folder")
    kinds = {"genres": "multi", "year": "numeric", "tags": "multi"}
    return features_from_pandas(items, id="item", kinds={c: kinds[c] for c in items.columns if c != "item"},
                                nan="mean")


def load_user_features(name_or_path, data_dir=None) -> SideFeatures:
    """A MovieLens release's user features: ML-100K's ``u.user`` (age standardised, gender and occupation
    one-hot) or ML-1M's ``users.dat`` (gender, age group and occupation code, one-hot, as Strub et al.);
    zip codes are left out."""
    folder = _folder(name_or_path, data_dir)
    if (folder / "u.user").is_file():
        frame = pd.read_csv(folder / "u.user", sep="|", header=None, names=["user", "age", "gender", "occupation",
                                                                            "zip"], encoding="latin-1")
        kinds = {"age": "numeric", "gender": "categorical", "occupation": "categorical"}
    elif (folder / "users.dat").is_file():
        frame = _dat(folder / "users.dat", ["user", "gender", "age", "occupation", "zip"])
        frame["user"] = frame["user"].astype(np.int64)
        kinds = {"gender": "categorical", "age": "categorical", "occupation": "categorical"}
    else:
        raise ValueError(f"no u.user or users.dat in {folder}; only ML-100K and ML-1M carry user features")
    return features_from_pandas(frame, id="user", columns=list(kinds), kinds=kinds)
