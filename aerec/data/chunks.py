"""Interactions read in chunks: a Parquet or CSV file, or a directory of them, streamed with pyarrow.

:func:`open_table` looks at the input (its files, format, separator and columns) without reading
its rows; :func:`iter_chunks` then yields bounded blocks of rows as numpy arrays, so a pass over an
input of any size holds one block at a time. This is what sharded inference
(:mod:`aerec.inference`) reads; the whole-file readers of :mod:`aerec.data.readers` build an
:class:`~aerec.data.interactions.Interactions` at once.

Ids keep the type the file gives them (a Parquet column's type); a CSV's id columns are read as text, and
:func:`canonical_ids` turns them into integers when every id of the input is one, as pandas' reader does
for the whole file. :func:`id_hash` maps each id to a 64-bit hash that does not depend on where or in
which block the id appears (an integer id ``7`` and the text ``"7"`` hash alike), which is what assigns a
user to a shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from aerec.data.readers import choose_columns, file_header, movielens_ratings_path, text_layout
from aerec.state import sha256_of_file

__all__ = ["Table", "canonical_ids", "id_hash", "iter_chunks", "open_table"]

#: File name endings read as text (CSV with any separator) and as Parquet.
TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".dat", ".data")
PARQUET_SUFFIXES = (".parquet", ".pq")
#: Rows per block of a pass (about 24 MB of ids and ratings as numpy arrays).
CHUNK_ROWS = 1 << 20
#: Text ids made integers: optional sign and up to 18 digits (what int64 surely holds).
_INTEGER_TEXT = r"^[+-]?[0-9]{1,18}$"


@dataclasses.dataclass(frozen=True)
class Table:
    """An input of interactions as :func:`open_table` found it (no rows read yet)."""

    path: Path
    files: tuple  # the data files, in a fixed (sorted) order
    format: str  # "parquet" or "csv"
    columns: dict  # role (user, item, rating) -> column name (rating None: every entry 1.0)
    sep: str | None = None  # CSV only
    names: tuple | None = None  # CSV without a header: the columns' names by position

    def estimated_rows(self) -> int:
        """Rows of the input: exact for Parquet (its footers), estimated for text from the first lines' length."""
        if self.format == "parquet":
            import pyarrow.parquet

            return sum(pyarrow.parquet.ParquetFile(file).metadata.num_rows for file in self.files)
        total = 0
        for file in self.files:
            with open(file, "rb") as handle:
                head = handle.read(1 << 20)
            lines = max(1, head.count(b"\n"))
            total += int(os.path.getsize(file) / max(1, len(head)) * lines) + 1
        return total

    def fingerprint(self) -> str:
        """sha256 over the files' names (relative to the input), sizes and contents: any change of the input
        changes it."""
        digest = hashlib.sha256()
        for file in self.files:
            name = file.name if file == self.path else os.path.relpath(file, self.path)
            digest.update(f"{name}\0{os.path.getsize(file)}\0".encode())
            digest.update(bytes.fromhex(sha256_of_file(file)))
        return digest.hexdigest()


def open_table(path, user: str | None = None, item: str | None = None, rating: str | bool | None = None,
               sep: str | None = None) -> Table:
    """The input at ``path``: a Parquet or CSV file, a MovieLens folder (its ratings file), or a directory whose
    data files (hidden and ``_``-prefixed names skipped, sub-directories included) are all Parquet or all text.

    Columns are chosen as :func:`aerec.data.readers.read_interactions` chooses them (the names given, else by
    their names; a text file without a header has user, item[, rating] first), from the first file; every
    other file must have them too. ``rating=False`` reads none (every entry 1.0).
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist; expected a Parquet or CSV file or a directory of them")
    files = _data_files(path)
    suffixes = sorted({_kind(file) for file in files})
    if len(suffixes) > 1:
        counts = ", ".join(f"{sum(_kind(f) == kind for f in files)} {kind}" for kind in suffixes)
        raise ValueError(f"{path} mixes formats ({counts} files); expected files of one format (all Parquet or all "
                         "CSV)")
    kind = suffixes[0]
    roles = {"user": user, "item": item, "rating": rating}
    if kind == "parquet":
        header = file_header(files[0])
        layout_sep, names = None, None
    else:
        layout_sep, names = text_layout(files[0], sep)
        header = list(names) if names is not None else _text_header(files[0], layout_sep)
        if len(layout_sep) > 1 and layout_sep != "::":
            raise ValueError(f"{files[0]}: separator {layout_sep!r}; the chunked reader takes one character or '::'")
    columns = choose_columns(files[0], header, roles)
    for other in files[1:]:
        other_header = file_header(other) if kind == "parquet" else (
            header if names is not None else _text_header(other, layout_sep))
        missing = [name for name in columns.values() if name is not None and name not in other_header]
        if missing:
            raise ValueError(f"{other} has no column(s) {missing} that {files[0].name} has; expected the files of "
                             f"{path} to share their columns")
    return Table(path, tuple(files), kind, columns, layout_sep, tuple(names) if names is not None else None)


def _kind(file: Path) -> str:
    return "parquet" if file.suffix.lower() in PARQUET_SUFFIXES else "text"


def _data_files(path: Path) -> list:
    if path.is_file():
        return [path]
    try:  # a MovieLens folder: its ratings file
        return [movielens_ratings_path(path)]
    except ValueError:
        pass
    files = sorted(file for file in path.rglob("*") if file.is_file() and not any(
        part.startswith((".", "_")) for part in file.relative_to(path).parts))
    data = [file for file in files if file.suffix.lower() in TEXT_SUFFIXES + PARQUET_SUFFIXES]
    if not data:
        others = sorted({file.suffix or file.name for file in files})[:5]
        raise ValueError(f"{path} holds no Parquet or CSV files (found {others or 'nothing'}); expected files ending "
                         f"in {', '.join(PARQUET_SUFFIXES + TEXT_SUFFIXES)}")
    if len(data) < len(files):
        ignored = sorted({file.suffix or file.name for file in files if file not in data})[:5]
        raise ValueError(f"{path} mixes formats: besides {len(data)} data file(s) it holds {ignored}; expected "
                         "files of one format (all Parquet or all CSV)")
    return data


def _text_header(file: Path, sep: str) -> list:
    first = open(file, encoding="utf-8", errors="replace").readline(1 << 20).rstrip("\r\n")
    return [field.strip() for field in first.split(sep)]


def iter_chunks(table: Table, rows: int = CHUNK_ROWS):
    """Yield ``{"user", "item", "rating"}`` numpy arrays for blocks of about ``rows`` rows, file by file in order;
    ``rating`` is float64 (1.0 where the input has no rating column), ids are as the file types them (a text
    file's as strings: see :func:`canonical_ids`)."""
    for file in table.files:
        for batch in (_parquet_batches(table, file, rows) if table.format == "parquet" else
                      _text_batches(table, file, rows)):
            for start in range(0, batch.num_rows, rows):  # a text block is sized in bytes: cut to rows
                yield _arrays(table, batch.slice(start, rows), file)


def _parquet_batches(table: Table, file: Path, rows: int):
    import pyarrow.parquet

    names = [name for name in table.columns.values() if name is not None]
    try:
        yield from pyarrow.parquet.ParquetFile(file).iter_batches(batch_size=rows, columns=names, use_threads=False)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"cannot read {file} as Parquet: {exc}") from exc


