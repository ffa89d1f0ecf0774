"""pipeline.algorithms.metrics: equality with scikit-learn, hand examples, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from sklearn.metrics.cluster import contingency_matrix

import scipy.sparse as sp

from pipeline.algorithms.metrics import (
    ClusterMajority,
    cluster_metrics,
    contingency_metrics,
    majority_mapping,
    majority_mapping_from_contingency,
    silhouette,
)

PERFECT = ["ami", "nmi", "homogeneity", "completeness", "v_measure", "cluster_purity",
           "label_purity", "pnmi"]


def sklearn_reference(labels, clusters) -> dict[str, float]:
    h, c, v = skm.homogeneity_completeness_v_measure(labels, clusters)
    table = contingency_matrix(labels, clusters)
    return {
        "ami": skm.adjusted_mutual_info_score(labels_true=labels, labels_pred=clusters,
                                              average_method="arithmetic"),
        "mi": skm.mutual_info_score(labels_true=labels, labels_pred=clusters),
        "nmi": skm.normalized_mutual_info_score(labels_true=labels, labels_pred=clusters),
        "homogeneity": skm.homogeneity_score(labels_true=labels, labels_pred=clusters),
        "completeness": skm.completeness_score(labels_true=labels, labels_pred=clusters),
        "v_measure": skm.v_measure_score(labels_true=labels, labels_pred=clusters),
        "hcv": (h, c, v),
        "cluster_purity": table.max(axis=0).sum() / table.sum(),
        "label_purity": table.max(axis=1).sum() / table.sum(),
    }


def assert_equals_sklearn(labels, clusters, tol=1e-12):
    ours = cluster_metrics(labels, clusters)
    ref = sklearn_reference(labels, clusters)
    for key in ["ami", "mi", "nmi", "homogeneity", "completeness", "v_measure",
                "cluster_purity", "label_purity"]:
        assert abs(ours[key] - ref[key]) <= tol, (key, ours[key], ref[key])
    assert ours["homogeneity"] == pytest.approx(ref["hcv"][0], abs=tol)
    assert ours["v_measure"] == pytest.approx(ref["hcv"][2], abs=tol)
    assert ours["n"] == len(labels)
    assert ours["n_labels"] == len(set(np.asarray(labels).tolist()))
    assert ours["n_clusters"] == len(set(np.asarray(clusters).tolist()))
    return ours


def test_labelling_against_itself_is_perfect():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 40, size=5_000)
    m = cluster_metrics(labels, labels)
    for key in PERFECT:
        assert m[key] == pytest.approx(1.0, abs=1e-12), key


def test_relabelled_copy_is_perfect():
    labels = np.array(["a", "b", "c", "a", "b", "c", "c"])
    clusters = np.array([7, 3, 0, 7, 3, 0, 0])
    m = cluster_metrics(labels, clusters)
    for key in PERFECT:
        assert m[key] == pytest.approx(1.0, abs=1e-12), key


def test_shuffled_copy_has_chance_ami():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 50, size=200_000)
    m = cluster_metrics(labels, rng.permutation(labels))
    assert abs(m["ami"]) < 0.01
    assert m["homogeneity"] < 0.01


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 300).flatmap(lambda n: st.tuples(
    st.lists(st.integers(-3, 6), min_size=n, max_size=n),
    st.lists(st.integers(0, 9), min_size=n, max_size=n))))
def test_equals_sklearn_on_random_int_labellings(pair):
    labels, clusters = (np.array(v) for v in pair)
    assert_equals_sklearn(labels, clusters)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 200).flatmap(lambda n: st.tuples(
    st.lists(st.sampled_from(["sh", "iy", "<blank>", "a", "|"]), min_size=n, max_size=n),
    st.lists(st.integers(0, 2**40), min_size=n, max_size=n))))
def test_equals_sklearn_on_strings_and_wide_ints(pair):
    labels, clusters = np.array(pair[0]), np.array(pair[1], dtype=np.int64)
    assert_equals_sklearn(labels, clusters)


def test_equals_sklearn_on_a_large_labelling():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 35, size=100_000).astype(np.int8)
    clusters = (labels.astype(np.int64) * 3 + rng.integers(0, 5, size=labels.size)) % 36
    assert_equals_sklearn(labels, clusters.astype(np.int16))


def test_string_and_int_codings_agree():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 12, size=3_000)
    clusters = rng.integers(0, 7, size=3_000)
    as_int = cluster_metrics(labels, clusters)
    as_str = cluster_metrics(np.array([f"p{v:02d}" for v in labels]), clusters.astype(str))
    for key, value in as_int.items():
        assert as_str[key] == pytest.approx(value, abs=1e-12), key


def test_purity_hand_example():
    # cluster 0: a a b   cluster 1: b b b c   cluster 2: c
    labels = ["a", "a", "b", "b", "b", "b", "c", "c"]
    clusters = [0, 0, 0, 1, 1, 1, 1, 2]
    m = cluster_metrics(labels, clusters)
    assert m["cluster_purity"] == pytest.approx((2 + 3 + 1) / 8)
    # label a: all in 0 (2); label b: 1 in 0, 3 in 1 (3); label c: 1 in 1, 1 in 2 (1)
    assert m["label_purity"] == pytest.approx((2 + 3 + 1) / 8)
    assert (m["n"], m["n_labels"], m["n_clusters"]) == (8, 3, 3)


def test_purities_differ_when_clusters_split_labels():
    labels = [0, 0, 0, 0]
    clusters = [0, 1, 2, 3]
    m = cluster_metrics(labels, clusters)
    assert m["cluster_purity"] == 1.0
    assert m["label_purity"] == 0.25


def test_pnmi_is_mi_over_label_entropy_and_equals_homogeneity():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 10, size=20_000)
    clusters = (labels + rng.integers(0, 3, size=labels.size)) % 13
    m = cluster_metrics(labels, clusters)
    p = np.bincount(labels) / labels.size
    h_label = -float(np.sum(p * np.log(p)))
    assert m["pnmi"] == pytest.approx(m["mi"] / h_label, rel=1e-12)
    assert m["pnmi"] == pytest.approx(m["homogeneity"], abs=1e-15)


def test_single_label_and_single_cluster_follow_sklearn():
    assert_equals_sklearn(np.zeros(10, int), np.arange(10) % 3)
    assert_equals_sklearn(np.arange(10) % 3, np.zeros(10, int))
    m = assert_equals_sklearn(np.zeros(10, int), np.zeros(10, int))
    assert m["ami"] == 1.0 and m["nmi"] == 1.0


@pytest.mark.parametrize("labels, clusters, message", [
    ([0, 1, None], [0, 1, 2], "None"),
    ([0.0, 1.0, math.nan], [0, 1, 2], "NaN"),
    ([0, 1], [0, 1, 2], "frames"),
    ([], [], "empty"),
    ([[0, 1]], [[0, 1]], "1-D"),
])
def test_bad_inputs_are_refused(labels, clusters, message):
    with pytest.raises(ValueError, match=message):
        cluster_metrics(np.array(labels, dtype=object if None in labels else None), clusters)


def test_contingency_metrics_from_streamed_batches_equal_cluster_metrics():
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 20, size=30_000)
    clusters = (labels * 2 + rng.integers(0, 4, size=labels.size)) % 40  # cluster 39 stays empty
    table = np.zeros((25, 41), np.int64)  # labels 20..24 never occur, cluster 40 either
    for s in range(0, labels.size, 4_096):
        np.add.at(table, (labels[s:s + 4_096], clusters[s:s + 4_096]), 1)
    whole = cluster_metrics(labels, clusters)
    assert contingency_metrics(table) == whole
    assert contingency_metrics(sp.coo_array(table)) == whole
    assert whole["n_clusters"] == len(np.unique(clusters))


@pytest.mark.parametrize("table, message", [
    (np.zeros((2, 3), np.int64), "sums to 0"),
    (np.ones((2, 3)), "integer"),
    (-np.ones((2, 3), np.int64), "non-negative"),
])
def test_contingency_metrics_refuses_bad_tables(table, message):
    with pytest.raises(ValueError, match=message):
        contingency_metrics(table)


def test_majority_mapping_from_contingency_names_rows_and_skips_empty_clusters():
    table = np.array([[3, 0, 1],
                      [1, 0, 1],
                      [0, 0, 2]])
    got = majority_mapping_from_contingency(table, np.array(["a", "b", "c"], dtype=object))
    assert got == [ClusterMajority(0, "a", 3, 4, 0.75), ClusterMajority(2, "c", 2, 4, 0.5)]
    named = majority_mapping_from_contingency(table, ["a", "b", "c"], clusters=[10, 11, 12])
    assert [m.cluster for m in named] == [10, 12]
    with pytest.raises(ValueError, match="needs 3 labels"):
        majority_mapping_from_contingency(table, ["a", "b"])


def test_majority_mapping_hand_example():
    labels = ["a", "a", "b", "b", "b", "b", "c", "c", "c", "d"]
    clusters = [5, 5, 5, 1, 1, 1, 1, 9, 9, 9]
    got = majority_mapping(labels, clusters)
    assert got == [
        ClusterMajority(1, "b", 3, 4, 0.75),
        ClusterMajority(5, "a", 2, 3, 2 / 3),
        ClusterMajority(9, "c", 2, 3, 2 / 3),
    ]


def test_majority_mapping_breaks_ties_by_label_order():
    got = majority_mapping(["z", "y", "x", "x", "y"], [0, 0, 0, 0, 0])
    assert got == [ClusterMajority(0, "x", 2, 5, 0.4)]  # x and y tie at 2; x sorts first
    got = majority_mapping([3, 1, 2], [7, 7, 7])
    assert got[0].label == 1


def test_majority_mapping_returns_python_scalars():
    labels = np.array(["sh", "iy", "iy"], dtype=object)  # as pyarrow's to_numpy gives strings
    (got,) = majority_mapping(labels, np.array([4, 4, 4], dtype=np.int16))
    assert got == ClusterMajority(4, "iy", 2, 3, 2 / 3)
    assert type(got.cluster) is int and type(got.label) is str


def test_silhouette_uses_all_points_when_few():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0, 1, (100, 3)), rng.normal(8, 1, (100, 3))])
    clusters = np.repeat([0, 1], 100)
    value, n = silhouette(x, clusters)
    assert n == 200
    assert value == pytest.approx(skm.silhouette_score(x, clusters), abs=1e-12)


def test_silhouette_sample_is_bounded_and_seeded():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(5_000, 2))
    clusters = (x[:, 0] > 0).astype(int)
    a = silhouette(x, clusters, max_points=500, seed=1)
    assert a.n == 500
    assert a == silhouette(x, clusters, max_points=500, seed=1)
    b = silhouette(x, clusters, max_points=500, seed=2)
    assert b.n == 500 and b.value != a.value
    whole = skm.silhouette_score(x, clusters)  # ~0.3 for a Gaussian cut in half
    assert abs(a.value - whole) < 0.05 and abs(b.value - whole) < 0.05


def test_silhouette_undefined_for_one_cluster():
    value, n = silhouette(np.zeros((5, 2)), np.zeros(5, int))
    assert math.isnan(value) and n == 5
