"""Tests for aerec.evaluation: hand-computed metrics, a brute-force reference, and implicit."""

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aerec.evaluation import (
    RANKING_METRICS,
    coverage,
    evaluate_ranking,
    hit_rate_at_k,
    map_at_k,
    mae,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    rmse,
)
from aerec.ranking import mark_unavailable, top_n

# --------------------------------------------------------------------------- helpers


class LinearModel:
    """scores = X @ W + bias: depends on the fold-in rows only, like an autoencoder."""

    def __init__(self, weights, bias, as_numpy=False):
        self.weights, self.bias, self.as_numpy = weights, bias, as_numpy

    def full_scores(self, user_items):
        return user_items.toarray() @ self.weights + self.bias

    def score_tensor(self, user_items):
        scores = self.full_scores(user_items)
        return scores if self.as_numpy else torch.from_numpy(scores)


def random_model(n_items, rng, as_numpy=False):
    return LinearModel(rng.standard_normal((n_items, n_items)), rng.standard_normal(n_items), as_numpy)


def random_split(n_users, n_items, rng, p_fold_in=0.3, p_heldout=0.2):
    """Disjoint random fold-in and held-out matrices (ratings 1..5); user 0 always holds out item 0."""
    cell = rng.choice(3, size=(n_users, n_items), p=[1 - p_fold_in - p_heldout, p_fold_in, p_heldout])
    cell[0, 0] = 2  # something to rank against
    ratings = rng.integers(1, 6, size=(n_users, n_items)).astype(np.float32)
    return sp.csr_matrix(np.where(cell == 1, ratings, 0)), sp.csr_matrix(np.where(cell == 2, ratings, 0))


def brute_force(scores, fold_in, heldout, k, denominator="min"):
    """Per-user metrics with argsort and Python loops, written from the definitions."""
    out = {name: [] for name in ("recall", "ndcg", "precision", "map", "hit_rate", "mrr")}
    users, covered = [], set()
    for u in range(scores.shape[0]):
        relevant = set(heldout[u].indices.tolist())
        if not relevant:
            continue
        users.append(u)
        seen = set(fold_in[u].indices.tolist())
        ranking = [i for i in np.argsort(-scores[u], kind="stable") if i not in seen][:k]
        covered.update(ranking)
        hits = [item in relevant for item in ranking]
        n_hits, r = sum(hits), len(relevant)
        out["recall"].append(n_hits / (min(k, r) if denominator == "min" else r))
        dcg = sum(1 / math.log2(rank + 2) for rank, hit in enumerate(hits) if hit)
        out["ndcg"].append(dcg / sum(1 / math.log2(rank + 2) for rank in range(min(k, r))))
        out["precision"].append(n_hits / k)
        out["hit_rate"].append(float(n_hits > 0))
        out["mrr"].append(next((1 / (rank + 1) for rank, hit in enumerate(hits) if hit), 0.0))
        ap = sum(sum(hits[: rank + 1]) / (rank + 1) for rank, hit in enumerate(hits) if hit)
        out["map"].append(ap / min(k, r))
    return {name: np.array(values) for name, values in out.items()}, np.array(users), len(covered) / scores.shape[1]


# --------------------------------------------------------------------------- rating errors


def test_rmse_and_mae_by_hand():
    # errors 1, 0, -2 -> MAE (1 + 0 + 2) / 3 = 1; RMSE sqrt((1 + 0 + 4) / 3) = sqrt(5/3)
    assert mae([2, 2, 1], [1, 2, 3]) == 1.0
    assert rmse([2, 2, 1], [1, 2, 3]) == pytest.approx(math.sqrt(5 / 3), abs=1e-12)
    assert rmse(torch.tensor([1.0]), np.array([1.0])) == 0.0


@pytest.mark.parametrize("function", [rmse, mae])
def test_rating_errors_reject_bad_input(function):
    with pytest.raises(ValueError, match="y_true has 2 values but y_pred has 3"):
        function([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match=r"y_true must be a non-empty 1-D array, got shape \(0,\)"):
        function([], [])
    with pytest.raises(ValueError, match=r"y_pred must be a non-empty 1-D array, got shape \(1, 2\)"):
        function([1, 2], [[1, 2]])
    with pytest.raises(ValueError, match=r"y_pred contains 1 non-finite value\(s\)"):
        function([1, 2], [1, np.nan])


# --------------------------------------------------------------------------- metrics by hand

# User 0: held-out {a, b, c} (R = 3), top-5 = [a, x, b, y, z] -> hits at ranks 0 and 2.
# User 1: held-out {d}       (R = 1), top-5 = [x, y, z, d, w] -> hit at rank 3.
HITS = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 1, 0]], dtype=bool)
N_RELEVANT = np.array([3, 1])


