"""Peak memory and time of reading an interactions file: in blocks (aerec's readers now) against the whole-file
read they replaced (pandas' frame of the whole file, then ``Interactions.from_pandas``).

Files (synthetic Zipf interactions, ``aerec.data.synthetic.zipf_interactions``, ML-20M-shaped: 136,677 users x
20,108 items, 10 million rows, with ratings and timestamps):

- ``ratings.csv``: MovieLens' ``userId,movieId,rating,timestamp`` layout, integer ids;
- ``ratings.parquet``: the same rows;
- ``text_ids.csv``: the same rows with text ids (``user-000123``, ``item-00456``).

Each read runs in a fresh process at one thread, in turn (blocks, whole, blocks, whole, ...; ``--repeats``
times): the process imports aerec, pandas and pyarrow, notes its resident memory (``baseline``), reads the file
with ``aerec.data.readers.read_interactions`` (blocks) or with ``pandas.read_csv`` / ``pandas.read_parquet`` and
``Interactions.from_pandas`` (whole, what ``read_interactions`` did before), and reports its peak resident
memory (``VmHWM``) and the read's wall time. "Increase" is the peak less the baseline; "result" is what the
read must hold at the end (the CSR's arrays, the ids, the timestamps and the entries' source positions). The
two reads' results are compared (same matrix, ids and timestamps).

Run from the repository root (about 10 minutes):

    .venv/bin/python evaluation/reading_memory.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from _common import add_run_args, environment_lines, finish_run, markdown_table, start_run

SHAPE = (136_677, 20_108, 10_000_000)
FILES = ("ratings.csv", "ratings.parquet", "text_ids.csv")

CHILD = r"""
import hashlib, json, sys, time
import numpy as np, pandas as pd, pyarrow, pyarrow.parquet, pyarrow.csv
import aerec
from aerec.data import Interactions
from aerec.data.readers import read_interactions
from aerec.inference import peak_memory_mib

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**10

path, how = sys.argv[1], sys.argv[2]
baseline = rss_mib()
start = time.perf_counter()
if how == "blocks":
    data = read_interactions(path)
else:
    frame = pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)
    data = Interactions.from_pandas(frame, "userId", "movieId", "rating", "timestamp")
    del frame
seconds = time.perf_counter() - start
m = data.matrix
result = sum(a.nbytes for a in (m.data, m.indices, m.indptr)) + sum(
    a.nbytes if a.dtype != object else sum(len(str(x)) + 49 for x in a)
    for a in (data.user_ids, data.item_ids)) + sum(a.nbytes for a in (data.timestamps, data.positions) if a is not None)
digest = hashlib.sha256()
for a in (m.data, m.indices, m.indptr, data.timestamps):
    digest.update(np.ascontiguousarray(a).tobytes())
digest.update(repr((data.user_ids.tolist(), data.item_ids.tolist())).encode())
print(json.dumps({"baseline_mib": baseline, "peak_mib": peak_memory_mib(), "seconds": seconds,
                  "result_mib": result / 2**20, "sha256": digest.hexdigest(), "shape": list(data.shape)}))
