"""Run by tests/test_distributed.py under torchrun (2 processes, gloo): train one model, rank 0 saves its weights.

Usage: python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_worker.py MODEL OUT
"""

import os
import sys

import torch

from aerec.distributed import init_from_environment, rank_and_world


def build(name: str):
    """The model and its training data, identical in every process and in the single-process reference."""
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from conftest import random_implicit_csr  # noqa: E402

    from aerec.models import CDAE, AutoRec, MultDAE

    if name == "cdae":  # plain SGD, deterministic loss: also sensitive to the loss's overall scale
        rows = random_implicit_csr(n_users=90, n_items=40, density=0.2, seed=5)
        return CDAE(hidden=8, corruption=0.0, negative_sampling=None, l2=1e-3, epochs=3, batch_size=25, lr=0.5,
                    optimizer="sgd", seed=0, device="cpu"), rows
    if name == "mult_dae":
        rows = random_implicit_csr(n_users=90, n_items=40, density=0.2, seed=3)
        return MultDAE(hidden=16, latent=8, dropout=0.0, epochs=3, batch_size=25, lr=1e-2, seed=0, device="cpu"), rows
    ratings = random_implicit_csr(n_users=45, n_items=30, density=0.3, seed=4)
    ratings.data = (torch.randint(1, 6, (ratings.nnz,), generator=torch.Generator().manual_seed(0)).numpy()
                    .astype("float32"))
    return AutoRec(kind="user", hidden=8, epochs=6, seed=0, device="cpu"), ratings


def weights(model) -> dict:
    module = model.module_ if hasattr(model, "module_") else model.net_
    return {name: value.detach().clone().contiguous() for name, value in module.state_dict().items()}


def main(name: str, out: str) -> None:
    torch.set_num_threads(1)
    init_from_environment("cpu")
    rank, world = rank_and_world()
    if world != 2:
        raise SystemExit(f"expected 2 processes, got {world}")
    model, rows = build(name)
    model.fit(rows)
    if rank == 0:
        torch.save(weights(model), out)
    # both ranks leave together: a rank tearing gloo down while its peer still talks can abort at exit
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    # Everything is written; leave without interpreter teardown, where gloo's threads have been seen
    # to abort the process now and then ("terminate called without an active exception", 1 run in ~20 in CI).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