def test_recall_by_hand():
    # k=5: user 0 has 2 hits / min(5, 3) = 2/3; user 1 has 1 hit / min(5, 1) = 1
    np.testing.assert_allclose(recall_at_k(HITS, N_RELEVANT, 5), [2 / 3, 1.0], atol=1e-12)
    # k=2: user 0 has 1 hit in [a, x]; Liang: 1 / min(2, 3) = 1/2, "all": 1 / 3; user 1: 0
    np.testing.assert_allclose(recall_at_k(HITS, N_RELEVANT, 2), [1 / 2, 0.0], atol=1e-12)
    np.testing.assert_allclose(recall_at_k(HITS, N_RELEVANT, 2, denominator="all"), [1 / 3, 0.0], atol=1e-12)


def test_ndcg_by_hand():
    # user 0, k=5: DCG = 1/log2(2) + 1/log2(4) = 1 + 1/2 = 1.5;
    #   IDCG = 1/log2(2) + 1/log2(3) + 1/log2(4) = 1.5 + 0.6309297535714575 = 2.1309297535714575
    # user 1, k=5: DCG = 1/log2(5) = 0.43067655807339306; IDCG = 1/log2(2) = 1
    np.testing.assert_allclose(
        ndcg_at_k(HITS, N_RELEVANT, 5), [1.5 / 2.1309297535714575, 0.43067655807339306], atol=1e-12
    )
    # k=1: user 0 hit at rank 0 -> 1/1; user 1 no hit -> 0
    np.testing.assert_allclose(ndcg_at_k(HITS, N_RELEVANT, 1), [1.0, 0.0], atol=1e-12)


def test_precision_hit_rate_mrr_by_hand():
    # precision@5: 2/5, 1/5; precision@3: 2/3, 0/3
    np.testing.assert_allclose(precision_at_k(HITS, N_RELEVANT, 5), [0.4, 0.2], atol=1e-12)
    np.testing.assert_allclose(precision_at_k(HITS, N_RELEVANT, 3), [2 / 3, 0.0], atol=1e-12)
    # hit rate@3: user 1's only hit is at rank 3 (the 4th item) -> 0
    np.testing.assert_array_equal(hit_rate_at_k(HITS, N_RELEVANT, 3), [1.0, 0.0])
    np.testing.assert_array_equal(hit_rate_at_k(HITS, N_RELEVANT, 4), [1.0, 1.0])
    # MRR@5: first hits at ranks 0 and 3 -> 1/1 and 1/4; MRR@3: 1 and 0
    np.testing.assert_allclose(mrr_at_k(HITS, N_RELEVANT, 5), [1.0, 0.25], atol=1e-12)
    np.testing.assert_allclose(mrr_at_k(HITS, N_RELEVANT, 3), [1.0, 0.0], atol=1e-12)


def test_map_by_hand():
    # user 0, k=5: precision@1 = 1/1 at rank 0, precision@3 = 2/3 at rank 2 -> (1 + 2/3) / min(5, 3) = 5/9
    # user 1, k=5: precision@4 = 1/4 at rank 3 -> (1/4) / min(5, 1) = 1/4
    np.testing.assert_allclose(map_at_k(HITS, N_RELEVANT, 5), [5 / 9, 0.25], atol=1e-12)
    # k=2: user 0 -> (1/1) / min(2, 3) = 1/2; user 1 -> 0
    np.testing.assert_allclose(map_at_k(HITS, N_RELEVANT, 2), [0.5, 0.0], atol=1e-12)


def test_coverage_by_hand():
    # distinct ids {0, 1, 2, 3} (the -1 slot is ignored) out of 10 items
    assert coverage(np.array([[0, 1, 2], [2, 3, -1]]), 10) == 0.4
    assert coverage(np.array([[-1]]), 3) == 0.0
    with pytest.raises(ValueError, match=r"top_ids must be integers in \[-1, 3\), got values in \[0, 3\]"):
        coverage(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="n_items=0 is out of range"):
        coverage(np.array([0]), 0)


