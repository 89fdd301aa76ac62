"""RecVAE reference: a faithful port of the authors' code, the yardstick for aerec's RecVAE.

Port of ilya-shenbin/RecVAE, branch master, commit 05fdd52 ("naming fixed"):
``model.py`` (``swish``, ``log_norm_pdf``, ``CompositePrior``, ``Encoder``,
``VAE``) is copied essentially verbatim, ``run.py``'s ``generate`` / ``Batch`` /
``evaluate`` / ``run`` and its training loop are copied in spirit and order of
operations, and ``utils.py``'s ``ndcg`` / ``recall`` (themselves from
dawenl/vae_cf) are ported. Defaults are the README's ML-20M command
(``--n-epochs 50 --gamma 0.005``, with run.py's hidden 600, latent 200, batch
500, lr 5e-4, 3 encoder passes and 1 decoder pass per epoch). The same random
numbers are drawn in the same order as run.py: ``random``, ``np.random`` and
``torch`` seeded once, the model and then ``model_best`` built (both draw their
``nn.Linear`` initialisations from torch's global generator), then per pass an
``np.random.shuffle`` of the rows and torch's dropout masks and
reparameterisation noise.

Differences from the reference, all deliberate:

- device: CPU by default, any torch device through ``device`` (run.py hard-codes ``cuda:0``);
- seed: an argument (run.py always uses 1337, which stays the default of ``fit_reference``);
- run.py's per-epoch "train ndcg@100 on 1% of the training rows" is not computed: it takes the first 1% of
  the rows without shuffling and runs the model in eval mode, so it draws no random numbers, changes no
  state and only feeds a printed number;
- the splits come in as scipy CSR matrices instead of ``utils.get_data``'s csv files, and users with no
  held-out item are left out of validation and test (the reference would average in a NaN for them, as
  0/0; ``aerec.evaluation.evaluate_ranking`` skips them too);
- ``np.argpartition`` instead of ``bottleneck.argpartition`` (bottleneck is not installed; both put the k
  largest scores first, in arbitrary order, before the same argsort);
- the optimizers get lists of parameters instead of Python sets (a set's order follows object ids and
  changes between runs; Adam is elementwise, so the order changes no number);
- only the alternating schedule with ``gamma`` is kept: ``--beta``, ``--not-alternating`` and ImplicitSLIM
  (all off in the README's RecVAE command) are left out;
- ``fit_reference`` can stop early on a training-time budget (``max_epochs_seconds``, off by default) and
  times each epoch's training (the 3 + 1 passes and ``update_prior``) without the validation.

License: the reference is under the Apache License, Version 2.0 (LICENSE at the root of
https://github.com/ilya-shenbin/RecVAE); this file is a modified port of it, with the changes listed above.
Its ``ndcg`` / ``recall`` come from https://github.com/dawenl/vae_cf (Apache-2.0 as well).

Run from the repository root:

    AEREC_DATA_DIR=/work/shared/data .venv/bin/python evaluation/recvae_reference.py --dataset ml-100k --seeds 98765 1
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from copy import deepcopy

import numpy as np
import torch
from torch import nn, optim
from torch.nn import functional as F

DEFAULT_SEED = 1337  # run.py's fixed seed


# -- model.py (verbatim but for formatting and a tuple for the default mixture weights) --------------------------------
def swish(x):
    return x.mul(torch.sigmoid(x))


def log_norm_pdf(x, mu, logvar):
    return -0.5 * (logvar + np.log(2 * np.pi) + (x - mu).pow(2) / logvar.exp())


class CompositePrior(nn.Module):
    def __init__(self, hidden_dim, latent_dim, input_dim, mixture_weights=(3 / 20, 3 / 4, 1 / 10)):
        super().__init__()

        self.mixture_weights = mixture_weights

        self.mu_prior = nn.Parameter(torch.Tensor(1, latent_dim), requires_grad=False)
        self.mu_prior.data.fill_(0)

        self.logvar_prior = nn.Parameter(torch.Tensor(1, latent_dim), requires_grad=False)
        self.logvar_prior.data.fill_(0)

        self.logvar_uniform_prior = nn.Parameter(torch.Tensor(1, latent_dim), requires_grad=False)
        self.logvar_uniform_prior.data.fill_(10)

        # Its own random initialisation (drawn from torch's generator): until the first update_prior() the
        # "old posterior" component is an untrained encoder, not a copy of the model's.
        self.encoder_old = Encoder(hidden_dim, latent_dim, input_dim)
        self.encoder_old.requires_grad_(False)

    def forward(self, x, z):
        post_mu, post_logvar = self.encoder_old(x, 0)

        stnd_prior = log_norm_pdf(z, self.mu_prior, self.logvar_prior)
        post_prior = log_norm_pdf(z, post_mu, post_logvar)
        unif_prior = log_norm_pdf(z, self.mu_prior, self.logvar_uniform_prior)

        gaussians = [stnd_prior, post_prior, unif_prior]
        gaussians = [g.add(np.log(w)) for g, w in zip(gaussians, self.mixture_weights)]

        density_per_gaussian = torch.stack(gaussians, dim=-1)

        return torch.logsumexp(density_per_gaussian, dim=-1)


class Encoder(nn.Module):
    def __init__(self, hidden_dim, latent_dim, input_dim, eps=1e-1):
        super().__init__()

        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.ln1 = nn.LayerNorm(hidden_dim, eps=eps)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.ln2 = nn.LayerNorm(hidden_dim, eps=eps)
        self.fc3 = nn.Linear(hidden_dim, hidden_dim)
        self.ln3 = nn.LayerNorm(hidden_dim, eps=eps)
        self.fc4 = nn.Linear(hidden_dim, hidden_dim)
        self.ln4 = nn.LayerNorm(hidden_dim, eps=eps)
        self.fc5 = nn.Linear(hidden_dim, hidden_dim)
        self.ln5 = nn.LayerNorm(hidden_dim, eps=eps)
        self.fc_mu = nn.Linear(hidden_dim, latent_dim)
        self.fc_logvar = nn.Linear(hidden_dim, latent_dim)

    def forward(self, x, dropout_rate):
        norm = x.pow(2).sum(dim=-1).sqrt()
        x = x / norm[:, None]

        x = F.dropout(x, p=dropout_rate, training=self.training)

        h1 = self.ln1(swish(self.fc1(x)))
        h2 = self.ln2(swish(self.fc2(h1) + h1))
        h3 = self.ln3(swish(self.fc3(h2) + h1 + h2))
        h4 = self.ln4(swish(self.fc4(h3) + h1 + h2 + h3))
        h5 = self.ln5(swish(self.fc5(h4) + h1 + h2 + h3 + h4))
        return self.fc_mu(h5), self.fc_logvar(h5)


class VAE(nn.Module):
    def __init__(self, hidden_dim, latent_dim, input_dim):
        super().__init__()

        self.encoder = Encoder(hidden_dim, latent_dim, input_dim)
        self.prior = CompositePrior(hidden_dim, latent_dim, input_dim)
        self.decoder = nn.Linear(latent_dim, input_dim)

    def reparameterize(self, mu, logvar):
        if self.training:
            std = torch.exp(0.5 * logvar)
            eps = torch.randn_like(std)
            return eps.mul(std).add_(mu)
        else:
            return mu

    def forward(self, user_ratings, beta=None, gamma=1, dropout_rate=0.5, calculate_loss=True):
        mu, logvar = self.encoder(user_ratings, dropout_rate=dropout_rate)
        z = self.reparameterize(mu, logvar)
        x_pred = self.decoder(z)

        if calculate_loss:
            if gamma:
                norm = user_ratings.sum(dim=-1)
                kl_weight = gamma * norm  # per user: gamma times the user's number of interactions
            elif beta:
                kl_weight = beta

            mll = (F.log_softmax(x_pred, dim=-1) * user_ratings).sum(dim=-1).mean()
            kld = (log_norm_pdf(z, mu, logvar) - self.prior(user_ratings, z)).sum(dim=-1).mul(kl_weight).mean()
            negative_elbo = -(mll - kld)

            return (mll, kld), negative_elbo

        else:
            return x_pred

    def update_prior(self):
        self.prior.encoder_old.load_state_dict(deepcopy(self.encoder.state_dict()))


# -- utils.py: metrics (from vae_cf), np.argpartition for bottleneck's -------------------------------------------------
def ndcg(X_pred, heldout_batch, k=100):
    """Normalized discounted cumulative gain@k for binary relevance (0 in heldout_batch: not relevant)."""
    batch_users = X_pred.shape[0]
    idx_topk_part = np.argpartition(-X_pred, k, axis=1)
    topk_part = X_pred[np.arange(batch_users)[:, np.newaxis], idx_topk_part[:, :k]]
    idx_part = np.argsort(-topk_part, axis=1)
    # X_pred[np.arange(batch_users)[:, np.newaxis], idx_topk] is the sorted topk predicted score
    idx_topk = idx_topk_part[np.arange(batch_users)[:, np.newaxis], idx_part]
    # build the discount template
    tp = 1.0 / np.log2(np.arange(2, k + 2))

    DCG = (heldout_batch[np.arange(batch_users)[:, np.newaxis], idx_topk].toarray() * tp).sum(axis=1)
    IDCG = np.array([(tp[: min(n, k)]).sum() for n in heldout_batch.getnnz(axis=1)])
    return DCG / IDCG


def recall(X_pred, heldout_batch, k=100):
    batch_users = X_pred.shape[0]

    idx = np.argpartition(-X_pred, k, axis=1)
    X_pred_binary = np.zeros_like(X_pred, dtype=bool)
    X_pred_binary[np.arange(batch_users)[:, np.newaxis], idx[:, :k]] = True

    X_true_binary = (heldout_batch > 0).toarray()
    tmp = (np.logical_and(X_true_binary, X_pred_binary).sum(axis=1)).astype(np.float32)
    recall = tmp / np.minimum(k, X_true_binary.sum(axis=1))
    return recall


# -- run.py: batches, evaluation, training passes (device passed instead of run.py's global) ---------------------------
def generate(batch_size, device, data_in, data_out=None, shuffle=False, samples_perc_per_epoch=1):
    assert 0 < samples_perc_per_epoch <= 1

    total_samples = data_in.shape[0]
    samples_per_epoch = int(total_samples * samples_perc_per_epoch)

    if shuffle:
        idxlist = np.arange(total_samples)
        np.random.shuffle(idxlist)
        idxlist = idxlist[:samples_per_epoch]
    else:
        idxlist = np.arange(samples_per_epoch)

    for st_idx in range(0, samples_per_epoch, batch_size):
        end_idx = min(st_idx + batch_size, samples_per_epoch)
        idx = idxlist[st_idx:end_idx]

        yield Batch(device, idx, data_in, data_out)


class Batch:
    def __init__(self, device, idx, data_in, data_out=None):
        self._device = device
        self._idx = idx
        self._data_in = data_in
        self._data_out = data_out

    def get_idx(self):
        return self._idx

    def get_idx_to_dev(self):
        return torch.LongTensor(self.get_idx()).to(self._device)

    def get_ratings(self, is_out=False):
        data = self._data_out if is_out else self._data_in
        return data[self._idx]

    def get_ratings_to_dev(self, is_out=False):
        return torch.Tensor(self.get_ratings(is_out).toarray()).to(self._device)


def evaluate(model, data_in, data_out, metrics, device, samples_perc_per_epoch=1, batch_size=500):
    metrics = deepcopy(metrics)
    model.eval()

    for m in metrics:
        m["score"] = []

    for batch in generate(batch_size=batch_size, device=device, data_in=data_in, data_out=data_out,
                          samples_perc_per_epoch=samples_perc_per_epoch):
        ratings_in = batch.get_ratings_to_dev()
        ratings_out = batch.get_ratings(is_out=True)

        ratings_pred = model(ratings_in, calculate_loss=False).cpu().detach().numpy()

        if data_in is not data_out:
            ratings_pred[batch.get_ratings().nonzero()] = -np.inf

        for m in metrics:
            m["score"].append(m["metric"](ratings_pred, ratings_out, k=m["k"]))

    for m in metrics:
        m["score"] = np.concatenate(m["score"]).mean()

    return [x["score"] for x in metrics]


def run(model, opts, train_data, batch_size, n_epochs, beta, gamma, dropout_rate, device):
    # zero_grad only of the optimizers in `opts`: the other half's gradients pile up over these passes (the encoder
    # still gets gradients in a decoder pass and vice versa), but they are zeroed again before that half's next step.
    model.train()
    for _ in range(n_epochs):
        for batch in generate(batch_size=batch_size, device=device, data_in=train_data, shuffle=True):
            ratings = batch.get_ratings_to_dev()

            for optimizer in opts:
                optimizer.zero_grad()

            _, loss = model(ratings, beta=beta, gamma=gamma, dropout_rate=dropout_rate)
            loss.backward()

            for optimizer in opts:
                optimizer.step()


# -- run.py's main loop as functions ---------------------------------------------------------------------------------
def _seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _setup(train, seed, hidden_dim, latent_dim, lr, device):
    """Seed, then build model, model_best and the two optimizers in run.py's order."""
    _seed_everything(seed)
    device = torch.device(device)
    model_kwargs = {"hidden_dim": hidden_dim, "latent_dim": latent_dim, "input_dim": train.shape[1]}
    model = VAE(**model_kwargs).to(device)
    model_best = VAE(**model_kwargs).to(device)  # built as run.py does: its initialisation draws random numbers
    optimizer_encoder = optim.Adam(list(model.encoder.parameters()), lr=lr)
    optimizer_decoder = optim.Adam(list(model.decoder.parameters()), lr=lr)
    return device, model, model_best, optimizer_encoder, optimizer_decoder


