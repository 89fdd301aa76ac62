"""The data contract: a users x items CSR matrix plus the raw user and item ids.

Everything in aerec consumes :class:`Interactions`. Building one validates the
input once (missing columns, NaN/inf, negative or non-numeric ratings,
duplicated (user, item) pairs), so that nothing downstream has to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

DUPLICATE_POLICIES = ("error", "first", "last", "sum", "mean", "max")
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT32_TINY = float(np.finfo(np.float32).smallest_subnormal)
_INT64 = np.iinfo(np.int64)


@dataclass(frozen=True, eq=False)
class Interactions:
    """A users x items ``scipy.sparse.csr_matrix`` (float32) with its id maps.

    Attributes
    ----------
    matrix : csr_matrix of float32, shape (n_users, n_items)
        Ratings for explicit data, 1.0 for implicit data. Canonical: sorted
        column indices, no duplicates. Explicit zeros are not allowed.
    user_ids, item_ids : ndarray
        Raw ids; ``user_ids[row]`` is the id of matrix row ``row``.
    timestamps : ndarray of int64 or None
        Aligned with ``matrix.data`` (same order), when the source had them.
    positions : ndarray of int64 or None
        Aligned with ``matrix.data``: the row of each entry in the frame it was read
        from (the file's row order, which vae_cf's held-out draw follows). None when
        that order is the matrix's own (rows sorted by user, then by item in the
        matrix's column order) or unknown (built from a CSR).
    """

    matrix: sp.csr_matrix
    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray | None = None
    positions: np.ndarray | None = None

    def __post_init__(self):
        m = self.matrix
        if not sp.isspmatrix_csr(m) and not isinstance(m, sp.csr_array):
            raise TypeError(f"matrix must be a scipy.sparse CSR matrix, got {type(m).__name__}")
        if m.dtype != np.float32:
            raise TypeError(f"matrix must be float32, got {m.dtype}")
        if len(self.user_ids) != m.shape[0] or len(self.item_ids) != m.shape[1]:
            raise ValueError(
                f"id maps do not match the matrix: {len(self.user_ids)} user ids and "
                f"{len(self.item_ids)} item ids for a matrix of shape {m.shape}"
            )
        for name, values in self._per_entry().items():
            if len(values) != m.nnz:
                raise ValueError(f"{name} has {len(values)} entries, expected one per stored rating ({m.nnz})")

    # -- construction -----------------------------------------------------
    @classmethod
    def from_pandas(
        cls,
        df: pd.DataFrame,
        user: str = "user",
        item: str = "item",
        rating: str | None = None,
        timestamp: str | None = None,
        duplicates: str = "error",
    ) -> "Interactions":
        """Build from a long frame with one row per (user, item) interaction.

        Parameters
        ----------
        df : DataFrame
        user, item : str
            Column names of the raw ids (any hashable values without NaN).
        rating : str or None
            Column of non-negative finite ratings; None means implicit data (1.0).
        timestamp : str or None
            Column of timestamps (numbers, or datetimes converted to Unix seconds).
        duplicates : {"error", "first", "last", "sum", "mean", "max"}
            What to do with repeated (user, item) pairs. "first"/"last" follow the
            row order of ``df`` (the timestamp goes with the kept row); "sum",
            "mean", "max" combine ratings and keep the latest timestamp.
        """
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"from_pandas expects a pandas DataFrame, got {type(df).__name__}")
        if duplicates not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicates={duplicates!r}; expected one of {DUPLICATE_POLICIES}")
        for role, name in (("user", user), ("item", item)):
            if name is None:
                raise ValueError(f"{role}=None; expected the name of the {role} id column")
        columns = {"user": user, "item": item, "rating": rating, "timestamp": timestamp}
        missing = [f"{role}={name!r}" for role, name in columns.items()
                   if name is not None and not _has_column(df, name)]
        if missing:
            raise ValueError(f"missing column(s) {', '.join(missing)}; the frame has columns {list(df.columns)}")
        if len(df) == 0:
            raise ValueError("the interactions frame is empty (0 rows); expected at least one interaction")

        users = _ids(_column(df, user), user)
        items = _ids(_column(df, item), item)
        values = _ratings(_column(df, rating), rating) if rating is not None else np.ones(len(df), dtype=np.float64)
        times = _timestamps(_column(df, timestamp), timestamp) if timestamp is not None else None

        user_ids, rows = _unique_ids(users, user)
        item_ids, cols = _unique_ids(items, item)
        return cls.from_codes(user_ids, rows, item_ids, cols, values, times, duplicates, rating)

    @classmethod
    def from_codes(cls, user_ids: np.ndarray, rows: np.ndarray, item_ids: np.ndarray, cols: np.ndarray,
                   values: np.ndarray, times: np.ndarray | None = None, duplicates: str = "error",
                   rating: str | None = "rating") -> "Interactions":
        """Build from each interaction's row and column code (indices into the sorted distinct ``user_ids`` and
        ``item_ids``), in source order, with float64 ratings (checked here) and int64 times: what
        :meth:`from_pandas` builds after reading its columns, and what the chunked reader
        (:func:`aerec.data.chunks.read_table`) builds without a frame. ``rating`` names the ratings' column in
        messages (None: implicit data, every value 1.0)."""
        if duplicates not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicates={duplicates!r}; expected one of {DUPLICATE_POLICIES}")
        if len(rows) == 0:
            raise ValueError("the interactions frame is empty (0 rows); expected at least one interaction")
        if rating is not None:
            _check_values(values, f"rating column {rating!r}")
        shape = (len(user_ids), len(item_ids))
        # one stable sort of the (row, column) keys gives the matrix's order, the duplicated pairs (neighbours in
        # it) and each entry's source row (the sort's permutation), where np.unique and two lexsorts took 3x
        # the time (evaluation/reading_memory.py)
        key = np.array(rows, dtype=np.int64)  # built in place: at 10 million rows each temporary is 80 MB
        key *= shape[1]
        key += cols
        order = np.argsort(key, kind="stable")
        key = key[order]
        repeated = key[1:] == key[:-1]
        if repeated.any():
            key, order, values, times = _resolve_duplicates(key, order, values, times, repeated, duplicates,
                                                            user_ids, item_ids)
            if duplicates == "sum":
                _check_values(values, "a sum of duplicated ratings")
        else:
            values = values[order]
            times = None if times is None else times[order]
        matrix = _csr_from_sorted_keys(key, values, shape)
        in_matrix_order = bool(np.all(order[1:] > order[:-1]))
        return cls(matrix, user_ids, item_ids, times, None if in_matrix_order else order)

    @classmethod
    def from_csr(cls, matrix, user_ids=None, item_ids=None, timestamps=None) -> "Interactions":
        """Wrap a users x items sparse matrix; ids default to 0..n-1.

        ``timestamps``, when given, is aligned with the canonical (sorted) CSR's data.
        """
        if not sp.issparse(matrix):
            raise TypeError(f"from_csr expects a scipy.sparse matrix, got {type(matrix).__name__}")
        m = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
        if m.ndim != 2:
            raise ValueError(f"matrix must be 2-D, got shape {m.shape}")
        if not m.has_canonical_format:
            if timestamps is not None:
                raise ValueError("timestamps need a canonical CSR (sorted indices, no duplicates)")
            m.sum_duplicates()
        _check_values(m.data, "matrix")
        user_ids = np.arange(m.shape[0]) if user_ids is None else np.asarray(user_ids)
        item_ids = np.arange(m.shape[1]) if item_ids is None else np.asarray(item_ids)
        times = None if timestamps is None else np.asarray(timestamps, dtype=np.int64)
        return cls(m, user_ids, item_ids, times)

    def to_pandas(self, user: str = "user", item: str = "item", rating: str = "rating", timestamp: str = "timestamp") -> pd.DataFrame:
        """Long frame of (user, item, rating[, timestamp]) with raw ids, in row-major order."""
        coo = self.matrix.tocoo()
        frame = {user: self.user_ids[coo.row], item: self.item_ids[coo.col], rating: coo.data}
        if self.timestamps is not None:
            frame[timestamp] = self.timestamps
        return pd.DataFrame(frame)

    # -- views --------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    @property
    def n_users(self) -> int:
        return self.matrix.shape[0]

    @property
    def n_items(self) -> int:
        return self.matrix.shape[1]

    @property
    def nnz(self) -> int:
        return self.matrix.nnz

    def user_index(self, raw_ids) -> np.ndarray:
        """Row indices of raw user ids (ValueError naming any unknown id)."""
        return _lookup(self.user_ids, raw_ids, "user")

    def item_index(self, raw_ids) -> np.ndarray:
        """Column indices of raw item ids (ValueError naming any unknown id)."""
        return _lookup(self.item_ids, raw_ids, "item")

    def keep_entries(self, mask: np.ndarray) -> "Interactions":
        """Same users and items, keeping only the stored entries where ``mask`` (aligned with data) is True."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self.nnz,):
            raise ValueError(f"mask has shape {mask.shape}, expected ({self.nnz},)")
        rows = np.repeat(np.arange(self.n_users), np.diff(self.matrix.indptr))[mask]
        matrix = _canonical_csr(rows, self.matrix.indices[mask], self.matrix.data[mask], self.shape)
        kept = {name: values[mask] for name, values in self._per_entry().items()}
        return Interactions(matrix, self.user_ids, self.item_ids, **kept)

    def select(self, rows=None, cols=None) -> "Interactions":
        """Sub-matrix of the given row and column indices (in that order), ids carried along."""
        rows = np.arange(self.n_users) if rows is None else np.asarray(rows, dtype=np.int64)
        cols = np.arange(self.n_items) if cols is None else np.asarray(cols, dtype=np.int64)
        sub = self.matrix[rows][:, cols]
        carried = {}
        per_entry = self._per_entry()
        if self.positions is None and np.any(np.diff(cols) < 0):
            # the matrix order is the source order; reordered columns would lose it, so keep it explicitly
            per_entry["positions"] = np.arange(self.nnz, dtype=np.int64)
        if per_entry:
            # carry each entry's timestamp and source row through the same selection
            picked = _entry_index(self.matrix)[rows][:, cols]
            picked.sort_indices()
            taken = picked.data.astype(np.int64) - 1
            carried = {name: values[taken] for name, values in per_entry.items()}
        sub = sp.csr_matrix(sub, dtype=np.float32)
        sub.sort_indices()
        return Interactions(sub, self.user_ids[rows], self.item_ids[cols], **carried)

    def compact(self) -> "Interactions":
        """Drop users and items without any interaction."""
        rows = np.flatnonzero(np.diff(self.matrix.indptr))
        cols = np.flatnonzero(np.bincount(self.matrix.indices, minlength=self.n_items))
        if len(rows) == self.n_users and len(cols) == self.n_items:
            return self
        return self.select(rows, cols)

    def source_order(self) -> np.ndarray:
        """Positions of ``matrix.data`` in source-row order: row by row, each row's entries as the source listed them.

        The order in which vae_cf's ``split_train_test_proportion`` indexes a user's items
        (its groupby keeps the file's row order within a user). Without ``positions``
        it is the matrix's own order.
        """
        if self.positions is None:
            return np.arange(self.nnz)
        rows = np.repeat(np.arange(self.n_users), np.diff(self.matrix.indptr))
        return np.lexsort((self.positions, rows))

    def _per_entry(self) -> dict[str, np.ndarray]:
        """The optional arrays aligned with ``matrix.data``, by field name."""
        return {name: values for name, values in (("timestamps", self.timestamps), ("positions", self.positions))
                if values is not None}

    def __repr__(self) -> str:
        kind = "with timestamps" if self.timestamps is not None else "no timestamps"
        return f"Interactions({self.n_users} users x {self.n_items} items, {self.nnz} entries, {kind})"


