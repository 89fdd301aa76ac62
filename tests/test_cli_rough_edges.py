"""Rough edges a new user hit on the command line, each with the command that now behaves."""

from __future__ import annotations

import os
import stat

import pytest

from aerec.cli import build_parser, main


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_rating_model_on_a_ranking_protocol_is_told_to_use_the_ratings_protocol(tmp_path, capsys):
    """It failed with "validation must be held-out ratings ... got tuple"."""
    code, _, err = run(capsys, "train", "--model", "autorec", "--out", tmp_path / "m")
    assert code == 2 and "'autorec' is a rating model" in err and "use --protocol ratings" in err
    assert not (tmp_path / "m").exists()


def test_help_shows_percent_signs_once(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "10% of the training ratings" in out and "%%" not in out


def test_every_command_takes_threads_and_quiet(capsys):
    from aerec.cli import leaf_parsers

    leaves = leaf_parsers(build_parser()._subparsers._group_actions[0])
    assert len(leaves) >= 10  # train ... demo, and benchmark run / report / status
    for subparser in leaves:
        flags = {flag for action in subparser._actions for flag in action.option_strings}
        assert {"--threads", "--quiet"} <= flags, subparser.prog
    code, _, err = run(capsys, "evaluate", "--model", "popularity", "--threads", "0")
    assert code == 2 and "--threads 0; expected an integer >= 1" in err
    import torch

    before = torch.get_num_threads()
    code, out, err = run(capsys, "evaluate", "--model", "mult_dae", "--param", "epochs=1", "--threads", "1", "--quiet")
    assert code == 0 and err == "" and "recall@20" in out and torch.get_num_threads() == before
    code, _, err = run(capsys, "evaluate", "--model", "mult_dae", "--param", "epochs=1")
    assert "MultDAE" in err and "1/1" in err  # evaluate shows the fit's progress, as train does


def test_ctrl_c_during_training_says_where_the_checkpoint_is(tmp_path, capsys, monkeypatch):
    import aerec.models.torch_base as torch_base

    real_train = torch_base.train

    def interrupted_at_epoch_2(*args, **kwargs):
        def stop(record, history):
            if record["epoch"] == 2:
                raise KeyboardInterrupt
        kwargs["callbacks"] = (*kwargs["callbacks"], stop)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(torch_base, "train", interrupted_at_epoch_2)
    out = tmp_path / "m"
    code, _, err = run(capsys, "train", "--model", "mult_dae", "--param", "epochs=5", "--checkpoint-every", "1",
                       "--out", out, "--quiet")
    assert code == 130
    assert err.strip().splitlines()[-1].startswith("aerec train: interrupted; the last checkpoint after epoch")
    assert f"is in {out / 'checkpoint'}: run the same command with --resume" in err and "Traceback" not in err
    monkeypatch.setattr(torch_base, "train", real_train)
    code, _, err = run(capsys, "train", "--model", "mult_dae", "--param", "epochs=5", "--checkpoint-every", "1",
                       "--out", out, "--resume", "--quiet")
    assert code == 0, err


def test_model_files_follow_the_umask(tmp_path, capsys):
    """They were written 0600 (mkstemp's mode)."""
    clicks = tmp_path / "clicks.csv"
    clicks.write_text("user,item\n" + "".join(f"{u},{(u * 3 + j) % 20}\n" for u in range(30) for j in range(6)))
    old = os.umask(0o022)
    try:
        code, _, err = run(capsys, "train", "--model", "ease", "--dataset", clicks, "--out", tmp_path / "m", "--quiet")
        assert code == 0, err
        code, _, err = run(capsys, "recommend", "--model", tmp_path / "m", "--input", clicks, "--n", "2",
                           "--output", tmp_path / "r.csv", "--quiet")
        assert code == 0, err
    finally:
        os.umask(old)
    for path in [*(tmp_path / "m").iterdir(), tmp_path / "r.csv"]:
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_datasets_reports_a_folder_without_its_ratings_file_as_incomplete(tmp_path, capsys):
    (tmp_path / "ml-1m").mkdir()
    (tmp_path / "ml-1m" / "movies.dat").write_text("1::Toy Story (1995)::Animation\n")
    code, out, _ = run(capsys, "datasets", "--data-dir", tmp_path)
    line = next(line for line in out.splitlines() if line.startswith("ml-1m"))
    assert "incomplete (ratings.dat missing)" in line and "not found" not in line
