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

from aerec.data.layout import (check_reading_memory, choose_columns, file_header, movielens_ratings_path,
                                text_header, text_layout)
from aerec.state import sha256_of_file

__all__ = ["Table", "canonical_ids", "id_hash", "iter_chunks", "open_table", "read_table"]

#: File name endings read as text (CSV with any separator) and as Parquet.
TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".dat", ".data")
PARQUET_SUFFIXES = (".parquet", ".pq")
#: Rows per block of a pass (about 24 MB of ids and ratings as numpy arrays).
CHUNK_ROWS = 1 << 20
#: Peak memory of :func:`read_table` per row and column read, in bytes (the codes, ratings and times, and the
#: sort that builds the matrix); see :meth:`Table.read_bytes`.
READ_BYTES_PER_CELL = 28
#: Text ids made integers: optional sign and up to 18 digits (what int64 surely holds).
_INTEGER_TEXT = r"^[+-]?[0-9]{1,18}$"
#: The texts pandas' CSV reader takes for a missing value (its ``STR_NA_VALUES``): :func:`read_table` reads a
#: text file as :func:`pandas.read_csv` would.
PANDAS_MISSING = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
                  "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


@dataclasses.dataclass(frozen=True)
class Table:
    """An input of interactions as :func:`open_table` found it (no rows read yet)."""

    path: Path
    files: tuple  # the data files, in a fixed (sorted) order
    format: str  # "parquet" or "csv"
    columns: dict  # role (user, item, rating, timestamp) -> column name (rating None: every entry 1.0)
    sep: str | None = None  # CSV only
    names: tuple | None = None  # CSV without a header: the columns' names by position

    def estimated_rows(self) -> int:
        """Rows of the input: exact for Parquet (its footers), estimated for text from the first lines' length."""
        if self.format == "parquet":
            return sum(_parquet_metadata(file).num_rows for file in self.files)
        total = 0
        for file in self.files:
            with open(file, "rb") as handle:
                head = handle.read(1 << 20)
            lines = max(1, head.count(b"\n"))
            total += int(os.path.getsize(file) / max(1, len(head)) * lines) + 1
        return total

    def read_bytes(self) -> tuple[int, str]:
        """``(bytes, what)``: the memory :func:`read_table` needs at its peak, about, and the input's size in words.

        :data:`READ_BYTES_PER_CELL` per row and column read (66-83 bytes per row of 4 columns measured on 10
        million rows, integer and text ids, CSV and Parquet: evaluation/results/reading_memory.md), plus the
        text of Parquet's text columns (their distinct ids are kept as Python strings).
        """
        columns = sum(name is not None for name in self.columns.values())
        rows = self.estimated_rows()
        extra = 0
        if self.format == "parquet":
            for file in self.files:
                metadata = _parquet_metadata(file)
                chosen = [i for i in range(metadata.num_columns)
                          if metadata.schema.column(i).name in self.columns.values()]
                extra += sum(metadata.row_group(g).column(i).total_uncompressed_size
                             for g in range(metadata.num_row_groups) for i in chosen
                             if metadata.schema.column(i).physical_type == "BYTE_ARRAY")
            what = f"{rows:,} rows of {columns} column(s)"
        else:
            size = sum(os.path.getsize(file) for file in self.files)
            what = f"about {rows:,} rows of {columns} column(s) ({size / 2**20:,.0f} MiB of text)"
        return rows * columns * READ_BYTES_PER_CELL + extra, what

    def fingerprint(self) -> str:
        """sha256 over the files' names (relative to the input), sizes and contents: any change of the input
        changes it."""
        digest = hashlib.sha256()
        for file in self.files:
            name = file.name if file == self.path else os.path.relpath(file, self.path)
            digest.update(f"{name}\0{os.path.getsize(file)}\0".encode())
            digest.update(bytes.fromhex(sha256_of_file(file)))
        return digest.hexdigest()


def _parquet_metadata(file: Path):
    import pyarrow.parquet

    try:
        return pyarrow.parquet.ParquetFile(file).metadata
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"cannot read {file} as Parquet: {exc}") from exc


