"""The multi-machine form of ``aerec benchmark``: two workers sharing one PostgreSQL server, as two machines would.

Starts a throw-away PostgreSQL server (the ``pgserver`` package: PostgreSQL's binaries in
a wheel; with ``psycopg2-binary`` for SQLAlchemy), then runs the spec twice:

1. two ``aerec benchmark run SPEC --store postgresql+psycopg2://...`` processes, as two
   machines would, the second started once the first has set the store up (a server has
   no file lock for the set-up);
2. the same spec on a SQLite file, one process.

It checks that each cell was run by exactly one of the two workers, that every study
holds exactly its budget of trials, that no claim is left, and that the report made from
the server equals the SQLite run's (apart from seconds, memory and the environment).

Not part of the test suite (it needs the two packages, which aerec does not depend on).
Run from the repository root:

    .venv/bin/pip install --target /tmp/pgpkgs pgserver psycopg2-binary
    PYTHONPATH=/tmp/pgpkgs AEREC_DATA_DIR=../shared/data .venv/bin/python evaluation/benchmark_postgres.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO_ROOT, add_output_args, environment_lines, finish_run, markdown_table, start_run
from aerec.benchmark.report import without_run_dependent



def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=REPO_ROOT / "evaluation/specs/smoke.toml")
    add_output_args(parser)
    return parser.parse_args(argv)



def run(args, log) -> dict:
    import pgserver
    import sqlalchemy

    from aerec.benchmark.store import Store

    with tempfile.TemporaryDirectory() as folder:
        server = pgserver.get_server(Path(folder) / "pgdata", cleanup_mode="stop")
        base = server.get_uri().replace("postgresql://", "postgresql+psycopg2://")
        with sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT").connect() as connection:
            version = connection.execute(sqlalchemy.text("SELECT version()")).scalar()
            connection.execute(sqlalchemy.text("CREATE DATABASE benchmarks"))
        url = base.replace("/postgres?", "/benchmarks?")
        log(f"server: {version.split(',')[0]}; store {url}")
        command = [sys.executable, "-m", "aerec", "benchmark", "run", str(args.spec), "--store", url, "--json",
                   "--out", str(Path(folder) / "report_server")]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        first = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        store = Store(url)
        while not store.exists() and first.poll() is None:  # the second machine starts once the store is set up
            time.sleep(0.1)
        second = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        outputs = [worker.communicate(timeout=1800) for worker in (first, second)]
        wall = time.perf_counter() - start
        if first.returncode or second.returncode:
            raise SystemExit("a worker failed:\n" + "\n".join(err[-3000:] for _, err in outputs))
        ran = [[match.group(1) for line in err.splitlines() if (match := re.match(r"(\(.*?\)): \{", line))]
               for _, err in outputs]
        claims_left = store.claims()
        with store.engine.connect() as connection:
            trials = dict(connection.execute(sqlalchemy.text(
                "SELECT s.study_name, COUNT(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "GROUP BY s.study_name")).fetchall())
        store.close()
        log(f"two workers on the server: {wall:.1f} s; cells run {[len(r) for r in ran]}")
        sqlite = Path(folder) / "file.sqlite"
        done = subprocess.run([*command[:7], str(sqlite), "--json", "--out", str(Path(folder) / "report_file")],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True)
        server.cleanup()
    summaries = [json.loads(out) for out, _ in outputs]
    every = [key for keys in ran for key in keys]
    return {"spec": str(args.spec.relative_to(REPO_ROOT)), "server": version.split(",")[0], "wall_seconds": wall,
            "cells_per_worker": ran, "cells_run_twice": sorted({k for k in every if every.count(k) > 1}),
            "cells": len(every), "trials_per_study": trials, "claims_left": len(claims_left),
            "workers_agree": without_run_dependent(summaries[0]) == without_run_dependent(summaries[1]),
            "equal_to_a_sqlite_run": (without_run_dependent(summaries[0])
                                      == without_run_dependent(json.loads(done.stdout)))}


def markdown(record: dict) -> str:
    result = record["result"]
    rows = [[f"worker {i + 1}", len(cells), "; ".join(cells)] for i, cells in enumerate(result["cells_per_worker"])]
    return (f"# Two workers sharing one PostgreSQL server\n\nCommand (from the repository root):\n\n```\n"
            f"{record['command']}\n```\n\n`{result['spec']}` on {result['server']}, two `aerec benchmark run` "
            f"processes on one store URL (as two machines would): {result['wall_seconds']:.1f} s.\n\n"
            + markdown_table(["worker", "cells run", "which"], rows)
            + f"\nCells run twice: {result['cells_run_twice'] or 'none'}; {result['cells']} cells in all. Trials per "
            f"study: {result['trials_per_study']}. Claims left: {result['claims_left']}. The two workers printed the "
            f"same summary: {result['workers_agree']}; it equals a one-process run on a SQLite file (apart from "
            f"seconds, memory and the environment): **{result['equal_to_a_sqlite_run']}**.\n\n"
            + environment_lines(record["environment"], record["load_average_at_end"]))


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("AEREC_DATA_DIR", str(REPO_ROOT.parent / "shared" / "data"))
    log, record = start_run(threads=1)
    record["result"] = run(args, log)
    print(finish_run(args.out, "benchmark_postgres", record, markdown, log))


if __name__ == "__main__":
    main()
