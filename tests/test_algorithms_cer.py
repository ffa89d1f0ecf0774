"""pipeline.algorithms.cer on small constructed cases: text normal form, alignment, CER, decoding frames to text."""

from __future__ import annotations

import math

import pytest

from pipeline.algorithms import cer as C

_ = C.BLANK_LABEL  # the CTC blank, short so that frame label lists read like frames


def test_cer_known_by_hand():
    assert C.edit_distance("kitten", "sitting") == 3
    assert C.cer("kitten", "sitting") == pytest.approx(3 / 7)
    assert C.cer("abc", "abc") == 0.0
    assert C.cer("", "abc") == 1.0
    assert C.cer("", "") == 0.0
    assert math.isnan(C.cer("a", ""))
    assert C.corpus_cer([("kitten", "sitting"), ("ab", "abc")]) == pytest.approx(4 / 10)


def test_alignment_ops_and_counts():
    a = C.align("axcd", "abd")  # x→b substitution, c inserted by the hypothesis
    assert sorted(a.ops) == sorted("=SI=")
    assert (a.n_matches, a.n_substitutions, a.n_insertions, a.n_deletions) == (2, 1, 1, 0)
    assert a.n_edits == 2 and a.cer == pytest.approx(2 / 3)
    d = C.align("abd", "abcd")
    assert d.ops == "==D=" and d.n_deletions == 1
    assert d.nice() == ("ab-d", "||-|", "abcd")
    assert C.align("", "ab").ops == "DD" and C.align("ab", "").ops == "II"
    assert C.align("ab", "ab").nice() == ("ab", "||", "ab")


def test_normalise_text():
    assert C.normalise_text("Hello, World!  It's 2 o'clock_") == "hello world it's o'clock"
    assert C.normalise_text("ÄITI  sanoi: öö") == "äiti sanoi öö"


def test_decode_clusters_with_known_mapping():
    clusters = [0, 0, 1, 1, 2, 0, 0, 3, 3, 1, 4, 4, 2]
    mapping = {0: _, 1: "A", 2: "|", 3: "B", 4: "A"}
    # frames: _ _ A A | _ _ B B A A A |  → tokens A | B A | (clusters 1 and 4 merge: same label)
    assert C.decode_clusters(clusters, mapping) == "a ba"
    with pytest.raises(ValueError, match=r"clusters \[4\] have no label"):
        C.decode_clusters(clusters, {0: _, 1: "A", 2: "|", 3: "B"})


def test_majority_labels_with_and_without_blank():
    labels = [_, _, _, "A", "B", "B", _, _]
    clusters = [0, 0, 0, 0, 1, 1, 2, 2]
    assert C.majority_labels(labels, clusters) == {0: _, 1: "B", 2: _}
    assert C.majority_labels(labels, clusters, exclude=(_,)) == {0: "A", 1: "B", 2: _}


def test_off_by_one_mapping_and_original_decode():
    vocab = {0: "<pad>", 3: "<unk>", 4: "|", 5: "E", 6: "T"}
    # cluster 0: mostly blank, then E → E - 1 = "|"; cluster 1: mostly T → E; cluster 2: mostly | → <unk>
    label_ids = [0, 0, 0, 5, 6, 6, 4, 4, 0]
    clusters = [0, 0, 0, 0, 1, 1, 2, 2, 2]
    mapping = C.off_by_one_mapping(label_ids, clusters)
    assert mapping == {0: 4, 1: 5, 2: 3}
    # |, <unk> and the blank go before repeats merge: E | E <unk> E → "e"; then T
    assert C.decode_original([5, 4, 5, 3, 5, 0, 6, 6], vocab) == "et"
    assert C.decode_original([mapping[c] for c in [1, 0, 1, 2, 1]], vocab) == "e"
