"""pandas in and out with raw ids: fit(df), recommend(df) -> frame, implicit's spelling, lining up with a catalogue."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from aerec.data import Interactions
from aerec.data.catalogue import UnknownIdsWarning, align_to_catalogue, as_interactions, catalogue_columns
from aerec.models import make_model
from tests.conftest import REPO


def raw_frame(n_users=40, n_items=25, seed=0) -> pd.DataFrame:
    """Interactions with string user ids and item ids that are not 0..n-1, each user at least 3 items."""
    rng = np.random.default_rng(seed)
    rows = [(f"u{user}", 1000 + 7 * int(item), float(rng.integers(1, 6)))
            for user in range(n_users) for item in rng.choice(n_items, size=int(rng.integers(3, 9)), replace=False)]
    return pd.DataFrame(rows, columns=["user", "item", "rating"])


@pytest.fixture(scope="module")
def frame():
    return raw_frame()


@pytest.fixture(scope="module")
def ease(frame):
    return make_model("ease", l2=10.0).fit(frame)


def test_fit_on_a_frame_keeps_the_raw_item_ids_and_equals_the_fit_on_interactions(frame, ease):
    built = Interactions.from_pandas(frame, "user", "item", "rating")
    np.testing.assert_array_equal(ease.item_ids_, built.item_ids)
    reference = make_model("ease", l2=10.0).fit(built)
    np.testing.assert_array_equal(ease.weights_.numpy(), reference.weights_.numpy())


def test_fit_reads_named_columns_and_names_what_is_missing(frame):
    renamed = frame.rename(columns={"user": "customer", "item": "sku", "rating": "stars"})
    model = make_model("ease", l2=10.0).fit(renamed, user="customer", item="sku", rating="stars")
    np.testing.assert_array_equal(model.item_ids_, np.sort(frame.item.unique()))
    with pytest.raises(ValueError, match=r"train: missing column\(s\) user='user'.*name the columns with user="):
        make_model("ease").fit(renamed)


def test_recommend_on_a_frame_returns_raw_ids_excludes_the_history_and_counts_unknown_items(ease, frame):
    history = pd.DataFrame({"user": ["new", "new", "new", "other"], "item": [1000, 1007, 999_999, 1014]})
    with pytest.warns(UnknownIdsWarning, match=r"1 of 4 entries .*\(item ids such as \[999999\]\)"):
        recs = ease.recommend(history, n=5)
    assert list(recs.columns) == ["user", "item", "rank", "score"]
    assert recs.user.tolist() == ["new"] * 5 + ["other"] * 5
    assert set(recs.item) <= set(ease.item_ids_)
    assert not {1000, 1007} & set(recs[recs.user == "new"].item)
    assert 1014 not in set(recs[recs.user == "other"].item)
    assert recs.groupby("user")["rank"].apply(list).tolist() == [[1, 2, 3, 4, 5]] * 2
    # the same as the arrays of the rows lined up by hand
    rows = sp.csr_matrix((np.ones(2, np.float32), ([0, 0], catalogue_columns(ease.item_ids_, [1000, 1007]))),
                         shape=(1, ease.n_items_))
    ids, scores = ease.recommend(rows, n=5)
    np.testing.assert_array_equal(recs.item[:5], ease.item_ids_[ids[0]])
    np.testing.assert_allclose(recs.score[:5], scores[0], rtol=1e-6)


def test_recommend_lines_up_interactions_with_their_own_items(ease):
    """The issue's case: Interactions of 4 items for a model of 25 failed with "has 4 columns; expected 25"."""
    history = pd.DataFrame({"user": [7, 7, 8, 8], "item": [1000, 1007, 1014, 1021]})
    ids, scores = ease.recommend(Interactions.from_pandas(history), n=3)
    frame_recs = ease.recommend(history, n=3)
    np.testing.assert_array_equal(ease.item_ids_[ids].ravel(), frame_recs.item)
    assert ids.shape == (2, 3)


def test_a_bare_matrix_of_the_models_width_is_taken_as_columns(ease, frame):
    """Interactions.from_csr gives ids 0..n-1: those are columns, not raw ids to look up."""
    rows = sp.random(3, ease.n_items_, density=0.3, format="csr", random_state=1, dtype=np.float32)
    rows.data[:] = 1.0
    np.testing.assert_array_equal(ease.recommend(Interactions.from_csr(rows), n=4)[0], ease.recommend(rows, n=4)[0])


