"""``aerec benchmark run SPEC`` / ``report STORE`` / ``status STORE``: offline benchmarks from a spec."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(commands) -> None:
    parser = commands.add_parser(
        "benchmark", help="run a benchmark spec (tuning on validation users, several seeds, paired tests)",
        description="Run, report on or inspect a benchmark: a TOML spec of datasets, protocol, seeds, metrics, tuning "
                    "and models (see evaluation/specs/smoke.toml). Results are kept in one store (a SQLite file or a "
                    "database URL); the same "
                    "command again resumes it without recomputing what finished.")
    actions = parser.add_subparsers(dest="action", required=True, parser_class=type(parser))
    run_parser = actions.add_parser("run", help="run (or resume) a spec, then write its report")
    run_parser.add_argument("spec", help="the spec's TOML file")
    run_parser.add_argument("--store", help="the store: a SQLite file (default: the spec's path with .sqlite) or, "
                                            "for workers on several machines, a database URL such as "
                                            "postgresql://user:password@host/benchmarks")
    run_parser.add_argument("--out", help="the report's folder (default: <store>_report)")
    run_parser.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    run_parser.add_argument("--jobs", type=positive_int, default=1,
                            help="worker processes sharing the store, each running whole cells (default 1)")
    run_parser.add_argument("--spec-changed", choices=("refuse", "allow"), default="refuse",
                            help="a store made for another version of the spec: refuse it (default), or allow it "
                                 "(cells whose entries did not change are kept, the others run again)")
    run_parser.add_argument("--quiet", action="store_true", help="no progress bar or per-cell messages on stderr")
    run_parser.set_defaults(run=run)
    report_parser = actions.add_parser("report", help="write the report of a store's finished cells")
    report_parser.add_argument("store")
    report_parser.add_argument("--out", help="the report's folder (default: <store>_report)")
    report_parser.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    report_parser.set_defaults(run=report)
    status_parser = actions.add_parser("status", help="cells done and left in a store")
    status_parser.add_argument("store")
    status_parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    status_parser.set_defaults(run=status)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}; expected an integer >= 1")
    return value


def run(args) -> int:
    from tqdm import tqdm

    from aerec.benchmark import benchmark
    from aerec.benchmark.report import json_safe, markdown
    from aerec.benchmark.runner import expected_keys
    from aerec.benchmark.spec import load_spec_and_table

    spec_path = Path(args.spec)
    store = args.store or spec_path.with_suffix(".sqlite")
    spec, table = load_spec_and_table(spec_path)  # read once: the spec that runs is the one reported
    total = len(expected_keys(spec))
    with tqdm(total=total, unit="cell", file=sys.stderr, disable=args.quiet or None, dynamic_ncols=True) as bar:
        def log(message):
            if not args.quiet:
                bar.write(message, file=sys.stderr)

        summary = benchmark(spec, store, out=args.out, jobs=args.jobs, spec_changed=args.spec_changed, log=log,
                            progress=lambda key: bar.update(1), table=table)
    print(f"wrote {', '.join(summary.pop('paths'))}", file=sys.stderr)
    print(json.dumps(json_safe(summary)) if args.json else markdown(summary))
    return 0


def report(args) -> int:
    from aerec.benchmark import default_report_dir
    from aerec.benchmark.report import json_safe, markdown, summarize, write_report
    from aerec.benchmark.runner import expected_keys, read_environments, read_store
    from aerec.benchmark.spec import SpecError

    store = args.store
    spec, cells = read_store(store)
    missing = [key for key in expected_keys(spec) if key not in cells]
    if missing:
        raise SpecError(f"{store}: {len(missing)} cell(s) not finished (first: {missing[0]}); run the spec again")
    summary = summarize(spec, cells, environments=read_environments(store))
    paths = write_report(summary, Path(args.out) if args.out else default_report_dir(store), cells)
    print(f"wrote {', '.join(map(str, paths))}", file=sys.stderr)
    print(json.dumps(json_safe(summary)) if args.json else markdown(summary))
    return 0


def status(args) -> int:
    import time

    from aerec.benchmark.runner import expected_keys, read_store
    from aerec.benchmark.store import Store

    spec, cells = read_store(args.store)
    store = Store(args.store)
    try:
        claims = {(dataset, seed, label): (worker, at) for dataset, seed, label, worker, at in store.claims()}
    finally:
        store.close()
    expected = expected_keys(spec)
    done = [key for key in expected if key in cells]
    running = [{"cell": list(key), "worker": claims[key][0], "seconds": time.time() - claims[key][1]}
               for key in expected if key in claims and key not in cells]
    spent = sum((cells[key].get("tuning_seconds") or 0.0) + (cells[key].get("final_seconds") or 0.0) for key in done)
    record = {"store": args.store, "spec": spec.name, "cells": len(expected), "done": len(done),
              "running": running, "seconds_spent": spent,
              "left": [list(key) for key in expected if key not in cells and key not in claims]}
    if args.json:
        print(json.dumps(record))
        return 0
    lines = [f"{spec.name}: {len(done)} of {len(expected)} cells done ({spent:.0f} s of tuning and scoring), "
             f"{len(running)} running, {len(record['left'])} left"]
    lines += [f"  running: {'/'.join(map(str, r['cell']))} by {r['worker']} for {r['seconds']:.0f} s" for r in running]
    if record["left"]:
        lines.append(f"  left: {', '.join('/'.join(map(str, key)) for key in record['left'])}")
    print("\n".join(lines))
    return 0