# -- helpers ----------------------------------------------------------------
def _has_column(df: pd.DataFrame, name) -> bool:
    try:
        return name in df.columns
    except TypeError:  # an unhashable name (a list) names no column
        return False


def _column(df: pd.DataFrame, name) -> pd.Series:
    """The one column called ``name``; a name shared by several columns (or a MultiIndex prefix) is refused."""
    column = df[name]
    if isinstance(column, pd.DataFrame):
        raise ValueError(f"{name!r} selects {column.shape[1]} columns of the frame ({list(column.columns)}); "
                         "expected the name of exactly one column")
    return column


#: The longest id (in characters) a user or item may have: URLs fit, a file swallowed by one field does not.
MAX_ID_CHARS = 4096


def _ids(column: pd.Series, name: str, offset: int = 0) -> np.ndarray:
    """The ids of ``column`` (a block of rows starting at row ``offset``, for the messages), checked."""
    if column.isna().any():
        bad = offset + int(column.isna().to_numpy().nonzero()[0][0])
        raise ValueError(f"column {name!r} has a missing id at row {bad}; expected an id on every row")
    values = column.to_numpy()
    if values.dtype == object:
        kinds = {type(v) for v in values[:1000]}
        if len(kinds) > 1:
            raise ValueError(f"column {name!r} mixes id types {sorted(k.__name__ for k in kinds)}; expected one type")
        lengths = pd.Series(values).str.len() if kinds == {str} else pd.Series([0])
        if lengths.max() > MAX_ID_CHARS:  # one 50 MB id took a 50 MB CSV past 2 GB (fixed-width copies of the ids)
            row = int(lengths.to_numpy().argmax())
            raise ValueError(f"column {name!r} has an id of {int(lengths.iloc[row]):,} characters at row {offset + row}; "
                             f"expected ids of at most {MAX_ID_CHARS:,} (a wrong separator or an unclosed quote "
                             "makes one field of a whole file)")
    return values


