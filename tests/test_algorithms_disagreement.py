"""pipeline.algorithms.disagreement on small constructed cases: the rules `gap` and `original`."""

from __future__ import annotations

import pytest

from pipeline.algorithms import cer as C
from pipeline.algorithms import disagreement as D

_ = C.BLANK_LABEL  # the CTC blank, short so that frame label lists read like frames


def test_hypothesis_frames_boundaries():
    labels = ["|", _, "H", "H", _, "|", _, "|", "I", _, "|"]
    hyp = D.hypothesis_frames(labels)
    assert hyp.text == "h i" and hyp.spans.tolist() == [[2, 4], [5, 6], [8, 9]]
    assert D.hypothesis_frames(labels, merge_boundaries=False).text == "h  i"
    assert C.greedy_transcript(labels) == "h i"
    assert D.hypothesis_frames([]).text == ""


def test_frame_disagreement_on_a_constructed_utterance():
    labels = [_, "A", "A", _, "B", "|", "C", _]  # "ab c"
    refs = ["ab c",  # agrees everywhere
            "axb c",  # extra x in the gap between a and b: that gap's blank frame (3)
            "ab d",  # c substituted: c's frame (6)
            "b c"]  # a missing: a's frames (1, 2)
    assert D.frame_disagreement(labels, refs).tolist() == [0, 1, 1, 1, 0, 0, 1, 0]
    assert D.frame_disagreement(labels, refs[::-1]).tolist() == [0, 1, 1, 1, 0, 0, 1, 0]  # order-free
    assert D.frame_disagreement(labels, ["x" + refs[0]]).tolist() == [1, 0, 0, 0, 0, 0, 0, 0]  # leading gap
    assert D.frame_disagreement(labels, [refs[0] + "x"]).tolist() == [0, 0, 0, 0, 0, 0, 0, 1]  # trailing gap


def test_empty_gap_attribution():
    labels = [_, "A", "B", _]  # a and b on adjacent frames: no frame between them
    assert D.frame_disagreement(labels, ["axb"]).tolist() == [0, 0, 1, 0]
    assert D.frame_disagreement(labels, ["axb"], empty_gap="previous").tolist() == [0, 1, 0, 0]
    assert D.frame_disagreement(labels, ["axb"], empty_gap="drop").tolist() == [0, 0, 0, 0]
    assert D.frame_disagreement(["A", "B"], ["xab"]).tolist() == [1, 0]  # no leading frame: next character
    assert D.frame_disagreement(["A", "B"], ["abx"]).tolist() == [0, 1]  # no trailing frame: previous one
    with pytest.raises(ValueError, match="empty_gap"):
        D.frame_disagreement(labels, ["ab"], empty_gap="later")


def test_one_reference_counts_once_per_frame():
    # "xyb" against "ab": a is substituted and one reference character is extra; wherever edlib puts
    # the extra one (leading gap or the gap after a, both frameless), it lands on a's frame
    assert D.frame_disagreement(["A", "B"], ["xyb"], empty_gap="previous").tolist() == [1, 0]


def test_frame_disagreement_edge_cases():
    assert D.frame_disagreement([_, _, _], ["ab", ""]).tolist() == [1, 1, 1]
    assert D.frame_disagreement(["A", _], ["", "a"]).tolist() == [1, 0]
    assert D.frame_disagreement([], ["a"]).tolist() == []


def test_multi_align_and_the_original_walk():
    multi = D.multi_align("ab", ["xxab", "xab", "ab", "ac"])
    assert multi.text() == "--ab" and multi.counts.tolist() == [2, 1, 0, 1]
    # the original's walk stalls at a gap column with no blank run before the next character:
    # b gets 0 instead of 1 and the gap's count lands on the next blank run
    labels = [_, "A", "B", _]
    multi = D.multi_align("ab", ["axb"])
    assert multi.text() == "a-b" and multi.counts.tolist() == [0, 1, 0]
    assert D.frame_disagreement_original(labels, multi).tolist() == [0, 0, 0, 1]
    assert D.utterance_disagreement(labels, ["axb"], rule="original").tolist() == [0, 0, 0, 1]
    # with a blank frame in the gap the walk and the gap rule agree
    labels = [_, "A", _, "B", _]
    assert D.utterance_disagreement(labels, ["axb"], rule="original").tolist() == [0, 0, 1, 0, 0]
    assert D.frame_disagreement(labels, ["axb"]).tolist() == [0, 0, 1, 0, 0]
