"""Two processes with the gloo backend, launched by torchrun, train to the weights of one process."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aerec.distributed import rank_share

sys.path.insert(0, str(Path(__file__).parent))
from distributed_worker import build, weights  # noqa: E402

# Float32 weights after a few updates: the gradient of a global batch is the sum of the two ranks'
# shares instead of one sum over all rows, which changes the rounding only.
WEIGHT_TOLERANCE = 1e-5


@pytest.mark.parametrize("name", ["mult_dae", "cdae", "autorec"])
def test_two_gloo_processes_match_one_process(tmp_path, name):
    out = tmp_path / "rank0.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(Path(__file__).parent / "distributed_worker.py"), name, str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    distributed = torch.load(out, weights_only=True)

    model, rows = build(name)
    model.fit(rows)
    single = weights(model)
    assert distributed.keys() == single.keys()
    for key in single:
        torch.testing.assert_close(distributed[key], single[key], rtol=0, atol=WEIGHT_TOLERANCE, msg=key)
    # and training did move the weights: the comparison is not between two untouched initialisations
    untrained, _ = build(name)
    untrained.epochs = 1
    assert any((weights(untrained.fit(rows))[k] - single[k]).abs().max() > 1e-3 for k in single)


def test_rank_share_splits_a_batch_and_weighs_an_empty_share_zero():
    batch = np.array([7, 3, 9, 1, 4])
    first, w0 = rank_share(batch, 0, 2)
    second, w1 = rank_share(batch, 1, 2)
    assert first.tolist() == [7, 9, 4] and second.tolist() == [3, 1]
    # DDP averages the two ranks: (w0 mean_0 + w1 mean_1) / 2 = (3 mean_0 + 2 mean_1) / 5, the batch's mean
    assert w0 / 2 == pytest.approx(3 / 5) and w1 / 2 == pytest.approx(2 / 5)
    lone, weight = rank_share(np.array([5]), 1, 2)
    assert lone.tolist() == [5] and weight == 0.0
