"""Every numeric hyper-parameter of every registered model, set in a saved model's config.json to an extreme value,
then ``aerec.load`` and ``recommend`` in a child process held to a memory cap and a time limit.

Issue 19, item 4: a config.json is input like any other; a value the constraints allow must load and score within
bounded time and memory, and one they do not must be refused with a sentence. Each case ends as

    refused   the load raised a StateFileError / ValueError naming the value (what we want for extremes)
    ok        loaded and scored 3 users within the limits (the value does no harm at inference)
    FAILED    a traceback of another kind, a time-out, or the memory cap hit

    .venv/bin/python evaluation/hyperparameter_sweep.py [--seconds 20] [--memory-gib 3]

exits 1 when any case FAILED.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXTREMES = {int: [2**31, 10**12, 2**63 - 1], float: [1e300, 1e-300]}

CASE = """
import json, sys, warnings
import numpy as np
import aerec
from aerec.state import StateFileError
warnings.simplefilter("ignore")
try:
    model = aerec.load(sys.argv[1])
    rng = np.random.default_rng(0)
    import scipy.sparse as sp
    rows = sp.random(3, model.n_items_, density=0.2, format="csr", random_state=0, dtype=np.float32)
    rows.data[:] = 1
    top = model.recommend(rows, n=5)
    print(json.dumps({"outcome": "ok"}))
except (StateFileError, ValueError) as exc:
    print(json.dumps({"outcome": "refused", "message": " ".join(str(exc).split())[:160]}))
"""


def fitted_models(folder: Path) -> dict:
    """Each registered model fitted briefly on small random data (ratings for rating models), saved."""
    import numpy as np
    import scipy.sparse as sp

    import aerec
    from aerec.models import MODELS, make_model

    rng = np.random.default_rng(0)
    dense = (rng.random((60, 40)) < 0.2).astype(np.float32)
    dense[np.arange(60), rng.integers(0, 40, 60)] = 1
    clicks = sp.csr_matrix(dense)
    ratings = clicks.copy()
    ratings.data = rng.integers(1, 6, ratings.nnz).astype(np.float32)
    small = {"epochs": 1, "hidden": 8, "latent": 4, "factors": 4, "iterations": 2}
    saved = {}
    for name in MODELS:
        model = make_model(name)
        params = {key: value for key, value in small.items() if key in model.get_params()}
        if name == "autoencoder":
            params["hidden"] = (8,)
        model = make_model(name, **params)
        data = ratings if name in ("autorec", "bias") else clicks
        saved[name] = aerec.save(model.fit(data), folder / name)
    return saved


def numeric_params(config: dict) -> dict:
    params = config["state"]["params"]
    return {key: type(value) for key, value in params.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def run_case(saved: Path, key: str, value, folder: Path, seconds: float, memory: int) -> dict:
    import shutil

    case = folder / f"{saved.name}-{key}-{value:g}"
    shutil.copytree(saved, case)
    config = json.loads((case / "config.json").read_text())
    config["state"]["params"][key] = value
    (case / "config.json").write_text(json.dumps(config))

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, "-c", CASE, str(case)], capture_output=True, text=True, env=env,
                              timeout=seconds, preexec_fn=cap)
    except subprocess.TimeoutExpired:
        return {"outcome": "FAILED", "message": f"still running after {seconds:g} s"}
    finally:
        shutil.rmtree(case, ignore_errors=True)
    if done.returncode == 0 and done.stdout.strip():
        return json.loads(done.stdout.strip().splitlines()[-1])
    last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    return {"outcome": "FAILED", "message": f"exit {done.returncode}: {last[:160]}"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--memory-gib", type=float, default=3.0)
    parser.add_argument("--models", default=None, help="comma-separated registered names (default: all)")
    args = parser.parse_args(argv)
    memory = int(args.memory_gib * 2**30)
    failed = 0
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        saved = fitted_models(folder)
        names = args.models.split(",") if args.models else list(saved)
        for name in names:
            config = json.loads((saved[name] / "config.json").read_text())
            for key, kind in numeric_params(config).items():
                for value in EXTREMES[kind]:
                    result = run_case(saved[name], key, value, folder, args.seconds, memory)
                    failed += result["outcome"] == "FAILED"
                    print(f"{name:12s} {key:22s} {value:<22g} {result['outcome']:8s} {result.get('message', '')}",
                          flush=True)
    print(f"{failed} case(s) FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
