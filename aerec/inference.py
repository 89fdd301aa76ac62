"""Top-n for every user of a large input, sharded over processes and machines, resumable, as Parquet parts.

``aerec recommend --output OUT_DIR/`` runs a :class:`RecommendJob`; launched by ``torchrun
--nproc-per-node N [--nnodes M ...] -m aerec recommend ...`` every process (rank, from torchrun's
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``) runs its share; without torchrun one process runs all of it,
into the same layout::

    OUT_DIR/job.json                  what the job is: model checksum, input fingerprint, options, ranks, parts
    OUT_DIR/part-<rank>-<k>.parquet   rows user, item, rank, score (the users of one shard of the input)
    OUT_DIR/part-<rank>-<k>.json      that part's record: its users, rows and sha256 (written after the part)
    OUT_DIR/manifest.json             written last by rank 0, once every part is there: the commit point

How a user finds its part. Each id is hashed (:func:`aerec.data.chunks.id_hash`, so the same user
lands in the same part whatever the input's order or file layout), and the hash modulo ``world x
parts_per_rank`` names a bucket; rank ``r`` owns buckets ``r, r + world, r + 2 world, ...``, its
``k``-th bucket being ``part-<r>-<k>``. A rank reads the input once (in bounded chunks, with pyarrow),
keeping its own users' rows in one spill file per bucket (``OUT_DIR/.spill/``, Arrow IPC), then
scores bucket after bucket with the model's streaming top-n (:meth:`Recommender.recommend_batches`):
memory holds one chunk of the input while spilling, then one bucket's histories and one batch of
scores. The number of parts is chosen from the input's rows so that a bucket holds about
``part_interactions`` interactions.

Every part file and record is written to a temporary name and renamed when complete, so a killed job
leaves whole parts only; running the same command again skips the parts whose record and checksum agree
and redoes the rest (a damaged or truncated part is redone, not trusted). A directory holding another
job (another model, input or options, or another number of ranks) is refused by name.

The ranks never wait on each other in a collective: they share nothing but the output directory (on a
shared file system across machines), so a rank that dies cannot hang the others. Rank 0, its own parts
done, waits for the other parts (``wait_seconds``) and writes the manifest; a job with parts missing ends
with :class:`IncompleteJobError` naming them, and the same command finishes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd

from aerec.data.chunks import Table, canonical_ids, id_hash, integer_text, iter_chunks

__all__ = ["IncompleteJobError", "JobMismatchError", "RecommendJob", "history_threshold", "launch_environment"]

FORMAT = "aerec-recommendations"
FORMAT_VERSION = 1
JOB_FILE = "job.json"
MANIFEST_FILE = "manifest.json"
SPILL_DIR = ".spill"
#: Interactions per part by default: a part's histories (a CSR and id maps) take about 15 MB, and a killed job loses
#: at most one part's work per rank.
DEFAULT_PART_INTERACTIONS = 500_000
#: Rows per block of the input in the pass that spills a rank's rows: a block's arrays and their hashes (about
#: 100 bytes a row together) are the largest transient of a job after the model, so they are kept under the
#: batch budget (2^20 rows, the readers' block, raised the peak by about 100 MiB).
SPILL_ROWS = 1 << 16
#: Seconds rank 0 waits for the other ranks' parts by default (``AEREC_JOB_WAIT`` sets it).
DEFAULT_WAIT_SECONDS = 24 * 3600.0


class JobMismatchError(ValueError):
    """The output directory holds the parts of another job (another model, input, options or ranks)."""


class IncompleteJobError(RuntimeError):
    """Some parts are missing when rank 0 stopped waiting (a rank died); the same command finishes them."""


def launch_environment() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment; ``(0, 1, 0)`` without it."""
    values = {}
    for name, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        text = os.environ.get(name, default)
        try:
            values[name] = int(text)
        except ValueError:
            raise ValueError(f"{name}={text!r} in the environment; expected an integer (as torchrun sets it)") from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}; expected 0 <= RANK < WORLD_SIZE "
                         "and LOCAL_RANK >= 0")
    return rank, world, local


def history_threshold(binarize, recorded, all_ones: bool) -> tuple[float | None, str]:
    """The threshold a history's ratings are binarized with, and why: ``binarize`` (a number from ``--binarize``,
    ``"none"`` or None for the default), the threshold ``recorded`` with the model's training data, and whether
    every rating of the input is 1.0 (then it is taken as it is: already likes)."""
    if isinstance(binarize, float):
        return binarize, "--binarize"
    if binarize is None and recorded is not None and not all_ones:
        return float(recorded), "as the model's training data"
    return None, ""