def test_implicit_spelling(ease, frame):
    matrix = Interactions.from_pandas(frame, "user", "item").matrix
    expected_ids, expected_scores = ease.recommend(matrix[[3, 5]], n=4)
    ids, scores = ease.recommend(np.array([3, 5]), matrix[[3, 5]], N=4)  # implicit >= 0.5: one row per userid
    np.testing.assert_array_equal(ids, expected_ids)
    ids, _ = ease.recommend(np.array([3, 5]), matrix, N=4)  # older implicit: the whole matrix, rows taken by userid
    np.testing.assert_array_equal(ids, expected_ids)
    ids, scores = ease.recommend(5, matrix[5], 4)  # a scalar userid: 1-D arrays; N positional
    np.testing.assert_array_equal(ids, expected_ids[1])
    assert ids.shape == scores.shape == (4,)
    ids, _ = ease.recommend(5, matrix[5], N=4, filter_already_liked_items=False)
    np.testing.assert_array_equal(ids, ease.recommend(matrix[5], n=4, filter_already_liked_items=False)[0][0])
    with pytest.raises(ValueError, match=r"2 rows for 3 userid\(s\) up to 9"):
        ease.recommend(np.array([3, 5, 9]), matrix[[3, 5]], N=4)


def test_align_to_catalogue_matches_ids_by_text_and_keeps_the_rows_asked_for():
    catalogue = np.array(["10", "20", "30"], dtype=object)
    data = Interactions.from_pandas(pd.DataFrame({"user": [1, 1, 2, 3], "item": [20, 40, 10, 30]}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aligned, ignored = align_to_catalogue(data, catalogue, user_ids=[3, 1, 9], warn=False)
    assert ignored == 2  # item 40, and user 2 not among the rows
    assert aligned.matrix.toarray().tolist() == [[0, 0, 1], [0, 1, 0], [0, 0, 0]]
    assert aligned.user_ids.tolist() == [3, 1, 9] and aligned.item_ids is not None


def test_validation_frames_pick_the_same_epoch_as_the_lined_up_matrices(frame):
    train, fold_in = frame[frame.user < "u30"], frame[frame.user >= "u30"]
    rng = np.random.default_rng(3)
    held = rng.random(len(fold_in)) < 0.3
    fold_in, heldout = fold_in[~held], fold_in[held]
    params = dict(epochs=4, hidden=8, latent=4, batch_size=8, seed=1, device="cpu")
    fold_in, heldout = fold_in[["user", "item"]], heldout[["user", "item"]]
    by_frames = make_model("mult_dae", **params).fit(train[["user", "item"]], (fold_in, heldout))
    built = Interactions.from_pandas(train, "user", "item")
    users = pd.unique(np.concatenate([np.sort(fold_in.user.unique()), np.sort(heldout.user.unique())]))
    pair = tuple(align_to_catalogue(part, built.item_ids, users)[0].matrix for part in (fold_in, heldout))
    by_matrices = make_model("mult_dae", **params).fit(built, pair)
    curves = [[epoch["validation"] for epoch in model.history_.epochs] for model in (by_frames, by_matrices)]
    assert curves[0] == curves[1]


def test_autorec_takes_frames_and_warns_of_ratings_that_are_all_one_value(frame):
    held_out = frame.index[::5]
    validation, training = frame.loc[held_out], frame.drop(index=held_out)
    model = make_model("autorec", kind="user", hidden=4, epochs=3, patience=None, seed=0).fit(training, validation)
    assert model.best_epoch_ is not None
    with pytest.warns(UserWarning, match=r"ratings are all 1.0: AutoRec is a rating model"):
        make_model("autorec", epochs=1).fit(frame[["user", "item"]])


def test_rating_false_reads_no_values_and_the_readme_example_runs():
    df = pd.read_csv(REPO / "data" / "ml-latest-small" / "ratings.csv")
    liked = df[df.rating > 3.5]
    model = make_model("mult_vae", epochs=2, seed=0).fit(liked, user="userId", item="movieId", rating=False)
    assert model.item_ids_.dtype.kind == "i" and 260 in set(model.item_ids_)
    renamed = liked.rename(columns={"userId": "user", "movieId": "item"})
    assert set(as_interactions(renamed).matrix.data) == {4.0, 4.5, 5.0}  # by default the rating column is read
    assert set(as_interactions(renamed, rating=False).matrix.data) == {1.0}
    new_users = pd.DataFrame({"user": ["ann", "ann", "bob"], "item": [1, 260, 2571]})
    recs = model.recommend(new_users, n=10)
    assert recs.shape == (20, 4) and set(recs.user) == {"ann", "bob"}
    assert model.similar_items([260, 2571], n=5).shape == (10, 4)
    assert model.user_embeddings(new_users).shape == (2, model.latent)
