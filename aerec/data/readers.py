"""Readers: MovieLens releases and generic CSV / Parquet files -> :class:`Interactions`.

Nothing here downloads anything: every reader takes a local path (or finds a
known dataset under ``data_dir`` / ``$AEREC_DATA_DIR``) and verifies the
published checksum when one is known.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pandas as pd

from aerec.data.datasets import DATASETS, find_dataset_dir, verify_file
from aerec.data.interactions import Interactions

MOVIELENS_COLUMNS = ["user", "item", "rating", "timestamp"]
#: Peak memory of reading a text file, as a multiple of its size: 5.9x measured for a 72 MiB, 3-million-row
#: ratings CSV (pandas' frame, the ids' codes, the sorted CSR); 8x leaves room for longer ids.
TEXT_READ_FACTOR = 8
#: Peak memory per row and column read from Parquet (8-byte values and the copies of the text path).
PARQUET_BYTES_PER_CELL = 40
#: The longest first line read to sniff a file's header and separator.
MAX_FIRST_LINE = 2**20


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
    frame = _read_movielens_frame(path)
    return Interactions.from_pandas(frame, "user", "item", "rating", "timestamp")


def movielens_ratings_path(name_or_path, data_dir=None) -> Path:
    """The ratings file of a known dataset name, a dataset folder, or a file path."""
    if isinstance(name_or_path, str) and name_or_path in DATASETS:
        folder = find_dataset_dir(name_or_path, data_dir)
        return folder / DATASETS[name_or_path].ratings_file
    path = Path(name_or_path)
    if path.is_dir():
        for candidate in ("u.data", "ratings.dat", "ratings.csv"):
            if (path / candidate).is_file():
                return path / candidate
        raise ValueError(f"folder {path} has no u.data, ratings.dat or ratings.csv; expected a MovieLens folder")
    if path.is_file():
        return path
    raise ValueError(f"unknown dataset {str(name_or_path)!r}; expected one of {sorted(DATASETS)} or an existing path")


def _read_movielens_frame(path: Path) -> pd.DataFrame:
    if path.name == "u.data":
        return _read_table(path, sep="\t", header=None)
    if path.suffix == ".dat":
        # "::" separators: swap for tabs so that the fast C parser reads the file
        text = path.read_bytes().replace(b"::", b"\t")
        return _read_table(io.BytesIO(text), sep="\t", header=None, name=str(path))
    if path.suffix == ".csv":
        frame = _read_table(path, sep=",", header=0)
        return frame
    raise ValueError(f"{path.name!r} is not a MovieLens ratings file; expected u.data, ratings.dat or ratings.csv")


def _read_table(source, sep: str, header, name: str | None = None) -> pd.DataFrame:
    name = name or str(source)
    try:
        frame = pd.read_csv(source, sep=sep, header=header, dtype=str if header is None else None, engine="c")
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"cannot parse {name}: {exc}") from exc
    if frame.shape[1] != 4:
        raise ValueError(f"{name} has {frame.shape[1]} columns; expected 4 (user, item, rating, timestamp)")
    frame.columns = MOVIELENS_COLUMNS
    for column in MOVIELENS_COLUMNS:
        numeric = pd.to_numeric(frame[column], errors="coerce")
        if numeric.isna().any():
            row = int(numeric.isna().to_numpy().nonzero()[0][0])
            raise ValueError(f"{name}: column {column} has a non-numeric value {frame[column].iloc[row]!r} at data row {row}")
        frame[column] = numeric
    return frame


def check_reading_memory(path, needed: int, what: str) -> None:
    """Refuse, before reading, a file whose reading needs more memory than this process may still allocate (a
    2.7 MB Parquet file of 300 million identical rows drove a read past 5.8 GB)."""
    from aerec._torch import available_memory_bytes

    available = available_memory_bytes()
    if available is not None and needed > available:
        raise MemoryError(f"{path} holds {what}; reading it needs about {_size(needed)} and {_size(available)} is "
                          "available: read a sample or a part of it, or use a machine with more memory")


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def check_text_size(path) -> None:
    size = os.path.getsize(path)
    check_reading_memory(path, TEXT_READ_FACTOR * size, f"{size / 2**20:,.0f} MiB of text")


def check_parquet_size(path, columns: list | None = None) -> None:
    """Estimate a Parquet file's read from its footer (rows, and the uncompressed bytes of text columns)."""
    import pyarrow.parquet

    try:
        metadata = pyarrow.parquet.ParquetFile(path).metadata
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path} as Parquet: {exc}") from exc
    names = [metadata.schema.column(i).name for i in range(metadata.num_columns)]
    chosen = [i for i, name in enumerate(names) if columns is None or name in columns]
    text = sum(metadata.row_group(g).column(i).total_uncompressed_size for g in range(metadata.num_row_groups)
               for i in chosen if metadata.schema.column(i).physical_type == "BYTE_ARRAY")
    rows = metadata.num_rows
    check_reading_memory(path, rows * len(chosen) * PARQUET_BYTES_PER_CELL + 4 * text,
                         f"{rows:,} rows of {len(chosen)} column(s)")


def read_csv(path, user: str = "user", item: str = "item", rating: str | None = None, timestamp: str | None = None,
             duplicates: str = "error", **read_kwargs) -> Interactions:
    """Read a CSV of interactions (one row each) with the given column names."""
    if isinstance(path, (str, os.PathLike)) and os.path.isfile(path):
        check_text_size(path)
    try:
        frame = pd.read_csv(path, **read_kwargs)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"cannot parse {path}: {exc}") from exc
    return Interactions.from_pandas(frame, user, item, rating, timestamp, duplicates)


