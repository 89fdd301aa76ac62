"""The strong tables tuned with TPE modelling (``startup_trials = 4``) beside the same tables whose 10 trials were all
TPE's random start-up (Optuna's default ``n_startup_trials`` is 10: a 10-trial budget was seeded random search).

Reads the current reports (``evaluation/results/strong_<dataset>_report/report.json``) and those of the
commit before the rerun (``git show f76511d:...``, the random start-up), and prints per dataset and model
the test NDCG@100 of both (mean ± sd over the 5 split seeds) and the difference of the means.

    .venv/bin/python evaluation/compare_tuning_startup.py [--before f76511d]
"""

from __future__ import annotations

import argparse
import json
import subprocess

from _common import REPO_ROOT, RESULTS_DIR, markdown_table

DATASETS = {"ml-100k": "strong_ml_100k", "ml-latest-small": "strong_ml_latest_small"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="f76511d", help="the commit whose reports were tuned by random start-up")
    args = parser.parse_args()
    text = ["# TPE modelling against TPE's random start-up, 10 trials per cell\n\n",
            f"Made by `.venv/bin/python evaluation/compare_tuning_startup.py --before {args.before}`: test NDCG@100, "
            "mean ± sd over the 5 split seeds. *random*: the reports of commit "
            f"{args.before} (Optuna's TPE with its default 10 start-up trials, all random in a 10-trial budget); "
            "*TPE*: the current reports (`startup_trials = 4`: 4 random trials, then 6 modelled).\n"]
    for dataset, name in DATASETS.items():
        now = json.loads((RESULTS_DIR / f"{name}_report" / "report.json").read_text())
        old_report = f"{args.before}:evaluation/results/{name}_report/report.json"
        before = json.loads(subprocess.run(["git", "show", old_report], cwd=REPO_ROOT, capture_output=True, text=True,
                                           check=True).stdout)
        rows, differences = [], []
        for label, model in now["datasets"][dataset]["models"].items():
            old = before["datasets"][dataset]["models"].get(label)
            if old is None:
                continue
            new, old = model["metrics"]["ndcg@100"], old["metrics"]["ndcg@100"]
            if model["searched"]:  # popularity, with nothing to tune, is left out of the mean
                differences.append(new["mean"] - old["mean"])
            rows.append([label, f"{old['mean']:.4f} ± {old['sd']:.4f}", f"{new['mean']:.4f} ± {new['sd']:.4f}",
                         f"{new['mean'] - old['mean']:+.4f}"])
        text += [f"\n## {dataset}\n\n", markdown_table(["model", "random start-up", "TPE", "TPE - random"], rows),
                 f"\nMean difference over the {len(differences)} tuned models: "
                 f"{sum(differences) / len(differences):+.4f}.\n"]
    out = RESULTS_DIR / "tuning_startup_comparison.md"
    out.write_text("".join(text))
    print("".join(text))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
