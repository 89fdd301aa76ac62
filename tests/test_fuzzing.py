"""Hostile input (issue 8): hypothesis fuzzing of the readers, ``Interactions.from_pandas``, ``aerec.load`` and the CLI.

The property everywhere: a call either succeeds (and what it returns keeps the
data contract) or raises a ``ValueError`` (``StateFileError``, ``ChecksumError``
and ``CliError`` included) that aerec raised itself, with a message; never
another exception type or an error from deep inside pandas, numpy, torch or
json. The command line exits 0 or 2 (``datasets``: 1 on a checksum mismatch),
says what went wrong in exactly one ``aerec <command>: error:`` line, last on
stderr, and leaves no partial output file behind.

Issue 19 added every hyper-parameter of every registered model in a saved
config, and checkpoints (checkpoint.json's every field and nesting, the tensor
file's header, shapes, dtypes and bytes) resumed by a fit; each of their cases
may compute at most ``CASE_SECONDS`` of CPU time and grow the address space by
at most ``CASE_MEMORY`` (RLIMIT_AS).

The default profile runs 20,000 generated cases in all (``EXAMPLES``: 10,000
before issue 19, 10,000 since); the environment variable ``AEREC_FUZZ_SCALE``
multiplies every count, which is how ``evaluation/fuzz_inputs.py`` runs the
large profile. Each case is counted in ``TALLY`` by target and outcome for that
script's report.

Below the properties are the regression tests of the bugs the fuzzing found.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import pickle
import re
import shutil
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aerec
from aerec.cli import main
from aerec.data import Interactions, load_movielens, read_csv, read_parquet
from aerec.data.interactions import DUPLICATE_POLICIES
from aerec.models import MODELS, make_model
from aerec.training import NonFiniteLossError
from aerec.state import MARKERS, StateFileError, sha256_of_file

AEREC_DIR = Path(aerec.__file__).resolve().parent
SCALE = float(os.environ.get("AEREC_FUZZ_SCALE", "1"))
# generated cases per property in the default profile (20,000 in all: issue 8 asks for >= 10,000, issue 19 for
# >= 10,000 more); AEREC_FUZZ_SCALE multiplies them
EXAMPLES = {"movielens_files": 1800, "generic_csv": 1300, "parquet": 700, "from_pandas": 1600,
            "load_damaged_config": 1800, "load_damaged_tensor_file": 1300, "load_damaged_files": 300, "cli": 1200,
            "saved_hyper_parameters": 6000, "damaged_checkpoint": 4000}
TALLY: collections.Counter = collections.Counter()  # (target, outcome) -> cases, read by evaluation/fuzz_inputs.py
MESSAGES: dict = {}  # (target, outcome) -> the first message seen, for the same report
REASONS: collections.Counter = collections.Counter()  # (target, message with its values blanked) -> cases


def count(target: str, outcome: str, message: str = "") -> None:
    TALLY[target, outcome] += 1
    MESSAGES.setdefault((target, outcome), printable(message)[:300])
    if message:
        REASONS[target, message_template(message)] += 1


def printable(message: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f]", "?", " ".join(message.split()))


def message_template(message: str) -> str:
    """A message with its paths, quoted values and numbers blanked, to count the kinds of refusal."""
    message = re.sub(r"(/[^\s,;:'\"]+)+", "PATH", printable(message))
    message = re.sub(r"'[^']*'|\"[^\"]*\"|\[[^\]]*\]|\([^)]*\)", "…", message)
    return re.sub(r"-?\b\d[\d.e+-]*", "N", message)[:110]


def fuzz_settings(name: str, shards: int = 1):
    """The property's settings; a property run as ``shards`` tests (so that ``pytest -n`` spreads it over its
    workers) takes its share of the examples in each."""
    return settings(max_examples=max(1, round(EXAMPLES[name] * SCALE / shards)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- the property ---------------------------------------------------------------------------------
def raised_in(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return str(Path(frames[-1].filename).resolve()) if frames else "?"


def succeeds_or_refuses(target: str, call):
    """``call()``'s result, or None after a clean refusal: a ValueError raised by aerec itself, with a message.

    Any other exception propagates and fails the test with its traceback.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = call()
    except ValueError as exc:
        where = raised_in(exc)
        assert Path(where).is_relative_to(AEREC_DIR), (
            f"{type(exc).__name__} raised inside {where}, not by aerec: {exc}")
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        count(target, f"refused ({type(exc).__name__})", str(exc))
        return None
    count(target, "succeeded")
    return result


def check_contract(data: Interactions) -> None:
    """What every Interactions promises: canonical float32 CSR of finite ratings > 0, aligned ids and times."""
    m = data.matrix
    assert m.dtype == np.float32 and m.has_sorted_indices
    assert np.isfinite(m.data).all() and (m.data > 0).all(), m.data
    assert len(data.user_ids) == m.shape[0] and len(data.item_ids) == m.shape[1]
    coo = m.tocoo()
    assert len(set(zip(coo.row.tolist(), coo.col.tolist()))) == m.nnz
    if data.timestamps is not None:
        assert data.timestamps.dtype == np.int64 and len(data.timestamps) == m.nnz


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@contextlib.contextmanager
def scratch(workspace: Path):
    """A fresh folder for one generated case, removed afterwards."""
    folder = Path(tempfile.mkdtemp(dir=workspace))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- strategies: text files -------------------------------------------------------------------------
HOSTILE_CELLS = ["", " ", "nan", "NaN", "NULL", "None", "inf", "-inf", "1e400", "-1e400", "1e39", "1e-50", "5e-324",
                 "0", "-0", "-1", "0.0", "0x10", "1_000", "9" * 30, "1e30", "-1e19", "9223372036854775808", "True",
                 "\x00", '"', '""', "'", "\\", "::", ",", ";", "é", "\ufeff", "\U0001f4a5", "1.5", "5", "3", "12",
                 "978300760", "1,5"]
PLAIN_CELLS = [str(n) for n in range(1, 13)] + ["4.5", "978300760", "978302109"]
cells = st.one_of(st.sampled_from(PLAIN_CELLS), st.sampled_from(HOSTILE_CELLS), st.sampled_from(PLAIN_CELLS),
                  st.sampled_from(HOSTILE_CELLS), st.integers(-10**20, 10**20).map(str), st.text(max_size=4))
plain_row = st.lists(st.sampled_from(PLAIN_CELLS), min_size=4, max_size=4)
rows = st.lists(st.one_of(plain_row, plain_row, st.lists(cells, min_size=4, max_size=4),
                          st.lists(cells, min_size=4, max_size=4), st.lists(cells, max_size=6)), min_size=1, max_size=6)
line_endings = st.sampled_from(["\n", "\n", "\r\n", "\r"])
damages = st.one_of(
    st.just(("keep",)), st.just(("keep",)), st.just(("keep",)),
    st.tuples(st.just("cut"), st.integers(0, 2000)),
    st.tuples(st.just("splice"), st.integers(0, 2000), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("splice"), st.integers(-300, -1), st.binary(min_size=1, max_size=8)),  # a file's footer
    st.just(("bom",)),
    st.tuples(st.just("encode"), st.sampled_from(["utf-16", "latin-1"])),
    st.tuples(st.just("replace"), st.binary(max_size=64)),
)


def render(lines: list[list[str]], separator: str, ending: str) -> bytes:
    return ending.join(separator.join(cells) for cells in lines).encode("utf-8", "surrogatepass")


