"""RecVAE training speed: aerec's RecVAE against the port of the authors' code, epoch for epoch, in one process.

One epoch is RecVAE's whole schedule: 3 encoder passes (input dropout, only the
encoder's Adam steps), the copy of the encoder into the prior, 1 decoder pass
(only the decoder's Adam steps), at the reference README's settings (hidden 600,
latent 200, batch 500, lr 5e-4, gamma 0.005), no validation.

- "aerec": ``aerec.models.RecVAE`` (first encoder layer on the sparse batch,
  no gradient for the half that is not stepped, batches cut from tensors placed
  once on the device); an epoch's seconds are the loop's own (``history_``
  column ``seconds``: the epoch, not building the network).
- "port": ``evaluation/recvae_reference.py``, a faithful port of
  ilya-shenbin/RecVAE's run.py (each batch densified, gradients of both halves);
  an epoch's seconds from its ``time_epochs`` (the 3 + 1 passes and
  ``update_prior``).

Each round fits a fresh model of each for ``--epochs-per-round`` epochs (seed
``--seed`` + round), the two in alternating order (aerec first in even rounds,
the port first in odd ones), so both share whatever else the machine is doing;
``--warmup`` rounds before them are not counted. The table gives the median
epoch over the counted rounds, the ratio of medians (port / aerec) and whether
it meets the target (aerec at least 1.3x faster than the port).

Run from the repository root (the ML-1M-shaped synthetic set: 6,040 users x 3,706
items, 1,000,209 Zipf ratings, those above 3.5 kept, as refactor_speed.py and
mult_vae_speed.py), on a quiet machine:

    .venv/bin/python evaluation/recvae_speed.py

A quick check that the script runs (500 users x 300 items; writes recvae_speed_tiny.*):

    .venv/bin/python evaluation/recvae_speed.py --preset tiny --pairs 1 --out /tmp/recvae_speed_tiny
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import scipy.sparse as sp
import torch

from _common import add_run_args, environment_lines, finish_run, markdown_table, start_run
from recvae_reference import time_epochs
from aerec._torch import resolve_device
from aerec.data import binarize
from aerec.data.synthetic import zipf_interactions
from aerec.models.recvae import RecVAE

PRESETS = {  # name: (users, items, ratings drawn), the ratings > 3.5 kept
    "ml1m": (6040, 3706, 1_000_209),
    "tiny": (500, 300, 15_000),
}
TARGET_SPEEDUP = 1.3
IMPLEMENTATIONS = ("aerec", "port")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="ml1m",
                        help="ml1m: the ML-1M-shaped synthetic set (default); tiny: 500 x 300, to check the script runs")
    parser.add_argument("--pairs", type=int, default=5, help="counted rounds, each one fit of both (default: %(default)s)")
    parser.add_argument("--epochs-per-round", type=int, default=2,
                        help="epochs of each fit; every epoch is counted (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="rounds before the counted ones (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: %(default)s)")
    add_run_args(parser)
    args = parser.parse_args(argv)
    for name in ("pairs", "epochs_per_round", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)}; expected an integer >= 1")
    if args.warmup < 0:
        parser.error(f"--warmup={args.warmup}; expected an integer >= 0")
    return args


def load_matrix(preset: str, seed: int) -> tuple[sp.csr_matrix, str]:
    users, items, drawn = PRESETS[preset]
    positives = binarize(zipf_interactions(users, items, drawn, ratings=True, seed=seed))
    matrix = positives.matrix.astype(np.float32).tocsr()
    # A user left without positives would be a zero row, which the port normalises to NaN (0 / 0): dropped.
    nonempty = np.diff(matrix.indptr) > 0
    matrix = matrix[nonempty]
    description = (f"synthetic {'ML-1M shape' if preset == 'ml1m' else 'tiny set'}: {users:,} users x {items:,} items, "
                   f"{drawn:,} Zipf ratings (seed {seed}), {matrix.nnz:,} above 3.5 kept as 1; "
                   f"{int((~nonempty).sum()):,} user(s) left without any dropped: {matrix.shape[0]:,} x "
                   f"{matrix.shape[1]:,}")
    return matrix, description


def aerec_epochs(matrix: sp.csr_matrix, epochs: int, seed: int, device: str) -> list[float]:
    model = RecVAE(epochs=epochs, seed=seed, device=device).fit(matrix)
    return [float(s) for s in model.history_.column("seconds")]


def port_epochs(matrix: sp.csr_matrix, epochs: int, seed: int, device: str) -> list[float]:
    return [float(s) for s in time_epochs(matrix, n_epochs=epochs, seed=seed, device=device)]


RUNNERS = {"aerec": aerec_epochs, "port": port_epochs}


def compare(matrix: sp.csr_matrix, args, device: str, log) -> dict:
    """Epoch seconds of both, round by round, alternating which goes first."""
    rounds = []
    for index in range(args.warmup + args.pairs):
        order = IMPLEMENTATIONS if index % 2 == 0 else IMPLEMENTATIONS[::-1]
        seconds = {name: RUNNERS[name](matrix, args.epochs_per_round, args.seed + index, device) for name in order}
        counted = index >= args.warmup
        rounds.append({"round": index, "warmup": not counted, "order": list(order), "seconds": seconds})
        log(f"  round {index}{' (warm-up)' if not counted else ''}, {' then '.join(order)}: "
            + ", ".join(f"{name} " + " ".join(f"{s:.3f}" for s in seconds[name]) + " s" for name in IMPLEMENTATIONS))
    out = {"rounds": rounds}
    for name in IMPLEMENTATIONS:
        values = [s for r in rounds if not r["warmup"] for s in r["seconds"][name]]
        firsts = [r["seconds"][name][0] for r in rounds if not r["warmup"]]
        out[name] = {"median": float(np.median(values)), "min": float(np.min(values)), "max": float(np.max(values)),
                     "n_epochs": len(values), "median_first_epoch": float(np.median(firsts))}
    out["ratio_port_over_aerec"] = out["port"]["median"] / out["aerec"]["median"]
    out["target_met"] = bool(out["ratio_port_over_aerec"] >= TARGET_SPEEDUP)
    return out


def markdown(record: dict) -> str:
    result = record["result"]
    env = record["environment"]
    rows = [[name, f"{result[name]['median']:.3f}", f"{result[name]['median_first_epoch']:.3f}",
             f"{result[name]['min']:.3f}", f"{result[name]['max']:.3f}", result[name]["n_epochs"]]
            for name in IMPLEMENTATIONS]
    table = markdown_table(["implementation", "median s/epoch", "median first epoch", "min", "max", "epochs counted"],
                           rows)
    per_round = markdown_table(
        ["round", "order", "aerec s/epoch", "port s/epoch"],
        [[r["round"] if not r["warmup"] else f"{r['round']} (warm-up)", " then ".join(r["order"]),
          " / ".join(f"{s:.3f}" for s in r["seconds"]["aerec"]), " / ".join(f"{s:.3f}" for s in r["seconds"]["port"])]
         for r in result["rounds"]])
    verdict = "met" if result["target_met"] else "NOT met"
    return f"""# RecVAE training speed: aerec against the port of the reference code

