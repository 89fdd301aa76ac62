"""Mult-VAE training speed: aerec against a plain dense PyTorch loop, and against the matmul peak.

Each round trains one epoch of every implementation on the same data, in turn,
in one process (so they share whatever else the machine is doing); the table
gives the median epoch time over the rounds and the ratios of medians.

- "plain loop": the vae_cf reference as a user would port it to PyTorch, written
  the obvious way: each batch densified (``X[idx].toarray()``), ``F.normalize``,
  ``nn.Dropout``, ``nn.Linear`` layers, ``log_softmax * x``, ``torch.optim.Adam``
  with its defaults.
- "aerec": ``aerec.models.MultVAE`` (sparse first layer, sparse likelihood,
  fused Adam, batches cut from tensors placed once on the device), float32 or
  bfloat16 autocast (``precision="bf16"``).

FLOPs counted are those the model's math requires: every dense layer 2 x rows x
in x out forward, the same again for the weight gradient, and again for the input
gradient (except the first layer, whose input needs none); the first layer is a
sparse product, 2 x stored entries x 600 forward and again for its weight
gradient. Softmax, activations and the optimizer are not counted. Achieved FLOP/s
= counted FLOPs / epoch time, against the ``torch.matmul`` rate of a 2048 x 2048
product (float32, and bfloat16 for the bf16 rows) measured in the same run.

Run from the repository root (the ML-1M-shaped synthetic set and real ML-100K):

    AEREC_DATA_DIR=/work/shared/data .venv/bin/python evaluation/mult_vae_speed.py

On a GPU, the ML-20M-sized synthetic set, 200 epochs with validation every epoch:

    .venv/bin/python evaluation/mult_vae_speed.py --preset ml20m-gpu
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from _common import add_run_args, environment_lines, finish_run, markdown_table, start_run
from aerec.data import binarize, load_movielens, strong_generalization
from aerec.data.synthetic import zipf_interactions
from aerec.models.mult_vae import MultVAE

HIDDEN, LATENT, BATCH = 600, 200, 500
ML1M_SHAPE = (6040, 3706, 1_000_209)
ML20M_SHAPE = (136_677, 20_108, 10_000_000)
TARGET_SPEEDUP, TARGET_PEAK_SHARE, TARGET_GPU_SECONDS = 3.0, 0.60, 60.0


# -- the plain loop: vae_cf ported to PyTorch the obvious way ------------------------------------
class PlainMultVAE(nn.Module):
    def __init__(self, n_items: int):
        super().__init__()
        self.q1, self.q2 = nn.Linear(n_items, HIDDEN), nn.Linear(HIDDEN, 2 * LATENT)
        self.p1, self.p2 = nn.Linear(LATENT, HIDDEN), nn.Linear(HIDDEN, n_items)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        h = torch.tanh(self.q1(self.drop(F.normalize(x))))
        mu, logvar = self.q2(h).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.p2(torch.tanh(self.p1(z))), mu, logvar


def plain_epoch(model: PlainMultVAE, optimizer, matrix: sp.csr_matrix, device, rng, update: list, bf16: bool) -> None:
    model.train()
    order = rng.permutation(matrix.shape[0])
    for start in range(0, len(order), BATCH):
        x = torch.FloatTensor(matrix[order[start:start + BATCH]].toarray()).to(device)
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits, mu, logvar = model(x)
        nll = -(F.log_softmax(logits.float(), dim=1) * x).sum(1).mean()
        kl = (0.5 * (-logvar.float() + logvar.float().exp() + mu.float() ** 2 - 1).sum(1)).mean()
        beta = min(0.2, update[0] / 200_000)
        (nll + beta * kl).backward()
        optimizer.step()
        update[0] += 1


# -- FLOPs and the peak ----------------------------------------------------------------------------
def required_flops(n_rows: int, n_items: int, nnz: int) -> float:
    """FLOPs of one epoch that Mult-VAE's math requires (see the module docstring)."""
    dense_layers = [(HIDDEN, 2 * LATENT), (LATENT, HIDDEN), (HIDDEN, n_items)]
    dense = sum(3 * 2 * n_rows * fan_in * fan_out for fan_in, fan_out in dense_layers)
    sparse_first = 2 * 2 * nnz * HIDDEN
    return float(dense + sparse_first)


