"""``aerec models [NAME]``: the registered models, and each one's hyper-parameters as its constraints table states them."""

from __future__ import annotations

import inspect
import json

from aerec.cli.common import CliError


def register(commands) -> None:
    parser = commands.add_parser(
        "models", help="list the models, or one model's hyper-parameters (default and what it accepts)",
        description="Without NAME: every registered model and the paper it follows. With NAME: each hyper-parameter "
                    "that --param takes for it, its default and the values it accepts (read from the model's "
                    "constraints table, the one that checks them).")
    parser.add_argument("name", nargs="?", help="a model name (see: aerec models)")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    parser.set_defaults(run=run)


def run(args) -> int:
    from aerec.models import MODELS

    if args.name is None:
        rows = [{"name": name, "class": cls.__name__, "summary": summary(cls)} for name, cls in MODELS.items()]
        if args.json:
            print(json.dumps({"models": rows}))
        else:
            for row in rows:
                print(f"{row['name']:<12} {row['class']:<14} {row['summary']}")
        return 0
    if args.name not in MODELS:
        raise CliError(f"unknown model {args.name!r}; expected one of {sorted(MODELS)}")
    rows = parameter_rows(MODELS[args.name])
    if args.json:
        print(json.dumps({"model": args.name, "parameters": rows}))
    else:
        width = max(len(row["name"]) for row in rows)
        for row in rows:
            print(f"{row['name']:<{width}}  default {row['default']:<14} accepts {row['accepts']}")
    return 0


def summary(cls) -> str:
    """The first line of the class docstring."""
    return (inspect.getdoc(cls) or "").splitlines()[0] if inspect.getdoc(cls) else ""


def parameter_rows(cls) -> list[dict]:
    """One row per hyper-parameter: its name, its default (as --param writes it) and its constraints in words."""
    from aerec.params import describe

    defaults = {name: parameter.default for name, parameter in inspect.signature(cls.__init__).parameters.items()}
    constraints = cls.constraints()
    return [{"name": name, "default": format_value(defaults[name]), "accepts": describe(constraints[name])}
            for name in cls.param_names()]


def format_value(value) -> str:
    """A value as ``--param key=value`` takes it."""
    if isinstance(value, tuple):
        return ",".join(map(str, value)) + ("," if len(value) == 1 else "")
    return str(value)
