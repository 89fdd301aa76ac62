"""Similar items and embeddings for every model that learns them, in raw ids; the CLI's similar and embed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from aerec.cli import main
from aerec.data import Interactions, binarize, find_dataset_dir
from aerec.models import MODELS, make_model

SHORT = {"mult_vae": dict(epochs=2), "mult_dae": dict(epochs=2), "recvae": dict(epochs=1), "cdae": dict(epochs=2),
         "autorec": dict(epochs=2, hidden=8), "autoencoder": dict(epochs=2), "als": dict(iterations=2, factors=8),
         "bpr": dict(iterations=2, factors=8), "dlae": dict(l2=10.0), "edlae": dict(l2=10.0), "ease": dict(l2=10.0)}
WITHOUT_ITEM_VECTORS = {"popularity", "bias"}
WITHOUT_USER_VECTORS = {"popularity", "bias", "ease", "dlae", "edlae"}


@pytest.fixture(scope="module")
def ratings():
    rng = np.random.default_rng(0)
    rows = [(f"u{user}", f"i{item}", float(rng.integers(1, 6)))
            for user in range(50) for item in rng.choice(30, size=int(rng.integers(4, 10)), replace=False)]
    return pd.DataFrame(rows, columns=["user", "item", "rating"])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_gives_similar_items_and_embeddings_or_says_it_has_none(name, ratings):
    model = make_model(name, **SHORT.get(name, {})).fit(ratings)
    history = pd.DataFrame({"user": ["new", "new"], "item": ["i3", "i4"], "rating": [4.0, 2.0]})
    if name in WITHOUT_ITEM_VECTORS:
        with pytest.raises(TypeError, match="learns no item representation"):
            model.similar_items(["i1"])
    else:
        vectors = model.item_embeddings()
        assert vectors.dtype == np.float32 and vectors.shape[0] == model.n_items_ and np.isfinite(vectors).all()
        similar = model.similar_items(["i1", "i2"], n=4)
        assert list(similar.columns) == ["item", "similar_item", "rank", "score"]
        assert similar.item.tolist() == ["i1"] * 4 + ["i2"] * 4
        assert not (similar.item == similar.similar_item).any()  # never its own neighbour
        assert set(similar.similar_item) <= set(model.item_ids_)
        assert (np.diff(similar.score.to_numpy().reshape(2, 4), axis=1) <= 0).all()  # best first
    if name in WITHOUT_USER_VECTORS:
        with pytest.raises(TypeError, match="learns no user representation"):
            model.user_embeddings(history)
    else:
        users = model.user_embeddings(history)
        assert users.dtype == np.float32 and users.shape[0] == 1 and np.isfinite(users).all()


def test_cosine_neighbours_are_the_largest_cosines_of_the_item_vectors(ratings):
    model = make_model("als", factors=8, iterations=3).fit(ratings)
    vectors = model.item_embeddings()
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    column = list(model.item_ids_).index("i5")
    cosines = unit @ unit[column]
    cosines[column] = -np.inf
    expected = model.item_ids_[np.argsort(-cosines, kind="stable")[:5]]
    similar = model.similar_items("i5", n=5)
    np.testing.assert_array_equal(similar.similar_item, expected)
    np.testing.assert_allclose(similar.score, np.sort(cosines)[::-1][:5], rtol=1e-5)
    dot = model.similar_items("i5", n=5, metric="dot")
    np.testing.assert_allclose(dot.score.iloc[0], np.max(np.delete(vectors @ vectors[column], column)), rtol=1e-5)


def test_ease_neighbours_are_the_items_whose_presence_scores_the_item_most(ratings):
    model = make_model("ease", l2=10.0).fit(ratings)
    column = list(model.item_ids_).index("i7")
    weights = model.weights_.numpy()[:, column].copy()
    weights[column] = -np.inf
    similar = model.similar_items("i7", n=3)
    np.testing.assert_array_equal(similar.similar_item, model.item_ids_[np.argsort(-weights, kind="stable")[:3]])
    low_rank = make_model("dlae", l2=10.0, rank=4).fit(ratings)
    u, v = low_rank.factors_
    expected = (u @ v.T)[:, column].numpy().astype(np.float64)
    expected[column] = -np.inf
    np.testing.assert_array_equal(low_rank.similar_items("i7", n=3).similar_item,
                                  low_rank.item_ids_[np.argsort(-expected, kind="stable")[:3]])


def test_similar_items_refuses_unknown_ids_and_bad_arguments_by_name(ratings):
    model = make_model("ease", l2=10.0).fit(ratings)
    with pytest.raises(ValueError, match=r"1 item id\(s\) not in the model's catalogue of 30 items: \['nope'\]"):
        model.similar_items(["i1", "nope"])
    with pytest.raises(ValueError, match=r"n=30; expected an integer from 1 to 29"):
        model.similar_items("i1", n=30)
    with pytest.raises(ValueError, match=r"metric='euclid'; expected one of \('weight', 'cosine', 'dot'\) for EASE"):
        model.similar_items("i1", metric="euclid")
    restricted = model.similar_items("i1", n=5, items=["i1", "i2", "i3"])  # only 2 others allowed: 2 rows
    assert sorted(restricted.similar_item) == ["i2", "i3"] and restricted["rank"].tolist() == [1, 2]


def test_i_autorec_user_vectors_give_its_scores_with_the_item_codes(ratings):
    model = make_model("autorec", kind="item", hidden=6, epochs=3, seed=0).fit(ratings)
    history = Interactions.from_pandas(ratings[ratings.user.isin(["u1", "u2"])], "user", "item", "rating")
    rows = model.align(history)
    units = model.user_embeddings(rows)
    scores = model.score(rows)
    bias = scores - units.astype(np.float64) @ model.item_embeddings().astype(np.float64).T
    np.testing.assert_allclose(bias - bias[:, :1], 0.0, atol=1e-4)  # one bias per user: the rest is the product


def test_u_autorec_and_mult_vae_user_vectors_are_their_codes(ratings):
    model = make_model("autorec", kind="user", hidden=6, epochs=2, seed=0).fit(ratings)
    rows = model.align(ratings[ratings.user == "u3"])
    with torch.no_grad():
        code = model.module_.encode(torch.from_numpy(rows.matrix.toarray()))
    np.testing.assert_allclose(model.user_embeddings(rows), code.numpy(), rtol=1e-5, atol=1e-6)
    vae = make_model("mult_vae", epochs=2, seed=0).fit(ratings[["user", "item"]])
    rows = vae.align(ratings[ratings.user == "u3"][["user", "item"]])
    first = vae.user_embeddings(rows)
    np.testing.assert_array_equal(first, vae.user_embeddings(rows))  # the posterior mean: no sampling, no dropout
    assert first.shape == (1, vae.latent)


def genre_flags(data_dir) -> dict:
    u_item = pd.read_csv(find_dataset_dir("ml-100k", data_dir) / "u.item", sep="|", header=None, encoding="latin-1")
    return dict(zip(u_item[0].to_numpy(), u_item.iloc[:, 5:].to_numpy(bool)))


def test_ml100k_neighbours_share_a_genre_far_more_often_than_random_pairs(ml100k, data_dir):
    """The embeddings notebook's check: for movies with >= 50 likes, the share of their 10 nearest neighbours that
    share a genre with them, against random pairs of the same movies (0.42 here)."""
    torch.set_num_threads(1)
    flags = genre_flags(data_dir)
    liked = binarize(ml100k, 3.5)
    popular = liked.item_ids[np.bincount(liked.matrix.indices, minlength=liked.n_items) >= 50]
    rng = np.random.default_rng(0)
    first, second = rng.choice(popular, 4000), rng.choice(popular, 4000)
    random_share = np.mean([(flags[a] & flags[b]).any() for a, b in zip(first, second) if a != b])
    shares = {}
    for name, params in (("ease", {}), ("als", {}), ("mult_vae", dict(epochs=50, seed=0, device="cpu"))):
        model = make_model(name, **params).fit(liked)
        similar = model.similar_items(popular, n=10, items=popular)
        shares[name] = np.mean([(flags[a] & flags[b]).any() for a, b in zip(similar.item, similar.similar_item)])
    assert 0.35 < random_share < 0.5
    for name, share in shares.items():
        assert share > 1.35 * random_share, (name, share, random_share)


def test_cli_similar_and_embed_on_a_saved_model(tmp_path, ratings, capsys):
    import aerec

    model = make_model("mult_dae", epochs=2, seed=0).fit(ratings[["user", "item"]])
    aerec.save(model, tmp_path / "model")
    assert main(["similar", "--model", str(tmp_path / "model"), "--items", "i1,i2", "--n", "3"]) == 0
    printed = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
    pd.testing.assert_frame_equal(printed, model.similar_items(["i1", "i2"], n=3), check_dtype=False, atol=1e-6)
    assert main(["embed", "--model", str(tmp_path / "model"), "--output", str(tmp_path / "items.parquet")]) == 0
    items = pd.read_parquet(tmp_path / "items.parquet")
    assert items.item.tolist() == model.item_ids_.tolist()
    np.testing.assert_array_equal(np.stack(items.embedding), model.item_embeddings())
    pd.DataFrame({"user": ["a", "a", "b"], "item": ["i1", "i9", "i2"]}).to_csv(tmp_path / "h.csv", index=False)
    assert main(["embed", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "h.csv"),
                 "--output", str(tmp_path / "users.csv")]) == 0
    users = pd.read_csv(tmp_path / "users.csv")
    assert users.user.tolist() == ["a", "b"] and users.shape[1] == 1 + model.latent
    assert main(["similar", "--model", str(tmp_path / "model"), "--items", "i1,zz"]) == 2
    assert "1 item id(s) not in the model's catalogue of 30 items: ['zz']" in capsys.readouterr().err
    assert main(["embed", "--model", str(tmp_path / "model"), "--output", str(tmp_path / "x.txt")]) == 2
    assert not (tmp_path / "x.txt").exists()


def test_interactions_of_a_bare_matrix_still_score_as_columns():
    matrix = sp.random(20, 12, density=0.3, format="csr", random_state=0, dtype=np.float32)
    matrix.data[:] = 1.0
    model = make_model("ease", l2=1.0).fit(matrix)
    np.testing.assert_array_equal(model.score(Interactions.from_csr(matrix)), model.score(matrix))
