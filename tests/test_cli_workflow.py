"""A user's path through the CLI: train -> evaluate -> recommend, resume after a kill, and refusals that lose nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

import aerec
from aerec.cli import main
from aerec.data import load_movielens, strong_generalization
from aerec.evaluation import evaluate_ranking
from tests.conftest import REPO

MULT_DAE = ["--param", "hidden=64", "--param", "latent=16", "--param", "epochs=4", "--param", "progress=false"]


def run(capsys, *argv):
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """Mult-DAE trained by the CLI on ML-100K's strong split (seed 5)."""
    out = tmp_path_factory.mktemp("cli") / "mult_dae"
    code = main(["train", "--model", "mult_dae", "--dataset", "ml-100k", "--data-dir", str(data_dir), "--seed", "5",
                 *MULT_DAE, "--out", str(out), "--json"])
    assert code == 0
    return out, data_dir


def test_train_saves_a_model_directory_with_its_split(trained):
    out, _ = trained
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "mult_dae" and config["training"]["epochs_run"] == 4
    assert config["metadata"]["dataset"] == "ml-100k" and config["metadata"]["seed"] == 5
    assert config["metadata"]["n_heldout"] == 100 and not (out / "checkpoint").exists()
    assert 1 <= config["training"]["best_epoch"] <= 4


def test_evaluate_a_model_directory_tests_it_on_its_own_split(trained, capsys):
    out, data_dir = trained
    code, stdout, _ = run(capsys, "evaluate", "--model", out, "--data-dir", data_dir, "--json")
    assert code == 0
    report = json.loads(stdout)
    split = strong_generalization(load_movielens("ml-100k", data_dir=data_dir), n_heldout=100, seed=5)
    expected = evaluate_ranking(aerec.load(out), split.test_fold_in.matrix, split.test_heldout.matrix,
                                ks=(20, 50, 100)).metrics
    assert report["metrics"]["ndcg@100"] == expected["ndcg@100"] and report["seed"] == 5
    assert report["n_users_evaluated"] == 100


def test_evaluate_refuses_a_split_with_other_items(trained, capsys):
    out, data_dir = trained
    code, stdout, err = run(capsys, "evaluate", "--model", out, "--data-dir", data_dir, "--seed", "6")
    assert code == 2 and stdout == "" and "not this split's" in err


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_recommend_folds_in_new_users_and_writes_user_item_rank_score(trained, tmp_path, capsys, suffix):
    out, _ = trained
    model = aerec.load(out)
    known = np.asarray(model.item_ids_)
    users = pd.DataFrame({"user": ["ann"] * 3 + ["bob"] * 2 + ["cy"],
                          "item": [known[0], known[5], known[9], known[1], 999_999, known[2]]})
    users.to_csv(tmp_path / "users.csv", index=False)
    output = tmp_path / f"recs{suffix}"
    code, _, err = run(capsys, "recommend", "--model", out, "--input", tmp_path / "users.csv", "--n", 7,
                       "--output", output)
    assert code == 0 and "1 interaction(s) with items the model does not know" in err
    recs = pd.read_csv(output) if suffix == ".csv" else pd.read_parquet(output)
    assert list(recs.columns) == ["user", "item", "rank", "score"] and len(recs) == 21
    ann = recs[recs.user == "ann"]
    assert ann["rank"].tolist() == list(range(1, 8)) and ann.score.is_monotonic_decreasing
    assert not set(ann.item) & {known[0], known[5], known[9]}  # their own items are excluded
    column = {item: i for i, item in enumerate(known)}
    row = np.zeros((1, len(known)), dtype=np.float32)
    row[0, [0, 5, 9]] = 1
    import scipy.sparse as sp

    ids, scores = model.recommend(sp.csr_matrix(row), n=7)
    assert [column[item] for item in ann.item] == ids[0].tolist()
    np.testing.assert_allclose(ann.score, scores[0], rtol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["users.csv", output.name])


def test_recommend_streams_in_small_batches_to_the_same_file(trained, tmp_path, capsys, data_dir):
    out, _ = trained
    outputs = []
    for memory in (1, 256):
        output = tmp_path / f"recs{memory}.csv"
        code, _, _ = run(capsys, "recommend", "--model", out, "--input", data_dir / "ml-100k" / "u.data", "--n", 10,
                         "--output", output, "--memory-mib", memory)
        assert code == 0
        outputs.append(output.read_bytes())
    assert outputs[0] == outputs[1] and outputs[0].count(b"\n") == 943 * 10 + 1


