"""pipeline.stages.transcripts on small constructed cases: CER, alignment, decoding, disagreement, warehouse stage."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from pipeline.stages import transcripts as T
from pipeline.warehouse.schemas import SEGMENTS, UTTERANCES
from pipeline.warehouse import Warehouse

_ = T.BLANK_LABEL  # the CTC blank, short so that frame label lists read like frames


def test_cer_known_by_hand():
    assert T.edit_distance("kitten", "sitting") == 3
    assert T.cer("kitten", "sitting") == pytest.approx(3 / 7)
    assert T.cer("abc", "abc") == 0.0
    assert T.cer("", "abc") == 1.0
    assert T.cer("", "") == 0.0
    assert math.isnan(T.cer("a", ""))
    assert T.corpus_cer([("kitten", "sitting"), ("ab", "abc")]) == pytest.approx(4 / 10)


def test_alignment_ops_and_counts():
    a = T.align("axcd", "abd")  # x→b substitution, c inserted by the hypothesis
    assert sorted(a.ops) == sorted("=SI=")
    assert (a.n_matches, a.n_substitutions, a.n_insertions, a.n_deletions) == (2, 1, 1, 0)
    assert a.n_edits == 2 and a.cer == pytest.approx(2 / 3)
    d = T.align("abd", "abcd")
    assert d.ops == "==D=" and d.n_deletions == 1
    assert d.nice() == ("ab-d", "||-|", "abcd")
    assert T.align("", "ab").ops == "DD" and T.align("ab", "").ops == "II"
    assert T.align("ab", "ab").nice() == ("ab", "||", "ab")


def test_normalise_text():
    assert T.normalise_text("Hello, World!  It's 2 o'clock_") == "hello world it's o'clock"
    assert T.normalise_text("ÄITI  sanoi: öö") == "äiti sanoi öö"


def test_decode_clusters_with_known_mapping():
    clusters = [0, 0, 1, 1, 2, 0, 0, 3, 3, 1, 4, 4, 2]
    mapping = {0: _, 1: "A", 2: "|", 3: "B", 4: "A"}
    # frames: _ _ A A | _ _ B B A A A |  → tokens A | B A | (clusters 1 and 4 merge: same label)
    assert T.decode_clusters(clusters, mapping) == "a ba"
    with pytest.raises(ValueError, match=r"clusters \[4\] have no label"):
        T.decode_clusters(clusters, {0: _, 1: "A", 2: "|", 3: "B"})


def test_majority_labels_with_and_without_blank():
    labels = [_, _, _, "A", "B", "B", _, _]
    clusters = [0, 0, 0, 0, 1, 1, 2, 2]
    assert T.majority_labels(labels, clusters) == {0: _, 1: "B", 2: _}
    assert T.majority_labels(labels, clusters, exclude=(_,)) == {0: "A", 1: "B", 2: _}


def test_off_by_one_mapping_and_original_decode():
    vocab = {0: "<pad>", 3: "<unk>", 4: "|", 5: "E", 6: "T"}
    # cluster 0: mostly blank, then E → E - 1 = "|"; cluster 1: mostly T → E; cluster 2: mostly | → <unk>
    label_ids = [0, 0, 0, 5, 6, 6, 4, 4, 0]
    clusters = [0, 0, 0, 0, 1, 1, 2, 2, 2]
    mapping = T.off_by_one_mapping(label_ids, clusters)
    assert mapping == {0: 4, 1: 5, 2: 3}
    # |, <unk> and the blank go before repeats merge: E | E <unk> E → "e"; then T
    assert T.decode_original([5, 4, 5, 3, 5, 0, 6, 6], vocab) == "et"
    assert T.decode_original([mapping[c] for c in [1, 0, 1, 2, 1]], vocab) == "e"


def test_hypothesis_frames_boundaries():
    labels = ["|", _, "H", "H", _, "|", _, "|", "I", _, "|"]
    hyp = T.hypothesis_frames(labels)
    assert hyp.text == "h i" and hyp.spans.tolist() == [[2, 4], [5, 6], [8, 9]]
    assert T.hypothesis_frames(labels, merge_boundaries=False).text == "h  i"
    assert T.greedy_transcript(labels) == "h i"
    assert T.hypothesis_frames([]).text == ""


def test_frame_disagreement_on_a_constructed_utterance():
    labels = [_, "A", "A", _, "B", "|", "C", _]  # "ab c"
    refs = ["ab c",  # agrees everywhere
            "axb c",  # extra x in the gap between a and b: that gap's blank frame (3)
            "ab d",  # c substituted: c's frame (6)
            "b c"]  # a missing: a's frames (1, 2)
    assert T.frame_disagreement(labels, refs).tolist() == [0, 1, 1, 1, 0, 0, 1, 0]
    assert T.frame_disagreement(labels, refs[::-1]).tolist() == [0, 1, 1, 1, 0, 0, 1, 0]  # order-free
    assert T.frame_disagreement(labels, ["x" + refs[0]]).tolist() == [1, 0, 0, 0, 0, 0, 0, 0]  # leading gap
    assert T.frame_disagreement(labels, [refs[0] + "x"]).tolist() == [0, 0, 0, 0, 0, 0, 0, 1]  # trailing gap


def test_empty_gap_attribution():
    labels = [_, "A", "B", _]  # a and b on adjacent frames: no frame between them
    assert T.frame_disagreement(labels, ["axb"]).tolist() == [0, 0, 1, 0]
    assert T.frame_disagreement(labels, ["axb"], empty_gap="previous").tolist() == [0, 1, 0, 0]
    assert T.frame_disagreement(labels, ["axb"], empty_gap="drop").tolist() == [0, 0, 0, 0]
    assert T.frame_disagreement(["A", "B"], ["xab"]).tolist() == [1, 0]  # no leading frame: next character
    assert T.frame_disagreement(["A", "B"], ["abx"]).tolist() == [0, 1]  # no trailing frame: previous one
    with pytest.raises(ValueError, match="empty_gap"):
        T.frame_disagreement(labels, ["ab"], empty_gap="later")


def test_one_reference_counts_once_per_frame():
    # "xyb" against "ab": a is substituted and one reference character is extra; wherever edlib puts
    # the extra one (leading gap or the gap after a, both frameless), it lands on a's frame
    assert T.frame_disagreement(["A", "B"], ["xyb"], empty_gap="previous").tolist() == [1, 0]


def test_frame_disagreement_edge_cases():
    assert T.frame_disagreement([_, _, _], ["ab", ""]).tolist() == [1, 1, 1]
    assert T.frame_disagreement(["A", _], ["", "a"]).tolist() == [1, 0]
    assert T.frame_disagreement([], ["a"]).tolist() == []


def test_multi_align_and_the_original_walk():
    multi = T.multi_align("ab", ["xxab", "xab", "ab", "ac"])
    assert multi.text() == "--ab" and multi.counts.tolist() == [2, 1, 0, 1]
    # the original's walk stalls at a gap column with no blank run before the next character:
    # b gets 0 instead of 1 and the gap's count lands on the next blank run
    labels = [_, "A", "B", _]
    multi = T.multi_align("ab", ["axb"])
    assert multi.text() == "a-b" and multi.counts.tolist() == [0, 1, 0]
    assert T.frame_disagreement_original(labels, multi).tolist() == [0, 0, 0, 1]
    assert T.utterance_disagreement(labels, ["axb"], rule="original").tolist() == [0, 0, 0, 1]
    # with a blank frame in the gap the walk and the gap rule agree
    labels = [_, "A", _, "B", _]
    assert T.utterance_disagreement(labels, ["axb"], rule="original").tolist() == [0, 0, 1, 0, 0]
    assert T.frame_disagreement(labels, ["axb"]).tolist() == [0, 0, 1, 0, 0]


def _tiny_warehouse(root) -> Warehouse:
    wh = Warehouse(root)
    wh.ensure_facts("r", {"geometry": {"receptive_field_samples": 400, "hop_samples": 320, "sample_rate_hz": 16000}})
    hop = 0.02
    runs = {"u1": [(_, 1), ("A", 2), (_, 1), ("B", 1), ("|", 1), ("C", 1), (_, 1)],  # "ab c", 8 frames
            "u2": [("A", 1), ("B", 1)]}
    rows = []
    for utt, parts in runs.items():
        t = 0.0025
        for idx, (label, n) in enumerate(parts):
            rows.append({"utterance_id": utt, "tier": T.GREEDY_TIER, "idx": idx, "label": label,
                         "start_s": t, "end_s": t + n * hop, "source": T.GREEDY_TIER})
            t += n * hop
    files = [wh.write("segments", pa.Table.from_pylist(rows, schema=SEGMENTS), "r", 0)]
    utts = [{"utterance_id": u, "corpus": "c", "speaker": "s", "split": "test", "n_samples": 3000,
             "sample_rate_hz": 16000, "source_sample_rate_hz": 16000, "source_channels": 1, "duration_s": 0.19,
             "text": text, "metadata": [("text2", other)]}
            for u, text, other in [("u1", "AXB, c!", "ab d"), ("u2", "ab", "ab")]]
    files.append(wh.write("utterances", pa.Table.from_pylist(utts, schema=UTTERANCES), "r", 0))
    wh.commit("r", "ingest", 0, files)
    clusters = {"u1": [0, 1, 1, 0, 2, 3, 4, 0], "u2": [1, 2]}
    crows = [{"utterance_id": u, "frame": f, "cluster": c, "distance": 0.0, "tier": "phone"}
             for u, cs in clusters.items() for f, c in enumerate(cs)]
    from pipeline.stages.analyze import CLUSTERS_SCHEMA

    rec = wh.write("clusters", pa.Table.from_pylist(crows, schema=CLUSTERS_SCHEMA), "r", 0, file_prefix="phone",
                   layer=3, k=5)
    wh.commit("r", "analyze.k5.phone", 3, [rec])
    return wh


def test_warehouse_stage(tmp_path):
    wh = _tiny_warehouse(tmp_path / "wh")
    labels = T.greedy_frame_labels(
        pa.table({"utterance_id": ["u", "u"], "label": [_, "A"], "start_s": [0.0025, 0.0425], "end_s": [0.0425, 0.0625]}),
        0.02)
    assert labels["u"].tolist() == [_, _, "A"]
    written = T.transcripts(T.TranscriptsConfig(run="r", warehouse=str(wh.root), references="text,text2"))
    assert written == {"decoded": 2, "frame_disagreement": 10}
    con = wh.connect()
    decoded = con.sql("select utterance_id, hypothesis, reference, n_edits, cer from decoded "
                      "where run = 'r' and layer = 3 and k = 5 order by utterance_id").fetchall()
    # majority: 0 → blank, 1 → A, 2 → B, 3 → |, 4 → C; u2's frames (clusters 1, 2) decode to "ab"
    assert decoded == [("u1", "ab c", "ab c", 0, 0.0), ("u2", "ab", "ab", 0, 0.0)]
    rows = con.sql("select utterance_id, frame, n_disagree, n_references from frame_disagreement "
                   "where run = 'r' and rule = 'gap' order by utterance_id, frame").fetchall()
    u1 = [r[2] for r in rows if r[0] == "u1"]
    assert u1 == [0, 0, 0, 1, 0, 0, 1, 0]  # "axb c" puts x in the blank gap; "ab d" substitutes c
    assert {r[3] for r in rows} == {2}
    T.transcripts(T.TranscriptsConfig(run="r", warehouse=str(wh.root), references="text", rule="original"))
    n_orig = wh.connect().sql("select count(*) from frame_disagreement where rule = 'original'").fetchall()[0][0]
    assert n_orig == 10


def test_warehouse_stage_errors(tmp_path):
    wh = Warehouse(tmp_path / "empty")
    with pytest.raises(ValueError, match="no frame geometry"):
        T.transcripts(T.TranscriptsConfig(run="r", warehouse=str(wh.root)))
    wh.ensure_facts("r", {"geometry": {"receptive_field_samples": 400, "hop_samples": 320, "sample_rate_hz": 16000}})
    with pytest.raises(ValueError, match="ctc_greedy"):
        T.transcripts(T.TranscriptsConfig(run="r", warehouse=str(wh.root)))
    with pytest.raises(ValueError, match="--rule"):
        T.transcripts(T.TranscriptsConfig(run="r", warehouse=str(wh.root), rule="best"))
    labels = {"u": np.array([_, "A"], dtype=object)}
    clusters = pa.table({"utterance_id": ["u"] * 3, "frame": [0, 1, 2], "cluster": [0, 1, 1]})
    with pytest.raises(ValueError, match="utterance 'u': clusters reach frame 2"):
        T.decoded_table(labels, clusters)
