"""What made a result: package versions, aerec's git commit, the machine and its threads.

Kept by the benchmark store for every worker that ran (``aerec_runs``) and written in
the report, so that a table can be traced to exactly what produced it; the evaluation
scripts write the same record into their results files.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

__all__ = ["environment"]

PACKAGES = ("torch", "numpy", "scipy", "pandas", "optuna", "pyarrow", "implicit", "safetensors")
CHECKOUT = Path(__file__).resolve().parents[2]


def environment() -> dict:
    """Python, aerec and its libraries' versions, aerec's git commit (when run from a checkout), the machine."""
    import torch

    from aerec._version import __version__

    record = {"aerec": __version__, "python": platform.python_version(), "platform": platform.platform(),
              "machine": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "cuda": torch.cuda.is_available(), "host": platform.node()}
    for package in PACKAGES:
        try:
            record[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            record[package] = None
    record["git_commit"] = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "aerec")  # the library's code, not results
    record["git_dirty_files"] = None if dirty is None else dirty.splitlines()
    return record


def cpu_model() -> str:
    """The processor's name (Linux: /proc/cpuinfo), else what :mod:`platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git(*args: str) -> str | None:
    """A git command's output in aerec's checkout; None for an installed package or without git."""
    if not (CHECKOUT / ".git").exists():
        return None
    try:
        return subprocess.run(["git", *args], cwd=CHECKOUT, capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
