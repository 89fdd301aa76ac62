"""The aerec command line: results on stdout, progress on stderr, exit code 2 and one line for bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pandas as pd
import pytest

from aerec.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_texts_say_what_each_command_does(capsys):
    done = subprocess.run([sys.executable, "-m", "aerec", "--help"], capture_output=True, text=True, check=True)
    assert "train, evaluate and recommend" in " ".join(done.stdout.split())  # python -m aerec, as a user runs it
    for argv, expected in ((["evaluate", "--help"], "Split a dataset"), (["demo", "--help"], "shipped with aerec")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0 and expected in " ".join(capsys.readouterr().out.split())


def test_evaluate_json_is_exactly_one_object_on_stdout(capsys, data_dir):
    code, out, err = run(capsys, "evaluate", "--dataset", "ml-100k", "--data-dir", str(data_dir), "--model", "ease",
                         "--param", "l2=500", "--json")
    assert code == 0
    report = json.loads(out)  # the whole of stdout is one JSON document
    assert report["params"] == {"l2": 500} and report["split"]["test_users"] == 100
    assert report["n_users_evaluated"] == 100 and 0.40 < report["metrics"]["ndcg@100"] < 0.52
    assert "fitted EASE" in err


def test_evaluate_table_per_user_protocol(capsys, data_dir):
    code, out, _ = run(capsys, "evaluate", "--dataset", "ml-100k", "--data-dir", str(data_dir), "--model",
                       "popularity", "--protocol", "per-user", "--k", "10")
    assert code == 0 and "recall@10" in out and "users evaluated: 943" in out


def test_evaluate_a_generic_csv(capsys, tmp_path):
    frame = pd.DataFrame({"user": [u for u in range(30) for _ in range(6)],
                          "item": [(u * 7 + j * 3) % 25 for u in range(30) for j in range(6)]})
    frame.to_csv(tmp_path / "clicks.csv", index=False)
    code, out, _ = run(capsys, "evaluate", "--dataset", str(tmp_path / "clicks.csv"), "--model", "popularity",
                       "--n-heldout", "5", "--k", "5", "--json")
    assert code == 0 and json.loads(out)["split"]["test_users"] == 5


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "nope", "--model", "ease"], "--dataset 'nope' is neither a known dataset"),
    (["--model", "ease", "--param", "lambda=3"], r"unknown parameter\(s\) \['lambda'\]"),
    (["--model", "ease", "--param", "l2=-3"], "l2=-3; expected a positive number"),
    (["--model", "ease", "--param", "l2"], "--param 'l2'; expected KEY=VALUE"),
    (["--model", "ease", "--k", "0"], "--k 0; expected cut-offs >= 1"),
    (["--model", "ease", "--protocol", "ratings"], "does not predict ratings"),
])
def test_bad_input_exits_2_with_one_line(capsys, argv, message):
    code, out, err = run(capsys, "evaluate", *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and re.search(message, err)


def test_argument_errors_exit_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["train", "--model", "nomodel", "--out", "x"])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and len(err.strip().splitlines()) == 1 and "invalid choice: 'nomodel'" in err
    code, out, err = run(capsys, "evaluate", "--model", "nomodel")
    assert code == 2 and "--model 'nomodel' is neither a model name" in err and len(err.strip().splitlines()) == 1


def test_checksum_mismatch_exits_2(capsys, tmp_path, data_dir):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_bytes((data_dir / "ml-100k" / "u.data").read_bytes()[:-1000])
    code, out, err = run(capsys, "evaluate", "--dataset", "ml-100k", "--data-dir", str(tmp_path), "--model", "popularity")
    assert code == 2 and out == "" and "expected 06416e59" in err and len(err.strip().splitlines()) == 1


def test_demo_trains_an_autoencoder_beside_ease_and_prints_titles_and_a_plot(capsys, tmp_path):
    plot = tmp_path / "demo.png"
    code, out, _ = run(capsys, "demo", "--seconds", "8", "--plot", str(plot), "--quiet")
    assert code == 0
    table = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["popularity"],
                                                                                              ["ease"], ["mult_vae"])}
    assert set(table) == {"popularity", "ease", "mult_vae"} and "epochs, best" in " ".join(table["mult_vae"])
    # ten ranks, Mult-VAE's and EASE's titles side by side, each after its mark (* = held out)
    ranked = [match for line in out.splitlines()
              if (match := re.match(r"^\s+\d+\. ([ *]) (.{44}) ([ *]) .+\(\d{4}\)$", line))]
    assert len(ranked) == 10
    # the user shown has a held-out hit in either list (it was read at columns 50-51, padding of the left title:
    # only Mult-VAE's marks counted, and with fewer epochs on a busy machine the user shown had EASE's hits only)
    assert "*" in "".join(match[1] + match[3] for match in ranked)
    assert f"plot: {plot}" in out and plot.stat().st_size > 10_000
    code, _, err = run(capsys, "demo", "--user", "nobody", "--plot", str(plot))
    assert code == 2 and "--user 'nobody' is not a test user" in err


# -- aerec models: the constraints tables, as the CLI shows them --------------------------------------------
def test_models_lists_every_registered_model(capsys):
    from aerec.models import MODELS

    code, out, _ = run(capsys, "models", "--json")
    assert code == 0 and [row["name"] for row in json.loads(out)["models"]] == list(MODELS)


@pytest.mark.parametrize("name", ["mult_vae", "cdae", "autorec", "autoencoder", "ease", "als"])
def test_models_name_reads_the_models_constraints_table(capsys, name):
    from aerec.models import MODELS
    from aerec.params import describe

    code, out, _ = run(capsys, "models", name, "--json")
    rows = json.loads(out)["parameters"]
    assert code == 0 and [row["name"] for row in rows] == MODELS[name].param_names()
    assert all(row["accepts"] == describe(MODELS[name].constraints()[row["name"]]) for row in rows)


def test_models_refuses_an_unknown_name(capsys):
    code, _, err = run(capsys, "models", "vae")
    assert code == 2 and "unknown model 'vae'" in err and len(err.strip().splitlines()) == 1


def test_a_tuple_parameter_goes_in_as_comma_separated_values(capsys, tmp_path):
    path = tmp_path / "clicks.csv"
    rows = [(u, i) for u in range(60) for i in range(20) if (u * 7 + i * 3) % 3 != 0]
    path.write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i in rows))
    code, out, err = run(capsys, "evaluate", "--dataset", str(path), "--protocol", "per-user", "--model", "autoencoder",
                         "--param", "hidden=6,3", "--param", "epochs=2", "--param", "loss=multinomial", "--k", "5", "--json")
    assert code == 0, err
    assert json.loads(out)["params"]["hidden"] == [6, 3]


def test_evaluate_and_train_tune_on_the_validation_users_and_keep_the_best_trials_model(capsys, data_dir, tmp_path):
    import optuna

    from aerec.benchmark.protocols import CellData
    from aerec.benchmark.runner import tune
    from aerec.benchmark.spec import ModelSpec, TuningSpec
    from aerec.cli.common import make_split
    from aerec.data import load_movielens
    from aerec.models import EASE

    code, out, err = run(capsys, "evaluate", "--dataset", "ml-100k", "--data-dir", str(data_dir), "--model", "ease",
                         "--param", "device=cpu", "--tune", "4", "--json")
    assert code == 0
    report = json.loads(out)
    tuning = report["tuning"]
    assert tuning["trials"] == 4 and tuning["space"] == ["l2"] and tuning["metric"] == "ndcg@100"
    assert report["params"]["l2"] == tuning["chosen"]["l2"] and 10 <= tuning["chosen"]["l2"] <= 10_000
    assert tuning["best_validation"] == max(tuning["history"]) and "tuned ease: 4 trials" in err
    # the same trials as the benchmark's machinery with the split seed: the CLI adds nothing of its own
    split = make_split(load_movielens("ml-100k", data_dir), "strong", 98765, None, "ml-100k")
    best, model, _ = tune(optuna.create_study(direction="maximize"), TuningSpec(trials=4),
                          ModelSpec("ease", "ease", {"device": "cpu"}, EASE.default_search_space()),
                          CellData(None, split.train, split.validation, split.test), 98765, "ease")
    assert best.params == tuning["chosen"]
    code, out, _ = run(capsys, "train", "--dataset", "ml-100k", "--data-dir", str(data_dir), "--model", "ease",
                       "--param", "device=cpu", "--tune", "4", "--out", str(tmp_path / "ease"), "--json")
    assert code == 0
    assert json.loads(out)["tuning"]["chosen"] == tuning["chosen"]
    config = json.loads((tmp_path / "ease" / "config.json").read_text())
    assert config["state"]["params"]["l2"] == tuning["chosen"]["l2"]  # the best trial's model is the one saved


@pytest.mark.parametrize("argv, message", [
    (["--tune", "0"], "--tune 0; expected"),
    (["--tune", "2", "--protocol", "per-user"], "--tune needs a validation part and the 'per-user' protocol has none"),
    (["--tune", "2", "--param", "l2=100"], "'ease' has nothing left to tune"),
])
def test_a_tune_that_cannot_run_exits_2_naming_why(capsys, data_dir, argv, message):
    code, _, err = run(capsys, "evaluate", "--dataset", "ml-100k", "--data-dir", str(data_dir), "--model", "ease",
                       *argv)
    assert code == 2 and message in err
