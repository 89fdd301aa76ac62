"""``aerec train``: fit a model with validation-based early stopping, checkpointing, and save its directory.

Under ``torchrun`` (``torchrun --nproc-per-node N -m aerec train ...``) every
process joins one DistributedDataParallel run (:mod:`aerec.distributed`); rank 0
writes the checkpoints, the model directory and the report.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from pathlib import Path

from aerec._version import __version__
from aerec.cli.common import (
    CliError,
    Reading,
    add_dataset_arguments,
    add_reading_arguments,
    add_tune_argument,
    check_protocol,
    check_device_param,
    check_positive_int,
    load_dataset,
    load_side_features,
    make_split,
    parse_params,
    progress,
    tune_on_validation,
    with_progress_bar,
)
from aerec.models import MODELS, make_model, side_feature_arguments

CHECKPOINT_FOLDER = "checkpoint"


def register(commands) -> None:
    parser = commands.add_parser(
        "train", help="fit a model with early stopping on validation users and save it as a directory",
        description="Split a dataset with a seeded protocol, fit a model on the training part (models with epochs "
                    "keep the epoch with the best validation metric: NDCG@100 on the validation users for the "
                    "strong protocol, RMSE on 10% of the training ratings for the ratings protocol) and save it "
                    "to --out, with the split recorded so that 'aerec evaluate --model DIR' tests it on the same "
                    "split. The training state is checkpointed into DIR/checkpoint; --resume continues an "
                    "interrupted run from there.")
    parser.add_argument("--model", required=True, choices=sorted(MODELS), help="model name")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a model hyper-parameter, repeatable (e.g. --param epochs=100 --param patience=20); `aerec models NAME` lists each model's, with defaults and ranges")
    add_dataset_arguments(parser)
    add_reading_arguments(parser)
    add_tune_argument(parser)
    parser.add_argument("--out", required=True, help="the model directory to write")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run whose checkpoint is in OUT/checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace the model or checkpoint already in --out")
    parser.add_argument("--checkpoint-every", type=int, default=5,
                        help="commit the training state every this many epochs, and at the end (default 5)")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    parser.set_defaults(run=run)


def run(args) -> int:
    from aerec.distributed import init_from_environment, rank_and_world

    check_positive_int("--checkpoint-every", args.checkpoint_every)
    check_positive_int("--n-heldout", args.n_heldout)
    params = parse_params(args.param)
    model = make_model(args.model, **with_progress_bar(args.model, params))  # bad names fail before any data is read
    check_device_param(params)
    if args.tune is not None:
        check_positive_int("--tune", args.tune)
        if args.resume:
            raise CliError("--tune with --resume: tuning is not resumable from a checkpoint; run --tune again "
                           "(or resume a run without --tune)")
    out = Path(args.out)
    if check_out(out, args.resume, args.overwrite) == "finished":
        import aerec.model_files as model_files

        progress(f"{out} already holds the finished model; nothing to resume")
        model_files.load(out)  # a damaged model directory is refused by name rather than reported on
        return report_saved(out, args.json)
    check_protocol(args.model, model, args.protocol)
    reading = Reading.from_args(args)
    data = load_dataset(args.dataset, args.data_dir, reading=reading)
    progress(f"loaded {data}")
    split = make_split(data, args.protocol, args.seed, args.n_heldout, args.dataset)
    progress(f"split ({split.protocol}, seed {split.seed}): {split.summary}")
    args.features = side_feature_arguments(model, **load_side_features(args, args.data_dir))
    distributed = init_from_environment(str(params.get("device", "auto")))
    rank, world = rank_and_world()
    with out_lock(out, args, writer=rank == 0):
        return fit_and_save(args, model, params, split, reading, out, distributed, rank, world)


@contextlib.contextmanager
def out_lock(out: Path, args, writer: bool):
    """The --out folder's write lock while the model trains and is saved (rank 0 only: it alone writes there), with
    --out checked again once held: a second ``aerec train --out`` on the folder fails at once, naming the holder.
    A folder the lock created is removed again if the run leaves nothing else in it."""
    from aerec.state import LOCK_NAME, directory_lock

    if not writer:
        yield
        return
    existed = out.exists()
    try:
        with directory_lock(out):
            check_out(out, args.resume, args.overwrite)  # a run that finished meanwhile is not overwritten
            yield
    finally:
        if not existed and out.is_dir() and [entry.name for entry in out.iterdir()] == [LOCK_NAME]:
            shutil.rmtree(out, ignore_errors=True)


def fit_and_save(args, model, params: dict, split, reading, out: Path, distributed: bool, rank: int, world: int) -> int:
    """Fit (or tune) on the split, then save the model with its metadata to --out on rank 0."""
    from aerec.training import Checkpointing

    checkpoint = Checkpointing(out / CHECKPOINT_FOLDER, every=args.checkpoint_every, resume=args.resume)
    started = time.perf_counter()
    tuning = None
    if args.tune is not None:
        if distributed:
            raise CliError("--tune runs in one process; start it without torchrun")
        model, tuning = tune_on_validation(args.model, params, split, args.tune, args.features)  # the best trial's
    else:
        try:
            model.fit(split.train, validation=split.validation, checkpoint=checkpoint, **args.features)
        except KeyboardInterrupt:
            args.interrupted_hint = resume_hint(out)
            raise
    seconds = time.perf_counter() - started
    if distributed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    if rank != 0:
        return 0
    progress(f"fitted {model} in {seconds:.2f} s" + (f" on {world} processes" if world > 1 else ""))
    import aerec.model_files as model_files

    metadata = {"dataset": str(args.dataset), "reading": reading.record(), "history_threshold": split.threshold,
                "protocol": split.protocol, "seed": split.seed,
                **{key: getattr(args, key) for key in ("item_features", "user_features") if getattr(args, key)},
                "n_heldout": split.n_heldout, "split": split.summary, "fit_seconds": seconds, "processes": world,
                **({"tuning": tuning} if tuning is not None else {}),
                "command": ["aerec", *sys.argv[1:]] if Path(sys.argv[0]).name in ("aerec", "__main__.py") else None}
    model_files.save(model, out, metadata=metadata)
    shutil.rmtree(out / CHECKPOINT_FOLDER, ignore_errors=True)  # the saved model supersedes it
    return report_saved(out, args.json)


def resume_hint(out: Path) -> str:
    """Where the last checkpoint is and how to go on from it (Ctrl-C during training)."""
    header = out / CHECKPOINT_FOLDER / "checkpoint.json"
    if not header.is_file():
        return f"no checkpoint was written yet (every --checkpoint-every epochs) under {out / CHECKPOINT_FOLDER}"
    try:
        epochs = json.loads(header.read_text()).get("epochs_done")
    except (OSError, ValueError):
        epochs = None
    done = f" after epoch {epochs}" if epochs else ""
    return f"the last checkpoint{done} is in {out / CHECKPOINT_FOLDER}: run the same command with --resume to go on"


def check_out(out: Path, resume: bool, overwrite: bool) -> str:
    """Refuse an --out that would lose something; returns "finished", "resume" or "new"."""
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file; expected a directory for the model")
    if not out.is_dir() or not any(not entry.name.startswith(".") for entry in out.iterdir()):
        return "new"  # nothing there, or only a lock or temporaries
    has_model = (out / "config.json").is_file()
    has_checkpoint = (out / CHECKPOINT_FOLDER / "checkpoint.json").is_file()
    foreign = [p.name for p in out.iterdir() if not (p.name in ("config.json", CHECKPOINT_FOLDER) or p.name.startswith(".")
                                                      or p.name.startswith("tensors-"))]
    if foreign:
        raise CliError(f"--out {out} holds other files ({', '.join(sorted(foreign)[:3])}); expected a new or an aerec "
                       "model directory")
    if overwrite:
        if resume:
            raise CliError("--resume and --overwrite contradict each other; pass one")
        return "new"
    if resume:
        return "resume" if has_checkpoint else ("finished" if has_model else "new")
    if has_checkpoint:
        raise CliError(f"--out {out} holds the checkpoint of an unfinished run; pass --resume to continue it or "
                       "--overwrite to start again")
    raise CliError(f"--out {out} already holds a trained model; pass --overwrite to replace it")


def report_saved(out: Path, as_json: bool) -> int:
    from aerec.state import read_json

    config = read_json(out / "config.json")
    training, metadata = (config[key] if isinstance(config.get(key), dict) else {} for key in ("training", "metadata"))
    report = {"out": str(out), "model": config["model"], "dataset": metadata.get("dataset"),
              "protocol": metadata.get("protocol"), "seed": metadata.get("seed"), "training": training,
              "aerec_version": __version__}
    if isinstance(metadata.get("tuning"), dict):
        report["tuning"] = metadata["tuning"]
    if as_json:
        print(json.dumps(report))
        return 0
    lines = [f"{config['model']} trained on {metadata.get('dataset')} ({metadata.get('protocol')} protocol, seed "
             f"{metadata.get('seed')}) and saved to {out}"]
    if training.get("epochs_run"):
        best = training.get("best_epoch")
        lines.append(f"  epochs run: {training['epochs_run']}" + (f", best validation {training['best_validation']:.4f} "
                                                                    f"at epoch {best}" if best else ""))
    if "tuning" in report:
        tuning = report["tuning"]
        lines.append(f"  tuned: {tuning['trials']} trials, best validation {tuning['metric']} "
                     f"{tuning['best_validation']:.4f} with {tuning['chosen']}")
    lines.append(f"  evaluate it: aerec evaluate --model {out}")
    print("\n".join(lines))
    return 0
