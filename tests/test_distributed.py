"""Two processes with the gloo backend, launched by torchrun, train to the weights of one process."""

import json
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


def test_torchrun_aerec_train_saves_the_model_one_process_trains(tmp_path):
    """``torchrun --nproc-per-node 2 -m aerec train`` writes (on rank 0) the model ``aerec train`` writes alone."""
    import aerec
    from tests.conftest import random_implicit_csr

    clicks = random_implicit_csr(240, 90, density=0.12, seed=3).tocoo()
    import pandas as pd

    pd.DataFrame({"user": clicks.row, "item": clicks.col}).to_csv(tmp_path / "clicks.csv", index=False)
    arguments = ["train", "--model", "mult_dae", "--dataset", str(tmp_path / "clicks.csv"), "--n-heldout", "20",
                 "--param", "hidden=16", "--param", "latent=8", "--param", "epochs=3", "--param", "batch_size=40",
                 "--param", "device=cpu", "--param", "progress=false",
                 "--param", "dropout=0"]  # input dropout draws other masks for a rank's share than for the whole batch
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    launched = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "aerec"]
    for command, out in ((launched, "two"), ([sys.executable, "-m", "aerec"], "one")):
        result = subprocess.run([*command, *arguments, "--out", str(tmp_path / out)], capture_output=True, text=True,
                                timeout=240, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    two, one = aerec.load(tmp_path / "two"), aerec.load(tmp_path / "one")
    assert two.history_.best_epoch == one.history_.best_epoch
    for (key, a), b in zip(two.module_.state_dict().items(), one.module_.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=WEIGHT_TOLERANCE, msg=key)
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["metadata"]["processes"] == 2 and not (tmp_path / "two" / "checkpoint").exists()
