"""``aerec similar`` and ``aerec embed``: a saved model's item neighbours and its item (or user) vectors.

``similar`` prints (or writes) the ``--n`` nearest items of each item of ``--items``,
rows ``item,similar_item,rank,score`` in raw ids. ``embed`` writes one vector per
item (or, with ``--input``, per user of a histories file) to Parquet (a column
``embedding`` of fixed-size float32 lists) or CSV (columns ``e0..e{d-1}``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from aerec.cli.common import (
    CliError,
    add_overwrite_argument,
    add_reading_arguments,
    atomic_output,
    check_output,
    check_positive_int,
    progress,
)
from aerec.cli.recommend import load_histories


def register(commands) -> None:
    similar = commands.add_parser(
        "similar", help="the nearest items of given items, by a saved model's item representations",
        description="For each item of --items (raw ids, comma-separated), the --n most similar items of a saved "
                    "model: cosine between item embeddings for the autoencoders, ALS and BPR; the item-item "
                    "weights (the item's column of B) for EASE, DLAE and EDLAE. Rows item,similar_item,rank,score "
                    "go to stdout as CSV, or to --output (.csv or .parquet).")
    similar.add_argument("--model", required=True, help="a model directory written by aerec train (or aerec.save)")
    similar.add_argument("--items", required=True, help="raw item ids, comma-separated (e.g. 1,50)")
    similar.add_argument("--n", type=int, default=10, help="neighbours per item (default 10)")
    similar.add_argument("--metric", help="cosine, dot, or weight (EASE, DLAE, EDLAE); default: the model's own")
    similar.add_argument("--output", help="write to this .csv or .parquet instead of stdout")
    add_overwrite_argument(similar)
    similar.set_defaults(run=run_similar)

    embed = commands.add_parser(
        "embed", help="write a saved model's item vectors (or users' vectors) to Parquet or CSV",
        description="One vector per item of the model's catalogue (raw ids in the column item), or with --input "
                    "one per user of a histories file (folded in, column user). Parquet holds a column embedding "
                    "of fixed-size float32 lists; CSV the columns e0..e{d-1}.")
    embed.add_argument("--model", required=True, help="a model directory written by aerec train (or aerec.save)")
    embed.add_argument("--output", required=True, help="items.parquet or items.csv (written when complete)")
    add_overwrite_argument(embed)
    embed.add_argument("--input", help="histories (CSV or Parquet with user,item[,rating]): embed these users instead")
    add_reading_arguments(embed, "--input", histories=True)
    embed.set_defaults(run=run_embed)


def load_model(directory: str):
    import aerec.model_files as model_files

    if not Path(directory).is_dir():
        raise CliError(f"--model {directory} is not a directory; expected one written by aerec train")
    return model_files.load(directory)


def run_similar(args) -> int:
    check_positive_int("--n", args.n)
    output = check_output(args.output, args.overwrite)
    items = [item.strip() for item in args.items.split(",") if item.strip()]
    if not items:
        raise CliError(f"--items {args.items!r}: expected raw item ids separated by commas, e.g. 1,50")
    model = load_model(args.model)
    try:
        frame = model.similar_items(np.array(items, dtype=object), n=args.n, metric=args.metric)
    except TypeError as exc:  # a model without item representations
        raise CliError(str(exc)) from exc
    write_frame(frame, output)
    return 0


def run_embed(args) -> int:
    output = check_output(args.output, args.overwrite, [("--input", args.input)])
    model = load_model(args.model)
    try:
        if args.input is None:
            ids, vectors, key = np.asarray(model.item_ids_), model.item_embeddings(), "item"
        else:
            histories = model.align(load_histories(args, args.model))
            ids, vectors, key = histories.user_ids, model.user_embeddings(histories), "user"
    except TypeError as exc:  # a model without such representations
        raise CliError(str(exc)) from exc
    write_frame(embeddings_frame(key, ids, vectors), output, vectors if output.suffix == ".parquet" else None)
    progress(f"wrote {len(ids)} {key} vectors of {vectors.shape[1]} dimensions to {output}")
    return 0


def embeddings_frame(key: str, ids, vectors: np.ndarray) -> pd.DataFrame:
    """Ids and the vectors' columns ``e0..e{d-1}`` (the CSV layout)."""
    columns = {f"e{d}": vectors[:, d] for d in range(vectors.shape[1])}
    return pd.DataFrame({key: ids, **columns})


def write_frame(frame: pd.DataFrame, output: Path | None, vectors: np.ndarray | None = None) -> None:
    """``frame`` as CSV on stdout, or to ``output`` atomically; Parquet embeddings as one fixed-size list column."""
    if output is None:
        frame.to_csv(sys.stdout, index=False)
        return
    with atomic_output(output) as temporary:
        if output.suffix == ".csv":
            frame.to_csv(temporary, index=False)
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        if vectors is None:
            table = pa.Table.from_pandas(frame, preserve_index=False)
        else:
            flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
            key = frame.columns[0]
            table = pa.table({key: pa.array(frame[key].to_numpy()),
                              "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})
        pq.write_table(table, temporary)