def damage(payload: bytes, how: tuple) -> bytes:
    """``payload`` as it is, truncated, with a stretch replaced (negative offsets count from the end), with a BOM,
    re-encoded, or replaced altogether."""
    kind, *args = how
    if kind == "cut":
        return payload[: args[0] % (len(payload) + 1)]
    if kind == "splice":
        at, junk = args[0] % (len(payload) + 1), args[1]
        return payload[:at] + junk + payload[at + len(junk):]
    if kind == "bom":
        return b"\xef\xbb\xbf" + payload
    if kind == "encode":
        return payload.decode("utf-8", "replace").encode(args[0], "replace")
    if kind == "replace":
        return args[0]
    return payload


MOVIELENS_FILES = {"u.data": ("\t", None), "ratings.dat": ("::", None),
                   "ratings.csv": (",", "userId,movieId,rating,timestamp")}


@fuzz_settings("movielens_files")
@given(st.sampled_from(sorted(MOVIELENS_FILES)), st.one_of(st.none(), st.lists(cells, max_size=5)), rows, line_endings,
       damages, st.sampled_from(["x", "ml-100k", "ml-1m", "ml-20m", "ml-latest-small"]), st.booleans(), st.booleans())
def test_fuzz_movielens_files(workspace, name, header, body, ending, how, folder_name, verify, by_folder):
    separator, release_header = MOVIELENS_FILES[name]
    header = [release_header] if header is None and release_header else header
    payload = damage(render(([header] if header is not None else []) + body, separator, ending), how)
    with scratch(workspace) as folder:
        path = folder / folder_name / name
        path.parent.mkdir()
        path.write_bytes(payload)
        data = succeeds_or_refuses("load_movielens", lambda: load_movielens(path.parent if by_folder else path,
                                                                            verify=verify))
        if data is not None:
            check_contract(data)
            assert data.timestamps is not None


GENERIC_HEADERS = [["user", "item"], ["user", "item", "rating"], ["user", "item", "rating", "timestamp"],
                   ["user", "item", "timestamp"], ["user", "user", "item"], ["item", "user", "rating", "rating"],
                   ["u", "i", "r", "t"], []]


@fuzz_settings("generic_csv")
@given(st.one_of(st.sampled_from(GENERIC_HEADERS), st.lists(cells, max_size=5)), rows, line_endings, damages,
       st.sampled_from([None, "rating", "r"]), st.sampled_from([None, "timestamp", "t"]),
       st.sampled_from([*DUPLICATE_POLICIES, "newest"]), st.sampled_from(["user", "u", "item"]))
def test_fuzz_generic_csv(workspace, header, body, ending, how, rating, timestamp, duplicates, user):
    payload = damage(render([header] + body, ",", ending), how)
    with scratch(workspace) as folder:
        path = folder / "interactions.csv"
        path.write_bytes(payload)
        data = succeeds_or_refuses("read_csv", lambda: read_csv(path, user=user, rating=rating, timestamp=timestamp,
                                                                duplicates=duplicates))
        if data is not None:
            check_contract(data)


# -- strategies: data frames ------------------------------------------------------------------------
HOSTILE_FLOATS = [0.0, -0.0, -1.0, 1.0, 5.0, 0.5, 4.5, 1e39, -1e39, 1e-50, 5e-324, 3.4e38, 1e308, float("nan"),
                  float("inf"), -float("inf"), 2.0**63, -(2.0**63) - 4096.0, 2.0**53 + 1, 1e30, -1e19]
HOSTILE_INTS = [0, -1, 1, 2, 3, 5, 2**31, 2**53 + 1, 2**62, 2**63 - 1, -(2**63), 978300760]
HOSTILE_OBJECTS = [0, 1, 2, "a", "b", "", None, float("nan"), 10**30, -(10**30), b"\xff", True, (1,), [1], {"k": 1},
                   1.5, "\x00", pd.NaT, pd.Timestamp(0)]
SECONDS = [0, 1, 978300760, -(2**33), 2**33, 1_700_000_000]
TIMEZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"]


# kind -> (pool of values, how to build the column from a list of them)
COLUMN_KINDS = {
    "small_int": (list(range(7)), lambda v: pd.Series(v, dtype="int64")),
    "int64": (HOSTILE_INTS, lambda v: pd.Series(v, dtype="int64")),
    "uint64": ([0, 1, 5, 2**63, 2**64 - 1], lambda v: pd.Series(v, dtype="uint64")),
    "int8": ([-128, -1, 0, 1, 127], lambda v: pd.Series(v, dtype="int8")),
    "float64": (HOSTILE_FLOATS, lambda v: pd.Series(v, dtype="float64")),
    "float32": ([0.0, 1.0, 4.5, 3.4e38, float("nan"), 1e-45], lambda v: pd.Series(v, dtype="float32")),
    "float16": ([0.0, 1.0, 4.5, 65504.0, float("inf")], lambda v: pd.Series(v, dtype="float16")),
    "complex": ([1 + 0j, 1 + 2j, 0j, complex("nan")], lambda v: pd.Series(v, dtype="complex128")),
    "bool": ([True, False], lambda v: pd.Series(v, dtype=bool)),
    "text": (["a", "b", "", "é", "1", " "], lambda v: pd.Series(v, dtype=object)),
    "objects": (HOSTILE_OBJECTS, lambda v: pd.Series(v, dtype=object)),
    "Int64": ([None, -5, 0, 1, 3, 10**6], lambda v: pd.Series(v, dtype="Int64")),
    "string": ([None, "a", "b", ""], lambda v: pd.Series(v, dtype="string")),
    "category": (["a", "b", 3], lambda v: pd.Series(v, dtype="category")),
    "datetime": ([*SECONDS, None], lambda v: pd.Series(pd.to_datetime(v, unit="s"))),
    "datetime_tz": (SECONDS, lambda v: pd.Series(pd.to_datetime(v, unit="s", utc=True))),
    "timedelta": (SECONDS, lambda v: pd.Series(pd.to_timedelta(v, unit="s"))),
}
ID_KINDS = ["small_int", "small_int", "small_int", "text", "int64", "uint64", "float64", "objects", "Int64", "string",
            "category", "bool", "datetime_tz"]
RATING_KINDS = ["float64", "float64", "small_int", "int64", "uint64", "float32", "float16", "complex", "bool", "text",
                "objects", "Int64", "category", "datetime"]
TIME_KINDS = ["int64", "int64", "small_int", "uint64", "float64", "datetime", "datetime_tz", "timedelta", "bool",
              "complex", "text", "Int64", "int8", "float32"]
ROLES = {"user": ID_KINDS, "item": ID_KINDS, "rating": RATING_KINDS, "timestamp": TIME_KINDS}


@st.composite
def frames(draw):
    """A frame of (user, item, rating, timestamp) columns, each of a drawn dtype, sometimes oddly laid out."""
    n = draw(st.integers(0, 8))
    columns = {}
    for role, kinds in ROLES.items():
        pool, build = COLUMN_KINDS[draw(st.sampled_from(kinds))]
        columns[role] = build(draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n)))
    frame = pd.DataFrame(columns)
    layout = draw(st.sampled_from(["plain"] * 7 + ["duplicated_column", "multiindex", "odd_index", "time_zone"]))
    if layout == "duplicated_column":
        frame = pd.concat([frame, frame[[draw(st.sampled_from(list(ROLES)))]]], axis=1)
    elif layout == "multiindex":
        frame.columns = pd.MultiIndex.from_tuples([(name, "x") for name in frame.columns])
    elif layout == "odd_index":
        frame.index = [0] * n
    elif layout == "time_zone":
        frame["timestamp"] = pd.Series(pd.to_datetime(SECONDS[:1] * n, unit="s", utc=True)).dt.tz_convert(
            draw(st.sampled_from(TIMEZONES)))
    return frame


def column_name(role: str) -> st.SearchStrategy:
    """Mostly the role's own column; sometimes another, a missing one, None or a non-string name."""
    return st.sampled_from([role] * 6 + ["user", "item", "rating", "timestamp", "missing", None, 0])


