"""``aerec recommend --output OUT_DIR/``: the sharded, resumable job of aerec.inference, and the chunked reader."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import aerec
from aerec.cli import main
from aerec.data.chunks import id_hash, iter_chunks, open_table
from aerec.data.readers import read_interactions
from aerec.inference import read_recommendations

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def histories(n_users=700, n_items=150, seed=0, unknown=25) -> pd.DataFrame:
    """Users with text ids and 3-30 integer items each (a few of them items no model knows), ratings 1-5."""
    rng = np.random.default_rng(seed)
    popularity = rng.pareto(1.2, n_items) + 0.1
    rows = []
    for user in range(n_users):
        items = rng.choice(n_items, size=rng.integers(3, 30), replace=False, p=popularity / popularity.sum())
        rows += [(f"u{user}", int(item), float(rng.integers(1, 6))) for item in items]
    frame = pd.DataFrame(rows, columns=["user", "item", "rating"])
    frame.loc[frame.sample(unknown, random_state=seed).index, "item"] = 10_000 + np.arange(unknown)
    return frame.sample(frac=1.0, random_state=seed, ignore_index=True)  # users' rows scattered through the file


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inference")
    train = histories(seed=1, unknown=0)
    likes = train[train.rating > 3]
    saved = {}
    for name, model in (("mult_vae", aerec.models.MultVAE(hidden=32, latent=16, epochs=3, batch_size=100,
                                                          device="cpu", progress=False)),
                        ("ease", aerec.models.EASE(l2=50.0))):
        model.fit(likes, rating=False)
        aerec.save(model, folder / name)
        saved[name] = folder / name
    frame = histories(seed=2)
    frame.to_parquet(folder / "users.parquet", index=False)
    return saved, folder / "users.parquet", frame


def run(capsys, *argv):
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def single_file(capsys, model, source, tmp_path, *extra) -> pd.DataFrame:
    output = tmp_path / "one.parquet"
    code, _, err = run(capsys, "recommend", "--model", model, "--input", source, "--n", 7, "--output", output,
                       "--overwrite", *extra)
    assert code == 0, err
    return pd.read_parquet(output).sort_values(["user", "rank"], kind="stable", ignore_index=True)


@pytest.mark.parametrize("name", ["mult_vae", "ease"])
def test_one_process_job_equals_the_single_file_output(models, tmp_path, capsys, name):
    saved, source, frame = models
    expected = single_file(capsys, saved[name], source, tmp_path)
    code, _, err = run(capsys, "recommend", "--model", saved[name], "--input", source, "--n", 7, "--output",
                       tmp_path / "job/", "--part-interactions", 2000)
    assert code == 0, err
    manifest = json.loads((tmp_path / "job" / "manifest.json").read_text())
    assert manifest["world"] == 1 and len(manifest["parts"]) == 6  # 11,000-odd rows in parts of about 2,000
    assert manifest["users"] == frame.user.nunique() and manifest["interactions"] == len(frame)
    catalogue = set(aerec.load(saved[name]).item_ids_.tolist())
    assert manifest["unknown_interactions"] == (~frame.item.isin(catalogue)).sum() > 25  # the 25 unknown to all
    assert manifest["rows"] == len(expected) == sum(part["rows"] for part in manifest["parts"])
    got = read_recommendations(tmp_path / "job")
    pd.testing.assert_frame_equal(got, expected)  # same users, items, ranks and scores, bit for bit
    assert not (tmp_path / "job" / ".spill").exists()


def test_the_input_spilled_in_many_small_blocks_gives_the_same_output(models, tmp_path, capsys, monkeypatch):
    """The spill pass reads the input in blocks of SPILL_ROWS rows (small, to bound memory): a user's rows spread
    over many blocks still make one history."""
    saved, source, frame = models
    expected = single_file(capsys, saved["ease"], source, tmp_path)
    monkeypatch.setattr(aerec.inference, "SPILL_ROWS", 997)
    assert len(frame) > 10 * 997
    code, _, err = run(capsys, "recommend", "--model", saved["ease"], "--input", source, "--n", 7, "--output",
                       tmp_path / "job/", "--part-interactions", 3000)
    assert code == 0, err
    pd.testing.assert_frame_equal(read_recommendations(tmp_path / "job"), expected)


def test_two_torchrun_processes_write_the_parts_of_one_process(models, tmp_path, capsys):
    """``torchrun --nproc-per-node 2 -m aerec recommend``: each rank writes its own parts; their union is the
    single-process output exactly."""
    saved, source, _ = models
    expected = single_file(capsys, saved["mult_vae"], source, tmp_path)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "aerec",
               "recommend", "--model", str(saved["mult_vae"]), "--input", str(source), "--top-n", "7",
               "--output", str(tmp_path / "job") + "/", "--part-interactions", "2000"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "job" / "manifest.json").read_text())
    assert manifest["world"] == 2 and sorted({part["rank"] for part in manifest["parts"]}) == [0, 1]
    assert "rank 1/2: part-1-0.parquet" in result.stderr
    users = [set(pd.read_parquet(tmp_path / "job" / part["file"]).user) for part in manifest["parts"]]
    assert sum(map(len, users)) == len(set().union(*users))  # a user is in one part only
    pd.testing.assert_frame_equal(read_recommendations(tmp_path / "job"), expected)


def test_a_killed_job_resumes_where_it_stopped(models, tmp_path, capsys):
    saved, source, frame = models
    expected = single_file(capsys, saved["mult_vae"], source, tmp_path)
    parts = math.ceil(len(frame) / 300)
    out = tmp_path / "job"
    command = [sys.executable, "-m", "aerec", "recommend", "--model", str(saved["mult_vae"]), "--input", str(source),
               "--n", "7", "--output", str(out) + "/", "--part-interactions", "300", "--threads", "1"]
    process = subprocess.Popen(command, env=ENV, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "part-0-3.json").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = sorted(path.name for path in out.glob("part-*.json"))
    assert 4 <= len(done) < parts - 5 and not (out / "manifest.json").exists()
    code, _, err = run(capsys, *command[3:])
    assert code == 0, err
    assert f"rank 0/1: {len(done)} of {parts} part(s) already complete, {parts - len(done)} to do" in err
    pd.testing.assert_frame_equal(read_recommendations(out), expected)


def test_a_damaged_part_is_redone_and_another_job_is_refused(models, tmp_path, capsys):
    saved, source, frame = models
    out = tmp_path / "job"
    arguments = ["recommend", "--model", saved["ease"], "--input", source, "--n", 7, "--output", f"{out}/",
                 "--part-interactions", 4000]
    assert run(capsys, *arguments)[0] == 0
    before = read_recommendations(out)
    part = out / "part-0-1.parquet"
    part.write_bytes(part.read_bytes()[:-100])  # truncated
    code, _, err = run(capsys, *arguments)
    assert code == 0 and "2 of 3 part(s) already complete, 1 to do" in err and "part-0-1.parquet:" in err
    pd.testing.assert_frame_equal(read_recommendations(out), before)

    # another model, another input, other options: refused by name, nothing touched
    other_input = tmp_path / "other.parquet"
    frame.iloc[:-1].to_parquet(other_input, index=False)
    listing = sorted(p.name for p in out.iterdir())
    for changed, what in (({2: saved["mult_vae"]}, "another model"), ({4: other_input}, "another input"),
                          ({6: 8}, "other options")):
        argv = [changed.get(i, value) for i, value in enumerate(arguments)]
        code, _, err = run(capsys, *argv)
        assert code == 2 and f"holds the parts of another job ({what}" in err, err
    assert sorted(p.name for p in out.iterdir()) == listing
    # --overwrite (one process) starts the other job afresh
    argv = [saved["mult_vae"] if value == saved["ease"] else value for value in arguments]
    assert run(capsys, *argv, "--overwrite")[0] == 0
    pd.testing.assert_frame_equal(read_recommendations(out), single_file(capsys, saved["mult_vae"], source, tmp_path))


def test_a_dead_rank_is_reported_and_the_rerun_completes_its_parts(models, tmp_path):
    """Rank 1 never runs (it died): rank 0 finishes its own parts, names the missing ones and exits 1; the same
    two ranks again complete the job."""
    saved, source, _ = models
    out = tmp_path / "job"
    command = [sys.executable, "-m", "aerec", "recommend", "--model", str(saved["ease"]), "--input", str(source),
               "--n", "7", "--output", f"{out}/", "--part-interactions", "2000"]

    def rank(r, wait="1"):
        return subprocess.Popen(command, env={**ENV, "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r),
                                              "AEREC_JOB_WAIT": wait}, stderr=subprocess.PIPE, text=True)

    alone = rank(0)
    _, err = alone.communicate(timeout=120)
    assert alone.returncode == 1, err
    assert "3 of 6 part(s) missing" in err and "part-1-0 (rank 1), part-1-1 (rank 1), part-1-2 (rank 1)" in err
    assert sorted(p.name for p in out.glob("part-0-*.parquet")) == [f"part-0-{k}.parquet" for k in range(3)]
    # and a third process count is refused
    refused = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "a job started with 2 process(es); this run has 1" in refused.stderr
    both = [rank(0, wait="120"), rank(1)]
    errors = [process.communicate(timeout=120)[1] for process in both]
    assert [process.returncode for process in both] == [0, 0], errors
    assert "3 of 3 part(s) already complete" in errors[0] and "0 of 3 part(s) already complete" in errors[1]
    assert len(json.loads((out / "manifest.json").read_text())["parts"]) == 6


def test_an_output_file_under_torchrun_and_a_foreign_directory_are_refused(models, tmp_path, capsys, monkeypatch):
    saved, source, _ = models
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code, _, err = run(capsys, "recommend", "--model", saved["ease"], "--input", source, "--output",
                       tmp_path / "mine")
    assert code == 2 and "holding other files and no job.json" in err
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]  # not even a lock file left behind
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code, _, err = run(capsys, "recommend", "--model", saved["ease"], "--input", source, "--output",
                       tmp_path / "recs.csv")
    assert code == 2 and "one of 2 processes (torchrun): name a directory" in err
    monkeypatch.setenv("RANK", "2")
    code, _, err = run(capsys, "recommend", "--model", saved["ease"], "--input", source, "--output",
                       tmp_path / "job/")
    assert code == 2 and "RANK=2, WORLD_SIZE=2" in err


# -- the chunked reader ----------------------------------------------------------------------------------

def test_chunks_of_text_and_parquet_read_what_the_whole_file_reader_reads(tmp_path):
    frame = histories(n_users=120, seed=4)
    frame.to_csv(tmp_path / "h.csv", index=False)
    (tmp_path / "h.dat").write_text("\n".join(f"{u[1:]}::{i}::{r:g}::0" for u, i, r in frame.itertuples(index=False)))
    (tmp_path / "parts").mkdir()
    for k, start in enumerate(range(0, len(frame), 700)):
        frame.iloc[start:start + 700].to_parquet(tmp_path / "parts" / f"p{k}.parquet", index=False)
    (tmp_path / "parts" / "_SUCCESS").write_text("")
    for source in ("h.csv", "h.dat", "parts"):
        table = open_table(tmp_path / source)
        chunks = list(iter_chunks(table, rows=97))
        assert len(chunks) > 3 and all(len(chunk["rating"]) <= 97 for chunk in chunks)
        got = {key: np.concatenate([chunk[key] for chunk in chunks]) for key in ("user", "item", "rating")}
        whole = read_interactions(tmp_path / source) if source != "parts" else None
        assert len(got["rating"]) == len(frame)
        np.testing.assert_array_equal(got["rating"], frame.rating.to_numpy())
        if whole is not None:
            assert whole.nnz == len(frame) and np.isclose(whole.matrix.sum(), frame.rating.sum())


def test_id_hash_does_not_depend_on_the_block_or_the_type(tmp_path):
    ids = np.array(["7", "007", "x7", "-3", "12345678901234567890"], dtype=object)
    hashes = id_hash(ids)
    assert hashes[0] == hashes[1] == id_hash(np.array([7]))[0] and hashes[3] == id_hash(np.array([-3]))[0]
    assert hashes[2] != hashes[0] and len(set(hashes.tolist())) == 4
    assert (id_hash(ids[2:]) == hashes[2:]).all()  # block-independent


def test_a_directory_of_mixed_formats_is_refused_by_name(tmp_path, models, capsys):
    saved, source, frame = models
    (tmp_path / "mixed").mkdir()
    frame.iloc[:50].to_parquet(tmp_path / "mixed" / "a.parquet", index=False)
    frame.iloc[50:].to_csv(tmp_path / "mixed" / "b.csv", index=False)
    code, _, err = run(capsys, "recommend", "--model", saved["ease"], "--input", tmp_path / "mixed", "--output",
                       tmp_path / "job/")
    assert code == 2 and "mixes formats (1 parquet, 1 text files)" in err
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "a.json").write_text("{}")
    code, _, err = run(capsys, "recommend", "--model", saved["ease"], "--input", tmp_path / "odd", "--output",
                       tmp_path / "job2/")
    assert code == 2 and "holds no Parquet or CSV files (found ['.json'])" in err


def test_a_refused_job_leaves_nothing_behind(models, tmp_path, capsys):
    """An input without rows is refused only once the pass over it finds none: the plan, spill and lock it had
    made are removed again (the CLI fuzzing found them left behind)."""
    saved, _, _ = models
    (tmp_path / "header_only.csv").write_text("user,item\n")
    code, _, err = run(capsys, "recommend", "--model", saved["ease"], "--input", tmp_path / "header_only.csv",
                       "--output", tmp_path / "out")
    assert code == 2 and "holds no interactions" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["header_only.csv"]