def plain_loop_flops(n_rows: int, n_items: int, nnz: int) -> float:
    """FLOPs the plain loop performs: the same, with its first layer a dense product over the whole catalogue."""
    return required_flops(n_rows, n_items, nnz) - 2 * 2 * nnz * HIDDEN + 2 * 2 * n_rows * n_items * HIDDEN


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 7) -> float:
    """Median FLOP/s of a size x size matmul on ``device`` in ``dtype``."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    times = []
    for i in range(repeats + 2):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 2 * size**3 / float(np.median(times))


# -- data ------------------------------------------------------------------------------------------
def load_case(name: str, data_dir, seed: int):
    """The training matrix (binarized at > 3.5, as the protocol) and, for the GPU preset, validation rows."""
    if name == "ml100k":
        data = binarize(load_movielens("ml-100k", data_dir))
        return data.matrix, None, "ML-100K, ratings > 3.5, all 943 users"
    shape = ML1M_SHAPE if name == "ml1m-synthetic" else ML20M_SHAPE
    ratings = zipf_interactions(*shape, ratings=True, seed=seed)
    positives = binarize(ratings)
    if name == "ml1m-synthetic":
        return positives.matrix, None, (f"synthetic ML-1M shape: {shape[0]:,} users x {shape[1]:,} items, {shape[2]:,} "
                                        f"Zipf ratings, {positives.nnz:,} above 3.5")
    split = strong_generalization(positives, n_heldout=10_000, seed=seed)
    return split.train.matrix, (split.validation_fold_in.matrix, split.validation_heldout.matrix), (
        f"synthetic ML-20M size: {shape[0]:,} users x {shape[1]:,} items, {shape[2]:,} Zipf ratings, {positives.nnz:,} "
        f"above 3.5; strong-generalization split with 10,000 validation users")


def gpu_utilisation() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


# -- runs ------------------------------------------------------------------------------------------
def compare_epochs(matrix: sp.csr_matrix, device: torch.device, rounds: int, seed: int, log) -> dict:
    """Median epoch seconds of each implementation, interleaved round by round."""
    torch.manual_seed(seed)
    n_items = matrix.shape[1]
    plain = {name: PlainMultVAE(n_items).to(device) for name in ("plain loop fp32", "plain loop bf16")}
    optimizers = {name: torch.optim.Adam(model.parameters(), lr=1e-3) for name, model in plain.items()}
    updates = {name: [0] for name in plain}
    rng = np.random.default_rng(seed)
    times = {name: [] for name in ("plain loop fp32", "plain loop bf16", "aerec fp32", "aerec bf16")}
    for round_ in range(rounds + 1):  # round 0 warms up (allocations, kernels) and is not counted
        for name in times:
            synchronize(device)
            start = time.perf_counter()
            if name.startswith("plain"):
                plain_epoch(plain[name], optimizers[name], matrix, device, rng, updates[name], bf16=name.endswith("bf16"))
                synchronize(device)
                seconds = time.perf_counter() - start
            else:
                model = MultVAE(epochs=1, seed=seed + round_, device=str(device),
                                precision="bf16" if name.endswith("bf16") else "fp32").fit(matrix)
                seconds = model.history_.column("seconds")[0]  # the epoch itself, not building the network
            if round_ > 0:
                times[name].append(seconds)
        log(f"  round {round_}: " + ", ".join(f"{name} {values[-1]:.3f} s" for name, values in times.items() if values))
    return {name: {"median": float(np.median(values)), "all": values} for name, values in times.items()}


def gpu_run(matrix, validation, device, epochs: int, seed: int, log) -> dict:
    model = MultVAE(epochs=epochs, seed=seed, device=str(device), precision="bf16")
    started = time.perf_counter()
    model.fit(matrix, validation=validation)
    synchronize(device)
    total = time.perf_counter() - started
    epoch_seconds = model.history_.column("seconds")
    return {"epochs": epochs, "total_seconds": total, "median_epoch_seconds": float(np.median(epoch_seconds)),
            "best_epoch": model.best_epoch_, "best_validation_ndcg100": model.history_.best_validation,
            "gpu_utilisation_percent_at_end": gpu_utilisation(),
            "max_memory_allocated_bytes": torch.cuda.max_memory_allocated(device)}


def markdown(record: dict) -> str:
    rows = []
    for case in record["cases"]:
        peak32, peak16 = case["matmul_peak_fp32"], case["matmul_peak_bf16"]
        plain = case["epochs"]["plain loop fp32"]["median"]
        for name, stats in case["epochs"].items():
            flops_per_s = case["required_flops"] / stats["median"]
            peak = peak16 if name.endswith("bf16") else peak32
            rows.append([case["name"], name, f"{stats['median']:.3f}", f"{plain / stats['median']:.2f}",
                         f"{flops_per_s / 1e9:.1f}", f"{flops_per_s / peak:.0%}", "bf16" if name.endswith("bf16") else "fp32"])
    table = markdown_table(["data", "implementation", "median s/epoch", "speed-up vs plain fp32", "achieved GFLOP/s",
                            "share of matmul peak", "peak of"], rows)
    peaks = "\n".join(f"- {case['name']}: {case['description']}; {case['required_flops'] / 1e9:.1f} GFLOP per epoch "
                      f"required, {case['plain_flops'] / 1e9:.1f} GFLOP done by the plain loop (so at equal FLOP/s "
                      f"no implementation of the same math is more than {case['plain_flops'] / case['required_flops']:.2f}x "
                      f"faster than it in the same precision); matmul peak {case['matmul_peak_fp32'] / 1e9:.1f} GFLOP/s "
                      f"fp32, {case['matmul_peak_bf16'] / 1e9:.1f} GFLOP/s bf16" for case in record["cases"])
    gpu = ""
    if record.get("gpu"):
        g = record["gpu"]
        gpu = (f"\n## GPU: {g['epochs']} epochs, validation every epoch\n\n{g['total_seconds']:.1f} s in all, median epoch "
               f"{g['median_epoch_seconds']:.3f} s, best validation NDCG@100 {g['best_validation_ndcg100']:.4f} at epoch "
               f"{g['best_epoch']}, GPU utilisation {g['gpu_utilisation_percent_at_end']}% at the end, "
               f"max memory allocated {g['max_memory_allocated_bytes'] / 2**30:.2f} GiB (target < {TARGET_GPU_SECONDS:.0f} s).\n")
    return f"""# Mult-VAE training speed