@fuzz_settings("from_pandas")
@given(frames(), column_name("user"), column_name("item"), column_name("rating"), column_name("timestamp"),
       st.sampled_from([*DUPLICATE_POLICIES, *DUPLICATE_POLICIES, "newest", ""]))
def test_fuzz_from_pandas(frame, user, item, rating, timestamp, duplicates):
    data = succeeds_or_refuses("Interactions.from_pandas", lambda: Interactions.from_pandas(
        frame, user=user, item=item, rating=rating, timestamp=timestamp, duplicates=duplicates))
    if data is not None:
        check_contract(data)
        assert data.nnz <= len(frame)
        if timestamp is not None and data.nnz and not pd.api.types.is_datetime64_any_dtype(frame[timestamp]):
            given = frame[timestamp]  # every kept time is one of the given ones (floats truncated), never a wrapped one
            exact = given.to_numpy(np.int64) if given.dtype.kind in "iu" else np.trunc(given.to_numpy(np.float64))
            assert np.isin(data.timestamps, exact).all(), (data.timestamps, given)


@fuzz_settings("parquet")
@given(frames().filter(lambda f: f.columns.nlevels == 1 and not f.columns.duplicated().any()), damages,
       st.sampled_from([None, "rating"]), st.sampled_from([None, "timestamp"]))
def test_fuzz_parquet(workspace, frame, how, rating, timestamp):
    with scratch(workspace) as folder:
        path = folder / "interactions.parquet"
        try:
            frame.to_parquet(path)
        except Exception:  # a frame pyarrow cannot store (mixed objects): the file is garbage instead
            path.write_bytes(b"PAR1" + bytes(range(40)) + b"PAR1")
        path.write_bytes(damage(path.read_bytes(), how))
        result = succeeds_or_refuses("read_parquet", lambda: read_parquet(path, rating=rating, timestamp=timestamp))
        if result is not None:
            check_contract(result)


# -- aerec.load on damaged model directories -------------------------------------------------------
TENSOR_NAMES = ["state.fitted.item_ids_", "state.fitted.item_counts_", "state.fitted.module_.encoder.layers.0.weight",
                "state.fitted.module_.decoder.layers.1.bias", "state.nothing"]
json_leaves = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 1, 2, 12, 2**31, 2**63, -(2**63) - 1, 10**30, 1e308, 0.5, float("nan"),
                     float("inf"), -float("inf"), "", "x", "cpu", "cuda", "cuda:7", "meta", "bogus", "../config.json",
                     "History", "mult_dae", "popularity", "MultDAE", "Popularity", "aerec-model", "str", "object", "\x00",
                     *TENSOR_NAMES, *MARKERS]),
    st.integers(), st.floats(), st.text(max_size=4))
json_keys = st.sampled_from([*MARKERS, "dtype", "fields", "shape", "data", "indices", "indptr", "epochs", "x", "file",
                             "bytes", "sha256", "params", "fitted", "n_items_", "device", "hidden", "__class__", "_x_"])
json_values = st.recursive(json_leaves, lambda children: st.one_of(
    st.lists(children, max_size=3), st.dictionaries(json_keys, children, max_size=3),
    st.tuples(st.sampled_from(MARKERS), children).map(lambda t: {t[0]: t[1]})), max_leaves=6)
json_edits = st.lists(st.one_of(
    st.tuples(st.just("set"), st.integers(0, 10**6), json_values),
    st.tuples(st.just("set"), st.integers(0, 10**6), json_values),
    st.tuples(st.just("delete"), st.integers(0, 10**6)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), json_keys, json_values),
    st.tuples(st.just("wrap"), st.integers(0, 10**6), st.sampled_from(MARKERS)),
), min_size=1, max_size=3)
text_edits = st.one_of(st.just(("keep",)), st.just(("keep",)), st.just(("keep",)), st.just(("keep",)),
                       st.just(("huge_int",)), st.just(("deep",)), damages)


def json_paths(value, prefix=()):
    """Every path (a tuple of keys / indices) into a JSON value, the value itself included."""
    paths = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            paths += json_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths += json_paths(item, (*prefix, index))
    return paths


def edit_json(document, edit: tuple):
    """``document`` with one edit applied at the path the edit's index picks (the root is replaced by "set")."""
    kind, index, *args = edit
    paths = json_paths(document)
    path = paths[index % len(paths)]
    if not path:
        return args[0] if kind == "set" else ({args[0]: document} if kind == "wrap" else document)
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if kind == "set":
        parent[key] = args[0]
    elif kind == "delete":
        del parent[key]
    elif kind == "insert" and isinstance(parent[key], dict):
        parent[key][args[0]] = args[1]
    elif kind == "wrap":
        parent[key] = {args[0]: parent[key]}
    return document


def config_text(document, how: tuple) -> bytes:
    """The config as JSON text (NaN and Infinity as Python writes them), damaged as text."""
    text = json.dumps(document)
    extra = {"huge_int": "1" * 5000, "deep": "[" * 20000 + "]" * 20000}.get(how[0])  # past int()'s 4300 digits,
    if extra is not None:                                                            # past the recursion limit
        return (f'{{"x": {extra}, {text[1:]}' if text.startswith("{") and text != "{}" else extra).encode()
    return damage(text.encode(), how)


@pytest.fixture(scope="module")
def saved_models(workspace) -> dict[str, Path]:
    """A popularity model and a tiny Mult-DAE saved once for the module, copied for each case."""
    from tests.conftest import random_implicit_csr

    train = random_implicit_csr(30, 12, seed=1)
    models = {"popularity": make_model("popularity"),
              "mult_dae": make_model("mult_dae", hidden=8, latent=4, epochs=1, batch_size=10)}
    return {name: aerec.save(model.fit(train), workspace / f"saved-{name}") for name, model in models.items()}


def copy_model(source: Path, folder: Path) -> tuple[Path, dict, Path]:
    """A copy of a saved model: its directory, its config and its tensor file."""
    target = folder / "model"
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    return target, config, target / config["tensors"]["file"]


def load_and_use(path: Path, target: str) -> None:
    """The property for aerec.load; a model that loads is also asked for one user's top item (tallied)."""
    model = succeeds_or_refuses(target, lambda: aerec.load(path))
    if model is None:
        return
    assert isinstance(model.n_items_, int) and model.n_items_ >= 1
    assert len(model.item_ids_) == model.n_items_
    row = sp.csr_matrix(([1.0], ([0], [0])), shape=(1, model.n_items_), dtype=np.float32)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.recommend(row, n=1)
        count(target, "loaded; recommend worked")
    except Exception as exc:  # noqa: BLE001 -- counted for the report, not part of aerec.load's contract
        count(target, f"loaded; recommend raised {type(exc).__name__}", str(exc))


@fuzz_settings("load_damaged_config")
@given(st.sampled_from(["popularity", "mult_dae"]), json_edits, text_edits)
def test_fuzz_load_damaged_config(workspace, saved_models, name, edits, how):
    with scratch(workspace) as folder:
        path, config, _ = copy_model(saved_models[name], folder)
        for edit in edits:
            config = edit_json(config, edit)
        (path / "config.json").write_bytes(config_text(config, how))
        load_and_use(path, "aerec.load (config.json)")


SAFETENSORS_DTYPES = ["F16", "BF16", "F32", "F64", "I8", "U8", "I16", "I32", "I64", "BOOL", "F8_E4M3", "C64", "XYZ", ""]
ITEM_SIZES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I8": 1, "U8": 1, "I16": 2, "I32": 4, "I64": 8, "BOOL": 1,
              "F8_E4M3": 1, "C64": 8}
