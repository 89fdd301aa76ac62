"""Side features: encoding from pandas, alignment to id maps, MovieLens readers, bad input."""

import numpy as np
import pandas as pd
import pytest

from aerec.data.features import (SideFeatures, UnknownFeatureIdsWarning, features_from_pandas, load_item_features,
                                 load_user_features)


def frame():
    return pd.DataFrame({"item": [10, 20, 30], "genres": ["Comedy|Drama", "Drama", None],
                         "studio": ["a", "b", "a"], "year": [1990.0, 2000.0, np.nan], "new": [1, 0, 1]})


def test_each_kind_is_encoded_and_new_rows_use_the_same_columns():
    features = features_from_pandas(frame(), id="item", nan="mean")
    assert features.names == ["genres=Comedy", "genres=Drama", "studio=a", "studio=b", "year", "new"]
    dense = features.matrix.toarray()
    np.testing.assert_array_equal(dense[:, :4], [[1, 1, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0]])
    np.testing.assert_allclose(dense[:, 4], [-1, 1, 0])  # standardised; the missing year is the mean (0)
    np.testing.assert_array_equal(dense[:, 5], [1, 0, 1])
    assert [entry["kind"] for entry in features.spec] == ["multi", "categorical", "numeric", "binary"]
    new = features.encode(pd.DataFrame({"item": [99], "genres": ["Drama|Horror"], "studio": ["c"],
                                        "year": [2010.0], "new": [0]}), id="item")
    assert new.names == features.names
    np.testing.assert_allclose(new.matrix.toarray(), [[0, 1, 0, 0, 3, 0]])  # Horror and studio c: no column


def test_align_puts_rows_in_the_id_map_order_and_counts_both_sides():
    features = features_from_pandas(frame(), id="item", nan="zero")
    with pytest.warns(UnknownFeatureIdsWarning, match="1 of 3 feature rows"):
        aligned = features.align(np.array([30, 40, 10]), what="item")
    assert aligned.missing == 1 and aligned.ignored == 1
    np.testing.assert_array_equal(aligned.matrix.toarray()[1], np.zeros(features.n_features))
    np.testing.assert_array_equal(aligned.matrix.toarray()[[0, 2]], features.matrix.toarray()[[2, 0]])
    assert aligned.align(np.array(["30"]), warn=False).matrix.nnz == aligned.matrix[0].nnz  # ids matched by text too


def test_state_round_trip_without_pickle():
    features = features_from_pandas(frame(), id="item", nan="mean")
    state = features.to_state()
    assert all(isinstance(value, (np.ndarray, list, dict)) for value in state.values())
    back = SideFeatures.from_state(state)
    assert back.names == features.names and (back.matrix != features.matrix).nnz == 0
    np.testing.assert_array_equal(back.ids, features.ids)


@pytest.mark.parametrize("change, message", [
    (lambda f: pd.concat([f, f.iloc[:1]]), "1 duplicated id(s) in column 'item'"),
    (lambda f: f, "column 'year' has 1 missing value(s) (NaN); state a policy"),
    (lambda f: f.assign(year=["x", 1, 2]), "column 'year' is numeric; found non-numbers such as ['x']"),
    (lambda f: f.assign(item=[1, None, 3]), "column 'item' (the ids) has 1 missing value(s)"),
])
def test_bad_feature_tables_are_refused_by_name(change, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        features_from_pandas(change(frame()), id="item", kinds={"year": "numeric"})


def test_unknown_kind_column_and_policy_are_refused():
    with pytest.raises(ValueError, match="kinds {'year': 'ordinal'}"):
        features_from_pandas(frame(), id="item", kinds={"year": "ordinal"})
    with pytest.raises(ValueError, match=r"columns \['size'\] are not in the frame"):
        features_from_pandas(frame(), id="item", columns=["size"])
    with pytest.raises(ValueError, match="nan='drop'"):
        features_from_pandas(frame(), id="item", nan="drop")


def test_movielens_item_and_user_features(data_dir):
    items = load_item_features("ml-100k", data_dir)
    assert items.matrix.shape == (1682, 20) and items.names[-1] == "year"  # 19 genres ("unknown" included), year
    assert {"genres=Comedy", "genres=Film-Noir"} <= set(items.names)
    toy_story = items.matrix[list(items.ids).index(1)].toarray()[0]
    assert {items.names[j] for j in np.flatnonzero(toy_story[:-1])} == {"genres=Animation", "genres=Children's",
                                                                      "genres=Comedy"}
    users = load_user_features("ml-100k", data_dir)
    assert users.matrix.shape == (943, 1 + 2 + 21) and users.names[0] == "age"
    np.testing.assert_allclose(users.matrix[:, 1:].sum(axis=1), 2)  # one gender and one occupation each

    small = load_item_features("ml-latest-small", data_dir)
    assert small.matrix.shape[0] == 9742 and "genres=Sci-Fi" in small.names and "tags=funny" in small.names
    assert "genres=(no genres listed)" not in small.names

    one = load_item_features(data_dir / "ml-1m", None)
    assert one.matrix.shape[0] == 3883 and "genres=Film-Noir" in one.names
    demographics = load_user_features(data_dir / "ml-1m", None)
    assert demographics.matrix.shape == (6040, 2 + 7 + 21)  # gender, age group, occupation: Strub et al.'s 30