Command (from the repository root, {record['runtime_seconds']:.0f} s, device {record['device']},
torch with {record['threads']} CPU thread(s)):

```
{record['command']}
```

Median over {record['rounds']} rounds (after one warm-up round) of one training epoch each, the implementations
interleaved round by round. Targets: aerec at least {TARGET_SPEEDUP:.0f}x the plain loop, and at least
{TARGET_PEAK_SHARE:.0%} of the matmul peak for the epoch as a whole (see the script's docstring for what is counted).

{table}
{peaks}
{gpu}
{environment_lines(record['environment'], record['load_average_at_end'])}"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("cpu", "ml20m-gpu"), default="cpu",
                        help="cpu: ML-1M-shaped synthetic and ML-100K epochs (default); ml20m-gpu: also the 200-epoch GPU run")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per case (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=200, help="epochs of the GPU run (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    add_run_args(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    log, record = start_run(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    record.update({"device": str(device), "rounds": args.rounds, "cases": []})
    cases = ["ml1m-synthetic", "ml100k"] if args.preset == "cpu" else ["ml1m-synthetic"]
    peak32, peak16 = matmul_peak(device, torch.float32), matmul_peak(device, torch.bfloat16)
    log(f"matmul peak: {peak32 / 1e9:.1f} GFLOP/s fp32, {peak16 / 1e9:.1f} GFLOP/s bf16")
    for name in cases:
        matrix, _, description = load_case(name, os.environ.get("AEREC_DATA_DIR"), args.seed)
        log(f"{name}: {description}")
        epochs = compare_epochs(matrix, device, args.rounds, args.seed, log)
        record["cases"].append({"name": name, "description": description, "shape": matrix.shape, "nnz": matrix.nnz,
                                "required_flops": required_flops(matrix.shape[0], matrix.shape[1], matrix.nnz),
                                "plain_flops": plain_loop_flops(matrix.shape[0], matrix.shape[1], matrix.nnz),
                                "matmul_peak_fp32": peak32, "matmul_peak_bf16": peak16, "epochs": epochs})
    if args.preset == "ml20m-gpu":
        if device.type != "cuda":
            raise SystemExit("--preset ml20m-gpu needs a CUDA device")
        matrix, validation, description = load_case("ml20m-synthetic", None, args.seed)
        log(f"GPU run: {description}")
        record["gpu"] = {"description": description, **gpu_run(matrix, validation, device, args.epochs, args.seed, log)}
    stem = "mult_vae_speed" if args.preset == "cpu" else "mult_vae_speed_gpu"
    sys.stdout.write(finish_run(args.out, stem, record, markdown, log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