def test_a_failing_recommend_leaves_no_output_and_keeps_an_old_one(trained, tmp_path, capsys):
    out, _ = trained
    output = tmp_path / "recs.csv"
    output.write_text("earlier results\n")
    pd.DataFrame({"user": [1], "item": ["not-an-item"]}).to_csv(tmp_path / "users.csv", index=False)
    code, stdout, err = run(capsys, "recommend", "--model", out, "--input", tmp_path / "users.csv", "--output", output,
                            "--overwrite")
    assert code == 2 and stdout == "" and "none of the 1 items of --input" in err
    assert output.read_text() == "earlier results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recs.csv", "users.csv"]
    code, _, err = run(capsys, "recommend", "--model", out, "--input", tmp_path / "users.csv", "--output",
                       tmp_path / "recs.json")
    assert code == 2 and "expected a name ending in .csv or .parquet" in err


def test_train_refuses_an_out_that_holds_something(trained, tmp_path, capsys):
    out, data_dir = trained
    before = sorted(p.name for p in out.iterdir())
    code, _, err = run(capsys, "train", "--model", "popularity", "--dataset", "ml-100k", "--data-dir", data_dir,
                       "--out", out)
    assert code == 2 and "already holds a trained model; pass --overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == before
    (tmp_path / "mine.txt").write_text("keep")
    code, _, err = run(capsys, "train", "--model", "popularity", "--out", tmp_path)
    assert code == 2 and "holds other files (mine.txt)" in err


def test_resume_of_a_finished_run_reports_it(trained, capsys):
    out, data_dir = trained
    code, stdout, err = run(capsys, "train", "--model", "mult_dae", "--dataset", "ml-100k", "--data-dir", data_dir,
                            *MULT_DAE, "--out", out, "--resume", "--json")
    assert code == 0 and "already holds the finished model" in err and json.loads(stdout)["model"] == "mult_dae"


def test_datasets_lists_and_verifies(capsys, data_dir):
    code, stdout, _ = run(capsys, "datasets", "--data-dir", data_dir, "--json")
    rows = {row["name"]: row for row in json.loads(stdout)["datasets"]}
    assert code == 0 and rows["ml-100k"]["status"] == "verified" and rows["ml-20m"]["status"] == "not found"
    assert rows["ml-100k"]["files"] == {"u.data": "verified", "u.item": "verified"}


def test_datasets_exits_1_on_a_checksum_mismatch(capsys, tmp_path, data_dir):
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / "ml-100k" / "u.data").write_bytes((data_dir / "ml-100k" / "u.data").read_bytes()[:-50])
    code, stdout, _ = run(capsys, "datasets", "--data-dir", tmp_path)
    assert code == 1 and "checksum mismatch" in stdout


def test_two_runs_with_one_seed_give_identical_metrics(capsys, data_dir):
    reports = []
    for _ in range(2):
        code, stdout, _ = run(capsys, "evaluate", "--model", "mult_vae", "--dataset", "ml-100k", "--data-dir", data_dir,
                              "--param", "epochs=3", "--param", "hidden=64", "--param", "latent=16", "--json")
        assert code == 0
        reports.append(json.loads(stdout))
    assert reports[0]["metrics"] == reports[1]["metrics"]


def test_train_killed_then_resumed_saves_the_uninterrupted_model(tmp_path, data_dir):
    arguments = [sys.executable, "-m", "aerec", "train", "--model", "mult_dae", "--dataset", "ml-100k",
                 "--data-dir", str(data_dir), "--param", "epochs=12", "--param", "hidden=200", "--param", "progress=false",
                 "--checkpoint-every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    killed = tmp_path / "killed"
    child = subprocess.Popen([*arguments, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    header = killed / "checkpoint" / "checkpoint.json"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if header.exists() and json.loads(header.read_text())["epochs_done"] >= 2:
                break
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, "training ended before the kill"
    assert not (killed / "config.json").exists()
    resumed = subprocess.run([*arguments, "--out", str(killed), "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = subprocess.run([*arguments, "--out", str(tmp_path / "whole")], env=env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr[-2000:]
    a, b = aerec.load(killed), aerec.load(tmp_path / "whole")
    for (name, x), y in zip(a.module_.state_dict().items(), b.module_.state_dict().values()):
        assert torch.equal(x, y), name
    assert a.history_.column("validation") == b.history_.column("validation")
