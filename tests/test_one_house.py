"""One house for every trained model: the estimator protocol, the constraints tables, the loop's phases,
callbacks, time budget and warm starts, own random generators, deprecated names, and the import graph."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone

import aerec
from aerec.models import MODELS, Autoencoder, CDAE, AutoRec, MultDAE, MultVAE, make_model
from aerec.training import TrainConfig, TrainingState, train
from aerec.training_state import STOP_REASONS
from tests.alternating_autoencoder import AlternatingAutoencoder
from tests.conftest import random_implicit_csr
from tests.test_models_contract import FAST_PARAMS

PACKAGE = Path(aerec.__file__).parent


@pytest.fixture(scope="module")
def data():
    return random_implicit_csr(n_users=120, n_items=40, density=0.2, seed=4)


@pytest.fixture(scope="module")
def validation():
    """Validation users: their items below 20 given, the rest held out (no pair in both)."""
    rows = random_implicit_csr(n_users=30, n_items=40, density=0.3, seed=5).tocoo()
    given = rows.col < 20
    import scipy.sparse as sp

    part = lambda keep: sp.csr_matrix((rows.data[keep], (rows.row[keep], rows.col[keep])), shape=rows.shape)  # noqa: E731
    return part(given), part(~given)


def weights(module):
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- the estimator protocol and the constraints tables ---------------------------------------------
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_clones_sets_params_and_prints_what_differs(name):
    model = make_model(name, **FAST_PARAMS[name])
    twin = clone(model)
    assert type(twin) is type(model) and twin is not model and twin.get_params() == model.get_params()
    assert twin.set_params() is twin
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['nonsense'\]"):
        twin.set_params(nonsense=1)
    shown = repr(model)
    assert all(f"{key}=" in shown for key in FAST_PARAMS[name]) and repr(type(model)()) == f"{type(model).__name__}()"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_parameter_of_every_model_has_a_constraint_and_the_defaults_satisfy_it(name):
    cls = MODELS[name]
    assert set(cls.constraints()) == set(cls.param_names())
    model = cls(device="cpu") if "device" in cls.param_names() else cls()
    model.check_params()


def test_one_table_checks_a_parameter_for_every_model():
    for name in ("mult_vae", "cdae", "autorec", "autoencoder"):
        with pytest.raises(ValueError, match=r"max_seconds=-1; expected a positive number \(at most 1e\+09\) or None"):
            make_model(name, max_seconds=-1)
        with pytest.raises(ValueError, match=r"seed=4294967296; expected an integer in \[0, 2\*\*32 - 1\]"):
            make_model(name, seed=2**32)


# -- own generators -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mult_vae", "mult_dae", "cdae", "autorec", "autoencoder"])
def test_fit_and_load_leave_torchs_global_generator_alone(name, data, tmp_path):
    before = torch.get_rng_state()
    model = make_model(name, device="cpu", **FAST_PARAMS[name]).fit(data)
    aerec.save(model, tmp_path / "m")
    loaded = aerec.load(tmp_path / "m")
    assert torch.equal(before, torch.get_rng_state())
    np.testing.assert_array_equal(model.score(data[:5]), loaded.score(data[:5]))


# -- callbacks and the time budget --------------------------------------------------------------------
def test_a_callback_sees_every_record_and_can_stop_training(data, validation):
    seen = []

    def stop_at_three(record, history):
        seen.append((record["epoch"], "loss" in record, "validation" in record, record["seconds"] >= 0))
        return record["epoch"] == 3

    model = MultDAE(hidden=8, latent=4, epochs=10, device="cpu")
    model.fit(data, validation=validation, callbacks=[stop_at_three])
    assert seen == [(1, True, True, True), (2, True, True, True), (3, True, True, True)]
    assert len(model.history_.epochs) == 3 and model.history_.stop_reason == "callback"
    assert model.history_.best_epoch in (1, 2, 3)


def test_max_seconds_ends_training_after_the_epoch_in_progress(data):
    def slow(record, history):
        time.sleep(0.2)

    model = MultVAE(hidden=8, latent=4, epochs=50, max_seconds=0.3, device="cpu").fit(data, callbacks=[slow])
    assert len(model.history_.epochs) == 2 and model.history_.stop_reason == "max_seconds" in STOP_REASONS
    assert MultVAE(hidden=8, latent=4, epochs=2, device="cpu").fit(data).history_.stop_reason == "epochs"


# -- phases: a new two-phase model in one file ---------------------------------------------------------
def test_the_alternating_model_file_is_under_100_lines_of_code():
    source = (Path(__file__).parent / "alternating_autoencoder.py").read_text()
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node) is not None:
            docstrings.update(range(node.body[0].lineno, node.body[0].end_lineno + 1))
    code = [number for number, line in enumerate(source.splitlines(), 1)
            if line.strip() and not line.strip().startswith("#") and number not in docstrings]
    assert len(code) < 100


def test_each_phase_updates_only_its_parameters_with_its_own_optimizer(data):
    model = AlternatingAutoencoder(epochs=1, encoder_passes=1, decoder_passes=1)
    model.fit(data)
    steps = len(range(0, data.shape[0], 50))
    record = model.history_.epochs[0]
    assert {"encoder_loss", "decoder_loss", "loss"} <= set(record) and record["loss"] == record["decoder_loss"]
    assert model.n_updates_ == 2 * steps and model.module_.encoder_copies == 1
    optimizers = model._loop.optimizers
    encoder_ids = {id(p) for p in model.module_.encoder.parameters()}
    assert {id(p) for g in optimizers[0].param_groups for p in g["params"]} == encoder_ids
    assert not encoder_ids & {id(p) for g in optimizers[1].param_groups for p in g["params"]}


def test_a_phase_active_in_some_epochs_only_leaves_the_others_alone(data):
    from aerec.training import Phase

    net = torch.nn.Sequential(torch.nn.Linear(40, 4), torch.nn.Linear(4, 40))
    start = weights(net)
    phases = [Phase("first", lambda m: m[0].parameters(), epochs=(0, 2)),
              Phase("second", lambda m: m[1].parameters(), epochs=(2, None))]
    loss = lambda m, b, s: {"loss": (m(b.dense) - b.dense).square().mean()}  # noqa: E731
    history = train(net, data, loss, TrainConfig(epochs=2, progress=False, device="cpu"), phases=phases)
    assert not torch.equal(start["0.weight"], net[0].weight) and torch.equal(start["1.weight"], net[1].weight)
    assert {"first_loss", "loss"} <= set(history.epochs[0]) and "second_loss" not in history.epochs[0]


def test_phases_resume_from_a_checkpoint_bit_for_bit(data, validation, tmp_path):
    whole = AlternatingAutoencoder(epochs=6).fit(data, validation=validation)
    AlternatingAutoencoder(epochs=3).fit(data, validation=validation, checkpoint=tmp_path)
    resumed = AlternatingAutoencoder(epochs=6).fit(data, validation=validation, checkpoint=tmp_path)
    assert same_weights(weights(whole.module_), weights(resumed.module_))
    assert whole.history_.column("validation") == resumed.history_.column("validation")
    assert whole.history_.column("encoder_loss") == resumed.history_.column("encoder_loss")


def test_a_new_model_on_the_base_is_saved_and_loaded_like_every_model(data, tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS, "alternating", AlternatingAutoencoder)
    model = AlternatingAutoencoder(epochs=2).fit(data)
    loaded = aerec.load(aerec.save(model, tmp_path / "alt"))
    np.testing.assert_array_equal(model.score(data[:9]), loaded.score(data[:9]))


# -- warm starts -------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda epochs: MultVAE(hidden=8, latent=4, epochs=epochs, total_anneal_steps=5, device="cpu"),
    lambda epochs: CDAE(hidden=4, epochs=epochs, fold_in_steps=2, patience=None, device="cpu"),
    lambda epochs: AutoRec(kind="user", hidden=4, epochs=epochs, device="cpu"),
    lambda epochs: AlternatingAutoencoder(epochs=epochs),
], ids=["mult_vae", "cdae", "autorec", "alternating"])
def test_epochs_one_repeated_with_warm_start_equals_one_longer_fit(make, data, validation):
    ratings = isinstance(make(1), AutoRec)
    kwargs = {} if ratings else {"validation": validation}
    whole = make(4).fit(data, **kwargs)
    stepwise = make(1).fit(data, **kwargs)
    for _ in range(3):
        stepwise.fit(data, warm_start=True, **kwargs)
    assert same_weights(weights(whole.module_), weights(stepwise.module_))
    assert whole.history_.column("loss") == stepwise.history_.column("loss")
    assert whole.history_.best_epoch == stepwise.history_.best_epoch and whole.n_updates_ == stepwise.n_updates_


def test_warm_start_refuses_other_data_and_a_cold_fit_starts_afresh(data):
    model = MultDAE(hidden=8, latent=4, epochs=1, device="cpu").fit(data)
    with pytest.raises(ValueError, match=r"warm_start=True with train of shape \(60, 40\)"):
        model.fit(data[:60], warm_start=True)
    first = weights(MultDAE(hidden=8, latent=4, epochs=1, device="cpu").fit(data).module_)
    assert same_weights(first, weights(model.fit(data).module_))


# -- deprecated names still work for one release ---------------------------------------------------------
def test_old_names_warn_and_still_work(data):
    with pytest.warns(DeprecationWarning, match="hidden_size"):
        cdae = CDAE(hidden_size=6, epochs=1, device="cpu")
    assert cdae.hidden == 6
    with pytest.warns(DeprecationWarning, match="hidden_size"):
        assert cdae.hidden_size == 6
    autorec = AutoRec(kind="user", hidden=4, epochs=1, device="cpu").fit(data)
    with pytest.warns(DeprecationWarning, match="net_"):
        assert autorec.net_ is autorec.module_
    dae = MultDAE(hidden=8, latent=4, dropout=0.0, epochs=1, device="cpu").fit(data)
    from aerec.data.batching import RowBatch

    batch = RowBatch(np.arange(5), data[:5])
    with pytest.warns(DeprecationWarning, match="step_loss"):
        old = dae.step_loss(dae.module_, batch, TrainingState())
    assert torch.equal(old["loss"], dae.batch_loss(dae.module_, batch, TrainingState())["loss"])
    with pytest.warns(DeprecationWarning, match="check_params"):
        dae.validate_params()
    with pytest.warns(DeprecationWarning, match="check"):
        TrainConfig().validate()
    with pytest.warns(DeprecationWarning, match="validation_metric"):
        train(torch.nn.Linear(40, 40), data, lambda m, b, s: {"loss": m(b.dense).square().mean()},
              TrainConfig(epochs=1, progress=False, device="cpu"), validate=lambda m: 1.0)
    import aerec.core

    with pytest.warns(DeprecationWarning, match="aerec.models.Autoencoder"):
        assert aerec.core.Autoencoder is Autoencoder


def test_a_model_file_written_with_net_loads_as_module(data, tmp_path):
    import json

    model = AutoRec(kind="user", hidden=4, epochs=1, device="cpu").fit(data)
    aerec.save(model, tmp_path / "m")
    config = tmp_path / "m" / "config.json"
    document = json.loads(config.read_text())
    document["state"]["fitted"]["net_"] = document["state"]["fitted"].pop("module_")
    config.write_text(json.dumps(document))
    np.testing.assert_array_equal(aerec.load(tmp_path / "m").score(data[:3]), model.score(data[:3]))


# -- the general Autoencoder is a saved model like the others ---------------------------------------------
@pytest.mark.parametrize("kind", ["undercomplete", "sparse", "denoising", "contractive", "variational"])
def test_every_autoencoder_kind_round_trips_through_a_model_file(kind, tmp_path):
    X = np.random.default_rng(0).random((64, 12)).astype(np.float32)
    extra = {"activation": "sigmoid"} if kind == "sparse" else {}
    model = Autoencoder(kind=kind, hidden=(6, 3), epochs=3, device="cpu", **extra).fit(X)
    loaded = aerec.load(aerec.save(model, tmp_path / kind))
    np.testing.assert_array_equal(model.embed(X), loaded.embed(X))
    np.testing.assert_array_equal(model.anomaly_score(X), loaded.anomaly_score(X))
    assert loaded.get_params() == model.get_params()


# -- the import graph ------------------------------------------------------------------------------------
def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (also inside functions), read from the source."""
    def name_of(path: Path) -> str:
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    files = {name_of(path): path for path in PACKAGE.rglob("*.py")}
    graph = {module: set() for module in files}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rsplit(".", 1)[0] if "." in target else ""
                if target and target != module:
                    graph[module].add(target)
    return graph


def test_the_package_has_no_import_cycles():
    graph = import_graph()

    def reachable(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    cycles = sorted(module for module in graph if module in reachable(module))
    assert cycles == []


def test_no_module_imports_the_package_init_and_core_imports_no_estimator():
    graph = import_graph()
    assert [m for m, targets in graph.items() if "aerec" in targets and m not in ("aerec.__main__",)] == []
    core = {m: t for m, t in graph.items() if m.startswith("aerec.core")}
    # aerec.core's __init__ reaches the moved Autoencoder lazily, for its deprecated name only
    assert all(t <= {"aerec.core.layers", "aerec.core.losses", "aerec.core.corruption", "aerec.core.penalties",
                     "aerec.core.variational", "aerec._torch", "aerec.params", "aerec.models.autoencoder"}
               for t in core.values()), core


def test_importing_the_core_layers_loads_no_training_loop():
    code = ("import sys, aerec.core.layers, aerec.core.corruption, aerec.core.variational; "
            "print(sorted(m for m in ('aerec.training', 'aerec.checkpoint', 'aerec.distributed', 'aerec.models') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
