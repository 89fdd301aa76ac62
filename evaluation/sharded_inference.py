"""Top-100 for every user with ``aerec recommend --output OUT_DIR/``: one process against two (torchrun), a
SIGKILL at half way and the resume, and implicit's batched ``recommend`` on the same ALS factors beside it.

For each case a synthetic Zipf input (``aerec.data.synthetic.zipf_interactions``) is written as one Parquet
file of ``user,item`` rows; the models are fitted once (not timed; their quality does not matter here, so
Mult-VAE trains one epoch on the first 5,000 users over the whole catalogue) and saved. Then, each a fresh
command as a user would type it, every process at one thread:

- ``python -m aerec recommend --model M --input histories.parquet --top-n 100 --output one/``
- ``torchrun --standalone --nproc-per-node 2 -m aerec recommend ... --output two/``

timed from the launch to the exit (reading, loading the model, scoring and writing included). Users/s is
users / that time. Peak memory per process is the peak resident memory (``VmHWM``) each rank reports; the
yardstick "one batch of scores plus the model" is the model's files plus the batch budget (8 MiB of scores
on the CPU, the default) plus what a process holds before it reads anything (Python, torch, pyarrow and
aerec imported: ``baseline`` below, measured in a fresh process). The two outputs are compared (the union of the
parts equal, bit for bit). The kill/resume run is the one-process command killed with SIGKILL once half of
its parts are written, then the same command again; its total is both runs' time.

implicit: ``AlternatingLeastSquares.recommend(all users, user_items, N=100, filter_already_liked_items=True)``
on the ALS model's own factors, in this process at one thread (no process start, no reading, no writing: its
time is the scoring alone), and with ``recalculate_user=True`` (folding every user in from their rows, as
aerec's job does).

Run from the repository root (about an hour for both cases):

    .venv/bin/python evaluation/sharded_inference.py --case ml-20m --case msd
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import add_run_args, environment_lines, finish_run, markdown_table, start_run
import aerec
from aerec.data.interactions import Interactions
from aerec.data.synthetic import zipf_interactions

CASES = {"ml-20m": (136_677, 20_108, 10_000_000), "msd": (571_355, 41_140, 33_633_450)}
TOP_N = 100
BATCH_MIB = 8
ROOT = Path(__file__).resolve().parents[1]


def prepare(case: str, work: Path, log) -> tuple[Interactions, Path]:
    users, items, nnz = CASES[case]
    data = zipf_interactions(users, items, nnz, seed=0)
    source = work / "histories.parquet"
    if not source.exists():
        import pyarrow as pa
        import pyarrow.parquet as pq

        coo = data.matrix.tocoo()
        table = pa.table({"user": np.asarray(data.user_ids)[coo.row], "item": np.asarray(data.item_ids)[coo.col]})
        pq.write_table(table, source, row_group_size=1 << 20)
    log(f"{case}: {users:,} users x {items:,} items, {data.nnz:,} interactions in {source}")
    return data, source


def fit_models(case: str, data: Interactions, work: Path, models: list, log) -> dict:
    saved = {}
    for name in models:
        folder = work / name
        saved[name] = folder
        if (folder / "config.json").exists():
            continue
        started = time.perf_counter()
        if name == "mult_vae":
            subset = Interactions(data.matrix[:5000], np.asarray(data.user_ids)[:5000], data.item_ids)
            model = aerec.models.MultVAE(epochs=1, device="cpu", progress=False).fit(subset)
        elif name == "ease":
            model = aerec.models.EASE(l2=200.0, precision="float32", device="cpu").fit(data)
        elif name == "als":
            model = aerec.models.ALS(factors=100, iterations=3, num_threads=1).fit(data)
        else:
            raise ValueError(name)
        aerec.save(model, folder)
        log(f"  {name}: fitted in {time.perf_counter() - started:.0f} s (not timed) and saved to {folder}")
    return saved


def command(model: Path, source: Path, out: Path, processes: int, part_interactions: int | None) -> list:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
                if processes > 1 else [sys.executable])
    extra = ["--part-interactions", str(part_interactions)] if part_interactions else []
    return [*launcher, "-m", "aerec", "recommend", "--model", str(model), "--input", str(source), "--top-n",
            str(TOP_N), "--output", f"{out}/", "--threads", "1", *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def timed_run(argv: list, log, kill_at_parts: int | None = None, out: Path | None = None) -> dict:
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=ENV, stderr=subprocess.PIPE, text=True, start_new_session=True)
    if kill_at_parts is not None:
        import threading

        errors = []
        reader = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)
        reader.start()
        while len(list(out.glob("part-*.json"))) < kill_at_parts and process.poll() is None:
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        reader.join()
        seconds = time.perf_counter() - started
        log(f"    killed after {seconds:.1f} s with {len(list(out.glob('part-*.json')))} part(s) written")
        return {"seconds": seconds, "returncode": process.returncode, "stderr": errors[0]}
    stderr = process.communicate()[1]
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{stderr[-3000:]}")
    loaded = [float(v.replace(",", "")) for v in re.findall(r"model loaded, peak memory ([\d,]+) MiB", stderr)]
    peaks = [float(v.replace(",", "")) for v in re.findall(r"parts done; peak memory ([\d,]+) MiB", stderr)]
    log(f"    {seconds:.1f} s; peak MiB per process {peaks} (after loading the model {loaded})")
    return {"seconds": seconds, "loaded_mib": loaded, "peak_mib": peaks, "stderr_tail": stderr[-2000:]}


def same_output(a: Path, b: Path) -> bool:
    from aerec.inference import read_recommendations

    return bool(read_recommendations(a).equals(read_recommendations(b)))


def implicit_times(model_dir: Path, data: Interactions, log) -> dict:
    from threadpoolctl import threadpool_limits

    model = aerec.load(model_dir)
    implicit = model.model_
    matrix = data.matrix.tocsr().astype(np.float32)
    times = {}
    with threadpool_limits(1):
        for label, kwargs in (("stored factors", {}), ("recalculate_user", {"recalculate_user": True})):
            started = time.perf_counter()
            implicit.recommend(np.arange(matrix.shape[0]), matrix, N=TOP_N, filter_already_liked_items=True,
                               **kwargs)
            times[label] = time.perf_counter() - started
            log(f"    implicit recommend ({label}): {times[label]:.1f} s")
    return times


def run_case(case: str, args, log, done=lambda result: None) -> dict:
    work = args.work / case
    work.mkdir(parents=True, exist_ok=True)
    data, source = prepare(case, work, log)
    models = args.models or (["mult_vae", "ease", "als"] if case == "ml-20m" else args.msd_models)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(args.threads):  # torch's threads and LAPACK's (start_run set torch's only)
        saved = fit_models(case, data, work, models, log)
    result = {"case": case, "users": data.n_users, "items": data.n_items, "interactions": data.nnz, "models": {}}
    for name, folder in saved.items():
        log(f"  {name}")
        runs = {}
        for processes in (1, 2):
            out = work / f"{name}-{processes}"
            shutil.rmtree(out, ignore_errors=True)
            log(f"   {processes} process(es)")
            runs[processes] = timed_run(command(folder, source, out, processes, args.part_interactions), log)
        entry = {"runs": runs, "same_output": same_output(work / f"{name}-1", work / f"{name}-2"),
                 "model_bytes": sum(f.stat().st_size for f in folder.iterdir())}
        if name == "als":
            entry["implicit_seconds"] = implicit_times(folder, data, log)
        if name == args.resume_model and case == "ml-20m":
            out = work / f"{name}-resume"
            shutil.rmtree(out, ignore_errors=True)
            manifest = json.loads((work / f"{name}-1" / "manifest.json").read_text())
            argv = command(folder, source, out, 1, args.part_interactions)
            log("   SIGKILL at half way, then the same command")
            killed = timed_run(argv, log, kill_at_parts=len(manifest["parts"]) // 2, out=out)
            resumed = timed_run(argv, log)
            entry["resume"] = {"killed": killed["seconds"], "resumed": resumed["seconds"],
                               "parts": len(manifest["parts"]),
                               "ratio": (killed["seconds"] + resumed["seconds"]) / runs[1]["seconds"],
                               "same_output": same_output(work / f"{name}-1", out)}
            log(f"    resume total / uninterrupted = {entry['resume']['ratio']:.3f}")
        result["models"][name] = entry
        shutil.rmtree(work / f"{name}-2", ignore_errors=True)
        done(result)  # the results file holds every model measured so far
    return result


def markdown(record: dict) -> str:
    rows, resume_rows = [], []
    for case in record["cases"]:
        for name, entry in case["models"].items():
            one, two = entry["runs"][1], entry["runs"][2]
            model_mib = entry["model_bytes"] / 2**20
            yardstick = record["baseline_mib"] + model_mib + BATCH_MIB
            implicit = entry.get("implicit_seconds")
            rows.append([case["case"], name, f"{model_mib:,.0f}", f"{one['seconds']:.1f}", f"{two['seconds']:.1f}",
                         f"{case['users'] / one['seconds']:,.0f}", f"{case['users'] / two['seconds']:,.0f}",
                         f"{one['seconds'] / two['seconds']:.2f}",
                         f"{max(one['peak_mib']):,.0f}", ", ".join(f"{p:,.0f}" for p in two["peak_mib"]),
                         f"{max(one['peak_mib'] + two['peak_mib']) / yardstick:.2f}",
                         "yes" if entry["same_output"] else "NO",
                         "" if implicit is None else f"{case['users'] / implicit['stored factors']:,.0f} / "
                                                     f"{case['users'] / implicit['recalculate_user']:,.0f}"])
            if "resume" in entry:
                r = entry["resume"]
                resume_rows.append([case["case"], name, r["parts"], f"{one['seconds']:.1f}", f"{r['killed']:.1f}",
                                    f"{r['resumed']:.1f}", f"{r['ratio']:.3f}", "yes" if r["same_output"] else "NO"])
    table = markdown_table(["case", "model", "model MiB", "1 process s", "2 processes s", "users/s (1)",
                            "users/s (2)", "2 / 1", "peak MiB (1)", "peak MiB per process (2)",
                            "peak / (baseline + model + batch)", "same output", "implicit users/s (stored / recalculated)"],
                           rows)
    resume = markdown_table(["case", "model", "parts", "uninterrupted s", "killed after s", "resume s",
                             "total / uninterrupted", "same output"], resume_rows)
    cases = "\n".join(f"- {c['case']}: {c['users']:,} users x {c['items']:,} items, {c['interactions']:,} "
                      "interactions" for c in record["cases"])
    return f"""# Sharded top-100 inference: one process against two, kill and resume

