"""analyze on the embedded corpus: real phonetic structure, bounded streaming, rerun safety."""

from __future__ import annotations

import pytest
from conftest import run_checks

from pipeline.analyze import AnalyzeConfig, analyze
from pipeline.extract import ExtractConfig, extract
from pipeline.warehouse import Warehouse


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory):
    wh = tmp_path_factory.mktemp("wh")
    extract(ExtractConfig(run="emb", warehouse=str(wh), limit=48, layers="-1,2", shard_size=16, progress=False))
    return wh


@pytest.mark.slow
def test_spectral_frames_cluster_by_phone_far_above_shuffled(embedded_run):
    rows = analyze(AnalyzeConfig(run="emb", warehouse=str(embedded_run), k=30, sample_per_label=200, n_iter=20,
                                 no_silence=True))
    by_layer = {r["layer"]: r for r in rows}
    assert set(by_layer) == {-1, 2}
    cnn = by_layer[-1]
    # measured 0.16 (k = 50, all 240 utterances); a shuffled labelling stays within ±0.01
    assert cnn["ami"] > 0.08
    assert abs(cnn["ami_shuffled_sample"]) < 0.02
    assert cnn["ami"] > 5 * abs(cnn["ami_shuffled_sample"])
    con = Warehouse(embedded_run).connect()
    # every frame of the layer was assigned exactly once, streamed file by file
    assert con.execute("select count(*) from clusters where layer = 2").fetchone() == con.execute(
        "select count(*) from frames where layer = 2").fetchone()
    metrics = con.execute("select distinct subset from metrics order by 1").fetchall()
    assert metrics == [("all",), ("no_silence",)]
    mapping = con.execute("select sum(cluster_size) from cluster_labels where layer = -1 and subset = 'all'").fetchone()[0]
    labelled = con.execute("select count(*) from frames where layer = -1 and phone is not null").fetchone()[0]
    assert mapping == labelled
    # a rerun replaces its files: no duplicated keys
    analyze(AnalyzeConfig(run="emb", warehouse=str(embedded_run), k=30, sample_per_label=200, n_iter=20, layers="2"))
    dup = con.execute("select count(*) from (select utterance_id, frame, count(*) n from clusters where layer = 2 "
                  "group by all having n > 1)").fetchone()[0]
    assert dup == 0
    assert all(v == 0 for v in run_checks(embedded_run).values())


def test_analyze_explains_a_missing_run(tmp_path):
    with pytest.raises(ValueError, match="run `extract` first"):
        analyze(AnalyzeConfig(run="nothing", warehouse=str(tmp_path)))
