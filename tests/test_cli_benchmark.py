"""``aerec benchmark run / report / status`` on a tiny spec; bad specs exit 2 with one line naming the key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from aerec.benchmark.report import without_run_dependent
from aerec.cli import main

TINY = """
name = "tiny"
seeds = [98765, 1]
metrics = ["recall@20", "ndcg@100"]
baseline = "popularity"
[protocol]
name = "strong"
n_heldout = 100
[tuning]
trials = 2
[[datasets]]
name = "ml-100k"
[models.popularity]
[models.ease]
fixed = { device = "cpu" }
"""


@pytest.fixture
def spec(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("AEREC_DATA_DIR", str(data_dir))
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def test_run_prints_one_json_summary_with_intervals_and_p_values_then_report_and_status_agree(spec, capsys):
    assert main(["benchmark", "run", str(spec), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    block = summary["datasets"]["ml-100k"]
    assert block["best"] == "ease"
    ease = block["models"]["ease"]["metrics"]["ndcg@100"]
    assert ease["ci_low"] < ease["mean"] < ease["ci_high"] and ease["n"] == 2
    assert block["against_best"]["popularity"]["significant"]
    assert 0 <= block["against_baseline"]["ease"]["wilcoxon_p_holm"] < 0.05
    store = spec.with_suffix(".sqlite")
    report_dir = store.with_name("tiny_report")
    assert {p.name for p in report_dir.iterdir()} == {"report.json", "report.csv", "report.md", "per_user.parquet",
                                                      "metrics_ml-100k.png", "tuning_history_ml-100k.png"}
    assert all((report_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
               for name in ("metrics_ml-100k.png", "tuning_history_ml-100k.png"))
    text = (report_dir / "report.md").read_text()
    assert "![metrics_ml-100k.png](metrics_ml-100k.png)" in text and "## Provenance" in text
    assert summary["splits"]["ml-100k"]["98765"][:16] in text and summary["environment"][0]["optuna"] in text
    import pandas as pd

    per_user = pd.read_parquet(report_dir / "per_user.parquet")
    assert len(per_user) == 2 * 2 * 100 and set(per_user["model"]) == {"popularity", "ease"}
    ease = per_user[per_user["model"] == "ease"]
    assert ease["ndcg@100"].mean() == pytest.approx(summary["datasets"]["ml-100k"]["models"]["ease"]["metrics"]
                                                    ["ndcg@100"]["mean"])  # equal user counts per seed
    assert main(["benchmark", "report", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == summary  # the report is made from the store alone
    assert main(["benchmark", "status", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["done"] == 4


@pytest.mark.parametrize("text, message", [
    ("[models.easy]\n", r"\[models.easy\]: unknown model 'easy'"),
    ("colour = 1\n", "unknown key 'colour'"),
])
def test_a_bad_spec_exits_2_with_one_line_naming_the_key(spec, capsys, text, message):
    spec.write_text(text + TINY if "colour" in text else TINY + text)
    assert main(["benchmark", "run", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("aerec benchmark: error:")
    assert re.search(message, err)
    assert not spec.with_suffix(".sqlite").exists()  # refused before any store or training


def test_report_of_a_missing_store_exits_2(tmp_path, capsys):
    assert main(["benchmark", "report", str(tmp_path / "none.sqlite")]) == 2
    assert "no benchmark store at" in capsys.readouterr().err




def test_two_jobs_give_the_summary_of_one_and_a_changed_spec_is_refused_unless_allowed(spec, tmp_path, capsys):
    assert main(["benchmark", "run", str(spec), "--json", "--store", str(tmp_path / "one.sqlite")]) == 0
    one = json.loads(capsys.readouterr().out)
    assert main(["benchmark", "run", str(spec), "--json", "--jobs", "2", "--store", str(tmp_path / "two.sqlite")]) == 0
    captured = capsys.readouterr()
    assert without_run_dependent(json.loads(captured.out)) == without_run_dependent(one)
    assert re.search(r"\[worker \d+\] \('ml-100k', 1, 'ease'\): ", captured.err)  # the workers' messages relayed
    spec.write_text(TINY.replace("trials = 2", "trials = 3"))
    assert main(["benchmark", "run", str(spec), "--store", str(tmp_path / "one.sqlite")]) == 2
    assert "differs in ['tuning.trials']" in capsys.readouterr().err
    assert main(["benchmark", "run", str(spec), "--json", "--spec-changed=allow", "--quiet",
                 "--store", str(tmp_path / "one.sqlite")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["datasets"]["ml-100k"]["models"]["ease"]["trials"] == {"COMPLETE": 6}
    assert "trials, chosen" not in captured.err  # --quiet: no per-cell messages


def test_jobs_below_one_is_refused(spec, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", "run", str(spec), "--jobs", "0"])
    assert exit_info.value.code == 2 and "argument --jobs: '0'; expected an integer >= 1" in capsys.readouterr().err


def test_status_and_report_take_a_database_url(spec, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert main(["benchmark", "run", str(spec), "--store", url, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["benchmark", "status", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["done"] == 4
    assert main(["benchmark", "report", url]) == 0
    assert (tmp_path / "db_report" / "report.md").is_file()  # <database>_report in the working folder


def test_a_spec_file_edited_during_a_run_does_not_change_what_that_run_reports(spec, tmp_path):
    from aerec.benchmark import benchmark

    def edit_the_file(message):  # as a user editing the spec while a long run goes on
        spec.write_text(TINY + '[models.als]\nfixed = { iterations = 2 }\n')

    summary = benchmark(spec, tmp_path / "store.sqlite", log=edit_the_file)
    assert set(summary["datasets"]["ml-100k"]["models"]) == {"popularity", "ease"}  # the spec read at the start


def test_status_names_the_cells_running_with_their_worker_and_the_time_spent(spec, capsys):
    import sqlite3
    import time

    assert main(["benchmark", "run", str(spec), "--quiet"]) == 0
    store = spec.with_suffix(".sqlite")
    with sqlite3.connect(store) as connection:  # as while another machine's worker runs seed 1's EASE
        connection.execute("DELETE FROM aerec_cells WHERE seed = 1 AND label = 'ease'")
        connection.execute("INSERT INTO aerec_claims VALUES ('ml-100k', 1, 'ease', 'elsewhere:42', ?)",
                           (time.time() - 30,))
    capsys.readouterr()
    assert main(["benchmark", "status", str(store), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["done"] == 3 and record["left"] == [] and record["seconds_spent"] > 0
    assert [r["cell"] for r in record["running"]] == [["ml-100k", 1, "ease"]]
    assert record["running"][0]["worker"] == "elsewhere:42" and record["running"][0]["seconds"] >= 30
    assert main(["benchmark", "status", str(store)]) == 0
    assert "running: ml-100k/1/ease by elsewhere:42" in capsys.readouterr().out


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_terminated_run_takes_its_started_workers_with_it(spec, tmp_path):
    """``kill <pid>`` of ``aerec benchmark run --jobs 2`` left its started worker tuning on and writing the store."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    spec.write_text(TINY.replace("[models.ease]", '[models.dae]\nmodel = "mult_dae"\n'
                                 'fixed = { epochs = 400, device = "cpu", hidden = 60, latent = 20 }\n[models.ease]'))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, "-m", "aerec", "benchmark", "run", str(spec), "--jobs", "2", "--store",
                            str(tmp_path / "store.sqlite")], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline, workers = time.monotonic() + 120, []
        while not workers and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            children = Path(f"/proc/{run.pid}/task/{run.pid}/children")
            workers = [int(pid) for pid in children.read_text().split()] if children.exists() else []
        time.sleep(1.5)  # the worker is importing or tuning by now
        assert run.poll() is None, run.stderr.read()[-2000:]
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [Path(f"/proc/{pid}/cmdline").read_text() for pid in workers if alive(pid)]
        assert workers and not left, left  # a worker killed before it asked for SIGTERM-with-parent goes too
    finally:
        run.kill()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
