"""pipeline.stages.transcripts: the warehouse stage (reading greedy labels, clusters and references; writing
`decoded` and `frame_disagreement`). The algorithms are tested in test_algorithms_cer.py and
test_algorithms_disagreement.py."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.stages import transcripts as T
from pipeline.warehouse.schemas import SEGMENTS, UTTERANCES
from pipeline.warehouse import Warehouse

_ = T.BLANK_LABEL  # the CTC blank, short so that frame label lists read like frames


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
