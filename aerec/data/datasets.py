"""Known datasets: where their files live, their format, and their checksums.

Checksums come from the GroupLens files as distributed (see data/README.md).
Where only a git blob id is known (ML-1M's ratings.dat) that is checked instead.
Files whose checksum is unknown (ML-10M, ML-20M, ML-25M) are read unverified,
and :func:`verify_file` says so.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class Dataset:
    """A MovieLens release: folder names, its ratings file and how to read it."""

    name: str
    folders: tuple[str, ...]
    ratings_file: str
    format: str  # "u.data", "dat" or "csv"
    titles_file: str
    url: str
    redistributable: bool
    sha256: dict[str, str] = field(default_factory=dict)
    git_blob: dict[str, str] = field(default_factory=dict)


DATASETS: dict[str, Dataset] = {
    "ml-100k": Dataset(
        "ml-100k", ("ml-100k",), "u.data", "u.data", "u.item",
        "https://files.grouplens.org/datasets/movielens/ml-100k.zip", False,
        sha256={
            "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
            "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
        },
    ),
    "ml-1m": Dataset(
        "ml-1m", ("ml-1m",), "ratings.dat", "dat", "movies.dat",
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip", False,
        sha256={"movies.dat": "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9"},
        git_blob={"ratings.dat": "77a7c4b150f588c23bb9e1f068aa996c0b413695"},
    ),
    "ml-10m": Dataset(
        "ml-10m", ("ml-10M100K", "ml-10m"), "ratings.dat", "dat", "movies.dat",
        "https://files.grouplens.org/datasets/movielens/ml-10m.zip", False,
    ),
    "ml-20m": Dataset(
        "ml-20m", ("ml-20m",), "ratings.csv", "csv", "movies.csv",
        "https://files.grouplens.org/datasets/movielens/ml-20m.zip", False,
    ),
    "ml-25m": Dataset(
        "ml-25m", ("ml-25m",), "ratings.csv", "csv", "movies.csv",
        "https://files.grouplens.org/datasets/movielens/ml-25m.zip", False,
    ),
    "ml-latest-small": Dataset(
        "ml-latest-small", ("ml-latest-small",), "ratings.csv", "csv", "movies.csv",
        "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip", True,
        sha256={
            "ratings.csv": "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
            "movies.csv": "5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07",
        },
    ),
}

DEFAULT_DATASET = "ml-latest-small"

# Validation and test users each under strong generalization: the sizes for the small sets, the
# paper's 10,000 for ML-20M (and ML-25M); other data use 10% of the users.
STRONG_N_HELDOUT = {"ml-100k": 100, "ml-latest-small": 60, "ml-1m": 600, "ml-10m": 7_000, "ml-20m": 10_000,
                    "ml-25m": 10_000}


class ChecksumError(ValueError):
    """A dataset file does not have the checksum of the published file."""


def bundled_dir() -> Path:
    """The folder of datasets shipped inside the aerec package."""
    return Path(str(resources.files("aerec._bundled")))


def find_dataset_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Locate the folder of a known dataset.

    Looks in ``data_dir``, else ``$AEREC_DATA_DIR``; ml-latest-small falls back
    to the copy shipped with aerec. Nothing is downloaded.
    """
    dataset = get_dataset(name)
    roots = [Path(data_dir)] if data_dir is not None else []
    if data_dir is None and os.environ.get("AEREC_DATA_DIR"):
        roots.append(Path(os.environ["AEREC_DATA_DIR"]))
    if dataset.redistributable and data_dir is None:
        roots.append(bundled_dir())
    for root in roots:
        for folder in dataset.folders:
            if (root / folder / dataset.ratings_file).is_file():
                return root / folder
    looked = ", ".join(str(r / f) for r in roots for f in dataset.folders) or "nowhere (no data_dir and AEREC_DATA_DIR is unset)"
    raise FileNotFoundError(
        f"dataset {name!r} not found: looked for {dataset.ratings_file} in {looked}. "
        f"Download {dataset.url}, unzip it and pass data_dir= (or set AEREC_DATA_DIR) to its parent folder"
    )


def get_dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)} or a path to a ratings file")
    return DATASETS[name]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_blob_of(path: Path) -> str:
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def known_checksum(path: Path) -> tuple[str, str] | None:
    """(kind, expected) for a file of a known dataset, matched by folder and file name."""
    for dataset in DATASETS.values():
        if path.parent.name in dataset.folders:
            if path.name in dataset.sha256:
                return "sha256", dataset.sha256[path.name]
            if path.name in dataset.git_blob:
                return "git-blob", dataset.git_blob[path.name]
    return None


def verify_file(path: str | os.PathLike) -> str:
    """Check a dataset file against its published checksum.

    Returns "verified" or "no checksum known"; raises :class:`ChecksumError`
    naming the file, the expected and the actual value on a mismatch.
    """
    path = Path(path)
    known = known_checksum(path)
    if known is None:
        return "no checksum known"
    kind, expected = known
    actual = sha256_of(path) if kind == "sha256" else git_blob_of(path)
    if actual != expected:
        raise ChecksumError(
            f"{path} has {kind} {actual}, expected {expected} (the published file); it may be truncated, "
            f"re-encoded (line endings) or another release. Pass verify=False to read it anyway"
        )
    return "verified"