@pytest.mark.parametrize("name", RANKING_METRICS)
def test_metrics_accept_torch_and_return_float64(name):
    function = {"recall": recall_at_k, "ndcg": ndcg_at_k, "precision": precision_at_k,
                "map": map_at_k, "hit_rate": hit_rate_at_k, "mrr": mrr_at_k}[name]  # fmt: skip
    from_numpy = function(HITS, N_RELEVANT, 4)
    from_torch = function(torch.from_numpy(HITS), torch.from_numpy(N_RELEVANT), 4)
    assert from_numpy.dtype == np.float64 and from_numpy.shape == (2,)
    np.testing.assert_array_equal(from_numpy, from_torch)


@pytest.mark.parametrize("function", [recall_at_k, ndcg_at_k, precision_at_k, map_at_k, hit_rate_at_k, mrr_at_k])
def test_metric_inputs_are_checked(function):
    with pytest.raises(ValueError, match="k=6 is out of range; expected an integer >= 1 and <= 5"):
        function(HITS, N_RELEVANT, 6)
    with pytest.raises(ValueError, match="k=0 is out of range"):
        function(HITS, N_RELEVANT, 0)
    with pytest.raises(ValueError, match="k=2.0 is not valid"):
        function(HITS, N_RELEVANT, 2.0)
    with pytest.raises(ValueError, match="n_relevant must be >= 1 for every user, got minimum 0"):
        function(HITS, np.array([3, 0]), 2)
    with pytest.raises(ValueError, match=r"n_relevant must be a 1-D integer array of length 2, got shape \(3,\)"):
        function(HITS, np.array([3, 1, 1]), 2)
    with pytest.raises(ValueError, match="hits must be a 2-D boolean array, got shape .* and dtype int64"):
        function(HITS.astype(np.int64), N_RELEVANT, 2)
    with pytest.raises(ValueError, match="more hits in a row than that user's n_relevant"):
        function(HITS, np.array([1, 1]), 2)


def test_recall_denominator_is_checked():
    with pytest.raises(ValueError, match=r"denominator='max' is not one of \('min', 'all'\)"):
        recall_at_k(HITS, N_RELEVANT, 2, denominator="max")


# --------------------------------------------------------------------------- evaluate_ranking