header_edits = st.one_of(
    st.tuples(st.just("retype"), st.integers(0, 99), st.sampled_from(sorted(ITEM_SIZES))),
    st.tuples(st.just("retype"), st.integers(0, 99), st.sampled_from(sorted(ITEM_SIZES))),
    st.tuples(st.just("dtype"), st.integers(0, 99), st.sampled_from(SAFETENSORS_DTYPES)),
    st.tuples(st.just("shape"), st.integers(0, 99), st.lists(st.sampled_from([0, 1, 2, 3, 12, 24, -1, 10**12, "a"]),
                                                             max_size=3)),
    st.tuples(st.just("data_offsets"), st.integers(0, 99), st.lists(st.sampled_from([0, 1, 8, 48, 96, 10**12, -1]),
                                                                    max_size=3)),
    st.tuples(st.just("rename"), st.integers(0, 99), st.sampled_from(TENSOR_NAMES)),
    st.tuples(st.just("drop"), st.integers(0, 99)),
    st.tuples(st.just("metadata"), st.integers(0, 99), json_values),
)
tensor_edits = st.one_of(
    st.tuples(st.just("bytes"), damages),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), min_size=1, max_size=4)),
    st.tuples(st.just("header"), st.lists(header_edits, min_size=1, max_size=3), st.booleans()),
    st.tuples(st.just("header"), st.lists(header_edits, min_size=1, max_size=3), st.booleans()),
    st.tuples(st.just("magic"), st.sampled_from([pickle.dumps({"w": 1}, protocol=4), b"PK\x03\x04" + bytes(40), b""])),
)


def split_safetensors(payload: bytes) -> tuple[dict, bytes]:
    length = int.from_bytes(payload[:8], "little")
    return json.loads(payload[8: 8 + length]), payload[8 + length:]