def _unique_ids(values: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The sorted distinct ids and each row's index into them; ids that cannot be ordered are a ValueError."""
    try:
        return np.unique(values, return_inverse=True)
    except TypeError as exc:  # e.g. str and int mixed past the first 1000 rows, or dicts
        kinds = sorted({type(v).__name__ for v in values})
        raise ValueError(f"column {name!r} holds ids that cannot be sorted together (types {kinds}: {exc}); "
                         "expected ids of one orderable type such as int or str") from exc


def _is_real_number_dtype(column: pd.Series) -> bool:
    return (pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
            and not pd.api.types.is_complex_dtype(column))


def _ratings(column: pd.Series, name: str) -> np.ndarray:
    if not _is_real_number_dtype(column):
        raise ValueError(f"rating column {name!r} has dtype {column.dtype}; expected numbers (not bool or complex)")
    return column.to_numpy(dtype=np.float64, na_value=np.nan)  # checked by from_codes


def _check_values(values: np.ndarray, what: str) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{what} has a non-finite value {_plain(values[bad])!r} at position {bad}; expected finite ratings")
    if (values <= 0).any():
        bad = int(np.flatnonzero(values <= 0)[0])
        raise ValueError(
            f"{what} has the value {_plain(values[bad])!r} at position {bad}; expected ratings > 0 "
            "(a sparse matrix cannot tell a 0 rating from 'not rated': shift the scale or drop them)"
        )
    with np.errstate(over="ignore"):  # the matrix's type: larger values become inf, tiny ones 0, refused below
        as_float32 = values.astype(np.float32)
    lost = ~np.isfinite(as_float32) | (as_float32 <= 0)
    if lost.any():
        bad = int(np.flatnonzero(lost)[0])
        raise ValueError(f"{what} has the value {_plain(values[bad])!r} at position {bad}, which float32 (the matrix's "
                         f"type) cannot hold; expected ratings from {_FLOAT32_TINY:g} to {_FLOAT32_MAX:g}")


def _timestamps(column: pd.Series, name: str, offset: int = 0) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(column):
        if column.isna().any():
            raise ValueError(f"timestamp column {name!r} has missing values; expected a time on every row")
        if getattr(column.dtype, "tz", None) is not None:
            column = column.dt.tz_convert(None)  # a time zone's times as UTC, which Unix seconds count from
        return (column.astype("datetime64[s]").astype("int64")).to_numpy()
    if not _is_real_number_dtype(column):
        raise ValueError(f"timestamp column {name!r} has dtype {column.dtype}; expected numbers or datetimes")
    if column.dtype.kind in "iu" and not column.isna().any():
        # integers as they are: through float64 those above 2**53 (nanoseconds) would be rounded
        values = column.to_numpy(dtype=np.uint64 if column.dtype.kind == "u" else np.int64)
        if values.dtype.kind == "u":
            _check_int64_range(values > _INT64.max, column, name, offset)
        return values.astype(np.int64)
    values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    if not np.isfinite(values).all():
        raise ValueError(f"timestamp column {name!r} has NaN or inf; expected finite times")
    _check_int64_range((values < _INT64.min) | (values >= 2.0**63), column, name, offset)
    return values.astype(np.int64)


def _check_int64_range(outside: np.ndarray, column: pd.Series, name: str, offset: int = 0) -> None:
    if outside.any():
        bad = int(np.flatnonzero(outside)[0])
        raise ValueError(f"timestamp column {name!r} has the value {_plain(column.iloc[bad])!r} at row {offset + bad}; "
                         f"expected times within int64 ({_INT64.min} to {_INT64.max})")


def _resolve_duplicates(key, order, values, times, repeated, policy, user_ids, item_ids):
    """``(key, order, values, times)`` with each (user, item) pair once, as ``policy`` says: ``key`` is the sorted
    keys (row x items + column), ``order`` the source row of each (a stable sort: a pair's rows in source order),
    ``values`` and ``times`` in source order; ``repeated[k]``: key k + 1 equals key k. The source row kept is the
    pair's first ("last": its last); "sum", "mean", "max" combine the ratings and keep the latest time."""
    starts = np.flatnonzero(np.concatenate(([True], ~repeated)))
    counts = np.diff(np.append(starts, len(key)))
    if policy == "error":
        dup = int(np.flatnonzero(counts > 1)[0])
        u, i = divmod(int(key[starts[dup]]), len(item_ids))
        raise ValueError(
            f"{int((counts > 1).sum())} duplicated (user, item) pairs, e.g. user {_plain(user_ids[u])!r}, item {_plain(item_ids[i])!r} "
            f"appears {int(counts[dup])} times; pass duplicates='first', 'last', 'sum', 'mean' or 'max'"
        )
    if policy in ("first", "last"):
        kept = order[starts if policy == "first" else starts + counts - 1]
        return key[starts], kept, values[kept], None if times is None else times[kept]
    grouped = values[order]
    combined = {"sum": lambda: np.add.reduceat(grouped, starts),
                "mean": lambda: np.add.reduceat(grouped, starts) / counts,
                "max": lambda: np.maximum.reduceat(grouped, starts)}[policy]()
    new_times = None if times is None else np.maximum.reduceat(times[order], starts)
    return key[starts], order[starts], combined, new_times


def _csr_from_sorted_keys(key, values, shape) -> sp.csr_matrix:
    """CSR of the distinct sorted keys (row x columns + column; overwritten) with their values, in that order."""
    indptr = np.searchsorted(key, np.arange(shape[0] + 1, dtype=np.int64) * shape[1])
    index_dtype = np.int32 if max(shape[1], len(key)) < 2**31 else np.int64
    cols = np.remainder(key, shape[1], out=key).astype(index_dtype)
    matrix = sp.csr_matrix((np.asarray(values, dtype=np.float32), cols, indptr.astype(index_dtype)), shape=shape)
    matrix.has_sorted_indices = True
    return matrix


def _canonical_csr(rows, cols, values, shape) -> sp.csr_matrix:
    """CSR with sorted indices from unique (row, col) pairs, data kept in (row, col) order."""
    order = np.lexsort((cols, rows))
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
    index_dtype = np.int32 if max(shape[1], len(rows)) < 2**31 else np.int64
    matrix = sp.csr_matrix(
        (np.asarray(values, dtype=np.float32)[order], np.asarray(cols)[order].astype(index_dtype), indptr.astype(index_dtype)),
        shape=shape,
    )
    matrix.has_sorted_indices = True
    return matrix


def _entry_index(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """A CSR with the pattern of ``matrix`` whose values are 1 + the position of each entry in ``data``."""
    return sp.csr_matrix((np.arange(1, matrix.nnz + 1, dtype=np.float64), matrix.indices, matrix.indptr), shape=matrix.shape)


def _lookup(known: np.ndarray, raw_ids, what: str) -> np.ndarray:
    raw = np.atleast_1d(np.asarray(raw_ids))
    index = pd.Index(known).get_indexer(raw)
    if (index < 0).any():
        bad = _plain(raw[int(np.flatnonzero(index < 0)[0])])
        raise ValueError(f"unknown {what} id {bad!r}; it is not among the {len(known)} {what}s of this data")
    return index


def _plain(value):
    """A numpy scalar as the Python value it holds, for readable error messages."""
    return value.item() if isinstance(value, np.generic) else value
