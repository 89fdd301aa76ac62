"""Shared fixtures: where the real MovieLens files are, and small synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under ``pytest -n 2`` each worker computes on one thread, so the two workers use the two cores
    # instead of four threads contending for them (which slows every test several times).
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = "1"

import numpy as np
import pytest
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    """AEREC_DATA_DIR, else ../shared/data beside the checkout (as CI lays it out)."""
    candidates = [os.environ.get("AEREC_DATA_DIR"), REPO.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "ml-100k" / "u.data").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    found = real_data_dir()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("AEREC_DATA_DIR does not hold ml-100k/u.data: real-data tests must run in CI")
        pytest.skip("real MovieLens data not found (set AEREC_DATA_DIR)")
    return found


@pytest.fixture(scope="session")
def ml100k(data_dir):
    from aerec.data import load_movielens

    return load_movielens("ml-100k", data_dir=data_dir)


@pytest.fixture(scope="session")
def ml_latest_small():
    from aerec.data import load_movielens

    return load_movielens("ml-latest-small", data_dir=REPO / "data")


def random_implicit_csr(n_users=60, n_items=40, density=0.15, seed=0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < density).astype(np.float32)
    dense[np.arange(n_users), rng.integers(0, n_items, n_users)] = 1.0  # nobody empty
    return sp.csr_matrix(dense)