def file_sha256(path: Path) -> str:
    from aerec.state import sha256_of_file

    return sha256_of_file(path)


def write_atomically(path: Path, write) -> None:
    """``write(temporary)`` then fsync and rename onto ``path``: the name shows a whole file or none."""
    temporary = path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}.tmp")
    try:
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path: Path, document: dict) -> None:
    write_atomically(path, lambda temporary: temporary.write_text(json.dumps(document, indent=1, sort_keys=True)))


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``; None if it is missing or unreadable."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


@dataclasses.dataclass
class RecommendJob:
    """One sharded top-n job: ``model`` (loaded from ``model_dir``) over ``table`` into ``out``, this process
    being rank ``rank`` of ``world``."""

    model: object
    model_dir: Path
    table: Table
    out: Path
    n: int = 10
    filter_seen: bool = True
    binarize: float | str | None = None
    recorded_threshold: float | None = None
    duplicates: str = "error"
    memory_budget: int | None = None
    part_interactions: int = DEFAULT_PART_INTERACTIONS
    rank: int = 0
    world: int = 1
    wait_seconds: float = DEFAULT_WAIT_SECONDS
    overwrite: bool = False
    progress: object = print

    def __post_init__(self):
        self.out = Path(self.out)
        self.model_dir = Path(self.model_dir)

    # -- what the job is ------------------------------------------------------------------------------
    def identity(self) -> dict:
        """What makes two runs the same job (the ranks and parts are checked beside it)."""
        return {"model_sha256": file_sha256(self.model_dir / "config.json"),
                "input_sha256": self.table.fingerprint(),
                "options": {"n": self.n, "filter_seen": self.filter_seen, "binarize": self.binarize,
                            "recorded_threshold": self.recorded_threshold, "duplicates": self.duplicates,
                            "columns": self.table.columns}}

    def plan(self, identity: dict) -> dict:
        """This job's ``job.json``: the existing one when it is the same job (ranks included), else a new one
        (a directory of other files was refused before, by :meth:`check_directory`)."""
        existing_path = self.out / JOB_FILE
        existing = read_json(existing_path)
        if existing is None and existing_path.exists():
            raise JobMismatchError(f"{existing_path} is damaged; remove {self.out} (or name another --output) "
                                   "to start the job afresh")
        if existing is not None:
            differences = [name for name, value in identity.items() if existing.get(name) != value]
            if differences and self.overwrite and self.world == 1:
                self.clear()
            elif differences:
                what = {"model_sha256": "another model", "input_sha256": "another input",
                        "options": "other options (--n, --include-seen, --binarize, --duplicates, columns)"}
                raise JobMismatchError(
                    f"--output {self.out} holds the parts of another job ({', '.join(what[d] for d in differences)}"
                    f": its job.json names model sha256 {str(existing.get('model_sha256'))[:12]}..., input sha256 "
                    f"{str(existing.get('input_sha256'))[:12]}...); name another --output, or remove it "
                    f"{'' if self.world > 1 else '(or pass --overwrite) '}to start afresh")
            elif existing.get("world") != self.world:
                raise JobMismatchError(
                    f"--output {self.out} holds a job started with {existing.get('world')} process(es); this run has "
                    f"{self.world}: run it again with {existing.get('world')} (torchrun --nproc-per-node x --nnodes), "
                    "or name another --output")
            else:
                return existing
        rows = self.table.estimated_rows()
        per_rank = max(1, math.ceil(rows / self.part_interactions / self.world))
        job = {"format": FORMAT, "format_version": FORMAT_VERSION, **identity, "world": self.world,
               "parts_per_rank": per_rank, "estimated_rows": rows}
        self.out.mkdir(parents=True, exist_ok=True)
        if read_json(existing_path) is None:  # another rank may have written the same plan meanwhile
            write_json(existing_path, job)
        written = read_json(existing_path)
        if written != job:
            raise JobMismatchError(f"{existing_path} was written by another run meanwhile with another plan; "
                                   "run one job per directory")
        return job

    def clear(self) -> None:
        """Remove an earlier job's files (``--overwrite``, one process only)."""
        for entry in self.out.iterdir():
            if entry.name in (JOB_FILE, MANIFEST_FILE) or (entry.name.startswith("part-") and
                                                          entry.suffix in (".parquet", ".json")):
                entry.unlink()
        shutil.rmtree(self.out / SPILL_DIR, ignore_errors=True)

    def check_directory(self) -> None:
        """Refuse an output that is a file, or a directory holding other files and no job of this kind."""
        if self.out.exists() and not self.out.is_dir():
            raise JobMismatchError(f"--output {self.out} is a file; expected a directory for the job's parts")
        if (self.out.is_dir() and not (self.out / JOB_FILE).exists()
                and any(not entry.name.startswith(".") for entry in self.out.iterdir())):
            raise JobMismatchError(f"--output {self.out} is a directory holding other files and no {JOB_FILE}; "
                                   "expected a new or empty directory, or one of an earlier run of this job")

    # -- the parts ---------------------------------------------------------------------------------------
    def part_path(self, rank: int, k: int) -> Path:
        return self.out / f"part-{rank}-{k}.parquet"

    def record_path(self, rank: int, k: int) -> Path:
        return self.out / f"part-{rank}-{k}.json"

    def part_record(self, rank: int, k: int, job: dict) -> dict | None:
        """The record of a complete part, None when the part is missing, unfinished or damaged."""
        record = read_json(self.record_path(rank, k))
        part = self.part_path(rank, k)
        if record is None or record.get("job") != job_key(job) or not part.is_file():
            return None
        if record.get("bytes") != part.stat().st_size or record.get("sha256") != file_sha256(part):
            return None
        return record

    def run(self) -> dict | None:
        """Do this rank's missing parts; rank 0 then waits for the others and writes the manifest (returned)."""
        identity = self.identity()
        self.check_directory()  # before the lock file: a refused directory is left as it was
        created = not self.out.exists()
        had_plan = (self.out / JOB_FILE).exists()
        try:
            job = self.run_parts(identity)
        except BaseException:
            self.remove_traces(created, had_plan)
            raise
        if self.rank != 0:
            return None
        return self.write_manifest(job)

    def remove_traces(self, created: bool, had_plan: bool) -> None:
        """After a failure before any part was written: remove the plan, spill and lock this run made (and the
        directory, if it made it), so that a refused job (an empty input, unreadable rows) leaves nothing behind."""
        if not self.out.is_dir() or any(self.out.glob("part-*")):
            return
        if not had_plan:
            (self.out / JOB_FILE).unlink(missing_ok=True)
        shutil.rmtree(self.out / SPILL_DIR, ignore_errors=True)
        if created:
            (self.out / f".rank-{self.rank}.lock").unlink(missing_ok=True)
            try:
                self.out.rmdir()
            except OSError:  # another rank's files: theirs to remove
                pass

    def run_parts(self, identity: dict) -> dict:
        """This rank's missing parts, under its lock; returns the job's plan."""
        from aerec.state import directory_lock

        with directory_lock(self.out, name=f".rank-{self.rank}.lock"):
            job = self.plan(identity)
            per_rank = job["parts_per_rank"]
            missing = [k for k in range(per_rank) if self.part_record(self.rank, k, job) is None]
            self.progress(f"rank {self.rank}/{self.world}: {per_rank - len(missing)} of {per_rank} part(s) already "
                          "complete" + (f", {len(missing)} to do" if missing else ""))
            if missing:
                (self.out / MANIFEST_FILE).unlink(missing_ok=True)
                stats = self.spill(job, missing)
                for k in missing:
                    self.score_part(job, k, stats)
            shutil.rmtree(self.spill_dir(), ignore_errors=True)
        self.progress(f"rank {self.rank}/{self.world}: parts done; peak memory {peak_memory_mib():,.0f} MiB")
        return job

    # -- reading the input once, into this rank's buckets -------------------------------------------------
    def spill_dir(self) -> Path:
        return self.out / SPILL_DIR / f"rank-{self.rank}"

    def spill(self, job: dict, parts: list) -> dict:
        """One pass over the input: this rank's rows of ``parts`` into one Arrow file each, and what the whole
        input says (rows, whether every rating is 1.0, whether every id is an integer); a complete spill of an
        earlier run of this job is reused."""
        import pyarrow as pa

        folder = self.spill_dir()
        done = read_json(folder / "done.json")
        if done is not None and done.get("job") == job_key(job) and set(parts) <= set(done.get("parts", ())) and all(
                (folder / f"bucket-{k}.arrow").is_file() for k in parts if k in done.get("written", ())):
            return done["stats"]
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        buckets = self.world * job["parts_per_rank"]
        owned = {self.rank + self.world * k: k for k in parts}
        writers, stats = {}, {"rows": 0, "all_ones": True, "user_integers": True, "item_integers": True}
        started = time.perf_counter()
        try:
            for chunk in iter_chunks(self.table, rows=SPILL_ROWS):
                stats["rows"] += len(chunk["rating"])
                stats["all_ones"] = stats["all_ones"] and bool((chunk["rating"] == 1.0).all())
                for role in ("user", "item"):
                    if stats[f"{role}_integers"] and chunk[role].dtype.kind not in "iu":
                        stats[f"{role}_integers"] = bool(integer_text(chunk[role]).all())
                bucket = (id_hash(chunk["user"]) % np.uint64(buckets)).astype(np.int64)
                mine = np.flatnonzero(np.isin(bucket, list(owned)))
                if not len(mine):
                    continue
                order = mine[np.argsort(bucket[mine], kind="stable")]
                values, starts = np.unique(bucket[order], return_index=True)
                for value, rows in zip(values, np.split(order, starts[1:])):
                    batch = pa.record_batch({"user": pa.array(chunk["user"][rows]),
                                             "item": pa.array(chunk["item"][rows]),
                                             "rating": pa.array(chunk["rating"][rows])})
                    k = owned[int(value)]
                    if k not in writers:
                        writers[k] = (pa.ipc.new_file(str(folder / f"bucket-{k}.arrow"), batch.schema), batch.schema)
                    writer, schema = writers[k]
                    writer.write_batch(batch if batch.schema == schema else batch.cast(schema))
        finally:
            for writer, _ in writers.values():
                writer.close()
        if stats["rows"] == 0:
            raise ValueError(f"{self.table.path} holds no interactions; expected rows of user, item[, rating]")
        write_json(folder / "done.json", {"job": job_key(job), "stats": stats, "parts": sorted(parts),
                                          "written": sorted(writers)})
        self.progress(f"rank {self.rank}/{self.world}: read {stats['rows']:,} interactions of {self.table.path} in "
                      f"{time.perf_counter() - started:.1f} s, {len(parts)} part(s) of them this rank's")
        return stats

    def histories(self, k: int, stats: dict):
        """Part ``k``'s users and their rows, prepared as the single-process reader prepares the whole input;
        None when the part has no users."""
        import pyarrow as pa

        from aerec.data import binarize
        from aerec.data.interactions import Interactions

        path = self.spill_dir() / f"bucket-{k}.arrow"
        if not path.is_file():
            return None
        with pa.memory_map(str(path)) as source:
            frame = pa.ipc.open_file(source).read_all().to_pandas()
        if frame.empty:
            return None
        for role in ("user", "item"):
            frame[role] = canonical_ids(frame[role].to_numpy(), stats[f"{role}_integers"])
        rating = "rating" if self.table.columns["rating"] is not None else None
        users = Interactions.from_pandas(frame, "user", "item", rating, None, self.duplicates)
        threshold, _ = history_threshold(self.binarize, self.recorded_threshold, stats["all_ones"])
        return binarize(users, threshold=threshold) if threshold is not None else users

    def score_part(self, job: dict, k: int, stats: dict) -> dict:
        """Score part ``k``'s users and write the part and its record."""
        from aerec.data.catalogue import align_to_catalogue, recommendations_frame

        started = time.perf_counter()
        users = self.histories(k, stats)
        item_ids = np.asarray(self.model.item_ids_)
        frames = []
        if users is None:
            user_count = interactions = unknown = 0
        else:
            rows, unknown = align_to_catalogue(users, item_ids, warn=False)
            user_count, interactions = users.n_users, users.nnz
            # the rows with their users' ids: a conditional model finds each user's side features by id
            batches = self.model.recommend_batches(rows, n=self.n, filter_already_liked_items=self.filter_seen,
                                                   memory_budget=self.memory_budget)
            user_ids = np.asarray(users.user_ids)
            frames = (recommendations_frame(user_ids[np.asarray(index)], ids, scores, item_ids)
                      for index, ids, scores in batches)
        written = write_part(self.part_path(self.rank, k), frames, item_ids, user_ids_like=(
            np.asarray(users.user_ids[:0]) if users is not None else None))
        part = self.part_path(self.rank, k)
        record = {"job": job_key(job), "rank": self.rank, "k": k, "bucket": self.rank + self.world * k,
                  "users": int(user_count), "interactions": int(interactions), "unknown_interactions": int(unknown),
                  "rows": written, "bytes": part.stat().st_size, "sha256": file_sha256(part)}
        write_json(self.record_path(self.rank, k), record)
        (self.spill_dir() / f"bucket-{k}.arrow").unlink(missing_ok=True)
        self.progress(f"rank {self.rank}/{self.world}: {part.name}: {user_count:,} users, {written:,} rows in "
                      f"{time.perf_counter() - started:.1f} s" + (f" ({unknown:,} interaction(s) with items the model "
                                                                 "does not know ignored)" if unknown else ""))
        return record

    # -- the commit point -----------------------------------------------------------------------------------
    def write_manifest(self, job: dict) -> dict:
        """Wait for every part, then write ``manifest.json``; :class:`IncompleteJobError` names those missing."""
        deadline = time.monotonic() + self.wait_seconds
        expected = [(rank, k) for rank in range(self.world) for k in range(job["parts_per_rank"])]
        records = {}
        announced = False
        while True:
            for key in expected:
                if key not in records:
                    record = self.part_record(*key, job)
                    if record is not None:
                        records[key] = record
            missing = [key for key in expected if key not in records]
            if not missing:
                break
            if time.monotonic() >= deadline:
                names = ", ".join(f"part-{rank}-{k} (rank {rank})" for rank, k in missing[:10])
                raise IncompleteJobError(
                    f"{len(missing)} of {len(expected)} part(s) missing in {self.out} after waiting "
                    f"{self.wait_seconds:g} s: {names}{' ...' if len(missing) > 10 else ''}; run the same command "
                    "again to finish them (complete parts are kept)")
            if not announced:
                self.progress(f"rank 0: waiting for {len(missing)} part(s) of the other rank(s)")
                announced = True
            time.sleep(0.5)
        parts = [{"file": self.part_path(rank, k).name, **{name: records[(rank, k)][name] for name in (
            "rank", "k", "users", "interactions", "unknown_interactions", "rows", "bytes", "sha256")}}
            for rank, k in expected]
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "job": job_key(job),
                    "model": {"path": str(self.model_dir), "sha256": job["model_sha256"]},
                    "input": {"path": str(self.table.path), "sha256": job["input_sha256"],
                              "files": [str(file) for file in self.table.files]},
                    "options": job["options"], "world": self.world, "parts": parts,
                    "users": sum(part["users"] for part in parts), "rows": sum(part["rows"] for part in parts),
                    "interactions": sum(part["interactions"] for part in parts),
                    "unknown_interactions": sum(part["unknown_interactions"] for part in parts)}
        write_json(self.out / MANIFEST_FILE, manifest)
        try:
            (self.out / SPILL_DIR).rmdir()  # the ranks' spills are gone once their parts are done
        except OSError:
            pass
        return manifest


