"""Checkpoint and resume in the one training loop: a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from aerec.checkpoint import CheckpointMismatchError
from aerec.evaluation import evaluate_ranking
from aerec.models import make_model
from aerec.state import StateFileError
from aerec.training import Checkpointing
from tests.conftest import REPO, random_implicit_csr

CASES = {
    "mult_vae": {"hidden": 20, "latent": 8, "batch_size": 50},
    "mult_dae": {"hidden": 20, "latent": 8, "batch_size": 50},
    "cdae": {"hidden": 8, "batch_size": 50},
    "recvae": {"hidden": 12, "latent": 6, "batch_size": 50, "layers": 3},
    "autorec": {"hidden": 10},
    "autorec-adam": {"hidden": 10, "optimizer": "adam", "batch_size": 64},
}


@pytest.fixture(scope="module")
def data():
    train = random_implicit_csr(200, 120, seed=0)
    ratings = train.copy()
    ratings.data = np.random.default_rng(0).integers(1, 6, ratings.nnz).astype(np.float32)
    users = random_implicit_csr(30, 120, seed=1, density=0.3).tocoo()
    keep = np.random.default_rng(3).random(users.nnz) < 0.7
    part = lambda mask: sp.csr_matrix((users.data[mask], (users.row[mask], users.col[mask])), users.shape)  # noqa: E731
    return {"implicit": train, "ratings": ratings, "validation": (part(keep), part(~keep))}


def fit(case, data, epochs, **kwargs):
    name = case.split("-")[0]
    train, validation = (data["ratings"], None) if name == "autorec" else (data["implicit"], data["validation"])
    return make_model(name, epochs=epochs, **CASES[case]).fit(train, validation, **kwargs)


def network(model):
    return model.module_


@pytest.mark.parametrize("case", sorted(CASES))
def test_three_epochs_then_three_more_equal_six_in_one_run(case, data, tmp_path):
    whole = fit(case, data, 6)
    fit(case, data, 3, checkpoint=tmp_path)
    resumed = fit(case, data, 6, checkpoint=tmp_path)
    for (name, a), b in zip(network(whole).state_dict().items(), network(resumed).state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.history_.column("loss") == whole.history_.column("loss")
    assert resumed.history_.best_epoch == whole.history_.best_epoch
    assert getattr(resumed, "n_updates_", None) == getattr(whole, "n_updates_", None)


def test_lbfgs_resumes_to_float_rounding(data, tmp_path):
    kwargs = {"hidden": 10, "optimizer": "lbfgs"}
    whole = make_model("autorec", epochs=5, **kwargs).fit(data["ratings"])
    make_model("autorec", epochs=2, **kwargs).fit(data["ratings"], checkpoint=tmp_path)
    resumed = make_model("autorec", epochs=5, **kwargs).fit(data["ratings"], checkpoint=tmp_path)
    for a, b in zip(whole.module_.state_dict().values(), resumed.module_.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_a_finished_run_resumed_changes_nothing(data, tmp_path):
    first = fit("mult_vae", data, 3, checkpoint=tmp_path)
    again = fit("mult_vae", data, 3, checkpoint=tmp_path)
    assert again.n_updates_ == first.n_updates_ and len(again.history_.epochs) == 3
    assert all(torch.equal(a, b) for a, b in zip(first.module_.state_dict().values(), again.module_.state_dict().values()))


def test_a_checkpoint_of_another_run_is_refused_with_the_differences(data, tmp_path):
    fit("mult_dae", data, 2, checkpoint=tmp_path)
    with pytest.raises(CheckpointMismatchError, match="lr"):
        make_model("mult_dae", epochs=4, lr=0.01, **CASES["mult_dae"]).fit(data["implicit"], data["validation"],
                                                                         checkpoint=tmp_path)
    with pytest.raises(CheckpointMismatchError, match="shape"):
        make_model("mult_dae", epochs=4, **CASES["mult_dae"]).fit(data["implicit"][:150], data["validation"],
                                                                 checkpoint=tmp_path)


def test_without_resume_the_checkpoint_is_overwritten_not_read(data, tmp_path):
    fit("mult_dae", data, 2, checkpoint=tmp_path)
    fresh = make_model("mult_dae", epochs=3, lr=0.01, **CASES["mult_dae"]).fit(
        data["implicit"], data["validation"], checkpoint=Checkpointing(tmp_path, every=2, resume=False))
    saved = json.loads((tmp_path / "checkpoint.json").read_text())
    assert saved["epochs_done"] == 3 and len(fresh.history_.epochs) == 3


def test_a_damaged_checkpoint_is_a_clear_error(data, tmp_path):
    fit("mult_dae", data, 2, checkpoint=tmp_path)
    tensors = next(tmp_path.glob("tensors-*.safetensors"))
    tensors.write_bytes(tensors.read_bytes()[:50])
    with pytest.raises(StateFileError, match="damaged or replaced"):
        fit("mult_dae", data, 4, checkpoint=tmp_path)


def test_checkpoint_every_must_be_a_positive_integer(data, tmp_path):
    with pytest.raises(ValueError, match="every=0"):
        fit("mult_dae", data, 2, checkpoint=Checkpointing(tmp_path, every=0))
    with pytest.raises(TypeError, match="checkpoint must be"):
        fit("mult_dae", data, 2, checkpoint=3)


# -- a run killed with SIGKILL mid-epoch, on real data ---------------------------------------------------------
KILLED_RUN = textwrap.dedent("""
    import sys, time
    from aerec.models import MultDAE
    from tests.test_checkpoint import ml100k_run
    checkpoint, progress = sys.argv[1], sys.argv[2]
    real = MultDAE.batch_loss

    def slow_batch_loss(self, module, batch, state):
        with open(progress, "w") as out:
            out.write(f"{state.epoch} {state.update}")
        time.sleep(0.05)  # slow enough for the parent to catch the run inside an epoch
        return real(self, module, batch, state)

    MultDAE.batch_loss = slow_batch_loss
    ml100k_run(checkpoint)
