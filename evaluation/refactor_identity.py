"""Bit-identity of the moved models against an earlier commit: same seed, same data, same weights and metrics.

For each case (Mult-VAE, Mult-DAE and CDAE on ML-100K strong splits with validation users;
I- and U-AutoRec with full-batch Rprop on ML-100K 90/10 ratings with validation ratings),
the same fit runs twice in fresh processes: once with this checkout's ``aerec`` and once
with the ``aerec`` of ``--old`` (a git worktree of the commit to compare with, e.g.
``git worktree add /tmp/aerec-old fc1b45a``). Every weight tensor, the history's loss and
validation columns and the best epoch are compared for exact equality.

    AEREC_DATA_DIR=../shared/data .venv/bin/python evaluation/refactor_identity.py --old /tmp/aerec-old

Prints one line per case and writes ``results/refactor_identity.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import REPO_ROOT, RESULTS_DIR, command_line, environment, write_results

# (name, model class, parameters, protocol); few epochs, but every piece (init, dropout, eps, negatives,
# Rprop schedule, validation and best-weight restore) is exercised.
CASES = [
    ("mult_vae", "MultVAE", {"epochs": 6, "total_anneal_steps": 20}, "strong"),
    ("mult_dae", "MultDAE", {"epochs": 6, "l2": 2e-5}, "strong"),
    ("cdae", "CDAE", {"epochs": 4, "patience": None}, "strong"),
    ("i_autorec", "AutoRec", {"kind": "item", "epochs": 12, "hidden": 100}, "ratings"),
    ("u_autorec", "AutoRec", {"kind": "user", "epochs": 12, "hidden": 100}, "ratings"),
]

WORKER = r'''
import json, sys
import numpy as np, torch
torch.set_num_threads(1)
from aerec.data import load_movielens, random_holdout, strong_generalization
import aerec.models as models
name, cls, params, protocol, seed, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6]
data = load_movielens("ml-100k")
model = getattr(models, cls)(seed=seed, device="cpu", **params)
if protocol == "strong":
    split = strong_generalization(data, 100, seed=seed)
    model.fit(split.train, validation=(split.validation_fold_in, split.validation_heldout))
else:
    split = random_holdout(data, 0.1, validation_fraction=0.1, seed=seed)
    model.fit(split.train, validation=split.validation)
module = getattr(model, "module_", None) or model.__dict__["net_"]
arrays = {f"w:{k}": v.detach().cpu().numpy() for k, v in module.state_dict().items()}
h = model.history_
arrays["loss"] = np.array(h.column("loss"), dtype=np.float64)
arrays["validation"] = np.array(h.column("validation"), dtype=np.float64)
arrays["best_epoch"] = np.array([h.best_epoch or -1])
np.savez(out, **arrays)
'''


def run(tree: Path, name: str, cls: str, params: dict, protocol: str, seed: int, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", WORKER, name, cls, json.dumps(params), protocol, str(seed), str(out)],
                   check=True, env=env, cwd=tempfile.gettempdir())
    with np.load(out) as saved:
        return {key: saved[key] for key in saved.files}


def compare(new: dict, old: dict) -> dict:
    weights = sorted(key for key in new if key.startswith("w:"))
    same_keys = sorted(new) == sorted(old)
    identical = same_keys and all(np.array_equal(new[k], old[k], equal_nan=True) for k in new)
    largest = max((float(np.max(np.abs(new[k] - old[k]))) for k in weights if k in old and new[k].shape == old[k].shape),
                  default=float("nan"))
    return {"identical": bool(identical), "same_tensor_names": same_keys, "tensors": len(weights),
            "largest_weight_difference": largest, "best_epoch": int(new["best_epoch"][0]),
            "last_validation": float(new["validation"][-1]) if len(new["validation"]) else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="a checkout (worktree) of the commit to compare with")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    old_commit = subprocess.run(["git", "-C", str(args.old), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, cls, params, protocol in CASES:
            for seed in args.seeds:
                new = run(REPO_ROOT, name, cls, params, protocol, seed, Path(scratch) / f"{name}-{seed}-new.npz")
                old = run(args.old, name, cls, params, protocol, seed, Path(scratch) / f"{name}-{seed}-old.npz")
                row = {"case": name, "model": cls, "params": params, "protocol": protocol, "seed": seed,
                       **compare(new, old)}
                rows.append(row)
                print(f"{name:10s} seed {seed}: identical={row['identical']} ({row['tensors']} tensors, largest "
                      f"difference {row['largest_weight_difference']:.3g}, best epoch {row['best_epoch']}, "
                      f"last validation {row['last_validation']})", flush=True)
    results = {"command": command_line(), "old_commit": old_commit, "environment": environment(), "cases": rows,
               "all_identical": all(row["identical"] for row in rows)}
    lines = ["# Moved models against the old code: bit-identical fits", "",
             f"Command: `{results['command']}`; compared with commit `{old_commit}`.", "",
             "| case | seed | identical | tensors | largest weight difference | best epoch | last validation |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['seed']} | {r['identical']} | {r['tensors']} | {r['largest_weight_difference']:.3g} | "
              f"{r['best_epoch']} | {r['last_validation']} |" for r in rows]
    write_results(args.out, "refactor_identity", results, "\n".join(lines) + "\n")
    return 0 if results["all_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