def open_table(path, user: str | None = None, item: str | None = None, rating: str | bool | None = None,
               sep: str | None = None, timestamp: str | bool | None = False) -> Table:
    """The input at ``path``: a Parquet or CSV file, a MovieLens folder (its ratings file), or a directory whose
    data files (hidden and ``_``-prefixed names skipped, sub-directories included) are all Parquet or all text.

    Columns are chosen as :func:`aerec.data.readers.read_interactions` chooses them (the names given, else by
    their names; a text file without a header has user, item[, rating] first), from the first file; every
    other file must have them too. ``rating=False`` reads none (every entry 1.0); ``timestamp`` is read only
    when named or ``None`` (found by its name), by :func:`read_table`.
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
    roles = {"user": user, "item": item, "rating": rating, "timestamp": timestamp}
    if kind == "parquet":
        header = file_header(files[0])
        layout_sep, names = None, None
    else:
        layout_sep, names = text_layout(files[0], sep)
        header = list(names) if names is not None else text_header(files[0], layout_sep)
        if not layout_sep or "\n" in layout_sep or "\r" in layout_sep:
            raise ValueError(f"{files[0]}: separator {layout_sep!r}; expected one or more characters other than a "
                             "line break")
    columns = choose_columns(files[0], header, roles)
    for other in files[1:]:
        other_header = file_header(other) if kind == "parquet" else (
            header if names is not None else text_header(other, layout_sep))
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


def _text_batches(table: Table, file: Path, rows: int, raw: bool = False):
    """pyarrow record batches of a text file's columns: ids as text and ratings as float64, or (``raw``) every
    column as text with pandas' missing-value markers as nulls (for :func:`read_table`'s own conversion)."""
    import pyarrow as pa
    import pyarrow.csv as csv

    names = [name for role, name in table.columns.items() if name is not None and (raw or role != "timestamp")]
    if raw:
        types = {name: pa.string() for name in names}
        convert = csv.ConvertOptions(include_columns=names, column_types=types, strings_can_be_null=True,
                                     quoted_strings_can_be_null=True, null_values=PANDAS_MISSING)
    else:
        types = {table.columns["user"]: pa.string(), table.columns["item"]: pa.string()}
        if table.columns["rating"] is not None:
            types[table.columns["rating"]] = pa.float64()
        convert = csv.ConvertOptions(include_columns=names, column_types=types, strings_can_be_null=False)
    read = csv.ReadOptions(column_names=list(table.names) if table.names else None, block_size=max(1 << 16, rows * 24),
                           use_threads=False)
    several = len(table.sep) > 1  # "::" (ratings.dat) and other separators of several characters: read as tabs
    sep = "\t" if several else table.sep
    source = _Replacing(open(file, "rb"), table.sep.encode(), b"\t") if several else file
    try:
        reader = csv.open_csv(source, read_options=read, parse_options=csv.ParseOptions(delimiter=sep),
                              convert_options=convert)
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


def read_table(table: Table, duplicates: str = "error", numeric_ids: bool = False, rows: int | None = None):
    """The whole input as an :class:`~aerec.data.interactions.Interactions`, read in blocks of ``rows`` rows.

    No frame of the whole input is ever built: each block's ids become codes into the block's distinct ids, its
    ratings float64 and its times int64, and only those arrays (8 bytes per row and column) and the distinct ids
    are kept; the ids are sorted and the codes remapped at the end. The result equals
    :meth:`Interactions.from_pandas` of :func:`pandas.read_csv` / :func:`pandas.read_parquet` of the same input:
    a Parquet block goes through the same column checks; a text file's columns are typed as pandas types a
    whole column (ids: integers if every id is one, else numbers if every id is one, else text, spaces around a
    number ignored; pandas' missing-value markers are missing), with one departure: ids reading ``True`` /
    ``False`` stay text (pandas makes booleans of them). ``numeric_ids`` refuses text ids that are not numbers
    (MovieLens files).
    """
    from aerec.data.interactions import Interactions

    rows = rows or CHUNK_ROWS
    check_reading_memory(table.path, *table.read_bytes())
    text = table.format != "parquet"
    names = table.columns
    users, items = _IdCodes(names["user"], text, numeric_ids), _IdCodes(names["item"], text, numeric_ids)
    ratings = [] if names["rating"] is not None else None
    times = _Times(names["timestamp"], text) if names.get("timestamp") is not None else None
    offset = 0
    for file in table.files:
        batches = _text_batches(table, file, rows, raw=True) if text else _parquet_batches(table, file, rows)
        for batch in batches:
            for start in range(0, batch.num_rows, rows):
                block = batch.slice(start, rows)
                column = {role: block.column(block.schema.get_field_index(name)) for role, name in names.items()
                          if name is not None}
                users.add(column["user"], offset)
                items.add(column["item"], offset)
                if ratings is not None:
                    ratings.append(_block_ratings(column["rating"], names["rating"], text, offset))
                if times is not None:
                    times.add(column["timestamp"], offset)
                offset += block.num_rows
            _release_arrow_memory()
    if offset == 0:
        raise ValueError(f"{table.path} is empty (0 rows of interactions); expected at least one interaction")
    user_ids, rows_ = users.finish()
    item_ids, cols = items.finish()
    values = np.concatenate(ratings) if ratings is not None else np.ones(offset, dtype=np.float64)
    del ratings  # each block list is let go once joined
    return Interactions.from_codes(user_ids, rows_, item_ids, cols, values,
                                   times.finish() if times is not None else None, duplicates, names["rating"])


def _release_arrow_memory() -> None:
    """Hand pyarrow's freed blocks back to the system: its allocator kept about 190 MB of a 10-million-row
    read's text blocks (evaluation/reading_memory.py), which the sort that follows could not use."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


class _IdCodes:
    """One id column read block by block: each block's distinct ids and each row's code into them."""

    def __init__(self, name: str, text: bool, numeric: bool):
        self.name, self.text, self.numeric = name, text, numeric
        self.distinct, self.codes, self.seen = [], [], 0

    def add(self, column, offset: int) -> None:
        from aerec.data.interactions import MAX_ID_CHARS, _ids, _unique_ids

        if not self.text:  # typed (Parquet): the checks from_pandas makes, on this block
            distinct, codes = _unique_ids(_ids(column.to_pandas(), self.name, offset), self.name)
        else:
            import pyarrow.compute as pc

            if column.null_count:
                row = offset + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
                raise ValueError(f"column {self.name!r} has a missing id at row {row}; expected an id on every row")
            lengths = pc.utf8_length(column)
            if len(column) and pc.max(lengths).as_py() > MAX_ID_CHARS:
                row = int(pc.index(lengths, pc.max(lengths)).as_py())
                raise ValueError(f"column {self.name!r} has an id of {pc.max(lengths).as_py():,} characters at row "
                                 f"{offset + row}; expected ids of at most {MAX_ID_CHARS:,} (a wrong separator or an "
                                 "unclosed quote makes one field of a whole file)")
            encoded = pc.dictionary_encode(column)
            distinct = encoded.dictionary.to_numpy(zero_copy_only=False)
            codes = encoded.indices.to_numpy(zero_copy_only=False)
        self.seen += len(distinct)
        self.codes.append(codes.astype(np.int32 if self.seen < 2**31 else np.int64) + (self.seen - len(distinct)))
        self.distinct.append(distinct)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """The sorted distinct ids of the whole column and each row's index into them."""
        from aerec.data.interactions import _unique_ids

        distinct = np.concatenate(self.distinct) if self.distinct else np.empty(0)
        if self.text:
            distinct = _typed_text(distinct, self.name, self.numeric)
        ids, inverse = _unique_ids(distinct, self.name)
        codes, self.distinct, self.codes = np.concatenate(self.codes), [], []
        return ids, inverse.astype(codes.dtype)[codes]


def _typed_text(values: np.ndarray, name: str, numeric: bool) -> np.ndarray:
    """Text ids as pandas types a column of them: int64 if every one is an integer, else float64 if every one is
    a number, else the text as it is."""
    import pyarrow as pa
    import pyarrow.compute as pc

    trimmed = _number_text(pa.array(values, type=pa.string()))
    for kind in (pa.int64(), pa.float64()):
        try:
            return pc.cast(trimmed, kind).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    if numeric:
        parsed = pd.to_numeric(pd.Series(values), errors="coerce")
        if not parsed.isna().any():  # numbers pandas reads and pyarrow does not: pandas' reading of them
            return parsed.to_numpy()
        bad = values[int(np.flatnonzero(parsed.isna().to_numpy())[0])]
        raise ValueError(f"column {name!r} has a non-numeric id {bad!r}; expected numbers")
    return values


def _number_text(column):
    """Text as pandas' parser reads a number in it: spaces around it and a leading ``+`` ignored."""
    import pyarrow.compute as pc

    return pc.replace_substring_regex(pc.utf8_trim_whitespace(column), r"^\+", "")


def _numbers(column, kind, name: str, offset: int, expected: str) -> np.ndarray:
    """A text column as numbers of ``kind`` (missing entries as NaN), or a ValueError naming the first value that
    is not a number and its row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        return np.array(pc.cast(_number_text(column), kind).to_numpy(zero_copy_only=False))  # out of pyarrow's pool
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        text = pd.Series(column.to_numpy(zero_copy_only=False))
        bad = int(np.flatnonzero((pd.to_numeric(text, errors="coerce").isna() & text.notna()).to_numpy())[0])
        raise ValueError(f"{name} has a non-numeric value {text.iloc[bad]!r} at row {offset + bad}; expected "
                         f"{expected}") from None


def _block_ratings(column, name: str, text: bool, offset: int) -> np.ndarray:
    import pyarrow as pa

    if text:
        values = _numbers(column, pa.float64(), f"rating column {name!r}", offset, "numbers")
        return np.asarray(values, dtype=np.float64)
    from aerec.data.interactions import _ratings

    return _ratings(column.to_pandas(), name)


class _Times:
    """A timestamp column read block by block, typed as pandas types the whole column (integers stay exact
    unless a block holds a fraction, a missing time or a number past int64)."""

    def __init__(self, name: str, text: bool):
        self.name, self.text, self.blocks = name, text, []

    def add(self, column, offset: int) -> None:
        import pyarrow as pa

        if not self.text:
            from aerec.data.interactions import _timestamps

            self.blocks.append(_timestamps(column.to_pandas(), self.name, offset))
            return
        import pyarrow.compute as pc

        if not column.null_count:
            try:
                self.blocks.append(np.array(pc.cast(_number_text(column), pa.int64()).to_numpy(zero_copy_only=False)))
                return
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass  # a fraction, or a number past int64: the block is read as float64
        self.blocks.append(pd.Series(_numbers(column, pa.float64(), f"timestamp column {self.name!r}", offset,
                                              "numbers or datetimes"), dtype=np.float64))

    def finish(self) -> np.ndarray:
        from aerec.data.interactions import _timestamps

        blocks, self.blocks = self.blocks, []
        if all(isinstance(block, np.ndarray) for block in blocks):
            return np.concatenate(blocks).astype(np.int64, copy=False)
        floats = pd.Series(np.concatenate([np.asarray(block, dtype=np.float64) for block in blocks]))
        del blocks
        return _timestamps(floats, self.name)


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
    """A binary file read with every ``old`` (bytes) replaced by ``new``: ``ratings.dat``'s ``::`` as a tab,
    streamed (an ``old`` split across two reads is joined first)."""

    def __init__(self, handle, old: bytes, new: bytes):
        self.handle, self.old, self.new, self.carry, self.pending = handle, old, new, b"", b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            read = self.handle.read(max(1, len(buffer)))
            data = (self.carry + read).replace(self.old, self.new)
            self.carry = b""
            if read:  # the start of an ``old`` at the end: joined with the next read
                keep = next((k for k in range(len(self.old) - 1, 0, -1) if data.endswith(self.old[:k])), 0)
                if keep:
                    data, self.carry = data[:-keep], data[-keep:]
            self.pending = data
            if not read:
                break
        data, self.pending = self.pending[:len(buffer)], self.pending[len(buffer):]
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self.handle.close()
        super().close()
