"""``aerec datasets``: the known datasets, where their local copies are, and whether they verify."""

from __future__ import annotations

import json

from aerec.data import DATASETS
from aerec.data.datasets import ChecksumError, find_dataset_dir, verify_file


def register(commands) -> None:
    parser = commands.add_parser(
        "datasets", help="list the known datasets and verify the local copies",
        description="List the datasets aerec knows, find each one's local copy (--data-dir, $AEREC_DATA_DIR, and "
                    "for ml-latest-small the copy shipped with aerec) and check its files against the published "
                    "checksums. Nothing is downloaded. Exit code 1 when a local file fails its checksum.")
    parser.add_argument("--data-dir", help="parent folder of the dataset folders (default: $AEREC_DATA_DIR)")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    parser.set_defaults(run=run)


def run(args) -> int:
    rows = [dataset_status(name, args.data_dir) for name in DATASETS]
    if args.json:
        print(json.dumps({"datasets": rows}))
    else:
        print(f"{'dataset':<16} {'status':<34} where / how to get it")
        for row in rows:
            where = row["path"] or row["url"]
            print(f"{row['name']:<16} {row['status']:<34} {where}")
            for problem in row["problems"]:
                print(f"{'':<16} {'':<34} {problem}")
    return 1 if any(row["status"] == "checksum mismatch" for row in rows) else 0


def incomplete_folder(dataset, data_dir):
    """A folder of the dataset under the roots ``find_dataset_dir`` searches that lacks the ratings file, or None."""
    import os
    from pathlib import Path

    roots = [Path(data_dir)] if data_dir is not None else []
    if data_dir is None and os.environ.get("AEREC_DATA_DIR"):
        roots.append(Path(os.environ["AEREC_DATA_DIR"]))
    return next((root / folder for root in roots for folder in dataset.folders if (root / folder).is_dir()), None)


def dataset_status(name: str, data_dir) -> dict:
    """One dataset: found or not, each file's check ("verified", "no checksum known" or a mismatch)."""
    dataset = DATASETS[name]
    row = {"name": name, "url": dataset.url, "shipped": dataset.redistributable, "path": None, "files": {},
           "problems": []}
    try:
        folder = find_dataset_dir(name, data_dir)
    except FileNotFoundError:
        partial = incomplete_folder(dataset, data_dir)
        if partial is not None:  # the folder is there, its ratings file is not (ML-1M's movies.dat alone, say)
            return {**row, "path": str(partial), "status": f"incomplete ({dataset.ratings_file} missing)",
                    "problems": [f"{partial} has no {dataset.ratings_file}; download {dataset.url} and unzip it there"]}
        return {**row, "status": "not found"}
    row["path"] = str(folder)
    for file_name in (dataset.ratings_file, dataset.titles_file):
        path = folder / file_name
        if not path.is_file():
            row["files"][file_name] = "missing"
            continue
        try:
            row["files"][file_name] = verify_file(path)
        except ChecksumError as exc:
            row["files"][file_name] = "checksum mismatch"
            row["problems"].append(" ".join(str(exc).split()))
    states = set(row["files"].values())
    status = ("checksum mismatch" if "checksum mismatch" in states else
              "verified" if states == {"verified"} else
              "found, partly verified" if "verified" in states else "found, no checksum")
    if "missing" in states and status != "checksum mismatch":
        status += " (titles missing)" if row["files"].get(dataset.ratings_file) != "missing" else ""
    return {**row, "status": status}
