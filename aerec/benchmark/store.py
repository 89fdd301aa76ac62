"""A benchmark's results store: Optuna's RDB storage and aerec's tables in one database.

The database is a SQLite file (a path: the default, one file to keep or send) or, for
workers on several machines, a server given by an SQLAlchemy URL such as
``postgresql://user:password@host/benchmarks`` (any database Optuna's RDB storage takes;
its driver installed). aerec's tables beside Optuna's:

- ``aerec_spec``: the spec the store was made for (its fingerprint and, when it came
  from a file or a dict, its table, so that a report needs only the store);
- ``aerec_cells``: the finished cells, one JSON record each;
- ``aerec_claims``: which worker is running which cell (a cell is claimed before it runs,
  so no cell runs twice; a claim left by a killed worker of the same machine is taken over;
  one left by another machine's killed worker is released by deleting its row);
- ``aerec_runs``: every worker's start and environment.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import socket
import time
from pathlib import Path

from aerec.benchmark.spec import SpecError
from aerec.state import process_alive

__all__ = ["Store", "is_url"]

TABLES = (
    "CREATE TABLE IF NOT EXISTS aerec_spec (key VARCHAR(64) PRIMARY KEY, value TEXT)",
    "CREATE TABLE IF NOT EXISTS aerec_cells (dataset VARCHAR(255), seed BIGINT, label VARCHAR(255), record TEXT, "
    "PRIMARY KEY (dataset, seed, label))",
    "CREATE TABLE IF NOT EXISTS aerec_claims (dataset VARCHAR(255), seed BIGINT, label VARCHAR(255), "
    "worker VARCHAR(255), claimed_at FLOAT, PRIMARY KEY (dataset, seed, label))",
    "CREATE TABLE IF NOT EXISTS aerec_runs (worker VARCHAR(255), started FLOAT, environment TEXT)",
)
KEY = "dataset = :dataset AND seed = :seed AND label = :label"


def is_url(location) -> bool:
    return "://" in str(location)


def check_store_file(path: Path) -> None:
    """A SQLite store's path: a SQLite file, or a name to create one under in an existing folder."""
    if path.is_dir():
        raise SpecError(f"store {path} is a folder; expected a SQLite file's path (created if missing) or a "
                        "database URL")
    if not path.parent.is_dir():
        raise SpecError(f"store {path}: folder {path.parent} does not exist")
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as handle:
            if handle.read(16) != b"SQLite format 3\x00":
                raise SpecError(f"store {path} is not a SQLite file (is it the spec?); expected a store made by "
                                "aerec benchmark run, or a new name")


def key_params(key) -> dict:
    return {"dataset": key[0], "seed": int(key[1]), "label": key[2]}