def read_parquet(path, user: str = "user", item: str = "item", rating: str | None = None, timestamp: str | None = None,
                 duplicates: str = "error") -> Interactions:
    """Read a Parquet file of interactions (needs pyarrow: ``pip install aerec[parquet]``)."""
    try:
        check_parquet_size(path)
        frame = pd.read_parquet(path)
    except ImportError as exc:
        raise ImportError("reading Parquet needs pyarrow: pip install 'aerec[parquet]'") from exc
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path} as Parquet: {exc}") from exc
    return Interactions.from_pandas(frame, user, item, rating, timestamp, duplicates)


#: Column names :func:`read_interactions` recognises for each role (compared case-insensitively), in order.
COLUMN_NAMES = {
    "user": ("user", "user_id", "userid", "uid", "customer_id", "customer", "visitorid"),
    "item": ("item", "item_id", "itemid", "iid", "movie_id", "movieid", "product_id", "productid", "song_id",
             "track_id", "isbn"),
    "rating": ("rating", "ratings", "score", "stars", "value"),
    "timestamp": ("timestamp", "time", "ts", "datetime", "date"),
}
_SEPARATORS = ("::", "\t", ";", "|", ",")


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
    if path.suffix == ".parquet":
        header = file_header(path)
        frame = None
    else:
        sep, names = text_layout(path, sep)
        check_text_size(path)
        if names is not None:  # no header: user, item[, rating[, timestamp]]
            frame = _read_text(path, sep, header=None)
            frame.columns = names[:frame.shape[1]]
        else:
            frame = _read_text(path, sep, header=0)
        header = list(frame.columns)
    chosen = choose_columns(path, header, {"user": user, "item": item, "rating": rating, "timestamp": timestamp})
    if frame is None:
        columns = [name for name in chosen.values() if name is not None]
        check_parquet_size(path, columns)
        frame = pd.read_parquet(path, columns=columns)
    return Interactions.from_pandas(frame, chosen["user"], chosen["item"], chosen["rating"], chosen["timestamp"],
                                    duplicates)


def text_layout(path: Path, sep: str | None) -> tuple[str, list | None]:
    """``(separator, names)`` of a text file of interactions: the separator given or sniffed from the first line
    (``::``, tab, ``;``, ``|``, else ``,``), and the column names of a file without a header (every field of its
    first line a number: user, item[, rating[, timestamp]]), None when the first line is a header."""
    first = _first_line(path)
    sep = sep if sep is not None else next((s for s in _SEPARATORS if s in first), ",")
    fields = [field.strip() for field in first.split(sep)]
    if not (fields and all(_is_number(field) for field in fields)):
        return sep, None
    if len(fields) < 2:
        raise ValueError(f"{path}: its first line {first!r} has {len(fields)} field(s) with separator "
                         f"{sep!r}; expected at least user and item (name the separator: sep=, --sep)")
    return sep, ["user", "item", "rating", "timestamp", *(f"column_{i}" for i in range(4, len(fields)))][:len(fields)]


def choose_columns(path, header: list, roles: dict) -> dict:
    """The column of each role (``user``, ``item``, ``rating``, ``timestamp``) in ``header``: the name given, none
    for ``False``, else the first header entry matching the role's :data:`COLUMN_NAMES` (case-insensitively)."""
    chosen = {}
    for role, given in roles.items():
        if given is False:
            chosen[role] = None
        elif given is not None:
            if given not in header:
                raise ValueError(f"{path}: no column {given!r} for the {role}; the file has columns {header}")
            chosen[role] = given
        else:
            lowered = {str(name).lower(): name for name in reversed(header)}
            chosen[role] = next((lowered[name] for name in COLUMN_NAMES[role] if name in lowered), None)
    missing = [role for role in ("user", "item") if chosen.get(role, "") is None]
    if missing:
        raise ValueError(f"{path}: no {' or '.join(missing)} column among {header}; name them (user=, item=; on "
                         f"the command line --user-col, --item-col)")
    return chosen


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            line = handle.readline(MAX_FIRST_LINE + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if len(line) > MAX_FIRST_LINE:  # a 2 GB file of zero bytes was one line, read whole, then parsed
        raise ValueError(f"{path}: its first line is longer than {MAX_FIRST_LINE:,} characters; expected a header "
                         "or a row of interactions (is it a text file of interactions?)")
    return line.rstrip("\r\n")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _read_text(path: Path, sep: str, header) -> pd.DataFrame:
    if len(sep) > 1:  # "::" (ratings.dat): swapped for tabs so that the fast C parser reads the file
        source, sep = io.BytesIO(path.read_bytes().replace(sep.encode(), b"\t")), "\t"
    else:
        source = path
    try:
        return pd.read_csv(source, sep=sep, header=header, engine="c")
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"cannot parse {path} with separator {sep!r}: {exc}") from exc


def file_header(path) -> list:
    """The column names of a CSV or Parquet file (its header only; ValueError naming the file if unreadable)."""
    try:
        if str(path).endswith(".parquet"):
            import pyarrow.parquet

            return list(pyarrow.parquet.read_schema(path).names)
        return list(pd.read_csv(path, nrows=0).columns)
    except ImportError as exc:
        raise ImportError("reading Parquet needs pyarrow: pip install 'aerec[parquet]'") from exc
    except Exception as exc:  # any unreadable header is the user's file, reported in one line
        raise ValueError(f"{path}: cannot read its header: {exc}") from exc


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
