"""Mult-VAE epoch time of this checkout against an earlier commit, interleaved on one machine.

The models moved onto a shared base (phases, the loop's own generator, callbacks);
this checks that the training epoch did not get slower. Each pair of rounds runs the
same fits in fresh processes, first with this checkout's ``aerec`` and then with the
``aerec`` of ``--old`` (a git worktree, e.g. ``git worktree add /tmp/aerec-old fc1b45a``),
``--pairs`` times in turn; every round fits ``MultVAE(epochs=2)`` three times (seeds
0-2) on the synthetic ML-1M shape (6,040 x 3,706, ratings > 3.5), fp32, one thread, and
records each epoch's seconds as the loop measures it.

    .venv/bin/python evaluation/refactor_speed.py --old /tmp/aerec-old

Writes ``results/refactor_speed.{json,md}``: the median epoch of each side and their ratio.
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
import scipy.sparse as sp

from _common import REPO_ROOT, RESULTS_DIR, command_line, environment, write_results

WORKER = r'''
import json, sys
import numpy as np, scipy.sparse as sp, torch
torch.set_num_threads(1)
from aerec.models.mult_vae import MultVAE
matrix = sp.load_npz(sys.argv[1]).tocsr().astype(np.float32)
seconds = []
for seed in range(3):
    seconds += MultVAE(epochs=2, seed=seed, device="cpu").fit(matrix).history_.column("seconds")
print(json.dumps(seconds))
'''


def epochs(tree: Path, matrix_file: Path) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", WORKER, str(matrix_file)], check=True, env=env, capture_output=True,
                          text=True, cwd=tempfile.gettempdir())
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    from aerec.data import binarize
    from aerec.data.synthetic import zipf_interactions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="a checkout (worktree) of the commit to compare with")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    old_commit = subprocess.run(["git", "-C", str(args.old), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    positives = binarize(zipf_interactions(6040, 3706, 1_000_209, ratings=True, seed=0)).matrix
    times = {"this checkout": [], "old": []}
    with tempfile.TemporaryDirectory() as scratch:
        matrix_file = Path(scratch) / "ml1m-synthetic.npz"
        sp.save_npz(matrix_file, positives)
        for pair in range(args.pairs):
            for side, tree in (("this checkout", REPO_ROOT), ("old", args.old)):
                times[side] += epochs(tree, matrix_file)
                print(f"pair {pair + 1}: {side}: median so far {np.median(times[side]):.3f} s/epoch", flush=True)
    medians = {side: float(np.median(values)) for side, values in times.items()}
    ratio = medians["old"] / medians["this checkout"]
    results = {"command": command_line(), "old_commit": old_commit, "environment": environment(),
               "data": f"synthetic ML-1M shape {positives.shape}, {positives.nnz} entries", "seconds": times,
               "median_seconds": medians, "speed_ratio_new_over_old": ratio}
    lines = ["# Mult-VAE epoch time: the moved code against the old, interleaved", "",
             f"Command: `{results['command']}`; compared with commit `{old_commit}`; {results['data']}, fp32, "
             f"1 thread, {args.pairs} pairs of rounds, 6 epochs per round.", "",
             "| code | median s/epoch | epochs |", "|---|---|---|"]
    lines += [f"| {side} | {medians[side]:.3f} | {len(times[side])} |" for side in times]
    lines += ["", f"Speed of this checkout relative to the old code: {ratio:.2f}x (above 1: faster)."]
    write_results(args.out, "refactor_speed", results, "\n".join(lines) + "\n")
    print(f"median s/epoch: this checkout {medians['this checkout']:.3f}, old {medians['old']:.3f}; ratio {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