Command (from the repository root, total {record['runtime_seconds']:.0f} s):

```
{record['command']}
```

{__doc__.split('Run from the repository root')[0].strip()}

{cases}

Baseline process memory (imports only): {record['baseline_mib']:,.0f} MiB.

Targets: 2 processes >= 1.7x one process's users/s; peak memory per process within 1.5x of one batch of scores
plus the model (here: baseline + model files + the {BATCH_MIB} MiB batch); a resumed job's
total at most 1.15x an uninterrupted run, output identical.

{table}
{resume}
{environment_lines(record['environment'], record['load_average_at_end'])}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="default: ml-20m")
    parser.add_argument("--work", type=Path, default=Path("/tmp/aerec_sharded"),
                        help="folder for the inputs, models and outputs (default: %(default)s)")
    parser.add_argument("--part-interactions", type=int, default=None, help="default: aerec's")
    parser.add_argument("--resume-model", default="mult_vae")
    parser.add_argument("--msd-models", nargs="+", default=["mult_vae", "ease"])
    parser.add_argument("--models", nargs="+", help="the models of every case (default: each case's)")
    parser.add_argument("--stem", default="sharded_inference", help="results file name (default: %(default)s)")
    add_run_args(parser)
    args = parser.parse_args()
    log, record = start_run(args.threads)
    record["baseline_mib"] = baseline_mib()
    log(f"a process with the imports alone: {record['baseline_mib']:.0f} MiB")
    record["cases"] = []
    for case in args.case or ["ml-20m"]:
        record["cases"].append({"case": case, "models": {}})

        def done(result, index=len(record["cases"]) - 1):
            record["cases"][index] = result
            finish_run(args.out, args.stem, record, markdown, log)

        done(run_case(case, args, log, done))
    print(markdown(record))


def baseline_mib() -> float:
    code = ("import torch, pyarrow.parquet, aerec.cli, aerec.inference, aerec.models; "
            "from aerec.inference import peak_memory_mib; print(peak_memory_mib())")
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, check=True)
    return float(result.stdout.strip())


if __name__ == "__main__":
    main()