"""


def write_files(work: Path, log) -> None:
    from aerec.data.synthetic import zipf_interactions

    if all((work / name).exists() for name in FILES):
        return
    users, items, nnz = SHAPE
    data = zipf_interactions(users, items, nnz, seed=0)
    coo = data.matrix.tocoo()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(coo.row))  # rows not grouped by user or item, as logs are
    frame = pd.DataFrame({"userId": data.user_ids[coo.row][order] + 1, "movieId": data.item_ids[coo.col][order] + 1,
                          "rating": rng.integers(1, 11, len(order)) / 2,
                          "timestamp": rng.integers(789_652_009, 1_427_784_002, len(order))})
    log(f"writing {len(frame):,} rows")
    frame.to_csv(work / "ratings.csv", index=False)
    frame.to_parquet(work / "ratings.parquet", row_group_size=1 << 20)
    frame.assign(userId="user-" + frame.userId.astype(str).str.zfill(6),
                 movieId="item-" + frame.movieId.astype(str).str.zfill(5)).to_csv(work / "text_ids.csv", index=False)


def measure(path: Path, how: str, checkout: Path | None = None) -> dict:
    env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), "blocks" if how == "before" else how],
                         capture_output=True, text=True, env=env, cwd=checkout or Path(__file__).resolve().parents[1])
    if out.returncode:
        raise RuntimeError(f"{how} read of {path} failed:\n{out.stderr[-3000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "process_seconds": time.perf_counter() - started}


def markdown(record: dict) -> str:
    rows, before_rows = [], []
    for name, result in record["files"].items():
        blocks, whole = result["blocks"], result["whole"]
        rows.append([name, f"{blocks['increase_mib']:,.0f}", f"{whole['increase_mib']:,.0f}",
                     f"{blocks['increase_mib'] / whole['increase_mib']:.2f}", f"{blocks['result_mib']:,.0f}",
                     f"{blocks['increase_mib'] / blocks['result_mib']:.2f}", f"{blocks['seconds']:.1f}",
                     f"{whole['seconds']:.1f}", f"{blocks['seconds'] / whole['seconds']:.2f}",
                     "yes" if result["identical"] else "NO"])
        if "before" in result:
            before = result["before"]
            before_rows.append([name, f"{blocks['increase_mib']:,.0f}", f"{before['increase_mib']:,.0f}",
                                f"{blocks['increase_mib'] / before['increase_mib']:.2f}", f"{blocks['seconds']:.1f}",
                                f"{before['seconds']:.1f}", f"{blocks['seconds'] / before['seconds']:.2f}"])
    before_table = "" if not before_rows else f"""
Against `read_interactions` before this change (the checkout `{record['old']}`: pandas' whole-file frame, then
`np.unique` and two lexsorts), same files, same runs, same result:

{markdown_table(["file", "now: peak increase MiB", "before: peak increase MiB", "now / before", "now s",
                 "before s", "time now / before"], before_rows)}
"""
    return f"""# Reading an interactions file: in blocks against the whole-file read

`{record['command']}`

{SHAPE[2]:,} rows (ML-20M-shaped Zipf interactions, {SHAPE[0]:,} users x {SHAPE[1]:,} items) with ratings and
timestamps; each read in a fresh process at one thread, medians of {record['repeats']} run(s). Peak increase =
peak resident memory (VmHWM) less the process's memory after its imports; result = the arrays the read returns.

{markdown_table(["file", "blocks: peak increase MiB", "whole: peak increase MiB", "blocks / whole",
                 "result MiB", "blocks increase / result", "blocks s", "whole s", "time blocks / whole",
                 "same result"], rows)}
{before_table}

{environment_lines(record['environment'], record['load_average_at_end'])}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_args(parser)
    parser.add_argument("--work", type=Path, default=Path("/tmp/aerec_reading"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stem", default="reading_memory")
    parser.add_argument("--file", action="append", choices=FILES, help="only these files (default: all)")
    parser.add_argument("--old", type=Path, help="a checkout of aerec before this change (git worktree add DIR "
                                                 "ce931c7): its read_interactions is measured too, as 'before'")
    args = parser.parse_args()
    log, record = start_run(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    write_files(args.work, log)
    record.update(repeats=args.repeats, files={}, old=str(args.old) if args.old else None)
    for name in args.file or FILES:
        runs = {"blocks": [], "whole": [], **({"before": []} if args.old else {})}
        for _ in range(args.repeats):
            for how in runs:
                runs[how].append(measure(args.work / name, how, args.old if how == "before" else None))
                log(f"{name} {how}: {runs[how][-1]['seconds']:.1f} s, peak {runs[how][-1]['peak_mib']:,.0f} MiB")
        result = {}
        for how, done in runs.items():
            result[how] = {"increase_mib": statistics.median(r["peak_mib"] - r["baseline_mib"] for r in done),
                           "seconds": statistics.median(r["seconds"] for r in done),
                           "result_mib": done[0]["result_mib"], "runs": done}
        result["identical"] = len({r["sha256"] for done in runs.values() for r in done}) == 1
        record["files"][name] = result
    print(finish_run(args.out, args.stem, record, markdown, log))


if __name__ == "__main__":
    main()
