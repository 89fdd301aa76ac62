"""Readers: MovieLens releases and generic CSV / Parquet files -> :class:`Interactions`.

Files are read in blocks of rows (:func:`aerec.data.chunks.read_table`): no frame of a whole file is built,
and a file whose reading needs more memory than this process may allocate is refused before its rows are
read. Nothing here downloads anything: every reader takes a local path (or finds a
known dataset under ``data_dir`` / ``$AEREC_DATA_DIR``) and verifies the
published checksum when one is known.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pandas as pd

from aerec.data.chunks import Table, open_table, read_table
from aerec.data.datasets import verify_file
from aerec.data.interactions import Interactions
from aerec.data.layout import (COLUMN_NAMES, check_reading_memory, choose_columns, file_header,  # noqa: F401
                               movielens_ratings_path, text_header, text_layout)

MOVIELENS_COLUMNS = ["user", "item", "rating", "timestamp"]
#: Peak memory of reading a text file through pandas (:func:`read_csv` with pandas' keyword arguments), as a
#: multiple of its size: 5.9x measured for a 72 MiB, 3-million-row ratings CSV (pandas' frame, the ids' codes, the
#: sorted CSR); 8x leaves room for longer ids. The other readers read in blocks: see
#: :meth:`aerec.data.chunks.Table.read_bytes`.
TEXT_READ_FACTOR = 8


def load_movielens(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None, verify: bool = True) -> Interactions:
    """Load a MovieLens release as explicit ratings with timestamps.

    Parameters
    ----------
    name_or_path : str or path
        A known name (``ml-100k``, ``ml-1m``, ``ml-10m``, ``ml-20m``, ``ml-25m``,
        ``ml-latest-small``), a dataset folder, or a ratings file (``u.data``,
        ``ratings.dat`` with ``::`` separators, or ``ratings.csv`` with a header).
    data_dir : path, optional
        Parent folder of the dataset folders; defaults to ``$AEREC_DATA_DIR``,
        and for ml-latest-small to the copy shipped with aerec.
    verify : bool
        Check the file against its published checksum (a mismatch is a
        ``ValueError``); ``False`` skips the check.
    """
    path = movielens_ratings_path(name_or_path, data_dir)
    if verify:
        verify_file(path)
    return read_table(movielens_table(path), numeric_ids=True)




def movielens_table(path: Path):
    """A MovieLens ratings file as a :class:`~aerec.data.chunks.Table` of its four columns (user, item, rating,
    timestamp, in that order): ``u.data`` (tabs), ``ratings.dat`` (``::``) without a header, ``ratings.csv`` with
    one."""
    if path.name == "u.data":
        sep, names = "\t", tuple(MOVIELENS_COLUMNS)
    elif path.suffix == ".dat":
        sep, names = "::", tuple(MOVIELENS_COLUMNS)
    elif path.suffix == ".csv":
        sep, names = ",", None
    else:
        raise ValueError(f"{path.name!r} is not a MovieLens ratings file; expected u.data, ratings.dat or ratings.csv")
    header = list(names) if names is not None else text_header(path, sep)
    if len(header) != 4 or len(set(header)) != 4:
        raise ValueError(f"{path} has the columns {header}; expected 4 (user, item, rating, timestamp)")
    return Table(path, (path,), "text", dict(zip(MOVIELENS_COLUMNS, header)), sep, names)






def check_text_size(path) -> None:
    size = os.path.getsize(path)
    check_reading_memory(path, TEXT_READ_FACTOR * size, f"{size / 2**20:,.0f} MiB of text")


def read_csv(path, user: str = "user", item: str = "item", rating: str | None = None, timestamp: str | None = None,
             duplicates: str = "error", **read_kwargs) -> Interactions:
    """Read a CSV of interactions (one row each) with the given column names.

    A file is read in blocks (:func:`aerec.data.chunks.read_table`: no frame of the whole file is built);
    ``read_kwargs`` (any of :func:`pandas.read_csv`'s) or a buffer read it through pandas instead.
    """
    if isinstance(path, (str, os.PathLike)) and os.path.isfile(path):
        if not read_kwargs:
            return _read_columns(Path(path), "text", {"user": user, "item": item, "rating": rating,
                                                      "timestamp": timestamp}, duplicates, sep=",")
        check_text_size(path)
    try:
        frame = pd.read_csv(path, **read_kwargs)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"cannot parse {path}: {exc}") from exc
    return Interactions.from_pandas(frame, user, item, rating, timestamp, duplicates)


def read_parquet(path, user: str = "user", item: str = "item", rating: str | None = None, timestamp: str | None = None,
                 duplicates: str = "error") -> Interactions:
    """Read a Parquet file of interactions (needs pyarrow: ``pip install aerec[parquet]``), in blocks of rows
    (:func:`aerec.data.chunks.read_table`)."""
    return _read_columns(Path(path), "parquet", {"user": user, "item": item, "rating": rating,
                                                 "timestamp": timestamp}, duplicates)


def _read_columns(path: Path, kind: str, names: dict, duplicates: str, sep: str | None = None) -> Interactions:
    """A file's named columns (a role named None: user and item refused; rating every entry 1.0; no times) read
    by :func:`aerec.data.chunks.read_table`."""
    for role in ("user", "item"):
        if names[role] is None:
            raise ValueError(f"{role}=None; expected the name of the {role} id column")
    if kind == "parquet":
        try:
            import pyarrow.parquet

            header = list(pyarrow.parquet.read_schema(path).names)
        except ImportError as exc:
            raise ImportError("reading Parquet needs pyarrow: pip install 'aerec[parquet]'") from exc
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read {path} as Parquet: {exc}") from exc
    else:
        header = text_header(path, sep)
    missing = [f"{role}={name!r}" for role, name in names.items() if name is not None and name not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; the file has columns {header}")
    return read_table(Table(path, (path,), kind, names, sep), duplicates)




def read_interactions(path, user: str | None = None, item: str | None = None, rating: str | bool | None = None,
                      timestamp: str | bool | None = None, sep: str | None = None, duplicates: str = "error",
                      verify: bool = True) -> Interactions:
    """Read an interactions file whatever its name: CSV (any separator, with or without a header) or Parquet.

    Columns are found by what the file holds, never by its name: the names given, else the first
    header entry matching a role's :data:`COLUMN_NAMES` (MovieLens' ``userId``/``movieId`` included).
    A file without a header (every field of its first line a number, as ``u.data`` and ``ratings.dat``)
    has its columns in the order user, item[, rating[, timestamp]]. ``rating``/``timestamp`` ``False``
    reads none (every entry 1.0 / no times). The separator is sniffed from the first line unless
    given. A file of a known MovieLens release is checked against its checksum unless ``verify=False``.
    """
    path = Path(path)
    if verify and path.is_file():
        verify_file(path)
    return read_table(open_table(path, user=user, item=item, rating=rating, sep=sep, timestamp=timestamp), duplicates)












def optional_columns(header, rating: str = "rating", timestamp: str = "timestamp") -> dict:
    """``{"rating": ..., "timestamp": ...}``: the named columns where the header has them, else None (1.0, no time)."""
    return {"rating": rating if rating in header else None, "timestamp": timestamp if timestamp in header else None}


def load_item_titles(name_or_path, data_dir=None) -> dict:
    """Map raw item id -> title from a MovieLens movies file (u.item, movies.dat or movies.csv)."""
    folder = movielens_ratings_path(name_or_path, data_dir).parent
    if (folder / "u.item").is_file():
        frame = pd.read_csv(folder / "u.item", sep="|", header=None, encoding="latin-1", usecols=[0, 1])
    elif (folder / "movies.dat").is_file():
        text = (folder / "movies.dat").read_bytes().replace(b"::", b"\t")
        frame = pd.read_csv(io.BytesIO(text), sep="\t", header=None, encoding="latin-1", usecols=[0, 1], quoting=3)
    elif (folder / "movies.csv").is_file():
        frame = pd.read_csv(folder / "movies.csv", usecols=[0, 1])
    else:
        raise ValueError(f"no u.item, movies.dat or movies.csv in {folder}; cannot name the items")
    return dict(zip(frame.iloc[:, 0].to_numpy(), frame.iloc[:, 1].astype(str)))
