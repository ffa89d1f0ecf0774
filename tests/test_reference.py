"""Golden test against the original's published artefacts (shared/reference/original_lp_test).

1. cluster_metrics reproduces every number of reference_metrics.json (to 1e-6).
2. Our k-means (k = 36) on the shipped 2-D PCA coordinates matches the original's scikit-learn
   KMeans(n_clusters=36, random_state=0) in AMI against label_id and in inertia.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.algorithms.kmeans import assign, fit_kmeans
from pipeline.algorithms.metrics import cluster_metrics

FRAMES_SHA256 = "6fb78f84a3ac710fe56ca4fa83587f72f2924d1e7473a8c39627154b437dc602"
TOL = 1e-6
# The original's AMI against label_id of its k-means on each PCA plane (reference_metrics.json).
KMEANS_SPACES = {"pre": "kmeans_pre_pca", "fine": "kmeans_fine_pca"}
SEEDS = range(5)
AMI_TOL = 0.02
INERTIA_REL_TOL = 0.02


@pytest.fixture(scope="module")
def reference(reference_dir: Path) -> dict:
    folder = reference_dir
    return json.loads((folder / "reference_metrics.json").read_text())


@pytest.fixture(scope="module")
def frames(reference_dir: Path):
    path = reference_dir / "frames.parquet"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == FRAMES_SHA256, f"{path} changed: sha256 {digest}, expected {FRAMES_SHA256}"
    return pq.read_table(path)


def column(frames, name: str) -> np.ndarray:
    return frames.column(name).to_numpy()


def mismatches(got: dict, want: dict, keys: dict[str, str], where: str) -> list[str]:
    """keys: reference key -> our key."""
    return [f"{where} {ref_key}: ours {got[our_key]!r}, reference {want[ref_key]!r}"
            for ref_key, our_key in keys.items() if abs(got[our_key] - want[ref_key]) > TOL]


def test_metrics_against_label_id_reproduce_reference(frames, reference):
    labels = column(frames, "label_id")
    nonblank = labels != 0
    assert labels.size == reference["frames"] and nonblank.sum() == reference["frames_nonblank"]
    assert len(reference["vs_label_id"]) == 16
    errors = []
    for name, want in reference["vs_label_id"].items():
        clusters = column(frames, name)
        got = cluster_metrics(labels, clusters)
        errors += mismatches(got, want, {"ami": "ami", "mi": "mi", "homogeneity": "homogeneity",
                                         "completeness": "completeness", "purity": "cluster_purity"},
                             name)
        got_nb = cluster_metrics(labels[nonblank], clusters[nonblank])
        errors += mismatches(got_nb, want, {"ami_nonblank": "ami", "purity_nonblank": "cluster_purity"},
                             name)
    assert not errors, "cluster_metrics disagrees with reference_metrics.json:\n" + "\n".join(errors)


def test_cluster_vs_cluster_metrics_reproduce_reference(frames, reference):
    assert len(reference["pairs"]) == 15
    errors = []
    for pair, want in reference["pairs"].items():
        a, b = pair.split(" vs ")
        got = cluster_metrics(column(frames, a), column(frames, b))  # f(a, b) as in the original
        errors += mismatches(got, want, {k: k for k in ["ami", "mi", "homogeneity", "completeness"]},
                             pair)
    assert not errors, "cluster_metrics disagrees with reference_metrics.json:\n" + "\n".join(errors)


def inertia_of_labelling(x: np.ndarray, clusters: np.ndarray) -> float:
    """Sum of squared distances of each point to the mean of its cluster (float64)."""
    x = x.astype(np.float64)
    _, codes = np.unique(clusters, return_inverse=True)
    sums = np.zeros((codes.max() + 1, x.shape[1]))
    np.add.at(sums, codes, x)
    means = sums / np.bincount(codes)[:, None]
    return float(((x - means[codes]) ** 2).sum())


@pytest.mark.slow
@pytest.mark.parametrize("space", sorted(KMEANS_SPACES))
def test_our_kmeans_matches_original_on_pca_plane(frames, reference, space):
    original = KMEANS_SPACES[space]
    labels = column(frames, "label_id")
    x = np.stack([column(frames, f"pca_{space}_x"), column(frames, f"pca_{space}_y")], axis=1)
    original_inertia = inertia_of_labelling(x, column(frames, original))
    original_ami = reference["vs_label_id"][original]["ami"]

    runs = []
    for seed in SEEDS:
        result = fit_kmeans(x, 36, seed=seed)
        assert result.n_train == x.shape[0]
        clusters, _ = assign(x, result.centroids)
        runs.append((seed, cluster_metrics(labels, clusters)["ami"], result.inertia / original_inertia))
    report = "\n".join(f"  seed {s}: AMI {a:.4f}, inertia / original {r:.4f}" for s, a, r in runs)
    median_ami = float(np.median([a for _, a, _ in runs]))
    median_ratio = float(np.median([r for _, _, r in runs]))
    print(f"\n{space}: original AMI {original_ami:.4f}, inertia {original_inertia:.2f}\n{report}\n"
          f"  median: AMI {median_ami:.4f}, inertia / original {median_ratio:.4f}")
    assert abs(median_ami - original_ami) <= AMI_TOL, (
        f"{space}: median AMI {median_ami:.4f} vs original {original_ami:.4f}\n{report}")
    assert abs(median_ratio - 1) <= INERTIA_REL_TOL, (
        f"{space}: median inertia is {median_ratio:.4f} x the original's\n{report}")