def _train_epoch(model, optimizer_encoder, optimizer_decoder, learning_kwargs, n_enc_epochs, n_dec_epochs, device):
    """One epoch of run.py's alternating schedule; returns its wall-clock seconds."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run(opts=[optimizer_encoder], n_epochs=n_enc_epochs, dropout_rate=0.5, device=device, **learning_kwargs)
    model.update_prior()
    run(opts=[optimizer_decoder], n_epochs=n_dec_epochs, dropout_rate=0, device=device, **learning_kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _with_heldout(fold_in, heldout):
    """Rows with at least one held-out item (the reference's ndcg would be 0/0 for the others)."""
    keep = np.flatnonzero(np.diff(heldout.indptr) > 0)
    return fold_in[keep], heldout[keep]


def fit_reference(train, validation_fold_in, validation_heldout, *, seed=DEFAULT_SEED, n_epochs=50, hidden_dim=600,
                  latent_dim=200, batch_size=500, lr=5e-4, gamma=0.005, n_enc_epochs=3, n_dec_epochs=1, device="cpu",
                  max_epochs_seconds=None) -> dict:
    """Train as run.py does, keeping the state of the epoch with the best validation NDCG@100.

    ``train`` and the validation matrices are scipy CSR float32 (users x items, same item columns).
    ``max_epochs_seconds``: stop after the epoch at which the summed training seconds reach it (None: all epochs).
    Returns ``{"model", "best_epoch" (1-based), "validation_curve", "epoch_seconds", "best_validation"}``.
    """
    if gamma is None or not gamma > 0:
        raise ValueError(f"gamma={gamma!r}; the port keeps run.py's gamma-scaled KL only, so it must be > 0")
    device, model, model_best, optimizer_encoder, optimizer_decoder = _setup(train, seed, hidden_dim, latent_dim, lr,
                                                                             device)
    valid_in_data, valid_out_data = _with_heldout(validation_fold_in, validation_heldout)
    learning_kwargs = {"model": model, "train_data": train, "batch_size": batch_size, "beta": None, "gamma": gamma}
    metrics = [{"metric": ndcg, "k": 100}]

    best_ndcg = -np.inf
    best_epoch = None
    valid_scores, epoch_seconds = [], []
    for epoch in range(n_epochs):
        epoch_seconds.append(_train_epoch(model, optimizer_encoder, optimizer_decoder, learning_kwargs, n_enc_epochs,
                                          n_dec_epochs, device))
        # run.py evaluates train ndcg@100 on the first 1% of the rows here (eval mode, no shuffle): no random numbers
        # are drawn and nothing changes, so it is skipped.
        valid_scores.append(float(evaluate(model, valid_in_data, valid_out_data, metrics, device, 1)[0]))

        if valid_scores[-1] > best_ndcg:
            best_ndcg = valid_scores[-1]
            best_epoch = epoch + 1
            model_best.load_state_dict(deepcopy(model.state_dict()))

        if max_epochs_seconds is not None and sum(epoch_seconds) >= max_epochs_seconds:
            break

    model_best.eval()
    return {"model": model_best, "best_epoch": best_epoch, "validation_curve": valid_scores,
            "epoch_seconds": epoch_seconds, "best_validation": float(best_ndcg)}


def score_reference(model, fold_in, batch_size=500) -> np.ndarray:
    """Scores (users x items, float32) of the CSR rows ``fold_in``: ``model(x, calculate_loss=False)``, no masking."""
    model.eval()
    device = next(model.parameters()).device
    out = np.empty(fold_in.shape, dtype=np.float32)
    with torch.no_grad():
        for batch in generate(batch_size=batch_size, device=device, data_in=fold_in):
            out[batch.get_idx()] = model(batch.get_ratings_to_dev(), calculate_loss=False).cpu().numpy()
    return out


def time_epochs(train, *, n_epochs=2, seed=0, device="cpu", **hyper) -> list[float]:
    """Seconds of each of ``n_epochs`` training epochs (no validation) on ``train``, for the speed benchmark.

    ``hyper``: any of hidden_dim, latent_dim, batch_size, lr, gamma, n_enc_epochs, n_dec_epochs.
    """
    settings = {"hidden_dim": 600, "latent_dim": 200, "batch_size": 500, "lr": 5e-4, "gamma": 0.005,
                "n_enc_epochs": 3, "n_dec_epochs": 1}
    unknown = set(hyper) - set(settings)
    if unknown:
        raise TypeError(f"unknown hyperparameters: {sorted(unknown)}")
    settings.update(hyper)
    device, model, _, optimizer_encoder, optimizer_decoder = _setup(train, seed, settings["hidden_dim"],
                                                                    settings["latent_dim"], settings["lr"], device)
    learning_kwargs = {"model": model, "train_data": train, "batch_size": settings["batch_size"], "beta": None,
                       "gamma": settings["gamma"]}
    return [_train_epoch(model, optimizer_encoder, optimizer_decoder, learning_kwargs, settings["n_enc_epochs"],
                         settings["n_dec_epochs"], device) for _ in range(n_epochs)]


def test_scores(model, test_fold_in, test_heldout, device=None) -> dict:
    """run.py's final evaluation: NDCG@100, Recall@20, Recall@50 of the test users, fold-in items masked."""
    device = device or next(model.parameters()).device
    test_in_data, test_out_data = _with_heldout(test_fold_in, test_heldout)
    test_metrics = [{"metric": ndcg, "k": 100}, {"metric": recall, "k": 20}, {"metric": recall, "k": 50}]
    final_scores = evaluate(model, test_in_data, test_out_data, test_metrics, device)
    return {f"{m['metric'].__name__}@{m['k']}": float(score) for m, score in zip(test_metrics, final_scores)}


# -- command line ----------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    from aerec.data import load_movielens, strong_generalization
    from aerec.data.datasets import STRONG_N_HELDOUT

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k", choices=sorted(STRONG_N_HELDOUT), help="default: %(default)s")
    parser.add_argument("--seeds", nargs="+", type=int, default=[98765],
                        help="split seeds; each also seeds the training, as run.py's 1337 does (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=50, help="default: %(default)s (README)")
    parser.add_argument("--gamma", type=float, default=0.005, help="default: %(default)s (README)")
    parser.add_argument("--device", default="cpu", help="default: %(default)s")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    data = load_movielens(args.dataset)
    print(f"{args.dataset}: {data}; RecVAE reference port, {args.epochs} epochs, gamma {args.gamma}, "
          f"device {args.device}, {torch.get_num_threads()} thread(s)", flush=True)
    for seed in args.seeds:
        split = strong_generalization(data, STRONG_N_HELDOUT[args.dataset], seed=seed)
        fit = fit_reference(split.train.matrix, split.validation_fold_in.matrix, split.validation_heldout.matrix,
                            seed=seed, n_epochs=args.epochs, gamma=args.gamma, device=args.device)
        scores = test_scores(fit["model"], split.test_fold_in.matrix, split.test_heldout.matrix)
        print(f"seed {seed}: Recall@20 {scores['recall@20']:.4f}, Recall@50 {scores['recall@50']:.4f}, "
              f"NDCG@100 {scores['ndcg@100']:.4f}; best epoch {fit['best_epoch']} "
              f"(validation NDCG@100 {fit['best_validation']:.4f}), "
              f"{np.mean(fit['epoch_seconds']):.3f} s/epoch training", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