class Store:
    """One store, by path (SQLite) or URL; nothing is created until :meth:`create` is called."""

    def __init__(self, location):
        import sqlalchemy

        self.location = str(location)
        self.path = None if is_url(location) else Path(location)
        if self.path is not None:
            check_store_file(self.path)
        self.url = self.location if self.path is None else f"sqlite:///{self.path}"
        sqlite = self.url.startswith("sqlite")
        try:
            self.engine = sqlalchemy.create_engine(self.url, connect_args={"timeout": 60} if sqlite else {})
        except (ImportError, sqlalchemy.exc.ArgumentError) as error:  # a bad URL, or its driver not installed
            raise SpecError(f"store {self.location}: {error}; expected a SQLite file's path or a database URL "
                            "such as postgresql+psycopg2://user@host/db (with its driver installed)") from None

    def __repr__(self) -> str:
        return f"Store({self.location!r})"

    def exists(self) -> bool:
        """Whether the store holds aerec's tables (for a file: whether the file is there at all)."""
        import sqlalchemy

        if self.path is not None and not self.path.is_file():
            return False
        return sqlalchemy.inspect(self.engine).has_table("aerec_spec")

    def close(self) -> None:
        self.engine.dispose()

    # -- set-up ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def setup_lock(self):
        """One worker at a time sets a SQLite store up (Optuna's schema too): an fcntl lock on ``<path>.lock``.

        A server database has no such file: start one worker first, the others once it has begun.
        """
        if self.path is None:
            yield
            return
        with open(f"{self.path}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def create(self) -> None:
        from sqlalchemy import text

        with self.engine.begin() as connection:
            for statement in TABLES:
                connection.execute(text(statement))

    def optuna_storage(self):
        import optuna

        kwargs = {"connect_args": {"timeout": 60}} if self.url.startswith("sqlite") else {}
        return optuna.storages.RDBStorage(self.url, engine_kwargs=kwargs)

    # -- the spec ----------------------------------------------------------------------------------
    def get_spec(self, key: str) -> str | None:
        from sqlalchemy import text

        with self.engine.connect() as connection:
            row = connection.execute(text("SELECT value FROM aerec_spec WHERE key = :key"), {"key": key}).fetchone()
        return None if row is None else row[0]

    def set_spec(self, values: dict) -> None:
        """Replace the ``aerec_spec`` entries named in ``values`` (a None value removes the entry)."""
        from sqlalchemy import text

        with self.engine.begin() as connection:
            for key, value in values.items():
                connection.execute(text("DELETE FROM aerec_spec WHERE key = :key"), {"key": key})
                if value is not None:
                    connection.execute(text("INSERT INTO aerec_spec VALUES (:key, :value)"),
                                       {"key": key, "value": value})

    # -- cells -------------------------------------------------------------------------------------
    def read_cell(self, key) -> dict | None:
        from sqlalchemy import text

        with self.engine.connect() as connection:
            row = connection.execute(text(f"SELECT record FROM aerec_cells WHERE {KEY}"), key_params(key)).fetchone()
        return None if row is None else json.loads(row[0])

    def write_cell(self, key, record: dict) -> None:
        """Keep a finished cell and drop its claim, in one transaction."""
        from sqlalchemy import text

        with self.engine.begin() as connection:
            connection.execute(text("INSERT INTO aerec_cells VALUES (:dataset, :seed, :label, :record)"),
                               {**key_params(key), "record": json.dumps(record)})
            connection.execute(text(f"DELETE FROM aerec_claims WHERE {KEY}"), key_params(key))

    def delete_cell(self, key) -> None:
        from sqlalchemy import text

        with self.engine.begin() as connection:
            connection.execute(text(f"DELETE FROM aerec_cells WHERE {KEY}"), key_params(key))

    def cells(self) -> list[tuple]:
        """Every finished cell as ``(dataset, seed, label, record)``."""
        from sqlalchemy import text

        with self.engine.connect() as connection:
            rows = connection.execute(text("SELECT dataset, seed, label, record FROM aerec_cells")).fetchall()
        return [(dataset, int(seed), label, json.loads(record)) for dataset, seed, label, record in rows]

    # -- claims ------------------------------------------------------------------------------------
    def claim(self, key, worker: str) -> bool:
        """Take ``key`` for ``worker``: True if it was free, or held by a worker of this machine that is no longer
        running (a killed run); claims of other machines' workers are never taken over."""
        from sqlalchemy import exc, text

        try:
            with self.engine.begin() as connection:
                connection.execute(text("INSERT INTO aerec_claims VALUES (:dataset, :seed, :label, :worker, :at)"),
                                   {**key_params(key), "worker": worker, "at": time.time()})
            return True
        except exc.IntegrityError:
            pass
        with self.engine.connect() as connection:
            row = connection.execute(text(f"SELECT worker FROM aerec_claims WHERE {KEY}"), key_params(key)).fetchone()
        if row is None:  # released since the insert failed
            return self.claim(key, worker)
        host, _, pid = row[0].rpartition(":")
        if row[0] == worker or (host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid))):
            with self.engine.begin() as connection:
                changed = connection.execute(
                    text(f"UPDATE aerec_claims SET worker = :worker, claimed_at = :at WHERE {KEY} AND worker = :old"),
                    {**key_params(key), "worker": worker, "at": time.time(), "old": row[0]})
            return changed.rowcount == 1
        return False

    def release(self, key) -> None:
        from sqlalchemy import text

        with self.engine.begin() as connection:
            connection.execute(text(f"DELETE FROM aerec_claims WHERE {KEY}"), key_params(key))

    def claims(self) -> list[tuple]:
        """The cells being run: ``(dataset, seed, label, worker, claimed_at)``."""
        from sqlalchemy import text

        with self.engine.connect() as connection:
            rows = connection.execute(text("SELECT dataset, seed, label, worker, claimed_at FROM aerec_claims"))
            return [(dataset, int(seed), label, worker, at) for dataset, seed, label, worker, at in rows.fetchall()]

    # -- workers -----------------------------------------------------------------------------------
    def add_run(self, worker: str, environment: dict) -> None:
        from sqlalchemy import text

        with self.engine.begin() as connection:
            connection.execute(text("INSERT INTO aerec_runs VALUES (:worker, :started, :environment)"),
                               {"worker": worker, "started": time.time(), "environment": json.dumps(environment)})

    def runs(self) -> list[tuple]:
        """Every worker's ``(worker, started, environment record)``, in the order they started."""
        from sqlalchemy import text

        with self.engine.connect() as connection:
            rows = connection.execute(text("SELECT worker, started, environment FROM aerec_runs ORDER BY started"))
            return [(worker, started, environment) for worker, started, environment in rows.fetchall()]
