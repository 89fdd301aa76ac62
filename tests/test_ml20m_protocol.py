"""The ML-20M strong-generalization protocol runs with one command each for RecVAE and EDLAE.

ML-20M's files are not on our machines; a synthetic ``ml-20m/ratings.csv`` in the release's
format (header ``userId,movieId,rating,timestamp``), with enough users for the papers' 10,000
validation and 10,000 test users, goes through the same script and command a user runs on the
real file.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from tests.conftest import REPO


def load_script(name: str):
    import sys

    sys.path.insert(0, str(REPO / "evaluation"))  # the scripts import their shared _common
    spec = importlib.util.spec_from_file_location(name, REPO / "evaluation" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ml20m_dir(tmp_path_factory):
    """24,000 users with 8 ratings of 4-5 stars each over 150 movies, as ML-20M's ratings.csv writes them."""
    root = tmp_path_factory.mktemp("data")
    (root / "ml-20m").mkdir()
    rng = np.random.default_rng(0)
    n_users, per_user = 24_000, 8
    users = np.repeat(np.arange(1, n_users + 1), per_user)
    popularity = 1.0 / np.arange(1, 151) ** 0.7
    movies = np.concatenate([rng.choice(np.arange(1, 151) * 7, per_user, replace=False, p=popularity / popularity.sum())
                             for _ in range(n_users)])
    ratings = rng.choice([4.0, 4.5, 5.0], len(users))
    stamps = rng.integers(789_652_009, 1_427_784_002, len(users))
    with open(root / "ml-20m" / "ratings.csv", "w") as out:
        out.write("userId,movieId,rating,timestamp\n")
        out.writelines(f"{u},{m},{r:.1f},{t}\n" for u, m, r, t in zip(users, movies, ratings, stamps))
    return root


def test_recvae_on_the_ml20m_protocol_in_one_command(ml20m_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("AEREC_DATA_DIR", str(ml20m_dir))
    script = load_script("recvae_strong")
    assert script.main(["--datasets", "ml-20m", "--models", "aerec", "--epochs", "1", "--seeds", "98765",
                        "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "recvae_strong.json").read_text())
    run = record["datasets"]["ml-20m"]["per_seed"][0]
    assert run["split_summary"]["validation_users"] == run["split_summary"]["test_users"] == 10_000
    assert 0 < run["models"]["aerec"]["test"]["metrics"]["ndcg@100"] <= 1


def test_edlae_on_the_ml20m_protocol_in_one_command(ml20m_dir, tmp_path, monkeypatch, capsys):
    """``aerec benchmark run`` with a spec naming ml-20m: the papers' 10,000 validation and test users."""
    from aerec.cli import main

    monkeypatch.setenv("AEREC_DATA_DIR", str(ml20m_dir))
    spec = tmp_path / "ml20m.toml"
    spec.write_text('seeds = [98765]\nmetrics = ["ndcg@100"]\n[tuning]\ntrials = 2\n[[datasets]]\nname = "ml-20m"\n'
                    '[models.ease]\nfixed = { device = "cpu" }\n[models.edlae]\nfixed = { device = "cpu" }\n')
    assert main(["benchmark", "run", str(spec), "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    edlae = summary["datasets"]["ml-20m"]["models"]["edlae"]
    assert edlae["trials"] == {"COMPLETE": 2} and 0 < edlae["metrics"]["ndcg@100"]["mean"] <= 1
    from aerec.benchmark.runner import read_store

    _, cells = read_store(spec.with_suffix(".sqlite"))
    assert len(cells[("ml-20m", 98765, "edlae")]["users"]) == 10_000  # the protocol's test users, all scored