def test_evaluate_ranking_by_hand():
    # 3 users x 6 items; item scores are the same for every user: 0.6, 0.5, ..., 0.1
    # -> global order [0, 1, 2, 3, 4, 5].
    # user 0: fold-in {0}, held-out {2, 5}: ranking [1, 2, 3] @3 -> hit at rank 1
    # user 1: fold-in {1}, held-out {}    : skipped
    # user 2: fold-in {},  held-out {0}   : ranking [0, 1, 2] @3 -> hit at rank 0
    fold_in = sp.csr_matrix(np.array([[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]))
    heldout = sp.csr_matrix(np.array([[0, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]]))
    model = LinearModel(np.zeros((6, 6)), np.array([0.6, 0.5, 0.4, 0.3, 0.2, 0.1]))
    result = evaluate_ranking(model, fold_in, heldout, ks=(1, 3), metrics=RANKING_METRICS, device="cpu")
    assert result.n_users_evaluated == 2 and result.n_users_skipped == 1
    np.testing.assert_array_equal(result.users, [0, 2])
    # recall@3: user 0 1/min(3, 2) = 1/2, user 2 1/1 -> mean 3/4; recall@1: 0 and 1 -> 1/2
    assert result.metrics["recall@3"] == pytest.approx(0.75, abs=1e-12)
    assert result.metrics["recall@1"] == pytest.approx(0.5, abs=1e-12)
    # ndcg@3: user 0 (1/log2(3)) / (1 + 1/log2(3)) = 0.63093 / 1.63093 = 0.386853; user 2: 1
    np.testing.assert_allclose(result.per_user["ndcg@3"], [0.6309297535714575 / 1.6309297535714575, 1.0], atol=1e-12)
    # precision@3: 1/3 each; mrr@3: 1/2 and 1; map@3: (1/2)/2 = 1/4 and 1/1
    np.testing.assert_allclose(result.per_user["precision@3"], [1 / 3, 1 / 3], atol=1e-12)
    np.testing.assert_allclose(result.per_user["mrr@3"], [0.5, 1.0], atol=1e-12)
    np.testing.assert_allclose(result.per_user["map@3"], [0.25, 1.0], atol=1e-12)
    np.testing.assert_allclose(result.per_user["hit_rate@1"], [0.0, 1.0], atol=1e-12)
    # coverage@3: {1, 2, 3} U {0, 1, 2} = 4 of 6 items; coverage@1: {1, 0} = 2 of 6
    assert result.metrics["coverage@3"] == pytest.approx(4 / 6)
    assert result.metrics["coverage@1"] == pytest.approx(2 / 6)
    # standard error of [1/2, 1]: std(ddof=1) = 0.353553 / sqrt(2) = 0.25
    assert result.std_error("recall@3") == pytest.approx(0.25, abs=1e-12)
    summary = json.loads(json.dumps(result.to_dict(include_per_user=True)))
    assert summary["n_users_skipped"] == 1 and summary["users"] == [0, 2]
    assert summary["recall_denominator"] == "min"


def test_explicit_zeros_count_in_fold_in_and_heldout():
    # user 0: item 0 stored with value 0 in fold-in (masked), item 1 stored with value 0 in held-out (relevant)
    fold_in = sp.csr_matrix((np.array([0.0]), np.array([0]), np.array([0, 1])), shape=(1, 3))
    heldout = sp.csr_matrix((np.array([0.0]), np.array([1]), np.array([0, 1])), shape=(1, 3))
    model = LinearModel(np.zeros((3, 3)), np.array([3.0, 2.0, 1.0]))
    result = evaluate_ranking(model, fold_in, heldout, ks=(1,), metrics=("recall",), device="cpu")
    assert result.metrics["recall@1"] == 1.0


def test_users_with_fewer_allowed_items_than_k():
    # user 0 was given 3 of 4 items; its @3 list is [3, -1, -1], so nothing excluded counts
    fold_in = sp.csr_matrix(np.array([[1, 1, 1, 0]]))
    heldout = sp.csr_matrix(np.array([[0, 0, 0, 1]]))
    model = LinearModel(np.zeros((4, 4)), np.array([4.0, 3.0, 2.0, 1.0]))
    result = evaluate_ranking(model, fold_in, heldout, ks=(3,), metrics=RANKING_METRICS, device="cpu")
    assert result.metrics["precision@3"] == pytest.approx(1 / 3)
    assert result.metrics["coverage@3"] == 0.25


@settings(max_examples=100, deadline=None)
@given(
    n_users=st.integers(1, 9),
    n_items=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    batch_size=st.integers(1, 4),
    denominator=st.sampled_from(["min", "all"]),
    as_numpy=st.booleans(),
    data=st.data(),
)
def test_evaluate_ranking_matches_brute_force(n_users, n_items, seed, batch_size, denominator, as_numpy, data):
    rng = np.random.default_rng(seed)
    fold_in, heldout = random_split(n_users, n_items, rng)
    ks = data.draw(st.lists(st.integers(1, n_items), min_size=1, max_size=3, unique=True))
    model = random_model(n_items, rng, as_numpy)
    result = evaluate_ranking(
        model, fold_in, heldout, ks=ks, metrics=RANKING_METRICS, batch_size=batch_size,
        device="cpu", recall_denominator=denominator,
    )  # fmt: skip
    scores = model.full_scores(fold_in)
    for k in ks:
        expected, users, expected_coverage = brute_force(scores, fold_in, heldout, k, denominator)
        np.testing.assert_array_equal(result.users, users)
        for name, values in expected.items():
            np.testing.assert_allclose(result.per_user[f"{name}@{k}"], values, rtol=1e-9, atol=1e-12)
            assert result.metrics[f"{name}@{k}"] == pytest.approx(values.mean(), abs=1e-12)
        assert result.metrics[f"coverage@{k}"] == pytest.approx(expected_coverage, abs=1e-12)
    assert result.n_users_skipped == n_users - users.size


# --------------------------------------------------------------------------- implicit 0.7.3


class ImplicitAdapter:
    """Duck-types implicit's ``recommend(userid, user_items, N)``: our ranking, int32 ids, -1 when unavailable.

    implicit's evaluator calls it once per batch of up to 1000 users that have
    test items, with ``user_items = train_user_items[batch]``.
    """

    def __init__(self, model):
        self.model = model

    def recommend(self, userid, user_items, N=10, **_):
        ids, scores = top_n(torch.as_tensor(self.model.score_tensor(user_items)), user_items, N)
        return mark_unavailable(ids, scores).numpy().astype(np.int32), scores.numpy()


@pytest.mark.parametrize("k", [1, 5, 10, 20])
def test_against_implicit_ranking_metrics_at_k(k):
    """What ``implicit.evaluation.ranking_metrics_at_k`` (0.7.3) computes, measured against ours.

    Agree (per-user mean over users with test items, binary relevance):

    - implicit ``"ndcg"`` == our NDCG@k: DCG sum_{r<k} h_r / log2(r+2) over IDCG of min(k, R) hits.
    - implicit ``"map"`` == our MAP@k: sum_{r<k} h_r * precision@(r+1) / min(k, R).

    Differ:

    - implicit ``"precision"`` is *micro-averaged*: sum_u hits_u / sum_u min(k, R_u). That is
      the Liang recall pooled over all users (users with many test items weigh more), not a
      precision: it divides by min(k, R), not by k, and it is not a mean of per-user values.
      It equals neither our precision@k (hits / k per user) nor our recall@k mean.
    - implicit also returns ``"auc"`` (an AUC limited to the top k), which aerec does not compute.
    """
    implicit_evaluation = pytest.importorskip("implicit.evaluation")
    rng = np.random.default_rng(k)
    fold_in, heldout = random_split(300, 40, rng, p_fold_in=0.25, p_heldout=0.15)
    model = random_model(40, rng)
    theirs = implicit_evaluation.ranking_metrics_at_k(ImplicitAdapter(model), fold_in, heldout, K=k, show_progress=False)
    ours = evaluate_ranking(model, fold_in, heldout, ks=(k,), metrics=RANKING_METRICS, device="cpu")

    assert theirs["ndcg"] == pytest.approx(ours.metrics[f"ndcg@{k}"], abs=1e-9)
    assert theirs["map"] == pytest.approx(ours.metrics[f"map@{k}"], abs=1e-9)
    n_relevant = np.diff(heldout.indptr)[ours.users]
    n_hits = ours.per_user[f"precision@{k}"] * k
    assert theirs["precision"] == pytest.approx(n_hits.sum() / np.minimum(k, n_relevant).sum(), abs=1e-9)


def test_implicit_precision_is_a_pooled_recall_by_hand():
    # Every user gets the ranking [0, 1, 2, 3, 4] @5 (item scores 1.0, 0.9, ..., no fold-in).
    # user 0: held-out {0, 2, 7} -> hits at ranks 0 and 2; user 1: none (skipped);
    # user 2: held-out {1} -> hit at rank 1.
    # implicit "precision" = (2 + 1) / (min(5, 3) + min(5, 1)) = 3/4
    # our recall@5 mean    = (2/3 + 1/1) / 2 = 5/6;  our precision@5 mean = (2/5 + 1/5) / 2 = 3/10
    # ndcg: user 0 (1 + 1/log2(4)) / (1 + 1/log2(3) + 1/log2(4)) = 1.5 / 2.130930 = 0.703918;
    #       user 2 (1/log2(3)) / 1 = 0.630930  -> mean 0.667424
    # map:  user 0 (1/1 + 2/3) / 3 = 5/9; user 2 (1/2) / 1 = 1/2 -> mean 19/36
    implicit_evaluation = pytest.importorskip("implicit.evaluation")
    heldout = sp.csr_matrix(np.array([[1, 0, 1, 0, 0, 0, 0, 1, 0, 0], [0] * 10, [0, 1] + [0] * 8], dtype=np.float32))
    fold_in = sp.csr_matrix(heldout.shape, dtype=np.float32)
    model = LinearModel(np.zeros((10, 10)), np.linspace(1.0, 0.1, 10))
    theirs = implicit_evaluation.ranking_metrics_at_k(ImplicitAdapter(model), fold_in, heldout, K=5, show_progress=False)
    ours = evaluate_ranking(model, fold_in, heldout, ks=(5,), metrics=RANKING_METRICS, device="cpu")
    assert theirs["precision"] == pytest.approx(3 / 4, abs=1e-12)
    assert ours.metrics["recall@5"] == pytest.approx(5 / 6, abs=1e-12)
    assert ours.metrics["precision@5"] == pytest.approx(3 / 10, abs=1e-12)
    assert theirs["ndcg"] == pytest.approx(ours.metrics["ndcg@5"], abs=1e-12)
    assert ours.metrics["ndcg@5"] == pytest.approx((1.5 / 2.1309297535714575 + 0.6309297535714575) / 2, abs=1e-12)
    assert theirs["map"] == pytest.approx(19 / 36, abs=1e-12)
    assert ours.metrics["map@5"] == pytest.approx(19 / 36, abs=1e-12)


# --------------------------------------------------------------------------- bad input


def small_problem():
    fold_in = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32))
    heldout = sp.csr_matrix(np.array([[0, 1, 0, 0], [0, 0, 1, 0]], dtype=np.float32))
    return random_model(4, np.random.default_rng(0)), fold_in, heldout


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ks": ()}, "ks is empty"),
        ({"ks": (2, 0)}, "k=0 is out of range; expected an integer >= 1 and <= 4"),
        ({"ks": (5,)}, "k=5 is out of range; expected an integer >= 1 and <= 4"),
        ({"ks": (2.5,)}, "k=2.5 is not valid"),
        ({"batch_size": 0}, "batch_size=0 is out of range; expected an integer >= 1"),
        ({"metrics": ("recall", "auc")}, r"unknown metric 'auc'; expected one of \('recall', 'ndcg', "),
        ({"metrics": ()}, "metrics is empty"),
        ({"recall_denominator": "max"}, r"recall_denominator='max' is not one of \('min', 'all'\)"),
        ({"device": "tpu"}, "device='tpu' is not a torch device"),
    ],
)
def test_bad_arguments(kwargs, message):
    model, fold_in, heldout = small_problem()
    with pytest.raises(ValueError, match=message):
        evaluate_ranking(model, fold_in, heldout, **{"ks": (2,), **kwargs})


