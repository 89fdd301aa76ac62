"""Hostile input (issue 8): the fuzzing properties of tests/test_fuzzing.py at ten times the test suite's examples.

Runs the ``test_fuzz_*`` properties (the readers, ``Interactions.from_pandas``,
``aerec.load`` on damaged model directories, and the ``aerec`` command line)
with ``AEREC_FUZZ_SCALE`` set to ``--scale`` and a fixed hypothesis seed, and
writes how many cases each target saw, how each ended (succeeded, refused with
which error, exit code) and the most frequent kinds of refusal.

Run from the repository root:

    AEREC_DATA_DIR=/work/shared/data .venv/bin/python evaluation/fuzz_inputs.py
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
import time

from _common import REPO_ROOT, add_output_args, environment_lines, finish_run, markdown_table, start_run

TEST_FILE = REPO_ROOT / "tests" / "test_fuzzing.py"
TOP_REASONS = 8  # in the markdown; the JSON keeps KEPT_REASONS per target
KEPT_REASONS = 30


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=10.0,
                        help="multiplies every property's examples in the default profile (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (default: %(default)s)")
    add_output_args(parser)
    return parser.parse_args(argv)


class TestTimes:
    """A pytest plugin that keeps each test's outcome and duration."""

    def __init__(self):
        self.tests: list[dict] = []

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            self.tests.append({"test": report.nodeid.split("::")[-1], "phase": report.when, "outcome": report.outcome,
                               "seconds": report.duration,
                               "failure": str(report.longrepr)[-3000:] if report.failed else None})


def run_properties(scale: float, seed: int) -> tuple[int, list[dict], object]:
    """pytest on the fuzz properties at ``scale``; returns its exit code, the tests, and the test module (its tallies)."""
    import pytest

    os.environ["AEREC_FUZZ_SCALE"] = str(scale)
    times = TestTimes()
    with contextlib.redirect_stdout(sys.stderr):  # pytest's report is progress; stdout keeps the table
        code = pytest.main([str(TEST_FILE), "-q", "-k", "test_fuzz_", "-p", "no:cacheprovider",
                            f"--hypothesis-seed={seed}"], plugins=[times])
    return int(code), times.tests, sys.modules["tests.test_fuzzing"]


def summarise(module) -> tuple[list[dict], list[dict]]:
    """Per target: cases and outcomes; and the most frequent kinds of refusal."""
    outcomes = collections.defaultdict(dict)
    for (target, outcome), n in module.TALLY.items():
        outcomes[target][outcome] = n
    targets = []
    for target, counts in sorted(outcomes.items()):
        after_load = {k: v for k, v in counts.items() if k.startswith("loaded;")}  # a second look, not extra cases
        cases = sum(n for k, n in counts.items() if k not in after_load)
        targets.append({"target": target, "cases": cases, "outcomes": dict(sorted(counts.items())),
                        "first_messages": {k: module.MESSAGES.get((target, k), "") for k in sorted(counts)}})
    reasons = collections.defaultdict(list)
    for (target, reason), n in module.REASONS.items():
        reasons[target].append({"reason": reason, "cases": n})
    return targets, [{"target": target, "kinds": len(found),
                      "reasons": sorted(found, key=lambda r: -r["cases"])[:KEPT_REASONS]}
                     for target, found in sorted(reasons.items())]


def markdown(record: dict) -> str:
    total = sum(t["cases"] for t in record["targets"])
    failed = [t for t in record["tests"] if t["outcome"] != "passed"]
    verdict = ("every case either succeeded or was refused cleanly (a ValueError raised by aerec with a message; "
               "for the CLI exit code 0 or 2 with one error line and no partial output)" if not failed and
               record["pytest_exit_code"] == 0 else
               f"{len(failed)} propert(y/ies) FAILED (pytest exit code {record['pytest_exit_code']}); see the JSON")
    target_rows = [[t["target"], f"{t['cases']:,}", "; ".join(f"{k}: {v:,}" for k, v in t["outcomes"].items())]
                   for t in record["targets"]]
    test_rows = [[t["test"], f"{record['examples'].get(t['test'].removeprefix('test_fuzz_').split('[')[0], '')}"
                  + (" (a share)" if "[" in t["test"] else ""), t["outcome"], f"{t['seconds']:.1f}"]
                 for t in record["tests"]]
    reason_lines = []
    for entry in record["reasons"]:
        reason_lines.append(f"\n**{entry['target']}** ({entry['kinds']:,} kinds of message)\n")
        reason_lines += [f"- {r['cases']:,} × {r['reason']}" for r in entry["reasons"][:TOP_REASONS]]
    return f"""# Fuzzing hostile input (issue 8), large profile

Command (from the repository root, total {record['runtime_seconds']:.0f} s):

```
{record['command']}
```

The properties of `tests/test_fuzzing.py` (`test_fuzz_*`) at {record['scale']:g} times the default profile's examples,
hypothesis seed {record['seed']}: {total:,} generated cases in all. Result: {verdict}.

The property: a call succeeds (and what it returns keeps the data contract: finite float32 ratings > 0, canonical
CSR, int64 times within the given ones) or raises a `ValueError` (`StateFileError`, `ChecksumError`, `CliError`
included) raised by aerec itself with a message; the CLI exits 0 or 2 (`datasets`: 1 on a checksum mismatch) with
exactly one `aerec <command>: error:` line, last on stderr, no temporary file left, and nothing written when it
refuses. A model that loads is also asked for one user's top item: `loaded; recommend ...` counts those (the same
cases again, a look past `aerec.load`'s contract).

## Cases per target

{markdown_table(["target", "cases", "outcomes"], target_rows)}
## Properties

{markdown_table(["property", "examples asked", "outcome", "seconds"], test_rows)}
("examples asked" is the default profile's count times the scale; hypothesis may run a few more while it
explores, and the tallies above count what ran.)

## Most frequent refusals

Values, paths and numbers blanked (…, PATH, N).
{chr(10).join(reason_lines)}

{environment_lines(record['environment'], record['load_average_at_end'])}"""


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.scale <= 0:
        raise SystemExit(f"--scale={args.scale}; expected a number > 0")
    log, record = start_run(threads=1)
    log(f"fuzzing at {args.scale:g}x the default profile, hypothesis seed {args.seed}")
    started = time.perf_counter()
    code, tests, module = run_properties(args.scale, args.seed)
    targets, reasons = summarise(module)
    record |= {"scale": args.scale, "seed": args.seed, "pytest_exit_code": code, "fuzz_seconds": time.perf_counter() - started,
               "examples": {name: round(n * args.scale) for name, n in module.EXAMPLES.items()},
               "tests": tests, "targets": targets, "reasons": reasons}
    log(f"{sum(t['cases'] for t in targets):,} cases, pytest exit code {code}")
    text = finish_run(args.out, "fuzz_inputs", record, markdown, log)
    sys.stdout.write(text.split("## Properties")[0])
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