""")
KILL_PARAMS = {"hidden": 64, "latent": 16, "epochs": 6, "batch_size": 100, "seed": 7}


def ml100k_run(checkpoint=None, data_dir=None):
    """Mult-DAE on ML-100K's strong split (seed 7); returns the model and its test NDCG@100 / Recall@20."""
    from aerec.data import load_movielens, strong_generalization

    data = load_movielens("ml-100k", data_dir=data_dir or os.environ["AEREC_DATA_DIR"])
    split = strong_generalization(data, n_heldout=100, seed=7)
    validation = (split.validation_fold_in, split.validation_heldout)
    model = make_model("mult_dae", **KILL_PARAMS).fit(
        split.train, validation, checkpoint=None if checkpoint is None else Checkpointing(checkpoint, every=1, resume=True))
    metrics = evaluate_ranking(model, split.test_fold_in.matrix, split.test_heldout.matrix, ks=(20, 100)).metrics
    return model, metrics


def test_a_run_killed_mid_epoch_resumes_to_the_same_weights_and_metrics(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("AEREC_DATA_DIR", str(data_dir))
    checkpoint, progress = tmp_path / "checkpoint", tmp_path / "progress"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(checkpoint), str(progress)], cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            committed = read_committed(checkpoint)
            written = progress.read_text().split() if progress.exists() else []
            epoch, update = (int(v) for v in written) if len(written) == 2 else (0, 0)
            if committed[0] >= 2 and epoch == committed[0] and update > committed[1]:
                break  # at least one update into the epoch after the last commit
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-epoch"
    epochs_done, updates_done = read_committed(checkpoint)
    epoch, update = (int(v) for v in progress.read_text().split())
    assert 2 <= epochs_done < KILL_PARAMS["epochs"] and epoch == epochs_done and update > updates_done
    print(f"killed in epoch {epoch + 1} at update {update}; the checkpoint held {epochs_done} epochs, {updates_done} updates")

    # One thread, as the child: with two, a loaded machine can change how products split their sums
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed, resumed_metrics = ml100k_run(checkpoint)
        whole, whole_metrics = ml100k_run()
    finally:
        torch.set_num_threads(threads)
    for (name, a), b in zip(whole.module_.state_dict().items(), resumed.module_.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed_metrics == whole_metrics
    assert resumed.history_.column("validation") == whole.history_.column("validation")
    print(f"resumed and uninterrupted: NDCG@100 {resumed_metrics['ndcg@100']:.6f} vs {whole_metrics['ndcg@100']:.6f}, "
          f"Recall@20 {resumed_metrics['recall@20']:.6f} vs {whole_metrics['recall@20']:.6f}; weights bit-identical")


def read_committed(checkpoint):
    """(epochs, updates) of the last commit in ``checkpoint``; (0, 0) before the first."""
    path = checkpoint / "checkpoint.json"
    if not path.exists():
        return 0, 0
    header = json.loads(path.read_text())
    return header["epochs_done"], header["updates"]
