"""Peak memory of training against what the data and the model need: CSR + parameters + two batches.

Each case runs in a fresh Python process (so peaks do not carry over): the data
is built, the process's resident set size (RSS) is read, the model is fitted,
and the peak RSS of the process during ``fit`` (Linux's VmHWM, reset just before) minus that baseline is the
training's peak increase (the same model is first fitted on 64 rows, so that
loading kernels and library workspaces, a fixed cost, is in the baseline; the memory that warm-up freed is then
handed back to the system, ``malloc_trim``, so that the measured fit cannot reuse it unseen). On a GPU ``torch.cuda.max_memory_allocated`` is taken
as well. The reference size is the training CSR (indptr + indices + values) +
the parameters + two batches (a batch = its rows as a dense float32
``batch x n_items`` block, the size of the model's widest activation). Target:
peak increase under 2x the reference.

Run from the repository root:

    .venv/bin/python evaluation/memory_benchmark.py
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from _common import add_output_args, environment_lines, finish_run, markdown_table, start_run

CASES = {
    # name: (model, params, data kind, shape)
    "mult_vae_ml1m": ("mult_vae", {"epochs": 2}, "implicit", (6040, 3706, 1_000_209)),
    "mult_vae_ml20m": ("mult_vae", {"epochs": 1}, "implicit", (136_677, 20_108, 10_000_000)),
    "i_autorec_1m": ("autorec", {"kind": "item", "epochs": 3}, "ratings", (6040, 3706, 1_000_209)),
    "u_autorec_1m": ("autorec", {"kind": "user", "epochs": 3}, "ratings", (6040, 3706, 1_000_209)),
    "cdae_ml1m": ("cdae", {"epochs": 2, "patience": None}, "implicit", (6040, 3706, 1_000_209)),
}
TARGET = 2.0
MIB = 2**20
#: Tensors of parameter size a fit keeps: the parameters, their gradients, and the optimizer's state
#: (Adam: two moments; climin Rprop, AutoRec's: step sizes, previous gradient, and one scratch buffer).
PARAMETER_COPIES = {"mult_vae": 4, "cdae": 4, "autorec": 5}


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def release_freed_memory() -> None:
    """Hand memory that was freed but kept by the C allocator back to the system (glibc's ``malloc_trim``).

    Without it the warm-up fit's freed tensors (the same sizes as the measured fit's when the catalogue is
    the same) stay resident, are reused by the measured fit, and its peak shows only part of what it holds.
    """
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process to its current RSS (Linux)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_rss_bytes() -> int:
    """VmHWM: the highest RSS since the process started or since :func:`reset_peak_rss`."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(name: str, device: str) -> dict:
    """Runs inside the fresh process: build the data, fit, report sizes and peaks."""
    from aerec.data import binarize
    from aerec.data.synthetic import zipf_interactions
    from aerec.models import make_model

    torch.set_num_threads(1)
    model_name, params, kind, shape = CASES[name]
    data = zipf_interactions(*shape, ratings=True, seed=0)
    matrix = (binarize(data) if kind == "implicit" else data).matrix
    # warm-up on a slice: loads the kernels and libraries' workspaces, a fixed cost not due to the data
    make_model(model_name, device=device, **params).fit(matrix[:64])
    model = make_model(model_name, device=device, **params)
    release_freed_memory()
    baseline = rss_bytes()
    reset_peak_rss()  # building the data may have peaked higher than training will
    model.fit(matrix)
    peak = peak_rss_bytes()
    module = next(getattr(model, a) for a in ("module_", "net_") if hasattr(model, a))
    n_params = sum(p.numel() for p in module.parameters())
    batch_rows = getattr(model, "batch_size", None) or (matrix.shape[1] if params.get("kind") == "item" else matrix.shape[0])
    width = matrix.shape[0] if params.get("kind") == "item" else matrix.shape[1]
    csr = matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes
    reference = csr + 4 * n_params + 2 * 4 * batch_rows * width
    out = {"name": name, "model": model_name, "params": params, "shape": list(matrix.shape), "nnz": int(matrix.nnz),
           "csr_bytes": int(csr), "parameter_bytes": int(4 * n_params), "batch_rows": int(batch_rows),
           "batch_bytes": int(4 * batch_rows * width), "reference_bytes": int(reference),
           "baseline_rss_bytes": int(baseline), "peak_rss_bytes": int(peak), "peak_increase_bytes": int(peak - baseline)}
    if device.startswith("cuda"):
        out["cuda_max_memory_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


def run_case(name: str, device: str, repeats: int) -> dict:
    """The case ``repeats`` times with each allocator setting, each run in a fresh process.

    The record is the median run under glibc's default settings, with every peak of both settings kept.
    """
    by_setting = {}
    for setting, env in ALLOCATOR_SETTINGS.items():
        runs = sorted((run_child(name, device, env) for _ in range(repeats)), key=lambda run: run["peak_increase_bytes"])
        by_setting[setting] = runs
    case = dict(by_setting["default"][(repeats - 1) // 2])
    case["peak_increases_bytes"] = {setting: [run["peak_increase_bytes"] for run in runs]
                                    for setting, runs in by_setting.items()}
    case["floor_bytes"] = PARAMETER_COPIES[case["model"]] * case["parameter_bytes"]
    return case


#: glibc's default malloc raises its mmap threshold as large blocks are freed, after which the per-batch
#: tensors come from the heap and fragment it; a fixed threshold keeps them in mmap'ed blocks that are
#: returned when freed (the environment variable is glibc's own tunable, read at process start).
ALLOCATOR_SETTINGS = {"default": {}, "fixed mmap threshold": {"MALLOC_MMAP_THRESHOLD_": "65536"}}


def run_child(name: str, device: str, env: dict) -> dict:
    script = Path(__file__).resolve()
    result = subprocess.run([sys.executable, str(script), "--child", name, "--device", device],
                            capture_output=True, text=True, check=False, env={**os.environ, **env})
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def markdown(record: dict) -> str:
    rows = []
    for c in record["cases"]:
        peaks = {setting: float(np.median(values)) for setting, values in c["peak_increases_bytes"].items()}
        gpu = (f"{c['cuda_max_memory_allocated_bytes'] / MIB:,.0f}" if "cuda_max_memory_allocated_bytes" in c else "-")
        cells = []
        for setting, values in c["peak_increases_bytes"].items():
            ratio = peaks[setting] / c["reference_bytes"]
            cells += [f"{peaks[setting] / MIB:,.1f} ({min(values) / MIB:,.0f}-{max(values) / MIB:,.0f})", f"{ratio:.2f}",
                      "met" if ratio < TARGET else "missed"]
        rows.append([c["name"], f"{c['nnz']:,}", f"{c['csr_bytes'] / MIB:,.1f}", f"{c['parameter_bytes'] / MIB:,.1f}",
                     f"{c['batch_rows']:,} rows, {c['batch_bytes'] / MIB:,.1f}", f"{c['reference_bytes'] / MIB:,.1f}",
                     *cells, f"{c['floor_bytes'] / MIB:,.1f}", f"{c['floor_bytes'] / c['reference_bytes']:.2f}", gpu])
    headers = []
    for setting in ALLOCATOR_SETTINGS:
        headers += [f"peak increase MiB, {setting}: median (range)", "ratio", f"< {TARGET:g}"]
    table = markdown_table(["case", "entries", "CSR MiB", "parameters MiB", "one batch", "reference MiB", *headers,
                            "floor MiB", "floor / reference", "GPU max allocated MiB"], rows)
    return f"""# Peak training memory against CSR + parameters + two batches

Command (from the repository root, {record['runtime_seconds']:.0f} s, device {record['device']}):

```
{record['command']}
```

Each case {record['repeats']} times under each allocator setting, each run in a fresh process (median and range
given); data: synthetic Zipf ratings (`aerec.data.synthetic`), binarized at > 3.5 for the implicit models. The
peak increase is the peak RSS during `fit` minus the RSS after the data was built (and after a warm-up fit on 64
rows, whose freed memory is handed back with `malloc_trim`); the reference is CSR + parameters (float32) + two
dense float32 batches of the model's input width (the issue's yardstick; AutoRec never densifies a batch).
Settings: glibc's defaults, and `MALLOC_MMAP_THRESHOLD_=65536`, which stops the allocator from keeping freed
per-batch tensors in a fragmented heap (what is left is closer to the memory in use).

The floor is what any implementation of the same training holds at once: parameters x
{', '.join(f'{k} {v}' for k, v in PARAMETER_COPIES.items())} (parameters, gradients and the optimizer's state:
Adam's two moments; Rprop's step sizes, previous gradient and a scratch buffer). Mult-VAE with Adam on the ML-1M
shape has a floor of 2.0x the reference before any activation, so its target cannot be met without another
optimizer; CDAE's parameters are 2.6 MiB, so fixed costs of a fit (index copies of the data) dominate its ratio.

{table}
{environment_lines(record['environment'], record['load_average_at_end'])}"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=tuple(CASES), default=list(CASES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2,
                        help="fresh processes per case and allocator setting (default: %(default)s)")
    parser.add_argument("--child", choices=tuple(CASES), help=argparse.SUPPRESS)
    add_output_args(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.device)))
        return 0
    log, record = start_run(1)
    record.update({"device": args.device, "repeats": args.repeats, "cases": []})
    for name in args.cases:
        case = run_case(name, args.device, args.repeats)
        log(f"{name}: peak +{case['peak_increase_bytes'] / MIB:,.1f} MiB (glibc defaults) vs reference {case['reference_bytes'] / MIB:,.1f} MiB")
        record["cases"].append(case)
    sys.stdout.write(finish_run(args.out, "memory_benchmark", record, markdown, log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