def join_safetensors(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data


def edit_header(header: dict, edit: tuple) -> dict:
    kind, index, *args = edit
    names = sorted(name for name in header if name != "__metadata__")
    name = names[index % len(names)] if names else "x"
    if kind == "metadata":
        header["__metadata__"] = args[0]
    elif kind == "retype" and isinstance(header.get(name), dict):  # another dtype over the same bytes: a valid file
        offsets = header[name].get("data_offsets")
        if isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(at, int) for at in offsets):
            header[name].update(dtype=args[0], shape=[(offsets[1] - offsets[0]) // ITEM_SIZES[args[0]]])
    elif kind == "drop":
        header.pop(name, None)
    elif kind == "rename":
        header[args[0]] = header.pop(name, {})
    elif isinstance(header.get(name), dict):
        header[name][kind] = args[0]
    return header


def damaged_tensor_file(payload: bytes, edit: tuple, config: dict) -> bytes:
    """The tensor file after one edit; with ``also_shapes`` the config's shapes follow the edited header."""
    kind, *args = edit
    if kind == "bytes":
        return damage(payload, args[0])
    if kind == "flip":
        payload = bytearray(payload)
        for at, bit in args[0]:
            payload[at % len(payload)] ^= 1 << bit
        return bytes(payload)
    if kind == "magic":
        return args[0]
    header, data = split_safetensors(payload)
    for header_edit in args[0]:
        header = edit_header(header, header_edit)
    if args[1]:  # an attacker who edits both files
        config["shapes"] = {name: entry.get("shape") for name, entry in header.items()
                            if name != "__metadata__" and isinstance(entry, dict)}
    return join_safetensors(header, data)


@fuzz_settings("load_damaged_tensor_file")
@given(st.sampled_from(["popularity", "mult_dae"]), tensor_edits)
def test_fuzz_load_damaged_tensor_file(workspace, saved_models, name, edit):
    with scratch(workspace) as folder:
        path, config, tensor_file = copy_model(saved_models[name], folder)
        tensor_file.write_bytes(damaged_tensor_file(tensor_file.read_bytes(), edit, config))
        config["tensors"].update(bytes=tensor_file.stat().st_size, sha256=sha256_of_file(tensor_file))
        (path / "config.json").write_text(json.dumps(config))
        load_and_use(path, "aerec.load (tensor file)")


# -- every hyper-parameter of every model, and checkpoints, as a crafted file would set them -------------
#: What a case may take: longer, or an address space past this much above the test's start, is a failure.
CASE_SECONDS = 5.0
CASE_MEMORY = 2**30


@contextlib.contextmanager
def bounded_memory(extra: int = CASE_MEMORY):
    """Cap the address space at its size now plus ``extra`` (RLIMIT_AS), so a case that allocates past it fails
    (numpy's MemoryError, torch's RuntimeError: neither is a clean refusal) instead of swapping the machine."""
    import resource

    torch.ones(512, 512).sum(0)  # OpenMP starts its threads now: under the cap, creating one aborts the process
    size = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = size + extra if hard == resource.RLIM_INFINITY else min(size + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextlib.contextmanager
def bounded_time(target: str, seconds: float = CASE_SECONDS):
    """A case may compute ``seconds`` of CPU time (this process's, so that a busy machine does not fail it)."""
    started = time.process_time()
    yield
    spent = time.process_time() - started
    assert spent < seconds, f"{target}: a case computed for {spent:.1f} s"


@pytest.fixture(scope="module")
def every_saved_model(workspace) -> dict[str, Path]:
    """Each registered model fitted briefly on small data (ratings for the rating models) and saved."""
    from tests.conftest import random_implicit_csr

    clicks = random_implicit_csr(30, 12, seed=1)
    ratings = clicks.copy()
    ratings.data = 1.0 + np.arange(ratings.nnz, dtype=np.float32) % 5
    small = {"epochs": 1, "hidden": 8, "latent": 4, "factors": 4, "iterations": 1, "batch_size": 10}
    saved = {}
    for name in MODELS:
        params = {key: value for key, value in small.items() if key in make_model(name).get_params()}
        if name == "autoencoder":
            params["hidden"] = (8,)
        if name == "autorec":
            params.pop("batch_size")  # Rprop is full-batch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = make_model(name, **params).fit(ratings if name in ("autorec", "bias") else clicks)
        saved[name] = aerec.save(model, workspace / f"every-{name}")
    return saved


HYPER_VALUES = st.one_of(
    st.sampled_from([0, -1, 1, 2, 3, 64, 2**20, 2**20 + 1, 2**31, 10**6 + 1, 10**12, 2**63 - 1, 2**63, 10**30, 0.0,
                     -0.0, 1e-300, 0.5, 0.999, 1.0, 1.5, 1e12, 1.1e12, 1e300, float("nan"), float("inf"),
                     -float("inf"), True, False, None, "", "x", "adam", "lbfgs", "cpu", "cuda", "meta", "item", "user",
                     "float64", "bf16", [], [1, 1, 1], [1, 1, 1e300], [8, 2**21], [0], {}, {"__tensor__": "x"}]),
    st.integers(), st.floats(), json_values)


SHARDS = 3


@pytest.mark.parametrize("shard", range(SHARDS))
@fuzz_settings("saved_hyper_parameters", SHARDS)
@given(st.sampled_from(sorted(MODELS)),
       st.lists(st.tuples(st.integers(0, 10**6), HYPER_VALUES), min_size=1, max_size=3))
def test_fuzz_saved_hyper_parameters(workspace, every_saved_model, shard, name, edits):
    """Any value of any of a saved model's hyper-parameters: loaded and scored within the bounds, or refused."""
    with scratch(workspace) as folder:
        path, config, _ = copy_model(every_saved_model[name], folder)
        params = config["state"]["params"]
        keys = sorted(params) or ["x"]  # popularity has none: a stray key
        for index, value in edits:
            params[keys[index % len(keys)]] = value
        (path / "config.json").write_text(json.dumps(config))
        with bounded_time("saved hyper-parameters"), bounded_memory():
            load_and_use(path, "aerec.load (hyper-parameters)")


@pytest.fixture(scope="module")
def saved_checkpoint(workspace):
    """A Mult-DAE stopped after 2 of 3 epochs with its checkpoint, and the data it trains on."""
    from tests.conftest import random_implicit_csr

    train = random_implicit_csr(30, 12, seed=1)
    users = random_implicit_csr(6, 12, seed=2, density=0.5).tocoo()
    held = np.arange(users.nnz) % 3 == 0
    validation = tuple(sp.csr_matrix((users.data[mask], (users.row[mask], users.col[mask])), users.shape)
                       for mask in (~held, held))
    folder = workspace / "checkpoint"
    make_model("mult_dae", **CHECKPOINT_MODEL, epochs=2).fit(train, validation, checkpoint=folder)
    return folder, train, validation


CHECKPOINT_MODEL = {"hidden": 8, "latent": 4, "batch_size": 10, "device": "cpu"}
checkpoint_edits = st.one_of(st.tuples(st.just("json"), json_edits, text_edits),
                             st.tuples(st.just("json"), json_edits, st.just(("keep",))),
                             st.tuples(st.just("tensors"), tensor_edits))


@pytest.mark.parametrize("shard", range(SHARDS))
@fuzz_settings("damaged_checkpoint", SHARDS)
@given(st.lists(checkpoint_edits, min_size=1, max_size=2, unique_by=lambda edit: edit[0]).map(
    lambda edits: sorted(edits, key=lambda edit: edit[0] != "tensors")))  # the tensor file first, then the JSON
def test_fuzz_damaged_checkpoint(workspace, saved_checkpoint, shard, edits):
    """Any damage to checkpoint.json (every field, nesting, text) or its tensor file (header, shapes, dtypes, bytes):
    the resumed fit finishes or is refused with a ValueError (StateFileError, CheckpointMismatchError)."""
    source, train, validation = saved_checkpoint
    with scratch(workspace) as folder:
        directory = Path(shutil.copytree(source, folder / "checkpoint"))
        document = json.loads((directory / "checkpoint.json").read_text())
        tensor_file = directory / document["tensors"]["file"]
        for edit in edits:
            if edit[0] == "tensors" and isinstance(document, dict) and tensor_file.is_file():
                tensor_file.write_bytes(damaged_tensor_file(tensor_file.read_bytes(), edit[1], document))
                if isinstance(document.get("tensors"), dict):
                    document["tensors"].update(bytes=tensor_file.stat().st_size, sha256=sha256_of_file(tensor_file))
                (directory / "checkpoint.json").write_text(json.dumps(document))
            elif edit[0] == "json":
                for json_edit in edit[1]:
                    document = edit_json(document, json_edit)
                (directory / "checkpoint.json").write_bytes(config_text(document, edit[2]))
        with bounded_time("damaged checkpoint"), bounded_memory():
            try:
                succeeds_or_refuses("resume (checkpoint)", lambda: make_model(
                    "mult_dae", **CHECKPOINT_MODEL, epochs=3).fit(train, validation, checkpoint=directory))
            except NonFiniteLossError as exc:  # finite weights flipped to huge ones (checksums made to agree)
                count("resume (checkpoint)", "refused (NonFiniteLossError)", str(exc))


SPECIAL_FILES = ("tensors_to_dev_zero", "config_loop", "config_fifo")
FILE_EDITS = ["rename_tensors", "delete_tensors", "delete_config", "config_is_folder", "tensors_is_folder",
              "tensors_to_dev_zero", "config_loop", "extra_tensor_file", "swap_tensor_files", "model_is_file",
              "config_path", "empty_folder", "long_name", "nul_in_name", "config_fifo", "tmp_leftovers"]


def edit_files(path: Path, tensor_file: Path, other: Path, edit: str) -> Path:
    """Apply one file-level damage to the model directory; returns the path to load."""
    if edit == "rename_tensors":
        tensor_file.rename(path / ("tensors-" + "0" * 64 + ".safetensors"))
    elif edit == "delete_tensors":
        tensor_file.unlink()
    elif edit == "delete_config":
        (path / "config.json").unlink()
    elif edit == "config_is_folder":
        (path / "config.json").unlink()
        (path / "config.json").mkdir()
    elif edit == "tensors_is_folder":
        tensor_file.unlink()
        tensor_file.mkdir()
    elif edit == "tensors_to_dev_zero":
        tensor_file.unlink()
        tensor_file.symlink_to("/dev/zero")
    elif edit == "config_loop":
        (path / "config.json").unlink()
        (path / "config.json").symlink_to(path / "config.json")
    elif edit == "extra_tensor_file":
        shutil.copy(tensor_file, path / ("tensors-" + "f" * 64 + ".safetensors"))
    elif edit == "swap_tensor_files":  # the other model's tensors under this name, size and checksum made to agree
        shutil.copy(next(other.glob("tensors-*")), tensor_file)
        config = json.loads((path / "config.json").read_text())
        config["tensors"].update(bytes=tensor_file.stat().st_size, sha256=sha256_of_file(tensor_file))
        (path / "config.json").write_text(json.dumps(config))
    elif edit == "model_is_file":
        shutil.rmtree(path)
        path.write_text("{}")
    elif edit == "config_path":
        return path / "config.json"
    elif edit == "empty_folder":
        shutil.rmtree(path)
        path.mkdir()
    elif edit == "long_name":
        return path / ("x" * 300)
    elif edit == "nul_in_name":
        return Path(str(path) + "\x00")
    elif edit == "config_fifo":
        (path / "config.json").unlink()
        os.mkfifo(path / "config.json")
    elif edit == "tmp_leftovers":
        (path / ".config.json.abc.tmp").write_text("{")
    return path


@fuzz_settings("load_damaged_files")
@given(st.sampled_from(["popularity", "mult_dae"]), st.lists(st.sampled_from(FILE_EDITS), min_size=1, max_size=3))
def test_fuzz_load_damaged_files(workspace, saved_models, name, edits):
    other = saved_models["mult_dae" if name == "popularity" else "popularity"]
    with scratch(workspace) as folder:
        path, _, tensor_file = copy_model(saved_models[name], folder)
        target = path
        for edit in edits:
            with contextlib.suppress(OSError, ValueError):  # an edit that an earlier one made impossible
                target = edit_files(path, tensor_file, other, edit)
            if target != path or not path.is_dir() or edit in SPECIAL_FILES:
                break  # nothing is edited through a special file (reading /dev/zero never ends)
        load_and_use(target, "aerec.load (files)")


# -- the command line -------------------------------------------------------------------------------
# Hyper-parameters that keep a fit to milliseconds; the generated --param values come after and may replace them,
# but only with values that are invalid or at most 2 (a valid epochs=10**9 would be a slow case, not a bug).
CHEAP_PARAMS = {"als": ["iterations=1", "factors=2"], "bpr": ["iterations=1", "factors=2", "fold_in_steps=1"],
                "mult_vae": ["epochs=1", "hidden=4", "latent=2"], "mult_dae": ["epochs=1", "hidden=4", "latent=2"],
                "cdae": ["epochs=1", "hidden=2", "fold_in_steps=1", "n_negatives=2"],
                "autorec": ["epochs=1", "hidden=2"]}
PARAM_KEYS = ["l2", "device", "factors", "iterations", "regularization", "alpha", "random_state", "hidden", "latent",
              "dropout", "epochs", "batch_size", "lr", "seed", "patience", "progress", "precision", "kind",
              "optimizer", "corruption", "loss", "rating_range", "default_rating", "beta_cap", "fold_in", "self",
              "__class__", "", "x y"]
PARAM_VALUES = ["-1", "0", "1", "2", "0.5", "1e400", "-1e400", "nan", "inf", "true", "false", "none", "", "x", "cuda",
                "cuda:3", "cpu", "auto", "meta", "bf16", "item", "user", str(10**30), "-" + str(2**70), "9" * 5000,
                "1e-320", "\x00", "=", "\u00e9"]
INTS = ["0", "-1", "1", "2", "3", "5", str(2**31), str(2**63), str(10**30), "-" + str(10**30), "1.5", "nan", "", "x",
        "1e3", "\u0663", " 7 ", "+3", "0x10", "--"]
MODEL_NAMES = ["popularity", "ease", "bias", "als", "bpr", "mult_vae", "mult_dae", "cdae", "autorec", "gpt", "",
               "POPULARITY"]
# "@name" stands for a file of the module's CLI workspace (cli_files); other paths are relative to the case's folder
DATA_FILES = ["@clicks", "@clicks", "@ratings", "@udata", "@bad", "@empty", "@header_only", "@no_user", "@parquet",
              "@bad_parquet", "@unknown_items", "@folder"]
MODEL_DIRS = ["@saved_popularity", "@saved_popularity", "@saved_bias", "@saved_mult_dae", "@odd_metadata",
              "@broken_model", "damaged_model"]
HOSTILE_PATHS = ["", ".", "nonexistent.csv", "x" * 300, "a\x00b", "-", "--model", "ml-100k", "ml-1m", "ml-20m",
                 "existing.csv", "existing_model", "/nonexistent/x"]


def option(name: str, values) -> st.SearchStrategy:
    return st.tuples(st.just(name), values).map(list)


def command_argv(command: str, required: list, optional: list) -> st.SearchStrategy:
    """``command``, its required options (one left out now and then), up to five optional ones, maybe a stray token."""
    dropped = st.one_of(st.none(), st.none(), st.none(), st.none(), st.none(), st.none(), st.none(),
                        st.integers(0, max(len(required) - 1, 0)))
    stray = st.one_of(st.just([]), st.just([]), st.just([]), st.just([]), st.just([]),
                      st.sampled_from(["--help", "--bogus", "-x", "extra"]).map(lambda token: [token]))
    return st.tuples(st.tuples(*required), dropped, st.lists(st.one_of(*optional), max_size=5), stray).map(
        lambda t: [command] + [token for i, pair in enumerate(t[0]) if i != t[1] for token in pair]
        + [token for pair in t[2] for token in pair] + t[3])


def cheap_params(model: str) -> list[str]:
    return [token for param in CHEAP_PARAMS.get(model, []) for token in ("--param", param)]


def with_model(argv_and_model) -> list[str]:
    model, argv = argv_and_model
    return argv[:1] + ["--model", model] + cheap_params(model) + argv[1:]


data_files = st.sampled_from(DATA_FILES + HOSTILE_PATHS)
model_dirs = st.sampled_from(MODEL_DIRS + HOSTILE_PATHS)
data_dirs = st.sampled_from(["@fake_data", "@folder", "nonexistent", "x" * 300, ""])
ints = st.sampled_from(INTS)
params = st.tuples(st.sampled_from(PARAM_KEYS), st.sampled_from(PARAM_VALUES)).map("=".join)
DATASET_OPTIONS = [option("--data-dir", data_dirs), option("--seed", ints), option("--n-heldout", ints),
                   option("--protocol", st.sampled_from(["strong", "per-user", "ratings", "bogus"])),
                   option("--param", params), option("--param", params)]
train_argv = st.tuples(st.sampled_from(MODEL_NAMES), command_argv(
    "train", [option("--dataset", data_files),
              option("--out", st.sampled_from(["out", "out", "existing_model", "damaged_model", "existing.csv",
                                               "existing.csv/x", "sub/dir/out", "", ".", "x" * 300, "a\x00b"]))],
    [*DATASET_OPTIONS, option("--checkpoint-every", ints), st.just(["--resume"]), st.just(["--resume"]),
     st.just(["--overwrite"]), st.just(["--json"])])).map(with_model)
evaluate_argv = st.tuples(st.one_of(st.sampled_from(MODEL_NAMES), model_dirs), command_argv(
    "evaluate", [option("--dataset", data_files)],
    [*DATASET_OPTIONS, option("--k", ints), st.just(["--json"]), st.just(["--k", "1", "2"]),
     st.just(["--k", "5"])])).map(with_model)
recommend_argv = command_argv(
    "recommend", [option("--model", model_dirs), option("--input", data_files),
                  option("--output", st.sampled_from(["out.csv", "out.parquet", "out.csv", "out.txt", "existing.csv",
                                                      "sub/out.csv", "existing_model", "out", "", ".", "x" * 300,
                                                      "a\x00b"]))],
    [option("--n", ints), option("--memory-mib", ints), st.just(["--include-seen"]),
     option("--device", st.sampled_from(["cpu", "cuda", "cuda:3", "auto", "meta", "bogus", ""]))])
datasets_argv = command_argv("datasets", [], [option("--data-dir", data_dirs), st.just(["--json"])])
# demo always runs on the shipped ml-latest-small (seconds), so it gets an invalid seed, which it refuses at once
demo_argv = st.tuples(st.sampled_from(["-1", str(2**32), str(10**30), "x", "", "1.5"]),
                      st.sampled_from([[], ["--user", "1"], ["--user", "nobody"]])).map(
    lambda t: ["demo", "--seed", t[0], *t[1]])
cli_argv = st.one_of(train_argv, train_argv, evaluate_argv, evaluate_argv, recommend_argv, recommend_argv,
                     datasets_argv, demo_argv, st.sampled_from([[], ["--version"], ["--help"], ["bogus"], ["--bogus"]]))


@pytest.fixture(scope="module")
def cli_files(workspace, saved_models) -> dict[str, str]:
    """Small data files (good, bad and odd), saved models and a fake dataset folder, by their "@name"."""
    folder = workspace / "cli"
    folder.mkdir()
    clicks = pd.DataFrame({"user": [u for u in range(24) for _ in range(8)],
                           "item": [(u * 5 + j) % 16 for u in range(24) for j in range(8)]})
    clicks.to_csv(folder / "clicks.csv", index=False)
    ratings = clicks.assign(rating=[1 + (u + j) % 5 for u in range(24) for j in range(8)], timestamp=978300760)
    ratings.to_csv(folder / "ratings.csv", index=False)
    ratings.to_csv(folder / "u.data", sep="\t", header=False, index=False)
    clicks.to_parquet(folder / "clicks.parquet")
    (folder / "bad.parquet").write_bytes(b"PAR1 not really PAR1")
    (folder / "bad.csv").write_bytes(b"\xff\xfe\x00garbage,\n\"unterminated")
    (folder / "empty.csv").write_bytes(b"")
    (folder / "header_only.csv").write_text("user,item\n")
    (folder / "no_user.csv").write_text("a,b\n1,2\n")
    clicks.assign(item=clicks["item"] + 1000).to_csv(folder / "unknown_items.csv", index=False)
    (folder / "ml-latest-small").mkdir()
    ratings.rename(columns={"user": "userId", "item": "movieId"}).to_csv(folder / "ml-latest-small" / "ratings.csv",
                                                                          index=False)
    for name, payload in (("ml-100k/u.data", b"1\t2\t3\t4\n"), ("ml-1m/ratings.dat", b"1::2::3::4\n"),
                          ("ml-20m/ratings.csv", b"garbage")):
        (folder / "fake_data" / name).parent.mkdir(parents=True)
        (folder / "fake_data" / name).write_bytes(payload)
    data = read_csv(folder / "clicks.csv")
    metadata = {"dataset": str(folder / "clicks.csv"), "protocol": "per-user", "seed": 1}
    models = {"saved_popularity": make_model("popularity"), "saved_mult_dae": make_model("mult_dae", hidden=4, latent=2,
                                                                                             epochs=1)}
    files = {name: aerec.save(model.fit(data), folder / name, metadata=metadata) for name, model in models.items()}
    files["saved_bias"] = aerec.save(make_model("bias").fit(read_csv(folder / "ratings.csv", rating="rating")),
                                     folder / "saved_bias", metadata={**metadata, "protocol": "ratings",
                                                                      "dataset": str(folder / "ratings.csv")})
    odd = shutil.copytree(files["saved_popularity"], folder / "odd_metadata")
    config = json.loads((odd / "config.json").read_text())
    config["metadata"] = {"dataset": ["not", "a", "path"], "seed": "x", "protocol": 5, "n_heldout": -3}
    (odd / "config.json").write_text(json.dumps(config))
    broken = shutil.copytree(files["saved_popularity"], folder / "broken_model")
    (broken / "config.json").write_text('{"format": "aerec-model", "format_version": 1, "model": "popularity"')
    names = {"clicks": "clicks.csv", "ratings": "ratings.csv", "udata": "u.data", "bad": "bad.csv", "empty": "empty.csv",
             "header_only": "header_only.csv", "no_user": "no_user.csv", "parquet": "clicks.parquet",
             "bad_parquet": "bad.parquet", "unknown_items": "unknown_items.csv", "folder": "ml-latest-small",
             "fake_data": "fake_data", "odd_metadata": "odd_metadata", "broken_model": "broken_model",
             **{name: name for name in files}}
    return {f"@{name}": str(folder / relative) for name, relative in names.items()}


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@contextlib.contextmanager
def working_directory(folder: Path):
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def without_data_dir():
    """No $AEREC_DATA_DIR: a command must not wander off to the real (large) datasets."""
    saved = os.environ.pop("AEREC_DATA_DIR", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["AEREC_DATA_DIR"] = saved


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: 2 for a bad argument, 0 for --help and --version
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def prepare_case_folder(folder: Path, saved: Path) -> None:
    """What a case's folder holds before the command: a file, a model, and a model whose config.json is damaged."""
    (folder / "existing.csv").write_text("user,item,rank,score\n")
    shutil.copytree(saved, folder / "existing_model")
    damaged_model = shutil.copytree(saved, folder / "damaged_model")
    config = json.loads((damaged_model / "config.json").read_text())
    del config["model"]
    config["training"] = [1]
    (damaged_model / "config.json").write_text(json.dumps(config))


def check_exit(argv: list[str], code, err: str, before: dict, after: dict) -> None:
    """Exit 0 or 2 (datasets: 1 on a checksum mismatch); for 2, one error line, last, and nothing left behind."""
    allowed = (0, 1, 2) if argv[:1] == ["datasets"] else (0, 2)
    assert code in allowed, (code, argv, err[-2000:])
    assert "Traceback" not in err, err
    assert not [name for name in after if name.endswith(".tmp")], (argv, sorted(after))  # no temporary file left
    if code == 2:
        lines = err.strip().splitlines()
        assert lines and [line for line in lines if ": error: " in line] == lines[-1:], (argv, err[-2000:])
        assert lines[-1].startswith(("aerec: error: ", f"aerec {argv[0] if argv else ''}: error: ")), lines[-1]
        assert lines[-1].split(": error: ", 1)[1].strip(), lines[-1]
        assert after == before, (argv, sorted(set(after) ^ set(before)))  # a refused command leaves nothing behind


@fuzz_settings("cli")
@given(cli_argv)
def test_fuzz_cli(workspace, saved_models, cli_files, argv):
    argv = [cli_files.get(token, token) for token in argv]
    with scratch(workspace) as folder, working_directory(folder), without_data_dir():
        prepare_case_folder(folder, saved_models["popularity"])
        before = files_under(folder)
        code, out, err = run_main(argv)
        after = files_under(folder)
        check_exit(argv, code, err, before, after)
        command = argv[0] if argv else ""
        if code == 0 and command == "train" and "--help" not in argv:
            out_dir = Path(argv[argv.index("--out") + 1])
            assert (out_dir / "config.json").is_file() and not (out_dir / "checkpoint").exists()
        if code == 0 and command == "recommend" and "--help" not in argv:
            output = Path(argv[argv.index("--output") + 1])
            if output.is_dir():  # a name without an extension: the sharded job's parts and manifest
                from aerec.inference import read_recommendations

                written = read_recommendations(output)
            else:
                written = pd.read_csv(output) if output.suffix == ".csv" else pd.read_parquet(output)
            assert list(written.columns) == ["user", "item", "rank", "score"]
    count("aerec CLI", f"exit {code} ({command or 'no command'})", err.strip().splitlines()[-1] if err.strip() else "")


# -- regression tests: the bugs the fuzzing found ---------------------------------------------------
@pytest.mark.parametrize("name", ["u.data", "ratings.dat"])
def test_an_empty_movielens_file_is_a_value_error(tmp_path, name):
    (tmp_path / name).write_bytes(b"")  # pandas' EmptyDataError escaped unwrapped
    with pytest.raises(ValueError, match=f"cannot parse .*{name}"):
        load_movielens(tmp_path / name, verify=False)


@pytest.mark.parametrize("ratings, duplicates", [([1e39, 4.0], "error"), ([1e-50, 4.0], "error"),
                                                 ([3e38, 3e38], "sum")])
def test_ratings_that_float32_cannot_hold_are_refused(ratings, duplicates):
    frame = pd.DataFrame({"user": [1, 1 if duplicates == "sum" else 2], "item": [1, 1], "rating": ratings})
    with pytest.raises(ValueError, match="float32 .* cannot hold"):  # were stored as inf and as an explicit 0
        Interactions.from_pandas(frame, rating="rating", duplicates=duplicates)


def test_a_ratings_file_with_a_rating_float32_cannot_hold_is_refused(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,1e39,5\n")
    with pytest.raises(ValueError, match="1e\\+39 .*float32"):
        load_movielens(tmp_path / "ratings.csv")


@pytest.mark.parametrize("times", [[1e30, 1.0], [-1e19, 1.0], np.array([2**64 - 1, 1], dtype=np.uint64)])
def test_timestamps_outside_int64_are_refused(times):
    frame = pd.DataFrame({"user": [1, 2], "item": [1, 2], "t": times})  # were wrapped to -2**63
    with pytest.raises(ValueError, match="timestamp column 't' has the value .* expected times within int64"):
        Interactions.from_pandas(frame, timestamp="t")


@pytest.mark.parametrize("duplicates", ["error", "first", "sum", "max"])
def test_integer_timestamps_stay_exact(duplicates):
    nanoseconds = [2**53 + 1, 1_700_000_000_123_456_789]  # float64 rounds both
    users = [1, 1] if duplicates != "error" else [1, 2]
    data = Interactions.from_pandas(pd.DataFrame({"user": users, "item": [1, 1], "t": nanoseconds}), timestamp="t",
                                    duplicates=duplicates)
    expected = {"error": nanoseconds, "first": nanoseconds[:1]}.get(duplicates, [max(nanoseconds)])
    assert data.timestamps.tolist() == expected


def test_time_zone_aware_timestamps_are_unix_seconds():
    times = pd.Series(pd.to_datetime([0, 978300760], unit="s", utc=True)).dt.tz_convert("Asia/Kolkata")
    data = Interactions.from_pandas(pd.DataFrame({"user": [1, 2], "item": [1, 2], "t": times}), timestamp="t")
    assert data.timestamps.tolist() == [0, 978300760]  # was a TypeError from pandas' astype


@pytest.mark.parametrize("frame, names, message", [
    (pd.DataFrame({"user": [1], "item": [2]}), {"user": None}, "user=None; expected the name of the user id column"),
    (pd.DataFrame([[1, 2, 3]], columns=["user", "user", "item"]), {}, "'user' selects 2 columns"),
    (pd.DataFrame([[1, 2]], columns=pd.MultiIndex.from_tuples([("user", "a"), ("item", "b")])), {},
     "'user' selects 1 columns"),
    (pd.DataFrame({"user": [1], "item": [2]}), {"item": ["item"]}, r"missing column\(s\) item=\['item'\]"),
])
def test_column_names_that_select_no_single_column_are_refused(frame, names, message):
    with pytest.raises(ValueError, match=message):  # were a KeyError, pandas' "truth value is ambiguous", a TypeError
        Interactions.from_pandas(frame, **names)


@pytest.mark.parametrize("users", [[{"a": 1}, {"b": 2}], list(range(1000)) + ["x"]])
def test_ids_that_cannot_be_sorted_are_refused(users):
    frame = pd.DataFrame({"user": pd.Series(users, dtype=object), "item": 1})
    with pytest.raises(ValueError, match="column 'user' holds ids that cannot be sorted together"):
        Interactions.from_pandas(frame)  # was a TypeError from np.unique


def test_complex_ratings_and_times_are_refused():
    frame = pd.DataFrame({"user": [1], "item": [1], "r": [4 + 1j], "t": [5 + 0j]})
    with pytest.raises(ValueError, match="rating column 'r' has dtype complex128"):  # the imaginary part was dropped
        Interactions.from_pandas(frame, rating="r")
    with pytest.raises(ValueError, match="timestamp column 't' has dtype complex128"):
        Interactions.from_pandas(frame, timestamp="t")


def damaged_copy(saved: Path, tmp_path: Path, change) -> Path:
    path, config, _ = copy_model(saved, tmp_path)
    config = change(config) or config
    (path / "config.json").write_bytes(config if isinstance(config, bytes) else json.dumps(config).encode())
    return path


def set_fitted(name, value):
    return lambda config: config["state"]["fitted"].update({name: value})


@pytest.mark.parametrize("model, change, message", [
    ("popularity", lambda c: c.update(shapes=[1]), "'shapes' of type list"),  # AttributeError
    ("popularity", lambda c: c.update(model=["popularity"]), r"holds model \['popularity'\]"),  # TypeError
    ("mult_dae", set_fitted("device_", {"__device__": "bogus"}), "names device 'bogus'"),  # RuntimeError
    ("mult_dae", set_fitted("history_", {"__dataclass__": ["History"]}), r"holds a \['History'\] object"),  # TypeError
    ("popularity", set_fitted("x_", {"__csr__": {"shape": [float("inf"), 1], "data": [], "indices": [],
                                                 "indptr": [0]}}), "damaged sparse matrix"),  # OverflowError
    ("popularity", set_fitted("x_", {"__csr__": {"__ndarray__": "state.fitted.item_counts_"}}),
     "damaged sparse matrix"),  # IndexError
    ("popularity", set_fitted("x_", {"__array__": [[1], [1, 2]], "dtype": "str"}), "damaged array"),  # numpy's ValueError
    ("popularity", lambda c: json.dumps(c).replace('"n_items_": 12', '"n_items_": ' + "1" * 5000).encode(),
     "not valid JSON"),  # json's ValueError on an integer past 4300 digits
    ("popularity", set_fitted("n_items_", "12"), "n_items_='12'; expected"),  # loaded, broken
    ("popularity", set_fitted("n_items_", True), "n_items_=True; expected"),
    ("popularity", set_fitted("item_ids_", None), "item_ids_ of NoneType"),
    ("popularity", lambda c: c["tensors"].update(file="t" * 300), "cannot be read"),  # OSError: name too long
])
def test_config_values_of_the_wrong_type_are_refused(saved_models, tmp_path, model, change, message):
    path = damaged_copy(saved_models[model], tmp_path, change)
    with pytest.raises(StateFileError, match=message):
        aerec.load(path)


def test_a_model_path_too_long_for_the_file_system_is_refused(tmp_path):
    with pytest.raises(StateFileError, match="cannot read"):  # was an OSError
        aerec.load(tmp_path / ("x" * 300))


def test_an_array_of_a_dtype_numpy_has_not_is_refused(saved_models, tmp_path):
    path, config, tensor_file = copy_model(saved_models["popularity"], tmp_path)
    edit = ("header", [("retype", 0, "BF16")], True)  # item_counts_ (F32 x 12) read as BF16 x 24, shapes made to agree
    tensor_file.write_bytes(damaged_tensor_file(tensor_file.read_bytes(), edit, config))
    config["tensors"].update(bytes=tensor_file.stat().st_size, sha256=sha256_of_file(tensor_file))
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(StateFileError, match="dtype torch.bfloat16, which numpy cannot hold"):  # was a TypeError
        aerec.load(path)


def test_weights_are_checked_against_the_network_before_it_is_built(saved_models, tmp_path, monkeypatch):
    from aerec.models import MultDAE

    devices = []
    build = MultDAE.new_module
    monkeypatch.setattr(MultDAE, "new_module", lambda self: devices.append(torch.empty(0).device.type) or build(self))
    path = damaged_copy(saved_models["mult_dae"], tmp_path, lambda c: c["state"]["params"].update(hidden=1000))
    with pytest.raises(StateFileError, match="does not match a MultDAE .* shape"):
        aerec.load(path)
    # built on the meta device only, which allocates nothing: with hidden=2**30 the network was allocated (48 GB,
    # the process was killed) before its weights were found not to fit
    assert devices == ["meta"]


def test_a_device_this_machine_has_not_is_refused(saved_models, tmp_path):
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU, on any machine
    with pytest.raises(ValueError, match=f"device='{missing}' is not available on this machine"):
        aerec.load(saved_models["mult_dae"], device=missing)  # was an AssertionError (or RuntimeError) from torch
    path = damaged_copy(saved_models["mult_dae"], tmp_path, lambda c: c["state"]["params"].update(device=missing))
    with pytest.raises(ValueError, match="is not available on this machine"):
        aerec.load(path)


@pytest.mark.parametrize("argv", [
    ["train", "--model", "popularity", "--dataset", "@clicks", "--out", "x" * 300],
    ["evaluate", "--model", "x" * 300],
    ["evaluate", "--model", "popularity", "--dataset", "x" * 300],
    ["datasets", "--data-dir", "x" * 300],
    ["recommend", "--model", "@saved_popularity", "--input", "@clicks", "--output", "x" * 300 + ".csv"],
    ["evaluate", "--model", "ease", "--dataset", "@clicks", "--param", "device=cuda:99"],
    ["train", "--model", "ease", "--dataset", "@clicks", "--out", "out", "--param", "device=cuda:99"],
    ["recommend", "--model", "@saved_mult_dae", "--input", "@clicks", "--output", "out.csv", "--device", "cuda:99"],
    ["train", "--model", "popularity", "--dataset", "@clicks", "--out", "damaged_model", "--resume"],
])
def test_hostile_arguments_exit_2_with_one_line(saved_models, cli_files, tmp_path, argv):
    argv = [cli_files.get(token, token) for token in argv]
    with working_directory(tmp_path), without_data_dir():
        prepare_case_folder(tmp_path, saved_models["popularity"])
        before = files_under(tmp_path)
        code, out, err = run_main(argv)  # were tracebacks: OSError, AssertionError from torch, KeyError
        check_exit(argv, code, err, before, files_under(tmp_path))
    assert code == 2 and out == ""
