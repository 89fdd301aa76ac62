"""``aerec recommend``: top-n for every user of an interactions file, streamed to CSV or Parquet.

Every user of the input is folded in from their rows (users the model never saw
included), their known items are excluded, and the results are written batch by
batch (a bounded block of scores at a time), so millions of users fit in memory.
A file output appears under its name only when it is complete. An output directory
(``--output OUT_DIR/``) runs the sharded, resumable job of :mod:`aerec.inference`:
Parquet parts and a manifest, the input read in chunks, and under ``torchrun`` one
share of the users per process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from aerec.cli.common import (
    CliError,
    Reading,
    add_overwrite_argument,
    add_reading_arguments,
    atomic_output,
    check_output,
    check_positive_int,
    load_dataset,
    progress,
)
from aerec.data.catalogue import align_to_catalogue, recommendations_frame
from aerec.inference import history_threshold


def register(commands) -> None:
    parser = commands.add_parser(
        "recommend", help="top-n items for every user of an interactions file, written to CSV or Parquet",
        description="Fold in every user of --input (CSV or Parquet with user and item columns, and rating for "
                    "rating models) into a saved model, exclude the items they already have, and write the top "
                    "--n as rows user,item,rank,score to --output (.csv or .parquet), streaming in batches. Items "
                    "the model does not know are ignored (their count is reported on stderr). Ratings in a history "
                    "are prepared as the model's training data was: for a model trained with the strong protocol "
                    "on ratings, ratings > 3.5 are kept as 1 and the others dropped (--binarize changes the "
                    "threshold, --binarize none uses the ratings as they are); a rating model uses them as they are.")
    parser.add_argument("--model", required=True, help="a model directory written by aerec train (or aerec.save)")
    parser.add_argument("--input", required=True,
                        help="the users' interactions: CSV or Parquet with user,item[,rating] columns, or a MovieLens "
                             "ratings file (u.data, ratings.dat, ratings.csv)")
    parser.add_argument("--n", "--top-n", dest="n", type=int, default=10,
                        help="items per user (default 10); under torchrun write --top-n (torchrun takes --n for an "
                             "abbreviation of its own options)")
    parser.add_argument("--output", required=True,
                        help="recs.csv or recs.parquet (written when complete), or a directory (OUT_DIR/): Parquet "
                             "parts part-<rank>-<k>.parquet and a manifest.json written last, the input read in "
                             "chunks, resumable (the same command again finishes a killed job), and shared among the "
                             "processes of torchrun --nproc-per-node N [--nnodes M] -m aerec recommend ...")
    add_overwrite_argument(parser)
    parser.add_argument("--include-seen", action="store_true", help="do not exclude the items a user already has")
    parser.add_argument("--memory-mib", type=int,
                        help="memory for one batch of scores, in MiB (default: 8 on the CPU, 256 on a GPU)")
    parser.add_argument("--device", help="cpu, cuda or auto (default: the saved model's device setting); under "
                                         "torchrun each process takes the GPU LOCAL_RANK")
    parser.add_argument("--part-interactions", type=int, default=None,
                        help="with an output directory: about this many input interactions per part (default "
                             "500,000); smaller parts lose less work to a kill and hold less memory")
    add_reading_arguments(parser, "--input", histories=True)
    parser.set_defaults(run=run)


def run(args) -> int:
    import aerec.model_files as model_files

    check_positive_int("--n", args.n)
    check_positive_int("--memory-mib", args.memory_mib)
    check_positive_int("--part-interactions", args.part_interactions)
    if is_directory_output(args.output):
        return run_job(args)
    if args.part_interactions is not None:
        raise CliError(f"--part-interactions is for an output directory; --output {args.output} is a file")
    from aerec.inference import launch_environment

    if launch_environment()[1] > 1:
        raise CliError(f"--output {args.output} is one file, and this is one of {launch_environment()[1]} processes "
                       "(torchrun): name a directory (OUT_DIR/) for the processes to write their parts into")
    output = check_output(args.output, args.overwrite, [("--input", args.input)])
    if not Path(args.model).is_dir():
        raise CliError(f"--model {args.model} is not a directory; expected one written by aerec train")
    model = model_files.load(args.model, device=args.device)
    if args.n > model.n_items_:
        raise CliError(f"--n {args.n}; expected at most the {model.n_items_} items of the model's catalogue")
    users = load_histories(args, args.model)
    rows, unknown = align_to_catalogue(users, model.item_ids_, warn=False)
    if users.nnz and unknown == users.nnz:
        raise CliError(f"none of the {users.n_items} items of --input are in the model's catalogue of "
                       f"{model.n_items_} items (input ids such as {users.item_ids[0]!r}, model ids such as "
                       f"{model.item_ids_[0]!r})")
    progress(f"{users.n_users} users, {users.nnz} interactions; {unknown} interaction(s) with items the model does "
             "not know were ignored")
    batches = model.recommend_batches(rows, n=args.n, filter_already_liked_items=not args.include_seen,
                                      memory_budget=None if args.memory_mib is None else args.memory_mib * 2**20)
    written = write_recommendations(batches, users.user_ids, np.asarray(model.item_ids_), output)
    progress(f"wrote {written} recommendations for {users.n_users} users to {output}")
    return 0


def is_directory_output(output: str) -> bool:
    """``--output`` names a directory: ends with a slash, exists as one, or has no file extension."""
    path = Path(output)
    return output.endswith(("/", os.sep)) or path.is_dir() or path.suffix == ""


def run_job(args) -> int:
    """The sharded, resumable job of :mod:`aerec.inference` into the directory ``--output``."""
    import json

    import aerec.model_files as model_files
    from aerec.data.chunks import open_table
    from aerec.data.datasets import DATASETS, verify_file
    from aerec.data.readers import movielens_ratings_path
    from aerec.inference import IncompleteJobError, RecommendJob, launch_environment

    rank, world, local_rank = launch_environment()
    if not Path(args.model).is_dir():
        raise CliError(f"--model {args.model} is not a directory; expected one written by aerec train")
    reading = Reading.from_args(args)
    if reading.min_user_count or reading.min_item_count:
        raise CliError("--min-user-count and --min-item-count prepare training data; recommend scores every "
                       "user of --input")
    if reading.timestamp_col is not None:
        raise CliError("--timestamp-col: recommend reads no timestamps")
    source = args.input
    if args.input in DATASETS:
        source = movielens_ratings_path(args.input, None)
    if reading.verify and Path(source).is_file():
        verify_file(Path(source))
    device = args.device
    if world > 1:
        import torch

        if torch.cuda.is_available() and device in (None, "auto", "cuda"):
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
    model = model_files.load(args.model, device=device)
    if args.n > model.n_items_:
        raise CliError(f"--n {args.n}; expected at most the {model.n_items_} items of the model's catalogue")
    from aerec.inference import peak_memory_mib

    progress(f"rank {rank}/{world}: model loaded, peak memory {peak_memory_mib():,.0f} MiB")
    table = open_table(source, user=reading.user_col, item=reading.item_col,
                       rating=False if reading.rating_col == "none" else reading.rating_col, sep=reading.sep)
    metadata = json.loads((Path(args.model) / "config.json").read_text()).get("metadata", {})
    from aerec.inference import DEFAULT_PART_INTERACTIONS, DEFAULT_WAIT_SECONDS

    wait = os.environ.get("AEREC_JOB_WAIT")
    try:
        wait_seconds = DEFAULT_WAIT_SECONDS if wait is None else float(wait)
    except ValueError:
        raise CliError(f"AEREC_JOB_WAIT={wait!r}; expected seconds (a number)") from None
    job = RecommendJob(model=model, model_dir=Path(args.model), table=table, out=Path(args.output), n=args.n,
                       filter_seen=not args.include_seen, binarize=reading.binarize,
                       recorded_threshold=metadata.get("history_threshold"), duplicates=reading.duplicates,
                       memory_budget=None if args.memory_mib is None else args.memory_mib * 2**20,
                       part_interactions=args.part_interactions or DEFAULT_PART_INTERACTIONS, rank=rank,
                       world=world, wait_seconds=wait_seconds, overwrite=args.overwrite, progress=progress)
    try:
        manifest = job.run()
    except IncompleteJobError as exc:
        print(f"aerec recommend: error: {exc}", file=sys.stderr)
        return 1
    if manifest is not None:
        progress(f"wrote {manifest['rows']} recommendations for {manifest['users']} users in "
                 f"{len(manifest['parts'])} part(s) to {args.output} ({manifest['unknown_interactions']} "
                 "interaction(s) with items the model does not know were ignored)")
    return 0


def load_histories(args, model_dir: str):
    """``--input`` read with the reading flags, its ratings prepared as the model's training data was
    (``--binarize``; by default the threshold recorded at training, ratings > 3.5 kept as 1 for the
    strong protocol on ratings), so that a history means what the training rows meant."""
    import json

    metadata = json.loads((Path(model_dir) / "config.json").read_text()).get("metadata", {})
    reading = Reading.from_args(args)
    if reading.min_user_count or reading.min_item_count:
        raise CliError("--min-user-count and --min-item-count prepare training data; recommend scores every "
                       "user of --input")
    histories = load_dataset(args.input, None, "--input", reading=Reading(**{**vars(reading), "binarize": None}))
    threshold, why = history_threshold(reading.binarize, metadata.get("history_threshold"),
                                       bool((histories.matrix.data == 1.0).all()))
    if threshold is None:
        return histories  # --binarize none, a model trained on the values, or histories without ratings
    from aerec.data import binarize

    kept = binarize(histories, threshold=threshold)  # every user stays, with the entries above the threshold
    progress(f"histories binarized ({why}): ratings > {threshold:g} kept as 1, {histories.nnz - kept.nnz} of "
             f"{histories.nnz} dropped (--binarize none uses the ratings as they are)")
    return kept


def write_recommendations(batches, user_ids, item_ids, output: Path) -> int:
    """Write each batch's rows as they come; the file takes its name only once all are written."""
    user_ids = np.asarray(user_ids)
    written = 0
    with atomic_output(output) as temporary:
        writer = None
        try:
            for index, ids, scores in batches:
                frame = recommendations_frame(user_ids[np.asarray(index)], ids, scores, item_ids)
                writer = append(writer, frame, temporary, output.suffix)
                written += len(frame)
            if writer is None:  # no users: a file with the columns only
                empty = recommendations_frame(user_ids[:0], np.empty((0, 1), np.int64), np.empty((0, 1)), item_ids)
                writer = append(None, empty, temporary, output.suffix)
        finally:
            if writer is not None and output.suffix == ".parquet":
                writer.close()
    return written


def append(writer, frame: pd.DataFrame, path: Path, suffix: str):
    """Append ``frame`` to the output; returns the open writer (the CSV one is the file itself)."""
    if suffix == ".csv":
        frame.to_csv(path, mode="a" if writer else "w", header=writer is None, index=False)
        return True
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if writer is None:
        writer = pq.ParquetWriter(path, table.schema)
    writer.write_table(table.cast(writer.schema))
    return writer
