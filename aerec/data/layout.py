"""What an interactions file holds, found without reading its rows: the MovieLens release's ratings file, a
text file's separator and header, the columns of each role (user, item, rating, timestamp), and whether this
process has the memory to read it.

Shared by the whole-file readers (:mod:`aerec.data.readers`) and the block reader (:mod:`aerec.data.chunks`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from aerec.data.datasets import DATASETS, find_dataset_dir

#: The longest first line read to sniff a file's header and separator.
MAX_FIRST_LINE = 2**20


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


#: Column names :func:`read_interactions` recognises for each role (compared case-insensitively), in order.
COLUMN_NAMES = {
    "user": ("user", "user_id", "userid", "uid", "customer_id", "customer", "visitorid"),
    "item": ("item", "item_id", "itemid", "iid", "movie_id", "movieid", "product_id", "productid", "song_id",
             "track_id", "isbn"),
    "rating": ("rating", "ratings", "score", "stars", "value"),
    "timestamp": ("timestamp", "time", "ts", "datetime", "date"),
}


_SEPARATORS = ("::", "\t", ";", "|", ",")


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


def text_header(file: Path, sep: str) -> list:
    """The names of a text file's header as the CSV reader will see them (quotes removed, spaces kept)."""
    import csv

    with open(file, encoding="utf-8", errors="replace") as handle:
        first = handle.readline(1 << 20).rstrip("\r\n")
    if len(sep) > 1:
        first, sep = first.replace(sep, "\t"), "\t"
    return next(csv.reader([first], delimiter=sep), [])
