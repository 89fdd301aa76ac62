"""Run a benchmark spec: one Optuna study per cell (dataset, split seed, model), kept in one store (a SQLite file
or a database server's URL).

Each cell tunes its model on the validation part of its protocol's split
(:mod:`aerec.benchmark.protocols`: strong, per_user, temporal, ratings) with the spec's
sampler and the same budget for every model (``trials`` and/or ``seconds`` of fitting: what the
trials' fits took, their validation scoring left out), pruning
hopeless trials from the per-epoch validation curve (models trained by epochs, when the
tuning metric is the loop's own: NDCG@100, or RMSE for rating models); the best trial's
model is scored once on the test part. The store is Optuna's RDB storage plus tables of
ours in the same database: the spec it was made for, the finished cells (their test
metrics and per-user values), the workers' claims and environments. Run again with the
same command after a kill, a run recomputes nothing that finished: finished cells are
read back, a cell's completed trials stay in its study and only the missing ones run (a
trial cut off half-way is redone, with the parameters an uninterrupted run would draw).
Several workers (processes, or machines sharing the file) may run one spec on one store
at once: each claims a cell before running it, so no cell is run twice; a claim left by
a killed worker of the same machine is taken over.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import socket
import time
from pathlib import Path

import numpy as np

from aerec.benchmark.environment import environment
from aerec.benchmark.protocols import (
    LOWER_IS_BETTER,
    make_cell_data,
    test_scores,
    validation_value,
)
from aerec.benchmark.spec import BenchmarkSpec, SpecError, load_spec, load_spec_and_table
from aerec.benchmark.store import Store
from aerec.data import (
    binarize,
    filter_min_counts,
    load_movielens,
    read_csv,
    read_parquet,
)
from aerec.data.readers import file_header, optional_columns
from aerec.models import make_model, side_feature_arguments
from aerec.search_space import Choice, trial_params

__all__ = ["read_environments", "read_store", "run_benchmark", "spec_fingerprint"]



def spec_fingerprint(spec: BenchmarkSpec) -> str:
    """The spec as canonical JSON (its source path left out): what a store is tied to."""
    record = dataclasses.asdict(spec)
    record.pop("source")
    record["tuning"] = tuning_record(spec.tuning)
    record["models"] = {model.pop("label"): model for model in record["models"]}  # differences named by label
    record["datasets"] = {dataset["name"]: dataset for dataset in record["datasets"]}
    return json.dumps(record, sort_keys=True, default=repr)


def run_benchmark(spec, store: str | Path, log=None, progress=None, spec_changed: str = "refuse",
                  jobs: int = 1, table: dict | None = None) -> dict:
    """Run every cell of ``spec`` (a path, dict or :class:`BenchmarkSpec`), resuming from ``store``; return the cells.

    Returns ``{(dataset, seed, label): cell record}`` with each cell's chosen parameters,
    validation value, test metrics, per-user test values, trials run, the best trial's
    validation curve, the tuning history, seconds, peak memory and the split's fingerprint.
    ``log(message)`` hears what happens to each cell, ``progress(key)`` each cell as it is done
    (run here, read back, or finished by another worker). A store made for another spec is refused,
    naming what differs; ``spec_changed="allow"`` runs the new spec on it anyway (the store then
    belongs to the new spec): a finished cell is kept when its dataset, seed and model are still in
    the spec and the entries it depends on (dataset, protocol, metrics, tuning, model) did not change.
    ``jobs`` > 1 runs the cells in that many worker processes on the store (each with its share of
    the CPU threads); their messages and progress come back to ``log`` and ``progress`` here.
    ``table``: for a parsed spec, the table it came from, kept in the store (a report then needs
    only the store; a spec read from a file or a dict keeps its own).
    """
    import optuna

    spec, read_table = load_spec_and_table(spec)
    table = read_table if table is None else table
    for model in spec.models:
        if spec.tuning.sampler == "grid" and not all(isinstance(e, Choice) for e in model.space.values()):
            raise SpecError(f"{spec.source} [models.{model.label}]: the grid sampler needs choices for every "
                            "searched parameter")
    if spec_changed not in ("refuse", "allow"):
        raise ValueError(f"spec_changed={spec_changed!r}; expected 'refuse' or 'allow'")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r}; expected an integer >= 1")
    log = log or (lambda message: None)
    progress = progress or (lambda key: None)
    store = Store(store)
    if jobs > 1:
        return run_workers(spec, table, store, jobs, log, progress, spec_changed)
    with store.setup_lock():  # one worker at a time sets the store up (Optuna's schema too)
        open_store(store, spec, table, spec_changed, log)
        storage = store.optuna_storage()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cells, elsewhere = {}, []
    worker = f"{socket.gethostname()}:{os.getpid()}"
    store.add_run(worker, environment())
    tasks = []  # (key, model spec, seed, split, cell fingerprint) in the order of the spec
    for dataset in spec.datasets:
        data = functools.cache(functools.partial(load_data, dataset))  # read and split only where a cell runs
        for seed in spec.seeds:
            split = functools.cache(lambda dataset=dataset, data=data, seed=seed:
                                    make_cell_data(spec, dataset, data(), seed))
            tasks += [((dataset.name, int(seed), model.label), model, seed, split,
                       cell_fingerprint(spec, dataset, model)) for model in spec.models]

    split_digest = functools.cache(lambda split: split_fingerprint(split().split))  # hashed once per split

    def stored(key, split, made_for):
        """The cell's finished record if it was made for this spec's cell and on the split the protocol makes
        now; a record scored on another split (the data file or aerec's split changed since) is refused, or
        with ``spec_changed="allow"`` run again."""
        record = current(store.read_cell(key), made_for)
        if record is None or record.get("split") in (None, split_digest(split)):
            return record
        if spec_changed != "allow":
            raise SpecError(f"{key}: the store's result was scored on another split than the protocol makes now "
                            f"from this data (split {record['split'][:16]}, now {split_digest(split)[:16]}:"
                            " the data file or aerec's split changed); use another store, or allow the change "
                            "(--spec-changed=allow) to run such cells again")
        log(f"{key}: its split changed since it was stored: run again")
        return None

    def attempt(key, model, seed, split, made_for, done=None):
        """The cell's record: read back, or run here once claimed; None while another worker runs it."""
        done = stored(key, split, made_for) if done is None else done
        if done is not None or not store.claim(key, worker):
            return done
        done = stored(key, split, made_for)  # another worker's, since the first look
        if done is not None:
            store.release(key)
            return done
        forget_cell(store, storage, key, log, made_for)  # a cell of the spec before an allowed change
        done = {**run_cell(spec, model, split(), seed, storage, key, log, made_for), "cell": made_for}
        store.write_cell(key, done)
        return done

    try:
        for task in tasks:
            finished = stored(task[0], task[3], task[-1])
            if finished is not None:
                log(f"{task[0]}: finished before, read back")
            cells[task[0]] = attempt(*task, done=finished)
            if cells[task[0]] is None:
                log(f"{task[0]}: being run by another worker")
                elsewhere.append(task)
            else:
                progress(task[0])
        for task in elsewhere:  # wait for the other workers' cells; run one here if its worker stopped
            while (done := attempt(*task)) is None:
                time.sleep(0.5)
            cells[task[0]] = done
            progress(task[0])
    finally:
        store.close()
    return cells


def run_workers(spec: BenchmarkSpec, table, store: Store, jobs: int, log, progress, spec_changed) -> dict:
    """Run a spec in ``jobs`` workers sharing ``store``: this process and ``jobs - 1`` started ones, each with its
    share of the CPU threads; the started workers' messages and progress are relayed here; return the cells."""
    import multiprocessing
    import queue
    import threading

    import torch
    from threadpoolctl import threadpool_limits

    with store.setup_lock():  # refuse (or allow) a changed spec once, before any worker starts
        open_store(store, spec, table, spec_changed, log)
        store.optuna_storage()
    store.close()
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    threads = max(1, len(os.sched_getaffinity(0)) // jobs)  # the cores this process may use (taskset, cgroups)
    workers = [context.Process(target=worker_main, args=(spec, table, store.location, threads, messages, spec_changed),
                               daemon=True)
               for _ in range(jobs - 1)]
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update({name: str(threads) for name in THREAD_VARIABLES})  # the workers' BLAS threads, at start
    try:
        for worker in workers:
            worker.start()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    reported, lock = set(), threading.Lock()

    def report(key) -> None:
        with lock:
            if key not in reported:
                reported.add(key)
                progress(key)

    def relay() -> None:
        while any(worker.is_alive() for worker in workers) or not messages.empty():
            try:
                kind, value = messages.get(timeout=0.2)
            except queue.Empty:
                continue
            if kind == "log":
                log(value)
            else:
                report(tuple(value))

    relaying = threading.Thread(target=relay, daemon=True)
    relaying.start()
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            cells = run_benchmark(spec, store.location, log=log, progress=report, table=table,
                                  spec_changed=spec_changed)
    finally:
        torch.set_num_threads(torch_threads)
        for worker in workers:
            worker.join()
        relaying.join()
    failed = [f"worker {i + 2} exited with {worker.exitcode}" for i, worker in enumerate(workers) if worker.exitcode]
    if failed:
        log(f"{'; '.join(failed)}; its cells were run here")
    return cells


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def worker_main(spec: BenchmarkSpec, table, store: str, threads: int, messages, spec_changed: str = "refuse") -> None:
    """One worker process of :func:`run_workers`: run the spec on the store, sending back its messages; it ends
    with the run that started it (a ``kill`` of ``aerec benchmark run`` left it tuning on and writing the store)."""
    import multiprocessing

    import torch

    from aerec.distributed import die_with_parent

    die_with_parent(multiprocessing.parent_process().pid)
    torch.set_num_threads(threads)
    name = f"[worker {os.getpid()}] "
    run_benchmark(spec, store, log=lambda message: messages.put(("log", name + message)),
                  progress=lambda key: messages.put(("progress", key)), table=table, spec_changed=spec_changed)


def expected_keys(spec: BenchmarkSpec) -> list:
    """Every cell of a spec, in the order the runner visits them."""
    return [(dataset.name, int(seed), model.label) for dataset in spec.datasets for seed in spec.seeds
            for model in spec.models]


# -- the store ------------------------------------------------------------------------------------
def read_store(location: str | Path) -> tuple[BenchmarkSpec, dict]:
    """The spec a store (a SQLite file's path or a database URL) was made for and its finished cells
    ``{(dataset, seed, label): record}``."""
    import sqlalchemy

    store = Store(location)
    try:
        if not store.exists():
            raise SpecError(f"no benchmark store at {location}")
        table = store.get_spec("table")
        if table is None:
            raise SpecError(f"{location} holds no spec table (made from a parsed spec): report it with the spec")
        spec = load_spec(json.loads(table))
        return spec, finished_cells(store, spec)
    except sqlalchemy.exc.DatabaseError as error:
        raise SpecError(f"{location} is not a benchmark store: {str(error).splitlines()[0]}") from None
    finally:
        store.close()


def finished_cells(store: Store, spec: BenchmarkSpec) -> dict:
    """The store's finished cells of ``spec``: its datasets, seeds and models, made for its current entries."""
    made_for = {(dataset.name, model.label): cell_fingerprint(spec, dataset, model)
                for dataset in spec.datasets for model in spec.models}
    cells = {(dataset, seed, label): current(record, made_for.get((dataset, label)))
             for dataset, seed, label, record in store.cells() if (dataset, label) in made_for and seed in spec.seeds}
    return {key: record for key, record in cells.items() if record is not None}


def read_environments(location: str | Path) -> list[dict]:
    """The environment records (:func:`~aerec.benchmark.environment.environment`) of the workers that ran a store,
    each distinct one once with its workers and when each started."""
    store = Store(location)
    try:
        rows = store.runs() if store.exists() else []
    finally:
        store.close()
    distinct: dict = {}
    for worker, started, record in rows:
        entry = distinct.setdefault(record, {**json.loads(record), "workers": []})
        entry["workers"].append({"worker": worker, "started": time.strftime("%Y-%m-%dT%H:%M:%S",
                                                                           time.gmtime(started)) + "Z"})
    return list(distinct.values())


def differences(stored, given, path: str = "") -> list[str]:
    """The dotted paths at which two spec records differ (down to a model's fixed parameter)."""
    if isinstance(stored, dict) and isinstance(given, dict):
        return [difference for key in sorted(set(stored) | set(given), key=str)
                for difference in differences(stored.get(key), given.get(key), f"{path}.{key}" if path else str(key))]
    if isinstance(stored, list) and isinstance(given, list) and len(stored) == len(given):
        return [difference for i, (a, b) in enumerate(zip(stored, given))
                for difference in differences(a, b, f"{path}[{i}]")]
    return [] if stored == given else [path]


def open_store(store: Store, spec: BenchmarkSpec, table: dict | None = None, spec_changed: str = "refuse",
               log=lambda message: None) -> None:
    """Create the store's tables, or check that it was made for ``spec`` (or allow the change)."""
    store.create()
    fingerprint = spec_fingerprint(spec)
    stored = store.get_spec("spec")
    if stored is None:
        store.set_spec({"spec": fingerprint, "table": None if table is None else json.dumps(table)})
    elif stored != fingerprint:
        changed = differences(json.loads(stored), json.loads(fingerprint))
        if spec_changed != "allow":
            store.close()
            raise SpecError(f"the store {store.location} was written by another spec (it differs in {changed}); use "
                            "another store, or allow the change (--spec-changed=allow) to keep its finished cells")
        log(f"{store.location}: the spec changed in {changed}; allowed: finished cells whose entries did not change "
            "are kept, the others run again")
        store.set_spec({"spec": fingerprint, "table": None if table is None else json.dumps(table),
                        "changed": json.dumps(changed)})


def tuning_record(tuning) -> dict:
    """The tuning entries as fingerprints take them: a key added later is left out at its default, so that
    stores made before it stay valid."""
    record = dataclasses.asdict(tuning)
    if record["startup_trials"] is None:
        del record["startup_trials"]
    return record


def cell_fingerprint(spec: BenchmarkSpec, dataset, model) -> str:
    """What a cell's result depends on besides its seed: the dataset, protocol, metrics, tuning and model entries."""
    import hashlib

    entry = {key: value for key, value in dataclasses.asdict(dataset).items()
             if not (key in ("item_features", "user_features") and value is None)}  # stores made before them match
    record = {"dataset": entry, "protocol": spec.protocol, "metrics": spec.metrics,
              "tuning": tuning_record(spec.tuning), "model": model}
    text = json.dumps({key: dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
                       for key, value in record.items()}, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def current(record: dict | None, made_for: str) -> dict | None:
    """A finished cell's record if it was made for this spec's cell (not one before an allowed change), else None."""
    return record if record is not None and record.get("cell", made_for) == made_for else None


def forget_cell(store: Store, storage, key, log, made_for: str) -> None:
    """Remove a cell's record and its study, left by the spec before an allowed change.

    A cell a killed run left half-tuned has a study and no record: its trials were drawn for the old
    entries (another space, metric or direction), so that study goes too.
    """
    import optuna

    if store.read_cell(key) is not None:
        log(f"{key}: its entries in the spec or its split changed: run again")
        store.delete_cell(key)
    else:
        try:
            study = optuna.load_study(study_name="/".join(map(str, key)), storage=storage)
        except KeyError:
            return  # no study: a cell never started
        if study.user_attrs.get("cell") == made_for:
            return  # half-tuned for this very spec: resumed
        log(f"{key}: a half-tuned study of the spec before a change: tuned again")
    try:
        optuna.delete_study(study_name="/".join(map(str, key)), storage=storage)
    except KeyError:
        pass


# -- data -----------------------------------------------------------------------------------------
def load_data(dataset):
    if dataset.path is None:
        data = load_movielens(dataset.name)
    else:
        reader = read_parquet if dataset.path.endswith(".parquet") else read_csv
        # a rating (timestamp) column not named in the spec is read where the file has one called "rating"
        # ("timestamp"), as aerec train reads files; rating = false in the spec reads none (every entry 1.0)
        named = {role: column for role, column in dataset.columns.items() if column is not False}
        found = optional_columns(file_header(dataset.path))
        columns = {**{role: found[role] for role in found if role not in dataset.columns}, **named}
        data = reader(dataset.path, **columns)
    if dataset.binarize is not None:
        data = binarize(data, threshold=float(dataset.binarize))
    if dataset.min_user or dataset.min_item:
        data = filter_min_counts(data, min_user=dataset.min_user, min_item=dataset.min_item)
    return data


# -- one cell -------------------------------------------------------------------------------------
def run_cell(spec: BenchmarkSpec, model_spec, split, seed: int, storage, key, log, made_for: str | None = None) -> dict:
    """Tune one model on one split's validation part (:func:`tune`), then score the chosen model on its test part.

    A trial a killed run left RUNNING is marked FAIL with the user attribute ``interrupted`` (it did not
    finish; it counts neither in the budget nor for the samplers) and is redone.
    """
    import optuna

    study = optuna.create_study(study_name="/".join(map(str, key)), storage=storage, sampler=None,
                                direction="minimize" if spec.tuning.metric in LOWER_IS_BETTER else "maximize",
                                pruner=optuna.pruners.MedianPruner(n_warmup_steps=5), load_if_exists=True)
    if made_for is not None and "cell" not in study.user_attrs:
        study.set_user_attr("cell", made_for)  # what an allowed spec change compares a half-tuned study with
    redone = mark_interrupted(study)
    if redone:
        log(f"{key}: {redone} trial(s) cut off by a stopped run, redone")
    best, model, final_seconds = tune(study, spec.tuning, model_spec, split, seed, str(key))
    start = time.perf_counter()
    test, per_user, users = test_scores(model, split, spec.metrics)
    final_seconds += time.perf_counter() - start
    counted = counted_trials(study)
    states = [t.state.name for t in counted]
    epoch_seconds = [s for s in best.user_attrs.get("epoch_seconds", []) if s is not None]
    chosen = trial_params(model_spec.space, best.params)
    record = {"params": {**model_spec.fixed, **chosen}, "validation": best.value,
              "test": test, "per_user": {m: values.tolist() for m, values in per_user.items()},
              "users": users.tolist(),
              # the raw ids behind those rows: a user tested under several seeds is one user in the paired tests
              "user_ids": None if split.test_user_ids is None else np.asarray(split.test_user_ids)[users].tolist(),
              "trials": {state: states.count(state) for state in sorted(set(states))},
              "interrupted": sum(1 for t in study.trials if t.user_attrs.get("interrupted")),
              "best_trial": [t.number for t in counted].index(best.number),  # kills left out
              "split": split_fingerprint(split.split),
              "validation_curve": best.user_attrs.get("validation_curve", []),
              "tuning_history": [t.value if t.state == optuna.trial.TrialState.COMPLETE else None for t in counted],
              "fit_seconds": best.user_attrs.get("fit_seconds"),
              "epoch_seconds": float(np.median(epoch_seconds)) if epoch_seconds else None,
              "tuning_seconds": sum(t.user_attrs.get("fit_seconds", 0.0) + t.user_attrs.get("score_seconds", 0.0)
                                    for t in counted),  # fits and validation scoring
              "final_seconds": final_seconds,  # the test scoring (and a refit after a restart)
              "peak_rss_bytes": max((t.user_attrs.get("peak_rss_bytes") or 0 for t in counted), default=0) or None}
    log(f"{key}: {record['trials']} trials, chosen {chosen}, validation {best.value:.4f}, test "
        + ", ".join(f"{m} {record['test'][m]:.4f}" for m in spec.metrics))
    return record


def tune(study, tuning, model_spec, cell, seed: int, name: str):
    """Run ``study``'s missing trials of ``model_spec`` on ``cell``'s validation part; return (best trial, its
    fitted model, seconds spent refitting it).

    Trials run one at a time, each with a sampler seeded from (``seed``, trials finished so far): with the
    study's history it decides the trial's parameters alone, so a study resumed after a kill draws exactly
    what an uninterrupted one draws. The best trial's model is the one fitted in its trial, or, when that
    trial ran before a restart, fitted again with its parameters.
    """
    import optuna

    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    budget = cell_budget(tuning, model_spec)
    kept = {}

    def objective(trial):
        reset_peak_memory()
        start = time.perf_counter()
        try:  # a trial that fails while being built still spends time (a seconds budget must end)
            params = {param: entry.suggest(trial, param) for param, entry in model_spec.space.items()}
            model = build_model(model_spec, params, seed)
            callbacks = ()
            if tuning.pruning and tuning.metric in ("ndcg@100", "rmse") and hasattr(model, "batch_loss"):
                callbacks = (pruning_callback(trial),)
            model.fit(cell.train, validation=cell.validation, callbacks=callbacks,
                      **side_feature_arguments(model, strict=False, **cell.fit_kwargs))
        except optuna.TrialPruned:
            raise
        except Exception as error:  # kept with the trial: Optuna only logs why a trial failed
            trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:300])
            raise
        finally:
            trial.set_user_attr("fit_seconds", time.perf_counter() - start)
            trial.set_user_attr("peak_rss_bytes", peak_memory())
        epochs = getattr(getattr(model, "history_", None), "epochs", None) or []
        trial.set_user_attr("validation_curve", [record.get("validation") for record in epochs])
        trial.set_user_attr("epoch_seconds", [record.get("seconds") for record in epochs])
        start = time.perf_counter()
        value = validation_value(model, cell, tuning.metric)
        trial.set_user_attr("score_seconds", time.perf_counter() - start)
        if not kept or (value < kept["value"] if minimize else value > kept["value"]):
            kept.update(value=value, number=trial.number, model=model)
        return value

    while True:
        counted = counted_trials(study)
        spent = sum(t.user_attrs.get("fit_seconds", 0.0) for t in counted)
        if (budget is not None and len(counted) >= budget) or (tuning.seconds is not None
                                                               and spent >= tuning.seconds):
            break
        recent = counted[-FAILURES_IN_A_ROW:]
        if len(recent) == FAILURES_IN_A_ROW and all(t.state == optuna.trial.TrialState.FAIL for t in recent):
            reasons = sorted({t.user_attrs.get("error", "") for t in recent})
            raise RuntimeError(f"{name}: the last {FAILURES_IN_A_ROW} trials failed (fix the space or the fixed "
                               f"parameters): {reasons[:3]}")
        study.sampler = cell_sampler(tuning, model_spec, seed, len(counted))
        study.optimize(objective, n_trials=1, catch=(Exception,))
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        failures = [t.user_attrs.get("error", "") for t in study.trials]
        raise RuntimeError(f"{name}: no trial finished; failures: {failures[-3:]}")
    best = study.best_trial
    model = kept["model"] if kept.get("number") == best.number else None
    start = time.perf_counter()
    if model is None:  # the best trial ran before a restart: fit its parameters again
        model = build_model(model_spec, trial_params(model_spec.space, best.params), seed)
        model.fit(cell.train, validation=cell.validation, **side_feature_arguments(model, strict=False, **cell.fit_kwargs))
    return best, model, time.perf_counter() - start


#: Trials failing one after the other that end a cell with an error (a space whose every draw is refused).
FAILURES_IN_A_ROW = 10


def cell_budget(tuning, model_spec) -> int | None:
    """Trials per cell: the spec's, one for a model with nothing to tune, at most the grid's size."""
    if not model_spec.space:
        return 1
    if tuning.sampler == "grid":
        size = int(np.prod([len(entry.values) for entry in model_spec.space.values()]))
        return size if tuning.trials is None else min(tuning.trials, size)
    return tuning.trials


def cell_sampler(tuning, model_spec, seed: int, n_finished: int):
    """The sampler of a cell's next trial, seeded from the split seed and the number of trials finished.

    The grid sampler is seeded with the split seed alone: Optuna's ``GridSampler`` numbers the grid in an
    order its seed shuffles, so a sampler reseeded per trial would revisit points (a fresh sampler with the
    same seed picks among the unvisited points by the study's history alone, which keeps resuming exact).
    """
    import optuna

    if tuning.sampler == "grid":  # its seed also shuffles the grid's numbering: the same for every trial of a cell
        return optuna.samplers.GridSampler({p: e.optuna_choices() for p, e in model_spec.space.items()}, seed=int(seed))
    trial_seed = int(np.random.SeedSequence([int(seed), n_finished]).generate_state(1)[0])
    if tuning.sampler == "random":
        return optuna.samplers.RandomSampler(seed=trial_seed)
    if tuning.startup_trials is not None:
        return optuna.samplers.TPESampler(seed=trial_seed, n_startup_trials=tuning.startup_trials)
    return optuna.samplers.TPESampler(seed=trial_seed)


def counted_trials(study) -> list:
    """The trials that finished (complete, pruned or failed), without those a killed run cut off."""
    return [t for t in study.get_trials(deepcopy=False)
            if t.state.is_finished() and not t.user_attrs.get("interrupted")]


def mark_interrupted(study) -> int:
    """Mark FAIL (user attribute ``interrupted``) the trials left RUNNING by a stopped worker; their number.

    Only the worker holding the cell's claim runs its trials, so a RUNNING trial it finds is a killed run's.
    The grid sampler counts any finished trial as visited: the mark takes its grid point away so it is redone.
    """
    import optuna

    storage, marked = study._storage, 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        if "grid_id" in trial.system_attrs:
            storage.set_trial_system_attr(trial._trial_id, "grid_id", -1)
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        marked += 1
    return marked


def split_fingerprint(split) -> str:
    """SHA-256 of a split's parts (each matrix's shape, rows, columns and values), to trace a table to its split."""
    import hashlib

    digest = hashlib.sha256()
    for part in dataclasses.fields(split):
        interactions = getattr(split, part.name)
        if interactions is None:
            continue
        digest.update(part.name.encode())
        matrix = interactions.matrix.tocsr()
        matrix.sort_indices()
        for array in (np.asarray(matrix.shape), matrix.indptr, matrix.indices, matrix.data):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def reset_peak_memory() -> None:
    """Start the process's peak resident memory (Linux VmHWM) afresh; nothing elsewhere."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory() -> int | None:
    """The process's peak resident memory in bytes since the last reset (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def build_model(model_spec, params: dict, seed: int):
    """The cell's model: fixed and drawn parameters; seeded with the split seed unless the spec fixes a seed."""
    from aerec.models import MODELS

    names = MODELS[model_spec.model].param_names()
    seeded = {name: int(seed) for name in ("seed", "random_state") if name in names and name not in model_spec.fixed}
    return make_model(model_spec.model, **model_spec.fixed, **seeded, **params)


def pruning_callback(trial):
    """Report each epoch's validation value (the loop's: NDCG@100, or RMSE for a rating model) to the trial; stop
    the fit when the pruner says so."""
    import optuna

    def callback(record, history) -> bool:
        value = record.get("validation")
        if value is not None:
            trial.report(float(value), step=int(record["epoch"]))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {record['epoch']}")
        return False

    return callback