def test_bad_matrices():
    model, fold_in, heldout = small_problem()
    with pytest.raises(ValueError, match=r"fold_in has shape \(2, 4\) but heldout has \(2, 3\)"):
        evaluate_ranking(model, fold_in, heldout[:, :3], ks=(2,))
    with pytest.raises(TypeError, match="heldout must be a scipy sparse matrix, got ndarray"):
        evaluate_ranking(model, fold_in, heldout.toarray(), ks=(2,))
    with pytest.raises(ValueError, match=r"fold_in must be 2-D \(users x items\), got shape \(4,\)"):
        evaluate_ranking(model, sp.coo_array(np.ones(4)), sp.coo_array(np.ones(4)), ks=(2,))
    with pytest.raises(ValueError, match="heldout has no stored entries"):
        evaluate_ranking(model, fold_in, sp.csr_matrix(heldout.shape), ks=(2,))
    overlapping = heldout + fold_in[[0, 0]]  # adds item 0 of user 0 to both rows: user 0 overlaps
    with pytest.raises(ValueError, match=r"fold_in and heldout share 1 \(user, item\) pair"):
        evaluate_ranking(model, fold_in, overlapping, ks=(2,))


def test_bad_score_batches():
    _, fold_in, heldout = small_problem()
    wrong_shape = LinearModel(np.zeros((4, 3)), np.zeros(3))
    with pytest.raises(ValueError, match=r"returned shape \(2, 3\) for a batch of shape \(2, 4\)"):
        evaluate_ranking(wrong_shape, fold_in, heldout, ks=(2,))
    with_nan = LinearModel(np.zeros((4, 4)), np.array([0.0, np.nan, 0.0, 0.0]))
    # NaN at item 1 for both users; one of them has item 1 in its fold-in (excluded, so its NaN is never ranked)
    with pytest.raises(ValueError, match=r"scores contain NaN in 1 row\(s\)"):
        evaluate_ranking(with_nan, fold_in, heldout, ks=(2,))

    class ReturnsList:
        def score_tensor(self, user_items):
            return user_items.toarray().tolist()

    with pytest.raises(TypeError, match="must return a torch.Tensor or numpy array, got list"):
        evaluate_ranking(ReturnsList(), fold_in, heldout, ks=(2,))


def test_std_error_of_unknown_metric():
    model, fold_in, heldout = small_problem()
    result = evaluate_ranking(model, fold_in, heldout, ks=(2,), device="cpu")
    with pytest.raises(KeyError, match="no per-user metric 'mrr@2'"):
        result.std_error("mrr@2")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_numbers():
    rng = np.random.default_rng(7)
    fold_in, heldout = random_split(50, 30, rng)
    model = random_model(30, rng)
    on_cpu = evaluate_ranking(model, fold_in, heldout, ks=(5, 30), metrics=RANKING_METRICS, device="cpu")
    on_cuda = evaluate_ranking(model, fold_in, heldout, ks=(5, 30), metrics=RANKING_METRICS, device="cuda")
    assert on_cuda.metrics == pytest.approx(on_cpu.metrics, abs=1e-12)