def _text_batches(table: Table, file: Path, rows: int):
    import pyarrow as pa
    import pyarrow.csv as csv

    ids = {table.columns["user"]: pa.string(), table.columns["item"]: pa.string()}
    if table.columns["rating"] is not None:
        ids[table.columns["rating"]] = pa.float64()
    names = [name for name in table.columns.values() if name is not None]
    read = csv.ReadOptions(column_names=list(table.names) if table.names else None, block_size=max(1 << 16, rows * 24),
                           use_threads=False)
    sep = "\t" if table.sep == "::" else table.sep
    source = _Replacing(open(file, "rb"), b"::", b"\t") if table.sep == "::" else file
    try:
        reader = csv.open_csv(source, read_options=read, parse_options=csv.ParseOptions(delimiter=sep),
                              convert_options=csv.ConvertOptions(include_columns=names, column_types=ids,
                                                                 strings_can_be_null=False))
        yield from reader
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ValueError(f"cannot parse {file} with separator {table.sep!r}: {exc}") from exc


def _arrays(table: Table, batch, file: Path) -> dict:
    columns = table.columns
    out = {}
    for role in ("user", "item"):
        column = batch.column(batch.schema.get_field_index(columns[role]))
        if column.null_count:
            raise ValueError(f"{file}: column {columns[role]!r} ({role} ids) has {column.null_count} missing value(s)")
        out[role] = column.to_numpy(zero_copy_only=False)
    if columns["rating"] is None:
        out["rating"] = np.ones(batch.num_rows, dtype=np.float64)
    else:
        column = batch.column(batch.schema.get_field_index(columns["rating"]))
        try:
            out["rating"] = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{file}: column {columns['rating']!r} (ratings) is not numeric: {exc}") from exc
    return out


def integer_text(ids: np.ndarray) -> np.ndarray:
    """Which entries of an id array are integers written as text (every entry of an integer array)."""
    if ids.dtype.kind in "iu":
        return np.ones(len(ids), dtype=bool)
    if ids.dtype.kind != "O" and ids.dtype.kind != "U":
        return np.zeros(len(ids), dtype=bool)
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.match_substring_regex(pa.array(ids, type=pa.string()), _INTEGER_TEXT).to_numpy(zero_copy_only=False)


def canonical_ids(ids: np.ndarray, as_integers: bool) -> np.ndarray:
    """Text ids as int64 when ``as_integers`` (every id of the input is an integer), else unchanged."""
    if as_integers and ids.dtype.kind not in "iu":
        return np.asarray(ids.astype(np.int64))
    return ids


def id_hash(ids: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each id (pandas' ``hash_array``, fixed key): the same for the same id whatever the block,
    file or process; an integer and the integer's text hash alike."""
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return pd.util.hash_array(ids.astype(np.int64, copy=False))
    if ids.dtype.kind == "f":
        return pd.util.hash_array(ids)
    ids = ids.astype(object, copy=False)
    hashes = np.empty(len(ids), dtype=np.uint64)
    integer = integer_text(ids)
    if integer.any():
        hashes[integer] = pd.util.hash_array(ids[integer].astype(np.int64))
    if not integer.all():
        hashes[~integer] = pd.util.hash_array(ids[~integer].astype(str).astype(object))
    return hashes


class _Replacing(io.RawIOBase):
    """A binary file read with every ``old`` (two bytes) replaced by ``new`` (one byte): ``ratings.dat``'s ``::``
    as a tab, streamed (a ``::`` split across two reads is joined first)."""

    def __init__(self, handle, old: bytes, new: bytes):
        self.handle, self.old, self.new, self.carry, self.pending = handle, old, new, b"", b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            read = self.handle.read(max(1, len(buffer)))
            data = (self.carry + read).replace(self.old, self.new)
            self.carry = b""
            if read and data.endswith(self.old[:1]):  # half of a pair: joined with the next read
                data, self.carry = data[:-1], data[-1:]
            self.pending = data
            if not read:
                break
        data, self.pending = self.pending[:len(buffer)], self.pending[len(buffer):]
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self.handle.close()
        super().close()