def peak_memory_mib() -> float:
    """This process's peak resident memory so far, in MiB: Linux's ``VmHWM`` (this program's own, unlike
    ``ru_maxrss``, which keeps the peak of the process it was forked from across ``exec``), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except (OSError, ValueError, IndexError):
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def job_key(job: dict) -> str:
    """A short digest of a job's plan, stamped on its parts' records and spills."""
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:16]


def write_part(path: Path, frames, item_ids: np.ndarray, user_ids_like) -> int:
    """Write the recommendation frames as one Parquet file (atomically); returns its rows. A part without users
    holds the columns only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from aerec.data.catalogue import recommendations_frame

    written = 0

    def write(temporary: Path) -> None:
        nonlocal written
        writer = None
        try:
            for frame in frames:
                table = pa.Table.from_pandas(frame, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(temporary, table.schema)
                writer.write_table(table.cast(writer.schema))
                written += len(frame)
            if writer is None:
                users = user_ids_like if user_ids_like is not None else np.empty(0, dtype=object)
                empty = recommendations_frame(users, np.empty((0, 1), np.int64), np.empty((0, 1)), item_ids)
                pq.write_table(pa.Table.from_pandas(empty, preserve_index=False), temporary)
        finally:
            if writer is not None:
                writer.close()

    write_atomically(path, write)
    return written


def read_recommendations(out) -> pd.DataFrame:
    """A finished job's parts as one frame (sorted by user and rank); refuses a directory without a manifest
    or whose parts do not match it."""
    out = Path(out)
    manifest = read_json(out / MANIFEST_FILE)
    if manifest is None or manifest.get("format") != FORMAT:
        raise ValueError(f"{out} has no {MANIFEST_FILE} of a finished job; run the job (again) to finish it")
    frames = []
    for part in manifest["parts"]:
        path = out / part["file"]
        if not path.is_file() or file_sha256(path) != part["sha256"]:
            raise ValueError(f"{path} is missing or does not match the manifest; run the job again to redo it")
        frames.append(pd.read_parquet(path))
    frame = pd.concat(frames, ignore_index=True)
    return frame.sort_values(["user", "rank"], kind="stable", ignore_index=True)