Command (from the repository root, {record['runtime_seconds']:.0f} s, device {record['device']},
torch {env['torch']} with {record['threads']} CPU thread(s)):

```
{record['command']}
```

Data: {record['description']}.

One epoch = 3 encoder passes + the prior's copy + 1 decoder pass (the README's settings, no validation). Each of
{record['pairs']} rounds (after {record['warmup']} warm-up round(s), not counted) fits a fresh model of each for
{record['epochs_per_round']} epoch(s), the two in alternating order; every epoch of the counted rounds is counted.

**Port / aerec (ratio of the medians): {result['ratio_port_over_aerec']:.2f}x; target at least {TARGET_SPEEDUP}x: {verdict}.**

{table}
1-minute load average {env['load_average_at_start'][0]:.2f} at the start and {record['load_average_at_end'][0]:.2f} at the end
(5- and 15-minute: {env['load_average_at_start'][1]:.2f} / {env['load_average_at_start'][2]:.2f} at the start,
{record['load_average_at_end'][1]:.2f} / {record['load_average_at_end'][2]:.2f} at the end).

## Per round

{per_round}
{environment_lines(env, record['load_average_at_end'])}"""


def main(argv=None) -> int:
    args = parse_args(argv)
    log, record = start_run(args.threads)
    device = str(resolve_device(args.device))
    matrix, description = load_matrix(args.preset, args.seed)
    log(f"{description}; device {device}, {torch.get_num_threads()} thread(s), torch {torch.__version__}")
    record.update({"preset": args.preset, "description": description, "shape": list(matrix.shape), "nnz": matrix.nnz,
                   "device": device, "pairs": args.pairs, "warmup": args.warmup,
                   "epochs_per_round": args.epochs_per_round, "seed": args.seed, "target_speedup": TARGET_SPEEDUP})
    record["result"] = compare(matrix, args, device, log)
    stem = "recvae_speed" if args.preset == "ml1m" else f"recvae_speed_{args.preset}"
    sys.stdout.write(finish_run(args.out, stem, record, markdown, log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
